#include "server/training_jobs.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <limits>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/parallel.h"
#include "server/log.h"

namespace sae::server {
namespace {

std::string Now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void AddMetrics(const std::string& prefix, const QualityMetrics& m,
                std::map<std::string, double>* out) {
  (*out)[prefix + "mse"] = m.mse;
  (*out)[prefix + "fvu"] = m.fvu;
  (*out)[prefix + "mean_l0"] = m.mean_l0;
  (*out)[prefix + "dead_fraction"] = m.dead_fraction;
  (*out)[prefix + "psnr_db"] = m.psnr_db;
}

// Ids are "job-NNNNNNNNN-XXXXXXXX"; anything else cannot name a job, and is refused
// without echoing more than a little of it.
absl::Status ValidateJobId(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("job_id: missing");
  if (!IsJobId(id)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "job_id: '", absl::CHexEscape(id.substr(0, 40)), id.size() > 40 ? "...'" : "'",
        " is not a job id; expected the id Train returned, like job-000000001-3f2a9c1b"));
  }
  return absl::OkStatus();
}

// journaled_revision_ of a job whose record was removed.
constexpr int64_t kRemoved = std::numeric_limits<int64_t>::max();

}  // namespace

class ABSL_SCOPED_LOCKABLE TrainingJobManager::Lock {
 public:
  explicit Lock(TrainingJobManager* m) ABSL_EXCLUSIVE_LOCK_FUNCTION(m->mu_) : m_(m) {
    m_->mu_.Lock();
  }
  ~Lock() ABSL_UNLOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    std::vector<JournalOp> ops;
    ops.swap(m_->pending_journal_);
    if (ops.empty()) {
      m_->mu_.Unlock();
      return;
    }
    ++m_->journal_batches_in_flight_;
    // A final state is shown only once its record is on disk, so that what
    // a caller was told is what a restarted server reports. Other records
    // are written after mu_ is released.
    const bool final_record = std::any_of(ops.begin(), ops.end(), [](const JournalOp& op) {
      return !op.remove && IsFinal(op.info.state);
    });
    if (final_record) m_->WriteJournalBatch(ops);
    m_->mu_.Unlock();
    if (!final_record) m_->WriteJournalBatch(ops);
  }
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;

 private:
  TrainingJobManager* const m_;
};

void TrainingJobManager::SetStateLocked(Job* job, JobState state, bool journal) {
  const JobState old = job->info.state;
  job->info.state = state;
  ++job->info.revision;
  if (old == state) return;
  if (old == JobState::kRunning) --running_;
  if (state == JobState::kRunning) ++running_;
  if (on_state_) on_state_(JobStateName(state), running_);
  if (journal) JournalLocked(*job);
}

void TrainingJobManager::JournalLocked(const Job& job) {
  if (journal_ != nullptr) pending_journal_.push_back({job.info, false});
}

void TrainingJobManager::WriteJournalBatch(const std::vector<JournalOp>& ops) {
  WriteJournal(ops).IgnoreError();  // logged
  absl::MutexLock lock(&journal_mu_);
  if (--journal_batches_in_flight_ > 0) return;
  // Every batch taken from pending_journal_ so far is written, and later
  // ones cannot name a removed job (it left jobs_ before its removal was
  // queued): the tombstones have done their work.
  for (auto it = journaled_revision_.begin(); it != journaled_revision_.end();) {
    it = it->second == kRemoved ? journaled_revision_.erase(it) : std::next(it);
  }
}

size_t TrainingJobManager::journaled_ids_for_testing() {
  absl::MutexLock lock(&journal_mu_);
  return journaled_revision_.size();
}

absl::Status TrainingJobManager::WriteJournal(const std::vector<JournalOp>& ops) {
  if (journal_ == nullptr || ops.empty()) return absl::OkStatus();
  absl::MutexLock lock(&journal_mu_);
  absl::Status first;
  for (const JournalOp& op : ops) {
    const auto it = journaled_revision_.try_emplace(op.info.id, -1).first;
    if (it->second == kRemoved) continue;
    if (op.remove) {
      if (absl::Status s = journal_->Remove(op.info.id); !s.ok()) {
        // Left on disk, it comes back at the next start; Recover then
        // prefers the record a caller was given (see there).
        LogLine("job", absl::StrCat(op.info.id, ": cannot remove its record: ", s.message()));
      }
      it->second = kRemoved;
      continue;
    }
    if (op.info.revision <= it->second) continue;  // a newer record is on disk
    if (absl::Status s = journal_->Write(op.info); !s.ok()) {
      LogLine("job", absl::StrCat(op.info.id, ": cannot journal its state ",
                                  JobStateName(op.info.state), ": ", s.message()));
      if (first.ok()) first = s;
      continue;
    }
    it->second = op.info.revision;
  }
  return first;
}

