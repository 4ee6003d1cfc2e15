#include "server/training_jobs.h"

#include <unistd.h>

#include <atomic>
#include <limits>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/file_util.h"
#include "core/testing/test_dir.h"
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
  // About a tenth of a second of training (20,000 steps, progress every 10):
  // long enough that the watcher sees progress between the first state and
  // the last even when it wakes late (200 epochs took 5 ms, and the watcher
  // often saw only queued -> succeeded).
  spec.options.epochs = 5000;
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

// A watcher of a job that ends and is forgotten (max_jobs_kept 1: each new
// job's Submit frees the oldest finished one) while the watcher waits gets
// the job or NOT_FOUND, never the freed record (ASan in CI would see it).
TEST(TrainingJobsTest, AWatchedJobForgottenMeanwhileIsNotFound) {
  const std::string root = sae::testing::FreshTestDir("jobs_forgotten");
  auto store = ModelStore::Open(root);
  ASSERT_TRUE(store.ok());
  TrainingJobManager jobs(store->get(), JobManagerOptions{1, 64, /*max_jobs_kept=*/1});
  auto tiny = [] {
    JobSpec spec = LongJob("tiny");
    spec.options.epochs = 1;
    return spec;
  };
  std::atomic<bool> stop{false};
  std::atomic<int> forgotten{0};
  std::atomic<int> bad{0};
  std::string watched = jobs.Submit(tiny())->id;
  absl::Mutex watched_mu;
  std::thread watcher([&] {
    while (!stop.load()) {
      std::string id;
      {
        absl::MutexLock lock(&watched_mu);
        id = watched;
      }
      absl::StatusOr<JobInfo> j =
          jobs.WaitForChange(id, std::numeric_limits<int64_t>::max(), absl::Milliseconds(5));
      if (absl::IsNotFound(j.status())) {
        ++forgotten;
      } else if (!j.ok() || j->id != id) {
        ++bad;
      }
    }
  });
  for (int i = 0; i < 40; ++i) {
    // Each Submit forgets the job before it, which the watcher may be
    // watching right then.
    absl::StatusOr<JobInfo> next = jobs.Submit(tiny());
    if (!next.ok()) {
      ADD_FAILURE() << next.status();
      break;
    }
    {
      absl::MutexLock lock(&watched_mu);
      watched = next->id;
    }
    // It must end before the next Submit, which can forget only ended jobs
    // (a busy machine, or TSan, may take seconds).
    for (int w = 0; w < 60000 && !IsFinal(jobs.Get(next->id)->state); ++w) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!IsFinal(jobs.Get(next->id)->state)) {
      ADD_FAILURE() << "job " << i << " did not end in 60 s";
      break;  // the watcher is joined below
    }
  }
  stop = true;
  watcher.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(jobs.List().size(), 1u);
  RemoveTree(root).IgnoreError();
}

// A fresh folder holding a model store and a job journal.
class JournaledJobsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = sae::testing::FreshTestDir("journaled");
    absl::StatusOr<std::unique_ptr<ModelStore>> store = ModelStore::Open(root_ + "/models");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    absl::StatusOr<std::unique_ptr<JobJournal>> journal = JobJournal::Open(root_ + "/jobs");
    ASSERT_TRUE(journal.ok()) << journal.status();
    journal_ = std::move(*journal);
  }
  void TearDown() override { RemoveTree(root_).IgnoreError(); }

  std::string root_;
  std::unique_ptr<ModelStore> store_;
  std::unique_ptr<JobJournal> journal_;
};

