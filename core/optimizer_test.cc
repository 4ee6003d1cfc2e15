#include "core/optimizer.h"

#include <cmath>

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
  (*opt)->Step(Grad(2.0f, -3.0f, 0.5f, -0.01f), 0.0f, &p);
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
  (*opt)->Step(Grad(1, 1, 1, 1), 0.0f, &p);
  (*opt)->Step(Grad(3, 3, 3, 3), 0.0f, &p);
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
  (*opt)->Step(Grad(0, 0, 0, 0), 0.5f, &p);
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
  (*opt)->Step(Grad(1, 1, 1, 1), 0.0f, &p);  // u = 1, w = -0.1
  (*opt)->Step(Grad(1, 1, 1, 1), 0.0f, &p);  // u = 1.5, w = -0.25
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
    (*opt)->Step(Grad(0, 0, 0, 0), 0.0f, &p);
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
  (*opt)->Step(Grad(1, 1, 0, 0), 0.0f, &p);
  Gradients stale = Grad(100, 100, 0, 0);  // stale rows must not be read
  stale.unit_touched[0] = 0;
  (*opt)->Step(stale, 0.0f, &p);
  EXPECT_NEAR(p.flat()[0], -1.5, 1e-6);
  EXPECT_NEAR(p.flat()[1], -1.5, 1e-6);
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
