#include "core/topk_screen.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <new>
#include <numeric>

#include "core/activations.h"
#include "core/lane_masks.h"
#include "core/parallel.h"

namespace sae {
namespace {

constexpr int64_t kPanel = 32;     // rows of x per panel: two zmm of float32 sums
constexpr int64_t kTileRows = 12;  // units per kernel call: 24 accumulators
constexpr int64_t kDotGroup = 4;   // candidates of one unit computed together
// Inputs beyond this magnitude are not screened: products stay below 1e30
// and sums of up to 2^20 of them below float's range, so no bound overflows.
constexpr float kMaxMagnitude = 1e15f;
// Rows wider than this are not screened (gamma(n) below assumes n 2^-23
// well below 1, and the overflow argument above 2^20 terms).
constexpr int64_t kMaxWidth = int64_t{1} << 20;
// The part of the bound proportional to |a|: covers the rounding of the
// bias addition and of a -/+ e.
constexpr float kRelative = 0x1p-20f;

// The bound e on |a - v| for a unit (see Approximate), in float32, as
// Gather's vector form computes it (any rounding of it is absorbed by the
// margins the factors carry).
inline float Bound(float a, float alpha, float tilde, float beta, float err, float slack) {
  float e = alpha * tilde;
  e = e + beta * err;
  e = e + kRelative * std::abs(a);
  return e + slack;
}

struct FreeAligned {
  void operator()(uint32_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
};
using AlignedWords = std::unique_ptr<uint32_t[], FreeAligned>;

void Reserve(AlignedWords& buffer, size_t& capacity, size_t words) {
  if (words <= capacity) return;
  buffer.reset(static_cast<uint32_t*>(
      ::operator new[](words * sizeof(uint32_t), std::align_val_t(64))));
  capacity = words;
}

// What the bound needs of one row of x or w: upper bounds on the norm of
// its values and on the norm of their bfloat16 rounding errors.
struct RowNorms {
  double norm = 0;
  double err_norm = 0;
  bool bounded = true;  // every value finite and within kMaxMagnitude
};

// An upper bound on sqrt(sum of squares) from a float sum of n squares:
// the sum's relative error stays below n 2^-23, and squares that fell
// into the subnormal range or below lost at most 2^-126 each.
double NormBound(float sum_of_squares, int64_t n) {
  const double dn = static_cast<double>(n);
  return std::sqrt(static_cast<double>(sum_of_squares) * (1.0 + dn * 0x1p-23) + dn * 0x1p-126);
}

#if defined(__x86_64__)
#define SAE_BF16_TARGET __attribute__((target("avx512f,avx512bf16")))

// (The masked forms of the intrinsics below, with every lane set, avoid
// GCC 12's maybe-uninitialized warnings about the plain ones' headers.)
constexpr __mmask16 kAll = 0xFFFF;

SAE_BF16_TARGET inline __m512 WordsToFloats(__m256i words) {
  return _mm512_castsi512_ps(
      _mm512_maskz_slli_epi32(kAll, _mm512_maskz_cvtepu16_epi32(kAll, words), 16));
}

// The sum of the 16 lanes, in a fixed order.
SAE_BF16_TARGET inline float SumLanes(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  for (int width = 8; width >= 1; width /= 2) {
    for (int i = 0; i < width; ++i) lanes[i] += lanes[i + width];
  }
  return lanes[0];
}

// Rounds the n floats at src to bfloat16 (nearest even), stored as
// (n + 1) / 2 words of two values each, the first in the low half (as the
// dot-product instruction pairs them), the odd tail padded with zero.
SAE_BF16_TARGET RowNorms ConvertRow(const float* src, int64_t n, uint32_t* dst) {
  __m512 sq0 = _mm512_setzero_ps(), sq1 = _mm512_setzero_ps();
  __m512 err0 = _mm512_setzero_ps(), err1 = _mm512_setzero_ps();
  const __m512 limit = _mm512_set1_ps(kMaxMagnitude);
  __mmask16 unbounded = 0;
  const int64_t pairs = (n + 1) / 2;
  for (int64_t i = 0; i < n; i += 32) {
    const int64_t left = n - i;
    const __mmask16 m0 = FirstLanes(left), m1 = FirstLanes(left - 16);
    const __m512 a = _mm512_maskz_loadu_ps(m0, src + i);
    const __m512 b = _mm512_maskz_loadu_ps(m1, src + i + 16);
    unbounded |= m0 & ~_mm512_cmp_ps_mask(_mm512_abs_ps(a), limit, _CMP_LE_OQ);
    unbounded |= m1 & ~_mm512_cmp_ps_mask(_mm512_abs_ps(b), limit, _CMP_LE_OQ);
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // a's values in the low half
    const __m512 da = _mm512_sub_ps(a, WordsToFloats(_mm512_maskz_extracti64x4_epi64(0xF, h, 0)));
    const __m512 db = _mm512_sub_ps(b, WordsToFloats(_mm512_maskz_extracti64x4_epi64(0xF, h, 1)));
    sq0 = _mm512_fmadd_ps(a, a, sq0);
    sq1 = _mm512_fmadd_ps(b, b, sq1);
    err0 = _mm512_fmadd_ps(da, da, err0);
    err1 = _mm512_fmadd_ps(db, db, err1);
    _mm512_mask_storeu_epi32(dst + i / 2, FirstLanes(pairs - i / 2), h);
  }
  const float sq = SumLanes(_mm512_add_ps(sq0, sq1));
  const float err = SumLanes(_mm512_add_ps(err0, err1));
  RowNorms norms;
  norms.bounded = unbounded == 0 && std::isfinite(sq);
  norms.norm = NormBound(sq, n);
  norms.err_norm = NormBound(err, n);
  return norms;
}

// For kTileRows units (their weights' bfloat16 pairs at w, `pairs` words
// apart) and a panel of 32 rows of x (pairs x 32 words, pair-major), the
// 12 x 32 float32 sums of exact bfloat16 products, plus each unit's bias,
// written to out[r * ldo + u] for the `rows` rows and `units` units that
// exist (the caller pads w and the panel with zeros).
SAE_BF16_TARGET void Tile(const uint32_t* w, int64_t pairs, const uint32_t* panel,
                          const float* bias, float* out, int64_t ldo, int64_t units,
                          int64_t rows) {
  __m512 acc[kTileRows][2];
  for (auto& unit : acc) unit[0] = unit[1] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < pairs; ++kp) {
    const __m512bh x0 = (__m512bh)_mm512_load_si512(panel + kp * kPanel);
    const __m512bh x1 = (__m512bh)_mm512_load_si512(panel + kp * kPanel + 16);
#pragma GCC unroll 12
    for (int64_t u = 0; u < kTileRows; ++u) {
      const __m512bh wv = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[u * pairs + kp]));
      acc[u][0] = _mm512_dpbf16_ps(acc[u][0], wv, x0);
      acc[u][1] = _mm512_dpbf16_ps(acc[u][1], wv, x1);
    }
  }
  alignas(64) float sums[kTileRows][kPanel];
  for (int64_t u = 0; u < kTileRows; ++u) {
    const __m512 b = _mm512_set1_ps(u < units ? bias[u] : 0.0f);
    _mm512_store_ps(sums[u], _mm512_add_ps(acc[u][0], b));
    _mm512_store_ps(sums[u] + 16, _mm512_add_ps(acc[u][1], b));
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t u = 0; u < units; ++u) out[r * ldo + u] = sums[u][r];
  }
}

