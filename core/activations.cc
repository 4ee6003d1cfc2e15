#include "core/activations.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace sae {

void ReluInPlace(MatrixRef m) {
  // Plain loops (vectorised by the compiler) instead of Eigen's max here
  // and below: GCC 12 warns about Eigen's AVX-512 max intrinsic.
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    float* row = m.row(r).data();
    for (Eigen::Index c = 0; c < m.cols(); ++c) row[c] = std::max(row[c], 0.0f);
  }
}

void SigmoidInPlace(MatrixRef m) {
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    float* row = m.row(r).data();
    for (Eigen::Index c = 0; c < m.cols(); ++c) {
      row[c] = 1.0f / (1.0f + std::exp(-row[c]));
    }
  }
}

namespace {

// A candidate in the top-k heap: larger value wins, then smaller index.
struct Candidate {
  float value;
  int32_t index;
};
// Orders the heap so that its front is the weakest kept candidate.
inline bool Stronger(const Candidate& a, const Candidate& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

}  // namespace

namespace {

constexpr int64_t kBlock = 16;

// Writes the k strongest of `best` (already the k strongest candidates) to
// the outputs in ascending index order.
void EmitSorted(std::vector<Candidate>& best, int64_t k, int32_t* out_idx,
                float* out_val) {
  std::sort(best.begin(), best.begin() + k,
            [](const Candidate& a, const Candidate& b) { return a.index < b.index; });
  for (int64_t t = 0; t < k; ++t) {
    out_idx[t] = best[t].index;
    out_val[t] = std::max(0.0f, best[t].value);
  }
}

// Streaming selection with a size-k min-heap: O(cols + k log k log cols).
// NaNs are passed over; when fewer than k values are not NaN, the
// lowest-index NaNs make up the rest.
void SelectRowWithHeap(const float* row, int64_t cols, int64_t k,
                       std::vector<Candidate>& heap) {
  heap.clear();
  int64_t c = 0;
  for (; c < cols && static_cast<int64_t>(heap.size()) < k; ++c) {
    if (!std::isnan(row[c])) heap.push_back({row[c], static_cast<int32_t>(c)});
  }
  if (static_cast<int64_t>(heap.size()) < k) {
    for (int64_t n = 0; n < cols && static_cast<int64_t>(heap.size()) < k; ++n) {
      if (std::isnan(row[n])) heap.push_back({row[n], static_cast<int32_t>(n)});
    }
    return;
  }
  std::make_heap(heap.begin(), heap.end(), Stronger);  // front = weakest
  float threshold = heap.front().value;
  for (; c < cols; ++c) {
    // Later columns have larger indices, so a tie never displaces; a NaN
    // compares false.
    if (row[c] > threshold) {
      std::pop_heap(heap.begin(), heap.end(), Stronger);
      heap.back() = {row[c], static_cast<int32_t>(c)};
      std::push_heap(heap.begin(), heap.end(), Stronger);
      threshold = heap.front().value;
    }
  }
}

// Maps a float that is not NaN to an int32 whose signed order is the
// float's order.
inline int32_t OrderedKey(float v) {
  int32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits ^ ((bits >> 31) & 0x7fffffff);
}

inline float FromOrderedKey(int32_t key) {
  const int32_t bits = key ^ ((key >> 31) & 0x7fffffff);
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// The k-th largest of keys[0, n) (1 <= k <= n), by binary search on the key
// value: each probe is one vectorised counting pass, so no data moves.
int32_t KthLargestKey(const int32_t* keys, int64_t n, int64_t k) {
  int64_t lo = std::numeric_limits<int32_t>::min();  // count(>= lo) >= k
  int64_t hi = static_cast<int64_t>(std::numeric_limits<int32_t>::max()) + 1;  // count(>= hi) < k
  while (hi - lo > 1) {
    const int32_t mid = static_cast<int32_t>(lo + (hi - lo) / 2);
    int32_t count = 0;
    for (int64_t i = 0; i < n; ++i) count += keys[i] >= mid;
    if (count >= k) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return static_cast<int32_t>(lo);
}

// Appends every column c of row with row[c] >= bound, in ascending order.
void AppendAtLeast(const float* row, int64_t cols, float bound,
                   std::vector<Candidate>& out) {
  int64_t c = 0;
#if defined(__AVX512F__)
  const __m512 b = _mm512_set1_ps(bound);
  for (; c + 16 <= cols; c += 16) {
    uint32_t mask = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + c), b, _CMP_GE_OQ);
    for (; mask != 0; mask &= mask - 1) {
      const int64_t i = c + __builtin_ctz(mask);
      out.push_back({row[i], static_cast<int32_t>(i)});
    }
  }
#elif defined(__AVX__)
  const __m256 b = _mm256_set1_ps(bound);
  for (; c + 8 <= cols; c += 8) {
    uint32_t mask = static_cast<uint32_t>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + c), b, _CMP_GE_OQ)));
    for (; mask != 0; mask &= mask - 1) {
      const int64_t i = c + __builtin_ctz(mask);
      out.push_back({row[i], static_cast<int32_t>(i)});
    }
  }
