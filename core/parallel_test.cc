#include "core/parallel.h"

#include <sys/resource.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "core/blas.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

// The nice value of the thread that ran each chunk of a ParallelFor.
std::vector<int> NiceOfChunks(int chunks) {
  std::vector<int> nice(chunks, -100);
  ParallelFor(chunks, 1, [&](int chunk, int64_t, int64_t) {
    nice[chunk] = ::getpriority(PRIO_PROCESS, 0);
  });
  return nice;
}

TEST(ParallelTest, ChunksCoverTheRangeOnceInOrder) {
  std::vector<int> hits(1000, 0);
  ParallelFor(1000, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) ++hits[i];
  });
  for (int h : hits) EXPECT_EQ(h, 1);
}

// Inside a ScopedSerial (and nested ones) every chunk runs on the calling
// thread, as one chunk; outside, a large loop is split over the pool again.
TEST(ParallelTest, ScopedSerialKeepsChunksOnTheCallingThread) {
  const int threads_before = BlasThreads();
  SetBlasThreads(2);
  const auto chunk_threads = [] {
    std::vector<std::thread::id> ids;
    std::mutex mu;
    ParallelFor(1000, 1, [&](int, int64_t, int64_t) {
      std::lock_guard<std::mutex> lock(mu);
      ids.push_back(std::this_thread::get_id());
    });
    return ids;
  };
  {
    ScopedSerial serial;
    EXPECT_EQ(Parallelism(), 1);
    {
      ScopedSerial nested;
      EXPECT_EQ(chunk_threads(), std::vector<std::thread::id>{std::this_thread::get_id()});
    }
    EXPECT_EQ(chunk_threads(), std::vector<std::thread::id>{std::this_thread::get_id()});
  }
  EXPECT_EQ(Parallelism(), 2);
  EXPECT_EQ(chunk_threads().size(), 2u);
  SetBlasThreads(threads_before);
}

TEST(ParallelTest, BackgroundThreadsAndTheirChunksRunAtLowPriority) {
  SetBlasThreads(2);
  SetBackgroundThreads(2);
  const int normal = ::getpriority(PRIO_PROCESS, 0);
  // A foreground caller: every chunk at the normal priority.
  for (int nice : NiceOfChunks(2)) EXPECT_EQ(nice, normal);
  std::vector<int> background_nice;
  bool made = false, flagged = false;
  std::thread training([&] {
    made = MakeCurrentThreadBackground();
    flagged = IsBackgroundThread();
    background_nice = NiceOfChunks(2);
  });
  training.join();
  ASSERT_TRUE(made) << "the kernel refused a lower priority";
  EXPECT_TRUE(flagged);
  ASSERT_EQ(background_nice.size(), 2u);
  EXPECT_GT(background_nice[0], normal);  // the calling thread
  EXPECT_GT(background_nice[1], normal);  // a background pool worker
  // The foreground pool is untouched by it.
  EXPECT_FALSE(IsBackgroundThread());
  for (int nice : NiceOfChunks(2)) EXPECT_EQ(nice, normal);
  SetBackgroundThreads(0);
  SetBlasThreads(0);
}

TEST(ParallelTest, ABackgroundCallerDoesNotHoldUpForegroundCallers) {
  SetBlasThreads(2);
  SetBackgroundThreads(2);
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
  SetBackgroundThreads(0);
  SetBlasThreads(0);
}

// The chunks one ParallelFor call of the calling thread splits into.
int ChunksOfACall() {
  std::atomic<int> chunks{0};
  ParallelFor(1000, 1, [&](int, int64_t, int64_t) { ++chunks; });
  return chunks;
}

TEST(ParallelTest, BackgroundWorkLeavesACoreToTheForegroundByDefault) {
  SetBlasThreads(4);
  EXPECT_EQ(BackgroundThreads(), 3);
  int default_chunks = 0, set_chunks = 0, restored_chunks = 0;
  std::thread training([&] {
    if (!MakeCurrentThreadBackground()) return;
    default_chunks = ChunksOfACall();
    SetBackgroundThreads(4);
    set_chunks = ChunksOfACall();
    SetBackgroundThreads(0);
    restored_chunks = ChunksOfACall();
  });
  training.join();
  ASSERT_NE(default_chunks, 0) << "the kernel refused a lower priority";
  EXPECT_EQ(default_chunks, 3);
  EXPECT_EQ(set_chunks, 4);
  EXPECT_EQ(restored_chunks, 3);
  EXPECT_EQ(ChunksOfACall(), 4);  // a foreground caller keeps every thread
  SetBlasThreads(1);
  EXPECT_EQ(BackgroundThreads(), 1);  // never below one
  SetBlasThreads(0);
}

}  // namespace
}  // namespace sae
