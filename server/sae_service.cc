#include "server/sae_service.h"

#include <unistd.h>

#include <cstdio>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/model_io.h"
#include "server/log.h"
#include "server/status_util.h"
#include "server/tensor_codec.h"

namespace sae::server {
namespace {

constexpr size_t kExportChunkBytes = 1 << 20;
constexpr int64_t kMaxImportBytes = int64_t{4} << 30;

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

absl::StatusOr<ModelRef> FromProto(const v1::ModelRef& ref, const std::string& field) {
  ModelRef out;
  out.name = ref.name();
  if (absl::Status s = ValidateStoreName(out.name, "model"); !s.ok()) {
    return Invalid(field + ".name", std::string(s.message()));
  }
  switch (ref.selector_case()) {
    case v1::ModelRef::kVersion:
      if (ref.version() < 1) return Invalid(field + ".version", "must be >= 1");
      out.version = ref.version();
      break;
    case v1::ModelRef::kLabel:
      if (absl::Status s = ValidateStoreName(ref.label(), "label"); !s.ok()) {
        return Invalid(field + ".label", std::string(s.message()));
      }
      if (ref.label() != "latest") out.label = ref.label();
      break;
    default:
      break;  // latest
  }
  return out;
}

absl::StatusOr<Activation> ActivationFromProto(v1::Activation a) {
  switch (a) {
    case v1::ACTIVATION_UNSPECIFIED:
    case v1::ACTIVATION_RELU: return Activation::kRelu;
    case v1::ACTIVATION_TOPK: return Activation::kTopK;
    case v1::ACTIVATION_SIGMOID: return Activation::kSigmoid;
    case v1::ACTIVATION_JUMPRELU: return Activation::kJumpRelu;
    default: return Invalid("config.activation", absl::StrCat("unknown value ", a));
  }
}

v1::Activation ActivationToProto(Activation a) {
  switch (a) {
    case Activation::kRelu: return v1::ACTIVATION_RELU;
    case Activation::kTopK: return v1::ACTIVATION_TOPK;
    case Activation::kSigmoid: return v1::ACTIVATION_SIGMOID;
    case Activation::kJumpRelu: return v1::ACTIVATION_JUMPRELU;
  }
  return v1::ACTIVATION_UNSPECIFIED;
}

absl::StatusOr<ModelConfig> ConfigFromProto(const v1::ModelConfig& p) {
  absl::StatusOr<Activation> act = ActivationFromProto(p.activation());
  if (!act.ok()) return act.status();
  ModelConfig c = DefaultConfig(p.d_in(), p.d_hidden(), *act);
  if (p.k() != 0 || *act != Activation::kTopK) c.k = p.k();
  c.l1_coefficient = p.l1_coefficient();
  if (p.kl_rho() != 0) c.kl_rho = p.kl_rho();
  if (p.kl_beta() != 0) c.kl_beta = p.kl_beta();
  c.weight_decay = p.weight_decay();
  c.clip_output = p.clip_output();
  if (p.clip_output()) {
    c.clip_min = p.clip_min();
    c.clip_max = p.clip_max();
  }
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

void ConfigToProto(const ModelConfig& c, v1::ModelConfig* p) {
  p->set_d_in(c.d_in);
  p->set_d_hidden(c.d_hidden);
  p->set_activation(ActivationToProto(c.activation));
  p->set_k(c.k);
  p->set_l1_coefficient(c.l1_coefficient);
  p->set_kl_rho(c.kl_rho);
  p->set_kl_beta(c.kl_beta);
  p->set_weight_decay(c.weight_decay);
  p->set_clip_output(c.clip_output);
  p->set_clip_min(c.clip_min);
  p->set_clip_max(c.clip_max);
  p->set_input_scale(c.input_scale);
}

absl::StatusOr<TrainerOptions> OptionsFromProto(const v1::TrainingOptions& p) {
  TrainerOptions o;
  if (p.batch_size() != 0) o.batch_size = p.batch_size();
  if (p.epochs() != 0) o.epochs = p.epochs();
  o.max_steps = p.max_steps();
  o.validation_fraction = p.validation_fraction();
  if (p.seed() != 0) o.seed = p.seed();
  switch (p.optimizer()) {
    case v1::OPTIMIZER_UNSPECIFIED:
    case v1::OPTIMIZER_ADAM: o.optimizer.kind = OptimizerKind::kAdam; break;
    case v1::OPTIMIZER_SGD: o.optimizer.kind = OptimizerKind::kSgd; break;
    default: return Invalid("options.optimizer", absl::StrCat("unknown value ", p.optimizer()));
  }
  if (p.learning_rate() != 0) o.optimizer.learning_rate = p.learning_rate();
  o.optimizer.warmup_steps = p.warmup_steps();
  switch (p.corruption()) {
    case v1::CORRUPTION_UNSPECIFIED:
    case v1::CORRUPTION_NONE: o.corruption.kind = CorruptionKind::kNone; break;
    case v1::CORRUPTION_GAUSSIAN: o.corruption.kind = CorruptionKind::kGaussian; break;
    case v1::CORRUPTION_MASKING: o.corruption.kind = CorruptionKind::kMasking; break;
    case v1::CORRUPTION_SALT_AND_PEPPER: o.corruption.kind = CorruptionKind::kSaltAndPepper; break;
    default: return Invalid("options.corruption", absl::StrCat("unknown value ", p.corruption()));
  }
  if (p.noise_sigma() != 0) o.corruption.sigma = p.noise_sigma();
  if (p.noise_probability() != 0) o.corruption.probability = p.noise_probability();
  o.corruption.clip = p.noise_clip();
  o.corruption.low = p.noise_low();
  if (p.noise_high() != 0) o.corruption.high = p.noise_high();
  o.normalize_input = p.normalize_input();
  o.progress_every_steps = 10;
  if (absl::Status s = o.Validate(); !s.ok()) {
    // The core names its own fields; the caller knows the request's.
    static constexpr std::pair<absl::string_view, absl::string_view> kRequestNames[] = {
        {"trainer.", "options."},
        {"optimizer.", "options."},
        {"corruption.sigma", "options.noise_sigma"},
        {"corruption.probability", "options.noise_probability"},
        {"corruption.low/high", "options.noise_low/noise_high"}};
    for (const auto& [core_name, request_name] : kRequestNames) {
      if (absl::StartsWith(s.message(), core_name)) {
        return absl::Status(s.code(), absl::StrCat(request_name,
                                                   s.message().substr(core_name.size())));
      }
    }
    return s;
  }
  return o;
}

v1::JobState StateToProto(JobState s) {
  switch (s) {
    case JobState::kQueued: return v1::JOB_STATE_QUEUED;
    case JobState::kRunning: return v1::JOB_STATE_RUNNING;
    case JobState::kSucceeded: return v1::JOB_STATE_SUCCEEDED;
    case JobState::kFailed: return v1::JOB_STATE_FAILED;
    case JobState::kCancelled: return v1::JOB_STATE_CANCELLED;
    case JobState::kInterrupted: return v1::JOB_STATE_INTERRUPTED;
  }
  return v1::JOB_STATE_UNSPECIFIED;
}

void JobToProto(const JobInfo& j, v1::TrainingJob* p) {
  p->set_id(j.id);
  p->set_model_name(j.model_name);
  p->set_state(StateToProto(j.state));
  p->set_published_version(j.published_version);
  p->set_error(j.error);
  p->set_created_at(j.created_at);
  p->set_request_id(j.request_id);
  for (const auto& [k, v] : j.metrics) (*p->mutable_metrics())[k] = v;
  v1::TrainingProgress* g = p->mutable_progress();
  const TrainingProgress& t = j.progress;
  g->set_step(t.step);
  g->set_total_steps(t.total_steps);
  g->set_epoch(t.epoch);
  g->set_rows_seen(t.rows_seen);
  g->set_loss(t.loss);
  g->set_mse(t.mse);
  g->set_fvu(t.fvu);
  g->set_mean_l0(t.mean_l0);
  g->set_dead_fraction(t.dead_fraction);
  g->set_rows_per_second(t.rows_per_s);
  g->set_elapsed_seconds(t.elapsed_s);
  g->set_eta_seconds(t.eta_s);
}

void VersionToProto(const VersionInfo& v, const ModelConfig* config, v1::ModelVersion* p) {
  p->set_version(v.version);
  for (const std::string& l : v.labels) p->add_labels(l);
  if (config != nullptr) ConfigToProto(*config, p->mutable_config());
  for (const auto& [k, x] : v.metadata.metrics) (*p->mutable_metrics())[k] = x;
  for (const auto& [k, x] : v.metadata.training) (*p->mutable_training())[k] = x;
  p->set_source(v.metadata.source);
  p->set_created_at(v.metadata.created_at);
  p->set_description(v.metadata.description);
  p->set_bytes(v.bytes);
}

// Checks the deadline and cancellation before work starts.
absl::Status CheckContext(grpc::ServerContextBase* context) {
  if (context->IsCancelled()) return absl::CancelledError("the call was cancelled");
  if (context->deadline() < std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("the deadline passed before the work started");
  }
  return absl::OkStatus();
}

std::string TempDir(const std::string& root) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("%s/.import-%d-%016x", root, ::getpid(), rng());
}

}  // namespace

SaeService::SaeService(ModelStore* store, ModelRegistry* registry, TrainingJobManager* jobs,
                       DatasetStore* datasets, Batcher* batcher, Metrics* metrics,
                       const TokenAuthenticator* auth, ServiceLimits limits, ComputePool* pool)
    : store_(store), registry_(registry), jobs_(jobs), datasets_(datasets), batcher_(batcher),
      metrics_(metrics), auth_(auth), limits_(limits), pool_(pool) {}

absl::Status SaeService::RunOffCallbackThread(std::function<void()> fn, int64_t bytes) {
  if (pool_ == nullptr) {
    fn();
    return absl::OkStatus();
  }
  if (pool_->TryRun(std::move(fn), bytes, limits_.max_waiting_bytes)) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the server is busy: requests of more than ", limits_.max_waiting_bytes,
      " bytes already wait for a compute thread; retry with backoff"));
}

