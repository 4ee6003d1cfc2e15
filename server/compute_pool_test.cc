#include "server/compute_pool.h"

#include <atomic>
#include <string>
#include <vector>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace sae::server {
namespace {

// Closures that block do not hold up the next one while threads remain.
TEST(ComputePoolTest, ABlockedClosureDoesNotHoldUpTheNext) {
  ComputePool pool(3);
  absl::Notification release, third_ran;
  std::atomic<int> blocked{0};
  for (int i = 0; i < 2; ++i) {
    pool.Run([&] {
      ++blocked;
      release.WaitForNotification();
    });
  }
  pool.Run([&] { third_ran.Notify(); });
  EXPECT_TRUE(third_ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  release.Notify();
}

// Beyond max_threads closures queue, and every one runs (the destructor
// runs what is queued).
TEST(ComputePoolTest, BeyondItsThreadsClosuresQueueAndAllRun) {
  std::atomic<int> ran{0}, running{0}, most{0};
  {
    ComputePool pool(2);
    for (int i = 0; i < 50; ++i) {
      pool.Run([&] {
        const int now = ++running;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        --running;
        ++ran;
      });
    }
  }
  EXPECT_EQ(ran, 50);
  EXPECT_LE(most, 2);
}

// RunNext goes ahead of the closures already waiting for a thread.
TEST(ComputePoolTest, RunNextGoesAheadOfWaitingClosures) {
  std::vector<char> order;
  {
    ComputePool pool(1);
    absl::Notification release, started;
    pool.Run([&] {
      started.Notify();
      release.WaitForNotification();
    });
    ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(10)));
    pool.Run([&] { order.push_back('a'); });
    pool.Run([&] { order.push_back('b'); });
    pool.RunNext([&] { order.push_back('n'); });
    release.Notify();
  }  // the one thread runs the rest in queue order, then joins
  EXPECT_EQ(std::string(order.begin(), order.end()), "nab");
}

// Closures waiting for a thread are bounded by the bytes they hold; the
// first one to wait is always admitted, and closures that need not wait
// (an idle or new thread takes them) never count.
TEST(ComputePoolTest, WaitingClosuresAreBoundedByTheirBytes) {
  std::atomic<int> ran_a{0}, ran_b{0}, ran_c{0};
  {
    ComputePool pool(1);
    absl::Notification release, started;
    ASSERT_TRUE(pool.TryRun(
        [&] {
          started.Notify();
          release.WaitForNotification();
        },
        1000, 150));  // a thread is started for it: it does not wait
    ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(10)));
    EXPECT_TRUE(pool.TryRun([&] { ++ran_a; }, 100, 150));   // the first to wait
    EXPECT_FALSE(pool.TryRun([&] { ++ran_b; }, 100, 150));  // 200 would wait
    EXPECT_TRUE(pool.TryRun([&] { ++ran_c; }, 40, 150));    // 140 waits
    release.Notify();
  }  // the destructor runs what was admitted
  EXPECT_EQ(ran_a, 1);
  EXPECT_EQ(ran_b, 0);
  EXPECT_EQ(ran_c, 1);
}

}  // namespace
}  // namespace sae::server
