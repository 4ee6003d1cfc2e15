#include "core/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/parallel.h"

namespace sae {
namespace {

absl::Status Bad(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("optimizer.", field, ": ", why));
}

bool InUnitInterval(float x) { return x >= 0.0f && x < 1.0f; }

// The gradient of a run, projected off the row when asked: g - (g.w) w.
// Returns the pointer to use: g itself, or this thread's scratch row, valid
// until its next call.
const float* ProjectedGradient(const float* g, const float* w, int64_t n, bool project) {
  if (!project) return g;
  thread_local std::vector<float> scratch;
  // Eigen's reductions use several accumulators (vectorised); a plain loop
  // would be one serial dependency chain.
  const float dot = Eigen::Map<const Vector>(g, n).dot(Eigen::Map<const Vector>(w, n));
  scratch.resize(static_cast<size_t>(n));
  float* out = scratch.data();
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] - dot * w[i];
  return out;
}

// The update kernels take every scalar by value and every array as a
// restrict pointer so that the compiler vectorises them (captured lambda
// state would be reloaded inside the loop and block vectorisation).
// g == nullptr means a zero gradient.
void AdamUpdate(float* __restrict w, const float* __restrict g,
                float* __restrict m, float* __restrict v, int64_t n, float b1,
                float b2, float step, float eps, float decay) {
  if (g != nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      const float mi = b1 * m[i] + (1.0f - b1) * g[i];
      const float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
      m[i] = mi;
      v[i] = vi;
      w[i] = decay * w[i] - step * mi / (std::sqrt(vi) + eps);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float mi = b1 * m[i];
      const float vi = b2 * v[i];
      m[i] = mi;
      v[i] = vi;
      w[i] = decay * w[i] - step * mi / (std::sqrt(vi) + eps);
    }
  }
}

void SgdUpdate(float* __restrict w, const float* __restrict g,
               float* __restrict u, int64_t n, float mu, float lr, float decay) {
  if (g != nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      const float ui = mu * u[i] + g[i];
      u[i] = ui;
      w[i] = decay * w[i] - lr * ui;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float ui = mu * u[i];
      u[i] = ui;
      w[i] = decay * w[i] - lr * ui;
    }
  }
}

void NormalizeRun(float* w, int64_t n) {
  const float sq = Eigen::Map<const Vector>(w, n).squaredNorm();
  if (sq > 0.0f) {
    const float inv = 1.0f / std::sqrt(sq);
    for (int64_t i = 0; i < n; ++i) w[i] *= inv;
  }
}

class Adam final : public Optimizer {
 public:
  Adam(const OptimizerOptions& options, int64_t size)
      : Optimizer(options), m_(size, 0.0f), v_(size, 0.0f) {}

 private:
  void PrepareStep(float lr) override {
    const double t = static_cast<double>(steps_taken_);
    const double bc1 = 1.0 - std::pow(options_.beta1, t);
    const double bc2 = 1.0 - std::pow(options_.beta2, t);
    // PyTorch's form: w -= (lr / bc1) * m / (sqrt(v / bc2) + eps).
    step_ = static_cast<float>(lr * std::sqrt(bc2) / bc1);
    eps_ = static_cast<float>(options_.epsilon * std::sqrt(bc2));
  }
  void UpdateRun(float* w, const float* g, int64_t offset, int64_t n,
                 float decay) override {
    AdamUpdate(w, g, m_.data() + offset, v_.data() + offset, n, options_.beta1,
               options_.beta2, step_, eps_, decay);
  }

  std::vector<float> m_, v_;
  float step_ = 0, eps_ = 0;  // this step's, set by PrepareStep
};

class Sgd final : public Optimizer {
 public:
  Sgd(const OptimizerOptions& options, int64_t size)
      : Optimizer(options), velocity_(size, 0.0f) {}

 private:
  void PrepareStep(float lr) override { lr_ = lr; }
  void UpdateRun(float* w, const float* g, int64_t offset, int64_t n,
                 float decay) override {
    SgdUpdate(w, g, velocity_.data() + offset, n, options_.momentum, lr_, decay);
  }

  std::vector<float> velocity_;
  float lr_ = 0;
};

}  // namespace

absl::string_view OptimizerName(OptimizerKind kind) {
  return kind == OptimizerKind::kAdam ? "adam" : "sgd";
}

absl::StatusOr<OptimizerKind> ParseOptimizer(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "adam") return OptimizerKind::kAdam;
  if (lower == "sgd") return OptimizerKind::kSgd;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown optimizer '", name, "'; expected adam or sgd"));
}

