#include "core/parallel.h"

#include <sched.h>

#include <atomic>
#include <thread>
#include <vector>

#include "core/blas.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

// The scheduling policy of every chunk of a ParallelFor over `chunks` items.
std::vector<int> PoliciesOfChunks(int chunks) {
  std::vector<int> policies(chunks, -1);
  ParallelFor(chunks, 1, [&](int chunk, int64_t, int64_t) {
    policies[chunk] = ::sched_getscheduler(0);
  });
  return policies;
}

TEST(ParallelTest, ChunksCoverTheRangeOnceInOrder) {
  std::vector<int> hits(1000, 0);
  ParallelFor(1000, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) ++hits[i];
  });
  for (int h : hits) EXPECT_EQ(h, 1);
}

TEST(ParallelTest, BackgroundThreadsAndTheirChunksRunAtIdlePriority) {
  SetBlasThreads(2);
  // A foreground caller: every chunk at the normal policy.
  for (int p : PoliciesOfChunks(2)) EXPECT_EQ(p, SCHED_OTHER);
  std::vector<int> background_policies;
  bool made = false, flagged = false;
  std::thread training([&] {
    made = MakeCurrentThreadBackground();
    flagged = IsBackgroundThread();
    background_policies = PoliciesOfChunks(2);
  });
  training.join();
  ASSERT_TRUE(made) << "the kernel refused SCHED_IDLE";
  EXPECT_TRUE(flagged);
  ASSERT_EQ(background_policies.size(), 2u);
  EXPECT_EQ(background_policies[0], SCHED_IDLE);  // the calling thread
  EXPECT_EQ(background_policies[1], SCHED_IDLE);  // a background pool worker
  // The foreground pool is untouched by it.
  EXPECT_FALSE(IsBackgroundThread());
  for (int p : PoliciesOfChunks(2)) EXPECT_EQ(p, SCHED_OTHER);
  SetBlasThreads(0);
}

TEST(ParallelTest, ABackgroundCallerDoesNotHoldUpForegroundCallers) {
  SetBlasThreads(2);
  std::atomic<bool> in_background_chunk{false}, release{false};
  std::thread training([&] {
    ASSERT_TRUE(MakeCurrentThreadBackground());
    ParallelFor(2, 1, [&](int, int64_t, int64_t) {
      in_background_chunk = true;
      while (!release) std::this_thread::yield();
    });
  });
  while (!in_background_chunk) std::this_thread::yield();
  // While the background pool is busy, a foreground call still gets the
  // foreground pool: both of its chunks run, one of them on another thread.
  std::vector<std::thread::id> ids(2);
  ParallelFor(2, 1, [&](int chunk, int64_t, int64_t) { ids[chunk] = std::this_thread::get_id(); });
  EXPECT_NE(ids[0], ids[1]);
  release = true;
  training.join();
  SetBlasThreads(0);
}

}  // namespace
}  // namespace sae
