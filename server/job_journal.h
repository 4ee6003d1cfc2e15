// The training jobs' records on disk, so that a server that was killed
// (kill -9, a crash, a lost node) can tell after its restart what became of
// the jobs it held: one small JSON file a job in a folder of its own,
// replaced atomically (temporary, fsync, rename, fsync the folder) on every
// change of state. Progress is not journalled: only queued, running and the
// final states, with the published version, metrics and error.
//
// One journal belongs to one server process: Open takes an exclusive lock on
// the folder, so two servers pointed at the same folder fail loudly instead
// of marking each other's jobs interrupted.
//
// Thread-compatible: TrainingJobManager calls it under a lock of its own.
// It also holds the lock its job RPCs take for a final record that must be
// on disk before it is shown and could not be written beforehand: a job
// cancelled or interrupted while queued, a job the journal's previous owner
// left open (at startup), or a retry of a worker's failed final write.
#ifndef SAE_SERVER_JOB_JOURNAL_H_
#define SAE_SERVER_JOB_JOURNAL_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/file_util.h"
#include "server/job_info.h"

namespace sae::server {

class JobJournal {
 public:
  // Opens (creating if needed) the journal folder `dir` and locks it.
  // FAILED_PRECONDITION when another process holds the lock for longer than
  // `lock_wait` (a replacement trainer whose predecessor's node died waits
  // out the NFS lock's lease rather than fail at once); file-system errors
  // as file_util reports them.
  static absl::StatusOr<std::unique_ptr<JobJournal>> Open(
      const std::string& dir, absl::Duration lock_wait = absl::ZeroDuration());

  // Writes (or replaces) the record of `job`.
  absl::Status Write(const JobInfo& job);
  // Removes the record of job `id`; OK when there is none.
  absl::Status Remove(const std::string& id);

  // For tests: called with each record before it is written, on the
  // writing thread. Set before the journal is in use.
  void set_before_write_for_testing(std::function<void(const JobInfo&)> hook) {
    before_write_ = std::move(hook);
  }

  // The records found, ordered by id. A record that cannot be read or parsed
  // is skipped and described in *problems (the file is left for inspection).
  std::vector<JobInfo> ReadAll(std::vector<std::string>* problems) const;

 private:
  JobJournal(std::string dir, FileLock lock) : dir_(std::move(dir)), lock_(std::move(lock)) {}
  std::string PathOf(const std::string& id) const;

  const std::string dir_;
  FileLock lock_;
  std::function<void(const JobInfo&)> before_write_;
};

// The JSON form of a record (exposed for tests).
std::string JobRecordToJson(const JobInfo& job);
absl::StatusOr<JobInfo> JobRecordFromJson(const std::string& text);

}  // namespace sae::server

#endif  // SAE_SERVER_JOB_JOURNAL_H_
