#include "core/objective.h"

#include <cmath>
#include <random>

#include "core/model.h"
#include "core/parameters.h"
#include "core/parallel.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

RowMatrix RandomMatrix(int64_t rows, int64_t cols, uint64_t seed, float lo,
                       float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  RowMatrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = u(rng);
  return m;
}

ParameterSet RandomParams(const ModelConfig& config, uint64_t seed) {
  ParameterSet p = ParameterSet::FromWeights(InitialWeights(config, seed));
  std::mt19937_64 rng(seed + 7);
  std::uniform_real_distribution<float> u(-0.2f, 0.2f);
  // Non-trivial biases so that every gradient path is exercised.
  for (Eigen::Index i = 0; i < p.b_enc().size(); ++i) p.b_enc()[i] = u(rng);
  for (Eigen::Index i = 0; i < p.b_dec().size(); ++i) p.b_dec()[i] = u(rng);
  return p;
}

// Central finite differences of the loss against the analytic gradient, over
// every parameter of a small model. Loss is evaluated in float, so the
// tolerance allows float rounding divided by the step.
void CheckGradient(const ModelConfig& config, const RowMatrix& input,
                   const RowMatrix& target, uint64_t seed) {
  ParameterSet params = RandomParams(config, seed);
  ObjectiveWorkspace ws;
  Gradients grads(config.d_in, config.d_hidden);
  ComputeLoss(config, params, input, target, &ws, &grads);
  // Untouched rows are stale by contract: read them as zero.
  Vector analytic = grads.values.flat();
  const int64_t row = config.d_in;
  for (int64_t j = 0; j < config.d_hidden; ++j) {
    if (!grads.unit_touched[j]) {
      analytic.segment(j * row, row).setZero();
      analytic.segment((config.d_hidden + j) * row, row).setZero();
    }
  }
  const float h = 1e-3f;
  int checked = 0, mismatches = 0;
  double worst = 0;
  for (Eigen::Index i = 0; i < params.flat().size(); ++i) {
    const float saved = params.flat()[i];
    params.flat()[i] = saved + h;
    const double up = ComputeLoss(config, params, input, target, &ws, nullptr).total;
    params.flat()[i] = saved - h;
    const double down = ComputeLoss(config, params, input, target, &ws, nullptr).total;
    params.flat()[i] = saved;
    const double numeric = (up - down) / (2.0 * h);
    const double err = std::abs(numeric - analytic[i]);
    const double tol = 2e-3 + 2e-2 * std::abs(numeric);
    worst = std::max(worst, err);
    ++checked;
    if (err > tol) {
      ++mismatches;
      ADD_FAILURE() << "parameter " << i << ": analytic " << analytic[i]
                    << " numeric " << numeric;
      if (mismatches > 10) return;
    }
  }
  EXPECT_EQ(checked, params.flat().size());
  // The analytic gradient must not be trivially zero.
  EXPECT_GT(analytic.cwiseAbs().maxCoeff(), 1e-3);
}

TEST(ObjectiveTest, ReluL1GradientMatchesFiniteDifferences) {
  ModelConfig c = DefaultConfig(6, 10, Activation::kRelu);
  c.l1_coefficient = 0.3f;
  c.unit_norm_decoder = false;
  RowMatrix x = RandomMatrix(5, 6, 1, 0.0f, 1.0f);
  RowMatrix noisy = x + RandomMatrix(5, 6, 2, -0.1f, 0.1f);
  CheckGradient(c, noisy, x, 3);
}

TEST(ObjectiveTest, SigmoidKlGradientMatchesFiniteDifferences) {
  ModelConfig c = DefaultConfig(5, 8, Activation::kSigmoid);
  c.kl_rho = 0.1f;
  c.kl_beta = 0.5f;
  RowMatrix x = RandomMatrix(7, 5, 4, 0.0f, 1.0f);
  CheckGradient(c, x, x, 5);
}

TEST(ObjectiveTest, TopKGradientMatchesFiniteDifferences) {
  ModelConfig c = DefaultConfig(6, 12, Activation::kTopK);
  c.k = 3;
  c.l1_coefficient = 0.05f;
  RowMatrix x = RandomMatrix(4, 6, 6, -1.0f, 1.0f);
  CheckGradient(c, x, x, 7);
}

