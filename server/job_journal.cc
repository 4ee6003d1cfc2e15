#include "server/job_journal.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/log.h"
#include "nlohmann/json.hpp"

namespace sae::server {
namespace {

using Json = nlohmann::json;

constexpr char kSuffix[] = ".job.json";
constexpr size_t kMaxRecordBytes = 1 << 20;

}  // namespace

bool IsJobId(absl::string_view id) {
  return id.size() <= 64 && absl::StartsWith(id, "job-") &&
         std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
         });
}

bool IsFinal(JobState state) {
  return state != JobState::kQueued && state != JobState::kRunning;
}

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kQueued: return "queued";
    case JobState::kRunning: return "running";
    case JobState::kSucceeded: return "succeeded";
    case JobState::kFailed: return "failed";
    case JobState::kCancelled: return "cancelled";
    case JobState::kInterrupted: return "interrupted";
  }
  return "?";
}

bool ParseJobState(absl::string_view name, JobState* state) {
  for (JobState s : {JobState::kQueued, JobState::kRunning, JobState::kSucceeded,
                     JobState::kFailed, JobState::kCancelled, JobState::kInterrupted}) {
    if (name == JobStateName(s)) {
      *state = s;
      return true;
    }
  }
  return false;
}

std::string JobRecordToJson(const JobInfo& job) {
  // JSON has no inf or NaN (a perfect reconstruction has an infinite PSNR):
  // such metrics are left out, as in the model files.
  Json metrics = Json::object();
  for (const auto& [name, value] : job.metrics) {
    if (std::isfinite(value)) metrics[name] = value;
  }
  Json j = {{"id", job.id},
            {"model_name", job.model_name},
            {"state", JobStateName(job.state)},
            {"published_version", job.published_version},
            {"error", job.error},
            {"created_at", job.created_at},
            {"request_id", job.request_id},
            {"metrics", metrics},
            {"step", job.progress.step},
            {"total_steps", job.progress.total_steps},
            {"revision", job.revision}};
  return j.dump(2) + "\n";
}

absl::StatusOr<JobInfo> JobRecordFromJson(const std::string& text) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError("a job record is not a JSON object");
  }
  auto field = [&](const char* name, Json::value_t type) -> const Json* {
    auto it = j.find(name);
    if (it == j.end()) return nullptr;
    if (it->type() != type &&
        !(type == Json::value_t::number_integer && it->is_number_unsigned())) {
      return nullptr;
    }
    return &*it;
  };
  auto bad = [](const char* what) {
    return absl::DataLossError(absl::StrCat("a job record has no valid '", what, "'"));
  };
  JobInfo job;
  const Json* id = field("id", Json::value_t::string);
  if (id == nullptr || !IsJobId(id->get<std::string>())) return bad("id");
  job.id = id->get<std::string>();
  const Json* state = field("state", Json::value_t::string);
  if (state == nullptr || !ParseJobState(state->get<std::string>(), &job.state)) {
    return bad("state");
  }
  for (auto [name, out] : {std::pair{"model_name", &job.model_name},
                           std::pair{"error", &job.error},
                           std::pair{"created_at", &job.created_at},
                           std::pair{"request_id", &job.request_id}}) {
    const Json* value = field(name, Json::value_t::string);
    if (value == nullptr) return bad(name);
    *out = value->get<std::string>();
  }
  for (auto [name, out] : {std::pair{"published_version", &job.published_version},
                           std::pair{"step", &job.progress.step},
                           std::pair{"total_steps", &job.progress.total_steps}}) {
    const Json* value = field(name, Json::value_t::number_integer);
    if (value == nullptr) return bad(name);
    *out = value->get<int64_t>();
  }
  // Optional: records written before 2026-12-04 have none.
  if (j.contains("revision")) {
    const Json* revision = field("revision", Json::value_t::number_integer);
    if (revision == nullptr || revision->get<int64_t>() < 0) return bad("revision");
    job.revision = revision->get<int64_t>();
  }
  const Json* metrics = field("metrics", Json::value_t::object);
  if (metrics == nullptr) return bad("metrics");
  for (const auto& [name, value] : metrics->items()) {
    if (value.is_null()) continue;  // written by an earlier version for inf/NaN
    if (!value.is_number()) return bad("metrics");
    job.metrics[name] = value.get<double>();
  }
  return job;
}

absl::StatusOr<std::unique_ptr<JobJournal>> JobJournal::Open(const std::string& dir,
                                                            absl::Duration lock_wait) {
  if (absl::Status s = MakeDirectory(dir); !s.ok()) return s;
  const absl::Time give_up = absl::Now() + lock_wait;
  absl::StatusOr<FileLock> lock = FileLock::TryAcquire(dir + "/LOCK");
  if (absl::IsUnavailable(lock.status()) && lock_wait > absl::ZeroDuration()) {
    LogLine("job", absl::StrCat("the jobs folder '", dir, "' is locked by another process; "
                                "waiting up to ", absl::FormatDuration(lock_wait), " for it"));
  }
  while (absl::IsUnavailable(lock.status()) && absl::Now() < give_up) {
    absl::SleepFor(std::min(absl::Milliseconds(200), give_up - absl::Now()));
    lock = FileLock::TryAcquire(dir + "/LOCK");
  }
  if (!lock.ok()) {
    if (absl::IsUnavailable(lock.status())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the jobs folder '", dir, "' is in use by another sae_server; give each server that "
          "trains its own --jobs_dir"));
    }
    return lock.status();
  }
  // Temporaries of writes that a crash cut short (the lock says no one else
  // is writing here).
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(dir);
  if (!names.ok()) return names.status();
  for (const std::string& name : *names) {
    if (absl::StrContains(name, absl::StrCat(kSuffix, ".tmp-"))) {
      RemoveTree(dir + "/" + name).IgnoreError();
    }
  }
  return std::unique_ptr<JobJournal>(new JobJournal(dir, std::move(*lock)));
}

std::string JobJournal::PathOf(const std::string& id) const {
  return absl::StrCat(dir_, "/", id, kSuffix);
}

absl::Status JobJournal::Write(const JobInfo& job) {
  if (!IsJobId(job.id)) return absl::InvalidArgumentError("not a job id: " + job.id);
  if (before_write_) before_write_(job);
  return ReplaceFileAtomically(PathOf(job.id), JobRecordToJson(job));
}

absl::Status JobJournal::Remove(const std::string& id) {
  if (!IsJobId(id)) return absl::InvalidArgumentError("not a job id: " + id);
  return RemoveTree(PathOf(id));
}

std::vector<JobInfo> JobJournal::ReadAll(std::vector<std::string>* problems) const {
  std::vector<JobInfo> jobs;
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(dir_);
  if (!names.ok()) {
    problems->push_back(std::string(names.status().message()));
    return jobs;
  }
  std::sort(names->begin(), names->end());
  for (const std::string& name : *names) {
    if (!absl::EndsWith(name, kSuffix)) continue;  // LOCK, temporaries
    const std::string path = dir_ + "/" + name;
    absl::StatusOr<std::string> text = ReadSmallFile(path, kMaxRecordBytes);
    absl::StatusOr<JobInfo> job =
        text.ok() ? JobRecordFromJson(*text) : absl::StatusOr<JobInfo>(text.status());
    if (!job.ok()) {
      problems->push_back(absl::StrCat(path, ": ", job.status().message()));
      continue;
    }
    if (name != job->id + kSuffix) {
      problems->push_back(absl::StrCat(path, ": holds the record of '", job->id, "'"));
      continue;
    }
    jobs.push_back(std::move(*job));
  }
  return jobs;
}

}  // namespace sae::server
