#include "core/packed_gemm.h"

#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/blas.h"
#include "core/testing/random_matrix.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

using ::sae::testing::RandomNormal;

// C += A B in double precision: the reference every kernel is held to.
RowMatrix Reference(const RowMatrix& a, const RowMatrix& b, const RowMatrix& c) {
  return (c.cast<double>() + a.cast<double>() * b.cast<double>()).cast<float>();
}

// Every kernel the CPU can run, on shapes that exercise each row count of
// its register block, a partial last panel, a single panel and strided
// views of A and C.
TEST(PackedGemmTest, EveryKernelMatchesADoublePrecisionProduct) {
  const std::vector<std::string> kernels = packed_internal::UsableKernelNames();
  ASSERT_FALSE(kernels.empty());
  EXPECT_EQ(kernels.front(), PackedKernelName());
  for (const std::string& kernel : kernels) {
    for (auto [m, n, k] : std::vector<std::tuple<int, int, int>>{
             {1, 4096, 784}, {1, 1, 1}, {2, 31, 7}, {3, 33, 5}, {5, 100, 64}, {7, 32, 300},
             {8, 64, 3}, {9, 95, 17}, {13, 1000, 40}, {16, 257, 784}, {33, 70, 9}, {64, 130, 50}}) {
      const RowMatrix a_full = RandomNormal(m, k + 3, 1);  // A is a strided view: k of k + 3 columns
      const RowMatrix b = RandomNormal(k, n, 2);
      RowMatrix c_full = RandomNormal(m, n + 5, 3);
      const RowMatrix a = a_full.leftCols(k);
      const RowMatrix want = Reference(a, b, c_full.leftCols(n));
      const RowMatrix right_before = c_full.rightCols(5);
      const PackedMatrix packed(b);
      ASSERT_EQ(packed.rows(), k);
      ASSERT_EQ(packed.cols(), n);
      ASSERT_TRUE(packed_internal::MultiplyAddPackedWith(kernel, a_full.leftCols(k), packed,
                                                         c_full.leftCols(n)));
      const float tol = 1e-5f * (1.0f + static_cast<float>(k));
      EXPECT_LT((c_full.leftCols(n) - want).cwiseAbs().maxCoeff(), tol)
          << kernel << " " << m << "x" << n << "x" << k;
      // Columns of C beyond the product are left alone.
      EXPECT_EQ(c_full.rightCols(5), right_before) << kernel << " " << m << "x" << n << "x" << k;
    }
  }
}

// Sparse rows (a decoder's codes): the steps where a whole block of rows is
// zero are skipped, and the results still match, for rows that are all
// zero, a block with a single nonzero, and dense rows beside sparse ones.
TEST(PackedGemmTest, EveryKernelMatchesOnSparseRows) {
  for (const std::string& kernel : packed_internal::UsableKernelNames()) {
    // 3% nonzero: few steps per block; 60%: most blocks have most steps,
    // which the kernels take all of, in their plain loop.
    for (auto [m, n, k, density] : std::vector<std::tuple<int, int, int, double>>{
             {1, 784, 4096, 0.03}, {3, 40, 300, 0.03}, {9, 33, 64, 0.03}, {20, 100, 500, 0.03},
             {1, 64, 300, 0.6}, {5, 40, 300, 0.6}, {20, 100, 500, 0.6}}) {
      RowMatrix a = RandomNormal(m, k, 7);
      std::mt19937_64 rng(8);
      std::bernoulli_distribution keep(density);
      for (Eigen::Index i = 0; i < a.size(); ++i) {
        if (!keep(rng)) a.data()[i] = 0.0f;
      }
      if (m > 2) a.row(1).setZero();
      if (m > 9) a.row(9) = RandomNormal(1, k, 9);  // a dense row in a sparse block
      const RowMatrix b = RandomNormal(k, n, 10);
      RowMatrix c = RandomNormal(m, n, 11);
      const RowMatrix want = Reference(a, b, c);
      ASSERT_TRUE(packed_internal::MultiplyAddPackedWith(kernel, a, PackedMatrix(b), c));
      EXPECT_LT((c - want).cwiseAbs().maxCoeff(), 1e-5f * (1.0f + static_cast<float>(k)))
          << kernel << " " << m << "x" << n << "x" << k << " density " << density;
    }
  }
}

TEST(PackedGemmTest, UnknownKernelIsRefused) {
  const RowMatrix b = RandomNormal(4, 4, 1);
  RowMatrix c = RowMatrix::Zero(1, 4);
  EXPECT_FALSE(packed_internal::MultiplyAddPackedWith("no-such-kernel", RandomNormal(1, 4, 2),
                                                      PackedMatrix(b), c));
  EXPECT_TRUE(c.isZero());
}

// What lets the server merge requests: a row's result is the same bits
// whether it is computed alone or in a batch, at any position, with any
// thread count.
TEST(PackedGemmTest, ARowGivesTheSameBitsAloneAndInABatch) {
  const int k = 784, n = 4096;
  RowMatrix x = RandomNormal(37, k, 4);
  // Sparse rows too: a row alone skips its own zero steps, in a batch only
  // the steps where its whole block is zero.
  for (Eigen::Index r = 20; r < 30; ++r) {
    for (Eigen::Index j = 0; j < k; ++j) {
      if ((j * 7 + r) % 10 != 0) x(r, j) = 0.0f;
    }
  }
  const PackedMatrix w(RandomNormal(k, n, 5));
  const int threads_before = BlasThreads();
  RowMatrix batch = RowMatrix::Zero(x.rows(), n);
  SetBlasThreads(2);
  MultiplyAddPacked(x, w, batch);
  SetBlasThreads(1);
  for (Eigen::Index r : {0, 7, 8, 20, 23, 29, 36}) {
    RowMatrix alone = RowMatrix::Zero(1, n);
    MultiplyAddPacked(x.row(r), w, alone);
    EXPECT_EQ(alone.row(0), batch.row(r)) << "row " << r;
  }
  SetBlasThreads(threads_before);
}

}  // namespace
}  // namespace sae
