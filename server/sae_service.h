// The gRPC service sae.v1.SparseAutoencoderService: thin handlers that
// validate requests, view their tensors without copying, call the core, and
// map errors through ToGrpcStatus. No arithmetic on weights happens here.
#ifndef SAE_SERVER_SAE_SERVICE_H_
#define SAE_SERVER_SAE_SERVICE_H_

#include <cstdint>
#include <functional>

#include "absl/time/time.h"

#include "sae/v1/sae.grpc.pb.h"
#include "server/auth.h"
#include "server/batcher.h"
#include "server/compute_pool.h"
#include "server/dataset_store.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/training_jobs.h"

namespace sae::server {

struct ServiceLimits {
  int64_t max_rows_per_request = 65536;  // rows in one Encode/... message
  int64_t max_inline_training_rows = 1 << 20;
  // The largest reply gRPC will send (--max_message_mb): a request whose
  // reply would be larger is refused before any work (RESOURCE_EXHAUSTED).
  int64_t max_reply_bytes = 64 << 20;
  // Bytes of requests that may wait for a compute-pool thread (calls too
  // large to merge, sparse Encodes, all calls with batching off); beyond:
  // RESOURCE_EXHAUSTED at once. A call is always admitted when none waits.
  int64_t max_waiting_bytes = 256 << 20;
  // False on serving-only replicas: Train gets FAILED_PRECONDITION.
  bool accept_training = true;
};

// The deadline and cancellation of one call, for work that waits.
struct CallInfo {
  absl::Time deadline = absl::InfiniteFuture();
  std::function<bool()> cancelled;
};

// Encode, Reconstruct and Denoise use gRPC's callback API, so that a call
// waiting for its batch holds no thread; the other methods are synchronous.
using SaeServiceBase = v1::SparseAutoencoderService::WithCallbackMethod_Encode<
    v1::SparseAutoencoderService::WithCallbackMethod_Reconstruct<
        v1::SparseAutoencoderService::WithCallbackMethod_Denoise<
            v1::SparseAutoencoderService::Service>>>;

class SaeService final : public SaeServiceBase {
 public:
  // Every pointer must outlive the service.
  // `batcher` may be null (no batching), `metrics` too (none recorded),
  // `auth` too (every caller may call everything), and `pool` too (work
  // that is not merged then runs on gRPC's callback thread).
  SaeService(ModelStore* store, ModelRegistry* registry, TrainingJobManager* jobs,
             DatasetStore* datasets, Batcher* batcher, Metrics* metrics,
             const TokenAuthenticator* auth, ServiceLimits limits, ComputePool* pool = nullptr);

