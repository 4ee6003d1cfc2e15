// Polls a ModelStore and reports what changed: versions added or removed and
// labels set, moved or removed, by this or any other process sharing the
// store. Polling (not inotify) so that it works on network volumes too.
//
// Thread-safe. The callback runs on the watcher's own thread, one batch at a
// time; it must not destroy the watcher.
#ifndef SAE_CORE_STORE_WATCHER_H_
#define SAE_CORE_STORE_WATCHER_H_

#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "core/model_store.h"

namespace sae {

class StoreWatcher {
 public:
  using Callback = std::function<void(const std::vector<StoreChange>& changes)>;

  // Takes a first snapshot now (changes are reported relative to it) and
  // starts polling every `interval`. `store` must outlive the watcher.
  StoreWatcher(const ModelStore* store, std::chrono::milliseconds interval, Callback callback);
  // Stops polling and joins the thread.
  ~StoreWatcher();
  StoreWatcher(const StoreWatcher&) = delete;
  StoreWatcher& operator=(const StoreWatcher&) = delete;

  // Polls at once on the caller's thread and reports changes (through the
  // callback) before returning. Useful in tests and at start-up.
  void PollNow();

 private:
  void Run();

  const ModelStore* const store_;
  const std::chrono::milliseconds interval_;
  const Callback callback_;
  absl::Mutex poll_mu_;  // one poll at a time
  StoreSnapshot last_ ABSL_GUARDED_BY(poll_mu_);
  absl::Mutex stop_mu_;
  bool stop_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread thread_;
};

}  // namespace sae

#endif  // SAE_CORE_STORE_WATCHER_H_
