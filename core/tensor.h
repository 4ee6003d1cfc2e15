// Matrix types shared by the core. Rows are examples, columns are features,
// stored row-major so that a batch of requests maps onto one block of memory.
#ifndef SAE_CORE_TENSOR_H_
#define SAE_CORE_TENSOR_H_

#include <Eigen/Core>

namespace sae {

using RowMatrix =
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::VectorXf;
using RowVector = Eigen::RowVectorXf;

// Read-only view of a row-major matrix (owning matrix, block, or Map over
// request bytes). Rows must be contiguous; the outer stride may be larger.
using ConstMatrixRef =
    Eigen::Ref<const RowMatrix, 0, Eigen::OuterStride<>>;
using MatrixRef = Eigen::Ref<RowMatrix, 0, Eigen::OuterStride<>>;
using ConstMatrixMap =
    Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;

}  // namespace sae

#endif  // SAE_CORE_TENSOR_H_
