#include "core/blas.h"

#include <cblas.h>

#include <cassert>
#include <thread>

namespace sae {

void Gemm(Transpose trans_a, Transpose trans_b, float alpha, ConstMatrixRef a,
          ConstMatrixRef b, float beta, MatrixRef c) {
  const bool ta = trans_a == Transpose::kYes;
  const bool tb = trans_b == Transpose::kYes;
  const int m = static_cast<int>(c.rows());
  const int n = static_cast<int>(c.cols());
  const int k = static_cast<int>(ta ? a.rows() : a.cols());
  assert((ta ? a.cols() : a.rows()) == m);
  assert((tb ? b.rows() : b.cols()) == n);
  assert((tb ? b.cols() : b.rows()) == k);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (beta == 0.0f) {
      c.setZero();
    } else {
      c *= beta;
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
              tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a.data(),
              static_cast<int>(a.outerStride()), b.data(),
              static_cast<int>(b.outerStride()), beta, c.data(),
              static_cast<int>(c.outerStride()));
}

void SetBlasThreads(int num_threads) {
  if (num_threads <= 0) {
    num_threads = static_cast<int>(std::thread::hardware_concurrency());
    if (num_threads <= 0) num_threads = 1;
  }
  openblas_set_num_threads(num_threads);
}

int BlasThreads() { return openblas_get_num_threads(); }

}  // namespace sae
