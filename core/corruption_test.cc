#include "core/corruption.h"

#include <cmath>

#include "gtest/gtest.h"

namespace sae {
namespace {

RowMatrix Constant(float v) { return RowMatrix::Constant(200, 100, v); }

TEST(CorruptionTest, SameSeedSameNoise) {
  CorruptionOptions o;
  o.kind = CorruptionKind::kGaussian;
  RowMatrix a(200, 100), b(200, 100), c(200, 100);
  std::mt19937_64 r1(5), r2(5), r3(6);
  Corrupt(o, Constant(0.5f), r1, a);
  Corrupt(o, Constant(0.5f), r2, b);
  Corrupt(o, Constant(0.5f), r3, c);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(CorruptionTest, GaussianHasTheRequestedSigma) {
  CorruptionOptions o;
  o.kind = CorruptionKind::kGaussian;
  o.sigma = 0.3f;
  RowMatrix out(200, 100);
  std::mt19937_64 rng(1);
  Corrupt(o, Constant(0.0f), rng, out);
  const double mean = out.mean();
  const double sd = std::sqrt(out.array().square().mean() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(sd, 0.3, 0.01);
}

TEST(CorruptionTest, ClipKeepsValuesInRange) {
  CorruptionOptions o;
  o.kind = CorruptionKind::kGaussian;
  o.sigma = 1.0f;
  o.clip = true;
  RowMatrix out(200, 100);
  std::mt19937_64 rng(1);
  Corrupt(o, Constant(0.5f), rng, out);
  EXPECT_GE(out.minCoeff(), 0.0f);
  EXPECT_LE(out.maxCoeff(), 1.0f);
  EXPECT_GT((out.array() == 0.0f).count(), 0);
}

TEST(CorruptionTest, MaskingZeroesAboutP) {
  CorruptionOptions o;
  o.kind = CorruptionKind::kMasking;
  o.probability = 0.25f;
  RowMatrix out(200, 100);
  std::mt19937_64 rng(2);
  Corrupt(o, Constant(1.0f), rng, out);
  const double zeroed = (out.array() == 0.0f).count() / double(out.size());
  EXPECT_NEAR(zeroed, 0.25, 0.02);
  EXPECT_EQ((out.array() == 1.0f).count() + (out.array() == 0.0f).count(), out.size());
}

TEST(CorruptionTest, SaltAndPepperSetsLowAndHalfHigh) {
  CorruptionOptions o;
  o.kind = CorruptionKind::kSaltAndPepper;
  o.probability = 0.2f;
  RowMatrix out(200, 100);
  std::mt19937_64 rng(3);
  Corrupt(o, Constant(0.5f), rng, out);
  const double low = (out.array() == 0.0f).count() / double(out.size());
  const double high = (out.array() == 1.0f).count() / double(out.size());
  EXPECT_NEAR(low, 0.1, 0.015);
  EXPECT_NEAR(high, 0.1, 0.015);
}

TEST(CorruptionTest, NoneCopies) {
  CorruptionOptions o;
  RowMatrix in = Constant(0.7f), out(200, 100);
  std::mt19937_64 rng(3);
  Corrupt(o, in, rng, out);
  EXPECT_EQ(in, out);
}

TEST(CorruptionTest, ValidateAndParse) {
  CorruptionOptions o;
  o.probability = 1.5f;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.sigma = -1;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseCorruption("salt-and-pepper"), CorruptionKind::kSaltAndPepper);
  EXPECT_EQ(ParseCorruption("blur").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sae
