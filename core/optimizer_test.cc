#include "core/optimizer.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "core/model.h"
#include "core/objective.h"
#include "core/parallel.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

// d_in = 1, d_hidden = 1: flat = [w_enc_t, w_dec, b_enc, b_dec].
Gradients Grad(float a, float b, float c, float d) {
  Gradients g(1, 1);
  g.values.flat() << a, b, c, d;
  return g;
}

TEST(OptimizerTest, AdamFirstStepIsLearningRateTimesSign) {
  ParameterSet p(1, 1);
  p.flat() << 1, 1, 1, 1;
  OptimizerOptions o;
  o.learning_rate = 0.1f;
  auto opt = Optimizer::Create(o, p);
  ASSERT_TRUE(opt.ok());
  (*opt)->Step(Grad(2.0f, -3.0f, 0.5f, -0.01f), 0.0f, false, &p);
  // With bias correction m_hat = g and v_hat = g^2, so the step is lr*sign(g).
  EXPECT_NEAR(p.flat()[0], 0.9, 1e-5);
  EXPECT_NEAR(p.flat()[1], 1.1, 1e-5);
  EXPECT_NEAR(p.flat()[2], 0.9, 1e-5);
  EXPECT_NEAR(p.flat()[3], 1.1, 1e-4);
}

TEST(OptimizerTest, AdamSecondStepMatchesPyTorchFormula) {
  ParameterSet p(1, 1);
  p.flat().setZero();
  OptimizerOptions o;
  o.learning_rate = 0.01f;
  auto opt = Optimizer::Create(o, p);
  ASSERT_TRUE(opt.ok());
  (*opt)->Step(Grad(1, 1, 1, 1), 0.0f, false, &p);
  (*opt)->Step(Grad(3, 3, 3, 3), 0.0f, false, &p);
  // Independent computation of torch.optim.Adam's two steps for g = 1, 3.
  const double b1 = 0.9, b2 = 0.999, lr = 0.01, eps = 1e-8;
  double w = 0, m = 0, v = 0;
  for (int t = 1; t <= 2; ++t) {
    const double g = t == 1 ? 1 : 3;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double mh = m / (1 - std::pow(b1, t));
    const double vh = v / (1 - std::pow(b2, t));
    w -= lr * mh / (std::sqrt(vh) + eps);
  }
  EXPECT_NEAR(p.flat()[0], w, 1e-6);
}

TEST(OptimizerTest, WeightDecayIsDecoupledAndSkipsBiases) {
  ParameterSet p(1, 1);
  p.flat() << 2, 2, 2, 2;
  OptimizerOptions o;
  o.kind = OptimizerKind::kSgd;
  o.learning_rate = 0.1f;
  o.momentum = 0.0f;
  auto opt = Optimizer::Create(o, p);
  ASSERT_TRUE(opt.ok());
  (*opt)->Step(Grad(0, 0, 0, 0), 0.5f, false, &p);
  EXPECT_NEAR(p.flat()[0], 2 * (1 - 0.1 * 0.5), 1e-6);
  EXPECT_NEAR(p.flat()[1], 2 * (1 - 0.1 * 0.5), 1e-6);
  EXPECT_EQ(p.flat()[2], 2.0f);
  EXPECT_EQ(p.flat()[3], 2.0f);
}

TEST(OptimizerTest, SgdMomentumAccumulates) {
  ParameterSet p(1, 1);
  p.flat().setZero();
  OptimizerOptions o;
  o.kind = OptimizerKind::kSgd;
  o.learning_rate = 0.1f;
  o.momentum = 0.5f;
  auto opt = Optimizer::Create(o, p);
  ASSERT_TRUE(opt.ok());
  (*opt)->Step(Grad(1, 1, 1, 1), 0.0f, false, &p);  // u = 1, w = -0.1
  (*opt)->Step(Grad(1, 1, 1, 1), 0.0f, false, &p);  // u = 1.5, w = -0.25
  EXPECT_NEAR(p.flat()[2], -0.25, 1e-6);
}

TEST(OptimizerTest, WarmupRampsTheLearningRate) {
  ParameterSet p(1, 1);
  OptimizerOptions o;
  o.learning_rate = 1.0f;
  o.warmup_steps = 4;
  auto opt = Optimizer::Create(o, p);
  ASSERT_TRUE(opt.ok());
  for (float want : {0.25f, 0.5f, 0.75f, 1.0f, 1.0f}) {
    EXPECT_FLOAT_EQ((*opt)->CurrentLearningRate(), want);
    (*opt)->Step(Grad(0, 0, 0, 0), 0.0f, false, &p);
  }
}

TEST(OptimizerTest, UntouchedRowsGetZeroGradientButMomentumStillMoves) {
  ParameterSet p(1, 1);
  p.flat().setZero();
  OptimizerOptions o;
  o.kind = OptimizerKind::kSgd;
  o.learning_rate = 1.0f;
  o.momentum = 0.5f;
  auto opt = Optimizer::Create(o, p);
  ASSERT_TRUE(opt.ok());
  (*opt)->Step(Grad(1, 1, 0, 0), 0.0f, false, &p);
  Gradients stale = Grad(100, 100, 0, 0);  // stale rows must not be read
  stale.unit_touched[0] = 0;
  (*opt)->Step(stale, 0.0f, false, &p);
  EXPECT_NEAR(p.flat()[0], -1.5, 1e-6);
  EXPECT_NEAR(p.flat()[1], -1.5, 1e-6);
}

