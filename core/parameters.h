// Trainable parameters in the layout training wants: every unit's encoder
// and decoder vectors as contiguous rows, all four tensors in one flat
// buffer so that an optimizer can walk them in one pass.
//
//   flat = [ w_enc_t (d_hidden x d_in) | w_dec (d_hidden x d_in) |
//            b_enc (d_hidden) | b_dec (d_in) ]
//
// w_enc_t is SAELens's W_enc transposed. Not thread-safe; owned by a Trainer.
#ifndef SAE_CORE_PARAMETERS_H_
#define SAE_CORE_PARAMETERS_H_

#include <cstdint>

#include "core/model.h"
#include "core/tensor.h"

namespace sae {

class ParameterSet {
 public:
  using MatrixMap = Eigen::Map<RowMatrix>;
  using ConstMatrixMapT = Eigen::Map<const RowMatrix>;
  using VectorMap = Eigen::Map<Vector>;
  using ConstVectorMap = Eigen::Map<const Vector>;

  ParameterSet(int64_t d_in, int64_t d_hidden)
      : d_in_(d_in), d_hidden_(d_hidden),
        flat_(Vector::Zero(2 * d_in * d_hidden + d_hidden + d_in)) {}

  int64_t d_in() const { return d_in_; }
  int64_t d_hidden() const { return d_hidden_; }
  // Entries that belong to the two weight matrices (weight decay applies).
  int64_t weight_count() const { return 2 * d_in_ * d_hidden_; }

  Vector& flat() { return flat_; }
  const Vector& flat() const { return flat_; }

  MatrixMap w_enc_t() { return MatrixMap(flat_.data(), d_hidden_, d_in_); }
  MatrixMap w_dec() { return MatrixMap(flat_.data() + d_in_ * d_hidden_, d_hidden_, d_in_); }
  VectorMap b_enc() { return VectorMap(flat_.data() + weight_count(), d_hidden_); }
  VectorMap b_dec() { return VectorMap(flat_.data() + weight_count() + d_hidden_, d_in_); }
  ConstMatrixMapT w_enc_t() const { return ConstMatrixMapT(flat_.data(), d_hidden_, d_in_); }
  ConstMatrixMapT w_dec() const { return ConstMatrixMapT(flat_.data() + d_in_ * d_hidden_, d_hidden_, d_in_); }
  ConstVectorMap b_enc() const { return ConstVectorMap(flat_.data() + weight_count(), d_hidden_); }
  ConstVectorMap b_dec() const { return ConstVectorMap(flat_.data() + weight_count() + d_hidden_, d_in_); }

  // Conversions from and to the Model's (SAELens) layout.
  static ParameterSet FromWeights(const ModelWeights& weights);
  ModelWeights ToWeights() const;

 private:
  int64_t d_in_;
  int64_t d_hidden_;
  Vector flat_;
};

}  // namespace sae

#endif  // SAE_CORE_PARAMETERS_H_