// Appends to `out` the units j in [0, n) whose interval reaches
// `threshold`: a[j] + e_j >= threshold with e_j = alpha tilde[j] +
// beta err[j] + 2^-20 |a[j]| + slack (see Select). Returns how many, in
// ascending order; out needs room for n + 16.
SAE_BF16_TARGET int64_t Gather(const float* a, const float* tilde, const float* err, float alpha,
                               float beta, float slack, int64_t n, float threshold,
                               int32_t* out) {
  const __m512 t = _mm512_set1_ps(threshold), va = _mm512_set1_ps(alpha),
               vb = _mm512_set1_ps(beta), vs = _mm512_set1_ps(slack),
               rel = _mm512_set1_ps(kRelative);
  __m512i j = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i sixteen = _mm512_set1_epi32(16);
  int64_t count = 0;
  for (int64_t i = 0; i < n; i += 16, j = _mm512_add_epi32(j, sixteen)) {
    const __mmask16 valid = FirstLanes(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(valid, a + i);
    // As Bound() computes it.
    __m512 e = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(valid, tilde + i));
    e = _mm512_add_ps(e, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(valid, err + i)));
    e = _mm512_add_ps(e, _mm512_mul_ps(rel, _mm512_abs_ps(v)));
    e = _mm512_add_ps(e, vs);
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(valid, _mm512_add_ps(v, e), t, _CMP_GE_OQ);
    if (hit == 0) continue;
    // Compress into a register, then store whole: the memory form of the
    // compress is slow on some CPUs.
    _mm512_storeu_si512(out + count, _mm512_maskz_compress_epi32(hit, j));
    count += __builtin_popcount(hit);
  }
  return count;
}

