#include "server/tensor_codec.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace sae::server {

absl::StatusOr<ConstMatrixMap> ViewTensor(const v1::Tensor& tensor, const std::string& field,
                                          const TensorLimits& limits) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
  };
  if (tensor.shape_size() != 1 && tensor.shape_size() != 2) {
    return bad(absl::StrCat("shape must be [rows, columns] or [n], got ", tensor.shape_size(),
                            " dimensions"));
  }
  const int64_t rows = tensor.shape_size() == 2 ? tensor.shape(0) : 1;
  const int64_t cols = tensor.shape(tensor.shape_size() - 1);
  if (rows < 1 || cols < 1) {
    return bad(absl::StrCat("every dimension must be >= 1, got shape [", rows, ", ", cols, "]"));
  }
  if (rows > limits.max_rows) {
    return absl::ResourceExhaustedError(absl::StrCat(
        field, ": ", rows, " rows exceed the server's limit of ", limits.max_rows,
        " rows per request; split the batch or use the streaming call"));
  }
  if (limits.expected_columns >= 0 && cols != limits.expected_columns) {
    return bad(absl::StrCat("rows have ", cols, " values, the model expects ",
                            limits.expected_columns));
  }
  if (cols > (int64_t{1} << 40) / rows) return bad("shape is too large");
  const int64_t count = rows * cols;
  const float* data = nullptr;
  switch (tensor.data_case()) {
    case v1::Tensor::kValues:
      if (tensor.values().values_size() != count) {
        return bad(absl::StrCat("shape [", rows, ", ", cols, "] needs ", count,
                                " values, got ", tensor.values().values_size()));
      }
      data = tensor.values().values().data();
      break;
    case v1::Tensor::kRaw:
      if (static_cast<int64_t>(tensor.raw().size()) != count * 4) {
        return bad(absl::StrCat("shape [", rows, ", ", cols, "] needs ", count * 4,
                                " raw bytes, got ", tensor.raw().size()));
      }
      data = reinterpret_cast<const float*>(tensor.raw().data());
      break;
    default:
      return bad("no values: set values or raw");
  }
  ConstMatrixMap m(data, rows, cols, Eigen::OuterStride<>(cols));
  // x * 0 is 0 for finite x and NaN otherwise: one vectorised pass.
  const float probe = (Eigen::Map<const Eigen::ArrayXf>(data, count) * 0.0f).sum();
  if (probe != 0.0f) {
    for (int64_t i = 0; i < count; ++i) {
      if (!std::isfinite(data[i])) {
        return bad(absl::StrCat("value at row ", i / cols, ", column ", i % cols,
                                " is NaN or Inf; only finite values are accepted"));
      }
    }
  }
  return m;
}

void FillTensor(ConstMatrixRef m, bool raw, v1::Tensor* out) {
  out->clear_shape();
  out->add_shape(m.rows());
  out->add_shape(m.cols());
  const size_t count = static_cast<size_t>(m.rows() * m.cols());
  if (raw) {
    std::string* bytes = out->mutable_raw();
    bytes->resize(count * 4);
    for (Eigen::Index r = 0; r < m.rows(); ++r) {
      std::memcpy(bytes->data() + r * m.cols() * 4, m.row(r).data(), m.cols() * 4);
    }
  } else {
    auto* values = out->mutable_values()->mutable_values();
    values->Resize(static_cast<int>(count), 0.0f);
    for (Eigen::Index r = 0; r < m.rows(); ++r) {
      std::memcpy(values->mutable_data() + r * m.cols(), m.row(r).data(), m.cols() * 4);
    }
  }
}

}  // namespace sae::server
