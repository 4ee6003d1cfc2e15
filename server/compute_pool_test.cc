#include "server/compute_pool.h"

#include <atomic>
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

}  // namespace
}  // namespace sae::server
