#include "core/blas.h"

#include <cstdlib>

#include "absl/strings/match.h"
#include "core/testing/random_matrix.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

using ::sae::testing::RandomNormal;

// OpenBLAS runs the kernels chosen for this CPU (core/openblas.h), not its
// generic fallback: the variable that names them is set (by the user or at
// load) and the library reports the same set.
TEST(BlasTest, OpenBlasRunsTheChosenKernels) {
  const char* chosen = std::getenv("OPENBLAS_CORETYPE");
  if (chosen == nullptr) GTEST_SKIP() << "a CPU without AVX2: OpenBLAS chooses";
  EXPECT_TRUE(absl::EqualsIgnoreCase(BlasKernels(), chosen))
      << "OpenBLAS runs " << BlasKernels() << ", OPENBLAS_CORETYPE=" << chosen;
}

// Every transpose combination and the special shapes (one row, blocks split
// across threads, strided views) against Eigen's own product.
TEST(BlasTest, GemmMatchesEigenForEveryShapeAndTranspose) {
  for (auto [m, n, k] : std::vector<std::tuple<int, int, int>>{
           {1, 4096, 784}, {1, 7, 3}, {3, 5, 7}, {300, 2000, 64}, {2000, 300, 16}, {64, 64, 0},
           {2, 4096, 784}, {24, 1100, 33}, {8, 1024, 5}, {25, 2048, 16}}) {
    for (Transpose ta : {Transpose::kNo, Transpose::kYes}) {
      for (Transpose tb : {Transpose::kNo, Transpose::kYes}) {
        const RowMatrix a = ta == Transpose::kNo ? RandomNormal(m, k, 1) : RandomNormal(k, m, 1);
        const RowMatrix b = tb == Transpose::kNo ? RandomNormal(k, n, 2) : RandomNormal(n, k, 2);
        const RowMatrix opa = ta == Transpose::kNo ? a : RowMatrix(a.transpose());
        const RowMatrix opb = tb == Transpose::kNo ? b : RowMatrix(b.transpose());
        RowMatrix c = RandomNormal(m, n, 3);
        const RowMatrix want = 0.5f * opa * opb + 2.0f * c;
        Gemm(ta, tb, 0.5f, a, b, 2.0f, c);
        const float tol = 1e-4f * (1.0f + static_cast<float>(k));
        EXPECT_LT((c - want).cwiseAbs().maxCoeff(), tol)
            << m << "x" << n << "x" << k << " ta=" << (ta == Transpose::kYes)
            << " tb=" << (tb == Transpose::kYes);
      }
    }
  }
}

TEST(BlasTest, StridedViews) {
  const RowMatrix big = RandomNormal(10, 20, 4);
  const RowMatrix w = RandomNormal(8, 5, 5);
  RowMatrix out = RowMatrix::Zero(10, 12);
  // A = big[:, 2:10] (outer stride 20), C = out[:, 3:8] (outer stride 12).
  Gemm(Transpose::kNo, Transpose::kNo, 1.0f, big.middleCols(2, 8), w, 0.0f, out.middleCols(3, 5));
  const RowMatrix want = big.middleCols(2, 8) * w;
  EXPECT_LT((out.middleCols(3, 5) - want).cwiseAbs().maxCoeff(), 1e-4f);
  EXPECT_EQ(out.col(0).cwiseAbs().sum(), 0.0f);
}

}  // namespace
}  // namespace sae
