#include "core/packed_gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cassert>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "core/lane_masks.h"
#include "core/parallel.h"

namespace sae {
namespace {

constexpr int64_t kW = PackedMatrix::kPanelWidth;

// One block: `rows` rows of A times one panel, added into C.
struct Block {
  // The steps of k to take, ascending: those where some row of the block
  // is nonzero (a step where all are zero would add exact zeros).
  const int32_t* steps;
  int64_t num_steps;
  // num_steps == k: every step (dense rows), which the AVX kernels take in
  // a plain loop rather than through `steps`.
  int64_t k;
  const float* a;  // first row of the block
  int64_t lda;
  const float* panel;
  float* c;  // first row of the block, first column of the panel
  int64_t ldc;
  int width;  // columns of the panel that C has (kW except in the last panel)
};

// Adds the accumulators (spilled to `acc`, R x kW) into C's block.
template <int R>
inline void AddInto(const Block& b, const float (&acc)[R][kW]) {
  for (int r = 0; r < R; ++r) {
    float* __restrict dst = b.c + r * b.ldc;
    for (int j = 0; j < b.width; ++j) dst[j] += acc[r][j];
  }
}

#if defined(__x86_64__)
// 8 rows x 2 zmm: 16 accumulators, two panel loads and eight broadcasts per
// step of k. Compute-bound from about 16 rows, bandwidth-bound below.
struct Avx512 {
  static constexpr int kMaxRows = 8;
  static constexpr const char* kName = "avx512";
  // Step kk of k: row r += a[r][kk] * panel row kk. A function, not a
  // lambda, so that it carries the target attribute.
  template <int R>
  __attribute__((target("avx512f"), always_inline)) static inline void Step(
      const Block& b, int64_t kk, __m512 (&lo)[R], __m512 (&hi)[R]) {
    const float* p = b.panel + kk * kW;
    const __m512 b0 = _mm512_load_ps(p);
    const __m512 b1 = _mm512_load_ps(p + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(b.a[r * b.lda + kk]);
      lo[r] = _mm512_fmadd_ps(x, b0, lo[r]);
      hi[r] = _mm512_fmadd_ps(x, b1, hi[r]);
    }
  }
  template <int R>
  __attribute__((target("avx512f"))) static void Run(const Block& b) {
    __m512 lo[R], hi[R];
    for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm512_setzero_ps();
    if (b.num_steps == b.k) {
      for (int64_t kk = 0; kk < b.k; ++kk) Step<R>(b, kk, lo, hi);
    } else {
      for (int64_t t = 0; t < b.num_steps; ++t) Step<R>(b, b.steps[t], lo, hi);
    }
    const __mmask16 m0 = FirstLanes(b.width), m1 = FirstLanes(b.width - 16);
    for (int r = 0; r < R; ++r) {
      float* dst = b.c + r * b.ldc;
      _mm512_mask_storeu_ps(dst, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, dst), lo[r]));
      _mm512_mask_storeu_ps(dst + 16, m1,
                            _mm512_add_ps(_mm512_maskz_loadu_ps(m1, dst + 16), hi[r]));
    }
  }
};

// 2 rows x 4 ymm: 8 accumulators and four panel loads per step of k.
struct Avx2 {
  static constexpr int kMaxRows = 2;
  static constexpr const char* kName = "avx2";
  template <int R>
  __attribute__((target("avx2,fma"), always_inline)) static inline void Step(
      const Block& b, int64_t kk, __m256 (&acc)[R][4]) {
    const float* p = b.panel + kk * kW;
    const __m256 w0 = _mm256_load_ps(p), w1 = _mm256_load_ps(p + 8);
    const __m256 w2 = _mm256_load_ps(p + 16), w3 = _mm256_load_ps(p + 24);
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_broadcast_ss(b.a + r * b.lda + kk);
      acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(x, w2, acc[r][2]);
      acc[r][3] = _mm256_fmadd_ps(x, w3, acc[r][3]);
    }
  }
  template <int R>
  __attribute__((target("avx2,fma"))) static void Run(const Block& b) {
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_setzero_ps();
    }
    if (b.num_steps == b.k) {
      for (int64_t kk = 0; kk < b.k; ++kk) Step<R>(b, kk, acc);
    } else {
      for (int64_t t = 0; t < b.num_steps; ++t) Step<R>(b, b.steps[t], acc);
    }
    alignas(64) float out[R][kW];
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < 4; ++v) _mm256_store_ps(out[r] + 8 * v, acc[r][v]);
    }
    AddInto<R>(b, out);
  }
};
#endif  // __x86_64__