absl::Status OptimizerOptions::Validate() const {
  if (!std::isfinite(learning_rate) || !(learning_rate > 0)) {
    return Bad("learning_rate", absl::StrCat("must be finite and > 0, got ", learning_rate));
  }
  if (!InUnitInterval(beta1)) return Bad("beta1", "must be in [0, 1)");
  if (!InUnitInterval(beta2)) return Bad("beta2", "must be in [0, 1)");
  if (!std::isfinite(epsilon) || !(epsilon > 0)) return Bad("epsilon", "must be > 0");
  if (!InUnitInterval(momentum)) return Bad("momentum", "must be in [0, 1)");
  if (warmup_steps < 0) return Bad("warmup_steps", "must be >= 0");
  return absl::OkStatus();
}

void Optimizer::Step(const Gradients& grads, float weight_decay,
                     bool unit_norm_decoder, ParameterSet* params) {
  BeginStep(weight_decay, unit_norm_decoder);
  const int64_t d_in = params->d_in(), d_h = params->d_hidden();
  const float* g_all = grads.values.flat().data();
  // Item j < d_h is unit j's encoder row, d_h + j its decoder row, 2 * d_h
  // the biases. Rows are independent, so they are spread over threads.
  ParallelFor(2 * d_h + 1, 64, [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (i == 2 * d_h) {
        UpdateBiases(grads, params);
        continue;
      }
      const int64_t j = i % d_h;
      const float* g = grads.unit_touched[j] != 0 ? g_all + i * d_in : nullptr;
      UpdateWeightRow(i < d_h ? WeightRow::kEncoder : WeightRow::kDecoder, j, g, params);
    }
  });
}

void Optimizer::BeginStep(float weight_decay, bool unit_norm_decoder) {
  const float lr = CurrentLearningRate();
  ++steps_taken_;
  decay_ = 1.0f - lr * weight_decay;
  unit_norm_decoder_ = unit_norm_decoder;
  PrepareStep(lr);
}

void Optimizer::UpdateWeightRow(WeightRow which, int64_t unit, const float* grad,
                                ParameterSet* params) {
  const int64_t d_in = params->d_in();
  const int64_t offset =
      (which == WeightRow::kEncoder ? unit : params->d_hidden() + unit) * d_in;
  float* w = params->flat().data() + offset;
  const bool sphere = unit_norm_decoder_ && which == WeightRow::kDecoder;
  const float* g = grad != nullptr ? ProjectedGradient(grad, w, d_in, sphere) : nullptr;
  UpdateRun(w, g, offset, d_in, decay_);
  if (sphere) NormalizeRun(w, d_in);
}

void Optimizer::UpdateBiases(const Gradients& grads, ParameterSet* params) {
  const int64_t offset = params->weight_count();
  const int64_t n = params->d_hidden() + params->d_in();
  UpdateRun(params->flat().data() + offset, grads.values.flat().data() + offset,
            offset, n, 1.0f);
}

LossTerms Optimizer::ComputeLossAndStep(const ModelConfig& config, ConstMatrixRef input,
                                        ConstMatrixRef target, ObjectiveWorkspace* workspace,
                                        Gradients* grads, ParameterSet* params) {
  BeginStep(config.weight_decay, config.unit_norm_decoder);
  const LossTerms terms = ComputeLossWithUnitSink(
      config, *params, input, target, workspace, grads,
      [&](int64_t unit, const float* d_enc, const float* d_dec) {
        UpdateWeightRow(WeightRow::kEncoder, unit, d_enc, params);
        UpdateWeightRow(WeightRow::kDecoder, unit, d_dec, params);
      });
  if (std::isfinite(terms.total)) UpdateBiases(*grads, params);
  return terms;
}

float Optimizer::CurrentLearningRate() const {
  if (options_.warmup_steps <= 0 || steps_taken_ >= options_.warmup_steps) {
    return options_.learning_rate;
  }
  return options_.learning_rate * static_cast<float>(steps_taken_ + 1) /
         static_cast<float>(options_.warmup_steps);
}

absl::StatusOr<std::unique_ptr<Optimizer>> Optimizer::Create(
    const OptimizerOptions& options, const ParameterSet& shape) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  const int64_t size = shape.flat().size();
  if (options.kind == OptimizerKind::kAdam) {
    return std::unique_ptr<Optimizer>(new Adam(options, size));
  }
  return std::unique_ptr<Optimizer>(new Sgd(options, size));
}

}  // namespace sae
