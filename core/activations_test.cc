#include "core/activations.h"

#include <algorithm>
#include <cmath>
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

// The contract's order: largest first, ties to the lower index, NaNs after
// everything else (the lowest-index NaNs first). Returns the k chosen
// indices in ascending order.
std::vector<int32_t> ReferenceTopK(const float* row, int64_t cols, int64_t k) {
  std::vector<int32_t> order(cols);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if (std::isnan(row[a]) || std::isnan(row[b])) return !std::isnan(row[a]) && std::isnan(row[b]);
    return row[a] > row[b];
  });
  std::vector<int32_t> want(order.begin(), order.begin() + k);
  std::sort(want.begin(), want.end());
  return want;
}

// Rows holding NaNs (where one starts a block it becomes that block's
// maximum) and infinities, through both the block-pruning path (4096
// columns) and the heap (100 columns).
TEST(ActivationsTest, SelectTopKPassesOverNaNs) {
  constexpr int64_t kK = 32;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t cols : {4096, 100}) {
    std::mt19937_64 rng(3);
    std::normal_distribution<float> normal;
    RowMatrix pre(6, cols);
    for (Eigen::Index i = 0; i < pre.size(); ++i) pre.data()[i] = normal(rng);
    for (Eigen::Index c = 0; c < kK; ++c) pre(0, c) = nan;  // the first k columns
    pre(0, cols - 1) = inf;
    for (Eigen::Index c = 0; c < cols; c += 3) pre(1, c) = nan;  // a third
    pre(1, cols / 2 + 1) = inf;
    pre(1, cols / 2 + 2) = -inf;
    pre.row(2).setConstant(nan);  // all NaN: the first k columns
    pre.row(3).setConstant(nan);  // five values, then the lowest NaNs
    for (Eigen::Index c : {40, 50, 60, 70, 80}) pre(3, c) = -1.0f - c;
    for (Eigen::Index c = 0; c < cols; c += 256) pre(4, c) = nan;  // NaN maxima of blocks
    pre(4, cols - 2) = inf;
    pre.row(5).setConstant(-inf);  // k-th value -inf
    pre(5, 7) = nan;
    std::vector<int32_t> idx(6 * kK);
    std::vector<float> val(6 * kK);
    SelectTopK(pre, kK, idx.data(), val.data());
    for (Eigen::Index r = 0; r < pre.rows(); ++r) {
      const std::vector<int32_t> want = ReferenceTopK(pre.row(r).data(), cols, kK);
      const std::vector<int32_t> got(idx.begin() + r * kK, idx.begin() + (r + 1) * kK);
      ASSERT_EQ(got, want) << "cols " << cols << " row " << r;
      for (int64_t t = 0; t < kK; ++t) {
        const float v = pre(r, got[t]);
        EXPECT_EQ(val[r * kK + t], std::isnan(v) ? 0.0f : std::max(0.0f, v));
      }
    }
  }
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
