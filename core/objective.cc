#include "core/objective.h"

#include <algorithm>
#include <cmath>

#include "core/activations.h"
#include "core/blas.h"

namespace sae {
namespace {

// Keeps log() finite when a unit's mean activation reaches 0 or 1.
constexpr double kKlClamp = 1e-6;

void EnsureShape(RowMatrix& m, Eigen::Index rows, Eigen::Index cols) {
  if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
}

// Fills output = x_hat - target and returns the sums for the loss and FVU.
void ResidualStats(ConstMatrixRef target, RowMatrix& output, LossTerms* t) {
  output -= target;
  t->squared_error_sum = output.cast<double>().squaredNorm();
  const Eigen::RowVectorXd mean = target.cast<double>().colwise().mean();
  t->target_variance_sum =
      (target.cast<double>().rowwise() - mean).squaredNorm();
}

LossTerms DenseLoss(const ModelConfig& config, const ParameterSet& params,
                    ConstMatrixRef target, ObjectiveWorkspace& ws,
                    Gradients* grads) {
  const Eigen::Index batch = ws.centered.rows();
  const double inv_b = 1.0 / static_cast<double>(batch);
  LossTerms t;
  RowMatrix& codes = ws.pre;
  codes.rowwise() = params.b_enc().transpose();
  Gemm(Transpose::kNo, Transpose::kYes, 1.0f, ws.centered, params.w_enc_t(),
       1.0f, codes);
  const bool sigmoid = config.activation == Activation::kSigmoid;
  if (sigmoid) {
    SigmoidInPlace(codes);
  } else {
    ReluInPlace(codes);
  }
  const float threshold = ActiveThreshold(config.activation);
  int64_t active = 0;
  std::fill(ws.unit_fired.begin(), ws.unit_fired.end(), 0);
  for (Eigen::Index b = 0; b < batch; ++b) {
    const float* row = codes.row(b).data();
    for (Eigen::Index j = 0; j < codes.cols(); ++j) {
      if (row[j] > threshold) {
        ++active;
        ws.unit_fired[j] = 1;
      }
    }
  }
  t.mean_l0 = static_cast<double>(active) * inv_b;

  ws.output.rowwise() = params.b_dec().transpose();
  Gemm(Transpose::kNo, Transpose::kNo, 1.0f, codes, params.w_dec(), 1.0f,
       ws.output);
  ResidualStats(target, ws.output, &t);
  t.reconstruction = t.squared_error_sum * inv_b;

  Eigen::VectorXd rho_hat;
  if (sigmoid) {
    rho_hat = codes.cast<double>().colwise().mean().transpose();
    const double rho = config.kl_rho;
    double kl = 0;
    for (Eigen::Index j = 0; j < rho_hat.size(); ++j) {
      const double r = std::clamp(rho_hat[j], kKlClamp, 1 - kKlClamp);
      kl += rho * std::log(rho / r) + (1 - rho) * std::log((1 - rho) / (1 - r));
    }
    t.sparsity = config.kl_beta * kl;
  } else {
    t.sparsity = config.l1_coefficient * codes.cast<double>().sum() * inv_b;
  }
  t.total = t.reconstruction + t.sparsity;
  if (grads == nullptr) return t;

  ParameterSet& g = grads->values;
  std::fill(grads->unit_touched.begin(), grads->unit_touched.end(), 1);
  RowMatrix& d_out = ws.output;
  d_out *= static_cast<float>(2.0 * inv_b);
  Gemm(Transpose::kYes, Transpose::kNo, 1.0f, codes, d_out, 0.0f, g.w_dec());
  Vector d_b_dec = d_out.colwise().sum().transpose();
  RowMatrix& d_pre = ws.grad_codes;
  Gemm(Transpose::kNo, Transpose::kYes, 1.0f, d_out, params.w_dec(), 0.0f,
       d_pre);
  if (sigmoid) {
    Eigen::RowVectorXf d_kl(rho_hat.size());
    const double rho = config.kl_rho;
    for (Eigen::Index j = 0; j < rho_hat.size(); ++j) {
      const double r = std::clamp(rho_hat[j], kKlClamp, 1 - kKlClamp);
      d_kl[j] = static_cast<float>(config.kl_beta * inv_b *
                                   (-rho / r + (1 - rho) / (1 - r)));
    }
    d_pre.rowwise() += d_kl;
    d_pre.array() *= codes.array() * (1.0f - codes.array());
  } else {
    const float l1 = static_cast<float>(config.l1_coefficient * inv_b);
    d_pre = (codes.array() > 0.0f).select(d_pre.array() + l1, 0.0f);
  }
  g.b_enc() = d_pre.colwise().sum().transpose();
  Gemm(Transpose::kYes, Transpose::kNo, 1.0f, d_pre, ws.centered, 0.0f,
       g.w_enc_t());
  // b_dec is subtracted from the input too: that path contributes
  // -W_enc_t^T d_b_enc, a matrix-vector product instead of a sixth GEMM.
  d_b_dec.noalias() -= params.w_enc_t().transpose() * g.b_enc();
  g.b_dec() = d_b_dec;
  return t;
}

LossTerms TopKLoss(const ModelConfig& config, const ParameterSet& params,
                   ConstMatrixRef target, ObjectiveWorkspace& ws,
                   Gradients* grads) {
  const Eigen::Index batch = ws.centered.rows();
  const int64_t k = config.k;
  const double inv_b = 1.0 / static_cast<double>(batch);
  LossTerms t;
  ws.pre.rowwise() = params.b_enc().transpose();
  Gemm(Transpose::kNo, Transpose::kYes, 1.0f, ws.centered, params.w_enc_t(),
       1.0f, ws.pre);
  ws.topk_indices.resize(static_cast<size_t>(batch * k));
  ws.topk_values.resize(static_cast<size_t>(batch * k));
  SelectTopK(ws.pre, k, ws.topk_indices.data(), ws.topk_values.data());
  const int32_t* idx = ws.topk_indices.data();
  const float* val = ws.topk_values.data();

  auto w_dec = params.w_dec();
  int64_t active = 0;
  double l1_sum = 0;
  std::fill(ws.unit_fired.begin(), ws.unit_fired.end(), 0);
  ws.output.rowwise() = params.b_dec().transpose();
  for (Eigen::Index b = 0; b < batch; ++b) {
    auto out_row = ws.output.row(b);
    for (int64_t s = 0; s < k; ++s) {
      const float v = val[b * k + s];
      if (v > 0.0f) {
        const int32_t j = idx[b * k + s];
        out_row += v * w_dec.row(j);
        ws.unit_fired[j] = 1;
        ++active;
        l1_sum += v;
      }
    }
  }
  t.mean_l0 = static_cast<double>(active) * inv_b;
  ResidualStats(target, ws.output, &t);
  t.reconstruction = t.squared_error_sum * inv_b;
  t.sparsity = config.l1_coefficient * l1_sum * inv_b;
  t.total = t.reconstruction + t.sparsity;
  if (grads == nullptr) return t;

  ParameterSet& g = grads->values;
  auto g_w_dec = g.w_dec();
  auto g_w_enc_t = g.w_enc_t();
  auto g_b_enc = g.b_enc();
  std::vector<uint8_t>& touched = grads->unit_touched;
  std::fill(touched.begin(), touched.end(), 0);
  g_b_enc.setZero();
  RowMatrix& d_out = ws.output;
  d_out *= static_cast<float>(2.0 * inv_b);
  const float l1 = static_cast<float>(config.l1_coefficient * inv_b);
  for (Eigen::Index b = 0; b < batch; ++b) {
    auto d_row = d_out.row(b);
    auto x_row = ws.centered.row(b);
    for (int64_t s = 0; s < k; ++s) {
      const float v = val[b * k + s];
      if (v <= 0.0f) continue;  // ReLU after TopK: no gradient
      const int32_t j = idx[b * k + s];
      if (!touched[j]) {
        touched[j] = 1;
        g_w_dec.row(j).setZero();
        g_w_enc_t.row(j).setZero();
      }
      g_w_dec.row(j) += v * d_row;
      const float d_f = d_row.dot(w_dec.row(j)) + l1;
      g_b_enc[j] += d_f;
      g_w_enc_t.row(j) += d_f * x_row;
    }
  }
  Vector d_b_dec = d_out.colwise().sum().transpose();
  auto w_enc_t = params.w_enc_t();
  for (Eigen::Index j = 0; j < g_b_enc.size(); ++j) {
    if (touched[j]) d_b_dec -= g_b_enc[j] * w_enc_t.row(j).transpose();
  }
  g.b_dec() = d_b_dec;
  return t;
}

}  // namespace

float ActiveThreshold(Activation activation) {
  return activation == Activation::kSigmoid ? 0.5f : 0.0f;
}

LossTerms ComputeLoss(const ModelConfig& config, const ParameterSet& params,
                      ConstMatrixRef input, ConstMatrixRef target,
                      ObjectiveWorkspace* workspace, Gradients* grads) {
  ObjectiveWorkspace& ws = *workspace;
  const Eigen::Index batch = input.rows();
  EnsureShape(ws.centered, batch, config.d_in);
  EnsureShape(ws.pre, batch, config.d_hidden);
  EnsureShape(ws.output, batch, config.d_in);
  ws.unit_fired.resize(static_cast<size_t>(config.d_hidden));
  ws.centered = input.rowwise() - params.b_dec().transpose();
  if (config.activation == Activation::kTopK) {
    return TopKLoss(config, params, target, ws, grads);
  }
  if (grads != nullptr) EnsureShape(ws.grad_codes, batch, config.d_hidden);
  return DenseLoss(config, params, target, ws, grads);
}

}  // namespace sae
