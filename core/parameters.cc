#include "core/parameters.h"

namespace sae {

ParameterSet ParameterSet::FromWeights(const ModelWeights& weights) {
  ParameterSet p(weights.w_enc.rows(), weights.w_enc.cols());
  p.w_enc_t() = weights.w_enc.transpose();
  p.w_dec() = weights.w_dec;
  p.b_enc() = weights.b_enc;
  p.b_dec() = weights.b_dec;
  return p;
}

ModelWeights ParameterSet::ToWeights() const {
  ModelWeights w;
  w.w_enc = w_enc_t().transpose();
  w.w_dec = w_dec();
  w.b_enc = b_enc();
  w.b_dec = b_dec();
  return w;
}

}  // namespace sae
