#include "client/sae_client.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <fstream>
#include <thread>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/dataset_io.h"
#include "core/file_util.h"
#include "core/mapped_file.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace sae::client {
namespace {

constexpr size_t kChunkBytes = 1 << 20;
// The widest reply row taken without data to back it (a reply of no rows).
constexpr uint64_t kMaxReplyWidth = uint64_t{1} << 31;

void SetTensor(ConstMatrixRef m, v1::Tensor* t) {
  t->add_shape(m.rows());
  t->add_shape(m.cols());
  std::string* raw = t->mutable_raw();
  raw->resize(static_cast<size_t>(m.size()) * 4);
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    std::memcpy(raw->data() + r * m.cols() * 4, m.row(r).data(), m.cols() * 4);
  }
}

// The reply's tensor as a matrix, checked against what was asked for:
// `rows` rows, and `cols` columns unless cols is -1 (an Encode's width is
// the model's). A reply that disagrees, with itself or with the request, is
// INTERNAL and nothing is allocated for it.
absl::StatusOr<RowMatrix> GetTensor(const v1::Tensor& t, int64_t rows, int64_t cols) {
  if (t.shape_size() != 2) return absl::InternalError("server sent a tensor without 2 dimensions");
  if (t.shape(0) != rows) {
    return absl::InternalError(
        absl::StrCat("server sent ", t.shape(0), " rows, expected ", rows));
  }
  if (t.shape(1) < 0 || (cols >= 0 && t.shape(1) != cols)) {
    return absl::InternalError(absl::StrCat("server sent rows of ", t.shape(1),
                                            " values, expected ", cols));
  }
  const size_t have = t.has_values() ? static_cast<size_t>(t.values().values_size()) * 4
                                     : t.raw().size();
  // The shape is the server's word: a width beyond what the data could hold
  // is refused before a product that could overflow.
  if (static_cast<uint64_t>(t.shape(1)) > std::max<uint64_t>(have / 4, kMaxReplyWidth)) {
    return absl::InternalError(absl::StrCat("server sent rows of ", t.shape(1),
                                            " values, more than its ", have,
                                            " bytes of data hold"));
  }
  const uint64_t row_bytes = static_cast<uint64_t>(t.shape(1)) * 4;
  if ((rows > 0 && row_bytes > have / static_cast<uint64_t>(rows)) ||
      row_bytes * static_cast<uint64_t>(rows) != have) {
    return absl::InternalError("server sent a tensor whose size differs from its shape");
  }
  RowMatrix m(rows, t.shape(1));
  if (have > 0) {
    std::memcpy(m.data(), t.has_values() ? static_cast<const void*>(t.values().values().data())
                                         : static_cast<const void*>(t.raw().data()),
                have);
  }
  return m;
}

