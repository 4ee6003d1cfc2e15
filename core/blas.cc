#include "core/blas.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <string>

#include "core/cpu_count.h"
#include "core/openblas.h"
#include "core/parallel.h"

namespace sae {
namespace {

// OpenBLAS always runs single-threaded here; the project's own pool splits
// large products into per-thread blocks instead. One set of threads does
// all the work: OpenBLAS's idle workers would otherwise spin (sched_yield)
// against the pool's threads on a small machine. A lone product still uses
// every core; concurrent callers (server requests) each get their own core.
std::atomic<int> g_threads{0};

// Loads OpenBLAS before main(), while the process has one thread: choosing
// its kernels sets an environment variable (core/openblas.h).
[[maybe_unused]] const bool kOpenBlasLoaded = (openblas::Get(), true);

// One per CPU the process may use (its affinity mask, its cgroup quota).
int DefaultThreads() { return AvailableCpus(); }

void EnsureInitialised() {
  static const bool once = [] {
    int expected = 0;
    g_threads.compare_exchange_strong(expected, DefaultThreads());
    return true;
  }();
  (void)once;
}

// Blocks below this many multiply-adds per thread are not worth a split.
constexpr int64_t kMinBlockFlops = int64_t{1} << 21;

void SerialGemm(bool ta, bool tb, int m, int n, int k, float alpha,
                const float* a, int lda, const float* b, int ldb, float beta,
                float* c, int ldc) {
  openblas::Get().sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                        tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                        ldc);
}

// Rows of C up to which SmallRowsGemm beats sgemm: OpenBLAS packs the whole
// of B on every call, which for a few rows through a large layer costs more
// than the arithmetic. Measured at 784 x 4096 (2 threads), ms per call, on
// an AMD EPYC with the Haswell kernels: 2 rows 0.57 vs 1.6 in sgemm, 4 rows
// 0.78 vs 1.4, 8 rows 1.25 vs 2.0, 16 rows 2.3 vs 2.6; from 32 rows sgemm is
// far ahead. On an Intel with the SkylakeX kernels (sae_kernels_bench
// --benchmark_filter=EncodeRows): 8 rows 0.74 here, 16 rows even (1.17),
// 32 rows 2.16 here vs 1.55 in sgemm.
constexpr int kSmallRows = 8;
constexpr int64_t kColumnBlock = 256;  // columns per parallel chunk (multiple of 32)

// C[:, j0:j1] = alpha * A B[:, j0:j1] + beta * C for m <= kSmallRows, no
// transposes. Reads B once, streaming row by row, and keeps the m x 256
// block of C in L1; zeros of A (sparse codes) are skipped.
void SmallRowsGemm(int m, int k, float alpha, const float* __restrict a, int lda,
                   const float* __restrict b, int ldb, float beta, float* __restrict c, int ldc,
                   int64_t j0, int64_t j1) {
  alignas(64) float acc[kSmallRows * kColumnBlock];
  for (int64_t jb = j0; jb < j1; jb += kColumnBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kColumnBlock, j1 - jb));
    std::fill(acc, acc + m * kColumnBlock, 0.0f);
    for (int kk = 0; kk < k; ++kk) {
      const float* __restrict w = b + static_cast<int64_t>(kk) * ldb + jb;
      for (int r = 0; r < m; ++r) {
        const float x = a[static_cast<int64_t>(r) * lda + kk];
        if (x == 0.0f) continue;
        float* __restrict out = acc + r * kColumnBlock;
        for (int j = 0; j < nb; ++j) out[j] += x * w[j];
      }
    }
    for (int r = 0; r < m; ++r) {
      float* __restrict dst = c + static_cast<int64_t>(r) * ldc + jb;
      const float* __restrict src = acc + r * kColumnBlock;
      if (beta == 0.0f) {
        for (int j = 0; j < nb; ++j) dst[j] = alpha * src[j];
      } else {
        for (int j = 0; j < nb; ++j) dst[j] = alpha * src[j] + beta * dst[j];
      }
    }
  }
}

}  // namespace

void Gemm(Transpose trans_a, Transpose trans_b, float alpha, ConstMatrixRef a,
          ConstMatrixRef b, float beta, MatrixRef c) {
  EnsureInitialised();
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
  const int lda = static_cast<int>(a.outerStride());
  const int ldb = static_cast<int>(b.outerStride());
  const int ldc = static_cast<int>(c.outerStride());
  const float* pa = a.data();
  const float* pb = b.data();
  float* pc = c.data();
  if (m == 1) {
    // One output row (a single-row request): a matrix-vector product.
    // OpenBLAS's sgemm is several times slower than sgemv for this shape,
    // and the product is bound by reading op(B) once, so split its columns.
    const int incx = ta ? lda : 1;
    const openblas::Api& blas = openblas::Get();
    ParallelFor(n, 1024, [&](int, int64_t lo, int64_t hi) {
      const int len = static_cast<int>(hi - lo);
      if (tb) {  // c[lo:hi] = B[lo:hi, :] a
        blas.sgemv(CblasRowMajor, CblasNoTrans, len, k, alpha, pb + lo * ldb, ldb, pa, incx,
                   beta, pc + lo, 1);
      } else {  // c[lo:hi] = B[:, lo:hi]^T a
        blas.sgemv(CblasRowMajor, CblasTrans, k, len, alpha, pb + lo, ldb, pa, incx, beta,
                   pc + lo, 1);
      }
    });
    return;
  }
  if (!ta && !tb && m <= kSmallRows && n >= 4 * kColumnBlock) {
    ParallelFor((n + kColumnBlock - 1) / kColumnBlock, 1, [&](int, int64_t lo, int64_t hi) {
      SmallRowsGemm(m, k, alpha, pa, lda, pb, ldb, beta, pc, ldc, lo * kColumnBlock,
                    std::min<int64_t>(n, hi * kColumnBlock));
    });
    return;
  }
  // Split the output along its longer side into one block per thread.
  const bool split_rows = m >= n;
  const int64_t extent = split_rows ? m : n;
  // A block must be worth a hand-off: at least kMinBlockFlops multiply-adds.
  const int64_t per_unit = static_cast<int64_t>(split_rows ? n : m) * k;
  const int64_t min_extent = std::max<int64_t>(16, kMinBlockFlops / std::max<int64_t>(1, per_unit));
  ParallelFor(extent, min_extent, [&](int, int64_t lo, int64_t hi) {
    const int len = static_cast<int>(hi - lo);
    if (split_rows) {
      // Rows lo..hi of op(A) and C.
      const float* a_block = ta ? pa + lo : pa + lo * lda;
      SerialGemm(ta, tb, len, n, k, alpha, a_block, lda, pb, ldb, beta,
                 pc + lo * ldc, ldc);
    } else {
      // Columns lo..hi of op(B) and C.
      const float* b_block = tb ? pb + lo * ldb : pb + lo;
      SerialGemm(ta, tb, m, len, k, alpha, pa, lda, b_block, ldb, beta,
                 pc + lo, ldc);
    }
  });
}

std::string BlasKernels() {
  return openblas::Get().kernels;
}

void SetBlasThreads(int num_threads) {
  EnsureInitialised();
  g_threads = num_threads > 0 ? num_threads : DefaultThreads();
}

int BlasThreads() {
  EnsureInitialised();
  return g_threads.load();
}

}  // namespace sae
