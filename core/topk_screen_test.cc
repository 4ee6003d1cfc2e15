#include "core/topk_screen.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/activations.h"
#include "core/parallel.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

RowMatrix Normal(int64_t rows, int64_t cols, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  RowMatrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = d(rng);
  return m;
}

// The selection the screen promises: SelectTopK over every pre-activation
// computed as the screen computes its candidates (DotProduct plus the
// bias), so the two must agree bit for bit.
struct Selection {
  std::vector<int32_t> indices;
  std::vector<float> values;
};
Selection Reference(const RowMatrix& x_matrix, const RowMatrix& w_matrix, const Vector& bias,
                    int64_t k) {
  const RowMatrix& x = x_matrix;
  const RowMatrix& w = w_matrix;
  RowMatrix pre(x.rows(), w.rows());
  for (Eigen::Index b = 0; b < x.rows(); ++b) {
    for (Eigen::Index j = 0; j < w.rows(); ++j) {
      pre(b, j) = topk_screen_internal::DotProduct(x.row(b).data(), w.row(j).data(), x.cols()) +
                  bias[j];
    }
  }
  Selection s{std::vector<int32_t>(x.rows() * k), std::vector<float>(x.rows() * k)};
  SelectTopK(pre, k, s.indices.data(), s.values.data());
  return s;
}

Selection Screened(TopKScreen& screen, const RowMatrix& x, const RowMatrix& w, const Vector& bias,
                   int64_t k) {
  Selection s{std::vector<int32_t>(x.rows() * k, -1), std::vector<float>(x.rows() * k, -1.0f)};
  EXPECT_TRUE(screen.Select(x, w, bias.data(), k, s.indices.data(), s.values.data()));
  return s;
}

void ExpectSame(const Selection& got, const Selection& want) {
  ASSERT_EQ(got.indices.size(), want.indices.size());
  int64_t differ = 0;
  for (size_t i = 0; i < got.indices.size(); ++i) {
    // Values compared as bits: +0 and -0 differ.
    if (got.indices[i] != want.indices[i] ||
        std::memcmp(&got.values[i], &want.values[i], sizeof(float)) != 0) {
      ++differ;
    }
  }
  EXPECT_EQ(differ, 0) << "of " << got.indices.size() << " selected entries";
}

class TopKScreenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!TopKScreen::Supported()) GTEST_SKIP() << "this CPU has no AVX512_BF16";
  }
  TopKScreen screen_;
};

// The shape of the benchmark's training step, on both threads and on one:
// the same selection as the full product, and a screen that screens.
TEST_F(TopKScreenTest, MatchesTheFullSelectionAtTheTrainingShape) {
  const RowMatrix x = Normal(256, 784, 1);
  const RowMatrix w = Normal(4096, 784, 2, 1.0f / 28);
  const Vector bias = Normal(4096, 1, 3, 0.1f);
  const Selection want = Reference(x, w, bias, 32);
  ExpectSame(Screened(screen_, x, w, bias, 32), want);
  const double candidates = screen_.candidates_per_row();
  EXPECT_GE(candidates, 32.0);
  EXPECT_LT(candidates, 4096.0 / 8) << "the bound screens out too little";
  {
    ScopedSerial one_thread;
    ExpectSame(Screened(screen_, x, w, bias, 32), want);
  }
}

// Odd widths, a last panel of units and a last tile of rows only partly
// filled, k from 1 to every unit.
TEST_F(TopKScreenTest, MatchesAtRaggedShapesAndEveryK) {
  struct Shape {
    int64_t rows, d_in, d_hidden;
  };
  // 49 values: a last block of 17 (a partly filled second half of 32).
  for (const Shape& sh : {Shape{13, 33, 300}, Shape{9, 49, 200}, Shape{1, 64, 32}, Shape{25, 7, 70},
                          Shape{12, 2, 1}}) {
    const RowMatrix x = Normal(sh.rows, sh.d_in, sh.rows);
    const RowMatrix w = Normal(sh.d_hidden, sh.d_in, sh.d_in);
    const Vector bias = Normal(sh.d_hidden, 1, sh.d_hidden, 0.5f);
    for (int64_t k : {int64_t{1}, std::max<int64_t>(1, sh.d_hidden / 8), sh.d_hidden}) {
      SCOPED_TRACE(testing::Message() << sh.rows << " x " << sh.d_in << " -> " << sh.d_hidden
                                      << ", k " << k);
      ExpectSame(Screened(screen_, x, w, bias, k), Reference(x, w, bias, k));
    }
  }
}

