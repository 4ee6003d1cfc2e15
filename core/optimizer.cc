#include "core/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace sae {
namespace {

absl::Status Bad(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("optimizer.", field, ": ", why));
}

bool InUnitInterval(float x) { return x >= 0.0f && x < 1.0f; }

// Calls fn(offset, length, has_gradient) for every run of the flat buffer:
// one run per weight row of w_enc_t and w_dec, one for the biases.
template <typename Fn>
void ForEachRun(const ParameterSet& shape, const Gradients& grads, Fn fn) {
  const int64_t d_in = shape.d_in(), d_h = shape.d_hidden();
  for (int matrix = 0; matrix < 2; ++matrix) {
    const int64_t base = matrix * d_in * d_h;
    for (int64_t j = 0; j < d_h; ++j) {
      fn(base + j * d_in, d_in, grads.unit_touched[j] != 0, true);
    }
  }
  fn(shape.weight_count(), d_h + d_in, true, false);
}

class Adam final : public Optimizer {
 public:
  Adam(const OptimizerOptions& options, int64_t size)
      : Optimizer(options), m_(size, 0.0f), v_(size, 0.0f) {}

  void Step(const Gradients& grads, float weight_decay,
            ParameterSet* params) override {
    const float lr = CurrentLearningRate();
    ++steps_taken_;
    const double t = static_cast<double>(steps_taken_);
    const double bc1 = 1.0 - std::pow(options_.beta1, t);
    const double bc2 = 1.0 - std::pow(options_.beta2, t);
    // PyTorch's form: w -= (lr / bc1) * m / (sqrt(v / bc2) + eps).
    const float step = static_cast<float>(lr * std::sqrt(bc2) / bc1);
    const float eps = static_cast<float>(options_.epsilon * std::sqrt(bc2));
    const float b1 = options_.beta1, b2 = options_.beta2;
    const float decay = 1.0f - lr * weight_decay;
    float* __restrict w_all = params->flat().data();
    const float* __restrict g_all = grads.values.flat().data();
    float* __restrict m_all = m_.data();
    float* __restrict v_all = v_.data();
    ForEachRun(*params, grads, [&](int64_t off, int64_t n, bool has_grad,
                                   bool is_weight) {
      float* __restrict w = w_all + off;
      float* __restrict m = m_all + off;
      float* __restrict v = v_all + off;
      const float d = is_weight ? decay : 1.0f;
      if (has_grad) {
        const float* __restrict g = g_all + off;
        for (int64_t i = 0; i < n; ++i) {
          const float mi = b1 * m[i] + (1.0f - b1) * g[i];
          const float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
          m[i] = mi;
          v[i] = vi;
          w[i] = d * w[i] - step * mi / (std::sqrt(vi) + eps);
        }
      } else {
        for (int64_t i = 0; i < n; ++i) {
          const float mi = b1 * m[i];
          const float vi = b2 * v[i];
          m[i] = mi;
          v[i] = vi;
          w[i] = d * w[i] - step * mi / (std::sqrt(vi) + eps);
        }
      }
    });
  }

 private:
  std::vector<float> m_, v_;
};

class Sgd final : public Optimizer {
 public:
  Sgd(const OptimizerOptions& options, int64_t size)
      : Optimizer(options), velocity_(size, 0.0f) {}

  void Step(const Gradients& grads, float weight_decay,
            ParameterSet* params) override {
    const float lr = CurrentLearningRate();
    ++steps_taken_;
    const float mu = options_.momentum;
    const float decay = 1.0f - lr * weight_decay;
    float* __restrict w_all = params->flat().data();
    const float* __restrict g_all = grads.values.flat().data();
    float* __restrict u_all = velocity_.data();
    ForEachRun(*params, grads, [&](int64_t off, int64_t n, bool has_grad,
                                   bool is_weight) {
      float* __restrict w = w_all + off;
      float* __restrict u = u_all + off;
      const float d = is_weight ? decay : 1.0f;
      const float* __restrict g = g_all + off;
      for (int64_t i = 0; i < n; ++i) {
        const float ui = mu * u[i] + (has_grad ? g[i] : 0.0f);
        u[i] = ui;
        w[i] = d * w[i] - lr * ui;
      }
    });
  }

 private:
  std::vector<float> velocity_;
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
