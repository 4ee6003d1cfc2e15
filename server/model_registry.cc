#include "server/model_registry.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/log.h"

namespace sae::server {

ModelRegistry::ModelRegistry(ModelStore* store, std::chrono::milliseconds reload_interval,
                             std::function<void(bool)> on_load,
                             std::function<void(int64_t)> on_held)
    : store_(store), on_load_(std::move(on_load)), on_held_(std::move(on_held)) {
  if (reload_interval.count() > 0) {
    watcher_ = std::make_unique<StoreWatcher>(
        store_, reload_interval,
        [this](const std::vector<StoreChange>& changes) { OnChanges(changes); });
  }
}

ModelRegistry::~ModelRegistry() { watcher_.reset(); }

int64_t ModelRegistry::reload_failures() const {
  absl::MutexLock lock(&mu_);
  return reload_failures_;
}

int64_t ModelRegistry::loads() const {
  absl::MutexLock lock(&mu_);
  return loads_;
}

int64_t ModelRegistry::cached_versions() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(cache_.size());
}

void ModelRegistry::TrimCacheLocked() {
  std::set<std::pair<std::string, int64_t>> pinned;
  for (const auto& [name, e] : entries_) {
    if (e.latest_good > 0) pinned.emplace(name, e.latest_good);
    for (const auto& [label, version] : e.label_good) pinned.emplace(name, version);
  }
  std::vector<std::pair<uint64_t, std::pair<std::string, int64_t>>> others;
  for (const auto& [key, cached] : cache_) {
    if (!pinned.count(key)) others.emplace_back(cached.last_used, key);
  }
  if (others.size() <= static_cast<size_t>(kMaxOtherVersions)) return;
  std::sort(others.begin(), others.end());
  for (size_t i = 0; i + kMaxOtherVersions < others.size(); ++i) cache_.erase(others[i].second);
}

uint64_t ModelRegistry::GenerationLocked(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? 0 : it->second.generation;
}

absl::StatusOr<std::shared_ptr<const Model>> ModelRegistry::LoadVersion(const std::string& name,
                                                                        int64_t version,
                                                                        uint64_t generation) {
  const auto key = std::make_pair(name, version);
  {
    absl::MutexLock lock(&mu_);
    if (auto it = cache_.find(key); it != cache_.end()) {
      it->second.last_used = ++use_clock_;
      return it->second.model;
    }
    // Versions never change once published: a corrupt one stays refused.
    if (bad_versions_.count(key)) {
      return absl::DataLossError(absl::StrCat("model '", name, "' version ", version,
                                              " is corrupt and was refused"));
    }
  }
  // Load outside the lock: other requests keep being served meanwhile. Two
  // threads may load the same version at once; the first to finish wins.
  absl::StatusOr<LoadedModel> loaded = store_->Load(ModelRef::Version(name, version));
  // Packing here keeps the copy off the first small request's path.
  if (loaded.ok()) loaded->model->PrepareSmallBatchWeights();
  absl::MutexLock lock(&mu_);
  if (!loaded.ok()) {
    if (absl::IsDataLoss(loaded.status()) && bad_versions_.insert(key).second) {
      ++reload_failures_;
      if (on_load_) on_load_(false);
      LogLine("model", absl::StrCat("refused ", name, "@", version, ": ",
                                    loaded.status().message()));
    }
    return loaded.status();
  }
  // The store changed this model while the load ran: the version may have
  // been deleted (the watcher has then evicted it already). Ask the store
  // again, without the lock, until no change comes in between.
  while (GenerationLocked(name) != generation) {
    generation = GenerationLocked(name);
    mu_.Unlock();
    const absl::StatusOr<int64_t> still = store_->Resolve(ModelRef::Version(name, version));
    mu_.Lock();
    if (!still.ok()) return still.status();
  }
  ++loads_;
  auto [it, inserted] = cache_.emplace(key, CachedModel{loaded->model, 0});
  it->second.last_used = ++use_clock_;
  if (inserted && on_load_) on_load_(true);
  if (inserted) LogLine("model", absl::StrCat("loaded ", name, "@", version));
  std::shared_ptr<const Model> model = it->second.model;
  TrimCacheLocked();
  if (on_held_) on_held_(static_cast<int64_t>(cache_.size()));
  return model;
}

absl::StatusOr<ServedModel> ModelRegistry::Get(const ModelRef& ref) {
  // A store that keeps changing the model while lookups load could race
  // every attempt; after a few, the last answer is served as it stands.
  // An attempt that raced but found a model is kept: a later attempt that
  // fails (a transient file-system error) does not turn it into an error.
  constexpr int kAttempts = 3;
  absl::StatusOr<ServedModel> served = absl::UnknownError("no attempt made");
  std::optional<ServedModel> raced_ok;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    bool raced = false;
    served = TryGet(ref, &raced);
    if (!raced) break;
    if (served.ok()) raced_ok = *served;
  }
  if (!served.ok() && raced_ok.has_value()) return *raced_ok;
  return served;
}