  grpc::Status Train(grpc::ServerContext*, const v1::TrainRequest*, v1::TrainResponse*) override;
  grpc::Status GetTrainingJob(grpc::ServerContext*, const v1::GetTrainingJobRequest*,
                              v1::GetTrainingJobResponse*) override;
  grpc::Status ListTrainingJobs(grpc::ServerContext*, const v1::ListTrainingJobsRequest*,
                                v1::ListTrainingJobsResponse*) override;
  grpc::Status CancelTrainingJob(grpc::ServerContext*, const v1::CancelTrainingJobRequest*,
                                 v1::CancelTrainingJobResponse*) override;
  grpc::Status WatchTrainingJob(grpc::ServerContext*, const v1::WatchTrainingJobRequest*,
                                grpc::ServerWriter<v1::WatchTrainingJobResponse>*) override;
  grpc::Status UploadDataset(grpc::ServerContext*, grpc::ServerReader<v1::UploadDatasetRequest>*,
                             v1::UploadDatasetResponse*) override;
  grpc::Status ListDatasets(grpc::ServerContext*, const v1::ListDatasetsRequest*,
                            v1::ListDatasetsResponse*) override;
  grpc::Status DeleteDataset(grpc::ServerContext*, const v1::DeleteDatasetRequest*,
                             v1::DeleteDatasetResponse*) override;
  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext*, const v1::EncodeRequest*,
                                   v1::EncodeResponse*) override;
  grpc::Status Decode(grpc::ServerContext*, const v1::DecodeRequest*, v1::DecodeResponse*) override;
  grpc::ServerUnaryReactor* Reconstruct(grpc::CallbackServerContext*,
                                        const v1::ReconstructRequest*,
                                        v1::ReconstructResponse*) override;
  grpc::ServerUnaryReactor* Denoise(grpc::CallbackServerContext*, const v1::DenoiseRequest*,
                                    v1::DenoiseResponse*) override;
  grpc::Status StreamEncode(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::StreamEncodeResponse, v1::StreamEncodeRequest>*) override;
  grpc::Status StreamReconstruct(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::StreamReconstructResponse, v1::StreamReconstructRequest>*)
      override;
  grpc::Status StreamDenoise(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::StreamDenoiseResponse, v1::StreamDenoiseRequest>*) override;
  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse*) override;
  grpc::Status GetModel(grpc::ServerContext*, const v1::GetModelRequest*,
                        v1::GetModelResponse*) override;
  grpc::Status DeleteModelVersion(grpc::ServerContext*, const v1::DeleteModelVersionRequest*,
                                  v1::DeleteModelVersionResponse*) override;
  grpc::Status SetModelLabel(grpc::ServerContext*, const v1::SetModelLabelRequest*,
                             v1::SetModelLabelResponse*) override;
  grpc::Status ImportModel(grpc::ServerContext*, grpc::ServerReader<v1::ImportModelRequest>*,
                           v1::ImportModelResponse*) override;
  grpc::Status ExportModel(grpc::ServerContext*, const v1::ExportModelRequest*,
                           grpc::ServerWriter<v1::ExportModelResponse>*) override;

  // The handlers' logic without a ServerContext, for the unary calls and
  // the streams alike (and for fuzzing the validation).
  // `call` gives the deadline and cancellation that hold while a request
  // waits for a batch.
  absl::Status DoEncode(const v1::EncodeRequest& request, v1::EncodeResponse* response,
                        const CallInfo& call = {});
  absl::Status DoDecode(const v1::DecodeRequest& request, v1::DecodeResponse* response);
  absl::Status DoReconstruct(const v1::ReconstructRequest& request,
                             v1::ReconstructResponse* response, const CallInfo& call = {});
  absl::Status DoDenoise(const v1::DenoiseRequest& request, v1::DenoiseResponse* response,
                         const CallInfo& call = {});
  absl::Status DoTrain(const v1::TrainRequest& request, v1::TrainResponse* response);

 private:
  ModelStore* const store_;
  ModelRegistry* const registry_;
  TrainingJobManager* const jobs_;
  DatasetStore* const datasets_;
  Batcher* const batcher_;
  Metrics* const metrics_;
  const TokenAuthenticator* const auth_;
  const ServiceLimits limits_;
  ComputePool* const pool_;

  // Runs `fn` on the compute pool, or here when there is none. For a call
  // whose request holds `bytes`: RESOURCE_EXHAUSTED (and fn dropped) when
  // the requests waiting for the pool hold max_waiting_bytes with it.
  absl::Status RunOffCallbackThread(std::function<void()> fn, int64_t bytes);

  // Every handler's first step: OK, UNAUTHENTICATED or PERMISSION_DENIED
  // for calling `method` with the call's bearer token.
  grpc::Status Authorize(grpc::ServerContextBase* context, absl::string_view method) const;

  // An inference request, validated: its model version and a view of its
  // input rows (valid while the request is).
  struct Inference {
    std::string model_name;
    ServedModel served;
    ConstMatrixMap x;
  };
  // The reply holds `op`'s dense output (d_hidden values a row for Encode,
  // d_in otherwise), checked against the message limit here; a sparse Encode
  // is checked as its codes are made (EncodeSparse).
  enum class Reply { kDense, kSparse };
  absl::StatusOr<Inference> Prepare(const v1::ModelRef& model, const v1::Tensor& input,
                                    BatchOp op, Reply reply = Reply::kDense) const;
  // RESOURCE_EXHAUSTED when a reply of rows x cols float32 values (plus
  // `extra_bytes`) would exceed the message limit.
  absl::Status CheckReplyFits(int64_t rows, int64_t cols, int64_t extra_bytes) const;
  // Write a response from the computed rows.
  static void FillEncode(const v1::EncodeRequest& request, const Inference& in,
                         const RowMatrix& codes, v1::EncodeResponse* response);
  static void FillReconstruct(const v1::ReconstructRequest& request, const Inference& in,
                              const RowMatrix& out, v1::ReconstructResponse* response);
  static void FillDenoise(const v1::DenoiseRequest& request, const Inference& in,
                          const RowMatrix& out, v1::DenoiseResponse* response);
  absl::Status EncodeSparse(const v1::EncodeRequest& request, const Inference& in,
                            v1::EncodeResponse* response) const;
  // Computes `op` for a prepared request (through the batcher when there is
  // one) and fills the response with `fill`.
  template <typename Request, typename Response, typename FillFn>
  absl::Status Serve(const Request& request, const Inference& in, BatchOp op, FillFn fill,
                     const CallInfo& call, Response* response);
  // A callback-API unary inference call: authorized, validated, then queued
  // for its batch; a call that is not merged (not `batchable`, too many
  // rows, batching off) is computed on the compute pool, through `sync` when
  // it is not `batchable`.
  template <typename Request, typename Response, typename FillFn, typename SyncFn>
  grpc::ServerUnaryReactor* StartInference(grpc::CallbackServerContext* context,
                                           absl::string_view method, BatchOp op, bool batchable,
                                           const Request* request, Response* response,
                                           FillFn fill, SyncFn sync);

  // Runs `op` through the batcher when there is one, directly otherwise.
  absl::Status Compute(const std::string& model_name, const ServedModel& served, BatchOp op,
                       ConstMatrixRef x, const CallInfo& call, RowMatrix* out);
};

}  // namespace sae::server

#endif  // SAE_SERVER_SAE_SERVICE_H_
