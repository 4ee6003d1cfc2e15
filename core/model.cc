#include "core/model.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/activations.h"
#include "core/blas.h"
#include "core/packed_gemm.h"

namespace sae {
namespace {

// Rows per internal chunk: bounds the scratch memory of one call to
// kChunkRows * d_hidden floats however large the request.
constexpr Eigen::Index kChunkRows = 256;

absl::Status CheckShape(const char* name, Eigen::Index rows, Eigen::Index cols,
                        int64_t want_rows, int64_t want_cols) {
  if (rows != want_rows || cols != want_cols) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights.", name, " has shape [", rows, ", ", cols,
                     "], expected [", want_rows, ", ", want_cols, "]"));
  }
  return absl::OkStatus();
}

// x * 0 is 0 for every finite x and NaN for +-Inf and NaN, so one vectorised
// sum tells whether all are finite (Eigen's allFinite is scalar here, and
// this check runs over every weight of every model loaded).
template <typename Derived>
absl::Status CheckFinite(const char* name, const Eigen::PlainObjectBase<Derived>& m) {
  const float probe =
      m.size() == 0 ? 0.0f
                    : (Eigen::Map<const Eigen::ArrayXf>(m.data(), m.size()) * 0.0f).sum();
  if (probe != 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights.", name, " holds NaN or Inf"));
  }
  return absl::OkStatus();
}

}  // namespace

Model::Model(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {}

Model::~Model() = default;

void Model::MultiplyAddWeights(ConstMatrixRef a, const RowMatrix& w, LazyPacked& lazy,
                               MatrixRef out) const {
  if (a.rows() > kSmallBatchMaxRows) {
    Gemm(Transpose::kNo, Transpose::kNo, 1.0f, a, w, 1.0f, out);
    return;
  }
  MultiplyAddPacked(a, Packed(w, lazy), out);
}

const PackedMatrix& Model::Packed(const RowMatrix& w, LazyPacked& lazy) {
  std::call_once(lazy.once, [&] { lazy.packed = std::make_unique<PackedMatrix>(w); });
  return *lazy.packed;
}

void Model::PrepareSmallBatchWeights() const {
  Packed(weights_.w_enc, packed_enc_);
  Packed(weights_.w_dec, packed_dec_);
}

absl::StatusOr<std::shared_ptr<const Model>> Model::Create(
    ModelConfig config, ModelWeights weights) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  const int64_t d_in = config.d_in, d_h = config.d_hidden;
  for (absl::Status s :
       {CheckShape("W_enc", weights.w_enc.rows(), weights.w_enc.cols(), d_in, d_h),
        CheckShape("b_enc", weights.b_enc.size(), 1, d_h, 1),
        CheckShape("W_dec", weights.w_dec.rows(), weights.w_dec.cols(), d_h, d_in),
        CheckShape("b_dec", weights.b_dec.size(), 1, d_in, 1),
        CheckFinite("W_enc", weights.w_enc), CheckFinite("b_enc", weights.b_enc),
        CheckFinite("W_dec", weights.w_dec), CheckFinite("b_dec", weights.b_dec),
        CheckFinite("threshold", weights.threshold),
        CheckShape("threshold", weights.threshold.size(), 1,
                   config.activation == Activation::kJumpRelu ? d_h : 0, 1)}) {
    if (!s.ok()) return s;
  }
  return std::shared_ptr<const Model>(
      new Model(std::move(config), std::move(weights)));
}

absl::Status Model::CheckInput(ConstMatrixRef x, int64_t width,
                               const char* what) const {
  if (x.cols() != width) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " has ", x.cols(), " columns, the model expects ", width));
  }
  return absl::OkStatus();
}

void Model::PreActivations(ConstMatrixRef x, MatrixRef pre) const {
  const float s = config_.input_scale;
  RowMatrix centered =
      (x * s).rowwise() - weights_.b_dec.transpose();
  pre.rowwise() = weights_.b_enc.transpose();
  MultiplyAddWeights(centered, weights_.w_enc, packed_enc_, pre);
}

