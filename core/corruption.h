// Input corruption for denoising training (Vincent et al. 2008): the encoder
// sees a corrupted row, the loss compares against the clean one.
#ifndef SAE_CORE_CORRUPTION_H_
#define SAE_CORE_CORRUPTION_H_

#include <cstdint>
#include <random>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace sae {

enum class CorruptionKind {
  kNone,
  kGaussian,      // x + N(0, sigma^2)
  kMasking,       // each value zeroed with probability p
  kSaltAndPepper  // each value set to low or high (half each) with prob. p
};
absl::string_view CorruptionName(CorruptionKind kind);
absl::StatusOr<CorruptionKind> ParseCorruption(absl::string_view name);

struct CorruptionOptions {
  CorruptionKind kind = CorruptionKind::kNone;
  float sigma = 0.1f;        // Gaussian standard deviation, >= 0
  float probability = 0.1f;  // masking / salt-and-pepper, [0, 1]
  float low = 0.0f;          // salt-and-pepper "pepper" value
  float high = 1.0f;         // salt-and-pepper "salt" value
  // Clip corrupted values to [low, high] (for data known to live there,
  // such as pixels in [0, 1]).
  bool clip = false;

  absl::Status Validate() const;
};

// Writes a corrupted copy of `clean` into `out` (same shape), drawing from
// `rng`. The same rng state gives the same output.
void Corrupt(const CorruptionOptions& options, ConstMatrixRef clean,
             std::mt19937_64& rng, MatrixRef out);

}  // namespace sae

#endif  // SAE_CORE_CORRUPTION_H_