// The reply's sparse codes, checked: one row per input row, offsets that
// rise from 0 to the entry count, and unit indices inside [0, d_hidden).
absl::Status CheckSparseCodes(const v1::SparseCodes& c, int64_t rows) {
  auto bad = [](absl::string_view why) {
    return absl::InternalError(absl::StrCat("server sent malformed sparse codes: ", why));
  };
  if (c.rows() != rows) return bad(absl::StrCat(c.rows(), " rows, expected ", rows));
  if (c.row_offsets_size() != rows + 1) return bad("row_offsets is not rows + 1 long");
  if (c.indices_size() != c.values_size()) return bad("indices and values differ in length");
  if (c.row_offsets(0) != 0 || c.row_offsets(rows) != c.indices_size()) {
    return bad("row_offsets do not span the entries");
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (c.row_offsets(r + 1) < c.row_offsets(r)) return bad("row_offsets decrease");
  }
  for (int32_t j : c.indices()) {
    if (j < 0 || j >= c.d_hidden()) return bad(absl::StrCat("unit ", j, " outside [0, d_hidden)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status, const std::string& address) {
  if (status.ok()) return absl::OkStatus();
  const absl::StatusCode code = static_cast<absl::StatusCode>(status.error_code());
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    return absl::UnavailableError(absl::StrCat("server unreachable at ", address, " (",
                                               status.error_message(),
                                               "); is sae_server running there?"));
  }
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return absl::DeadlineExceededError(absl::StrCat(
        "no answer from ", address, " before the deadline (", status.error_message(),
        "); raise --timeout_s or check the server's load"));
  }
  return absl::Status(code, status.error_message());
}

absl::StatusOr<v1::ModelRef> ParseModelRef(const std::string& text) {
  v1::ModelRef ref;
  const size_t at = text.find('@'), colon = text.find(':');
  if (at != std::string::npos && colon != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model '", text, "': use NAME, NAME@VERSION or NAME:LABEL"));
  }
  if (at != std::string::npos) {
    int64_t v;
    if (!absl::SimpleAtoi(text.substr(at + 1), &v) || v < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model '", text, "': the version after '@' must be a positive integer"));
    }
    ref.set_name(text.substr(0, at));
    ref.set_version(v);
  } else if (colon != std::string::npos) {
    ref.set_name(text.substr(0, colon));
    ref.set_label(text.substr(colon + 1));
  } else {
    ref.set_name(text);
  }
  if (ref.name().empty()) return absl::InvalidArgumentError("model name is empty");
  return ref;
}

absl::StatusOr<ClientSecurity> LoadClientSecurity(bool tls, const std::string& ca_file,
                                                  const std::string& cert_file,
                                                  const std::string& key_file,
                                                  const std::string& token_file) {
  ClientSecurity security;
  security.tls = tls || !ca_file.empty() || !cert_file.empty() || !key_file.empty();
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together (a client certificate and its key)");
  }
  for (const auto& [path, flag, pem] :
       {std::tuple{&ca_file, "--tls-ca", &security.ca_pem},
        std::tuple{&cert_file, "--tls-cert", &security.cert_pem},
        std::tuple{&key_file, "--tls-key", &security.key_pem}}) {
    if (path->empty()) continue;
    absl::StatusOr<std::string> text = ReadPemFile(*path, flag);
    if (!text.ok()) return text.status();
    *pem = std::move(*text);
  }
  if (!token_file.empty()) {
    absl::StatusOr<std::string> text = ReadSmallFile(token_file, 1 << 20);
    if (!text.ok()) {
      return absl::Status(text.status().code(),
                          absl::StrCat("--token-file: ", text.status().message()));
    }
    std::string token(absl::StripAsciiWhitespace(*text));
    if (token.empty() || token.find_first_of(" \t\r\n") != std::string::npos) {
      return absl::InvalidArgumentError(
          "--token-file must hold one token (without spaces), and nothing else");
    }
    security.token = std::move(token);
  }
  return security;
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const ClientSecurity& security) {
  if (!security.tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = security.ca_pem;
  ssl.pem_cert_chain = security.cert_pem;
  ssl.pem_private_key = security.key_pem;
  return grpc::SslCredentials(ssl);
}

std::unique_ptr<SaeClient> SaeClient::Create(const std::string& address, ClientOptions options) {
  return std::unique_ptr<SaeClient>(new SaeClient(address, options));
}

SaeClient::SaeClient(std::string address, ClientOptions options)
    : address_(std::move(address)), options_(options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options_.max_message_bytes));
  // With a name that resolves to several replicas (a headless Kubernetes
  // Service, dns:///host:port), spread calls over all of them.
  args.SetLoadBalancingPolicyName("round_robin");
  channel_ = grpc::CreateCustomChannel(address_, MakeChannelCredentials(options_.security), args);
  stub_ = v1::SparseAutoencoderService::NewStub(channel_);
}

void SaeClient::AddCredentials(grpc::ClientContext* ctx) const {
  if (!options_.security.token.empty()) {
    ctx->AddMetadata("authorization", "Bearer " + options_.security.token);
  }
}

std::unique_ptr<grpc::ClientContext> SaeClient::Context() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  AddCredentials(ctx.get());
  ctx->set_deadline(std::chrono::system_clock::now() + options_.deadline);
  return ctx;
}

