#include "core/trainer.h"

#include <atomic>
#include <random>
#include <vector>

#include "core/topk_screen.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

RowMatrix Data(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0, 1);
  RowMatrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = u(rng);
  return m;
}

TrainerOptions SmallRun() {
  TrainerOptions o;
  o.batch_size = 32;
  o.epochs = 3;
  o.progress_every_steps = 5;
  return o;
}

TEST(TrainerTest, SameSeedGivesBitwiseIdenticalWeights) {
  const RowMatrix x = Data(500, 20, 1);
  ModelConfig c = DefaultConfig(20, 64, Activation::kTopK);
  c.k = 4;
  TrainerOptions o = SmallRun();
  o.corruption.kind = CorruptionKind::kGaussian;
  o.validation_fraction = 0.1;
  auto a = Train(c, o, x);
  auto b = Train(c, o, x);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->model->weights().w_enc, b->model->weights().w_enc);
  EXPECT_EQ(a->model->weights().w_dec, b->model->weights().w_dec);
  EXPECT_EQ(a->model->weights().b_dec, b->model->weights().b_dec);
  o.seed = 2;
  auto other = Train(c, o, x);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->model->weights().w_enc, a->model->weights().w_enc);
}

// TopK at a shape where the bfloat16 screen selects the units (on CPUs with
// AVX512_BF16): runs are still bitwise reproducible, and they train as runs
// through the full product do (the same selections, values within float
// rounding, so the two runs stay close).
TEST(TrainerTest, TopKThroughTheScreenIsReproducibleAndTrainsAsWithout) {
  const RowMatrix x = Data(1024, 64, 5);
  ModelConfig c = DefaultConfig(64, 512, Activation::kTopK);
  c.k = 8;
  TrainerOptions o = SmallRun();
  o.batch_size = 128;
  ASSERT_TRUE(TopKScreen::Pays(o.batch_size, c.d_in, c.d_hidden, c.k));
  auto a = Train(c, o, x);
  auto b = Train(c, o, x);
  ASSERT_TRUE(a.ok() && b.ok());
  if (TopKScreen::Supported()) {
    // Most steps (it backs off for a while when values bunch).
    EXPECT_GT(a->topk_screened_steps, a->steps / 2);
    EXPECT_GE(a->topk_screen_candidates_per_row, c.k);
  } else {
    EXPECT_EQ(a->topk_screened_steps, 0);
  }
  EXPECT_EQ(a->model->weights().w_enc, b->model->weights().w_enc);
  EXPECT_EQ(a->model->weights().w_dec, b->model->weights().w_dec);
  o.topk_screen = false;
  auto full = Train(c, o, x);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->topk_screened_steps, 0);
  EXPECT_NEAR(a->train_metrics.fvu, full->train_metrics.fvu, 0.01 * full->train_metrics.fvu);
  const double drift = (a->model->weights().w_enc - full->model->weights().w_enc).cwiseAbs().maxCoeff();
  EXPECT_LT(drift, 1e-2) << "runs through the screen and through the full product diverged";
}

TEST(TrainerTest, TrainingReducesTheLossAndReportsProgress) {
  const RowMatrix x = Data(640, 16, 2);
  ModelConfig c = DefaultConfig(16, 48, Activation::kRelu);
  c.l1_coefficient = 0.01f;
  TrainerOptions o = SmallRun();
  o.epochs = 10;
  std::vector<TrainingProgress> reports;
  TrainingHooks hooks;
  hooks.on_progress = [&](const TrainingProgress& p) { reports.push_back(p); };
  auto r = Train(c, o, x, hooks);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps, 200);
  ASSERT_EQ(reports.size(), 40u);
  EXPECT_EQ(reports.back().step, 200);
  EXPECT_EQ(reports.back().total_steps, 200);
  EXPECT_EQ(reports.back().epoch, 9);
  EXPECT_EQ(reports.back().rows_seen, 6400);
  EXPECT_LT(reports.back().loss, reports.front().loss);
  EXPECT_LT(reports.back().fvu, 0.5);
  EXPECT_GT(reports.back().rows_per_s, 0);
  EXPECT_DOUBLE_EQ(reports.back().eta_s, 0);
  EXPECT_LT(r->train_metrics.fvu, 0.5);
}

