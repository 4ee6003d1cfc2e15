// sae_load: served-load measurements against a sae_server.
//
// With --target it calls a running server (which must hold --model);
// without, it starts an in-process server on a temporary store and
// publishes a random 784 x 4096 ReLU model there, so one command measures
// everything. It prints key=value lines:
//
//   encode_p50_vs_health_p50     single-row Encode p50 over the health check's
//                                p50 (the bare RPC cost), same run. Target <= 3.
//   encode_p99_training_vs_idle  Encode p99 while a training job runs, over
//                                the idle p99. Target <= 3.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/model_store.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "sae/v1/sae.grpc.pb.h"
#include "server/server.h"

ABSL_FLAG(std::string, target, "", "host:port of a running server (empty: start one in-process)");
ABSL_FLAG(std::string, model, "load-test", "model to call (published automatically in-process)");
ABSL_FLAG(int64_t, d_in, 784, "input width of the in-process model");
ABSL_FLAG(int64_t, d_hidden, 4096, "hidden units of the in-process model");
ABSL_FLAG(int, calls, 2000, "calls per latency measurement");
ABSL_FLAG(bool, quick, false, "few calls and a small model (a smoke run)");

namespace {

using Clock = std::chrono::steady_clock;

struct Latencies {
  std::vector<double> ms;
  double Percentile(double p) {
    std::sort(ms.begin(), ms.end());
    return ms[std::min(ms.size() - 1, static_cast<size_t>(p * ms.size()))];
  }
};

template <typename Fn>
Latencies Measure(int calls, Fn fn) {
  Latencies l;
  for (int i = 0; i < calls; ++i) {
    const auto start = Clock::now();
    if (!fn()) {
      std::fprintf(stderr, "sae_load: a call failed\n");
      std::exit(1);
    }
    l.ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Served-load measurements against sae_server (see the header).");
  absl::ParseCommandLine(argc, argv);
  const bool quick = absl::GetFlag(FLAGS_quick);
  const int calls = quick ? 100 : absl::GetFlag(FLAGS_calls);
  const int64_t d_in = quick ? 64 : absl::GetFlag(FLAGS_d_in);
  const int64_t d_hidden = quick ? 256 : absl::GetFlag(FLAGS_d_hidden);
  const std::string model_name = absl::GetFlag(FLAGS_model);

  std::string target = absl::GetFlag(FLAGS_target);
  std::unique_ptr<sae::server::Server> server;
  std::string root;
  if (target.empty()) {
    root = absl::StrCat("/tmp/sae_load_", ::getpid());
    sae::RemoveTree(root).IgnoreError();
    auto store = sae::ModelStore::Open(root + "/models");
    sae::ModelConfig c = sae::DefaultConfig(d_in, d_hidden, sae::Activation::kRelu);
    auto model = sae::Model::Create(c, sae::InitialWeights(c, 1));
    if (!store.ok() || !model.ok() || !(*store)->Publish(model_name, **model, {}).ok()) {
      std::fprintf(stderr, "sae_load: cannot prepare the in-process store\n");
      return 1;
    }
    sae::server::ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.store_root = root + "/models";
    auto started = sae::server::Server::Start(options);
    if (!started.ok()) {
      std::fprintf(stderr, "sae_load: %s\n", started.status().ToString().c_str());
      return 1;
    }
    server = std::move(*started);
    target = absl::StrCat("127.0.0.1:", server->port());
  }
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = sae::v1::SparseAutoencoderService::NewStub(channel);
  auto health = grpc::health::v1::Health::NewStub(channel);

  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(0, 1);
  sae::v1::EncodeRequest encode;
  encode.mutable_model()->set_name(model_name);
  encode.mutable_input()->add_shape(1);
  encode.mutable_input()->add_shape(d_in);
  std::string raw(d_in * 4, '\0');
  for (int64_t i = 0; i < d_in; ++i) {
    const float v = u(rng);
    std::memcpy(raw.data() + 4 * i, &v, 4);
  }
  encode.mutable_input()->set_raw(raw);
  encode.set_raw_output(true);
  auto encode_once = [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    sae::v1::EncodeResponse out;
    return stub->Encode(&ctx, encode, &out).ok();
  };
  auto health_once = [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::health::v1::HealthCheckResponse out;
    return health->Check(&ctx, {}, &out).ok();
  };
  Measure(50, encode_once);  // warm-up: loads the model, opens the channel
  Measure(50, health_once);
  Latencies health_lat = Measure(calls, health_once);
  Latencies idle = Measure(calls, encode_once);
  const double health_p50 = health_lat.Percentile(0.5);
  const double idle_p50 = idle.Percentile(0.5), idle_p99 = idle.Percentile(0.99);
  std::printf("health: p50 %.3f ms | encode 1 row idle: p50 %.3f ms, p99 %.3f ms\n",
              health_p50, idle_p50, idle_p99);

  // A training job on the same server, then Encode latency while it runs.
  sae::v1::TrainRequest train;
  train.set_model_name(model_name + "-training");
  train.mutable_config()->set_d_in(d_in);
  train.mutable_config()->set_d_hidden(d_hidden);
  train.mutable_options()->set_epochs(1000000);
  const int64_t rows = 1024;
  std::string data(rows * d_in * 4, '\0');
  for (int64_t i = 0; i < rows * d_in; ++i) {
    const float v = u(rng);
    std::memcpy(data.data() + 4 * i, &v, 4);
  }
  train.mutable_inline_data()->add_shape(rows);
  train.mutable_inline_data()->add_shape(d_in);
  train.mutable_inline_data()->set_raw(data);
  sae::v1::TrainResponse job;
  {
    grpc::ClientContext ctx;
    grpc::Status s = stub->Train(&ctx, train, &job);
    if (!s.ok()) {
      std::fprintf(stderr, "sae_load: Train failed: %s\n", s.error_message().c_str());
      return 1;
    }
  }
  // Wait until it is running.
  for (int i = 0; i < 500; ++i) {
    grpc::ClientContext ctx;
    sae::v1::GetTrainingJobRequest get;
    get.set_job_id(job.job().id());
    sae::v1::GetTrainingJobResponse now;
    stub->GetTrainingJob(&ctx, get, &now);
    if (now.job().progress().step() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  Latencies busy = Measure(calls, encode_once);
  {
    grpc::ClientContext ctx;
    sae::v1::CancelTrainingJobRequest cancel;
    cancel.set_job_id(job.job().id());
    sae::v1::CancelTrainingJobResponse out;
    stub->CancelTrainingJob(&ctx, cancel, &out);
  }
  const double busy_p99 = busy.Percentile(0.99);
  std::printf("encode 1 row while training: p50 %.3f ms, p99 %.3f ms\n", busy.Percentile(0.5),
              busy_p99);
  std::printf("health_p50_ms=%.4f\n", health_p50);
  std::printf("encode_p50_ms=%.4f\n", idle_p50);
  std::printf("encode_p99_idle_ms=%.4f\n", idle_p99);
  std::printf("encode_p99_training_ms=%.4f\n", busy_p99);
  std::printf("encode_p50_vs_health_p50=%.3f\n", idle_p50 / health_p50);
  std::printf("encode_p99_training_vs_idle=%.3f\n", busy_p99 / idle_p99);
  if (server) {
    server->Shutdown(std::chrono::milliseconds(500));
    server.reset();
    sae::RemoveTree(root).IgnoreError();
  }
  return 0;
}
