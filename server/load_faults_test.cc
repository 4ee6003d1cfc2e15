// The service under load and faults, loopback only and bounded in time:
// - overload: far more concurrent calls than the batching queue admits; the
//   excess is refused quickly with RESOURCE_EXHAUSTED, the admitted calls
//   finish, the server's memory stays bounded, and it serves normally after;
// - hot reload under load: Encode calls without pause (and a training job
//   running) while a new version is published, a label moved to it, and a
//   corrupt version published: no call fails, the label change is served
//   within 5 s, the corrupt version is refused and counted.
#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/model.h"
#include "core/model_store.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sae/v1/sae.grpc.pb.h"
#include "server/server.h"
#include "server/testing/test_util.h"

namespace sae::server {
namespace {

using Clock = std::chrono::steady_clock;
using v1::SparseAutoencoderService;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// Publishes a fresh ReLU model d_in -> d_hidden as the next version of `name`.
int64_t PublishModel(ModelStore* store, const std::string& name, int64_t d_in, int64_t d_hidden,
                     uint64_t seed) {
  ModelConfig config = DefaultConfig(d_in, d_hidden, Activation::kRelu);
  auto model = Model::Create(config, InitialWeights(config, seed));
  EXPECT_TRUE(model.ok()) << model.status();
  absl::StatusOr<int64_t> v = store->Publish(name, **model, {});
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : 0;
}

int64_t ResidentKb(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

TEST(OverloadTest, ExcessIsRefusedQuicklyMemoryStaysBoundedAndServingResumes) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/overload_", ::getpid());
  ASSERT_TRUE(RemoveTree(root).ok());
  ASSERT_TRUE(MakeDirectory(root).ok());
  {
    auto store = ModelStore::Open(root + "/models");
    ASSERT_TRUE(store.ok());
    PublishModel(store->get(), "big", 784, 4096, 1);
  }
  // Merged products of up to 32 rows, 64 rows that may wait in the queue,
  // and 64 rows of unmerged calls in progress, whatever the load.
  absl::StatusOr<testing::ServerProcess> server = testing::ServerProcess::Start(
      SAE_SERVER_BINARY,
      {"--plaintext", "--listen=127.0.0.1:0", "--store=" + root + "/models",
       "--batch_max_rows=32", "--batch_max_queued_rows=64", "--compute_threads=1",
       "--shutdown_grace_s=2"},
      root + "/server.log");
  ASSERT_TRUE(server.ok()) << server.status();
  // Eight connections, as many clients would open.
  std::vector<std::unique_ptr<SparseAutoencoderService::Stub>> stubs;
  for (int i = 0; i < 8; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("sae.test.connection", i);  // a connection of its own
    stubs.push_back(SparseAutoencoderService::NewStub(grpc::CreateCustomChannel(
        server->address(), grpc::InsecureChannelCredentials(), args)));
  }
  auto& stub = stubs[0];
  // Calls of 8 rows wait in the batching queue; calls of 32 rows (too large
  // to merge) are computed at once: both kinds are bounded.
  v1::DenoiseRequest request, small_request;
  request.mutable_model()->set_name("big");
  testing::SetTensor(testing::RandomMatrix(32, 784, 5), request.mutable_input(), true);
  request.set_raw_output(true);
  small_request = request;
  small_request.clear_input();
  testing::SetTensor(testing::RandomMatrix(8, 784, 6), small_request.mutable_input(), true);
  {
    grpc::ClientContext ctx;
    v1::DenoiseResponse out;
    ASSERT_TRUE(stub->Denoise(&ctx, request, &out).ok());  // loads the model
  }
  const int64_t rss_start = ResidentKb(server->pid());

  // Bursts of 256 calls sent at once (25 MB of rows in all).
  constexpr int kCalls = 256;
  std::vector<int64_t> rss_after;
  int64_t refused_total = 0, admitted_total = 0;
  for (int burst = 0; burst < 3; ++burst) {
    grpc::CompletionQueue cq;
    struct Call {
      grpc::ClientContext ctx;
      v1::DenoiseResponse response;
      grpc::Status status;
      std::unique_ptr<grpc::ClientAsyncResponseReader<v1::DenoiseResponse>> reader;
      Clock::time_point start, end;
      size_t rows = 0;
    };
    std::vector<std::unique_ptr<Call>> calls(kCalls);
    for (int i = 0; i < kCalls; ++i) {
      calls[i] = std::make_unique<Call>();
      Call* c = calls[i].get();
      c->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      c->start = Clock::now();
      c->rows = i % 2 == 0 ? 32 : 8;
      c->reader = stubs[i % stubs.size()]->AsyncDenoise(&c->ctx, i % 2 == 0 ? request : small_request, &cq);
      c->reader->Finish(&c->response, &c->status, c);
    }
    for (int i = 0; i < kCalls; ++i) {
      void* tag;
      bool ok;
      ASSERT_TRUE(cq.Next(&tag, &ok));
      static_cast<Call*>(tag)->end = Clock::now();
    }
    std::vector<double> refused_ms, admitted_ms;
    for (const auto& c : calls) {
      if (c->status.ok()) {
        admitted_ms.push_back(Ms(c->end - c->start));
        EXPECT_EQ(c->response.output().raw().size(), c->rows * 784 * 4);
      } else {
        ASSERT_EQ(c->status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
            << c->status.error_message();
        EXPECT_NE(c->status.error_message().find("is full"), std::string::npos);
        refused_ms.push_back(Ms(c->end - c->start));
      }
    }
    std::sort(refused_ms.begin(), refused_ms.end());
    std::sort(admitted_ms.begin(), admitted_ms.end());
    refused_total += refused_ms.size();
    admitted_total += admitted_ms.size();
    ASSERT_FALSE(admitted_ms.empty());
    if (!refused_ms.empty()) {
      std::printf("burst %d: %zu admitted (max %.1f ms), %zu refused (p50 %.1f ms, max %.1f ms)\n",
                  burst, admitted_ms.size(), admitted_ms.back(), refused_ms.size(),
                  refused_ms[refused_ms.size() / 2], refused_ms.back());
      // Refused at the door: draining the queue of 256 calls would take
      // seconds (each merged product of 32 rows takes milliseconds).
      EXPECT_LT(refused_ms[refused_ms.size() / 2], 1000.0);
    }
    rss_after.push_back(ResidentKb(server->pid()));
  }
  EXPECT_GT(refused_total, kCalls / 2) << "the queue admitted most calls: no overload";
  std::printf("RSS: %lld kB before, after each burst %lld, %lld, %lld kB\n",
              static_cast<long long>(rss_start), static_cast<long long>(rss_after[0]),
              static_cast<long long>(rss_after[1]), static_cast<long long>(rss_after[2]));
  // Bounded: a burst costs at most what the queue admits plus gRPC's
  // buffers, and bursts do not add up.
  EXPECT_LT(rss_after[0] - rss_start, 256 * 1024);
  EXPECT_LT(rss_after[2] - rss_after[0], 64 * 1024);

  // Once the load drops, every call is served.
  for (int i = 0; i < 20; ++i) {
    grpc::ClientContext ctx;
    v1::DenoiseResponse out;
    grpc::Status s = stub->Denoise(&ctx, request, &out);
    ASSERT_TRUE(s.ok()) << "after the load: " << s.error_message();
  }
  const int status = server->Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  RemoveTree(root).IgnoreError();
}

class HotReloadUnderLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = absl::StrCat(::testing::TempDir(), "/reload_load_", ::getpid());
    ASSERT_TRUE(RemoveTree(root_).ok());
    auto store = ModelStore::Open(root_ + "/models");
    ASSERT_TRUE(store.ok());
    store_ = std::move(*store);
    ASSERT_EQ(PublishModel(store_.get(), "m", 64, 256, 1), 1);
    ASSERT_TRUE(store_->SetLabel("m", "stable", 1).ok());
    ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.security.plaintext = true;
    o.store_root = root_ + "/models";
    o.metrics_listen = "127.0.0.1:0";
    o.reload_interval = std::chrono::milliseconds(100);
    auto server = Server::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = SparseAutoencoderService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", server_->port()), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    server_.reset();
    RemoveTree(root_).IgnoreError();
  }

