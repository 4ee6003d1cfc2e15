#include "core/store_watcher.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/file_util.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

TEST(StoreWatcherTest, ReportsChangesMadeByAnotherProcessWithinSeconds) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/watch_", ::getpid());
  ASSERT_TRUE(RemoveTree(root).ok());
  auto store = ModelStore::Open(root);
  ASSERT_TRUE(store.ok());
  absl::Mutex mu;
  std::vector<StoreChange> seen;
  StoreWatcher watcher(store->get(), std::chrono::milliseconds(200),
                       [&](const std::vector<StoreChange>& changes) {
                         absl::MutexLock lock(&mu);
                         seen.insert(seen.end(), changes.begin(), changes.end());
                       });
  // Another process publishes two versions.
  const std::string cmd = absl::StrCat(SAE_STORE_PUBLISHER, " ", root, " remote 2 > /dev/null");
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto wait_for = [&](size_t n) {
    absl::MutexLock lock(&mu);
    const auto enough = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return seen.size() >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(5));
  };
  ASSERT_TRUE(wait_for(2));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(seen[0].kind, StoreChange::Kind::kVersionAdded);
    EXPECT_EQ(seen[0].model, "remote");
    EXPECT_EQ(seen[1].version, 2);
  }
  // A label move made here is reported too.
  ASSERT_TRUE((*store)->SetLabel("remote", "stable", 1).ok());
  ASSERT_TRUE(wait_for(3));
  ASSERT_TRUE((*store)->SetLabel("remote", "stable", 2).ok());
  ASSERT_TRUE(wait_for(4));
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(seen[3].kind, StoreChange::Kind::kLabelSet);
    EXPECT_EQ(seen[3].label, "stable");
    EXPECT_EQ(seen[3].version, 2);
  }
  RemoveTree(root).IgnoreError();
}

}  // namespace
}  // namespace sae
