#include "server/training_jobs.h"

#include <unistd.h>

#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "gtest/gtest.h"

namespace sae::server {
namespace {

JobSpec LongJob(const std::string& name) {
  JobSpec spec;
  spec.model_name = name;
  spec.config = DefaultConfig(8, 16, Activation::kRelu);
  spec.options.epochs = 1000000;
  spec.options.batch_size = 16;
  auto data = std::make_shared<RowMatrix>(RowMatrix::Random(64, 8));
  spec.data = data;
  return spec;
}

TEST(TrainingJobsTest, ShutdownInterruptsRunningAndQueuedJobsAndPublishesNothing) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/jobs_", ::getpid());
  ASSERT_TRUE(RemoveTree(root).ok());
  auto store = ModelStore::Open(root);
  ASSERT_TRUE(store.ok());
  TrainingJobManager jobs(store->get(), JobManagerOptions{1, 4});
  absl::StatusOr<JobInfo> running = jobs.Submit(LongJob("a"));
  absl::StatusOr<JobInfo> queued = jobs.Submit(LongJob("b"));
  ASSERT_TRUE(running.ok() && queued.ok());
  for (int i = 0; i < 200 && jobs.Get(running->id)->progress.step == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(jobs.Get(running->id)->state, JobState::kRunning);
  EXPECT_EQ(jobs.Get(queued->id)->state, JobState::kQueued);
  jobs.Shutdown();
  EXPECT_EQ(jobs.Get(running->id)->state, JobState::kInterrupted);
  EXPECT_EQ(jobs.Get(queued->id)->state, JobState::kInterrupted);
  EXPECT_NE(jobs.Get(running->id)->error.find("shutdown"), std::string::npos);
  EXPECT_TRUE((*store)->ListModels()->empty());
  EXPECT_EQ(jobs.Submit(LongJob("c")).status().code(), absl::StatusCode::kUnavailable);
  RemoveTree(root).IgnoreError();
}

TEST(TrainingJobsTest, WaitForChangeSeesProgressAndTheFinalState) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/jobs2_", ::getpid());
  ASSERT_TRUE(RemoveTree(root).ok());
  auto store = ModelStore::Open(root);
  TrainingJobManager jobs(store->get(), JobManagerOptions{1, 4});
  JobSpec spec = LongJob("short");
  spec.options.epochs = 200;
  absl::StatusOr<JobInfo> job = jobs.Submit(spec);
  ASSERT_TRUE(job.ok());
  int64_t revision = -1;
  int changes = 0;
  JobInfo now;
  do {
    now = *jobs.WaitForChange(job->id, revision, absl::Seconds(10));
    if (now.revision != revision) ++changes;
    revision = now.revision;
  } while (!IsFinal(now.state));
  EXPECT_EQ(now.state, JobState::kSucceeded);
  EXPECT_EQ(now.published_version, 1);
  EXPECT_GT(changes, 2);  // queued -> running -> progress ... -> succeeded
  EXPECT_EQ(now.progress.step, now.progress.total_steps);
  RemoveTree(root).IgnoreError();
}

}  // namespace
}  // namespace sae::server