  // Copies version `from` of m into a new version folder `to` with one
  // weight byte changed, renamed into place in one step, as bit rot or a
  // faulty copy would leave it.
  void PlantCorruptVersion(int from, int to) {
    const std::string model_dir = root_ + "/models/m";
    const std::string tmp = model_dir + "/.tmp-planted";
    ASSERT_TRUE(MakeDirectory(tmp).ok());
    for (const char* file : {"cfg.json", "sae_weights.safetensors", "sae_service.json"}) {
      std::ifstream in(absl::StrCat(model_dir, "/", from, "/", file), std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      ASSERT_FALSE(bytes.empty()) << file;
      if (std::string(file) == "sae_weights.safetensors") bytes[bytes.size() - 5] ^= 0x11;
      std::ofstream(tmp + "/" + file, std::ios::binary) << bytes;
    }
    ASSERT_EQ(::rename(tmp.c_str(), absl::StrCat(model_dir, "/", to).c_str()), 0);
  }

  std::string root_;
  std::unique_ptr<ModelStore> store_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<SparseAutoencoderService::Stub> stub_;
};

TEST_F(HotReloadUnderLoadTest, NoCallFailsWhileVersionsAndLabelsChangeAndTrainingRuns) {
  // Training runs on the same server the whole time.
  v1::TrainRequest train;
  train.set_model_name("trained");
  train.mutable_config()->set_d_in(64);
  train.mutable_config()->set_d_hidden(256);
  train.mutable_options()->set_max_steps(3000);
  train.mutable_options()->set_epochs(100000);
  train.mutable_options()->set_batch_size(64);
  testing::SetTensor(testing::RandomMatrix(256, 64, 2), train.mutable_inline_data(), true);
  v1::TrainResponse started;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Train(&ctx, train, &started).ok());
  }

