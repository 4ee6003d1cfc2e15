#include "core/model_config.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace sae {
namespace {

// Caps that keep one model below a few GiB of float32 weights.
constexpr int64_t kMaxWidth = 1 << 20;
constexpr int64_t kMaxWeights = int64_t{1} << 30;

absl::Status Bad(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("config.", field, ": ", why));
}

}  // namespace

absl::string_view ActivationName(Activation activation) {
  switch (activation) {
    case Activation::kRelu:
      return "relu";
    case Activation::kTopK:
      return "topk";
    case Activation::kSigmoid:
      return "sigmoid";
    case Activation::kJumpRelu:
      return "jumprelu";
  }
  return "unknown";
}

absl::StatusOr<Activation> ParseActivation(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "relu") return Activation::kRelu;
  if (lower == "topk") return Activation::kTopK;
  if (lower == "sigmoid") return Activation::kSigmoid;
  if (lower == "jumprelu") return Activation::kJumpRelu;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown activation '", name, "'; expected relu, topk, sigmoid or jumprelu"));
}

absl::Status ModelConfig::Validate() const {
  if (d_in < 1 || d_in > kMaxWidth) {
    return Bad("d_in", absl::StrCat("must be in [1, ", kMaxWidth, "], got ", d_in));
  }
  if (d_hidden < 1 || d_hidden > kMaxWidth) {
    return Bad("d_hidden",
               absl::StrCat("must be in [1, ", kMaxWidth, "], got ", d_hidden));
  }
  if (d_in * d_hidden > kMaxWeights) {
    return Bad("d_hidden", absl::StrCat("d_in * d_hidden = ", d_in * d_hidden,
                                        " exceeds the limit of ", kMaxWeights));
  }
  if (activation == Activation::kTopK) {
    if (k < 1 || k > d_hidden) {
      return Bad("k", absl::StrCat("TopK needs 1 <= k <= d_hidden (", d_hidden,
                                   "), got ", k));
    }
  } else if (k != 0) {
    return Bad("k", absl::StrCat("only TopK uses k; got k = ", k, " with ",
                                 ActivationName(activation)));
  }
  if (!std::isfinite(l1_coefficient) || l1_coefficient < 0) {
    return Bad("l1_coefficient", "must be finite and >= 0");
  }
  if (activation == Activation::kSigmoid && l1_coefficient != 0) {
    return Bad("l1_coefficient",
               "sigmoid units are never zero; use kl_beta for sparsity");
  }
  if (!(kl_rho > 0.0f && kl_rho < 1.0f)) {
    return Bad("kl_rho", absl::StrCat("must be in (0, 1), got ", kl_rho));
  }
  if (!std::isfinite(kl_beta) || kl_beta < 0) {
    return Bad("kl_beta", "must be finite and >= 0");
  }
  if (activation != Activation::kSigmoid && kl_beta != 0) {
    return Bad("kl_beta", "the KL penalty needs the sigmoid activation");
  }
  if (!std::isfinite(weight_decay) || weight_decay < 0) {
    return Bad("weight_decay", "must be finite and >= 0");
  }
  if (!std::isfinite(input_scale) || !(input_scale > 0)) {
    return Bad("input_scale", "must be finite and > 0");
  }
  if (clip_output && !(std::isfinite(clip_min) && std::isfinite(clip_max) &&
                       clip_min < clip_max)) {
    return Bad("clip_min", "need finite clip_min < clip_max");
  }
  return absl::OkStatus();
}

ModelConfig DefaultConfig(int64_t d_in, int64_t d_hidden,
                          Activation activation) {
  ModelConfig config;
  config.d_in = d_in;
  config.d_hidden = d_hidden;
  config.activation = activation;
  config.unit_norm_decoder = activation != Activation::kSigmoid;
  if (activation == Activation::kTopK) config.k = std::min<int64_t>(32, d_hidden);
  if (activation == Activation::kSigmoid) config.kl_beta = 3.0f;
  return config;
}

}  // namespace sae