// rows[g] . w for G rows of n floats, each summed as DotProduct sums it
// (the same operations in the same order), sharing the loads of w.
template <int G>
SAE_BF16_TARGET inline void Dots(const float* const* rows, const float* w, int64_t n,
                                 float* out) {
  __m512 even[G], odd[G];
  for (int g = 0; g < G; ++g) even[g] = odd[g] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 w0 = _mm512_loadu_ps(w + i), w1 = _mm512_loadu_ps(w + i + 16);
    for (int g = 0; g < G; ++g) {
      even[g] = _mm512_fmadd_ps(_mm512_loadu_ps(rows[g] + i), w0, even[g]);
      odd[g] = _mm512_fmadd_ps(_mm512_loadu_ps(rows[g] + i + 16), w1, odd[g]);
    }
  }
  for (; i < n; i += 16) {
    const __mmask16 m = FirstLanes(n - i);
    const __m512 wv = _mm512_maskz_loadu_ps(m, w + i);
    for (int g = 0; g < G; ++g) {
      even[g] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, rows[g] + i), wv, even[g]);
    }
  }
  for (int g = 0; g < G; ++g) out[g] = SumLanes(_mm512_add_ps(even[g], odd[g]));
}
#endif  // __x86_64__

// Rounds a non-negative bound up a little, to absorb the float rounding of
// the arithmetic that uses it.
float Inflate(double v) { return static_cast<float>(v * (1.0 + 0x1p-10)); }

}  // namespace

namespace topk_screen_internal {
float DotProduct(const float* a, const float* b, int64_t n) {
  float out = 0;
#if defined(__x86_64__)
  Dots<1>(&a, b, n, &out);
#endif
  return out;
}
}  // namespace topk_screen_internal

namespace {

struct Candidate {
  float value;
  int32_t unit;
};

#if defined(__x86_64__)
// For units [j0, j1): *out[e] = DotProduct(x_row(e), w_j) + bias[j] for
// each entry e of unit j (unit_start[j] <= e < unit_start[j + 1], row
// entry_row[e]), so that each unit's weights are read once for all the
// rows that need them, kDotGroup rows at a time.
void ExactValues(ConstMatrixRef x, ConstMatrixRef w, const float* bias,
                 const int64_t* unit_start, const int32_t* entry_row, float* const* out,
                 int64_t j0, int64_t j1) {
  const int64_t d_in = x.cols();
  for (int64_t j = j0; j < j1; ++j) {
    const float* wj = w.row(j).data();
    const int64_t end = unit_start[j + 1];
    for (int64_t i = unit_start[j]; i < end; i += kDotGroup) {
      const int64_t group = std::min(kDotGroup, end - i);
      const float* group_rows[kDotGroup];
      float dots[kDotGroup];
      for (int64_t g = 0; g < group; ++g) group_rows[g] = x.row(entry_row[i + g]).data();
      switch (group) {
        case 4: Dots<4>(group_rows, wj, d_in, dots); break;
        case 3: Dots<3>(group_rows, wj, d_in, dots); break;
        case 2: Dots<2>(group_rows, wj, d_in, dots); break;
        default: Dots<1>(group_rows, wj, d_in, dots); break;
      }
      for (int64_t g = 0; g < group; ++g) *out[i + g] = dots[g] + bias[j];
    }
  }
}
#endif  // __x86_64__

}  // namespace