TEST(TrainerTest, MaxStepsAndValidationSplit) {
  const RowMatrix x = Data(100, 8, 3);
  ModelConfig c = DefaultConfig(8, 16, Activation::kRelu);
  TrainerOptions o = SmallRun();
  o.max_steps = 7;
  o.validation_fraction = 0.2;
  auto r = Train(c, o, x);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps, 7);
  EXPECT_EQ(r->train_rows, 80);
  EXPECT_EQ(r->validation_rows, 20);
  ASSERT_TRUE(r->validation_metrics.has_value());
  EXPECT_EQ(r->validation_metrics->rows, 20);
}

TEST(TrainerTest, CancellationStopsTheRun) {
  const RowMatrix x = Data(1000, 8, 4);
  ModelConfig c = DefaultConfig(8, 16, Activation::kRelu);
  TrainerOptions o = SmallRun();
  o.epochs = 1000;
  o.progress_every_steps = 1;
  std::atomic<bool> cancel{false};
  int64_t last_step = 0;
  TrainingHooks hooks;
  hooks.cancel = &cancel;
  hooks.on_progress = [&](const TrainingProgress& p) {
    last_step = p.step;
    if (p.step == 10) cancel = true;
  };
  auto r = Train(c, o, x, hooks);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(last_step, 10);
}

TEST(TrainerTest, NormalizeInputSetsTheScale) {
  const RowMatrix x = Data(200, 10, 5) * 50;
  ModelConfig c = DefaultConfig(10, 20, Activation::kRelu);
  TrainerOptions o = SmallRun();
  o.normalize_input = true;
  auto r = Train(c, o, x);
  ASSERT_TRUE(r.ok());
  const double mean_sq = x.rowwise().squaredNorm().mean();
  EXPECT_NEAR(r->model->config().input_scale, std::sqrt(10 / mean_sq), 1e-4);
  EXPECT_LT(r->train_metrics.fvu, 1.0);
}

TEST(TrainerTest, DeadUnitsAreCounted) {
  // Inputs that are all zero after centring: no ReLU unit with a negative
  // bias can fire. A strongly negative l1 pull keeps them off.
  RowMatrix x = RowMatrix::Ones(64, 4);
  ModelConfig c = DefaultConfig(4, 8, Activation::kRelu);
  c.l1_coefficient = 10.0f;
  TrainerOptions o = SmallRun();
  o.epochs = 20;
  o.dead_window_rows = 64;
  auto r = Train(c, o, x);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->dead_fraction, 1.0);
  EXPECT_DOUBLE_EQ(r->train_metrics.dead_fraction, 1.0);
}

TEST(TrainerTest, RejectsBadInput) {
  ModelConfig c = DefaultConfig(8, 16, Activation::kRelu);
  TrainerOptions o = SmallRun();
  EXPECT_EQ(Train(c, o, Data(10, 9, 1)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Train(c, o, Data(1, 8, 1)).status().code(), absl::StatusCode::kInvalidArgument);
  RowMatrix nan = Data(10, 8, 1);
  nan(3, 3) = std::numeric_limits<float>::infinity();
  auto r = Train(c, o, nan);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("row 3"), absl::string_view::npos);
  o.batch_size = 0;
  EXPECT_EQ(Train(c, o, Data(10, 8, 1)).status().code(), absl::StatusCode::kInvalidArgument);
  o = SmallRun();
  o.validation_fraction = 0.95;
  EXPECT_EQ(Train(c, o, Data(10, 8, 1)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TrainerTest, SgdAndWarmupAlsoTrain) {
  const RowMatrix x = Data(256, 12, 6);
  ModelConfig c = DefaultConfig(12, 24, Activation::kRelu);
  TrainerOptions o = SmallRun();
  o.epochs = 20;
  o.optimizer.kind = OptimizerKind::kSgd;
  o.optimizer.learning_rate = 0.01f;
  o.optimizer.warmup_steps = 20;
  auto r = Train(c, o, x);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->train_metrics.fvu, 0.9);
}

}  // namespace
}  // namespace sae
