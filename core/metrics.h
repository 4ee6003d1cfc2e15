// Quality metrics reported by training, the service and the benchmarks.
#ifndef SAE_CORE_METRICS_H_
#define SAE_CORE_METRICS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/tensor.h"

namespace sae {

// Mean over all elements of (a - b)^2. Shapes must match.
double MeanSquaredError(ConstMatrixRef a, ConstMatrixRef b);

// Fraction of variance unexplained: sum ||x - x_hat||^2 over
// sum ||x - mean(x)||^2 (mean over rows). 0 is perfect, 1 is no better than
// predicting the mean. Returns 0 when x has no variance and x_hat == x.
double FractionOfVarianceUnexplained(ConstMatrixRef x, ConstMatrixRef x_hat);

// Peak signal-to-noise ratio in dB: 10 log10(peak^2 / MSE). +inf for MSE 0.
double Psnr(ConstMatrixRef clean, ConstMatrixRef estimate, double peak);

// Mean count per row of entries greater than `threshold`.
double MeanL0(ConstMatrixRef codes, float threshold);

struct QualityMetrics {
  int64_t rows = 0;
  double mse = 0;            // per element, in input units
  double fvu = 0;
  double mean_l0 = 0;        // active units per row
  double dead_fraction = 0;  // units active for no row of the set
  double psnr_db = 0;        // reconstruction PSNR with peak = max - min
};

// Encodes and reconstructs `x` with `model` (in chunks, bounded memory).
absl::StatusOr<QualityMetrics> Evaluate(const Model& model, ConstMatrixRef x);

// Denoising quality: `noisy` goes in, `clean` is the reference.
struct DenoisingMetrics {
  double noisy_psnr_db = 0;
  double denoised_psnr_db = 0;
};
absl::StatusOr<DenoisingMetrics> EvaluateDenoising(const Model& model,
                                                   ConstMatrixRef clean,
                                                   ConstMatrixRef noisy,
                                                   double peak);

}  // namespace sae

#endif  // SAE_CORE_METRICS_H_