TEST(ObjectiveTest, TopKTouchesOnlySelectedUnits) {
  ModelConfig c = DefaultConfig(8, 64, Activation::kTopK);
  c.k = 2;
  RowMatrix x = RandomMatrix(3, 8, 8, -1.0f, 1.0f);
  ParameterSet p = RandomParams(c, 9);
  ObjectiveWorkspace ws;
  Gradients g(c.d_in, c.d_hidden);
  const LossTerms t = ComputeLoss(c, p, x, x, &ws, &g);
  int touched = 0;
  for (uint8_t u : g.unit_touched) touched += u;
  EXPECT_GT(touched, 0);
  EXPECT_LE(touched, 3 * 2);
  EXPECT_LE(t.mean_l0, 2.0);
}

// The training pass decodes unit by unit, split over rows; its reconstruction
// must be the one the model serves (which decodes row by row; a unit lost,
// doubled or given to the wrong row shows as an error of order the weights),
// and bitwise what a row-by-row pass over the same selection gives.
TEST(ObjectiveTest, TopKReconstructionMatchesTheModel) {
  ModelConfig c = DefaultConfig(48, 640, Activation::kTopK);
  c.k = 8;  // 640 columns form 40 blocks: the block-pruning selection runs
  const RowMatrix x = RandomMatrix(100, 48, 21, -1.0f, 1.0f);
  const ParameterSet p = RandomParams(c, 22);
  ObjectiveWorkspace ws;
  const LossTerms t = ComputeLoss(c, p, x, x, &ws, nullptr);
  auto model = Model::Create(c, p.ToWeights());
  ASSERT_TRUE(model.ok()) << model.status();
  auto served = (*model)->Reconstruct(x);
  ASSERT_TRUE(served.ok()) << served.status();
  // The workspace keeps the residual, reconstruction - target.
  double squared_error = 0;
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    for (Eigen::Index col = 0; col < x.cols(); ++col) {
      const double served_residual = (*served)(r, col) - x(r, col);
      ASSERT_NEAR(ws.output(r, col), served_residual, 1e-5)
          << "row " << r << " column " << col;
      squared_error += served_residual * served_residual;
    }
  }
  EXPECT_NEAR(t.squared_error_sum, squared_error, 1e-4 * squared_error);
  EXPECT_GT(t.mean_l0, 0.0);

  // Threads split the units, so a row's sum depends on the thread count
  // but not on timing: a second run is bitwise the same.
  ObjectiveWorkspace again;
  ComputeLoss(c, p, x, x, &again, nullptr);
  EXPECT_TRUE(again.output == ws.output);

  // On one thread, bitwise the row-by-row pass over the selected slots
  // (ascending units), from the same selection.
  {
    ScopedSerial serial;
    ComputeLoss(c, p, x, x, &ws, nullptr);
  }
  RowMatrix residual(x.rows(), x.cols());
  residual.rowwise() = p.b_dec().transpose();
  for (Eigen::Index b = 0; b < x.rows(); ++b) {
    auto out_row = residual.row(b);
    for (int64_t s = 0; s < c.k; ++s) {
      const float v = ws.topk_values[b * c.k + s];
      if (v > 0.0f) out_row += v * p.w_dec().row(ws.topk_indices[b * c.k + s]);
    }
    float* out = residual.row(b).data();
    for (Eigen::Index col = 0; col < x.cols(); ++col) out[col] -= x(b, col);
  }
  EXPECT_TRUE(residual == ws.output) << "max difference "
                                     << (residual - ws.output).cwiseAbs().maxCoeff();
}