// Any CPU: the compiler vectorises the inner loop for the build's baseline.
struct Generic {
  static constexpr int kMaxRows = 4;
  static constexpr const char* kName = "generic";
  template <int R>
  static void Run(const Block& b) {
    alignas(64) float acc[R][kW] = {};
    for (int64_t t = 0; t < b.num_steps; ++t) {
      const int64_t kk = b.steps[t];
      const float* __restrict p = b.panel + kk * kW;
      for (int r = 0; r < R; ++r) {
        const float x = b.a[r * b.lda + kk];
        for (int j = 0; j < kW; ++j) acc[r][j] += x * p[j];
      }
    }
    AddInto<R>(b, acc);
  }
};

// Runs Isa::Run<rows> (1 <= rows <= Isa::kMaxRows).
template <class Isa, int R = Isa::kMaxRows>
void RunRows(int rows, const Block& b) {
  if constexpr (R >= 1) {
    if (rows == R) return Isa::template Run<R>(b);
    RunRows<Isa, R - 1>(rows, b);
  }
}

// Per block of `rows_per_block` rows of A, the steps of k it needs: all of
// them for dense rows, few for sparse codes (a decoder's input), whose zeros
// then cost nothing. Made once per product, for every thread's panels.
struct StepPlan {
  int64_t k = 0;
  std::vector<int32_t> steps;      // block blk's are steps[blk * k, blk * k + num_steps[blk])
  std::vector<int64_t> num_steps;  // k when the block takes every step
};

StepPlan PlanSteps(ConstMatrixRef a, int64_t rows_per_block) {
  StepPlan plan;
  const int64_t m = a.rows(), k = a.cols();
  const int64_t blocks = (m + rows_per_block - 1) / rows_per_block;
  plan.k = k;
  plan.steps.resize(static_cast<size_t>(blocks * k));
  plan.num_steps.resize(static_cast<size_t>(blocks));
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * rows_per_block, r1 = std::min(m, r0 + rows_per_block);
    int32_t* out = plan.steps.data() + blk * k;
    int64_t n = 0;
    for (int64_t kk = 0; kk < k; ++kk) {
      bool any = false;
      for (int64_t r = r0; r < r1; ++r) any |= a(r, kk) != 0.0f;
      out[n] = static_cast<int32_t>(kk);
      n += any;
    }
    if (4 * n >= 3 * k) {
      // Mostly nonzero: take every step (the AVX kernels' plain loop is
      // faster than the indexed one), which (B being finite) adds exact
      // zeros for the rest.
      for (int64_t kk = 0; kk < k; ++kk) out[kk] = static_cast<int32_t>(kk);
      n = k;
    }
    plan.num_steps[static_cast<size_t>(blk)] = n;
  }
  return plan;
}

// Panels [p0, p1) of C += A B. Each panel is read from memory once and then
// from cache for every further block of rows.
template <class Isa>
void Panels(ConstMatrixRef a, const PackedMatrix& b, const StepPlan& plan, MatrixRef c,
            int64_t p0, int64_t p1) {
  constexpr int64_t kRows = Isa::kMaxRows;
  const int64_t m = a.rows();
  for (int64_t p = p0; p < p1; ++p) {
    Block block;
    block.lda = a.outerStride();
    block.panel = b.panel(p);
    block.ldc = c.outerStride();
    block.width = static_cast<int>(std::min(kW, b.cols() - p * kW));
    block.k = plan.k;
    for (int64_t blk = 0; blk * kRows < m; ++blk) {
      const int64_t r0 = blk * kRows;
      block.steps = plan.steps.data() + blk * plan.k;
      block.num_steps = plan.num_steps[static_cast<size_t>(blk)];
      block.a = a.data() + r0 * block.lda;
      block.c = c.data() + r0 * block.ldc + p * kW;
      RunRows<Isa>(static_cast<int>(std::min<int64_t>(kRows, m - r0)), block);
    }
  }
}