void Model::ApplyDenseActivation(MatrixRef pre) const {
  switch (config_.activation) {
    case Activation::kRelu:
      ReluInPlace(pre);
      break;
    case Activation::kSigmoid:
      SigmoidInPlace(pre);
      break;
    case Activation::kTopK:
      TopKInPlace(pre, config_.k);
      break;
    case Activation::kJumpRelu: {
      const float* thr = weights_.threshold.data();
      for (Eigen::Index r = 0; r < pre.rows(); ++r) {
        float* row = pre.row(r).data();
        for (Eigen::Index j = 0; j < pre.cols(); ++j) {
          row[j] = (row[j] > thr[j] && row[j] > 0.0f) ? row[j] : 0.0f;
        }
      }
      break;
    }
  }
}

absl::Status Model::Encode(ConstMatrixRef x, MatrixRef codes) const {
  if (absl::Status s = CheckInput(x, d_in(), "input"); !s.ok()) return s;
  if (codes.rows() != x.rows() || codes.cols() != d_hidden()) {
    return absl::InvalidArgumentError(
        absl::StrCat("codes output has shape [", codes.rows(), ", ",
                     codes.cols(), "], expected [", x.rows(), ", ",
                     d_hidden(), "]"));
  }
  for (Eigen::Index r0 = 0; r0 < x.rows(); r0 += kChunkRows) {
    const Eigen::Index n = std::min(kChunkRows, x.rows() - r0);
    auto pre = codes.middleRows(r0, n);
    PreActivations(x.middleRows(r0, n), pre);
    ApplyDenseActivation(pre);
  }
  return absl::OkStatus();
}

absl::StatusOr<RowMatrix> Model::Encode(ConstMatrixRef x) const {
  RowMatrix codes(x.rows(), d_hidden());
  if (absl::Status s = Encode(x, codes); !s.ok()) return s;
  return codes;
}

absl::StatusOr<SparseCodes> Model::EncodeSparse(ConstMatrixRef x, int64_t max_per_row,
                                                int64_t max_entries) const {
  if (absl::Status s = CheckInput(x, d_in(), "input"); !s.ok()) return s;
  if (max_per_row < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_per_row must be >= 0, got ", max_per_row));
  }
  SparseCodes out;
  out.rows = x.rows();
  out.d_hidden = d_hidden();
  out.row_offsets.reserve(static_cast<size_t>(x.rows()) + 1);
  out.row_offsets.push_back(0);
  const int64_t keep = max_per_row > 0 ? std::min(max_per_row, d_hidden())
                                       : d_hidden();
  std::vector<int32_t> idx(static_cast<size_t>(keep));
  std::vector<float> val(static_cast<size_t>(keep));
  RowMatrix codes(std::min(kChunkRows, x.rows()), d_hidden());
  for (Eigen::Index r0 = 0; r0 < x.rows(); r0 += kChunkRows) {
    const Eigen::Index n = std::min(kChunkRows, x.rows() - r0);
    auto chunk = codes.topRows(n);
    if (absl::Status s = Encode(x.middleRows(r0, n), chunk); !s.ok()) return s;
    for (Eigen::Index r = 0; r < n; ++r) {
      if (keep < d_hidden()) {
        SelectTopK(chunk.row(r), keep, idx.data(), val.data());
        for (int64_t t = 0; t < keep; ++t) {
          if (val[t] != 0.0f) {
            out.indices.push_back(idx[t]);
            out.values.push_back(val[t]);
          }
        }
      } else {
        for (int64_t j = 0; j < d_hidden(); ++j) {
          if (chunk(r, j) != 0.0f) {
            out.indices.push_back(static_cast<int32_t>(j));
            out.values.push_back(chunk(r, j));
          }
        }
      }
      out.row_offsets.push_back(static_cast<int64_t>(out.indices.size()));
      if (max_entries > 0 && static_cast<int64_t>(out.indices.size()) > max_entries) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "the codes of the first ", r0 + r + 1, " of ", x.rows(),
            " rows already hold more than ", max_entries, " entries"));
      }
    }
  }
  return out;
}

absl::StatusOr<RowMatrix> Model::Decode(ConstMatrixRef codes) const {
  if (absl::Status s = CheckInput(codes, d_hidden(), "codes"); !s.ok()) return s;
  RowMatrix out(codes.rows(), d_in());
  out.rowwise() = weights_.b_dec.transpose();
  MultiplyAddWeights(codes, weights_.w_dec, packed_dec_, out);
  if (config_.input_scale != 1.0f) out /= config_.input_scale;
  return out;
}

