#include "core/corruption.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace sae {

absl::string_view CorruptionName(CorruptionKind kind) {
  switch (kind) {
    case CorruptionKind::kNone:
      return "none";
    case CorruptionKind::kGaussian:
      return "gaussian";
    case CorruptionKind::kMasking:
      return "masking";
    case CorruptionKind::kSaltAndPepper:
      return "salt_and_pepper";
  }
  return "unknown";
}

absl::StatusOr<CorruptionKind> ParseCorruption(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "none" || lower.empty()) return CorruptionKind::kNone;
  if (lower == "gaussian") return CorruptionKind::kGaussian;
  if (lower == "masking" || lower == "mask") return CorruptionKind::kMasking;
  if (lower == "salt_and_pepper" || lower == "salt-and-pepper") {
    return CorruptionKind::kSaltAndPepper;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown corruption '", name,
      "'; expected none, gaussian, masking or salt_and_pepper"));
}

absl::Status CorruptionOptions::Validate() const {
  if (!std::isfinite(sigma) || sigma < 0) {
    return absl::InvalidArgumentError("corruption.sigma: must be finite and >= 0");
  }
  if (!(probability >= 0 && probability <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("corruption.probability: must be in [0, 1], got ", probability));
  }
  if (!std::isfinite(low) || !std::isfinite(high) || !(low <= high)) {
    return absl::InvalidArgumentError(
        "corruption.low/high: need finite low <= high");
  }
  return absl::OkStatus();
}

void Corrupt(const CorruptionOptions& options, ConstMatrixRef clean,
             std::mt19937_64& rng, MatrixRef out) {
  out = clean;
  const Eigen::Index cols = out.cols();
  switch (options.kind) {
    case CorruptionKind::kNone:
      break;
    case CorruptionKind::kGaussian: {
      std::normal_distribution<float> normal(0.0f, options.sigma);
      for (Eigen::Index r = 0; r < out.rows(); ++r) {
        float* row = out.row(r).data();
        for (Eigen::Index c = 0; c < cols; ++c) row[c] += normal(rng);
      }
      break;
    }
    case CorruptionKind::kMasking: {
      std::bernoulli_distribution drop(options.probability);
      for (Eigen::Index r = 0; r < out.rows(); ++r) {
        float* row = out.row(r).data();
        for (Eigen::Index c = 0; c < cols; ++c) {
          if (drop(rng)) row[c] = 0.0f;
        }
      }
      break;
    }
    case CorruptionKind::kSaltAndPepper: {
      std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
      const float p = options.probability;
      for (Eigen::Index r = 0; r < out.rows(); ++r) {
        float* row = out.row(r).data();
        for (Eigen::Index c = 0; c < cols; ++c) {
          const float u = uniform(rng);
          if (u < p) row[c] = u < 0.5f * p ? options.low : options.high;
        }
      }
      break;
    }
  }
  if (options.clip) {
    for (Eigen::Index r = 0; r < out.rows(); ++r) {
      out.row(r) = out.row(r).cwiseMax(options.low).cwiseMin(options.high);
    }
  }
}

}  // namespace sae
