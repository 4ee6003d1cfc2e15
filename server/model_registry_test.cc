#include "server/model_registry.h"

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

}  // namespace
}  // namespace sae::server