absl::StatusOr<ServedModel> ModelRegistry::TryGet(const ModelRef& ref, bool* raced) {
  uint64_t generation = 0;
  {
    absl::MutexLock lock(&mu_);
    generation = GenerationLocked(ref.name);
    // Hot path: with a watcher keeping entries_ current, a known model's
    // latest version or label resolves from memory, with no file-system
    // call.
    if (watcher_ != nullptr) {
      int64_t known = ref.version;
      if (known == 0) {
        auto e = entries_.find(ref.name);
        if (e != entries_.end()) {
          if (ref.label.empty()) {
            known = e->second.latest_good;
          } else if (auto l = e->second.label_good.find(ref.label);
                     l != e->second.label_good.end()) {
            known = l->second;
          }
        }
      }
      if (known > 0) {
        if (auto it = cache_.find({ref.name, known}); it != cache_.end()) {
          it->second.last_used = ++use_clock_;
          return ServedModel{it->second.model, known};
        }
      }
    }
  }
  absl::StatusOr<int64_t> resolved = store_->Resolve(ref);
  if (!resolved.ok()) return resolved.status();
  int64_t version = *resolved;
  absl::StatusOr<std::shared_ptr<const Model>> model = LoadVersion(ref.name, version, generation);
  if (model.ok()) {
    absl::MutexLock lock(&mu_);
    if (GenerationLocked(ref.name) != generation) {
      *raced = true;  // what `ref` names may have moved: record nothing
      return ServedModel{*model, version};
    }
    ModelEntry& e = entries_[ref.name];
    if (ref.version == 0 && ref.label.empty()) e.latest_good = std::max(e.latest_good, version);
    if (!ref.label.empty()) e.label_good[ref.label] = version;
    return ServedModel{*model, version};
  }
  if (!absl::IsDataLoss(model.status()) || ref.version > 0) {
    // NOT_FOUND for a version deleted while it loaded: the latest or the
    // label may name another by now.
    if (absl::IsNotFound(model.status()) && ref.version == 0) *raced = true;
    return model.status();
  }
  // The latest version or the label's target is corrupt: keep serving the
  // last good one.
  int64_t fallback = 0;
  {
    absl::MutexLock lock(&mu_);
    auto e = entries_.find(ref.name);
    if (e != entries_.end()) {
      if (ref.label.empty()) {
        fallback = e->second.latest_good;
      } else if (auto it = e->second.label_good.find(ref.label); it != e->second.label_good.end()) {
        fallback = it->second;
      }
    }
  }
  if (fallback == 0 && ref.label.empty()) {
    // No good version is known (the last one was deleted): the newest older
    // version that loads stands in, and is remembered as the latest good.
    absl::StatusOr<std::vector<VersionInfo>> versions = store_->ListVersions(ref.name);
    if (!versions.ok()) return model.status();
    for (auto it = versions->rbegin(); it != versions->rend(); ++it) {
      if (it->version >= version) continue;
      absl::StatusOr<std::shared_ptr<const Model>> older =
          LoadVersion(ref.name, it->version, generation);
      if (!older.ok()) continue;
      absl::MutexLock lock(&mu_);
      if (GenerationLocked(ref.name) == generation) {
        ModelEntry& e = entries_[ref.name];
        e.latest_good = std::max(e.latest_good, it->version);
      }
      return ServedModel{*older, it->version};
    }
    return model.status();
  }
  if (fallback == 0 || fallback == version) return model.status();
  absl::StatusOr<std::shared_ptr<const Model>> previous =
      LoadVersion(ref.name, fallback, generation);
  if (!previous.ok()) return model.status();
  return ServedModel{*previous, fallback};
}

void ModelRegistry::Evict(const std::string& name, int64_t version) {
  absl::MutexLock lock(&mu_);
  cache_.erase({name, version});
  bad_versions_.erase({name, version});
  if (on_held_) on_held_(static_cast<int64_t>(cache_.size()));
}

void ModelRegistry::OnChanges(const std::vector<StoreChange>& changes) {
  for (const StoreChange& c : changes) {
    uint64_t generation = 0;
    {
      absl::MutexLock lock(&mu_);
      generation = ++entries_[c.model].generation;
    }
    switch (c.kind) {
      case StoreChange::Kind::kVersionAdded: {
        // Load (and verify) it now, so the first request does not wait and a
        // corrupt version is reported as soon as it appears.
        absl::StatusOr<std::shared_ptr<const Model>> m =
            LoadVersion(c.model, c.version, generation);
        if (m.ok()) {
          absl::MutexLock lock(&mu_);
          ModelEntry& e = entries_[c.model];
          e.latest_good = std::max(e.latest_good, c.version);
        }
        break;
      }
      case StoreChange::Kind::kVersionRemoved: {
        Evict(c.model, c.version);
        {
          // Forget resolutions that pointed at it; the next request asks the store.
          absl::MutexLock lock(&mu_);
          ModelEntry& e = entries_[c.model];
          if (e.latest_good == c.version) e.latest_good = 0;
          for (auto it = e.label_good.begin(); it != e.label_good.end();) {
            it = it->second == c.version ? e.label_good.erase(it) : std::next(it);
          }
        }
        LogLine("model", absl::StrCat("removed ", c.model, "@", c.version));
        break;
      }
      case StoreChange::Kind::kLabelSet: {
        absl::StatusOr<std::shared_ptr<const Model>> m =
            LoadVersion(c.model, c.version, generation);
        if (m.ok()) {
          absl::MutexLock lock(&mu_);
          entries_[c.model].label_good[c.label] = c.version;
        }
        LogLine("model", absl::StrCat("label ", c.model, ":", c.label, " -> ", c.version,
                                      m.ok() ? "" : " (refused: version does not load)"));
        break;
      }
      case StoreChange::Kind::kLabelRemoved: {
        absl::MutexLock lock(&mu_);
        entries_[c.model].label_good.erase(c.label);
        break;
      }
    }
  }
}

void ModelRegistry::Refresh() {
  if (watcher_) watcher_->PollNow();
}

}  // namespace sae::server