grpc::Status SaeService::Authorize(grpc::ServerContextBase* context, absl::string_view method) const {
  if (auth_ == nullptr) return grpc::Status::OK;
  absl::string_view header;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    header = absl::string_view(it->second.data(), it->second.size());
  }
  std::string caller;
  absl::Status status = auth_->Check(header, method, &caller);
  if (status.code() == absl::StatusCode::kPermissionDenied) {
    // Names the caller by the token's name; the token itself is never logged.
    LogLine("auth", absl::StrCat("refused ", method, " to '", caller, "' from ", context->peer(),
                                 ": read role"));
  }
  return ToGrpcStatus(status);
}

absl::Status SaeService::Compute(const std::string& model_name, const ServedModel& served,
                                 BatchOp op, ConstMatrixRef x, const CallInfo& call,
                                 RowMatrix* out) {
  if (metrics_ != nullptr) metrics_->RecordRows(model_name, served.version, x.rows());
  if (batcher_ != nullptr) {
    return batcher_->Run(model_name, served.model, op, x, call.deadline, call.cancelled, out);
  }
  const Model& m = *served.model;
  out->resize(x.rows(), op == BatchOp::kEncode ? m.d_hidden() : m.d_in());
  switch (op) {
    case BatchOp::kEncode: return m.Encode(x, *out);
    case BatchOp::kReconstruct: return m.Reconstruct(x, *out);
    case BatchOp::kDenoise: return m.Denoise(x, *out);
  }
  return absl::InternalError("unknown operation");
}

