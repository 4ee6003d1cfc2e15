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

enum class RunKind { kEncoderRow, kDecoderRow, kBiases };

// Calls fn(offset, length, has_gradient, kind) for every run of the flat
// buffer: one per weight row of w_enc_t and of w_dec, one for the biases.
// Runs are independent, so they are spread over threads (ParallelFor);
// fn(chunk, ...) may use per-chunk scratch space.
template <typename Fn>
void ForEachRun(const ParameterSet& shape, const Gradients& grads, Fn fn) {
  const int64_t d_in = shape.d_in(), d_h = shape.d_hidden();
  // Item i < 2 * d_h is weight row i; item 2 * d_h is the bias block.
  ParallelFor(2 * d_h + 1, 64, [&](int chunk, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (i == 2 * d_h) {
        fn(chunk, shape.weight_count(), d_h + d_in, true, RunKind::kBiases);
        continue;
      }
      const int64_t j = i % d_h;
      const RunKind kind = i < d_h ? RunKind::kEncoderRow : RunKind::kDecoderRow;
      fn(chunk, i * d_in, d_in, grads.unit_touched[j] != 0, kind);
    }
  });
}

// The gradient of a run, projected off the row when asked: g - (g.w) w.
// Returns the pointer to use (g itself, or `scratch`).
const float* ProjectedGradient(const float* g, const float* w, int64_t n,
                               bool project, std::vector<float>& scratch) {
  if (!project) return g;
  // Eigen's reductions use several accumulators (vectorised); a plain loop
  // would be one serial dependency chain.
  const float dot = Eigen::Map<const Vector>(g, n).dot(Eigen::Map<const Vector>(w, n));
  scratch.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) scratch[i] = g[i] - dot * w[i];
  return scratch.data();
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

  void Step(const Gradients& grads, float weight_decay, bool unit_norm_decoder,
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
    float* w_all = params->flat().data();
    const float* g_all = grads.values.flat().data();
    float* m_all = m_.data();
    float* v_all = v_.data();
    scratch_.resize(static_cast<size_t>(Parallelism()));
    ForEachRun(*params, grads, [&](int chunk, int64_t off, int64_t n,
                                   bool has_grad, RunKind kind) {
      float* w = w_all + off;
      const float d = kind != RunKind::kBiases ? decay : 1.0f;
      const bool sphere = unit_norm_decoder && kind == RunKind::kDecoderRow;
      const float* g = has_grad ? ProjectedGradient(g_all + off, w, n, sphere,
                                                    scratch_[chunk])
                                : nullptr;
      AdamUpdate(w, g, m_all + off, v_all + off, n, b1, b2, step, eps, d);
      if (sphere) NormalizeRun(w, n);
    });
  }

 private:
  std::vector<float> m_, v_;
  std::vector<std::vector<float>> scratch_;  // one per chunk
};

class Sgd final : public Optimizer {
 public:
  Sgd(const OptimizerOptions& options, int64_t size)
      : Optimizer(options), velocity_(size, 0.0f) {}

  void Step(const Gradients& grads, float weight_decay, bool unit_norm_decoder,
            ParameterSet* params) override {
    const float lr = CurrentLearningRate();
    ++steps_taken_;
    const float mu = options_.momentum;
    const float decay = 1.0f - lr * weight_decay;
    float* w_all = params->flat().data();
    const float* g_all = grads.values.flat().data();
    float* u_all = velocity_.data();
    scratch_.resize(static_cast<size_t>(Parallelism()));
    ForEachRun(*params, grads, [&](int chunk, int64_t off, int64_t n,
                                   bool has_grad, RunKind kind) {
      float* w = w_all + off;
      const float d = kind != RunKind::kBiases ? decay : 1.0f;
      const bool sphere = unit_norm_decoder && kind == RunKind::kDecoderRow;
      const float* g = has_grad ? ProjectedGradient(g_all + off, w, n, sphere,
                                                    scratch_[chunk])
                                : nullptr;
      SgdUpdate(w, g, u_all + off, n, mu, lr, d);
      if (sphere) NormalizeRun(w, n);
    });
  }

 private:
  std::vector<float> velocity_;
  std::vector<std::vector<float>> scratch_;  // one per chunk
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