#endif
  for (; c < cols; ++c) {
    if (row[c] >= bound) out.push_back({row[c], static_cast<int32_t>(c)});
  }
}

// Block-maximum pruning. With T the k-th largest of the per-block maxima,
// at least k values are >= T, so the k-th largest value is >= T and only
// values >= T can be among the top k. Any split into blocks works; block j
// here is the columns j, j + blocks, j + 2 * blocks, ..., so that all the
// maxima come from element-wise maxima of contiguous slices (vectorised, no
// horizontal reductions). The candidates (values >= T) are then gathered in
// one vectorised pass, in ascending column order, and the k strongest kept
// in that order: ties at the k-th value go to the lower index.
// Returns false, having written nothing, when fewer than k values compare
// >= T (only possible with NaNs in the row).
bool SelectRowWithBlocks(const float* row, int64_t cols, int64_t k,
                         std::vector<float>& block_max,
                         std::vector<int32_t>& keys,
                         std::vector<Candidate>& candidates, int32_t* out_idx,
                         float* out_val) {
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  block_max.assign(row, row + blocks);
  float* maxima = block_max.data();
  for (int64_t start = blocks; start < cols; start += blocks) {
    const int64_t n = std::min(blocks, cols - start);
    const float* slice = row + start;
    for (int64_t b = 0; b < n; ++b) maxima[b] = std::max(maxima[b], slice[b]);
  }
  keys.resize(static_cast<size_t>(blocks));
  // A NaN that starts a block stays its maximum (std::max keeps its first
  // argument when they do not compare): such a block ranks lowest, so the
  // bound comes from real maxima, or is -inf when there are too few.
  const int32_t lowest = OrderedKey(-std::numeric_limits<float>::infinity());
  for (int64_t b = 0; b < blocks; ++b) {
    keys[b] = std::isnan(block_max[b]) ? lowest : OrderedKey(block_max[b]);
  }
  const float bound = FromOrderedKey(KthLargestKey(keys.data(), blocks, k));
  candidates.clear();
  AppendAtLeast(row, cols, bound, candidates);
  const int64_t n = static_cast<int64_t>(candidates.size());
  if (n < k) return false;
  // kth: the k-th largest candidate value; all above it are kept, and the
  // first `at_kth` equal to it.
  float kth = bound;
  if (n > k) {
    block_max.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) block_max[i] = candidates[i].value;
    std::nth_element(block_max.begin(), block_max.begin() + (k - 1),
                     block_max.end(), std::greater<float>());
    kth = block_max[k - 1];
  }
  int64_t above = 0;
  for (const Candidate& c : candidates) above += c.value > kth;
  int64_t at_kth = k - above;
  int64_t t = 0;
  for (const Candidate& c : candidates) {
    if (c.value > kth || (c.value == kth && at_kth-- > 0)) {
      out_idx[t] = c.index;
      out_val[t] = std::max(0.0f, c.value);
      ++t;
    }
  }
  return t == k;
}

}  // namespace

void SelectTopK(ConstMatrixRef pre, int64_t k, int32_t* indices,
                float* values) {
  const int64_t cols = pre.cols();
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  // Pruning pays when the top k occupy a small share of the blocks.
  const bool use_blocks = k * 4 <= blocks;
  std::vector<Candidate> best;
  std::vector<float> block_max;
  std::vector<int32_t> keys;
  for (Eigen::Index r = 0; r < pre.rows(); ++r) {
    const float* row = pre.row(r).data();
    if (use_blocks && SelectRowWithBlocks(row, cols, k, block_max, keys, best,
                                          indices + r * k, values + r * k)) {
      continue;
    }
    SelectRowWithHeap(row, cols, k, best);
    EmitSorted(best, k, indices + r * k, values + r * k);
  }
}

void TopKInPlace(MatrixRef pre, int64_t k) {
  std::vector<int32_t> idx(static_cast<size_t>(k));
  std::vector<float> val(static_cast<size_t>(k));
  for (Eigen::Index r = 0; r < pre.rows(); ++r) {
    SelectTopK(pre.row(r), k, idx.data(), val.data());
    pre.row(r).setZero();
    for (int64_t t = 0; t < k; ++t) pre(r, idx[t]) = val[t];
  }
}

}  // namespace sae
