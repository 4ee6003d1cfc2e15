// Exact TopK selection of the pre-activations x_b . w_j + b_j through a
// bfloat16 screen, for training TopK autoencoders.
//
// A TopK step keeps the k largest of d_hidden pre-activations per row, but
// finding them takes the whole encoder product, the largest part of the
// step (about half of a 784 -> 4096, batch 256 step on the development
// machine). CPUs with AVX512_BF16 multiply bfloat16 pairs at twice the
// float32 rate. Let v_bj be the float32 value (DotProduct below, plus the
// bias) and a_bj the same product with x and W rounded to bfloat16 (x~,
// w~). Then |a_bj - v_bj| <= e_bj, with (Cauchy-Schwarz on the rounding
// errors, the triangle inequality for ||w~||)
//
//   e_bj = ||x_b - x~_b|| (||w_j|| + ||w_j - w~_j||) + ||x_b|| ||w_j - w~_j||
//        + gamma(n) terms for the float32 sums of both products
//        + margins for the bias addition and flushed subnormals.
//
// Any k units reach, at worst, T_b = the least of their a - e, so the k
// largest v are at least T_b; a unit whose a + e is below T_b cannot be
// among them. Taking the k units of largest a, the units that remain (the
// candidates: a few dozen beyond k for typical data) are computed in
// float32 and the top k is chosen among them. The result is the TopK of the
// values v, not an approximation: the screen only decides which values are
// worth computing. Those values are DotProduct's sums, not sgemm's: they
// differ from sgemm's by float rounding, so where two units tie within that
// rounding the screen and a selection over sgemm's values may keep
// different ones.
#ifndef SAE_CORE_TOPK_SCREEN_H_
#define SAE_CORE_TOPK_SCREEN_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace sae {

class TopKScreen {
 public:
  TopKScreen();
  ~TopKScreen();
  TopKScreen(const TopKScreen&) = delete;
  TopKScreen& operator=(const TopKScreen&) = delete;

  // Whether this CPU can run the screen (it has AVX512_BF16).
  static bool Supported();
  // Whether the screen is worth it for `rows` rows of d_in values through
  // d_hidden units keeping k: a large product and k well below d_hidden
  // (Supported() is checked apart).
  static bool Pays(int64_t rows, int64_t d_in, int64_t d_hidden, int64_t k);

  // Whether a caller that selects repeatedly (a training run) should call
  // Select this time: Supported(), Pays(), and unless the last Select found
  // so many candidates (more than d_hidden / 16 a row: values bunched near
  // the k-th, as when a model memorises a few rows) that the full product
  // would have been faster, or refused its inputs, in which case the next
  // kRetryAfter calls say no. Deterministic: it depends only on the calls'
  // inputs.
  bool ShouldSelect(int64_t rows, int64_t d_in, int64_t d_hidden, int64_t k);
  static constexpr int kRetryAfter = 16;

  // For each row b of x [rows, d_in], the k units j (rows of w [d_hidden,
  // d_in]) of largest x_b . w_j + bias[j], ties broken by the lower index,
  // written as SelectTopK writes them: indices in ascending order at
  // indices[b * k ...], max(0, value) at values[b * k ...], where a value is
  // topk_screen_internal::DotProduct(x_b, w_j) + bias[j] in float32.
  //
  // Returns false, having written nothing, when the screen does not run:
  // the CPU lacks AVX512_BF16, k is not in [1, d_hidden], the rows are
  // wider than 2^20 values, or an input value is not finite or exceeds
  // 1e15 in magnitude (where the bound could overflow). The caller then
  // computes the product in full. With no rows, returns Supported() and
  // reads nothing. Deterministic: the result does not depend on the thread
  // count. Uses ParallelFor's threads; not thread-safe (the scratch space
  // is reused from call to call).
  //
  // Memory: the scratch space keeps the bfloat16 products (4 bytes a row
  // and unit, as the full product) and about 20 bytes a candidate; where
  // values bunch so that every unit stays a candidate, that is six times
  // the full product's. ShouldSelect then backs off.
  bool Select(ConstMatrixRef x, ConstMatrixRef w, const float* bias, int64_t k,
              int32_t* indices, float* values);

  // Candidates computed in float32 per row in the last Select that ran:
  // k at best, d_hidden at worst. How much the screen screens.
  double candidates_per_row() const { return candidates_per_row_; }

  // For tests of the bound: every a_bj (bfloat16 product plus bias) and
  // e_bj, as Select computes them, [rows, d_hidden] each (false when the
  // screen would not run).
  bool IntervalsForTesting(ConstMatrixRef x, ConstMatrixRef w, const float* bias,
                           RowMatrix* approx, RowMatrix* bound);

 private:
  // The bfloat16 products plus the bias, and the bound's factors, into the
  // scratch space; false when the screen cannot run on these inputs.
  bool Approximate(ConstMatrixRef x, ConstMatrixRef w, const float* bias);

  struct Scratch;
  std::unique_ptr<Scratch> scratch_;
  double candidates_per_row_ = 0;
  int skips_left_ = 0;  // ShouldSelect's answers of no still to give
};

namespace topk_screen_internal {
// The float32 dot product of n values that Select computes its candidates'
// values with (for tests, which compare the selection with a full one).
// Only where TopKScreen::Supported() (it runs AVX-512 instructions).
float DotProduct(const float* a, const float* b, int64_t n);
}  // namespace topk_screen_internal

}  // namespace sae

#endif  // SAE_CORE_TOPK_SCREEN_H_