// The journal's writes (an fsync each: milliseconds, more on network
// storage) are made outside the manager's lock, all but the final records of
// jobs that end while queued: while the worker's write of a job's "running"
// record does not return, Get and List still answer.
TEST_F(JournaledJobsTest, JobCallsDoNotWaitForTheJournalsWrites) {
  absl::Notification release;
  std::atomic<bool> blocked{false};
  journal_->set_before_write_for_testing([&](const JobInfo& info) {
    if (info.state != JobState::kRunning) return;
    blocked = true;
    release.WaitForNotification();
  });
  TrainingJobManager jobs(store_.get(), JobManagerOptions{1, 4}, std::move(journal_));
  absl::StatusOr<JobInfo> job = jobs.Submit(LongJob("slow-disk"));
  ASSERT_TRUE(job.ok()) << job.status();
  for (int i = 0; i < 1000 && !blocked; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(blocked) << "the worker never wrote the running record";
  std::atomic<bool> answered{false};
  std::thread caller([&] {
    EXPECT_TRUE(jobs.Get(job->id).ok());
    EXPECT_EQ(jobs.List().size(), 1u);
    answered = true;
  });
  for (int i = 0; i < 200 && !answered; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(answered) << "Get and List waited for the journal's write";
  release.Notify();
  caller.join();
  EXPECT_TRUE(jobs.Cancel(job->id).ok());
  jobs.Shutdown();
}

// Blocks the journal's writes of final records until released, noting
// whether one is waiting.
struct FinalWriteGate {
  explicit FinalWriteGate(JobJournal* journal) {
    journal->set_before_write_for_testing([this](const JobInfo& info) {
      if (!IsFinal(info.state)) return;
      waiting = true;
      release.WaitForNotification();
    });
  }
  bool WaitUntilBlocked() {
    for (int i = 0; i < 1000 && !waiting; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return waiting;
  }
  std::atomic<bool> waiting{false};
  absl::Notification release;
};

// What a watcher is told is what a restarted server reports: a running job
// that ends shows its final state only once the record is on disk (else a
// crash in between would turn a reported cancellation into "interrupted").
// Job calls still answer meanwhile.
TEST_F(JournaledJobsTest, AFinalStateIsShownOnlyOnceItsRecordIsOnDisk) {
  FinalWriteGate gate(journal_.get());
  auto jobs = std::make_unique<TrainingJobManager>(store_.get(), JobManagerOptions{1, 4},
                                                   std::move(journal_));
  absl::StatusOr<JobInfo> job = jobs->Submit(LongJob("ends"));
  ASSERT_TRUE(job.ok()) << job.status();
  JobInfo now = *job;
  while (now.state == JobState::kQueued) {
    now = *jobs->WaitForChange(job->id, now.revision, absl::Seconds(10));
  }
  ASSERT_EQ(now.state, JobState::kRunning);
  ASSERT_TRUE(jobs->Cancel(job->id).ok());
  ASSERT_TRUE(gate.WaitUntilBlocked()) << "the worker never wrote the final record";
  std::atomic<bool> answered{false};
  std::thread caller([&] {
    absl::StatusOr<JobInfo> seen = jobs->Get(job->id);
    ASSERT_TRUE(seen.ok()) << seen.status();
    EXPECT_EQ(seen->state, JobState::kRunning) << "shown before its record was written";
    seen = jobs->WaitForChange(job->id, seen->revision, absl::Milliseconds(200));
    EXPECT_EQ(seen->state, JobState::kRunning) << "shown before its record was written";
    answered = true;
  });
  for (int i = 0; i < 300 && !answered; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(answered) << "Get waited for the journal's write";
  gate.release.Notify();
  caller.join();
  now = *jobs->Get(job->id);
  while (!IsFinal(now.state)) now = *jobs->WaitForChange(job->id, now.revision, absl::Seconds(10));
  EXPECT_EQ(now.state, JobState::kCancelled);
  jobs.reset();
  absl::StatusOr<std::unique_ptr<JobJournal>> reopened = JobJournal::Open(root_ + "/jobs");
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  std::vector<std::string> problems;
  const std::vector<JobInfo> records = (*reopened)->ReadAll(&problems);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].state, JobState::kCancelled);
}

// The same for a job cancelled while queued: the Cancel call returns, and
// others see the state, only after the record is written (here job calls
// wait for the write: it is made under the manager's lock).
TEST_F(JournaledJobsTest, ACancelledQueuedJobIsShownOnlyOnceItsRecordIsOnDisk) {
  FinalWriteGate gate(journal_.get());
  TrainingJobManager jobs(store_.get(), JobManagerOptions{1, 4}, std::move(journal_));
  ASSERT_TRUE(jobs.Submit(LongJob("busy")).ok());  // holds the only worker
  absl::StatusOr<JobInfo> queued = jobs.Submit(LongJob("waits"));
  ASSERT_TRUE(queued.ok()) << queued.status();
  std::atomic<bool> cancel_returned{false};
  std::thread canceller([&] {
    EXPECT_EQ(jobs.Cancel(queued->id)->state, JobState::kCancelled);
    cancel_returned = true;
  });
  ASSERT_TRUE(gate.WaitUntilBlocked()) << "the cancellation was never written";
  std::atomic<bool> seen_cancelled{false};
  std::thread watcher([&] {
    absl::StatusOr<JobInfo> seen = jobs.Get(queued->id);
    seen_cancelled = seen.ok() && seen->state == JobState::kCancelled;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(cancel_returned) << "Cancel returned before the record was written";
  EXPECT_FALSE(seen_cancelled) << "shown before its record was written";
  gate.release.Notify();
  canceller.join();
  watcher.join();
  EXPECT_TRUE(cancel_returned);
  EXPECT_TRUE(seen_cancelled) << "the watcher should see the state once it is on disk";
  jobs.Shutdown();
}

// Forgotten jobs leave the journal writer's bookkeeping too: it stays
// bounded by the jobs kept, however many jobs a server has run.
TEST_F(JournaledJobsTest, ForgottenJobsLeaveNoJournalBookkeeping) {
  constexpr int64_t kKept = 2;
  TrainingJobManager jobs(store_.get(), JobManagerOptions{1, 8, kKept}, std::move(journal_));
  for (int i = 0; i < 12; ++i) {
    JobSpec spec = LongJob("forget");
    spec.options.epochs = 1;
    absl::StatusOr<JobInfo> job = jobs.Submit(spec);
    ASSERT_TRUE(job.ok()) << job.status();
    JobInfo now = *job;
    for (int waits = 0; waits < 1000 && !IsFinal(now.state); ++waits) {
      now = *jobs.WaitForChange(job->id, now.revision, absl::Seconds(10));
    }
    ASSERT_EQ(now.state, JobState::kSucceeded);
  }
  EXPECT_LE(jobs.List().size(), static_cast<size_t>(kKept + 1));
  EXPECT_LE(jobs.journaled_ids_for_testing(), static_cast<size_t>(kKept + 1));
  jobs.Shutdown();
}

JobInfo Record(const std::string& id, const std::string& model, JobState state) {
  JobInfo info;
  info.id = id;
  info.model_name = model;
  info.state = state;
  info.created_at = "2026-01-01T00:00:00Z";
  return info;
}

TEST(JobJournalTest, RecordsRoundTripAndBadOnesAreSkipped) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/journal_", ::getpid());
  ASSERT_TRUE(RemoveTree(dir).ok());
  auto journal = JobJournal::Open(dir);
  ASSERT_TRUE(journal.ok()) << journal.status();
  JobInfo done = Record("job-000002-00ab", "digits", JobState::kSucceeded);
  done.published_version = 3;
  done.metrics = {{"fvu", 0.125}, {"mse", 0.5},
                  {"psnr_db", std::numeric_limits<double>::infinity()}};
  done.request_id = "retry-key";
  done.progress.step = 40;
  done.progress.total_steps = 40;
  done.revision = 7;
  ASSERT_TRUE((*journal)->Write(done).ok());
  ASSERT_TRUE((*journal)->Write(Record("job-000001-0001", "a", JobState::kRunning)).ok());
  // A second server may not use the same folder.
  EXPECT_EQ(JobJournal::Open(dir).status().code(), absl::StatusCode::kFailedPrecondition);
  // Damaged, foreign and misnamed records are skipped and reported.
  ASSERT_TRUE(ReplaceFileAtomically(dir + "/job-000003-0000.job.json", "{not json").ok());
  ASSERT_TRUE(ReplaceFileAtomically(
      dir + "/job-000004-0000.job.json",
      JobRecordToJson(Record("job-000005-0000", "b", JobState::kQueued))).ok());
  std::string evil = JobRecordToJson(Record("job-000006-0000", "b", JobState::kQueued));
  evil.replace(evil.find("job-000006-0000"), 15, "../../etc/passw");
  ASSERT_TRUE(ReplaceFileAtomically(dir + "/job-000006-0000.job.json", evil).ok());
  std::string bad_state = JobRecordToJson(Record("job-000007-0000", "b", JobState::kQueued));
  bad_state.replace(bad_state.find("\"queued\""), 8, "\"paused\"");
  ASSERT_TRUE(ReplaceFileAtomically(dir + "/job-000007-0000.job.json", bad_state).ok());
  std::vector<std::string> problems;
  std::vector<JobInfo> records = (*journal)->ReadAll(&problems);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].id, "job-000001-0001");
  EXPECT_EQ(records[0].state, JobState::kRunning);
  const JobInfo& back = records[1];
  EXPECT_EQ(back.id, done.id);
  EXPECT_EQ(back.model_name, "digits");
  EXPECT_EQ(back.state, JobState::kSucceeded);
  EXPECT_EQ(back.published_version, 3);
  // Non-finite metrics (no JSON form) are left out; the rest come back.
  EXPECT_EQ(back.metrics, (std::map<std::string, double>{{"fvu", 0.125}, {"mse", 0.5}}));
  EXPECT_EQ(back.request_id, "retry-key");
  EXPECT_EQ(back.created_at, done.created_at);
  EXPECT_EQ(back.revision, 7);
  EXPECT_EQ(back.progress.step, 40);
  ASSERT_EQ(problems.size(), 4u);
  EXPECT_NE(problems[0].find("not a JSON object"), std::string::npos) << problems[0];
  EXPECT_NE(problems[1].find("holds the record of 'job-000005-0000'"), std::string::npos);
  EXPECT_NE(problems[2].find("no valid 'id'"), std::string::npos) << problems[2];
  EXPECT_NE(problems[3].find("no valid 'state'"), std::string::npos) << problems[3];
  ASSERT_TRUE((*journal)->Remove(done.id).ok());
  EXPECT_EQ((*journal)->ReadAll(&problems).size(), 1u);
  EXPECT_EQ((*journal)->Remove("../x").code(), absl::StatusCode::kInvalidArgument);
  journal->reset();
  EXPECT_TRUE(JobJournal::Open(dir).ok());  // the lock went with the journal
  RemoveTree(dir).IgnoreError();
}

// A replacement trainer waits for a lock another process still holds (a
// dead node's NFS lease), up to its limit, and takes it once released.
TEST(JobJournalTest, AnOpenWaitsForAHeldLockUpToItsLimit) {
  const std::string dir = sae::testing::FreshTestDir("journal_wait");
  auto held = JobJournal::Open(dir);
  ASSERT_TRUE(held.ok()) << held.status();
  const absl::Time start = absl::Now();
  EXPECT_EQ(JobJournal::Open(dir, absl::Milliseconds(300)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  std::thread releaser([&] {
    absl::SleepFor(absl::Milliseconds(300));
    held->reset();
  });
  const absl::Time second = absl::Now();
  absl::StatusOr<std::unique_ptr<JobJournal>> waited = JobJournal::Open(dir, absl::Seconds(30));
  releaser.join();
  EXPECT_TRUE(waited.ok()) << waited.status();
  EXPECT_GE(absl::Now() - second, absl::Milliseconds(250));
  EXPECT_LT(absl::Now() - second, absl::Seconds(20));
  waited->reset();
  RemoveTree(dir).IgnoreError();
}

// What a restarted server makes of the journal a killed one left behind.
TEST(TrainingJobsTest, JobsOfAKilledServerComeBackInterruptedOrSucceeded) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/jobs3_", ::getpid());
  ASSERT_TRUE(RemoveTree(root).ok());
  auto store = ModelStore::Open(root + "/models");
  ASSERT_TRUE(store.ok());
  {
    auto journal = JobJournal::Open(root + "/jobs");
    ASSERT_TRUE(journal.ok());
    ASSERT_TRUE((*journal)->Write(Record("job-000007-aaaa", "m", JobState::kRunning)).ok());
    ASSERT_TRUE((*journal)->Write(Record("job-000008-bbbb", "m", JobState::kQueued)).ok());
    ASSERT_TRUE((*journal)->Write(Record("job-000009-cccc", "m", JobState::kRunning)).ok());
    JobInfo failed = Record("job-000003-dddd", "m", JobState::kFailed);
    failed.error = "diverged";
    ASSERT_TRUE((*journal)->Write(failed).ok());
  }
  // job-000009 had published its version (with its metrics) when the
  // server was killed.
  JobSpec spec = LongJob("m");
  spec.options.epochs = 1;
  absl::StatusOr<TrainingResult> trained = Train(spec.config, spec.options, *spec.data);
  ASSERT_TRUE(trained.ok());
  ModelMetadata meta;
  meta.training = {{"job_id", "job-000009-cccc"}};
  meta.metrics = {{"fvu", 0.25}};
  ASSERT_EQ(*(*store)->Publish("m", *trained->model, meta), 1);

  auto journal = JobJournal::Open(root + "/jobs");
  ASSERT_TRUE(journal.ok());
  JobJournal* raw = journal->get();
  TrainingJobManager jobs(store->get(), JobManagerOptions{1, 4}, std::move(*journal));
  EXPECT_EQ(jobs.Get("job-000007-aaaa")->state, JobState::kInterrupted);
  EXPECT_NE(jobs.Get("job-000007-aaaa")->error.find("while the job was running"),
            std::string::npos);
  EXPECT_EQ(jobs.Get("job-000008-bbbb")->state, JobState::kInterrupted);
  EXPECT_NE(jobs.Get("job-000008-bbbb")->error.find("while the job was queued"),
            std::string::npos);
  EXPECT_EQ(jobs.Get("job-000009-cccc")->state, JobState::kSucceeded);
  EXPECT_EQ(jobs.Get("job-000009-cccc")->published_version, 1);
  EXPECT_EQ(jobs.Get("job-000009-cccc")->metrics.at("fvu"), 0.25);
  EXPECT_EQ(jobs.Get("job-000003-dddd")->error, "diverged");
  EXPECT_EQ(jobs.List().size(), 4u);
  // The journal now holds the final states, and new ids continue after the old.
  std::vector<std::string> problems;
  for (const JobInfo& r : raw->ReadAll(&problems)) EXPECT_TRUE(IsFinal(r.state)) << r.id;
  EXPECT_TRUE(problems.empty());
  absl::StatusOr<JobInfo> next = jobs.Submit(spec);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->id.substr(0, 13), "job-000000010");
  jobs.Shutdown();
  RemoveTree(root).IgnoreError();
}

TEST(TrainingJobsTest, AFinishedJobIsKnownAfterARestart) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/jobs4_", ::getpid());
  ASSERT_TRUE(RemoveTree(root).ok());
  auto store = ModelStore::Open(root + "/models");
  ASSERT_TRUE(store.ok());
  JobSpec spec = LongJob("m");
  spec.options.epochs = 2;
  spec.request_id = "once";
  JobInfo first;
  {
    TrainingJobManager jobs(store->get(), JobManagerOptions{1, 4},
                            *JobJournal::Open(root + "/jobs"));
    absl::StatusOr<JobInfo> job = jobs.Submit(spec);
    ASSERT_TRUE(job.ok());
    do {
      first = *jobs.WaitForChange(job->id, first.revision, absl::Seconds(10));
    } while (!IsFinal(first.state));
    ASSERT_EQ(first.state, JobState::kSucceeded);
  }
  TrainingJobManager jobs(store->get(), JobManagerOptions{1, 4}, *JobJournal::Open(root + "/jobs"));
  absl::StatusOr<JobInfo> again = jobs.Get(first.id);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->state, JobState::kSucceeded);
  EXPECT_EQ(again->published_version, first.published_version);
  EXPECT_EQ(again->metrics, first.metrics);
  // The request id still names the job: a retry after the restart trains nothing.
  absl::StatusOr<JobInfo> retry = jobs.Submit(spec);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->id, first.id);
  RemoveTree(root).IgnoreError();
}

