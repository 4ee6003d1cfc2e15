#include "server/model_registry.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/file_util.h"
#include "core/testing/test_dir.h"
#include "gtest/gtest.h"

namespace sae::server {
namespace {

class ModelRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = sae::testing::FreshTestDir("registry");
    absl::StatusOr<std::unique_ptr<ModelStore>> store = ModelStore::Open(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override { RemoveTree(root_).IgnoreError(); }

  // Publishes a small model whose b_dec[0] is `tag`, as the next version.
  int64_t Publish(float tag) {
    ModelConfig config = DefaultConfig(4, 8, Activation::kRelu);
    ModelWeights weights = InitialWeights(config, 1);
    weights.b_dec[0] = tag;
    auto model = Model::Create(config, weights);
    EXPECT_TRUE(model.ok()) << model.status();
    absl::StatusOr<int64_t> v = store_->Publish("m", **model, {});
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : 0;
  }

  std::string root_;
  std::unique_ptr<ModelStore> store_;
};

// However many versions are asked for by number, the registry holds at most
// kMaxOtherVersions of them besides the latest; one that left loads again,
// and a caller holding one keeps it usable.
TEST_F(ModelRegistryTest, HoldsABoundedNumberOfOldVersions) {
  constexpr int kVersions = 12;
  for (int v = 1; v <= kVersions; ++v) ASSERT_EQ(Publish(static_cast<float>(v)), v);
  int64_t held = -1;  // as on_held last told it
  ModelRegistry registry(store_.get(), std::chrono::milliseconds(0), nullptr,
                         [&held](int64_t n) { held = n; });
  absl::StatusOr<ServedModel> latest = registry.Get(ModelRef::Latest("m"));
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->version, kVersions);
  absl::StatusOr<ServedModel> first = registry.Get(ModelRef::Version("m", 1));
  ASSERT_TRUE(first.ok()) << first.status();
  for (int v = 2; v < kVersions; ++v) {
    absl::StatusOr<ServedModel> served = registry.Get(ModelRef::Version("m", v));
    ASSERT_TRUE(served.ok()) << served.status();
    EXPECT_EQ(served->model->weights().b_dec[0], static_cast<float>(v));
    EXPECT_LE(registry.cached_versions(), 1 + ModelRegistry::kMaxOtherVersions);
    EXPECT_EQ(held, registry.cached_versions());
  }
  // Version 1 left the registry, but the caller's copy is whole.
  EXPECT_EQ(first->model->weights().b_dec[0], 1.0f);
  const int64_t loads = registry.loads();
  absl::StatusOr<ServedModel> again = registry.Get(ModelRef::Version("m", 1));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->model->weights().b_dec[0], 1.0f);
  EXPECT_EQ(registry.loads(), loads + 1);
  // The latest version stayed: no load.
  ASSERT_TRUE(registry.Get(ModelRef::Latest("m")).ok());
  EXPECT_EQ(registry.loads(), loads + 1);
}

// Runs `body` on a thread whose first load of version `version` holds,
// once its files are read, until Release (or the destructor, which also
// joins the thread, so that a failed assertion cannot leave it waiting).
class HeldLoad {
 public:
  HeldLoad(ModelStore* store, int64_t version) : store_(store) {
    store_->set_after_read_for_testing([this, version](const std::string&, int64_t v) {
      if (v != version || held_.exchange(true)) return;
      entered_.Notify();
      release_.WaitForNotification();
    });
  }
  ~HeldLoad() {
    Release();
    if (thread_.joinable()) thread_.join();
    store_->set_after_read_for_testing(nullptr);
  }
  void Start(std::function<void()> body) { thread_ = std::thread(std::move(body)); }
  bool WaitUntilHeld() { return entered_.WaitForNotificationWithTimeout(absl::Seconds(30)); }
  void Release() {
    if (!release_.HasBeenNotified()) release_.Notify();
  }
  void Join() {
    Release();
    thread_.join();
  }

 private:
  ModelStore* const store_;
  std::atomic<bool> held_{false};
  absl::Notification entered_, release_;
  std::thread thread_;
};

// A request whose load is slow must not record what it resolved once the
// store has moved on: a label moved meanwhile is not moved back, and the
// request itself follows the move.
TEST_F(ModelRegistryTest, ASlowLoadDoesNotUndoALabelMove) {
  ASSERT_EQ(Publish(1.0f), 1);
  ASSERT_EQ(Publish(2.0f), 2);
  ASSERT_TRUE(store_->SetLabel("m", "stable", 1).ok());
  // Polls only when told (Refresh), so that the test orders every change.
  ModelRegistry registry(store_.get(), std::chrono::hours(1));
  ASSERT_TRUE(registry.Get(ModelRef::Latest("m")).ok());
  absl::StatusOr<ServedModel> slow = absl::UnknownError("not run");
  HeldLoad held(store_.get(), 1);
  held.Start([&] { slow = registry.Get(ModelRef::Label("m", "stable")); });
  ASSERT_TRUE(held.WaitUntilHeld());
  ASSERT_TRUE(store_->SetLabel("m", "stable", 2).ok());
  registry.Refresh();
  held.Join();
  ASSERT_TRUE(slow.ok()) << slow.status();
  EXPECT_EQ(slow->version, 2) << "the slow request did not follow the label's move";
  absl::StatusOr<ServedModel> now = registry.Get(ModelRef::Label("m", "stable"));
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(now->version, 2) << "the label went back to the target the slow load resolved";
}