// Where the CPU has AVX512_BF16, a TopK loss large enough for the bfloat16
// screen selects the units the full sgemm product selects (but where two
// tie within float rounding), and its loss and gradient differ from that
// one's by float rounding only.
TEST(ObjectiveTest, TopKThroughTheScreenSelectsWhatTheFullProductSelects) {
  ModelConfig c = DefaultConfig(128, 1024, Activation::kTopK);
  c.k = 16;
  if (!TopKScreen::Supported()) GTEST_SKIP() << "this CPU has no AVX512_BF16";
  ASSERT_TRUE(TopKScreen::Pays(64, c.d_in, c.d_hidden, c.k));
  const RowMatrix x = RandomMatrix(64, c.d_in, 31, -1.0f, 1.0f);
  const ParameterSet p = RandomParams(c, 32);
  ObjectiveWorkspace full, screened;
  full.use_topk_screen = false;
  Gradients g_full(c.d_in, c.d_hidden), g_screened(c.d_in, c.d_hidden);
  const LossTerms t_full = ComputeLoss(c, p, x, x, &full, &g_full);
  const LossTerms t_screened = ComputeLoss(c, p, x, x, &screened, &g_screened);
  EXPECT_TRUE(screened.topk_screened) << "the screen did not run";
  // The same units, but where two tie within float rounding (the screen's
  // values are summed in another order than sgemm's); full.pre holds
  // sgemm's pre-activations.
  int64_t near_ties = 0;
  for (int64_t b = 0; b < 64; ++b) {
    for (int64_t i = 0; i < c.k; ++i) {
      const int64_t e = b * c.k + i;
      if (screened.topk_indices[e] == full.topk_indices[e]) {
        ASSERT_NEAR(screened.topk_values[e], full.topk_values[e],
                    1e-5f * (1.0f + std::abs(full.topk_values[e])))
            << "entry " << e;
        continue;
      }
      const float kept = full.pre(b, screened.topk_indices[e]);
      const float dropped = full.pre(b, full.topk_indices[e]);
      EXPECT_NEAR(kept, dropped, 1e-5f * (1.0f + std::abs(dropped)))
          << "row " << b << ": units " << screened.topk_indices[e] << " and "
          << full.topk_indices[e] << " do not tie";
      ++near_ties;
    }
  }
  EXPECT_LE(near_ties, 4);
  EXPECT_NEAR(t_screened.total, t_full.total, 1e-5 * t_full.total);
  if (near_ties == 0) {  // otherwise the gradients differ in those units' rows
    EXPECT_EQ(g_screened.unit_touched, g_full.unit_touched);
    const Vector diff = g_screened.values.flat() - g_full.values.flat();
    EXPECT_LT(diff.cwiseAbs().maxCoeff(), 1e-4 * g_full.values.flat().cwiseAbs().maxCoeff());
  }
}

// A 2 -> 2 ReLU model small enough to compute by hand:
// W_enc = I, b_enc = 0, W_dec = 2I, b_dec = 0, x = [1, -1]:
// pre = [1, -1], f = [1, 0], x_hat = [2, 0], squared error = 1 + 1 = 2,
// L1 = 0.5 * 1. Loss = 2 + 0.5.
TEST(ObjectiveTest, HandComputedLossValue) {
  ModelConfig c = DefaultConfig(2, 2, Activation::kRelu);
  c.l1_coefficient = 0.5f;
  ModelWeights w;
  w.w_enc = RowMatrix::Identity(2, 2);
  w.w_dec = 2 * RowMatrix::Identity(2, 2);
  w.b_enc = Vector::Zero(2);
  w.b_dec = Vector::Zero(2);
  ParameterSet p = ParameterSet::FromWeights(w);
  RowMatrix x(1, 2);
  x << 1, -1;
  ObjectiveWorkspace ws;
  const LossTerms t = ComputeLoss(c, p, x, x, &ws, nullptr);
  EXPECT_DOUBLE_EQ(t.reconstruction, 2.0);
  EXPECT_DOUBLE_EQ(t.sparsity, 0.5);
  EXPECT_DOUBLE_EQ(t.total, 2.5);
  EXPECT_DOUBLE_EQ(t.mean_l0, 1.0);
}

// KL(rho || rho_hat) for a single sigmoid unit with pre-activation 0
// (rho_hat = 0.5) against rho = 0.1:
// 0.1 ln(0.1/0.5) + 0.9 ln(0.9/0.5) = 0.36806...
TEST(ObjectiveTest, HandComputedKlValue) {
  ModelConfig c = DefaultConfig(1, 1, Activation::kSigmoid);
  c.kl_rho = 0.1f;
  c.kl_beta = 1.0f;
  ModelWeights w;
  w.w_enc = RowMatrix::Zero(1, 1);
  w.w_dec = RowMatrix::Zero(1, 1);
  w.b_enc = Vector::Zero(1);
  w.b_dec = Vector::Zero(1);
  ParameterSet p = ParameterSet::FromWeights(w);
  RowMatrix x = RowMatrix::Zero(3, 1);
  ObjectiveWorkspace ws;
  const LossTerms t = ComputeLoss(c, p, x, x, &ws, nullptr);
  const double expected = 0.1 * std::log(0.1 / 0.5) + 0.9 * std::log(0.9 / 0.5);
  EXPECT_NEAR(t.sparsity, expected, 1e-6);
  EXPECT_NEAR(t.reconstruction, 0.0, 1e-12);
}

}  // namespace
}  // namespace sae
