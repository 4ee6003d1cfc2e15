// Activation kernels shared by inference (Model) and training (Objective).
#ifndef SAE_CORE_ACTIVATIONS_H_
#define SAE_CORE_ACTIVATIONS_H_

#include <cstdint>

#include "core/tensor.h"

namespace sae {

// Writes max(0, x) over the matrix.
void ReluInPlace(MatrixRef m);
// Writes 1 / (1 + exp(-x)) over the matrix.
void SigmoidInPlace(MatrixRef m);

// For each row of `pre`, finds the k largest entries (ties broken by the lower
// index) and writes their column indices in ascending order to
// indices[row * k ...] and max(0, value) to values[row * k ...].
// NaNs rank below every other value: a row gets them only when it has fewer
// than k others (the lowest-index NaNs, written as 0).
// Requires 1 <= k <= pre.cols(). Deterministic; O(cols + k log k) per row.
void SelectTopK(ConstMatrixRef pre, int64_t k, int32_t* indices,
                float* values);

// Zeroes all but the k largest entries of each row and applies ReLU to the
// kept ones: the dense form of the TopK activation.
void TopKInPlace(MatrixRef pre, int64_t k);

}  // namespace sae

#endif  // SAE_CORE_ACTIVATIONS_H_
