// The architecture and training-objective settings of one sparse autoencoder.
// Plain value type: cheap to copy, no Eigen, safe to include anywhere.
#ifndef SAE_CORE_MODEL_CONFIG_H_
#define SAE_CORE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sae {

// How pre-activations become the code f.
enum class Activation {
  kRelu,     // f = max(0, W_enc^T (x - b_dec) + b_enc); sparsity from L1.
  kTopK,     // keep the k largest pre-activations (after ReLU), zero the rest.
  kSigmoid,  // f = sigmoid(...); sparsity from a KL penalty toward rho.
  // f = pre where pre > threshold_j (and > 0), else 0: per-unit thresholds
  // (Rajamanoharan et al. 2024). Imported from SAELens; not trainable here.
  kJumpRelu,
};

absl::string_view ActivationName(Activation activation);
absl::StatusOr<Activation> ParseActivation(absl::string_view name);

struct ModelConfig {
  int64_t d_in = 0;      // width of an input row
  int64_t d_hidden = 0;  // number of code units (d_sae in SAELens)
  Activation activation = Activation::kRelu;
  int64_t k = 0;  // TopK only: active units per row, 1 <= k <= d_hidden

  // Sparsity penalties (added to the per-row squared reconstruction error).
  float l1_coefficient = 0.0f;  // ReLU/TopK: lambda * sum_j |f_j|
  float kl_rho = 0.05f;         // Sigmoid: target mean activation, (0, 1)
  float kl_beta = 0.0f;         // Sigmoid: weight of sum_j KL(rho || rho_j)

  float weight_decay = 0.0f;  // decoupled decay on W_enc and W_dec, >= 0

  bool tied_init = true;             // initialise W_dec as W_enc transposed
  bool unit_norm_decoder = true;     // keep each unit's decoder row at norm 1
  bool init_b_dec_to_mean = true;    // b_dec starts at the training data mean
  // Inputs are multiplied by input_scale before encoding and outputs divided
  // by it after decoding (SAELens-style activation normalisation). > 0.
  float input_scale = 1.0f;

  // Denoise clips its output to [clip_min, clip_max] when clip_output is set
  // (for example [0, 1] for images). clip_min < clip_max.
  bool clip_output = false;
  float clip_min = 0.0f;
  float clip_max = 1.0f;

  // Returns OK or INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;
};

// A config with the documented defaults for an activation: unit-norm decoder
// on for ReLU and TopK, off for sigmoid (the classic UFLDL model has none).
ModelConfig DefaultConfig(int64_t d_in, int64_t d_hidden,
                          Activation activation);

}  // namespace sae

#endif  // SAE_CORE_MODEL_CONFIG_H_