absl::Status SaeClient::Retry(const std::function<grpc::Status(grpc::ClientContext*)>& call) const {
  auto backoff = options_.initial_backoff;
  grpc::Status status;
  for (int attempt = 1; attempt <= std::max(1, options_.max_attempts); ++attempt) {
    auto ctx = Context();
    status = call(ctx.get());
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    if (attempt < options_.max_attempts) {
      std::this_thread::sleep_for(backoff);
      backoff *= 2;
    }
  }
  return FromGrpcStatus(status, address_);
}

absl::Status SaeClient::CheckHealth() {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::health::v1::HealthCheckResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) {
    return health->Check(ctx, grpc::health::v1::HealthCheckRequest(), &response);
  });
  if (!s.ok()) return s;
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(absl::StrCat("server at ", address_, " is not serving"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::TrainingJob> SaeClient::Train(const v1::TrainRequest& request) {
  v1::TrainResponse response;
  auto call = [&](grpc::ClientContext* ctx) { return stub_->Train(ctx, request, &response); };
  absl::Status s;
  if (request.request_id().empty()) {  // not safe to repeat: one attempt
    auto ctx = Context();
    s = FromGrpcStatus(call(ctx.get()), address_);
  } else {
    s = Retry(call);
  }
  if (!s.ok()) return s;
  return response.job();
}

absl::StatusOr<v1::TrainingJob> SaeClient::GetJob(const std::string& id) {
  v1::GetTrainingJobRequest request;
  request.set_job_id(id);
  v1::GetTrainingJobResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) { return stub_->GetTrainingJob(ctx, request, &response); });
  if (!s.ok()) return s;
  return response.job();
}

absl::StatusOr<std::vector<v1::TrainingJob>> SaeClient::ListJobs() {
  v1::ListTrainingJobsResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) {
    return stub_->ListTrainingJobs(ctx, v1::ListTrainingJobsRequest(), &response);
  });
  if (!s.ok()) return s;
  return std::vector<v1::TrainingJob>(response.jobs().begin(), response.jobs().end());
}

absl::StatusOr<v1::TrainingJob> SaeClient::CancelJob(const std::string& id) {
  v1::CancelTrainingJobRequest request;
  request.set_job_id(id);
  v1::CancelTrainingJobResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) { return stub_->CancelTrainingJob(ctx, request, &response); });
  if (!s.ok()) return s;
  return response.job();
}

absl::StatusOr<v1::TrainingJob> SaeClient::WatchJob(
    const std::string& id, const std::function<void(const v1::TrainingJob&)>& on_event) {
  v1::WatchTrainingJobRequest request;
  request.set_job_id(id);
  v1::TrainingJob last;
  // A watch may outlive the per-call deadline: reconnect until the job ends.
  for (int attempt = 0; attempt < 1000; ++attempt) {
    grpc::ClientContext ctx;
    AddCredentials(&ctx);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::hours(24));
    auto reader = stub_->WatchTrainingJob(&ctx, request);
    v1::WatchTrainingJobResponse event;
    while (reader->Read(&event)) {
      last = event.job();
      if (on_event) on_event(last);
    }
    grpc::Status s = reader->Finish();
    if (s.ok()) return last;
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE) return FromGrpcStatus(s, address_);
    std::this_thread::sleep_for(options_.initial_backoff);
  }
  return absl::UnavailableError(absl::StrCat("lost the watch of job ", id));
}

absl::StatusOr<v1::Dataset> SaeClient::UploadDataset(ConstMatrixRef data,
                                                     const std::string& display_name) {
  const std::string npy = EncodeNpy(data);
  auto ctx = Context();
  ctx->set_deadline(std::chrono::system_clock::now() + options_.deadline * 10);
  v1::UploadDatasetResponse response;
  auto writer = stub_->UploadDataset(ctx.get(), &response);
  for (size_t off = 0; off < npy.size(); off += kChunkBytes) {
    v1::UploadDatasetRequest chunk;
    if (off == 0) {
      chunk.set_format("npy");
      chunk.set_display_name(display_name);
    }
    chunk.set_chunk(npy.substr(off, kChunkBytes));
    if (!writer->Write(chunk)) break;
  }
  writer->WritesDone();
  absl::Status s = FromGrpcStatus(writer->Finish(), address_);
  if (!s.ok()) return s;
  return response.dataset();
}

