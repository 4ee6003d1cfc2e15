#include "core/parallel.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
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
  // The pool for foreground threads, or the one for background threads.
  static Pool& Get(bool background) {
    // Never destroyed: workers outlive main.
    static Pool* foreground_pool = new Pool(false);
    static Pool* background_pool = new Pool(true);
    return background ? *background_pool : *foreground_pool;
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
  explicit Pool(bool background) : background_(background) {}

  void EnsureWorkers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int id = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, id] { Loop(id); });
      workers_.back().detach();
    }
  }

  void Loop(int id) {
    if (background_) MakeCurrentThreadBackground();
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

  const bool background_;
  std::mutex call_mu_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  int chunks_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  std::vector<std::thread> workers_;
};

thread_local bool t_background = false;
thread_local int t_serial_depth = 0;
constexpr int kBackgroundNice = 10;
std::atomic<int> g_background_threads{0};  // 0: the default

}  // namespace

bool MakeCurrentThreadBackground() {
  // On Linux a thread's nice value is its own (PRIO_PROCESS, 0: this thread).
  // Not SCHED_IDLE: that would starve training whenever anything else in
  // the container keeps the cores busy.
  if (::setpriority(PRIO_PROCESS, 0, kBackgroundNice) != 0) return false;
  t_background = true;
  return true;
}

bool IsBackgroundThread() { return t_background; }

void SetBackgroundThreads(int num_threads) { g_background_threads = std::max(0, num_threads); }

int BackgroundThreads() {
  const int set = g_background_threads.load();
  return set > 0 ? set : std::max(1, BlasThreads() - 1);
}

ScopedSerial::ScopedSerial() { ++t_serial_depth; }
ScopedSerial::~ScopedSerial() { --t_serial_depth; }

int Parallelism() {
  if (t_serial_depth > 0) return 1;
  return t_background ? BackgroundThreads() : std::max(1, BlasThreads());
}

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
  if (!Pool::Get(t_background).TryRun(static_cast<int>(chunks), job)) {
    // The pool is busy (another thread, or a nested call): same chunks,
    // same results, one after another on this thread.
    for (int c = 0; c < chunks; ++c) job(c);
  }
}

}  // namespace sae