void TrainingJobManager::Recover() {
  std::vector<std::string> problems;
  std::vector<JobInfo> records = journal_->ReadAll(&problems);
  for (const std::string& p : problems) LogLine("job", "journal: skipped " + p);
  Lock lock(this);
  // How much a record is the one its request id names: final on disk, then
  // found published, then recovered as interrupted; then a record written
  // again since its first (Submit rewrites an admitted job's before its
  // caller hears of it); then the older. Two records share a request id
  // when a Submit refused after writing its record (a retry with that id
  // was admitted first) leaves it behind: the process died, or the removal
  // failed, before it went.
  std::map<std::string, std::pair<int, int64_t>> standing;  // rank, revision
  auto claim = [&](const JobInfo& info, int rank, int64_t revision) {
    if (info.request_id.empty()) return;
    auto it = by_request_id_.find(info.request_id);
    if (it != by_request_id_.end()) {
      const std::pair<int, int64_t> held = standing[it->second];
      const std::pair<int, int64_t> mine{rank, std::min<int64_t>(revision, 1)};
      // Ids sort as numbers (nine digits): on a tie the older one stays.
      if (mine < held || (mine == held && it->second < info.id)) return;
    }
    by_request_id_[info.request_id] = info.id;
    standing[info.id] = {rank, std::min<int64_t>(revision, 1)};
  };
  for (JobInfo& info : records) {
    const int64_t revision_on_disk = info.revision;
    int64_t number = 0;
    if (std::sscanf(info.id.c_str(), "job-%" SCNd64, &number) == 1) {
      next_id_ = std::max(next_id_, number + 1);
    }
    const bool was_open = !IsFinal(info.state);
    if (was_open) {
      // The process that held it died. A version carrying this job's id
      // means it got as far as publishing; otherwise nothing was published.
      int64_t published = 0;
      std::map<std::string, double> metrics;
      if (absl::StatusOr<std::vector<VersionInfo>> versions = store_->ListVersions(info.model_name);
          versions.ok()) {
        for (const VersionInfo& v : *versions) {
          auto it = v.metadata.training.find("job_id");
          if (it != v.metadata.training.end() && it->second == info.id) {
            published = v.version;
            metrics = v.metadata.metrics;
          }
        }
      }
      if (published > 0) {
        info.state = JobState::kSucceeded;
        info.published_version = published;
        info.metrics = std::move(metrics);
        info.error.clear();
      } else {
        info.error = absl::StrCat("interrupted: the server stopped (killed or crashed) while the "
                                  "job was ", JobStateName(info.state), "; nothing was published");
        info.state = JobState::kInterrupted;
      }
      LogLine("job", absl::StrCat(info.id, " recovered from the journal as ",
                                  JobStateName(info.state),
                                  published > 0 ? absl::StrCat(" (", info.model_name, "@",
                                                               published, ")")
                                                : std::string()));
    }
    auto job = std::make_unique<Job>();
    job->info = std::move(info);
    job->released = true;
    if (was_open) JournalLocked(*job);  // final records stay as they are
    claim(job->info, !was_open ? 2 : job->info.state == JobState::kSucceeded ? 1 : 0,
          revision_on_disk);
    jobs_[job->info.id] = std::move(job);
  }
}

