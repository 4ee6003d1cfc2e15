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

void SelectTopK(ConstMatrixRef pre, int64_t k, int32_t* indices,
                float* values) {
  const int64_t cols = pre.cols();
  std::vector<Candidate> heap(static_cast<size_t>(k));
  for (Eigen::Index r = 0; r < pre.rows(); ++r) {
    const float* row = pre.row(r).data();
    for (int64_t c = 0; c < k; ++c) {
      heap[c] = {row[c], static_cast<int32_t>(c)};
    }
    // Min-heap on strength: heap.front() is the weakest of the kept ones.
    std::make_heap(heap.begin(), heap.end(), Stronger);
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
    std::sort(heap.begin(), heap.end(),
              [](const Candidate& a, const Candidate& b) {
                return a.index < b.index;
              });
    int32_t* out_idx = indices + r * k;
    float* out_val = values + r * k;
    for (int64_t t = 0; t < k; ++t) {
      out_idx[t] = heap[t].index;
      out_val[t] = std::max(0.0f, heap[t].value);
    }
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
