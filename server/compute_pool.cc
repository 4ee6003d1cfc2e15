#include "server/compute_pool.h"

#include <algorithm>
#include <utility>

namespace sae::server {

ComputePool::ComputePool(int max_threads) : max_threads_(std::max(1, max_threads)) {}

ComputePool::~ComputePool() {
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
}

void ComputePool::Run(std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  PushLocked(std::move(fn), 0);
}

void ComputePool::RunNext(std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  PushLocked(std::move(fn), 0, /*first=*/true);
}

bool ComputePool::TryRun(std::function<void()> fn, int64_t bytes, int64_t max_waiting_bytes) {
  absl::MutexLock lock(&mu_);
  // An idle thread, or a new one, takes it at once: it will not wait.
  const bool waits = idle_ < static_cast<int>(queue_.size()) + 1 &&
                     static_cast<int>(threads_.size()) >= max_threads_;
  if (waits && waiting_bytes_ > 0 && waiting_bytes_ + bytes > max_waiting_bytes) return false;
  PushLocked(std::move(fn), bytes);
  return true;
}

void ComputePool::PushLocked(std::function<void()> fn, int64_t bytes, bool first) {
  if (first) {
    queue_.push_front({std::move(fn), bytes});
  } else {
    queue_.push_back({std::move(fn), bytes});
  }
  waiting_bytes_ += bytes;
  // A waiting thread takes it (the unlock wakes it); otherwise start one.
  if (idle_ >= static_cast<int>(queue_.size())) return;
  if (static_cast<int>(threads_.size()) < max_threads_) threads_.emplace_back([this] { Loop(); });
}

void ComputePool::Loop() {
  while (true) {
    std::function<void()> fn;
    {
      absl::MutexLock lock(&mu_);
      ++idle_;
      const auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return !queue_.empty() || stopping_;
      };
      mu_.Await(absl::Condition(&ready));
      --idle_;
      if (queue_.empty()) return;  // stopping, and nothing left to run
      fn = std::move(queue_.front().fn);
      waiting_bytes_ -= queue_.front().bytes;
      queue_.pop_front();
    }
    fn();
  }
}

}  // namespace sae::server