TrainingJobManager::TrainingJobManager(ModelStore* store, JobManagerOptions options,
                                       std::unique_ptr<JobJournal> journal)
    : store_(store), options_(options), journal_(std::move(journal)) {
  if (journal_ != nullptr) Recover();
  for (int i = 0; i < std::max(1, options_.max_running); ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

TrainingJobManager::~TrainingJobManager() { Shutdown(); }

void TrainingJobManager::Finish(Job* job, const std::function<void(JobInfo&)>& change) {
  bool journaled = false;
  if (journal_ != nullptr) {
    // The final record is written first and without mu_, so that job calls
    // do not wait for it (Lock would otherwise write it under mu_). Only
    // this worker changes a running job's record, so the copy stays the
    // record Update makes, revision included.
    JobInfo record;
    {
      absl::MutexLock lock(&mu_);
      record = job->info;
    }
    change(record);
    ++record.revision;
    journaled = WriteJournal({{record, false}}).ok();  // a failure is logged
  }
  Update(job, change, journaled);
}

void TrainingJobManager::Update(Job* job, const std::function<void(JobInfo&)>& change,
                                bool journaled) {
  Lock lock(this);
  const JobState old = job->info.state;
  change(job->info);
  const JobState now = job->info.state;
  job->info.state = old;
  SetStateLocked(job, now, !journaled);  // counts, notifies and bumps the revision
  if (IsFinal(now)) job->released = true;  // the caller's last touch
}

absl::StatusOr<JobInfo> TrainingJobManager::Submit(JobSpec spec) {
  if (absl::Status s = ValidateStoreName(spec.model_name, "model"); !s.ok()) return s;
  if (absl::Status s = spec.config.Validate(); !s.ok()) return s;
  if (spec.config.activation == Activation::kJumpRelu) {
    return absl::InvalidArgumentError(
        "config.activation: JumpReLU models can be imported and served but not trained here");
  }
  if (absl::Status s = spec.options.Validate(); !s.ok()) return s;
  if (spec.data == nullptr || spec.data->rows() < 2) {
    return absl::InvalidArgumentError("training data: need at least 2 rows");
  }
  if (spec.data->cols() != spec.config.d_in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "training data has ", spec.data->cols(), " columns, config.d_in is ", spec.config.d_in));
  }
  auto job = std::make_unique<Job>();
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<const JobInfo*> admission = AdmissionLocked(spec.request_id);
    if (!admission.ok()) return admission.status();
    if (*admission != nullptr) return **admission;  // a retry: the same job
    // A number that sorts as text (nine digits), and 32 random bits so that
    // the ids of trainers with journals of their own practically never meet.
    job->info.id = absl::StrFormat("job-%09d-%08x", next_id_++, std::random_device{}());
  }
  job->info.model_name = spec.model_name;
  job->info.created_at = Now();
  job->info.request_id = spec.request_id;
  job->info.progress.total_steps = 0;
  job->spec = std::move(spec);
  if (journal_ != nullptr) {
    // A job is accepted only once its record is on disk. The write is made
    // without mu_, so the admission is checked again below.
    if (absl::Status s = WriteJournal({{job->info, false}}); !s.ok()) {
      // Not the file system's code: a caller would read PERMISSION_DENIED or
      // NOT_FOUND as being about its own request.
      return absl::IsResourceExhausted(s)
                 ? absl::ResourceExhaustedError("the server's disk is full: cannot record the job")
                 : absl::UnavailableError(
                       "the server cannot record the job in its journal; retry later");
    }
  }
  Lock lock(this);
  if (absl::StatusOr<const JobInfo*> admission = AdmissionLocked(job->info.request_id);
      !admission.ok() || *admission != nullptr) {
    // Shut down, full, or a retry with the same request id was queued
    // meanwhile: this job's record goes again.
    if (journal_ != nullptr) pending_journal_.push_back({job->info, /*remove=*/true});
    if (!admission.ok()) return admission.status();
    return **admission;
  }
  Job* raw = job.get();
  if (!raw->info.request_id.empty()) {
    by_request_id_[raw->info.request_id] = raw->info.id;
    // Recorded again, a revision up, before the caller hears of it: a
    // refused Submit's leftover record (revision 0) then never outranks
    // the admitted one after a crash (Recover).
    ++raw->info.revision;
    JournalLocked(*raw);
  }
  jobs_[raw->info.id] = std::move(job);
  queue_.push_back(raw);
  if (on_state_) on_state_("queued", running_);
  LogLine("job", absl::StrCat(raw->info.id, " queued: model '", raw->info.model_name, "', ",
                              raw->spec.data->rows(), " x ", raw->spec.data->cols(), " rows"));
  // Forget the oldest finished jobs beyond the limit (never one a worker
  // still holds).
  while (static_cast<int64_t>(jobs_.size()) > options_.max_jobs_kept) {
    auto oldest = jobs_.end();
    for (auto it = jobs_.begin(); it != jobs_.end(); ++it) {
      if (IsFinal(it->second->info.state) && it->second->released) {
        oldest = it;
        break;
      }
    }
    if (oldest == jobs_.end()) break;
    by_request_id_.erase(oldest->second->info.request_id);
    if (journal_ != nullptr) pending_journal_.push_back({oldest->second->info, /*remove=*/true});
    jobs_.erase(oldest);
  }
  return raw->info;
}