// Exact ties (units with the same weights and bias) go to the lower index;
// rows of zeros, subnormal values and negative pre-activations (written as
// 0) are selected as the full product selects them.
TEST_F(TopKScreenTest, TiesZerosSubnormalsAndNegativesAsTheFullSelection) {
  RowMatrix x = Normal(40, 96, 7);
  RowMatrix w = Normal(512, 96, 8, 0.1f);
  Vector bias = Normal(512, 1, 9, 0.05f);
  for (int64_t j : {17, 100, 101, 300, 511}) {
    w.row(j) = w.row(5);
    bias[j] = bias[5];
  }
  x.row(3).setZero();
  x.row(4).setConstant(1e-40f);  // subnormal
  x(5, 0) = std::numeric_limits<float>::denorm_min();
  w.row(7).setConstant(1e-39f);
  bias.tail(100).array() -= 10.0f;  // units that are negative for every row
  for (int64_t k : {1, 8, 64, 500}) {
    SCOPED_TRACE(testing::Message() << "k " << k);
    ExpectSame(Screened(screen_, x, w, bias, k), Reference(x, w, bias, k));
  }
}

// Structured data (a few strong directions, as real activations have) at
// several scales, small and large.
TEST_F(TopKScreenTest, MatchesOnStructuredDataAtManyScales) {
  const RowMatrix basis = Normal(8, 200, 11);
  for (float scale : {1e-12f, 1e-3f, 1.0f, 1e6f, 1e12f}) {
    SCOPED_TRACE(testing::Message() << "scale " << scale);
    const RowMatrix x = (Normal(64, 8, 12) * basis + 0.01f * Normal(64, 200, 13)) * scale;
    const RowMatrix w = Normal(1024, 8, 14) * basis / 40.0f + 0.001f * Normal(1024, 200, 15);
    const Vector bias = Normal(1024, 1, 16, 0.01f * scale);
    ExpectSame(Screened(screen_, x, w, bias, 16), Reference(x, w, bias, 16));
  }
}

// |a - v| <= e for every row and unit, v the float32 value and a the
// bfloat16 one, on data whose rounding errors all point the same way
// (every value just below or just above half a bfloat16 step from 1, so
// each rounds the same way): there Cauchy-Schwarz is nearly tight, and
// the test fails for a bound even 5% too small (the tightest is 0.97).
TEST_F(TopKScreenTest, TheBoundHoldsWhereRoundingErrorsAllPointOneWay) {
  constexpr float kStep = 0x1p-7f;  // a bfloat16 step at 1
  const int64_t d_in = 784;
  RowMatrix x(6, d_in), w(8, d_in);
  const float below = 1 + 0.499f * kStep, above = 1 + 0.501f * kStep;
  x.row(0).setConstant(below);   // rounds down
  x.row(1).setConstant(above);   // rounds up
  x.row(2).setConstant(-below);
  x.row(3).setConstant(below * 1e12f);
  x.row(4).setConstant(1e-20f);  // products in the subnormal range
  x.row(5) = Normal(1, d_in, 51).row(0);
  w.row(0).setConstant(below);
  w.row(1).setConstant(above);
  w.row(2).setConstant(-above);
  w.row(3).setConstant(1e-20f);
  w.row(4) = Normal(1, d_in, 52).row(0);
  w.row(5).setConstant(1.0f);   // exact in bfloat16
  w.row(6).setConstant(below * 1e3f);
  w.row(7).setZero();
  const Vector bias = (Vector(8) << 0, 0.5f, -3, 0, 1e-3f, 9e14f, 0, -2).finished();
  RowMatrix approx, bound;
  ASSERT_TRUE(screen_.IntervalsForTesting(x, w, bias.data(), &approx, &bound));
  double tightest = 0;
  for (Eigen::Index b = 0; b < x.rows(); ++b) {
    for (Eigen::Index j = 0; j < w.rows(); ++j) {
      const float v =
          topk_screen_internal::DotProduct(x.row(b).data(), w.row(j).data(), d_in) + bias[j];
      const double off = std::abs(static_cast<double>(approx(b, j)) - v);
      EXPECT_LE(off, bound(b, j)) << "row " << b << ", unit " << j << ": a " << approx(b, j)
                                  << ", v " << v;
      tightest = std::max(tightest, off / bound(b, j));
    }
  }
  EXPECT_GT(tightest, 0.95) << "the data no longer tests the bound near its edge";
}

