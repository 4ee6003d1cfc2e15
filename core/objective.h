// The training objective of a sparse autoencoder and its exact gradient.
//
//   loss = (1/B) sum_b ||x_hat_b - target_b||^2            reconstruction
//        + (l1 / B) sum_b sum_j |f_bj|                      ReLU / TopK
//        + beta * sum_j KL(rho || mean_b f_bj)              sigmoid
//
// `input` is what the encoder sees (possibly corrupted), `target` the clean
// row. Weight decay is not part of the loss: the optimizer applies it
// (decoupled, as in AdamW).
//
// For TopK the forward decoder and the whole backward pass touch only the k
// selected units of each row; the gradient rows of the other units are left
// stale and flagged untouched.
#ifndef SAE_CORE_OBJECTIVE_H_
#define SAE_CORE_OBJECTIVE_H_

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"

#include "core/model_config.h"
#include "core/parameters.h"
#include "core/tensor.h"
#include "core/topk_screen.h"

namespace sae {

struct LossTerms {
  double total = 0;           // reconstruction + sparsity
  double reconstruction = 0;  // mean over rows of the squared error
  double sparsity = 0;        // the penalty term
  double mean_l0 = 0;         // active units per row
  // For FVU: sum of squared errors and sum of squared deviations of the
  // target from its batch mean.
  double squared_error_sum = 0;
  double target_variance_sum = 0;
};

// Gradient with respect to every parameter. unit_touched[j] says whether row
// j of the w_enc_t and w_dec gradients was written this step; rows not
// touched are stale and must be read as zero. Biases are always written.
struct Gradients {
  explicit Gradients(int64_t d_in, int64_t d_hidden)
      : values(d_in, d_hidden), unit_touched(static_cast<size_t>(d_hidden), 1) {}
  ParameterSet values;
  std::vector<uint8_t> unit_touched;
};

// Scratch memory reused across batches, so that a step of the same shape
// as the last allocates little (the TopK screen's candidate lists aside).
struct ObjectiveWorkspace {
  RowMatrix centered;     // input - b_dec
  // Pre-activations, then codes (dense path); TopK: the full product when
  // the screen does not select, and empty while it does.
  RowMatrix pre;
  RowMatrix output;       // x_hat, then dLoss/dx_hat
  RowMatrix grad_codes;   // dLoss/df (dense path)
  std::vector<int32_t> topk_indices;
  std::vector<float> topk_values;
  std::vector<uint8_t> unit_fired;  // unit was active for some row
  // TopK: active entries grouped by unit (counting sort), see TopKLoss.
  std::vector<int64_t> unit_start, unit_fill;
  std::vector<int32_t> by_unit;
  // TopK: the sparse decode's sums of the units of chunks 1.. (see TopKLoss).
  std::vector<RowMatrix> decode_parts;
  // ComputeLossWithUnitSink (TopK): per chunk, one unit's two gradient rows.
  std::vector<std::vector<float>> unit_rows;
  // TopK: the selection through a bfloat16 screen (core/topk_screen.h),
  // where the CPU has it and the product is large enough to pay. It is the
  // exact TopK of float32 dot products, which differ from sgemm's by float
  // rounding (so units that tie within it may be chosen differently).
  // False: always the full sgemm product (for tests and benchmarks that
  // compare the two).
  bool use_topk_screen = true;
  TopKScreen topk_screen;
  bool topk_screened = false;  // whether the last TopK loss selected through it
};

// An activation counts as active when f > kActiveThreshold (sigmoid units
// are never exactly zero: those above one half count).
float ActiveThreshold(Activation activation);

// Computes the loss for a batch; when `grads` is not null, also its exact
// gradient. `input` and `target` have the same shape [B, d_in], B >= 1.
// Fills workspace->unit_fired. Not thread-safe per workspace.
LossTerms ComputeLoss(const ModelConfig& config, const ParameterSet& params,
                      ConstMatrixRef input, ConstMatrixRef target,
                      ObjectiveWorkspace* workspace, Gradients* grads);

// Receives one unit's weight-row gradients as the TopK backward pass makes
// them: d_enc for its w_enc_t row, d_dec for its w_dec row (d_in values
// each, valid during the call only), both nullptr for a unit that fired
// for no row. Called once per unit, concurrently for distinct units. The
// pass has finished reading the unit's rows of `params` when it calls, and
// no other unit reads them, so the sink may update them in place
// (Optimizer::UpdateWeightRow) while other units are still being computed.
using UnitGradientSink =
    absl::FunctionRef<void(int64_t unit, const float* d_enc, const float* d_dec)>;

// ComputeLoss with the weight rows' gradients handed to `sink` (`grads`
// must not be null). For TopK they are made one unit at a time and handed
// over instead of stored: only grads' biases and unit_touched are written,
// and its weight rows are stale (not for Optimizer::Step). The values are
// bitwise those ComputeLoss stores (optimizer_test): both come from the
// same expressions, which GCC contracts into FMAs (its default for C++
// even in ISO mode) the same way in both. Other activations get their gradients from
// GEMMs: ComputeLoss fills `grads` and the rows are handed over afterwards.
// When the loss is not finite the sink is not called and `grads` is stale.
// `params` may change during the call, through the sink only.
LossTerms ComputeLossWithUnitSink(const ModelConfig& config, const ParameterSet& params,
                                  ConstMatrixRef input, ConstMatrixRef target,
                                  ObjectiveWorkspace* workspace, Gradients* grads,
                                  UnitGradientSink sink);

}  // namespace sae

#endif  // SAE_CORE_OBJECTIVE_H_