struct TopKScreen::Scratch {
  AlignedWords x_panels;  // x as panels of 32 rows, pair-major
  size_t x_capacity = 0;
  std::vector<RowNorms> x_norms, w_norms;
  RowMatrix approx;  // the bfloat16 products plus the bias [rows, d_hidden]
  std::vector<float> row_err, row_scale;  // per row, per unit: the bound's factors
  std::vector<float> unit_tilde, unit_err;
  std::vector<std::vector<int32_t>> candidates;  // per row, ascending units
  std::vector<std::vector<float>> exact;         // per row, their float32 values
  std::vector<int64_t> unit_start;               // the candidates grouped by unit:
  std::vector<int32_t> entry_row;                //   their rows
  std::vector<float*> entry_out;                 //   and their places in `exact`
  float slack = 0;                               // the bound's constant term
};

TopKScreen::TopKScreen() : scratch_(std::make_unique<Scratch>()) {}
TopKScreen::~TopKScreen() = default;

bool TopKScreen::Supported() {
#if defined(__x86_64__)
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  }();
  return supported;
#else
  return false;
#endif
}

bool TopKScreen::Pays(int64_t rows, int64_t d_in, int64_t d_hidden, int64_t k) {
  return d_in >= 32 && d_hidden >= 8 * k && rows * d_in * d_hidden >= (int64_t{1} << 22);
}

bool TopKScreen::ShouldSelect(int64_t rows, int64_t d_in, int64_t d_hidden, int64_t k) {
  if (!Supported() || !Pays(rows, d_in, d_hidden, k)) return false;
  if (skips_left_ > 0) {
    --skips_left_;
    return false;
  }
  return true;
}

