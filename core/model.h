// A trained sparse autoencoder: immutable weights plus their config.
//
//   codes  f     = act(W_enc^T (s * x - b_dec) + b_enc)      s = input_scale
//   output x_hat = (W_dec^T f + b_dec) / s
//
// Weights use SAELens's layout so that a model file maps onto them directly:
// W_enc [d_in, d_hidden], W_dec [d_hidden, d_in], b_enc [d_hidden],
// b_dec [d_in], row-major float32.
//
// Thread safety: a Model never changes after Create, so any number of threads
// may call its const methods at once. Share it as shared_ptr<const Model>.
#ifndef SAE_CORE_MODEL_H_
#define SAE_CORE_MODEL_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model_config.h"
#include "core/tensor.h"

namespace sae {

class PackedMatrix;

struct ModelWeights {
  RowMatrix w_enc;  // [d_in, d_hidden]
  Vector b_enc;     // [d_hidden]
  RowMatrix w_dec;  // [d_hidden, d_in]
  Vector b_dec;     // [d_in]
  Vector threshold;  // [d_hidden] for JumpReLU, empty otherwise
};

// Sparse codes in compressed-row form: row r's active units are
// indices[row_offsets[r] .. row_offsets[r+1]) with the matching values,
// in ascending unit order.
struct SparseCodes {
  int64_t rows = 0;
  int64_t d_hidden = 0;
  std::vector<int64_t> row_offsets;  // rows + 1 entries, starts at 0
  std::vector<int32_t> indices;
  std::vector<float> values;
};

// Up to this many rows the encoder and decoder products run on weights
// packed for them (core/packed_gemm.h), beyond it on sgemm. Measured at
// 784 x 4096 on the development machine (2 threads, sae_kernels_bench
// EncodeRows*), ms per product, packed vs sgemm: 8 rows 0.35 vs 0.64, 32
// rows 0.89 vs 1.33, 128 rows 2.86 vs 3.42, 256 rows 6.6 vs 6.0. One row is
// bound by reading the weights either way, and the packed kernel gives a
// row the same bits as in any batch, so requests merged by the server's
// batcher get the results they would alone. The decoder's input, sparse
// codes, costs only its nonzero units there.
inline constexpr int64_t kSmallBatchMaxRows = 128;

class Model {
 public:
  // Checks the config and that every weight has the shape the config implies
  // and holds only finite values. INVALID_ARGUMENT otherwise.
  static absl::StatusOr<std::shared_ptr<const Model>> Create(
      ModelConfig config, ModelWeights weights);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  int64_t d_in() const { return config_.d_in; }
  int64_t d_hidden() const { return config_.d_hidden; }

  // Dense codes [rows, d_hidden] for x [rows, d_in]. `codes` must already
  // have that shape. INVALID_ARGUMENT on a width or shape mismatch.
  absl::Status Encode(ConstMatrixRef x, MatrixRef codes) const;
  absl::StatusOr<RowMatrix> Encode(ConstMatrixRef x) const;

  // Sparse codes: every nonzero unit of each row, or when max_per_row > 0
  // only the max_per_row largest of them. When max_entries > 0, codes of
  // more than max_entries entries in all are RESOURCE_EXHAUSTED (found as
  // they are made: memory stays bounded by the limit).
  absl::StatusOr<SparseCodes> EncodeSparse(ConstMatrixRef x, int64_t max_per_row = 0,
                                           int64_t max_entries = 0) const;

  // Maps codes [rows, d_hidden] back to input space [rows, d_in].
  absl::StatusOr<RowMatrix> Decode(ConstMatrixRef codes) const;

  // Decode(Encode(x)). For TopK models the decoder touches only the k active
  // units of each row.
  absl::Status Reconstruct(ConstMatrixRef x, MatrixRef out) const;
  absl::StatusOr<RowMatrix> Reconstruct(ConstMatrixRef x) const;

  // Reconstruct, then clip to [clip_min, clip_max] when the config asks for
  // it. Meant for models trained on corrupted inputs.
  absl::Status Denoise(ConstMatrixRef x, MatrixRef out) const;
  absl::StatusOr<RowMatrix> Denoise(ConstMatrixRef x) const;

  // Makes the packed copy of the weights that products of up to
  // kSmallBatchMaxRows rows use, which the first such product otherwise
  // makes while it and any concurrent ones wait (about 3 ms at 784 x 4096).
  // A server calls it when it loads a version. Idempotent; thread-safe.
  void PrepareSmallBatchWeights() const;

 private:
  Model(ModelConfig config, ModelWeights weights);

  absl::Status CheckInput(ConstMatrixRef x, int64_t width,
                          const char* what) const;
  // Pre-activations W_enc^T (s x - b_dec) + b_enc into `pre`.
  void PreActivations(ConstMatrixRef x, MatrixRef pre) const;
  // Turns pre-activations into codes in place.
  void ApplyDenseActivation(MatrixRef pre) const;

  // A weight matrix packed for products of few rows (core/packed_gemm.h),
  // made on its first such product and kept: a served model holds its
  // weights twice.
  struct LazyPacked {
    std::once_flag once;
    std::unique_ptr<const PackedMatrix> packed;
  };
  // out += a w, for w = weights_.w_enc with packed_enc_ or weights_.w_dec
  // with packed_dec_: on the packed copy for few rows, on sgemm beyond.
  void MultiplyAddWeights(ConstMatrixRef a, const RowMatrix& w, LazyPacked& lazy,
                          MatrixRef out) const;
  // lazy's packed copy of w, made on the first call.
  static const PackedMatrix& Packed(const RowMatrix& w, LazyPacked& lazy);

  const ModelConfig config_;
  const ModelWeights weights_;
  mutable LazyPacked packed_enc_, packed_dec_;
};

// Fresh weights for `config`: W_enc uniform in +-1/sqrt(d_in) (Kaiming-style)
// from `seed`, W_dec its transpose when tied_init (rows normalised when
// unit_norm_decoder), zero biases.
ModelWeights InitialWeights(const ModelConfig& config, uint64_t seed);

}  // namespace sae

#endif  // SAE_CORE_MODEL_H_
