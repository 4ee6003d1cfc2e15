// Conversions between the API's Tensor message and the core's matrices.
// Decoding validates every field and views the request's bytes without
// copying them; errors are INVALID_ARGUMENT naming the field.
#ifndef SAE_SERVER_TENSOR_CODEC_H_
#define SAE_SERVER_TENSOR_CODEC_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "sae/v1/sae.pb.h"

namespace sae::server {

struct TensorLimits {
  int64_t expected_columns = -1;  // -1: any
  int64_t max_rows = 1 << 20;
};

// A read-only view of a request tensor; valid while the message lives.
// Checks: shape is [rows, cols] or [n] (one row), every dimension >= 1, the
// value count matches the shape, the width matches, rows <= max_rows, all
// values finite.
absl::StatusOr<ConstMatrixMap> ViewTensor(const v1::Tensor& tensor, const std::string& field,
                                          const TensorLimits& limits);

// Fills `out` with `m`, as raw little-endian bytes or as a float list.
void FillTensor(ConstMatrixRef m, bool raw, v1::Tensor* out);

}  // namespace sae::server

#endif  // SAE_SERVER_TENSOR_CODEC_H_
