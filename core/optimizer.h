// First-order optimizers over a ParameterSet: Adam (with decoupled weight
// decay, as AdamW) and SGD with momentum, both with linear learning-rate
// warm-up. Not thread-safe; one per training run.
#ifndef SAE_CORE_OPTIMIZER_H_
#define SAE_CORE_OPTIMIZER_H_

#include <cstdint>
#include <memory>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/objective.h"
#include "core/parameters.h"

namespace sae {

enum class OptimizerKind { kAdam, kSgd };
absl::string_view OptimizerName(OptimizerKind kind);
absl::StatusOr<OptimizerKind> ParseOptimizer(absl::string_view name);

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::kAdam;
  float learning_rate = 1e-3f;  // > 0
  float beta1 = 0.9f;           // Adam, [0, 1)
  float beta2 = 0.999f;         // Adam, [0, 1)
  float epsilon = 1e-8f;        // Adam, > 0
  float momentum = 0.9f;        // SGD, [0, 1)
  // The learning rate rises linearly from lr/warmup_steps to lr over the
  // first warmup_steps steps. 0 disables warm-up.
  int64_t warmup_steps = 0;

  // INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;
};

class Optimizer {
 public:
  // Creates an optimizer with zeroed state sized for `shape`.
  static absl::StatusOr<std::unique_ptr<Optimizer>> Create(
      const OptimizerOptions& options, const ParameterSet& shape);
  virtual ~Optimizer() = default;

  // Applies one update to `params`. Weight rows that `grads` marks untouched
  // get a zero gradient (their moments still decay). weight_decay is applied
  // to the weight matrices only, decoupled from the gradient.
  //
  // With unit_norm_decoder, each decoder row's gradient first loses its
  // component along the row (so the step moves along the unit sphere, as
  // SAELens does) and the row is rescaled to norm 1 after the step. Doing it
  // here, row by row, keeps the row in cache for all three passes.
  void Step(const Gradients& grads, float weight_decay, bool unit_norm_decoder,
            ParameterSet* params);

  // Step in parts, for an objective that hands over each unit's gradient
  // rows as it makes them (ComputeLossWithUnitSink), so that the update
  // reads them from cache instead of from a gradient buffer: call BeginStep,
  // then UpdateWeightRow once for each of the 2 * d_hidden weight rows, then
  // UpdateBiases. The result is bitwise that of Step. UpdateWeightRow may be
  // called concurrently for distinct rows; `grad` is the row's d_in
  // gradient values, nullptr for zero. A step begun must be finished: the
  // step count and warm-up advance in BeginStep.
  enum class WeightRow { kEncoder, kDecoder };  // w_enc_t's row, w_dec's row
  void BeginStep(float weight_decay, bool unit_norm_decoder);
  void UpdateWeightRow(WeightRow which, int64_t unit, const float* grad,
                       ParameterSet* params);
  void UpdateBiases(const Gradients& grads, ParameterSet* params);

  // A whole training step done that way: the loss of `input` against
  // `target` (ComputeLossWithUnitSink, with `grads` and `workspace` as its
  // scratch) and its gradient applied row by row to `params`. Bitwise
  // ComputeLoss then Step. Returns the loss terms; when the loss is not
  // finite no weight is changed (but the step is counted).
  LossTerms ComputeLossAndStep(const ModelConfig& config, ConstMatrixRef input,
                               ConstMatrixRef target, ObjectiveWorkspace* workspace,
                               Gradients* grads, ParameterSet* params);

  int64_t steps_taken() const { return steps_taken_; }
  // The learning rate the next step will use (after warm-up scaling).
  float CurrentLearningRate() const;

 protected:
  explicit Optimizer(const OptimizerOptions& options) : options_(options) {}
  // Called by BeginStep, after steps_taken() counts the new step, with its
  // learning rate.
  virtual void PrepareStep(float lr) = 0;
  // Updates the n values at `w` (flat offset `offset`) from gradient `g`
  // (nullptr: zero), scaling them by `decay` first. Thread-safe for
  // disjoint runs.
  virtual void UpdateRun(float* w, const float* g, int64_t offset, int64_t n,
                         float decay) = 0;

  const OptimizerOptions options_;
  int64_t steps_taken_ = 0;

 private:
  float decay_ = 1.0f;  // this step's weight decay factor
  bool unit_norm_decoder_ = false;
};

}  // namespace sae

#endif  // SAE_CORE_OPTIMIZER_H_