TEST(OptimizerTest, UnitNormDecoderStaysOnTheSphere) {
  // d_in = 2, d_hidden = 1: flat = [w_enc_t(2), w_dec(2), b_enc, b_dec(2)].
  ParameterSet p(2, 1);
  p.flat() << 0.3f, 0.4f, 0.6f, 0.8f, 0, 0, 0;
  OptimizerOptions o;
  o.kind = OptimizerKind::kSgd;
  o.learning_rate = 0.1f;
  o.momentum = 0.0f;
  auto opt = Optimizer::Create(o, p);
  ASSERT_TRUE(opt.ok());
  // A gradient along the decoder row is projected away entirely.
  Gradients along(2, 1);
  along.values.flat() << 0, 0, 0.6f, 0.8f, 0, 0, 0;
  (*opt)->Step(along, 0.0f, true, &p);
  EXPECT_NEAR(p.w_dec()(0, 0), 0.6f, 1e-6);
  EXPECT_NEAR(p.w_dec()(0, 1), 0.8f, 1e-6);
  // An orthogonal one moves the row, which is then renormalised.
  Gradients across(2, 1);
  across.values.flat() << 0, 0, -0.8f, 0.6f, 0, 0, 0;
  (*opt)->Step(across, 0.0f, true, &p);
  EXPECT_NEAR(p.w_dec().row(0).norm(), 1.0f, 1e-6);
  EXPECT_GT(p.w_dec()(0, 0), 0.6f);
  // The encoder row is not constrained.
  EXPECT_NEAR(p.w_enc_t().row(0).norm(), 0.5f, 1e-6);
}

// Steps a model twice from the same start: once with ComputeLoss and Step,
// once with ComputeLossWithUnitSink handing each unit's rows to
// UpdateWeightRow as ComputeLossAndStep (the trainer's step) does. d_in = 37 puts the rows at every
// alignment; 256 units are enough for the backward to split over threads.
void ExpectRowByRowStepsEqualStep(Activation activation, OptimizerKind kind) {
  ModelConfig c = DefaultConfig(37, 256, activation);
  c.k = 5;
  c.l1_coefficient = 0.01f;
  c.weight_decay = 0.01f;
  c.unit_norm_decoder = true;
  OptimizerOptions o;
  o.kind = kind;
  o.warmup_steps = 2;
  ParameterSet whole = ParameterSet::FromWeights(InitialWeights(c, 3));
  ParameterSet by_row = whole;
  auto step_whole = Optimizer::Create(o, whole);
  auto step_by_row = Optimizer::Create(o, by_row);
  ASSERT_TRUE(step_whole.ok() && step_by_row.ok());
  ObjectiveWorkspace ws_whole, ws_by_row;
  Gradients g_whole(c.d_in, c.d_hidden), g_by_row(c.d_in, c.d_hidden);
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal;
  for (int step = 0; step < 4; ++step) {
    RowMatrix x(20, c.d_in);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
    const LossTerms t = ComputeLoss(c, whole, x, x, &ws_whole, &g_whole);
    (*step_whole)->Step(g_whole, c.weight_decay, c.unit_norm_decoder, &whole);

    Optimizer& opt = **step_by_row;
    opt.BeginStep(c.weight_decay, c.unit_norm_decoder);
    std::vector<std::atomic<int>> calls(static_cast<size_t>(c.d_hidden));
    std::mutex threads_mu;
    std::set<std::thread::id> threads;
    const LossTerms u = ComputeLossWithUnitSink(
        c, by_row, x, x, &ws_by_row, &g_by_row,
        [&](int64_t unit, const float* d_enc, const float* d_dec) {
          ++calls[unit];
          {
            std::lock_guard<std::mutex> l(threads_mu);
            threads.insert(std::this_thread::get_id());
          }
          opt.UpdateWeightRow(Optimizer::WeightRow::kEncoder, unit, d_enc, &by_row);
          opt.UpdateWeightRow(Optimizer::WeightRow::kDecoder, unit, d_dec, &by_row);
        });
    opt.UpdateBiases(g_by_row, &by_row);
    EXPECT_EQ(t.total, u.total) << "step " << step;
    if (Parallelism() > 1) {
      EXPECT_GT(threads.size(), 1u) << "the units ran on one thread";
    }
    for (int64_t j = 0; j < c.d_hidden; ++j) {
      ASSERT_EQ(calls[j].load(), 1) << "unit " << j << ", step " << step;
    }
    for (Eigen::Index i = 0; i < whole.flat().size(); ++i) {
      ASSERT_EQ(std::memcmp(&whole.flat()[i], &by_row.flat()[i], sizeof(float)), 0)
          << "parameter " << i << " after step " << step << ": " << whole.flat()[i]
          << " vs " << by_row.flat()[i];
    }
  }
}

TEST(OptimizerTest, RowByRowTopKStepsAreBitwiseStep) {
  ExpectRowByRowStepsEqualStep(Activation::kTopK, OptimizerKind::kAdam);
  ExpectRowByRowStepsEqualStep(Activation::kTopK, OptimizerKind::kSgd);
}

TEST(OptimizerTest, RowByRowDenseStepsAreBitwiseStep) {
  ExpectRowByRowStepsEqualStep(Activation::kRelu, OptimizerKind::kAdam);
}

TEST(OptimizerTest, RejectsBadOptions) {
  ParameterSet p(1, 1);
  OptimizerOptions o;
  o.learning_rate = -1;
  EXPECT_EQ(Optimizer::Create(o, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = {};
  o.beta2 = 1.0f;
  EXPECT_EQ(Optimizer::Create(o, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseOptimizer("rmsprop").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseOptimizer("SGD"), OptimizerKind::kSgd);
}

}  // namespace
}  // namespace sae