absl::Status Model::Reconstruct(ConstMatrixRef x, MatrixRef out) const {
  if (absl::Status s = CheckInput(x, d_in(), "input"); !s.ok()) return s;
  if (out.rows() != x.rows() || out.cols() != d_in()) {
    return absl::InvalidArgumentError("output shape differs from input shape");
  }
  const Eigen::Index chunk_rows = std::min(kChunkRows, x.rows());
  RowMatrix pre(chunk_rows, d_hidden());
  const int64_t k = config_.k;
  std::vector<int32_t> idx;
  std::vector<float> val;
  if (config_.activation == Activation::kTopK) {
    idx.resize(static_cast<size_t>(chunk_rows * k));
    val.resize(static_cast<size_t>(chunk_rows * k));
  }
  for (Eigen::Index r0 = 0; r0 < x.rows(); r0 += kChunkRows) {
    const Eigen::Index n = std::min(kChunkRows, x.rows() - r0);
    auto p = pre.topRows(n);
    auto o = out.middleRows(r0, n);
    PreActivations(x.middleRows(r0, n), p);
    o.rowwise() = weights_.b_dec.transpose();
    if (config_.activation == Activation::kTopK) {
      // Sparse decode: each row sums only its k active decoder rows.
      SelectTopK(p, k, idx.data(), val.data());
      for (Eigen::Index r = 0; r < n; ++r) {
        for (int64_t t = 0; t < k; ++t) {
          const float v = val[r * k + t];
          if (v != 0.0f) o.row(r) += v * weights_.w_dec.row(idx[r * k + t]);
        }
      }
    } else {
      ApplyDenseActivation(p);
      MultiplyAddWeights(p, weights_.w_dec, packed_dec_, o);
    }
    if (config_.input_scale != 1.0f) o /= config_.input_scale;
  }
  return absl::OkStatus();
}

absl::StatusOr<RowMatrix> Model::Reconstruct(ConstMatrixRef x) const {
  RowMatrix out(x.rows(), d_in());
  if (absl::Status s = Reconstruct(x, out); !s.ok()) return s;
  return out;
}

absl::Status Model::Denoise(ConstMatrixRef x, MatrixRef out) const {
  if (absl::Status s = Reconstruct(x, out); !s.ok()) return s;
  if (config_.clip_output) {
    for (Eigen::Index r = 0; r < out.rows(); ++r) {
      out.row(r) = out.row(r).cwiseMax(config_.clip_min).cwiseMin(config_.clip_max);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RowMatrix> Model::Denoise(ConstMatrixRef x) const {
  RowMatrix out(x.rows(), d_in());
  if (absl::Status s = Denoise(x, out); !s.ok()) return s;
  return out;
}

ModelWeights InitialWeights(const ModelConfig& config, uint64_t seed) {
  const int64_t d_in = config.d_in, d_h = config.d_hidden;
  std::mt19937_64 rng(seed);
  const float bound = 1.0f / std::sqrt(static_cast<float>(d_in));
  std::uniform_real_distribution<float> uniform(-bound, bound);
  ModelWeights w;
  w.w_enc.resize(d_in, d_h);
  for (Eigen::Index i = 0; i < w.w_enc.size(); ++i) w.w_enc.data()[i] = uniform(rng);
  w.b_enc = Vector::Zero(d_h);
  w.b_dec = Vector::Zero(d_in);
  if (config.tied_init) {
    w.w_dec = w.w_enc.transpose();
  } else {
    w.w_dec.resize(d_h, d_in);
    for (Eigen::Index i = 0; i < w.w_dec.size(); ++i) w.w_dec.data()[i] = uniform(rng);
  }
  if (config.unit_norm_decoder) {
    for (Eigen::Index j = 0; j < d_h; ++j) {
      const float norm = w.w_dec.row(j).norm();
      if (norm > 0) w.w_dec.row(j) /= norm;
    }
    // Keep the tie: the encoder starts as the decoder's transpose.
    if (config.tied_init) w.w_enc = w.w_dec.transpose();
  }
  return w;
}

}  // namespace sae