absl::StatusOr<const JobInfo*> TrainingJobManager::AdmissionLocked(
    const std::string& request_id) const {
  if (shutting_down_) return absl::UnavailableError("the server is shutting down");
  if (!request_id.empty()) {
    if (auto it = by_request_id_.find(request_id); it != by_request_id_.end()) {
      return &jobs_.at(it->second)->info;
    }
  }
  if (static_cast<int>(queue_.size()) >= options_.max_queued) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the training queue is full (", options_.max_queued,
        " jobs waiting); retry later or cancel a job"));
  }
  return nullptr;
}

absl::StatusOr<std::optional<JobInfo>> TrainingJobManager::CheckAdmission(
    const std::string& request_id) const {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<const JobInfo*> admission = AdmissionLocked(request_id);
  if (!admission.ok()) return admission.status();
  if (*admission == nullptr) return std::nullopt;
  return **admission;
}

absl::StatusOr<JobInfo> TrainingJobManager::Get(const std::string& id) const {
  if (absl::Status s = ValidateJobId(id); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("unknown training job '", id, "'"));
  return it->second->info;
}

std::vector<JobInfo> TrainingJobManager::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<JobInfo> out;
  for (auto it = jobs_.rbegin(); it != jobs_.rend(); ++it) out.push_back(it->second->info);
  return out;
}

absl::StatusOr<JobInfo> TrainingJobManager::Cancel(const std::string& id) {
  if (absl::Status s = ValidateJobId(id); !s.ok()) return s;
  Lock lock(this);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("unknown training job '", id, "'"));
  Job* job = it->second.get();
  if (IsFinal(job->info.state)) {
    return absl::FailedPreconditionError(absl::StrCat("job '", id, "' has already ",
                                                      JobStateName(job->info.state)));
  }
  job->cancel = true;
  if (job->info.state == JobState::kQueued) {
    for (auto q = queue_.begin(); q != queue_.end(); ++q) {
      if (*q == job) {
        queue_.erase(q);
        break;
      }
    }
    job->info.error = "cancelled before it started";
    job->released = true;
    SetStateLocked(job, JobState::kCancelled);
    LogLine("job", absl::StrCat(id, " cancelled while queued"));
  }
  return job->info;
}

absl::StatusOr<JobInfo> TrainingJobManager::WaitForChange(const std::string& id,
                                                          int64_t after_revision,
                                                          absl::Duration timeout) const {
  if (absl::Status s = ValidateJobId(id); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (jobs_.find(id) == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown training job '", id, "'"));
  }
  // The job is looked up again on every check and after the wait, never
  // held: while mu_ is released, a finished job may be forgotten (a Submit
  // past max_jobs_kept frees the oldest).
  const auto changed = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    auto it = jobs_.find(id);
    return it == jobs_.end() || it->second->info.revision > after_revision ||
           IsFinal(it->second->info.state);
  };
  mu_.AwaitWithTimeout(absl::Condition(&changed), timeout);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "training job '", id, "' ended and was forgotten while watched (the server keeps the ",
        options_.max_jobs_kept, " newest finished jobs)"));
  }
  return it->second->info;
}

void TrainingJobManager::WorkerLoop() {
  // Training yields the CPU to request threads: a lower priority, and a
  // thread pool of its own, so that a request never finds the pool busy
  // with training and never waits behind it for a core.
  MakeCurrentThreadBackground();
  while (true) {
    Job* job = nullptr;
    {
      Lock lock(this);
      const auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return shutting_down_ || !queue_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (shutting_down_) return;
      job = queue_.front();
      queue_.pop_front();
      SetStateLocked(job, JobState::kRunning);
    }
    RunJob(job);
  }
}

