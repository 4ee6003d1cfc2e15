// A C++ client for sae.v1.SparseAutoencoderService.
//
// Every call returns absl::Status / absl::StatusOr, carries a deadline
// (ClientOptions::deadline unless a call says otherwise), and, when it is
// safe to repeat (reads, and Train with a request_id), is retried with
// exponential backoff on UNAVAILABLE. The streaming helpers move files of
// any size through the server with bounded memory.
//
// Thread-safe: one client may be shared by many threads.
#ifndef SAE_CLIENT_SAE_CLIENT_H_
#define SAE_CLIENT_SAE_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "grpcpp/security/credentials.h"
#include "sae/v1/sae.grpc.pb.h"

namespace sae::client {

// Transport security and credentials (docs/security.md).
struct ClientSecurity {
  bool tls = false;      // false: plaintext
  std::string ca_pem;    // roots that sign the server's certificate (empty: the system's)
  std::string cert_pem;  // client certificate chain, for mutual TLS
  std::string key_pem;   // its private key
  std::string token;     // bearer token sent with every call (empty: none)
};

// Reads the files behind the CLI's --tls, --tls-ca, --tls-cert, --tls-key and
// --token-file (empty paths are skipped). TLS is on when `tls` is set or any
// TLS file is given. The token file holds the token alone. NOT_FOUND for a
// file that cannot be read, INVALID_ARGUMENT for a bad one.
absl::StatusOr<ClientSecurity> LoadClientSecurity(bool tls, const std::string& ca_file,
                                                  const std::string& cert_file,
                                                  const std::string& key_file,
                                                  const std::string& token_file);

// Channel credentials for `security` (TLS or plaintext; the token travels as
// call metadata, see SaeClient).
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const ClientSecurity& security);

struct ClientOptions {
  std::chrono::milliseconds deadline{30000};  // per call (streams: whole stream)
  int max_attempts = 4;                       // for calls safe to retry
  std::chrono::milliseconds initial_backoff{100};
  int64_t max_message_bytes = 64 << 20;
  ClientSecurity security;
};

// Parses "name", "name@3" or "name:label" into a v1::ModelRef.
absl::StatusOr<v1::ModelRef> ParseModelRef(const std::string& text);

class SaeClient {
 public:
  // Creates a channel to `address` (host:port). Does not connect yet; the
  // first call reports an unreachable server as UNAVAILABLE.
  static std::unique_ptr<SaeClient> Create(const std::string& address,
                                           ClientOptions options = {});
  const std::string& address() const { return address_; }

  // OK when the server's health service says SERVING.
  absl::Status CheckHealth();

  // Training. `on_event` sees every WatchTrainingJob event; WatchJob returns
  // the final job.
  absl::StatusOr<v1::TrainingJob> Train(const v1::TrainRequest& request);
  absl::StatusOr<v1::TrainingJob> GetJob(const std::string& id);
  absl::StatusOr<std::vector<v1::TrainingJob>> ListJobs();
  absl::StatusOr<v1::TrainingJob> CancelJob(const std::string& id);
  absl::StatusOr<v1::TrainingJob> WatchJob(
      const std::string& id, const std::function<void(const v1::TrainingJob&)>& on_event);

  // Uploads a matrix as a float32 .npy in chunks; returns the dataset.
  absl::StatusOr<v1::Dataset> UploadDataset(ConstMatrixRef data, const std::string& display_name);
  absl::StatusOr<std::vector<v1::Dataset>> ListDatasets();
  absl::Status DeleteDataset(const std::string& id);

  // Inference on one batch (rows of a matrix).
  absl::StatusOr<RowMatrix> Encode(const v1::ModelRef& model, ConstMatrixRef x);
  absl::StatusOr<v1::SparseCodes> EncodeSparse(const v1::ModelRef& model, ConstMatrixRef x,
                                               int64_t top_n);
  absl::StatusOr<RowMatrix> Decode(const v1::ModelRef& model, ConstMatrixRef codes);
  absl::StatusOr<RowMatrix> Reconstruct(const v1::ModelRef& model, ConstMatrixRef x);
  absl::StatusOr<RowMatrix> Denoise(const v1::ModelRef& model, ConstMatrixRef x);

  // Streams `x` through StreamEncode/StreamReconstruct/StreamDenoise in
  // batches of `batch_rows`, handing each result batch to `sink` in order.
  // At most a few batches are in flight, so memory does not grow with x.
  enum class StreamOp { kEncode, kReconstruct, kDenoise };
  absl::Status Stream(StreamOp op, const v1::ModelRef& model, ConstMatrixRef x,
                      int64_t batch_rows,
                      const std::function<absl::Status(const RowMatrix& batch)>& sink);

  // Models.
  absl::StatusOr<std::vector<v1::ModelSummary>> ListModels();
  absl::StatusOr<v1::GetModelResponse> GetModel(const std::string& name);
  absl::Status DeleteModelVersion(const std::string& name, int64_t version, bool force);
  absl::StatusOr<std::map<std::string, int64_t>> SetLabel(const std::string& name,
                                                          const std::string& label,
                                                          int64_t version);
  // Uploads a SAELens folder (cfg.json + sae_weights.safetensors).
  absl::StatusOr<v1::ModelVersion> ImportModel(const std::string& name, const std::string& folder);
  // Writes a version's cfg.json and sae_weights.safetensors into `folder`.
  absl::Status ExportModel(const v1::ModelRef& model, const std::string& folder);

 private:
  SaeClient(std::string address, ClientOptions options);
  std::unique_ptr<grpc::ClientContext> Context() const;
  // Adds the bearer token, if any, to a call's metadata.
  void AddCredentials(grpc::ClientContext* ctx) const;
  // Runs `call` up to max_attempts times while it fails with UNAVAILABLE.
  absl::Status Retry(const std::function<grpc::Status(grpc::ClientContext*)>& call) const;

  const std::string address_;
  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SparseAutoencoderService::Stub> stub_;
};

// Converts a gRPC status, adding which server could not be reached.
absl::Status FromGrpcStatus(const grpc::Status& status, const std::string& address);

}  // namespace sae::client

#endif  // SAE_CLIENT_SAE_CLIENT_H_
