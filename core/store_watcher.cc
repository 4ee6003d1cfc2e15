#include "core/store_watcher.h"

#include <utility>

#include "absl/time/time.h"

namespace sae {

StoreWatcher::StoreWatcher(const ModelStore* store, std::chrono::milliseconds interval,
                           Callback callback)
    : store_(store), interval_(interval), callback_(std::move(callback)) {
  {
    absl::MutexLock lock(&poll_mu_);
    absl::StatusOr<StoreSnapshot> first = store_->Snapshot();
    if (first.ok()) last_ = std::move(*first);
  }
  thread_ = std::thread([this] { Run(); });
}

StoreWatcher::~StoreWatcher() {
  {
    absl::MutexLock lock(&stop_mu_);
    stop_ = true;
  }
  thread_.join();
}

void StoreWatcher::PollNow() {
  absl::MutexLock lock(&poll_mu_);
  absl::StatusOr<StoreSnapshot> now = store_->Snapshot();
  if (!now.ok()) return;  // a transient listing error: try again next time
  // A model that could not be read this time keeps its last known state:
  // one failed read (EMFILE, EIO, a stale NFS handle) must not read as
  // every version and label removed, then all added again.
  for (auto it = now->models.begin(); it != now->models.end();) {
    StoreSnapshot::ModelState& m = it->second;
    if (m.versions_read && m.labels_read) {
      ++it;
      continue;
    }
    auto known = last_.models.find(it->first);
    if (known == last_.models.end()) {
      it = now->models.erase(it);  // not seen yet: wait for a full read
      continue;
    }
    if (!m.versions_read) m.versions = known->second.versions;
    if (!m.labels_read) m.labels = known->second.labels;
    m.versions_read = m.labels_read = true;
    ++it;
  }
  std::vector<StoreChange> changes = DiffSnapshots(last_, *now);
  last_ = std::move(*now);
  if (!changes.empty()) callback_(changes);
}

void StoreWatcher::Run() {
  while (true) {
    {
      absl::MutexLock lock(&stop_mu_);
      const auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(stop_mu_) { return stop_; };
      stop_mu_.AwaitWithTimeout(absl::Condition(&stopped),
                                absl::Milliseconds(interval_.count()));
      if (stop_) return;
    }
    PollNow();
  }
}

}  // namespace sae