namespace {

CallInfo InfoOf(grpc::ServerContextBase* context) {
  CallInfo info;
  info.deadline = absl::FromChrono(context->deadline());
  info.cancelled = [context] { return context->IsCancelled(); };
  return info;
}

}  // namespace

// ---- training ----------------------------------------------------------

absl::Status SaeService::DoTrain(const v1::TrainRequest& request, v1::TrainResponse* response) {
  if (!limits_.accept_training) {
    return absl::FailedPreconditionError(
        "this replica does not train (--accept_training=false); send Train to a trainer replica");
  }
  JobSpec spec;
  spec.model_name = request.model_name();
  if (absl::Status s = ValidateStoreName(spec.model_name, "model"); !s.ok()) {
    return Invalid("model_name", std::string(s.message()));
  }
  if (!request.has_config()) return Invalid("config", "missing: give at least d_in and d_hidden");
  absl::StatusOr<ModelConfig> config = ConfigFromProto(request.config());
  if (!config.ok()) return config.status();
  absl::StatusOr<TrainerOptions> options = OptionsFromProto(request.options());
  if (!options.ok()) return options.status();
  spec.config = *config;
  spec.options = *options;
  if (request.request_id().size() > 128) return Invalid("request_id", "at most 128 characters");
  if (request.description().size() > 4096) return Invalid("description", "at most 4096 characters");
  spec.request_id = request.request_id();
  spec.description = request.description();
  // Before the data is copied or loaded (up to --max_dataset_mb): a full
  // queue costs a refused call nothing, and a retry gets its job back.
  absl::StatusOr<std::optional<JobInfo>> admitted = jobs_->CheckAdmission(spec.request_id);
  if (!admitted.ok()) return admitted.status();
  if (admitted->has_value()) {
    JobToProto(**admitted, response->mutable_job());
    return absl::OkStatus();
  }
  switch (request.data_case()) {
    case v1::TrainRequest::kInlineData: {
      TensorLimits limits{config->d_in, limits_.max_inline_training_rows};
      absl::StatusOr<ConstMatrixMap> data = ViewTensor(request.inline_data(), "inline_data", limits);
      if (!data.ok()) return data.status();
      spec.data = std::make_shared<const RowMatrix>(*data);
      break;
    }
    case v1::TrainRequest::kDatasetId: {
      absl::StatusOr<std::shared_ptr<const RowMatrix>> data = datasets_->Load(request.dataset_id());
      if (!data.ok()) return data.status();
      spec.data = *data;
      break;
    }
    default:
      return Invalid("data", "missing: send inline_data or a dataset_id from UploadDataset");
  }
  absl::StatusOr<JobInfo> job = jobs_->Submit(std::move(spec));
  if (!job.ok()) return job.status();
  JobToProto(*job, response->mutable_job());
  return absl::OkStatus();
}

grpc::Status SaeService::Train(grpc::ServerContext* context, const v1::TrainRequest* request,
                               v1::TrainResponse* response) {
  if (grpc::Status denied = Authorize(context, "Train"); !denied.ok()) return denied;
  return ToGrpcStatus(DoTrain(*request, response));
}