absl::StatusOr<std::vector<v1::Dataset>> SaeClient::ListDatasets() {
  v1::ListDatasetsResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) {
    return stub_->ListDatasets(ctx, v1::ListDatasetsRequest(), &response);
  });
  if (!s.ok()) return s;
  return std::vector<v1::Dataset>(response.datasets().begin(), response.datasets().end());
}

absl::Status SaeClient::DeleteDataset(const std::string& id) {
  v1::DeleteDatasetRequest request;
  request.set_dataset_id(id);
  v1::DeleteDatasetResponse response;
  return Retry([&](grpc::ClientContext* ctx) { return stub_->DeleteDataset(ctx, request, &response); });
}

absl::StatusOr<RowMatrix> SaeClient::Encode(const v1::ModelRef& model, ConstMatrixRef x) {
  v1::EncodeRequest request;
  *request.mutable_model() = model;
  SetTensor(x, request.mutable_input());
  request.set_raw_output(true);
  v1::EncodeResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) { return stub_->Encode(ctx, request, &response); });
  if (!s.ok()) return s;
  return GetTensor(response.dense(), x.rows(), -1);
}

absl::StatusOr<v1::SparseCodes> SaeClient::EncodeSparse(const v1::ModelRef& model, ConstMatrixRef x,
                                                        int64_t top_n) {
  v1::EncodeRequest request;
  *request.mutable_model() = model;
  SetTensor(x, request.mutable_input());
  request.set_sparse(true);
  request.set_top_n(top_n);
  v1::EncodeResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) { return stub_->Encode(ctx, request, &response); });
  if (!s.ok()) return s;
  if (absl::Status c = CheckSparseCodes(response.sparse(), x.rows()); !c.ok()) return c;
  return response.sparse();
}

absl::StatusOr<RowMatrix> SaeClient::Decode(const v1::ModelRef& model, ConstMatrixRef codes) {
  v1::DecodeRequest request;
  *request.mutable_model() = model;
  SetTensor(codes, request.mutable_codes());
  request.set_raw_output(true);
  v1::DecodeResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) { return stub_->Decode(ctx, request, &response); });
  if (!s.ok()) return s;
  return GetTensor(response.output(), codes.rows(), -1);
}

absl::StatusOr<RowMatrix> SaeClient::Reconstruct(const v1::ModelRef& model, ConstMatrixRef x) {
  v1::ReconstructRequest request;
  *request.mutable_model() = model;
  SetTensor(x, request.mutable_input());
  request.set_raw_output(true);
  v1::ReconstructResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) { return stub_->Reconstruct(ctx, request, &response); });
  if (!s.ok()) return s;
  return GetTensor(response.output(), x.rows(), x.cols());
}

absl::StatusOr<RowMatrix> SaeClient::Denoise(const v1::ModelRef& model, ConstMatrixRef x) {
  v1::DenoiseRequest request;
  *request.mutable_model() = model;
  SetTensor(x, request.mutable_input());
  request.set_raw_output(true);
  v1::DenoiseResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) { return stub_->Denoise(ctx, request, &response); });
  if (!s.ok()) return s;
  return GetTensor(response.output(), x.rows(), x.cols());
}