// A Submit refused after writing its record (a retry with the same request
// id was queued first) removes the record; if the process dies first, or the
// removal fails, the record comes back at the next start as an interrupted
// job. The request id still names the job the caller was given.
TEST(TrainingJobsTest, ALeftoverRecordOfARefusedRetryDoesNotTakeItsRequestId) {
  const std::string root = sae::testing::FreshTestDir("jobs_leftover");
  auto store = ModelStore::Open(root + "/models");
  ASSERT_TRUE(store.ok());
  JobSpec spec = LongJob("m");
  spec.options.epochs = 2;
  spec.request_id = "once";
  JobInfo first;
  {
    TrainingJobManager jobs(store->get(), JobManagerOptions{1, 4},
                            *JobJournal::Open(root + "/jobs"));
    absl::StatusOr<JobInfo> job = jobs.Submit(spec);
    ASSERT_TRUE(job.ok());
    do {
      first = *jobs.WaitForChange(job->id, first.revision, absl::Seconds(10));
    } while (!IsFinal(first.state));
    ASSERT_EQ(first.state, JobState::kSucceeded);
  }
  {
    std::unique_ptr<JobJournal> journal = *JobJournal::Open(root + "/jobs");
    for (const char* id : {"job-000000000-0000abcd", "job-000000099-0000abcd"}) {
      JobInfo leftover;
      leftover.id = id;
      leftover.model_name = "m";
      leftover.request_id = "once";
      leftover.state = JobState::kQueued;
      leftover.created_at = first.created_at;
      ASSERT_TRUE(journal->Write(leftover).ok());
    }
  }
  TrainingJobManager jobs(store->get(), JobManagerOptions{1, 4}, *JobJournal::Open(root + "/jobs"));
  EXPECT_EQ(jobs.Get("job-000000099-0000abcd")->state, JobState::kInterrupted);
  absl::StatusOr<JobInfo> retry = jobs.Submit(spec);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->id, first.id);
  EXPECT_EQ(retry->state, JobState::kSucceeded);
  RemoveTree(root).IgnoreError();
}

