// The models the server serves: loaded on first use, shared as
// shared_ptr<const Model>, and kept current as the store changes (hot
// reload). Knows nothing of gRPC.
//
// Hot reload: a StoreWatcher polls the store (this process's and other
// replicas' publishes alike). A new version is loaded and verified before it
// becomes "latest"; a version that fails to load (a corrupt file) is refused,
// logged, and the previous one keeps serving. Labels follow the store, with
// the same fallback to the label's last good target.
//
// With polling on, a known model's latest version and labels resolve from
// memory (no file-system call per request). Label moves, deletes and imports
// made through this server apply at once; versions published by training
// jobs and by other replicas within one poll interval.
//
// Memory: the registry keeps loaded each model's latest good version and
// every label's target, and besides them at most kMaxOtherVersions versions
// asked for by number (the least recently used goes first; a request that
// holds it keeps it alive). A version that left is loaded again when asked.
//
// Thread-safe. Lookups take a mutex briefly; model loading and all compute
// happen outside it.
#ifndef SAE_SERVER_MODEL_REGISTRY_H_
#define SAE_SERVER_MODEL_REGISTRY_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/model_store.h"
#include "core/store_watcher.h"

namespace sae::server {

struct ServedModel {
  std::shared_ptr<const Model> model;
  int64_t version = 0;
};

class ModelRegistry {
 public:
  // `store` must outlive the registry. reload_interval 0 disables polling.
  // `on_load` (optional) hears of every version load: true when it loaded,
  // false when it was refused as corrupt. `on_held` (optional) hears the
  // number of versions held loaded whenever it changes. Both are called
  // under the registry's lock: they must be quick and must not call back.
  ModelRegistry(ModelStore* store, std::chrono::milliseconds reload_interval,
                std::function<void(bool ok)> on_load = nullptr,
                std::function<void(int64_t held)> on_held = nullptr);
  ~ModelRegistry();

  // The model `ref` names. NOT_FOUND for unknown models, versions, labels;
  // DATA_LOSS when the requested version is corrupt and nothing else can
  // stand in for it.
  absl::StatusOr<ServedModel> Get(const ModelRef& ref);

  // Applies store changes at once (the watcher calls this; tests too).
  void Refresh();

  // Counters for logs and metrics.
  int64_t reload_failures() const;
  int64_t loads() const;
  // Versions held loaded now.
  int64_t cached_versions() const;

  static constexpr int kMaxOtherVersions = 4;

 private:
  struct ModelEntry {
    int64_t latest_good = 0;                      // newest version that loaded
    std::map<std::string, int64_t> label_good;    // label -> last good target
    // Bumped by every store change the watcher applies to the model. A
    // lookup that loaded outside the lock records what it found only if
    // this did not move meanwhile: else a slow load could bring back a
    // version deleted, or a label target moved, while it ran.
    uint64_t generation = 0;
  };

  // The model's generation (0 for a model with no entry yet).
  uint64_t GenerationLocked(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Loads (or finds cached) version `version`, `generation` being the
  // model's generation when the caller chose it. If the generation moved by
  // the time the load ends, the version is cached only if the store still
  // has it: NOT_FOUND otherwise.
  absl::StatusOr<std::shared_ptr<const Model>> LoadVersion(const std::string& name,
                                                           int64_t version, uint64_t generation);
  // One attempt at Get. *raced is set when the store changed the model
  // while the attempt loaded: its answer was right when it began, but it
  // recorded nothing.
  absl::StatusOr<ServedModel> TryGet(const ModelRef& ref, bool* raced);
  void OnChanges(const std::vector<StoreChange>& changes);
  void Evict(const std::string& name, int64_t version);
  // Drops the least recently used versions beyond kMaxOtherVersions that
  // are neither a model's latest good version nor a label's target.
  void TrimCacheLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  struct CachedModel {
    std::shared_ptr<const Model> model;
    uint64_t last_used = 0;  // use_clock_ at the last lookup
  };

  ModelStore* const store_;
  const std::function<void(bool)> on_load_;
  const std::function<void(int64_t)> on_held_;
  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, int64_t>, CachedModel> cache_ ABSL_GUARDED_BY(mu_);
  uint64_t use_clock_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<std::pair<std::string, int64_t>> bad_versions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ModelEntry> entries_ ABSL_GUARDED_BY(mu_);
  int64_t reload_failures_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t loads_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<StoreWatcher> watcher_;
};

}  // namespace sae::server

#endif  // SAE_SERVER_MODEL_REGISTRY_H_