// Nor is a version deleted after its files were read, while the load ends,
// cached again (and then served without a look at the store).
TEST_F(ModelRegistryTest, ASlowLoadDoesNotBringBackADeletedVersion) {
  ASSERT_EQ(Publish(1.0f), 1);
  ASSERT_EQ(Publish(2.0f), 2);
  ModelRegistry registry(store_.get(), std::chrono::hours(1));
  absl::StatusOr<ServedModel> slow = absl::UnknownError("not run");
  HeldLoad held(store_.get(), 2);
  held.Start([&] { slow = registry.Get(ModelRef::Version("m", 2)); });
  ASSERT_TRUE(held.WaitUntilHeld());
  ASSERT_TRUE(store_->DeleteVersion("m", 2, /*force=*/true).ok());
  registry.Refresh();
  held.Join();
  EXPECT_EQ(slow.status().code(), absl::StatusCode::kNotFound) << slow.status();
  EXPECT_EQ(registry.cached_versions(), 0) << "the deleted version was cached";
  EXPECT_EQ(registry.Get(ModelRef::Version("m", 2)).status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<ServedModel> latest = registry.Get(ModelRef::Latest("m"));
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->version, 1);
  EXPECT_EQ(registry.reload_failures(), 0);
}

// A corrupt latest version is refused and the last good one serves; when
// that one is deleted, the newest older version that loads takes over
// (not DATA_LOSS while a good version exists).
TEST_F(ModelRegistryTest, ACorruptLatestFallsBackPastADeletedGoodVersion) {
  ASSERT_EQ(Publish(1.0f), 1);
  ASSERT_EQ(Publish(2.0f), 2);
  ModelRegistry registry(store_.get(), std::chrono::hours(1));
  ASSERT_EQ(registry.Get(ModelRef::Latest("m"))->version, 2);
  ASSERT_EQ(Publish(3.0f), 3);
  {
    std::fstream f(root_ + "/m/3/sae_weights.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x7f');
  }
  registry.Refresh();  // 3 is refused
  ASSERT_EQ(registry.Get(ModelRef::Latest("m"))->version, 2);
  ASSERT_TRUE(store_->DeleteVersion("m", 2, /*force=*/false).ok());
  registry.Refresh();
  absl::StatusOr<ServedModel> latest = registry.Get(ModelRef::Latest("m"));
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->version, 1);
  EXPECT_EQ(latest->model->weights().b_dec[0], 1.0f);
  EXPECT_EQ(registry.Get(ModelRef::Version("m", 3)).status().code(),
            absl::StatusCode::kDataLoss);
}

// A poll that cannot read a model's labels (here its store.json is, for a
// moment, a folder: EISDIR) changes nothing: the labels are not dropped
// (and, the model's versions being read, nothing is loaded again).
TEST_F(ModelRegistryTest, AFailedReadOfTheStoreIsNotARemoval) {
  ASSERT_EQ(Publish(1.0f), 1);
  ASSERT_TRUE(store_->SetLabel("m", "stable", 1).ok());
  ModelRegistry registry(store_.get(), std::chrono::hours(1));
  ASSERT_TRUE(registry.Get(ModelRef::Label("m", "stable")).ok());
  ASSERT_TRUE(registry.Get(ModelRef::Latest("m")).ok());
  const int64_t loads = registry.loads();
  const std::string state = root_ + "/m/store.json";
  ASSERT_EQ(::rename(state.c_str(), (state + ".aside").c_str()), 0);
  ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
  registry.Refresh();
  absl::StatusOr<ServedModel> labelled = registry.Get(ModelRef::Label("m", "stable"));
  EXPECT_TRUE(labelled.ok()) << "the label was dropped: " << labelled.status();
  ASSERT_EQ(::rmdir(state.c_str()), 0);
  ASSERT_EQ(::rename((state + ".aside").c_str(), state.c_str()), 0);
  registry.Refresh();
  EXPECT_TRUE(registry.Get(ModelRef::Label("m", "stable")).ok());
  EXPECT_EQ(registry.loads(), loads);
}

}  // namespace
}  // namespace sae::server
