#include "core/parallel.h"

#include <sys/resource.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "core/blas.h"

namespace sae {
namespace {

// Persistent workers that wait for a job, run their chunk, and report back.
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool();  // never destroyed: workers outlive main
    return *pool;
  }

  // Runs job(0..chunks-1); returns false without running anything when
  // another job holds the pool (the caller then runs serially).
  bool TryRun(int chunks, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> call_lock(call_mu_, std::try_to_lock);
    if (!call_lock.owns_lock()) return false;
    EnsureWorkers(chunks - 1);
    {
      std::lock_guard<std::mutex> l(mu_);
      job_ = &job;
      chunks_ = chunks;
      pending_ = chunks - 1;
      ++generation_;
    }
    work_cv_.notify_all();
    job(0);
    std::unique_lock<std::mutex> l(mu_);
    done_cv_.wait(l, [&] { return pending_ == 0; });
    job_ = nullptr;
    return true;
  }

 private:
  void EnsureWorkers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int id = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, id] { Loop(id); });
      workers_.back().detach();
    }
  }

  void Loop(int id) {
    // Pool workers mostly run training chunks; a lower priority lets request
    // threads (which run their own chunk 0) preempt them.
    ::setpriority(PRIO_PROCESS, 0, 5);
    uint64_t seen = 0;
    while (true) {
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> l(mu_);
        work_cv_.wait(l, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= chunks_) continue;
        job = job_;
      }
      (*job)(id);
      std::lock_guard<std::mutex> l(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex call_mu_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  int chunks_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  std::vector<std::thread> workers_;
};

}  // namespace

int Parallelism() { return std::max(1, BlasThreads()); }

void ParallelFor(int64_t n, int64_t min_per_chunk,
                 const std::function<void(int, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int64_t chunks = std::min<int64_t>(Parallelism(), n / std::max<int64_t>(min_per_chunk, 1));
  chunks = std::max<int64_t>(chunks, 1);
  auto bounds = [&](int c) { return n * c / chunks; };
  if (chunks == 1) {
    fn(0, 0, n);
    return;
  }
  const std::function<void(int)> job = [&](int c) {
    fn(c, bounds(c), bounds(c + 1));
  };
  if (!Pool::Get().TryRun(static_cast<int>(chunks), job)) {
    // The pool is busy (another thread, or a nested call): same chunks,
    // same results, one after another on this thread.
    for (int c = 0; c < chunks; ++c) job(c);
  }
}

}  // namespace sae