// Values exact in bfloat16 (powers of two, and 1, 1 + 2^-7, 1 + 2^-6), so
// that the rounding of the inputs costs nothing and a - v comes only from
// the float32 sums, in two orders: partial sums near 2^20 whose total
// nearly cancels. The gamma(n) part of the bound must cover it alone.
TEST_F(TopKScreenTest, TheBoundCoversTheFloat32SumsWhereBfloat16IsExact) {
  const int64_t d_in = 784;
  RowMatrix x(4, d_in), w(6, d_in);
  for (int64_t i = 0; i < d_in; ++i) {
    const float power = std::ldexp(1.0f, static_cast<int>(i % 16));
    x(0, i) = i < d_in / 2 ? power : -power;
    x(1, i) = i % 2 == 0 ? power : -power;
    x(2, i) = (i / 7) % 2 == 0 ? power : -power;
    x(3, i) = -x(0, i) * 0x1p-40f;
    for (int64_t j = 0; j < w.rows(); ++j) {
      w(j, i) = 1.0f + 0x1p-7f * static_cast<float>((i + j) % 3);
    }
  }
  const Vector bias = Vector::Zero(w.rows());
  RowMatrix approx, bound;
  ASSERT_TRUE(screen_.IntervalsForTesting(x, w, bias.data(), &approx, &bound));
  double beyond_the_rest = 0;  // the largest |a - v| over what the bound has without gamma
  for (Eigen::Index b = 0; b < x.rows(); ++b) {
    for (Eigen::Index j = 0; j < w.rows(); ++j) {
      const float v = topk_screen_internal::DotProduct(x.row(b).data(), w.row(j).data(), d_in);
      const double off = std::abs(static_cast<double>(approx(b, j)) - v);
      EXPECT_LE(off, bound(b, j)) << "row " << b << ", unit " << j << ": a " << approx(b, j)
                                  << ", v " << v;
      const double rest = 0x1p-20 * std::abs(approx(b, j)) + d_in * 0x1p-70;
      beyond_the_rest = std::max(beyond_the_rest, off / rest);
    }
  }
  EXPECT_GT(beyond_the_rest, 1.0) << "the sums agree too well to test the gamma(n) term";
}

// Where the bfloat16 values rank two units the wrong way round, the screen
// still keeps the one whose float32 value is larger: unit 0 rounds up (a
// 790.1, v 787.07), unit 1 down (a 784.1, v 787.16 with its bias).
TEST_F(TopKScreenTest, KeepsTheUnitTheFloat32ValuesRankFirst) {
  constexpr float kStep = 0x1p-7f;
  RowMatrix x = RowMatrix::Ones(1, 784);
  RowMatrix w(64, 784);
  w.setZero();
  w.row(0).setConstant(1 + 0.501f * kStep);
  w.row(1).setConstant(1 + 0.499f * kStep);
  Vector bias = Vector::Zero(64);
  bias[1] = 0.1f;
  RowMatrix approx, bound;
  ASSERT_TRUE(screen_.IntervalsForTesting(x, w, bias.data(), &approx, &bound));
  ASSERT_GT(approx(0, 0), approx(0, 1) + 5) << "the bfloat16 values should favour unit 0";
  const Selection got = Screened(screen_, x, w, bias, 1);
  EXPECT_EQ(got.indices[0], 1);
  EXPECT_NEAR(got.values[0], 784 * (1 + 0.499f * kStep) + 0.1f, 1e-2);
  ExpectSame(got, Reference(x, w, bias, 1));
}