namespace {

// One streaming RPC, generic over its message types.
template <typename Req, typename Resp, typename Fill, typename Take>
absl::Status RunStream(std::unique_ptr<grpc::ClientReaderWriter<Req, Resp>> stream,
                       grpc::ClientContext* ctx, ConstMatrixRef x, int64_t batch_rows, Fill fill,
                       Take take, const std::function<absl::Status(const RowMatrix&)>& sink,
                       const std::string& address) {
  // The writer runs ahead of the reader by at most the transport's flow
  // control window, so memory stays bounded.
  std::thread writer([&] {
    Req request;
    for (Eigen::Index r0 = 0; r0 < x.rows(); r0 += batch_rows) {
      const Eigen::Index n = std::min<Eigen::Index>(batch_rows, x.rows() - r0);
      request.Clear();
      fill(x.middleRows(r0, n), &request);
      if (!stream->Write(request)) break;
    }
    stream->WritesDone();
  });
  // Answer i is batch i: its rows are known, and every answer has the
  // width of the first (the model's).
  Resp response;
  absl::Status sink_status;
  int64_t answered = 0, width = -1;
  while (stream->Read(&response)) {
    const int64_t expected = std::min<int64_t>(batch_rows, x.rows() - answered);
    absl::StatusOr<RowMatrix> batch =
        expected > 0 ? take(response, expected, width)
                     : absl::InternalError("server sent more answers than batches");
    if (!batch.ok()) sink_status = batch.status();
    if (sink_status.ok()) {
      answered += batch->rows();
      width = batch->cols();
      sink_status = sink(*batch);
    }
    if (!sink_status.ok()) {
      ctx->TryCancel();
      break;
    }
  }
  writer.join();
  grpc::Status s = stream->Finish();
  if (!sink_status.ok()) return sink_status;
  if (absl::Status f = FromGrpcStatus(s, address); !f.ok()) return f;
  if (answered != x.rows()) {
    return absl::InternalError(
        absl::StrCat("server answered ", answered, " of ", x.rows(), " rows"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SaeClient::Stream(StreamOp op, const v1::ModelRef& model, ConstMatrixRef x,
                               int64_t batch_rows,
                               const std::function<absl::Status(const RowMatrix&)>& sink) {
  if (batch_rows < 1) return absl::InvalidArgumentError("batch_rows must be >= 1");
  grpc::ClientContext ctx;
  AddCredentials(&ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + options_.deadline * 100);
  switch (op) {
    case StreamOp::kEncode:
      return RunStream(
          stub_->StreamEncode(&ctx), &ctx, x, batch_rows,
          [&](ConstMatrixRef rows, v1::StreamEncodeRequest* r) {
            *r->mutable_request()->mutable_model() = model;
            r->mutable_request()->set_raw_output(true);
            SetTensor(rows, r->mutable_request()->mutable_input());
          },
          [](const v1::StreamEncodeResponse& r, int64_t rows, int64_t width) {
            return GetTensor(r.response().dense(), rows, width);
          },
          sink,
          address_);
    case StreamOp::kReconstruct:
      return RunStream(
          stub_->StreamReconstruct(&ctx), &ctx, x, batch_rows,
          [&](ConstMatrixRef rows, v1::StreamReconstructRequest* r) {
            *r->mutable_request()->mutable_model() = model;
            r->mutable_request()->set_raw_output(true);
            SetTensor(rows, r->mutable_request()->mutable_input());
          },
          [&](const v1::StreamReconstructResponse& r, int64_t rows, int64_t) {
            return GetTensor(r.response().output(), rows, x.cols());
          },
          sink, address_);
    case StreamOp::kDenoise:
      return RunStream(
          stub_->StreamDenoise(&ctx), &ctx, x, batch_rows,
          [&](ConstMatrixRef rows, v1::StreamDenoiseRequest* r) {
            *r->mutable_request()->mutable_model() = model;
            r->mutable_request()->set_raw_output(true);
            SetTensor(rows, r->mutable_request()->mutable_input());
          },
          [&](const v1::StreamDenoiseResponse& r, int64_t rows, int64_t) {
            return GetTensor(r.response().output(), rows, x.cols());
          },
          sink, address_);
  }
  return absl::InternalError("unknown stream operation");
}

absl::StatusOr<std::vector<v1::ModelSummary>> SaeClient::ListModels() {
  v1::ListModelsResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) {
    return stub_->ListModels(ctx, v1::ListModelsRequest(), &response);
  });
  if (!s.ok()) return s;
  return std::vector<v1::ModelSummary>(response.models().begin(), response.models().end());
}

absl::StatusOr<v1::GetModelResponse> SaeClient::GetModel(const std::string& name) {
  v1::GetModelRequest request;
  request.set_name(name);
  v1::GetModelResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) { return stub_->GetModel(ctx, request, &response); });
  if (!s.ok()) return s;
  return response;
}

absl::Status SaeClient::DeleteModelVersion(const std::string& name, int64_t version, bool force) {
  v1::DeleteModelVersionRequest request;
  request.set_name(name);
  request.set_version(version);
  request.set_force(force);
  v1::DeleteModelVersionResponse response;
  auto ctx = Context();
  return FromGrpcStatus(stub_->DeleteModelVersion(ctx.get(), request, &response), address_);
}

absl::StatusOr<std::map<std::string, int64_t>> SaeClient::SetLabel(const std::string& name,
                                                                   const std::string& label,
                                                                   int64_t version) {
  v1::SetModelLabelRequest request;
  request.set_name(name);
  request.set_label(label);
  request.set_version(version);
  v1::SetModelLabelResponse response;
  absl::Status s = Retry([&](grpc::ClientContext* ctx) { return stub_->SetModelLabel(ctx, request, &response); });
  if (!s.ok()) return s;
  return std::map<std::string, int64_t>(response.labels().begin(), response.labels().end());
}

absl::StatusOr<v1::ModelVersion> SaeClient::ImportModel(const std::string& name,
                                                        const std::string& folder) {
  auto ctx = Context();
  ctx->set_deadline(std::chrono::system_clock::now() + options_.deadline * 10);
  v1::ImportModelResponse response;
  auto writer = stub_->ImportModel(ctx.get(), &response);
  bool first = true;
  for (const char* file : {"cfg.json", "sae_weights.safetensors"}) {
    absl::StatusOr<std::unique_ptr<MappedFile>> mapped = MappedFile::Open(folder + "/" + file);
    if (!mapped.ok()) {
      ctx->TryCancel();
      writer->Finish();
      return mapped.status();
    }
    absl::string_view bytes = (*mapped)->bytes();
    do {
      v1::ImportModelRequest chunk;
      if (first) chunk.set_name(name);
      first = false;
      chunk.set_file_name(file);
      const size_t n = std::min(bytes.size(), kChunkBytes);
      chunk.set_chunk(bytes.data(), n);
      bytes.remove_prefix(n);
      if (!writer->Write(chunk)) break;
    } while (!bytes.empty());
  }
  writer->WritesDone();
  absl::Status s = FromGrpcStatus(writer->Finish(), address_);
  if (!s.ok()) return s;
  return response.version();
}

absl::Status SaeClient::ExportModel(const v1::ModelRef& model, const std::string& folder) {
  if (absl::Status s = MakeDirectory(folder); !s.ok()) return s;
  v1::ExportModelRequest request;
  *request.mutable_model() = model;
  auto ctx = Context();
  ctx->set_deadline(std::chrono::system_clock::now() + options_.deadline * 10);
  auto reader = stub_->ExportModel(ctx.get(), request);
  std::map<std::string, std::ofstream> files;
  absl::Status written;
  v1::ExportModelResponse chunk;
  while (reader->Read(&chunk)) {
    if (chunk.file_name() != "cfg.json" && chunk.file_name() != "sae_weights.safetensors") {
      written = absl::InternalError(absl::StrCat(
          "server sent an unexpected file '", absl::CHexEscape(chunk.file_name().substr(0, 64)),
          "'; expected cfg.json and sae_weights.safetensors"));
      ctx->TryCancel();
      break;
    }
    auto it = files.find(chunk.file_name());
    if (it == files.end()) {
      it = files.emplace(chunk.file_name(),
                         std::ofstream(folder + "/" + chunk.file_name(), std::ios::binary))
               .first;
    }
    it->second.write(chunk.chunk().data(), static_cast<std::streamsize>(chunk.chunk().size()));
    if (!it->second) {
      written = absl::InternalError(
          absl::StrCat("cannot write ", folder, "/", chunk.file_name(), " (is the disk full?)"));
      ctx->TryCancel();
      break;
    }
  }
  for (auto& [name, f] : files) {
    f.close();
    if (!f && written.ok()) {
      written = absl::InternalError(absl::StrCat("cannot write ", folder, "/", name));
    }
  }
  const absl::Status received = FromGrpcStatus(reader->Finish(), address_);
  if (!written.ok()) return written;
  if (!received.ok()) return received;
  if (files.size() != 2) {
    return absl::InternalError(absl::StrCat("server sent ", files.size(),
                                            " of the model folder's 2 files"));
  }
  return absl::OkStatus();
}

}  // namespace sae::client