grpc::Status SaeService::GetTrainingJob(grpc::ServerContext* context,
                                        const v1::GetTrainingJobRequest* request,
                                        v1::GetTrainingJobResponse* response) {
  if (grpc::Status denied = Authorize(context, "GetTrainingJob"); !denied.ok()) return denied;
  absl::StatusOr<JobInfo> job = jobs_->Get(request->job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  JobToProto(*job, response->mutable_job());
  return grpc::Status::OK;
}

grpc::Status SaeService::ListTrainingJobs(grpc::ServerContext* context, const v1::ListTrainingJobsRequest*,
                                          v1::ListTrainingJobsResponse* response) {
  if (grpc::Status denied = Authorize(context, "ListTrainingJobs"); !denied.ok()) return denied;
  for (const JobInfo& j : jobs_->List()) JobToProto(j, response->add_jobs());
  return grpc::Status::OK;
}

grpc::Status SaeService::CancelTrainingJob(grpc::ServerContext* context,
                                           const v1::CancelTrainingJobRequest* request,
                                           v1::CancelTrainingJobResponse* response) {
  if (grpc::Status denied = Authorize(context, "CancelTrainingJob"); !denied.ok()) return denied;
  absl::StatusOr<JobInfo> job = jobs_->Cancel(request->job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  JobToProto(*job, response->mutable_job());
  return grpc::Status::OK;
}

grpc::Status SaeService::WatchTrainingJob(grpc::ServerContext* context,
                                          const v1::WatchTrainingJobRequest* request,
                                          grpc::ServerWriter<v1::WatchTrainingJobResponse>* writer) {
  if (grpc::Status denied = Authorize(context, "WatchTrainingJob"); !denied.ok()) return denied;
  int64_t revision = -1;
  while (true) {
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled");
    absl::StatusOr<JobInfo> job =
        jobs_->WaitForChange(request->job_id(), revision, absl::Milliseconds(500));
    if (!job.ok()) return ToGrpcStatus(job.status());
    if (job->revision != revision) {
      revision = job->revision;
      v1::WatchTrainingJobResponse event;
      JobToProto(*job, event.mutable_job());
      if (!writer->Write(event)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
    if (IsFinal(job->state)) return grpc::Status::OK;
  }
}

// ---- datasets ----------------------------------------------------------

grpc::Status SaeService::UploadDataset(grpc::ServerContext* context,
                                       grpc::ServerReader<v1::UploadDatasetRequest>* reader,
                                       v1::UploadDatasetResponse* response) {
  if (grpc::Status denied = Authorize(context, "UploadDataset"); !denied.ok()) return denied;
  v1::UploadDatasetRequest chunk;
  std::unique_ptr<DatasetUpload> upload;
  while (reader->Read(&chunk)) {
    if (upload == nullptr) {
      absl::StatusOr<std::unique_ptr<DatasetUpload>> u =
          datasets_->StartUpload(chunk.format(), chunk.columns(), chunk.display_name());
      if (!u.ok()) return ToGrpcStatus(u.status());
      upload = std::move(*u);
    }
    if (absl::Status s = upload->Append(chunk.chunk()); !s.ok()) return ToGrpcStatus(s);
  }
  if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled");
  if (upload == nullptr) {
    return ToGrpcStatus(Invalid("chunk", "the upload stream held no messages"));
  }
  absl::StatusOr<DatasetInfo> info = upload->Finish();
  if (!info.ok()) return ToGrpcStatus(info.status());
  v1::Dataset* d = response->mutable_dataset();
  d->set_id(info->id);
  d->set_display_name(info->display_name);
  d->set_rows(info->rows);
  d->set_columns(info->columns);
  d->set_bytes(info->bytes);
  d->set_created_at(info->created_at);
  LogLine("dataset", absl::StrCat("stored ", info->id, ": ", info->rows, " x ", info->columns));
  return grpc::Status::OK;
}

grpc::Status SaeService::ListDatasets(grpc::ServerContext* context, const v1::ListDatasetsRequest*,
                                      v1::ListDatasetsResponse* response) {
  if (grpc::Status denied = Authorize(context, "ListDatasets"); !denied.ok()) return denied;
  absl::StatusOr<std::vector<DatasetInfo>> list = datasets_->List();
  if (!list.ok()) return ToGrpcStatus(list.status());
  for (const DatasetInfo& info : *list) {
    v1::Dataset* d = response->add_datasets();
    d->set_id(info.id);
    d->set_display_name(info.display_name);
    d->set_rows(info.rows);
    d->set_columns(info.columns);
    d->set_bytes(info.bytes);
    d->set_created_at(info.created_at);
  }
  return grpc::Status::OK;
}

grpc::Status SaeService::DeleteDataset(grpc::ServerContext* context, const v1::DeleteDatasetRequest* request,
                                       v1::DeleteDatasetResponse*) {
  if (grpc::Status denied = Authorize(context, "DeleteDataset"); !denied.ok()) return denied;
  return ToGrpcStatus(datasets_->Delete(request->dataset_id()));
}

// ---- inference ---------------------------------------------------------

absl::Status SaeService::CheckReplyFits(int64_t rows, int64_t cols, int64_t extra_bytes) const {
  // Both encodings of a tensor (packed floats, raw bytes) take 4 bytes a
  // value; 1 KiB covers the tags, the shape and the version.
  const double bytes = 4.0 * static_cast<double>(rows) * static_cast<double>(cols) +
                       static_cast<double>(extra_bytes) + 1024.0;
  if (bytes <= static_cast<double>(limits_.max_reply_bytes)) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the reply would hold ", rows, " x ", cols, " float32 values (about ",
      static_cast<int64_t>(bytes / (1 << 20)), " MiB), above the server's message limit of ",
      limits_.max_reply_bytes, " bytes (--max_message_mb); send at most ",
      std::max<int64_t>(1, (limits_.max_reply_bytes - 1024 - extra_bytes) /
                               std::max<int64_t>(1, 4 * cols)),
      " rows per call"));
}

absl::StatusOr<SaeService::Inference> SaeService::Prepare(const v1::ModelRef& model,
                                                         const v1::Tensor& input, BatchOp op,
                                                         Reply reply) const {
  absl::StatusOr<ModelRef> ref = FromProto(model, "model");
  if (!ref.ok()) return ref.status();
  absl::StatusOr<ServedModel> served = registry_->Get(*ref);
  if (!served.ok()) return served.status();
  absl::StatusOr<ConstMatrixMap> x =
      ViewTensor(input, "input", {served->model->d_in(), limits_.max_rows_per_request});
  if (!x.ok()) return x.status();
  if (reply == Reply::kDense) {
    const Model& m = *served->model;
    const int64_t cols = op == BatchOp::kEncode ? m.d_hidden() : m.d_in();
    // Reconstruct adds one float a row (its MSE).
    const int64_t extra = op == BatchOp::kReconstruct ? 8 * x->rows() : 0;
    if (absl::Status s = CheckReplyFits(x->rows(), cols, extra); !s.ok()) return s;
  }
  return Inference{ref->name, *std::move(served), *x};
}

void SaeService::FillEncode(const v1::EncodeRequest& request, const Inference& in,
                            const RowMatrix& codes, v1::EncodeResponse* response) {
  FillTensor(codes, request.raw_output(), response->mutable_dense());
  response->set_model_version(in.served.version);
}

void SaeService::FillReconstruct(const v1::ReconstructRequest& request, const Inference& in,
                                 const RowMatrix& out, v1::ReconstructResponse* response) {
  FillTensor(out, request.raw_output(), response->mutable_output());
  for (Eigen::Index r = 0; r < out.rows(); ++r) {
    response->add_row_mse((out.row(r) - in.x.row(r)).squaredNorm() / static_cast<float>(out.cols()));
  }
  response->set_model_version(in.served.version);
}

void SaeService::FillDenoise(const v1::DenoiseRequest& request, const Inference& in,
                             const RowMatrix& out, v1::DenoiseResponse* response) {
  FillTensor(out, request.raw_output(), response->mutable_output());
  response->set_model_version(in.served.version);
}

absl::Status SaeService::EncodeSparse(const v1::EncodeRequest& request, const Inference& in,
                                      v1::EncodeResponse* response) const {
  // An entry is an index and a value, 4 bytes each (plus a varint's tag
  // overhead, which the packed encoding does not have); each row adds an
  // offset.
  const int64_t max_entries =
      std::max<int64_t>(1, (limits_.max_reply_bytes - 1024 - 8 * in.x.rows()) / 8);
  absl::StatusOr<SparseCodes> codes =
      in.served.model->EncodeSparse(in.x, request.top_n(), max_entries);
  if (absl::IsResourceExhausted(codes.status())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the sparse reply would exceed the server's message limit of ", limits_.max_reply_bytes,
        " bytes (--max_message_mb): ", codes.status().message(),
        "; send fewer rows per call or set top_n"));
  }
  if (!codes.ok()) return codes.status();
  v1::SparseCodes* s = response->mutable_sparse();
  s->set_rows(codes->rows);
  s->set_d_hidden(codes->d_hidden);
  s->mutable_row_offsets()->Add(codes->row_offsets.begin(), codes->row_offsets.end());
  s->mutable_indices()->Add(codes->indices.begin(), codes->indices.end());
  s->mutable_values()->Add(codes->values.begin(), codes->values.end());
  response->set_model_version(in.served.version);
  return absl::OkStatus();
}

template <typename Request, typename Response, typename FillFn>
absl::Status SaeService::Serve(const Request& request, const Inference& in, BatchOp op,
                               FillFn fill, const CallInfo& call, Response* response) {
  RowMatrix out;
  if (absl::Status s = Compute(in.model_name, in.served, op, in.x, call, &out); !s.ok()) return s;
  fill(request, in, out, response);
  return absl::OkStatus();
}

absl::Status SaeService::DoEncode(const v1::EncodeRequest& request, v1::EncodeResponse* response,
                                  const CallInfo& call) {
  if (request.top_n() < 0) return Invalid("top_n", "must be >= 0");
  absl::StatusOr<Inference> in = Prepare(request.model(), request.input(), BatchOp::kEncode,
                                         request.sparse() ? Reply::kSparse : Reply::kDense);
  if (!in.ok()) return in.status();
  if (request.sparse()) return EncodeSparse(request, *in, response);
  return Serve(request, *in, BatchOp::kEncode, &FillEncode, call, response);
}

absl::Status SaeService::DoDecode(const v1::DecodeRequest& request, v1::DecodeResponse* response) {
  absl::StatusOr<ModelRef> ref = FromProto(request.model(), "model");
  if (!ref.ok()) return ref.status();
  absl::StatusOr<ServedModel> served = registry_->Get(*ref);
  if (!served.ok()) return served.status();
  absl::StatusOr<ConstMatrixMap> codes = ViewTensor(
      request.codes(), "codes", {served->model->d_hidden(), limits_.max_rows_per_request});
  if (!codes.ok()) return codes.status();
  if (absl::Status s = CheckReplyFits(codes->rows(), served->model->d_in(), 0); !s.ok()) return s;
  absl::StatusOr<RowMatrix> out = served->model->Decode(*codes);
  if (!out.ok()) return out.status();
  FillTensor(*out, request.raw_output(), response->mutable_output());
  response->set_model_version(served->version);
  return absl::OkStatus();
}

absl::Status SaeService::DoReconstruct(const v1::ReconstructRequest& request,
                                       v1::ReconstructResponse* response, const CallInfo& call) {
  absl::StatusOr<Inference> in = Prepare(request.model(), request.input(), BatchOp::kReconstruct);
  if (!in.ok()) return in.status();
  return Serve(request, *in, BatchOp::kReconstruct, &FillReconstruct, call, response);
}

absl::Status SaeService::DoDenoise(const v1::DenoiseRequest& request, v1::DenoiseResponse* response,
                                   const CallInfo& call) {
  absl::StatusOr<Inference> in = Prepare(request.model(), request.input(), BatchOp::kDenoise);
  if (!in.ok()) return in.status();
  return Serve(request, *in, BatchOp::kDenoise, &FillDenoise, call, response);
}

namespace {

// A unary Encode, Reconstruct or Denoise call waiting for its batch, on the
// callback API: no thread waits for it. It completes when the batcher hands
// back its rows (on the thread that computed the batch), or when the client
// cancels or the deadline passes while its rows are still queued.
class BatchedCall final : public grpc::ServerUnaryReactor {
 public:
  // Fills the response from the computed rows.
  using Fill = std::function<void(const RowMatrix& out)>;

  BatchedCall(Batcher* batcher, grpc::CallbackServerContext* context, Fill fill)
      : batcher_(batcher), context_(context), fill_(std::move(fill)) {}

  // Queues the rows (or computes them on this thread when the queue is
  // idle). Called once, from the method handler.
  void Start(const std::string& model_name, const std::shared_ptr<const Model>& model, BatchOp op,
             ConstMatrixRef x) {
    const Batcher::Ticket ticket =
        batcher_->Submit(model_name, model, op, x, absl::FromChrono(context_->deadline()), &out_,
                         [this](absl::Status s) { Complete(std::move(s)); });
    absl::MutexLock lock(&mu_);
    ticket_ = ticket;
  }

  // gRPC calls it only after the handler returned, so ticket_ is set (the
  // lock makes that visible to tools that cannot see gRPC's own ordering);
  // a call already being computed completes normally (its result is
  // dropped by gRPC).
  void OnCancel() override {
    Batcher::Ticket ticket;
    {
      absl::MutexLock lock(&mu_);
      ticket = ticket_;
    }
    if (!batcher_->Cancel(ticket)) return;
    Finish(context_->deadline() <= std::chrono::system_clock::now()
               ? grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                              "the deadline passed while queued for batching")
               : grpc::Status(grpc::StatusCode::CANCELLED,
                              "the call was cancelled while queued for batching"));
  }
  void OnDone() override { delete this; }

 private:
  void Complete(absl::Status status) {
    if (status.ok()) fill_(out_);
    Finish(ToGrpcStatus(status));
  }

  Batcher* const batcher_;
  grpc::CallbackServerContext* const context_;
  const Fill fill_;
  RowMatrix out_;
  absl::Mutex mu_;
  Batcher::Ticket ticket_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

template <typename Request, typename Response, typename FillFn, typename SyncFn>
grpc::ServerUnaryReactor* SaeService::StartInference(grpc::CallbackServerContext* context,
                                                     absl::string_view method, BatchOp op,
                                                     bool batchable, const Request* request,
                                                     Response* response, FillFn fill,
                                                     SyncFn sync) {
  auto finish_now = [context](const grpc::Status& status) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(status);
    return reactor;
  };
  if (grpc::Status denied = Authorize(context, method); !denied.ok()) return finish_now(denied);
  if (absl::Status s = CheckContext(context); !s.ok()) return finish_now(ToGrpcStatus(s));
  if (!batchable) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    absl::Status queued = RunOffCallbackThread(
        [reactor, context, sync] {
          // Checked again when the work starts: it may have waited for a thread.
          absl::Status s = CheckContext(context);
          reactor->Finish(ToGrpcStatus(s.ok() ? sync(InfoOf(context)) : s));
        },
        static_cast<int64_t>(request->ByteSizeLong()));
    if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
    return reactor;
  }
  absl::StatusOr<Inference> in = Prepare(request->model(), request->input(), op);
  if (!in.ok()) return finish_now(ToGrpcStatus(in.status()));
  // The call owns what the work needs: the model version and the view of
  // the request (gRPC keeps the request until the call is done).
  auto prepared = std::make_shared<Inference>(*std::move(in));
  if (batcher_ == nullptr || !batcher_->Merges(prepared->model_name, prepared->x.rows())) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    absl::Status queued = RunOffCallbackThread(
        [this, reactor, context, prepared, op, request, response, fill] {
          absl::Status s = CheckContext(context);
          if (s.ok()) s = Serve(*request, *prepared, op, fill, InfoOf(context), response);
          reactor->Finish(ToGrpcStatus(s));
        },
        static_cast<int64_t>(request->ByteSizeLong()));
    if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
    return reactor;
  }
  if (metrics_ != nullptr) {
    metrics_->RecordRows(prepared->model_name, prepared->served.version, prepared->x.rows());
  }
  auto* call = new BatchedCall(batcher_, context,
                               [prepared, request, response, fill](const RowMatrix& out) {
                                 fill(*request, *prepared, out, response);
                               });
  call->Start(prepared->model_name, prepared->served.model, op, prepared->x);
  return call;
}

