// libFuzzer target for the service's request handling: every RPC of
// sae.v1.SparseAutoencoderService, through the same validation and handlers
// the RPCs use.
//
// Input layout: the first byte picks the method (modulo the number of
// methods); the rest is decoded as that method's request message. Inputs
// that do not decode are skipped, as gRPC refuses them before any handler
// runs. A decoded request is sent as the call's (first) message through a
// real channel to an in-process server on loopback, with a store holding one
// small model. A finding is a crash, a sanitizer report, or a status code the
// service never returns (UNKNOWN).
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/model.h"
#include "core/model_store.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "grpcpp/grpcpp.h"
#include "sae/v1/sae.grpc.pb.h"
#include "server/server.h"
#include "server/testing/generic_call.h"

namespace {

struct Harness {
  std::string root;
  std::unique_ptr<sae::ModelStore> store;
  std::unique_ptr<sae::server::Server> server;
  std::shared_ptr<grpc::Channel> channel;
  const google::protobuf::ServiceDescriptor* service = nullptr;
};

// Publishes model "m" (4 -> 8, labelled stable) unless the fuzzer deleted it.
void EnsureModel(sae::ModelStore* store) {
  absl::StatusOr<std::vector<sae::VersionInfo>> versions = store->ListVersions("m");
  if (versions.ok() && !versions->empty()) return;
  const sae::ModelConfig config = sae::DefaultConfig(4, 8, sae::Activation::kRelu);
  auto model = sae::Model::Create(config, sae::InitialWeights(config, 1));
  if (!model.ok()) std::abort();
  absl::StatusOr<int64_t> v = store->Publish("m", **model, {});
  if (!v.ok()) std::abort();
  store->SetLabel("m", "stable", *v).IgnoreError();
}

Harness& Get() {
  static Harness* h = [] {
    auto* h = new Harness;
    h->root = absl::StrCat("/dev/shm/sae_request_fuzz_", ::getpid());
    if (!sae::MakeDirectory(h->root).ok()) h->root = absl::StrCat("/tmp/sae_request_fuzz_", ::getpid());
    sae::RemoveTree(h->root).IgnoreError();
    auto store = sae::ModelStore::Open(h->root + "/models");
    if (!store.ok()) std::abort();
    h->store = std::move(*store);
    EnsureModel(h->store.get());
    sae::server::ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.security.plaintext = true;
    o.store_root = h->root + "/models";
    o.max_rows_per_request = 64;
    o.max_message_bytes = 1 << 20;
    o.max_dataset_bytes = 1 << 20;
    o.max_queued_jobs = 2;
    o.reload_interval = std::chrono::milliseconds(50);
    auto server = sae::server::Server::Start(o);
    if (!server.ok()) {
      std::fprintf(stderr, "request_fuzzer: %s\n", server.status().ToString().c_str());
      std::abort();
    }
    h->server = std::move(*server);
    h->channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", h->server->port()),
                                     grpc::InsecureChannelCredentials());
    h->service = sae::v1::EncodeRequest::descriptor()->file()->FindServiceByName(
        "SparseAutoencoderService");
    std::atexit([] { sae::RemoveTree(Get().root).IgnoreError(); });
    return h;
  }();
  return *h;
}

// Training jobs the fuzzer starts are cancelled at once: they would only
// compete for the CPU.
void CancelJobs(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = sae::v1::SparseAutoencoderService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  sae::v1::ListTrainingJobsResponse jobs;
  if (!stub->ListTrainingJobs(&ctx, {}, &jobs).ok()) return;
  for (const auto& job : jobs.jobs()) {
    if (job.state() != sae::v1::JOB_STATE_QUEUED && job.state() != sae::v1::JOB_STATE_RUNNING) {
      continue;
    }
    grpc::ClientContext cancel_ctx;
    sae::v1::CancelTrainingJobRequest cancel;
    cancel.set_job_id(job.id());
    sae::v1::CancelTrainingJobResponse out;
    stub->CancelTrainingJob(&cancel_ctx, cancel, &out).IgnoreError();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Harness& h = Get();
  const google::protobuf::MethodDescriptor* method =
      h.service->method(data[0] % h.service->method_count());
  std::unique_ptr<google::protobuf::Message> request(
      google::protobuf::MessageFactory::generated_factory()
          ->GetPrototype(method->input_type())
          ->New());
  if (!request->ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
  EnsureModel(h.store.get());
  const std::string path = absl::StrCat("/", h.service->full_name(), "/", method->name());
  const grpc::Status status = sae::server::testing::CallWithBytes(
      h.channel, path, request->SerializeAsString(), {}, std::chrono::seconds(2));
  if (status.error_code() == grpc::StatusCode::UNKNOWN) {
    std::fprintf(stderr, "%s returned UNKNOWN: %s\n", method->name().c_str(),
                 status.error_message().c_str());
    std::abort();
  }
  if (method->name() == "Train") CancelJobs(h.channel);
  return 0;
}
