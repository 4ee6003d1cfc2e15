// What a training job is, as seen at one moment: its state, progress and
// outcome. Shared by the job manager and its on-disk journal.
#ifndef SAE_SERVER_JOB_INFO_H_
#define SAE_SERVER_JOB_INFO_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/strings/string_view.h"
#include "core/trainer.h"

namespace sae::server {

enum class JobState { kQueued, kRunning, kSucceeded, kFailed, kCancelled, kInterrupted };
// Succeeded, failed, cancelled or interrupted: the job will not change again.
bool IsFinal(JobState state);
// "queued", "running", "succeeded", "failed", "cancelled", "interrupted".
const char* JobStateName(JobState state);
// The inverse of JobStateName; false for any other text.
bool ParseJobState(absl::string_view name, JobState* state);
// True for text that can be a job id as TrainingJobManager makes them
// ("job-" and then at most 60 of [a-z0-9-]): nothing else can name a job, or
// a path in the journal's folder.
bool IsJobId(absl::string_view id);

struct JobInfo {
  std::string id;
  std::string model_name;
  JobState state = JobState::kQueued;
  TrainingProgress progress;
  int64_t published_version = 0;
  std::string error;
  std::map<std::string, double> metrics;
  std::string created_at;
  std::string request_id;
  int64_t revision = 0;  // grows with every change
};

}  // namespace sae::server

#endif  // SAE_SERVER_JOB_INFO_H_
