// Threads for inference work that would otherwise block a gRPC callback
// thread: a product too large to merge, or any product with batching off.
// gRPC runs callback-API handlers on a few threads of its own; a handler that
// computes for a second there holds up every other call's handler (measured:
// a one-row Encode waited 1.2 s behind two 8,000-row Reconstructs). Work run
// here instead shares the cores through the kernel's scheduler, as the
// synchronous server's threads did.
//
// Thread-safe.
#ifndef SAE_SERVER_COMPUTE_POOL_H_
#define SAE_SERVER_COMPUTE_POOL_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace sae::server {

class ComputePool {
 public:
  // Starts threads on demand, one per closure waiting, up to max_threads
  // (>= 1); beyond that closures queue in order.
  explicit ComputePool(int max_threads);
  // Runs every closure already given, then joins the threads.
  ~ComputePool();

  void Run(std::function<void()> fn);
  // Run, ahead of every closure already waiting: for short work that many
  // calls wait on (a batching queue handed over by its leader), which must
  // not wait behind large products queued before it.
  void RunNext(std::function<void()> fn);
  // Run, for a closure that holds `bytes` (its request) while it waits for
  // a thread: refused (false, fn dropped) when closures already waiting hold
  // `max_waiting_bytes` or more with it. One is always admitted when none
  // waits, however large.
  bool TryRun(std::function<void()> fn, int64_t bytes, int64_t max_waiting_bytes);

 private:
  struct Waiting {
    std::function<void()> fn;
    int64_t bytes = 0;
  };
  void Loop();
  void PushLocked(std::function<void()> fn, int64_t bytes, bool first = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_threads_;
  absl::Mutex mu_;
  std::deque<Waiting> queue_ ABSL_GUARDED_BY(mu_);
  int64_t waiting_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sae::server

#endif  // SAE_SERVER_COMPUTE_POOL_H_