// Two Submits with one request id raced and the process died with both
// records queued on disk: the admitted one (written again, a revision up,
// before its caller heard of it) keeps the request id, even with the
// higher job number.
TEST(TrainingJobsTest, AfterACrashTheAdmittedOfTwoRacingRetriesKeepsTheRequestId) {
  const std::string root = sae::testing::FreshTestDir("jobs_race");
  auto store = ModelStore::Open(root + "/models");
  ASSERT_TRUE(store.ok());
  JobSpec spec = LongJob("m");
  spec.request_id = "raced";
  {
    std::unique_ptr<JobJournal> journal = *JobJournal::Open(root + "/jobs");
    JobInfo refused, admitted;
    refused.id = "job-000000001-0000abcd";  // numbered first, refused
    admitted.id = "job-000000002-0000abcd";
    for (JobInfo* info : {&refused, &admitted}) {
      info->model_name = "m";
      info->request_id = "raced";
      info->state = JobState::kQueued;
      info->created_at = "2026-12-04T00:00:00Z";
    }
    admitted.revision = 1;
    ASSERT_TRUE(journal->Write(refused).ok());
    ASSERT_TRUE(journal->Write(admitted).ok());
  }
  {
    TrainingJobManager jobs(store->get(), JobManagerOptions{1, 4},
                            *JobJournal::Open(root + "/jobs"));
    absl::StatusOr<JobInfo> retry = jobs.Submit(spec);
    ASSERT_TRUE(retry.ok()) << retry.status();
    EXPECT_EQ(retry->id, "job-000000002-0000abcd");
    EXPECT_EQ(retry->state, JobState::kInterrupted);
  }
  // And a live Submit with a request id leaves its record a revision up.
  spec.request_id = "fresh";
  std::string fresh_id;
  {
    TrainingJobManager jobs(store->get(), JobManagerOptions{1, 4},
                            *JobJournal::Open(root + "/jobs"));
    absl::StatusOr<JobInfo> job = jobs.Submit(spec);
    ASSERT_TRUE(job.ok()) << job.status();
    fresh_id = job->id;
    EXPECT_GE(job->revision, 1);
    jobs.Shutdown();
  }
  std::vector<std::string> problems;
  bool found = false;
  for (const JobInfo& info : (*JobJournal::Open(root + "/jobs"))->ReadAll(&problems)) {
    if (info.id != fresh_id) continue;
    found = true;
    EXPECT_GE(info.revision, 1);
  }
  EXPECT_TRUE(found);
  RemoveTree(root).IgnoreError();
}

}  // namespace
}  // namespace sae::server