grpc::ServerUnaryReactor* SaeService::Encode(grpc::CallbackServerContext* context,
                                             const v1::EncodeRequest* request,
                                             v1::EncodeResponse* response) {
  // Sparse codes are not batched (nor is a request DoEncode will refuse).
  const bool batchable = !request->sparse() && request->top_n() >= 0;
  return StartInference(context, "Encode", BatchOp::kEncode, batchable, request, response,
                        &FillEncode,
                        [this, request, response](const CallInfo& call) {
                          return DoEncode(*request, response, call);
                        });
}

grpc::Status SaeService::Decode(grpc::ServerContext* context, const v1::DecodeRequest* request,
                                v1::DecodeResponse* response) {
  if (grpc::Status denied = Authorize(context, "Decode"); !denied.ok()) return denied;
  if (absl::Status s = CheckContext(context); !s.ok()) return ToGrpcStatus(s);
  return ToGrpcStatus(DoDecode(*request, response));
}

grpc::ServerUnaryReactor* SaeService::Reconstruct(grpc::CallbackServerContext* context,
                                                  const v1::ReconstructRequest* request,
                                                  v1::ReconstructResponse* response) {
  return StartInference(context, "Reconstruct", BatchOp::kReconstruct, /*batchable=*/true,
                        request, response,
                        &FillReconstruct, [this, request, response](const CallInfo& call) {
                          return DoReconstruct(*request, response, call);
                        });
}