// Exact ties whose bounds differ (units that differ only where x is zero),
// a width of one, biases near the limit, and no rows.
TEST_F(TopKScreenTest, TiesWithUnequalBoundsAndOtherEdges) {
  RowMatrix x = Normal(30, 64, 61);
  x.leftCols(10).setZero();
  RowMatrix w = Normal(300, 64, 62);
  for (int64_t j : {3, 40, 41, 299}) {
    w.row(j).rightCols(54) = w.row(20).rightCols(54);
    w.row(j).leftCols(10).setConstant(static_cast<float>(j));  // larger norms, larger bounds
  }
  Vector bias = Normal(300, 1, 63, 0.1f);
  for (int64_t j : {3, 40, 41, 299}) bias[j] = bias[20];
  for (int64_t k : {1, 5, 40}) {
    SCOPED_TRACE(testing::Message() << "k " << k);
    ExpectSame(Screened(screen_, x, w, bias, k), Reference(x, w, bias, k));
  }
  const RowMatrix narrow = Normal(20, 1, 64);
  const RowMatrix narrow_w = Normal(50, 1, 65);
  Vector big_bias = Normal(50, 1, 66, 1e14f);
  big_bias[7] = 9.9e14f;
  ExpectSame(Screened(screen_, narrow, narrow_w, big_bias, 3),
             Reference(narrow, narrow_w, big_bias, 3));
  const RowMatrix none(0, 64);
  EXPECT_TRUE(screen_.Select(none, w, bias.data(), 5, nullptr, nullptr));
}

// The float32 dot product the values come from, against one in double, at
// widths with and without a tail: within gamma(n) of the sum of |products|.
TEST_F(TopKScreenTest, DotProductIsAFloat32DotProduct) {
  for (int64_t n : {1, 2, 15, 17, 31, 33, 50, 784}) {
    const RowMatrix a = Normal(1, n, 70 + n), b = Normal(1, n, 90 + n);
    double exact = 0, magnitude = 0;
    for (int64_t i = 0; i < n; ++i) {
      exact += static_cast<double>(a(0, i)) * b(0, i);
      magnitude += std::abs(static_cast<double>(a(0, i)) * b(0, i));
    }
    const float got = topk_screen_internal::DotProduct(a.data(), b.data(), n);
    EXPECT_LE(std::abs(got - exact), n * 0x1p-23 * magnitude) << "n " << n;
  }
}

// What the screen cannot bound it leaves to the caller, writing nothing.
TEST_F(TopKScreenTest, RefusesValuesItCannotBound) {
  const RowMatrix x = Normal(20, 64, 21);
  const RowMatrix w = Normal(256, 64, 22);
  const Vector bias = Vector::Zero(256);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (float bad : {nan, inf, -inf, 1e16f}) {
    SCOPED_TRACE(testing::Message() << "value " << bad);
    std::vector<int32_t> idx(20 * 8, -7);
    std::vector<float> val(20 * 8, -7.0f);
    RowMatrix bad_x = x;
    bad_x(19, 63) = bad;
    EXPECT_FALSE(screen_.Select(bad_x, w, bias.data(), 8, idx.data(), val.data()));
    RowMatrix bad_w = w;
    bad_w(200, 0) = bad;
    EXPECT_FALSE(screen_.Select(x, bad_w, bias.data(), 8, idx.data(), val.data()));
    Vector bad_bias = bias;
    bad_bias[3] = bad;
    EXPECT_FALSE(screen_.Select(x, w, bad_bias.data(), 8, idx.data(), val.data()));
    EXPECT_EQ(idx, std::vector<int32_t>(20 * 8, -7));
    EXPECT_EQ(val, std::vector<float>(20 * 8, -7.0f));
  }
  std::vector<int32_t> idx(20 * 257, -7);
  std::vector<float> val(20 * 257, -7.0f);
  EXPECT_FALSE(screen_.Select(x, w, bias.data(), 0, idx.data(), val.data())) << "k = 0";
  EXPECT_FALSE(screen_.Select(x, w, bias.data(), 257, idx.data(), val.data())) << "k > d_hidden";
  EXPECT_EQ(idx, std::vector<int32_t>(20 * 257, -7));
  EXPECT_EQ(val, std::vector<float>(20 * 257, -7.0f));
}

