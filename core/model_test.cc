#include "core/model.h"

#include <thread>
#include <vector>

#include "core/testing/random_matrix.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

using ::sae::testing::RandomNormal;

std::shared_ptr<const Model> MakeModel(ModelConfig c, uint64_t seed) {
  ModelWeights w = InitialWeights(c, seed);
  w.b_enc = RandomNormal(c.d_hidden, 1, seed + 1).col(0) * 0.1f;
  w.b_dec = RandomNormal(c.d_in, 1, seed + 2).col(0) * 0.1f;
  absl::StatusOr<std::shared_ptr<const Model>> m = Model::Create(c, std::move(w));
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

// Reference forward pass written directly from the formula.
RowMatrix ReferenceCodes(const Model& m, const RowMatrix& x) {
  const ModelWeights& w = m.weights();
  RowMatrix centered = (x * m.config().input_scale).rowwise() - w.b_dec.transpose();
  RowMatrix pre = (centered * w.w_enc).rowwise() + w.b_enc.transpose();
  return pre.cwiseMax(0.0f);
}

TEST(ModelTest, ReluEncodeAndReconstructMatchTheFormula) {
  ModelConfig c = DefaultConfig(12, 40, Activation::kRelu);
  c.input_scale = 0.5f;
  auto model = MakeModel(c, 1);
  const RowMatrix x = RandomNormal(300, 12, 3);  // more than one internal chunk
  absl::StatusOr<RowMatrix> codes = model->Encode(x);
  ASSERT_TRUE(codes.ok());
  const RowMatrix want = ReferenceCodes(*model, x);
  EXPECT_LT((*codes - want).cwiseAbs().maxCoeff(), 1e-5);
  absl::StatusOr<RowMatrix> out = model->Reconstruct(x);
  ASSERT_TRUE(out.ok());
  const RowMatrix want_out =
      ((want * model->weights().w_dec).rowwise() + model->weights().b_dec.transpose()) / 0.5f;
  EXPECT_LT((*out - want_out).cwiseAbs().maxCoeff(), 1e-4);
  absl::StatusOr<RowMatrix> decoded = model->Decode(*codes);
  EXPECT_LT((*decoded - *out).cwiseAbs().maxCoeff(), 1e-5);
}

TEST(ModelTest, TopKSparseReconstructEqualsDenseDecode) {
  ModelConfig c = DefaultConfig(16, 64, Activation::kTopK);
  c.k = 5;
  auto model = MakeModel(c, 2);
  const RowMatrix x = RandomNormal(40, 16, 4);
  absl::StatusOr<RowMatrix> codes = model->Encode(x);
  ASSERT_TRUE(codes.ok());
  for (Eigen::Index r = 0; r < codes->rows(); ++r) {
    EXPECT_LE((codes->row(r).array() > 0).count(), 5);
  }
  absl::StatusOr<RowMatrix> dense = model->Decode(*codes);
  absl::StatusOr<RowMatrix> sparse = model->Reconstruct(x);
  ASSERT_TRUE(dense.ok() && sparse.ok());
  EXPECT_LT((*dense - *sparse).cwiseAbs().maxCoeff(), 1e-5);
}

TEST(ModelTest, EncodeSparseListsNonzerosAndHonoursMaxPerRow) {
  ModelConfig c = DefaultConfig(10, 30, Activation::kRelu);
  auto model = MakeModel(c, 3);
  const RowMatrix x = RandomNormal(7, 10, 5);
  const RowMatrix dense = *model->Encode(x);
  absl::StatusOr<SparseCodes> all = model->EncodeSparse(x);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->row_offsets.size(), 8u);
  for (int r = 0; r < 7; ++r) {
    EXPECT_EQ(all->row_offsets[r + 1] - all->row_offsets[r],
              (dense.row(r).array() > 0).count());
    for (int64_t i = all->row_offsets[r]; i < all->row_offsets[r + 1]; ++i) {
      EXPECT_EQ(all->values[i], dense(r, all->indices[i]));
    }
  }
  absl::StatusOr<SparseCodes> top2 = model->EncodeSparse(x, 2);
  ASSERT_TRUE(top2.ok());
  for (int r = 0; r < 7; ++r) {
    EXPECT_LE(top2->row_offsets[r + 1] - top2->row_offsets[r], 2);
  }
  EXPECT_EQ(model->EncodeSparse(x, -1).status().code(), absl::StatusCode::kInvalidArgument);
  // A bound on the entries in all: exactly enough passes, one fewer fails.
  const int64_t entries = static_cast<int64_t>(all->indices.size());
  EXPECT_TRUE(model->EncodeSparse(x, 0, entries).ok());
  absl::StatusOr<SparseCodes> over = model->EncodeSparse(x, 0, entries - 1);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.status().message().find("of 7 rows"), std::string::npos) << over.status();
}

