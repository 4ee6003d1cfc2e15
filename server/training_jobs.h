// Training jobs: queued, run on their own bounded worker threads (so that
// serving stays responsive), watched, cancelled, and published into the
// store when they succeed. Knows nothing of gRPC.
//
// Thread-safe.
#ifndef SAE_SERVER_TRAINING_JOBS_H_
#define SAE_SERVER_TRAINING_JOBS_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/model_store.h"
#include "core/trainer.h"
#include "server/job_info.h"
#include "server/job_journal.h"

namespace sae::server {

struct JobSpec {
  std::string model_name;
  ModelConfig config;
  TrainerOptions options;
  std::shared_ptr<const RowMatrix> data;
  std::string request_id;  // idempotency key, may be empty
  std::string description;
};

struct JobManagerOptions {
  int max_running = 1;     // jobs training at once (worker threads)
  int max_queued = 8;      // further jobs waiting; beyond: RESOURCE_EXHAUSTED
  int64_t max_jobs_kept = 1000;  // finished jobs remembered for Get/List
};

class TrainingJobManager {
 public:
  // With a `journal`, every change of a job's state is written to disk, and
  // the jobs a previous process left in the journal are taken over: those it
  // left queued or running (it was killed) become INTERRUPTED, or SUCCEEDED
  // when the store holds the version they published before the kill. The
  // writes (each with an fsync: milliseconds, more on network storage) are
  // made outside the manager's lock, so that Get, List, watchers and the
  // progress reports of running jobs do not wait for the disk; a new job's
  // record is on disk before Submit returns it.
  TrainingJobManager(ModelStore* store, JobManagerOptions options,
                     std::unique_ptr<JobJournal> journal = nullptr);
  // Shuts down (see Shutdown) if not done yet.
  ~TrainingJobManager();

  // Validates the spec (INVALID_ARGUMENT naming the field), queues the job,
  // and returns it. A request_id seen before returns that job instead.
  // RESOURCE_EXHAUSTED when the queue is full.
  absl::StatusOr<JobInfo> Submit(JobSpec spec);
  // What Submit would answer now, before its spec is built: the job
  // `request_id` names when the call is a retry, nullopt when a new job
  // would be queued, or RESOURCE_EXHAUSTED / UNAVAILABLE as Submit returns
  // them. For callers with costly work before Submit (loading a dataset);
  // Submit checks again.
  absl::StatusOr<std::optional<JobInfo>> CheckAdmission(const std::string& request_id) const;
  absl::StatusOr<JobInfo> Get(const std::string& id) const;
  std::vector<JobInfo> List() const;
  // Asks a queued or running job to stop. FAILED_PRECONDITION when it has
  // already finished.
  absl::StatusOr<JobInfo> Cancel(const std::string& id);
  // Waits until the job's revision exceeds `after_revision`, it is final, or
  // `timeout` passes; returns the job as it is then.
  absl::StatusOr<JobInfo> WaitForChange(const std::string& id, int64_t after_revision,
                                        absl::Duration timeout) const;

  // Called when a job changes state (with the state's name and the number
  // of running jobs), before the change is visible to Get and watchers, and
  // with each progress report's rows/s. They run under the manager's lock:
  // they must be quick and must not call back into the manager. Set before
  // the first Submit.
  void set_observers(std::function<void(const std::string& state, int64_t running)> on_state,
                     std::function<void(double rows_per_s)> on_progress) {
    on_state_ = std::move(on_state);
    on_progress_ = std::move(on_progress);
  }

  // Stops taking jobs, cancels running ones and marks them (and queued ones)
  // INTERRUPTED, and joins the workers. Nothing half-published: a job that
  // is already publishing finishes its publish first.
  void Shutdown();

  // Job ids the journal writer keeps a record revision or tombstone for.
  size_t journaled_ids_for_testing();

 private:
  struct Job {
    JobInfo info;
    JobSpec spec;
    std::atomic<bool> cancel{false};
    bool released = false;  // no worker touches it any more: may be forgotten
  };
  // A journal write (or removal) decided under mu_ and made after it.
  struct JournalOp {
    JobInfo info;  // the record; for a removal only info.id counts
    bool remove = false;
  };
  // Holds mu_, and makes the journal writes queued meanwhile: after
  // releasing mu_, or before when one of them records a final state (a
  // final state is shown only once it is on disk). Every path that may
  // change a job's state takes mu_ this way.
  class ABSL_SCOPED_LOCKABLE Lock;

  // Moves a job to `state`, keeping the running count and observers current.
  // `journal` false: the caller has put this record on disk already.
  void SetStateLocked(Job* job, JobState state, bool journal = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues the job's record for the journal (if any).
  void JournalLocked(const Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes `ops` in order, never letting an older record of a job replace a
  // newer one (threads release mu_ in any order) nor bringing back a removed
  // one. Failures are logged; returns the first one. Takes journal_mu_
  // (after mu_, when the caller holds it).
  absl::Status WriteJournal(const std::vector<JournalOp>& ops);
  // WriteJournal for a batch Lock took from pending_journal_; the last
  // batch in flight drops the removed jobs' tombstones.
  void WriteJournalBatch(const std::vector<JournalOp>& ops);
  // Whether a new job may be queued now: null when it may, the job a
  // request id names when the call is a retry, or the reason it may not.
  absl::StatusOr<const JobInfo*> AdmissionLocked(const std::string& request_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes over the jobs the journal holds (constructor only).
  void Recover();
  void WorkerLoop();
  void RunJob(Job* job);
  // Applies `change` to the job's record under mu_ (a change of state
  // counts, notifies and, unless `journaled`, journals as SetStateLocked
  // does).
  void Update(Job* job, const std::function<void(JobInfo&)>& change, bool journaled = false)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Update for the worker's last touch of a running job, whose `change`
  // sets a final state: the record is on disk before the state is shown,
  // written without mu_. If that write fails (logged), Lock tries it once
  // more under mu_, and the state is shown whatever the outcome.
  void Finish(Job* job, const std::function<void(JobInfo&)>& change) ABSL_LOCKS_EXCLUDED(mu_);

  ModelStore* const store_;
  const JobManagerOptions options_;
  const std::unique_ptr<JobJournal> journal_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> by_request_id_ ABSL_GUARDED_BY(mu_);
  std::deque<Job*> queue_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<std::thread> workers_;
  std::function<void(const std::string&, int64_t)> on_state_;
  std::function<void(double)> on_progress_;
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<JournalOp> pending_journal_ ABSL_GUARDED_BY(mu_);
  // Serialises the journal's writes; taken after mu_ or without it.
  absl::Mutex journal_mu_ ABSL_ACQUIRED_AFTER(mu_);
  // Per job id, the revision of the record on disk (kRemoved once removed,
  // until no batch taken before the removal can still be unwritten).
  std::map<std::string, int64_t> journaled_revision_ ABSL_GUARDED_BY(journal_mu_);
  // Batches taken from pending_journal_ (under mu_) and not yet written.
  std::atomic<int> journal_batches_in_flight_{0};
};

}  // namespace sae::server

#endif  // SAE_SERVER_TRAINING_JOBS_H_
