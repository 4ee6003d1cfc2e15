#include "core/activations.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <utility>
#include <vector>

namespace sae {

void ReluInPlace(MatrixRef m) {
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    m.row(r) = m.row(r).cwiseMax(0.0f);
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

// Writes the k strongest of `heap` (already the k strongest candidates) to
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
void SelectRowWithHeap(const float* row, int64_t cols, int64_t k,
                       std::vector<Candidate>& heap) {
  heap.resize(static_cast<size_t>(k));
  for (int64_t c = 0; c < k; ++c) heap[c] = {row[c], static_cast<int32_t>(c)};
  std::make_heap(heap.begin(), heap.end(), Stronger);  // front = weakest
  float threshold = heap.front().value;
  for (int64_t c = k; c < cols; ++c) {
    // Later columns have larger indices, so a tie never displaces.
    if (row[c] > threshold) {
      std::pop_heap(heap.begin(), heap.end(), Stronger);
      heap.back() = {row[c], static_cast<int32_t>(c)};
      std::push_heap(heap.begin(), heap.end(), Stronger);
      threshold = heap.front().value;
    }
  }
}

// Block-maximum pruning. With T the k-th largest of the per-block maxima,
// at least k values are >= T, so the k-th largest value is >= T and only
// values >= T (found in the few blocks whose maximum reaches T) can be
// among the top k. Exact, including ties (they are all kept as candidates
// and ordered by index). Any split into blocks works; block j here is the
// columns j, j + blocks, j + 2 * blocks, ..., so that all the maxima come
// from element-wise maxima of contiguous slices (vectorised, no horizontal
// reductions).
void SelectRowWithBlocks(const float* row, int64_t cols, int64_t k,
                         std::vector<float>& block_max,
                         std::vector<float>& scratch,
                         std::vector<Candidate>& candidates) {
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  block_max.assign(row, row + blocks);
  Eigen::Map<Eigen::ArrayXf> maxima(block_max.data(), blocks);
  for (int64_t start = blocks; start < cols; start += blocks) {
    const int64_t n = std::min(blocks, cols - start);
    maxima.head(n) = maxima.head(n).max(Eigen::Map<const Eigen::ArrayXf>(row + start, n));
  }
  scratch.assign(block_max.begin(), block_max.end());
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(),
                   std::greater<float>());
  const float bound = scratch[k - 1];
  candidates.clear();
  for (int64_t b = 0; b < blocks; ++b) {
    if (!(block_max[b] >= bound)) continue;
    for (int64_t c = b; c < cols; c += blocks) {
      if (row[c] >= bound) candidates.push_back({row[c], static_cast<int32_t>(c)});
    }
  }
  std::nth_element(candidates.begin(), candidates.begin() + (k - 1),
                   candidates.end(), Stronger);
}

}  // namespace

void SelectTopK(ConstMatrixRef pre, int64_t k, int32_t* indices,
                float* values) {
  const int64_t cols = pre.cols();
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  // Pruning pays when the top k occupy a small share of the blocks.
  const bool use_blocks = k * 4 <= blocks;
  std::vector<Candidate> best;
  std::vector<float> block_max, scratch;
  for (Eigen::Index r = 0; r < pre.rows(); ++r) {
    const float* row = pre.row(r).data();
    if (use_blocks) {
      SelectRowWithBlocks(row, cols, k, block_max, scratch, best);
    } else {
      SelectRowWithHeap(row, cols, k, best);
    }
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
