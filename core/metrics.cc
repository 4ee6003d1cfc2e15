#include "core/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/objective.h"

namespace sae {
namespace {

constexpr Eigen::Index kEvalChunk = 1024;

absl::Status SameShape(ConstMatrixRef a, ConstMatrixRef b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shapes differ: [", a.rows(), ", ", a.cols(), "] vs [",
                     b.rows(), ", ", b.cols(), "]"));
  }
  return absl::OkStatus();
}

}  // namespace

double MeanSquaredError(ConstMatrixRef a, ConstMatrixRef b) {
  if (a.size() == 0) return 0;
  return (a.cast<double>() - b.cast<double>()).squaredNorm() /
         static_cast<double>(a.size());
}

double FractionOfVarianceUnexplained(ConstMatrixRef x, ConstMatrixRef x_hat) {
  const double err = (x.cast<double>() - x_hat.cast<double>()).squaredNorm();
  const Eigen::RowVectorXd mean = x.cast<double>().colwise().mean();
  const double var = (x.cast<double>().rowwise() - mean).squaredNorm();
  if (var == 0) return err == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return err / var;
}

double Psnr(ConstMatrixRef clean, ConstMatrixRef estimate, double peak) {
  const double mse = MeanSquaredError(clean, estimate);
  if (mse == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(peak * peak / mse);
}

double MeanL0(ConstMatrixRef codes, float threshold) {
  if (codes.rows() == 0) return 0;
  return static_cast<double>((codes.array() > threshold).count()) /
         static_cast<double>(codes.rows());
}

absl::StatusOr<QualityMetrics> Evaluate(const Model& model, ConstMatrixRef x) {
  if (x.rows() == 0) return absl::InvalidArgumentError("no rows to evaluate");
  if (x.cols() != model.d_in()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data has ", x.cols(), " columns, the model expects ", model.d_in()));
  }
  const float threshold = ActiveThreshold(model.config().activation);
  std::vector<uint8_t> fired(static_cast<size_t>(model.d_hidden()), 0);
  double err = 0, active = 0;
  const Eigen::RowVectorXd mean = x.cast<double>().colwise().mean();
  const double var = (x.cast<double>().rowwise() - mean).squaredNorm();
  for (Eigen::Index r0 = 0; r0 < x.rows(); r0 += kEvalChunk) {
    const Eigen::Index n = std::min(kEvalChunk, x.rows() - r0);
    auto chunk = x.middleRows(r0, n);
    absl::StatusOr<RowMatrix> c = model.Encode(chunk);
    if (!c.ok()) return c.status();
    absl::StatusOr<RowMatrix> out = model.Reconstruct(chunk);
    if (!out.ok()) return out.status();
    err += (chunk.cast<double>() - out->cast<double>()).squaredNorm();
    for (Eigen::Index r = 0; r < n; ++r) {
      for (Eigen::Index j = 0; j < c->cols(); ++j) {
        if ((*c)(r, j) > threshold) {
          fired[j] = 1;
          active += 1;
        }
      }
    }
  }
  QualityMetrics m;
  m.rows = x.rows();
  m.mse = err / static_cast<double>(x.size());
  m.fvu = var > 0 ? err / var : (err == 0 ? 0.0 : 1.0);
  m.mean_l0 = active / static_cast<double>(x.rows());
  m.dead_fraction =
      static_cast<double>(std::count(fired.begin(), fired.end(), 0)) /
      static_cast<double>(fired.size());
  const double peak = static_cast<double>(x.maxCoeff() - x.minCoeff());
  m.psnr_db = m.mse > 0 && peak > 0 ? 10.0 * std::log10(peak * peak / m.mse)
                                    : std::numeric_limits<double>::infinity();
  return m;
}

absl::StatusOr<DenoisingMetrics> EvaluateDenoising(const Model& model,
                                                   ConstMatrixRef clean,
                                                   ConstMatrixRef noisy,
                                                   double peak) {
  if (absl::Status s = SameShape(clean, noisy); !s.ok()) return s;
  absl::StatusOr<RowMatrix> denoised = model.Denoise(noisy);
  if (!denoised.ok()) return denoised.status();
  DenoisingMetrics m;
  m.noisy_psnr_db = Psnr(clean, noisy, peak);
  m.denoised_psnr_db = Psnr(clean, *denoised, peak);
  return m;
}

}  // namespace sae