TEST(ModelTest, DenoiseClipsWhenAsked) {
  ModelConfig c = DefaultConfig(8, 16, Activation::kRelu);
  c.clip_output = true;
  auto model = MakeModel(c, 4);
  const RowMatrix x = RandomNormal(20, 8, 6) * 5;
  absl::StatusOr<RowMatrix> out = model->Denoise(x);
  ASSERT_TRUE(out.ok());
  EXPECT_GE(out->minCoeff(), 0.0f);
  EXPECT_LE(out->maxCoeff(), 1.0f);
}

TEST(ModelTest, WrongWidthIsInvalidArgument) {
  auto model = MakeModel(DefaultConfig(8, 16, Activation::kRelu), 5);
  const RowMatrix x = RandomNormal(2, 9, 1);
  EXPECT_EQ(model->Encode(x).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Reconstruct(x).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Decode(x).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Denoise(x).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelTest, CreateRejectsBadShapesValuesAndConfigs) {
  ModelConfig c = DefaultConfig(4, 6, Activation::kRelu);
  ModelWeights w = InitialWeights(c, 1);
  w.w_dec.resize(5, 4);
  absl::StatusOr<std::shared_ptr<const Model>> m = Model::Create(c, w);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("W_dec"), absl::string_view::npos);

  w = InitialWeights(c, 1);
  w.b_enc[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(Model::Create(c, w).status().code(), absl::StatusCode::kInvalidArgument);

  ModelConfig bad = DefaultConfig(4, 6, Activation::kTopK);
  bad.k = 7;
  absl::Status s = bad.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("config.k"), absl::string_view::npos);
  bad = DefaultConfig(0, 6, Activation::kRelu);
  EXPECT_NE(bad.Validate().message().find("config.d_in"), absl::string_view::npos);
  bad = DefaultConfig(4, 6, Activation::kRelu);
  bad.kl_beta = 1;
  EXPECT_NE(bad.Validate().message().find("config.kl_beta"), absl::string_view::npos);
  bad = DefaultConfig(4, 6, Activation::kSigmoid);
  bad.kl_rho = 1.5f;
  EXPECT_NE(bad.Validate().message().find("config.kl_rho"), absl::string_view::npos);
  bad = DefaultConfig(4, 6, Activation::kRelu);
  bad.input_scale = 0;
  EXPECT_NE(bad.Validate().message().find("config.input_scale"), absl::string_view::npos);
  bad = DefaultConfig(1 << 16, 1 << 16, Activation::kRelu);
  EXPECT_EQ(bad.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseActivation("gelu").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseActivation("TopK"), Activation::kTopK);
}

TEST(ModelTest, InitialWeightsAreTiedAndUnitNorm) {
  ModelConfig c = DefaultConfig(9, 20, Activation::kRelu);
  ModelWeights w = InitialWeights(c, 7);
  EXPECT_EQ(RowMatrix(w.w_enc.transpose()), w.w_dec);
  for (Eigen::Index j = 0; j < 20; ++j) EXPECT_NEAR(w.w_dec.row(j).norm(), 1.0f, 1e-5);
  ModelWeights again = InitialWeights(c, 7);
  EXPECT_EQ(again.w_enc, w.w_enc);
  EXPECT_NE(InitialWeights(c, 8).w_enc, w.w_enc);
}

TEST(ModelTest, ConcurrentCallsAgreeWithASerialCall) {
  ModelConfig c = DefaultConfig(64, 256, Activation::kTopK);
  c.k = 8;
  auto model = MakeModel(c, 8);
  const RowMatrix x = RandomNormal(100, 64, 9);
  const RowMatrix want = *model->Reconstruct(x);
  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      bool all = true;
      for (int i = 0; i < 20; ++i) all = all && (*model->Reconstruct(x) == want);
      ok[t] = all;
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) EXPECT_TRUE(ok[t]) << "thread " << t;
}

}  // namespace
}  // namespace sae
