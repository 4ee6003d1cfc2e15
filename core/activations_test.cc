#include "core/activations.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace sae {
namespace {

TEST(ActivationsTest, SelectTopKMatchesSortOnRandomRows) {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal;
  RowMatrix pre(50, 300);
  for (Eigen::Index i = 0; i < pre.size(); ++i) pre.data()[i] = normal(rng);
  for (int64_t k : {1, 7, 32, 300}) {
    std::vector<int32_t> idx(50 * k);
    std::vector<float> val(50 * k);
    SelectTopK(pre, k, idx.data(), val.data());
    for (Eigen::Index r = 0; r < pre.rows(); ++r) {
      std::vector<int32_t> order(300);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int a, int b) { return pre(r, a) > pre(r, b); });
      std::vector<int32_t> want(order.begin(), order.begin() + k);
      std::sort(want.begin(), want.end());
      std::vector<int32_t> got(idx.begin() + r * k, idx.begin() + (r + 1) * k);
      ASSERT_EQ(got, want) << "row " << r << " k " << k;
      for (int64_t t = 0; t < k; ++t) {
        EXPECT_EQ(val[r * k + t], std::max(0.0f, pre(r, got[t])));
      }
    }
  }
}

// Wide rows take the block-pruning path; values from a small set make many
// ties at the threshold.
TEST(ActivationsTest, SelectTopKOnWideRowsWithTiesMatchesStableSort) {
  std::mt19937_64 rng(2);
  std::uniform_int_distribution<int> level(-20, 20);
  for (int64_t cols : {4096, 1000, 257}) {
    RowMatrix pre(20, cols);
    for (Eigen::Index i = 0; i < pre.size(); ++i) pre.data()[i] = level(rng) * 0.5f;
    for (int64_t k : {1, 8, 32, 64}) {
      std::vector<int32_t> idx(20 * k);
      std::vector<float> val(20 * k);
      SelectTopK(pre, k, idx.data(), val.data());
      for (Eigen::Index r = 0; r < pre.rows(); ++r) {
        std::vector<int32_t> order(cols);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int a, int b) { return pre(r, a) > pre(r, b); });
        std::vector<int32_t> want(order.begin(), order.begin() + k);
        std::sort(want.begin(), want.end());
        std::vector<int32_t> got(idx.begin() + r * k, idx.begin() + (r + 1) * k);
        ASSERT_EQ(got, want) << "cols " << cols << " k " << k << " row " << r;
      }
    }
  }
}

// NaNs have no place in the order; a row holding them must still give k
// distinct, ascending, in-range indices (not a crash or a short list), and
// infinities rank as the largest and smallest values.
TEST(ActivationsTest, SelectTopKOnRowsWithNaNsAndInfinitiesStaysInRange) {
  constexpr int64_t kCols = 4096, kK = 32;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  RowMatrix pre(4, kCols);
  for (Eigen::Index i = 0; i < pre.size(); ++i) pre.data()[i] = normal(rng);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (Eigen::Index c = 0; c < kCols; c += 3) pre(0, c) = nan;  // a third NaN
  pre.row(1).setConstant(nan);                                   // all NaN
  pre(2, 100) = inf;
  pre(2, 200) = -inf;
  for (Eigen::Index c = 0; c < kCols; c += 64) pre(3, c) = nan;  // one per block row
  pre(3, 7) = inf;
  std::vector<int32_t> idx(4 * kK);
  std::vector<float> val(4 * kK);
  SelectTopK(pre, kK, idx.data(), val.data());
  for (int r = 0; r < 4; ++r) {
    for (int64_t t = 0; t < kK; ++t) {
      const int32_t i = idx[r * kK + t];
      ASSERT_GE(i, 0) << "row " << r;
      ASSERT_LT(i, kCols) << "row " << r;
      if (t > 0) ASSERT_LT(idx[r * kK + t - 1], i) << "row " << r;
    }
  }
  EXPECT_NE(std::find(idx.begin() + 2 * kK, idx.begin() + 3 * kK, 100), idx.begin() + 3 * kK);
  EXPECT_EQ(std::find(idx.begin() + 2 * kK, idx.begin() + 3 * kK, 200), idx.begin() + 3 * kK);
  EXPECT_NE(std::find(idx.begin() + 3 * kK, idx.end(), 7), idx.end());
}

TEST(ActivationsTest, TiesGoToTheLowerIndex) {
  RowMatrix pre(1, 5);
  pre << 1, 2, 2, 2, 0;
  int32_t idx[2];
  float val[2];
  SelectTopK(pre, 2, idx, val);
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(idx[1], 2);
}

TEST(ActivationsTest, TopKInPlaceKeepsKAndAppliesRelu) {
  RowMatrix pre(2, 4);
  pre << 3, -1, 2, 0.5, -3, -2, -1, -4;
  TopKInPlace(pre, 2);
  RowMatrix want(2, 4);
  want << 3, 0, 2, 0, 0, 0, 0, 0;  // negatives among the top 2 become 0
  EXPECT_EQ(pre, want);
}

TEST(ActivationsTest, ReluAndSigmoid) {
  RowMatrix m(1, 3);
  m << -1, 0, 2;
  RowMatrix r = m;
  ReluInPlace(r);
  EXPECT_EQ(r(0, 0), 0);
  EXPECT_EQ(r(0, 2), 2);
  RowMatrix s = m;
  SigmoidInPlace(s);
  EXPECT_NEAR(s(0, 0), 0.26894142, 1e-6);
  EXPECT_NEAR(s(0, 1), 0.5, 1e-7);
  EXPECT_NEAR(s(0, 2), 0.88079708, 1e-6);
}

}  // namespace
}  // namespace sae