  // Clients: half ask for m:stable, half for the latest m, without pause.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> calls{0}, failures{0};
  std::atomic<int64_t> stable_version{1}, latest_version{1};
  std::atomic<int64_t> stable_went_back{0};
  std::mutex first_error_mu;
  std::string first_error;
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      v1::EncodeRequest r;
      r.mutable_model()->set_name("m");
      if (t % 2 == 0) r.mutable_model()->set_label("stable");
      testing::SetTensor(testing::RandomMatrix(2, 64, t), r.mutable_input());
      int64_t last = 0;
      while (!stop) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
        v1::EncodeResponse out;
        grpc::Status s = stub_->Encode(&ctx, r, &out);
        ++calls;
        if (!s.ok()) {
          ++failures;
          std::lock_guard<std::mutex> lock(first_error_mu);
          if (first_error.empty()) first_error = s.error_message();
          continue;
        }
        if (t % 2 == 0) {
          if (out.model_version() < last) ++stable_went_back;
          last = out.model_version();
          stable_version = out.model_version();
        } else {
          latest_version = out.model_version();
        }
      }
    });
  }
  auto wait_for = [](const std::function<bool()>& done, std::chrono::seconds limit) {
    const auto start = Clock::now();
    while (!done() && Clock::now() - start < limit) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return Clock::now() - start;
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  auto job_state = [&] {
    grpc::ClientContext ctx;
    v1::GetTrainingJobRequest get;
    get.set_job_id(started.job().id());
    v1::GetTrainingJobResponse response;
    EXPECT_TRUE(stub_->GetTrainingJob(&ctx, get, &response).ok());
    return response.job().state();
  };
  // The job trains while the versions change.
  EXPECT_EQ(job_state(), v1::JOB_STATE_RUNNING);

  // A new version, then the label moved to it.
  ASSERT_EQ(PublishModel(store_.get(), "m", 64, 256, 2), 2);
  const auto latest_took = wait_for([&] { return latest_version == 2; }, std::chrono::seconds(10));
  EXPECT_EQ(latest_version, 2) << "latest did not follow the publish";
  EXPECT_EQ(stable_version, 1) << "the label moved before it was set";
  ASSERT_TRUE(store_->SetLabel("m", "stable", 2).ok());
  const auto label_took = wait_for([&] { return stable_version == 2; }, std::chrono::seconds(10));
  EXPECT_EQ(stable_version, 2);
  EXPECT_LT(label_took, std::chrono::seconds(5)) << "the label change took " << Ms(label_took)
                                                 << " ms";

  // A corrupt version 3: refused and counted, version 2 keeps serving.
  const int metrics_port = server_->metrics_port();
  const double failures_before = testing::Sample(
      testing::HttpGet(metrics_port, "/metrics"), "sae_model_reload_failures_total", {});
  PlantCorruptVersion(2, 3);
  wait_for(
      [&] {
        return testing::Sample(testing::HttpGet(metrics_port, "/metrics"),
                               "sae_model_reload_failures_total", {}) > failures_before;
      },
      std::chrono::seconds(10));
  const double failures_after = testing::Sample(
      testing::HttpGet(metrics_port, "/metrics"), "sae_model_reload_failures_total", {});
  EXPECT_GT(failures_after, failures_before) << "the corrupt version was not reported";
  const int64_t calls_then = calls;
  wait_for([&] { return calls >= calls_then + 200; }, std::chrono::seconds(10));
  EXPECT_EQ(latest_version, 2) << "a corrupt version was served";

  const v1::JobState state_at_end_of_load = job_state();
  // The load stops; the training job, which ran beside it, finishes.
  stop = true;
  for (std::thread& t : clients) t.join();
  v1::TrainingJob job;
  wait_for(
      [&] {
        grpc::ClientContext ctx;
        v1::GetTrainingJobRequest get;
        get.set_job_id(started.job().id());
        v1::GetTrainingJobResponse response;
        if (stub_->GetTrainingJob(&ctx, get, &response).ok()) job = response.job();
        return job.state() != v1::JOB_STATE_QUEUED && job.state() != v1::JOB_STATE_RUNNING;
      },
      std::chrono::seconds(60));
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error();
  EXPECT_EQ(failures, 0) << "first failure: " << first_error;
  EXPECT_EQ(stable_went_back, 0);
  EXPECT_GT(calls, 400);
  std::printf("%lld calls, %lld failed; latest followed the publish in %.0f ms, the label in "
              "%.0f ms; the job was %s when the load stopped\n",
              static_cast<long long>(calls.load()), static_cast<long long>(failures.load()),
              Ms(latest_took), Ms(label_took), v1::JobState_Name(state_at_end_of_load).c_str());
}

}  // namespace
}  // namespace sae::server
