// kill -9 of the real sae_server during training and during publishes: on
// restart the store is consistent (every version whole and loadable, none
// half-written), the interrupted jobs are reported as interrupted, and a job
// is reported as succeeded exactly when its version is in the store.
#include <chrono>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/model_store.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sae/v1/sae.grpc.pb.h"
#include "server/testing/test_util.h"

namespace sae::server {
namespace {

using v1::SparseAutoencoderService;

class CrashRecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = absl::StrCat(::testing::TempDir(), "/crash_", ::getpid());
    ASSERT_TRUE(RemoveTree(root_).ok());
    ASSERT_TRUE(MakeDirectory(root_).ok());
  }
  void TearDown() override { RemoveTree(root_).IgnoreError(); }

  absl::StatusOr<testing::ServerProcess> StartServer() {
    return testing::ServerProcess::Start(
        SAE_SERVER_BINARY,
        {"--plaintext", "--listen=127.0.0.1:0", "--store=" + root_ + "/models",
         "--reload_interval_ms=100"},
        root_ + "/server.log");
  }

  static std::unique_ptr<SparseAutoencoderService::Stub> Stub(const testing::ServerProcess& s) {
    return SparseAutoencoderService::NewStub(
        grpc::CreateChannel(s.address(), grpc::InsecureChannelCredentials()));
  }

  // A job of `steps` steps on a 256 -> 1024 model (4 MB of weights to publish).
  static v1::TrainRequest Job(int64_t steps, uint64_t seed) {
    v1::TrainRequest r;
    r.set_model_name("crash");
    r.mutable_config()->set_d_in(256);
    r.mutable_config()->set_d_hidden(1024);
    r.mutable_options()->set_max_steps(steps);
    r.mutable_options()->set_epochs(1000);
    r.mutable_options()->set_batch_size(64);
    r.mutable_options()->set_seed(seed);
    testing::SetTensor(testing::RandomMatrix(256, 256, seed), r.mutable_inline_data(), true);
    return r;
  }

  static v1::TrainingJob GetJob(SparseAutoencoderService::Stub* stub, const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::GetTrainingJobRequest request;
    request.set_job_id(id);
    v1::GetTrainingJobResponse response;
    grpc::Status s = stub->GetTrainingJob(&ctx, request, &response);
    EXPECT_TRUE(s.ok()) << id << ": " << s.error_message();
    return response.job();
  }

  std::string root_;
};

TEST_F(CrashRecoveryTest, KillDuringTrainingAndPublishLeavesAConsistentStore) {
  std::mt19937 rng(7);
  std::vector<std::string> job_ids;
  int killed_while_running = 0;
  for (int round = 0; round < 8; ++round) {
    absl::StatusOr<testing::ServerProcess> server = StartServer();
    ASSERT_TRUE(server.ok()) << server.status();
    auto stub = Stub(*server);
    // Every job the earlier rounds left is final by now.
    for (const std::string& id : job_ids) {
      const v1::TrainingJob job = GetJob(stub.get(), id);
      EXPECT_TRUE(job.state() == v1::JOB_STATE_SUCCEEDED ||
                  job.state() == v1::JOB_STATE_INTERRUPTED)
          << id << " is " << v1::JobState_Name(job.state());
    }
    v1::TrainResponse started;
    grpc::ClientContext ctx;
    // Round 0 runs long, so that the kill surely lands mid-training; the
    // others are short, so that kills land anywhere, publishes included.
    ASSERT_TRUE(stub->Train(&ctx, Job(round == 0 ? 1000000 : 30, round), &started).ok());
    job_ids.push_back(started.job().id());
    if (round == 0) {
      for (int i = 0; i < 500 && GetJob(stub.get(), job_ids.back()).progress().step() == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      ASSERT_EQ(GetJob(stub.get(), job_ids.back()).state(), v1::JOB_STATE_RUNNING);
      ++killed_while_running;
    } else {
      std::this_thread::sleep_for(
          std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 400)(rng)));
    }
    server->Stop(SIGKILL);
  }

  // Restart once more and check every job against the store.
  absl::StatusOr<testing::ServerProcess> server = StartServer();
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = Stub(*server);
  auto store = ModelStore::Open(root_ + "/models");
  ASSERT_TRUE(store.ok());
  std::map<std::string, int64_t> version_of_job;
  absl::StatusOr<std::vector<VersionInfo>> versions = (*store)->ListVersions("crash");
  if (versions.ok()) {
    for (const VersionInfo& v : *versions) {
      // No half version: every version in the store loads and verifies.
      absl::StatusOr<LoadedModel> loaded = (*store)->Load(ModelRef::Version("crash", v.version));
      EXPECT_TRUE(loaded.ok()) << "version " << v.version << ": " << loaded.status();
      version_of_job[v.metadata.training.at("job_id")] = v.version;
    }
  }
  int interrupted = 0;
  for (size_t i = 0; i < job_ids.size(); ++i) {
    const v1::TrainingJob job = GetJob(stub.get(), job_ids[i]);
    auto published = version_of_job.find(job_ids[i]);
    if (job.state() == v1::JOB_STATE_SUCCEEDED) {
      ASSERT_NE(published, version_of_job.end()) << job_ids[i] << " succeeded but is not stored";
      EXPECT_EQ(job.published_version(), published->second);
    } else {
      EXPECT_EQ(job.state(), v1::JOB_STATE_INTERRUPTED) << v1::JobState_Name(job.state());
      EXPECT_EQ(published, version_of_job.end()) << job_ids[i] << " interrupted but published";
      EXPECT_NE(job.error().find("killed or crashed"), std::string::npos) << job.error();
      ++interrupted;
    }
    if (i == 0) {
      EXPECT_EQ(job.state(), v1::JOB_STATE_INTERRUPTED);
    }
  }
  EXPECT_GE(interrupted, killed_while_running);
  // The store serves its latest version, and no temporary is left in it.
  if (!version_of_job.empty()) {
    v1::EncodeRequest encode;
    encode.mutable_model()->set_name("crash");
    testing::SetTensor(testing::RandomMatrix(2, 256, 99), encode.mutable_input());
    v1::EncodeResponse codes;
    grpc::ClientContext ctx;
    grpc::Status s = stub->Encode(&ctx, encode, &codes);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(root_ + "/models/crash");
  if (names.ok()) {
    for (const std::string& name : *names) {
      EXPECT_TRUE(name.find("tmp") == std::string::npos) << "leftover " << name;
    }
  }
  std::printf("%zu jobs: %zu published, %d interrupted\n", job_ids.size(),
              version_of_job.size(), interrupted);
}

}  // namespace
}  // namespace sae::server