bool TopKScreen::Approximate(ConstMatrixRef x, ConstMatrixRef w, const float* bias) {
#if !defined(__x86_64__)
  return false;
#else
  if (!Supported() || x.cols() != w.cols() || x.cols() > kMaxWidth) return false;
  Scratch& s = *scratch_;
  const int64_t rows = x.rows(), d_in = x.cols(), d_h = w.rows();
  const int64_t pairs = (d_in + 1) / 2;
  const int64_t row_panels = (rows + kPanel - 1) / kPanel;

  // x to bfloat16 pairs, as panels of 32 rows (the last padded with zeros)
  // in which each pair's 32 words are contiguous, with its norms.
  Reserve(s.x_panels, s.x_capacity, static_cast<size_t>(row_panels * kPanel * pairs));
  s.x_norms.resize(static_cast<size_t>(rows));
  ParallelFor(row_panels, 1, [&](int, int64_t p0, int64_t p1) {
    std::vector<uint32_t> panel_rows(static_cast<size_t>(kPanel * pairs));
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t r = 0; r < kPanel; ++r) {
        const int64_t b = p * kPanel + r;
        uint32_t* row = panel_rows.data() + r * pairs;
        if (b < rows) {
          s.x_norms[b] = ConvertRow(x.row(b).data(), d_in, row);
        } else {
          std::fill(row, row + pairs, 0u);
        }
      }
      uint32_t* __restrict panel = s.x_panels.get() + p * kPanel * pairs;
      const uint32_t* __restrict from = panel_rows.data();
      for (int64_t kp = 0; kp < pairs; ++kp) {
        for (int64_t r = 0; r < kPanel; ++r) panel[kp * kPanel + r] = from[r * pairs + kp];
      }
    }
  });
  const auto unbounded = [](const RowNorms& n) { return !n.bounded; };
  if (std::any_of(s.x_norms.begin(), s.x_norms.end(), unbounded) ||
      !std::all_of(bias, bias + d_h,
                   [](float b) { return std::isfinite(b) && std::abs(b) <= kMaxMagnitude; })) {
    return false;
  }

  // The bfloat16 products plus the bias, kTileRows units at a time: their
  // weights are converted into a buffer that stays in L1 while every panel
  // of x passes.
  const int64_t unit_tiles = (d_h + kTileRows - 1) / kTileRows;
  s.w_norms.resize(static_cast<size_t>(d_h));
  if (s.approx.rows() != rows || s.approx.cols() != d_h) s.approx.resize(rows, d_h);
  ParallelFor(unit_tiles, 1, [&](int, int64_t t0, int64_t t1) {
    std::vector<uint32_t> tile_rows(static_cast<size_t>(kTileRows * pairs));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j0 = t * kTileRows, units = std::min(kTileRows, d_h - j0);
      for (int64_t u = 0; u < kTileRows; ++u) {
        uint32_t* row = tile_rows.data() + u * pairs;
        if (u < units) {
          s.w_norms[j0 + u] = ConvertRow(w.row(j0 + u).data(), d_in, row);
        } else {
          std::fill(row, row + pairs, 0u);
        }
      }
      for (int64_t p = 0; p < row_panels; ++p) {
        Tile(tile_rows.data(), pairs, s.x_panels.get() + p * kPanel * pairs, bias + j0,
             s.approx.data() + p * kPanel * d_h + j0, d_h, units,
             std::min(kPanel, rows - p * kPanel));
      }
    }
  });
  if (std::any_of(s.w_norms.begin(), s.w_norms.end(), unbounded)) return false;

  // The bound e_bj = row_err[b] * unit_tilde[j] + row_scale[b] * unit_err[j]
  //                 + 2^-20 |a_bj| + slack (Bound),
  // from |x~ w~ - x w| <= ||x - x~|| ||w~|| + ||x|| ||w - w~||, with
  // ||w~|| <= ||w|| + ||w - w~||. row_err also carries gamma(n) ||x~||
  // for the float32 sum of n bfloat16 products and gamma(n) ||x|| for the
  // float32 dot product the candidates are valued by (n u / (1 - n u),
  // u = 2^-23 to allow any rounding): so e bounds |a - that value|; 2^-20 |a| covers the bias addition and the rounding of
  // a -/+ e; the slack covers subnormals flushed to zero by the
  // dot-product instruction (at most 2^-126 * kMaxMagnitude a product,
  // 2^-126 a sum).
  const double n = static_cast<double>(2 * pairs);
  const double gamma = n * 0x1p-23 / (1.0 - n * 0x1p-23);
  const float slack = static_cast<float>(n * 0x1p-70);
  s.row_err.resize(static_cast<size_t>(rows));
  s.row_scale.resize(static_cast<size_t>(rows));
  for (int64_t b = 0; b < rows; ++b) {
    const RowNorms& r = s.x_norms[b];
    s.row_err[b] = Inflate(r.err_norm + 2 * gamma * (r.norm + r.err_norm));
    s.row_scale[b] = Inflate(r.norm);
  }
  s.unit_tilde.resize(static_cast<size_t>(d_h));
  s.unit_err.resize(static_cast<size_t>(d_h));
  for (int64_t j = 0; j < d_h; ++j) {
    s.unit_tilde[j] = Inflate(s.w_norms[j].norm + s.w_norms[j].err_norm);
    s.unit_err[j] = Inflate(s.w_norms[j].err_norm);
  }

  s.slack = slack;
  return true;
#endif
}

bool TopKScreen::IntervalsForTesting(ConstMatrixRef x, ConstMatrixRef w, const float* bias,
                                     RowMatrix* approx, RowMatrix* bound) {
  if (!Approximate(x, w, bias)) return false;
  const Scratch& s = *scratch_;
  *approx = s.approx;
  bound->resize(approx->rows(), approx->cols());
  for (Eigen::Index b = 0; b < approx->rows(); ++b) {
    for (Eigen::Index j = 0; j < approx->cols(); ++j) {
      (*bound)(b, j) = Bound((*approx)(b, j), s.row_err[b], s.unit_tilde[j], s.row_scale[b],
                             s.unit_err[j], s.slack);
    }
  }
  return true;
}