using PanelsFn = void (*)(ConstMatrixRef, const PackedMatrix&, const StepPlan&, MatrixRef,
                          int64_t, int64_t);
struct Kernel {
  PanelsFn run;
  const char* name;
  int rows_per_block;
};

// Every kernel this CPU can run, widest first.
std::vector<Kernel> UsableKernels() {
  std::vector<Kernel> kernels;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    kernels.push_back({&Panels<Avx512>, Avx512::kName, Avx512::kMaxRows});
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    kernels.push_back({&Panels<Avx2>, Avx2::kName, Avx2::kMaxRows});
  }
#endif
  kernels.push_back({&Panels<Generic>, Generic::kName, Generic::kMaxRows});
  return kernels;
}

Kernel ChooseKernel() { return UsableKernels().front(); }

const Kernel& TheKernel() {
  static const Kernel kernel = ChooseKernel();
  return kernel;
}

// Panels per ParallelFor chunk: enough work to be worth a hand-off (about
// 2^21 multiply-adds), and at least 1 MB of weights, since few rows are
// bound by reading the panels rather than by arithmetic.
int64_t MinPanelsPerChunk(int64_t m, int64_t k) {
  const int64_t per_panel = std::max<int64_t>(m, 8) * k * kW;
  return std::max<int64_t>(1, ((int64_t{1} << 21) + per_panel - 1) / per_panel);
}

void MultiplyAddWith(const Kernel& kernel, ConstMatrixRef a, const PackedMatrix& b, MatrixRef c) {
  assert(a.cols() == b.rows());
  assert(c.rows() == a.rows() && c.cols() == b.cols());
  if (a.rows() == 0 || b.cols() == 0 || b.rows() == 0) return;
  const StepPlan plan = PlanSteps(a, kernel.rows_per_block);
  ParallelFor(b.panels(), MinPanelsPerChunk(a.rows(), b.rows()),
              [&](int, int64_t p0, int64_t p1) { kernel.run(a, b, plan, c, p0, p1); });
}

}  // namespace

void PackedMatrix::FreeAligned::operator()(float* p) const {
  ::operator delete[](p, std::align_val_t(64));
}

PackedMatrix::PackedMatrix(ConstMatrixRef b)
    : rows_(b.rows()), cols_(b.cols()), panels_((b.cols() + kW - 1) / kW) {
  const size_t floats = static_cast<size_t>(std::max<int64_t>(1, rows_ * panels_ * kW));
  data_.reset(static_cast<float*>(::operator new[](floats * sizeof(float), std::align_val_t(64))));
  for (int64_t p = 0; p < panels_; ++p) {
    float* dst = data_.get() + p * rows_ * kW;
    const int64_t j0 = p * kW;
    const int64_t width = std::min(kW, cols_ - j0);
    for (int64_t kk = 0; kk < rows_; ++kk, dst += kW) {
      std::memcpy(dst, b.data() + kk * b.outerStride() + j0, sizeof(float) * width);
      std::fill(dst + width, dst + kW, 0.0f);
    }
  }
}

void MultiplyAddPacked(ConstMatrixRef a, const PackedMatrix& b, MatrixRef c) {
  MultiplyAddWith(TheKernel(), a, b, c);
}

const char* PackedKernelName() { return TheKernel().name; }

namespace packed_internal {

std::vector<std::string> UsableKernelNames() {
  std::vector<std::string> names;
  for (const Kernel& k : UsableKernels()) names.emplace_back(k.name);
  return names;
}

bool MultiplyAddPackedWith(const std::string& kernel, ConstMatrixRef a, const PackedMatrix& b,
                           MatrixRef c) {
  for (const Kernel& k : UsableKernels()) {
    if (kernel == k.name) {
      MultiplyAddWith(k, a, b, c);
      return true;
    }
  }
  return false;
}

}  // namespace packed_internal

}  // namespace sae