// Weights it cannot bound usually stay so for many steps: after a refusal,
// ShouldSelect says no for kRetryAfter calls rather than convert them
// again at every step.
TEST_F(TopKScreenTest, ShouldSelectBacksOffAfterARefusal) {
  const int64_t rows = 64, d_in = 128, d_h = 1024, k = 16;
  const RowMatrix x = Normal(rows, d_in, 44);
  RowMatrix w = Normal(d_h, d_in, 45);
  w(100, 5) = std::numeric_limits<float>::infinity();
  const Vector bias = Vector::Zero(d_h);
  std::vector<int32_t> idx(rows * k);
  std::vector<float> val(rows * k);
  ASSERT_TRUE(screen_.ShouldSelect(rows, d_in, d_h, k));
  EXPECT_FALSE(screen_.Select(x, w, bias.data(), k, idx.data(), val.data()));
  for (int i = 0; i < TopKScreen::kRetryAfter; ++i) {
    EXPECT_FALSE(screen_.ShouldSelect(rows, d_in, d_h, k)) << "call " << i;
  }
  EXPECT_TRUE(screen_.ShouldSelect(rows, d_in, d_h, k));
}

// When values bunch so that most units stay candidates, the screen costs
// more than the full product: ShouldSelect then says no for kRetryAfter
// calls, and tries again after.
TEST_F(TopKScreenTest, ShouldSelectBacksOffWhenTheScreenScreensTooLittle) {
  const int64_t rows = 64, d_in = 128, d_h = 1024, k = 16;
  ASSERT_TRUE(TopKScreen::Pays(rows, d_in, d_h, k));
  const RowMatrix x = Normal(rows, d_in, 41);
  RowMatrix w(d_h, d_in);
  w.rowwise() = Normal(1, d_in, 42).row(0);  // every unit the same: all tie
  const Vector bias = Vector::Zero(d_h);
  EXPECT_TRUE(screen_.ShouldSelect(rows, d_in, d_h, k));
  ExpectSame(Screened(screen_, x, w, bias, k), Reference(x, w, bias, k));
  EXPECT_EQ(screen_.candidates_per_row(), d_h);
  for (int i = 0; i < TopKScreen::kRetryAfter; ++i) {
    EXPECT_FALSE(screen_.ShouldSelect(rows, d_in, d_h, k)) << "call " << i;
  }
  EXPECT_TRUE(screen_.ShouldSelect(rows, d_in, d_h, k));
  // A selection that screens well keeps it on.
  const RowMatrix spread = Normal(d_h, d_in, 43);
  ExpectSame(Screened(screen_, x, spread, bias, k), Reference(x, spread, bias, k));
  EXPECT_LT(screen_.candidates_per_row(), d_h / 16);
  EXPECT_TRUE(screen_.ShouldSelect(rows, d_in, d_h, k));
  EXPECT_FALSE(screen_.ShouldSelect(rows, 16, 64, 4)) << "too small to pay";
}

TEST(TopKScreenPaysTest, OnlyLargeProductsWithSmallK) {
  EXPECT_TRUE(TopKScreen::Pays(256, 784, 4096, 32));
  EXPECT_FALSE(TopKScreen::Pays(256, 784, 4096, 1024));  // k too close to d_hidden
  EXPECT_FALSE(TopKScreen::Pays(4, 16, 64, 4));          // too small to pay
}

}  // namespace
}  // namespace sae