bool TopKScreen::Select(ConstMatrixRef x, ConstMatrixRef w, const float* bias, int64_t k,
                        int32_t* indices, float* values) {
#if !defined(__x86_64__)
  return false;
#else
  const int64_t rows = x.rows(), d_h = w.rows();
  if (k < 1 || k > d_h) return false;
  if (rows == 0) return Supported();
  if (!Approximate(x, w, bias)) {
    // Inputs it cannot bound (weights beyond kMaxMagnitude stay so for
    // many steps): ShouldSelect says no for a while rather than pay for
    // the conversions again at every step.
    skips_left_ = kRetryAfter;
    return false;
  }
  Scratch& s = *scratch_;
  const float slack = s.slack;

  // Per row: the k units S of largest a; T, the least lower end a - e
  // among them, which the top k provably reach; and the candidates, units
  // whose upper end a + e reaches T (S among them).
  s.candidates.resize(static_cast<size_t>(rows));
  ParallelFor(rows, 16, [&](int, int64_t r0, int64_t r1) {
    SelectTopK(s.approx.middleRows(r0, r1 - r0), k, indices + r0 * k, values + r0 * k);
    std::vector<int32_t> found(static_cast<size_t>(d_h + 16));  // room for Gather's last store
    for (int64_t b = r0; b < r1; ++b) {
      const float* a = s.approx.row(b).data();
      const float alpha = s.row_err[b], beta = s.row_scale[b];
      float threshold = std::numeric_limits<float>::infinity();
      for (int64_t i = 0; i < k; ++i) {
        const int32_t j = indices[b * k + i];
        threshold = std::min(
            threshold, a[j] - Bound(a[j], alpha, s.unit_tilde[j], beta, s.unit_err[j], slack));
      }
      const int64_t count = Gather(a, s.unit_tilde.data(), s.unit_err.data(), alpha, beta, slack,
                                   d_h, threshold, found.data());
      s.candidates[b].assign(found.begin(), found.begin() + count);
    }
  });

  // Their float32 values, unit by unit, the threads splitting the units so
  // that each unit's weights are read once in all.
  s.exact.resize(static_cast<size_t>(rows));
  s.unit_start.assign(static_cast<size_t>(d_h) + 1, 0);
  int64_t total = 0;
  for (int64_t b = 0; b < rows; ++b) {
    for (int32_t j : s.candidates[b]) ++s.unit_start[j + 1];
    total += static_cast<int64_t>(s.candidates[b].size());
    s.exact[b].resize(s.candidates[b].size());
  }
  std::partial_sum(s.unit_start.begin(), s.unit_start.end(), s.unit_start.begin());
  s.entry_row.resize(static_cast<size_t>(total));
  s.entry_out.resize(static_cast<size_t>(total));
  {
    std::vector<int64_t> fill(s.unit_start.begin(), s.unit_start.end() - 1);
    for (int64_t b = 0; b < rows; ++b) {
      const std::vector<int32_t>& cand = s.candidates[b];
      for (size_t slot = 0; slot < cand.size(); ++slot) {
        const int64_t e = fill[cand[slot]]++;
        s.entry_row[e] = static_cast<int32_t>(b);
        s.entry_out[e] = &s.exact[b][slot];
      }
    }
  }
  ParallelFor(d_h, 64, [&](int, int64_t j0, int64_t j1) {
    ExactValues(x, w, bias, s.unit_start.data(), s.entry_row.data(), s.entry_out.data(), j0, j1);
  });

  // Per row, the top k of the candidates, by value, then by the lower index.
  ParallelFor(rows, 16, [&](int, int64_t r0, int64_t r1) {
    std::vector<Candidate> pool;
    for (int64_t b = r0; b < r1; ++b) {
      const std::vector<int32_t>& cand = s.candidates[b];
      pool.clear();
      for (size_t i = 0; i < cand.size(); ++i) pool.push_back({s.exact[b][i], cand[i]});
      const auto stronger = [](const Candidate& p, const Candidate& q) {
        return p.value > q.value || (p.value == q.value && p.unit < q.unit);
      };
      std::nth_element(pool.begin(), pool.begin() + (k - 1), pool.end(), stronger);
      std::sort(pool.begin(), pool.begin() + k,
                [](const Candidate& p, const Candidate& q) { return p.unit < q.unit; });
      for (int64_t i = 0; i < k; ++i) {
        indices[b * k + i] = pool[i].unit;
        values[b * k + i] = std::max(0.0f, pool[i].value);  // +0 for -0, as SelectTopK
      }
    }
  });
  const int64_t candidates = total;
  candidates_per_row_ = static_cast<double>(candidates) / static_cast<double>(rows);
  if (candidates_per_row_ > static_cast<double>(d_h) / 16) skips_left_ = kRetryAfter;
  return true;
#endif
}

}  // namespace sae