grpc::ServerUnaryReactor* SaeService::Denoise(grpc::CallbackServerContext* context,
                                              const v1::DenoiseRequest* request,
                                              v1::DenoiseResponse* response) {
  return StartInference(context, "Denoise", BatchOp::kDenoise, /*batchable=*/true, request,
                        response, &FillDenoise,
                        [this, request, response](const CallInfo& call) {
                          return DoDenoise(*request, response, call);
                        });
}

namespace {

// Serves a bidirectional stream one message at a time: read, compute,
// write. Memory stays flat however long the stream (one request and one
// response alive at a time); order is kept; the first bad message ends the
// stream with its status.
template <typename Req, typename Resp, typename Fn>
grpc::Status ServeStream(grpc::ServerContext* context, grpc::ServerReaderWriter<Resp, Req>* stream,
                         Fn fn) {
  Req request;
  Resp response;
  int64_t index = 0;
  while (stream->Read(&request)) {
    if (absl::Status s = CheckContext(context); !s.ok()) return ToGrpcStatus(s);
    response.Clear();
    absl::Status s = fn(request, &response);
    if (!s.ok()) {
      return ToGrpcStatus(absl::Status(s.code(), absl::StrCat("message ", index, ": ", s.message())));
    }
    if (!stream->Write(response)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    ++index;
  }
  return grpc::Status::OK;
}

}  // namespace

grpc::Status SaeService::StreamEncode(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::StreamEncodeResponse, v1::StreamEncodeRequest>* stream) {
  if (grpc::Status denied = Authorize(context, "StreamEncode"); !denied.ok()) return denied;
  return ServeStream(context, stream,
                     [this, context](const v1::StreamEncodeRequest& r, v1::StreamEncodeResponse* out) {
                       return DoEncode(r.request(), out->mutable_response(), InfoOf(context));
                     });
}

grpc::Status SaeService::StreamReconstruct(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::StreamReconstructResponse, v1::StreamReconstructRequest>* stream) {
  if (grpc::Status denied = Authorize(context, "StreamReconstruct"); !denied.ok()) return denied;
  return ServeStream(context, stream,
                     [this, context](const v1::StreamReconstructRequest& r, v1::StreamReconstructResponse* out) {
                       return DoReconstruct(r.request(), out->mutable_response(), InfoOf(context));
                     });
}

grpc::Status SaeService::StreamDenoise(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::StreamDenoiseResponse, v1::StreamDenoiseRequest>* stream) {
  if (grpc::Status denied = Authorize(context, "StreamDenoise"); !denied.ok()) return denied;
  return ServeStream(context, stream,
                     [this, context](const v1::StreamDenoiseRequest& r, v1::StreamDenoiseResponse* out) {
                       return DoDenoise(r.request(), out->mutable_response(), InfoOf(context));
                     });
}

// ---- models ------------------------------------------------------------

grpc::Status SaeService::ListModels(grpc::ServerContext* context, const v1::ListModelsRequest*,
                                    v1::ListModelsResponse* response) {
  if (grpc::Status denied = Authorize(context, "ListModels"); !denied.ok()) return denied;
  absl::StatusOr<StoreSnapshot> snap = store_->Snapshot();
  if (!snap.ok()) return ToGrpcStatus(snap.status());
  for (const auto& [name, state] : snap->models) {
    v1::ModelSummary* m = response->add_models();
    m->set_name(name);
    m->set_version_count(static_cast<int64_t>(state.versions.size()));
    m->set_latest_version(state.versions.empty() ? 0 : state.versions.back());
    for (const auto& [label, v] : state.labels) (*m->mutable_labels())[label] = v;
  }
  return grpc::Status::OK;
}

grpc::Status SaeService::GetModel(grpc::ServerContext* context, const v1::GetModelRequest* request,
                                  v1::GetModelResponse* response) {
  if (grpc::Status denied = Authorize(context, "GetModel"); !denied.ok()) return denied;
  absl::StatusOr<std::vector<VersionInfo>> versions = store_->ListVersions(request->name());
  if (!versions.ok()) return ToGrpcStatus(versions.status());
  absl::StatusOr<std::map<std::string, int64_t>> labels = store_->Labels(request->name());
  if (!labels.ok()) return ToGrpcStatus(labels.status());
  response->set_name(request->name());
  for (const VersionInfo& v : *versions) {
    // The config comes from the version's small files; the weights stay on disk.
    absl::StatusOr<ModelConfig> config = ReadModelConfig(
        absl::StrCat(store_->root(), "/", request->name(), "/", v.version));
    VersionToProto(v, config.ok() ? &*config : nullptr, response->add_versions());
  }
  for (const auto& [label, v] : *labels) (*response->mutable_labels())[label] = v;
  return grpc::Status::OK;
}

grpc::Status SaeService::DeleteModelVersion(grpc::ServerContext* context,
                                            const v1::DeleteModelVersionRequest* request,
                                            v1::DeleteModelVersionResponse*) {
  if (grpc::Status denied = Authorize(context, "DeleteModelVersion"); !denied.ok()) return denied;
  if (request->version() < 1) return ToGrpcStatus(Invalid("version", "must be >= 1"));
  absl::Status s = store_->DeleteVersion(request->name(), request->version(), request->force());
  if (s.ok()) {
    LogLine("model", absl::StrCat("deleted ", request->name(), "@", request->version()));
    registry_->Refresh();  // this replica stops serving it at once
  }
  return ToGrpcStatus(s);
}

grpc::Status SaeService::SetModelLabel(grpc::ServerContext* context, const v1::SetModelLabelRequest* request,
                                       v1::SetModelLabelResponse* response) {
  if (grpc::Status denied = Authorize(context, "SetModelLabel"); !denied.ok()) return denied;
  if (request->version() < 0) return ToGrpcStatus(Invalid("version", "must be >= 0"));
  absl::Status s = request->version() == 0
                       ? store_->RemoveLabel(request->name(), request->label())
                       : store_->SetLabel(request->name(), request->label(), request->version());
  if (!s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<std::map<std::string, int64_t>> labels = store_->Labels(request->name());
  if (!labels.ok()) return ToGrpcStatus(labels.status());
  for (const auto& [label, v] : *labels) (*response->mutable_labels())[label] = v;
  registry_->Refresh();
  return grpc::Status::OK;
}

grpc::Status SaeService::ImportModel(grpc::ServerContext* context,
                                     grpc::ServerReader<v1::ImportModelRequest>* reader,
                                     v1::ImportModelResponse* response) {
  if (grpc::Status denied = Authorize(context, "ImportModel"); !denied.ok()) return denied;
  const std::string dir = TempDir(store_->root());
  if (absl::Status s = MakeDirectory(dir); !s.ok()) return ToGrpcStatus(s);
  struct Cleanup {
    std::string dir;
    ~Cleanup() { RemoveTree(dir).IgnoreError(); }
  } cleanup{dir};
  std::string name;
  std::map<std::string, std::FILE*> files;
  int64_t total = 0;
  absl::Status status;
  v1::ImportModelRequest chunk;
  while (status.ok() && reader->Read(&chunk)) {
    if (name.empty()) name = chunk.name();
    if (chunk.file_name() != kCfgFileName && chunk.file_name() != kWeightsFileName) {
      status = Invalid("file_name", absl::StrCat("'", chunk.file_name().substr(0, 64), "' is not ",
                                                 kCfgFileName, " or ", kWeightsFileName));
      break;
    }
    total += static_cast<int64_t>(chunk.chunk().size());
    if (total > kMaxImportBytes) {
      status = absl::ResourceExhaustedError("model upload exceeds 4 GiB");
      break;
    }
    std::FILE*& f = files[chunk.file_name()];
    if (f == nullptr) f = std::fopen((dir + "/" + chunk.file_name()).c_str(), "wb");
    if (f == nullptr || std::fwrite(chunk.chunk().data(), 1, chunk.chunk().size(), f) != chunk.chunk().size()) {
      status = absl::InternalError("cannot write the uploaded model");
    }
  }
  for (auto& [_, f] : files) {
    if (f != nullptr) std::fclose(f);
  }
  if (!status.ok()) return ToGrpcStatus(status);
  if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "import cancelled");
  if (absl::Status s = ValidateStoreName(name, "model"); !s.ok()) {
    return ToGrpcStatus(Invalid("name", std::string(s.message())));
  }
  absl::StatusOr<LoadedModel> loaded = ImportSaeLensFolder(dir);
  if (!loaded.ok()) {
    // A malformed upload is the caller's bad input, not lost server data.
    const absl::StatusCode code = absl::IsDataLoss(loaded.status())
                                      ? absl::StatusCode::kInvalidArgument
                                      : loaded.status().code();
    std::string message(loaded.status().message());
    if (message.rfind(dir, 0) == 0) message = message.substr(dir.size() + 1);
    return ToGrpcStatus(absl::Status(code, absl::StrCat("uploaded model: ", message)));
  }
  absl::StatusOr<int64_t> version = store_->Publish(name, *loaded->model, loaded->metadata);
  if (!version.ok()) return ToGrpcStatus(version.status());
  LogLine("model", absl::StrCat("imported ", name, "@", *version));
  registry_->Refresh();
  VersionInfo info;
  info.version = *version;
  info.metadata = loaded->metadata;
  VersionToProto(info, &loaded->model->config(), response->mutable_version());
  return grpc::Status::OK;
}

grpc::Status SaeService::ExportModel(grpc::ServerContext* context,
                                     const v1::ExportModelRequest* request,
                                     grpc::ServerWriter<v1::ExportModelResponse>* writer) {
  if (grpc::Status denied = Authorize(context, "ExportModel"); !denied.ok()) return denied;
  absl::StatusOr<ModelRef> ref = FromProto(request->model(), "model");
  if (!ref.ok()) return ToGrpcStatus(ref.status());
  absl::StatusOr<int64_t> version = store_->Resolve(*ref);
  if (!version.ok()) return ToGrpcStatus(version.status());
  // Verify before sending: a corrupt version is never handed out.
  absl::StatusOr<LoadedModel> check = store_->Load(ModelRef::Version(ref->name, *version));
  if (!check.ok()) return ToGrpcStatus(check.status());
  const std::string dir = absl::StrCat(store_->root(), "/", ref->name, "/", *version);
  for (const char* file : {kCfgFileName, kWeightsFileName}) {
    // Read, not mapped: a file truncated under the export (on NFS, by
    // another client) is an error, not a SIGBUS.
    absl::StatusOr<FileReader> reader = FileReader::Open(dir + "/" + file);
    if (!reader.ok()) return ToGrpcStatus(reader.status());
    v1::ExportModelResponse chunk;
    chunk.set_file_name(file);
    uint64_t offset = 0;
    do {
      if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "export cancelled");
      const uint64_t n = std::min<uint64_t>(reader->size() - offset, kExportChunkBytes);
      std::string* bytes = chunk.mutable_chunk();
      bytes->resize(n);
      if (absl::Status s = reader->ReadAt(offset, n, bytes->data()); !s.ok()) {
        return ToGrpcStatus(absl::DataLossError(absl::StrCat(
            "version ", *version, " of '", ref->name, "' changed while it was exported: ",
            s.message())));
      }
      offset += n;
      if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    } while (offset < reader->size());
  }
  return grpc::Status::OK;
}

}  // namespace sae::server