void TrainingJobManager::RunJob(Job* job) {
  const std::string id = job->info.id;
  const std::string model_name = job->info.model_name;
  LogLine("job", absl::StrCat(id, " running"));
  TrainingHooks hooks;
  hooks.cancel = &job->cancel;
  hooks.on_progress = [&](const TrainingProgress& p) {
    Update(job, [&](JobInfo& info) { info.progress = p; });
    if (on_progress_) on_progress_(p.rows_per_s);
  };
  TrainerOptions options = job->spec.options;
  if (options.progress_every_steps == 0) options.progress_every_steps = 10;
  absl::StatusOr<TrainingResult> result =
      Train(job->spec.config, options, *job->spec.data, hooks);
  if (!result.ok()) {
    bool interrupted;
    {
      absl::MutexLock lock(&mu_);
      interrupted = shutting_down_;
    }
    const JobState state = absl::IsCancelled(result.status())
                               ? (interrupted ? JobState::kInterrupted : JobState::kCancelled)
                               : JobState::kFailed;
    const std::string error = state == JobState::kInterrupted
                                  ? "interrupted by a server shutdown; nothing was published"
                                  : std::string(result.status().message());
    job->spec.data.reset();
    Finish(job, [&](JobInfo& info) {  // the last touch of `job`
      info.state = state;
      info.error = error;
    });
    LogLine("job", absl::StrCat(id, " ", JobStateName(state), ": ", error));
    return;
  }
  ModelMetadata meta;
  meta.description = job->spec.description;
  meta.data_rows = job->spec.data->rows();
  meta.data_cols = job->spec.data->cols();
  const TrainerOptions& o = job->spec.options;
  meta.training = {{"job_id", job->info.id},
                   {"batch_size", absl::StrCat(o.batch_size)},
                   {"epochs", absl::StrCat(o.epochs)},
                   {"max_steps", absl::StrCat(o.max_steps)},
                   {"steps", absl::StrCat(result->steps)},
                   {"seed", absl::StrCat(o.seed)},
                   {"optimizer", std::string(OptimizerName(o.optimizer.kind))},
                   {"learning_rate", absl::StrCat(o.optimizer.learning_rate)},
                   {"corruption", std::string(CorruptionName(o.corruption.kind))},
                   {"noise_sigma", absl::StrCat(o.corruption.sigma)},
                   {"validation_fraction", absl::StrCat(o.validation_fraction)},
                   {"seconds", absl::StrCat(result->seconds)}};
  std::map<std::string, double> metrics;
  AddMetrics("", result->train_metrics, &metrics);
  if (result->validation_metrics) AddMetrics("validation_", *result->validation_metrics, &metrics);
  if (result->validation_denoising) {
    metrics["validation_noisy_psnr_db"] = result->validation_denoising->noisy_psnr_db;
    metrics["validation_denoised_psnr_db"] = result->validation_denoising->denoised_psnr_db;
  }
  metrics["rows_per_second"] = result->rows_per_s;
  meta.metrics = metrics;
  absl::StatusOr<int64_t> version = store_->Publish(model_name, *result->model, meta);
  job->spec.data.reset();
  std::string error;
  if (!version.ok()) {
    error = absl::StrCat("training finished but publishing failed: ", version.status().message());
  }
  Finish(job, [&](JobInfo& info) {  // the last touch of `job`
    if (version.ok()) {
      info.state = JobState::kSucceeded;
      info.published_version = *version;
      info.metrics = metrics;
    } else {
      info.state = JobState::kFailed;
      info.error = error;
    }
  });
  LogLine("job", version.ok() ? absl::StrCat(id, " succeeded: published ", model_name, "@", *version)
                              : absl::StrCat(id, " failed: ", error));
}

void TrainingJobManager::Shutdown() {
  {
    Lock lock(this);
    if (shutting_down_ && workers_.empty()) return;
    shutting_down_ = true;
    for (auto& [id, job] : jobs_) {
      if (job->info.state == JobState::kRunning) job->cancel = true;
      if (job->info.state == JobState::kQueued) {
        job->info.error = "interrupted by a server shutdown before it started";
        job->released = true;
        SetStateLocked(job.get(), JobState::kInterrupted);
      }
    }
    queue_.clear();
  }
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

}  // namespace sae::server
