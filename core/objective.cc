#include "core/objective.h"

#include <algorithm>
#include <cmath>

#include "core/activations.h"
#include "core/blas.h"
#include "core/parallel.h"

namespace sae {
namespace {

// Keeps log() finite when a unit's mean activation reaches 0 or 1.
constexpr double kKlClamp = 1e-6;

void EnsureShape(RowMatrix& m, Eigen::Index rows, Eigen::Index cols) {
  if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
}

// Turns output (x_hat) into the residual x_hat - target and fills the sums
// for the loss and FVU, in one pass over the batch.
void ResidualStats(ConstMatrixRef target, RowMatrix& output, LossTerms* t) {
  const Eigen::Index cols = output.cols();
  Eigen::ArrayXd col_sum = Eigen::ArrayXd::Zero(cols);
  Eigen::ArrayXd col_sq = Eigen::ArrayXd::Zero(cols);
  double err = 0;
  for (Eigen::Index b = 0; b < output.rows(); ++b) {
    float* out = output.row(b).data();
    const float* tgt = target.row(b).data();
    for (Eigen::Index c = 0; c < cols; ++c) {
      out[c] -= tgt[c];
      col_sum[c] += tgt[c];
      col_sq[c] += static_cast<double>(tgt[c]) * tgt[c];
    }
    err += output.row(b).squaredNorm();  // vectorised reduction
  }
  const double n = static_cast<double>(output.rows());
  t->squared_error_sum = err;
  // sum over rows of (t - mean)^2 = sum t^2 - (sum t)^2 / n, per column.
  t->target_variance_sum =
      std::max(0.0, (col_sq - col_sum.square() / n).sum());
}

// Adds each row of m into out (out = column sums of m), vectorised along rows.
void ColumnSums(const RowMatrix& m, Eigen::Ref<Vector> out) {
  out.setZero();
  for (Eigen::Index b = 0; b < m.rows(); ++b) out += m.row(b).transpose();
}

LossTerms DenseLoss(const ModelConfig& config, const ParameterSet& params,
                    ConstMatrixRef target, ObjectiveWorkspace& ws,
                    Gradients* grads) {
  const Eigen::Index batch = ws.centered.rows();
  const Eigen::Index d_h = config.d_hidden;
  const double inv_b = 1.0 / static_cast<double>(batch);
  LossTerms t;
  EnsureShape(ws.pre, batch, d_h);
  RowMatrix& codes = ws.pre;
  Gemm(Transpose::kNo, Transpose::kYes, 1.0f, ws.centered, params.w_enc_t(),
       0.0f, codes);
  // One pass: bias, activation, activity counts and the L1 sum.
  const bool sigmoid = config.activation == Activation::kSigmoid;
  const float threshold = ActiveThreshold(config.activation);
  const float* b_enc = params.b_enc().data();
  uint8_t* fired = ws.unit_fired.data();
  std::fill(ws.unit_fired.begin(), ws.unit_fired.end(), 0);
  int64_t active = 0;
  double code_sum = 0;
  for (Eigen::Index b = 0; b < batch; ++b) {
    float* row = codes.row(b).data();
    int64_t row_active = 0;
    for (Eigen::Index j = 0; j < d_h; ++j) {
      const float p = row[j] + b_enc[j];
      const float f = sigmoid ? 1.0f / (1.0f + std::exp(-p)) : std::max(p, 0.0f);
      row[j] = f;
      const bool on = f > threshold;
      row_active += on;
      fired[j] |= on;
    }
    active += row_active;
    code_sum += codes.row(b).sum();  // vectorised reduction
  }
  t.mean_l0 = static_cast<double>(active) * inv_b;

  ws.output.rowwise() = params.b_dec().transpose();
  Gemm(Transpose::kNo, Transpose::kNo, 1.0f, codes, params.w_dec(), 1.0f,
       ws.output);
  ResidualStats(target, ws.output, &t);
  t.reconstruction = t.squared_error_sum * inv_b;

  Eigen::VectorXd rho_hat;
  if (sigmoid) {
    rho_hat = Eigen::VectorXd::Zero(d_h);
    for (Eigen::Index b = 0; b < batch; ++b) rho_hat += codes.row(b).transpose().cast<double>();
    rho_hat *= inv_b;
    const double rho = config.kl_rho;
    double kl = 0;
    for (Eigen::Index j = 0; j < d_h; ++j) {
      const double r = std::clamp(rho_hat[j], kKlClamp, 1 - kKlClamp);
      kl += rho * std::log(rho / r) + (1 - rho) * std::log((1 - rho) / (1 - r));
    }
    t.sparsity = config.kl_beta * kl;
  } else {
    t.sparsity = config.l1_coefficient * code_sum * inv_b;
  }
  t.total = t.reconstruction + t.sparsity;
  if (grads == nullptr) return t;

  ParameterSet& g = grads->values;
  std::fill(grads->unit_touched.begin(), grads->unit_touched.end(), 1);
  RowMatrix& d_out = ws.output;
  d_out *= static_cast<float>(2.0 * inv_b);
  Gemm(Transpose::kYes, Transpose::kNo, 1.0f, codes, d_out, 0.0f, g.w_dec());
  Vector d_b_dec(config.d_in);
  ColumnSums(d_out, d_b_dec);
  RowMatrix& d_pre = ws.grad_codes;
  Gemm(Transpose::kNo, Transpose::kYes, 1.0f, d_out, params.w_dec(), 0.0f,
       d_pre);
  // One pass: activation derivative, penalty gradient, and d_b_enc.
  auto d_b_enc = g.b_enc();
  d_b_enc.setZero();
  float* db = d_b_enc.data();
  if (sigmoid) {
    Eigen::VectorXf d_kl(d_h);
    const double rho = config.kl_rho;
    for (Eigen::Index j = 0; j < d_h; ++j) {
      const double r = std::clamp(rho_hat[j], kKlClamp, 1 - kKlClamp);
      d_kl[j] = static_cast<float>(config.kl_beta * inv_b *
                                   (-rho / r + (1 - rho) / (1 - r)));
    }
    for (Eigen::Index b = 0; b < batch; ++b) {
      float* dp = d_pre.row(b).data();
      const float* f = codes.row(b).data();
      for (Eigen::Index j = 0; j < d_h; ++j) {
        const float v = (dp[j] + d_kl[j]) * f[j] * (1.0f - f[j]);
        dp[j] = v;
        db[j] += v;
      }
    }
  } else {
    const float l1 = static_cast<float>(config.l1_coefficient * inv_b);
    for (Eigen::Index b = 0; b < batch; ++b) {
      float* dp = d_pre.row(b).data();
      const float* f = codes.row(b).data();
      for (Eigen::Index j = 0; j < d_h; ++j) {
        const float v = f[j] > 0.0f ? dp[j] + l1 : 0.0f;
        dp[j] = v;
        db[j] += v;
      }
    }
  }
  Gemm(Transpose::kYes, Transpose::kNo, 1.0f, d_pre, ws.centered, 0.0f,
       g.w_enc_t());
  // b_dec is subtracted from the input too: that path contributes
  // -W_enc_t^T d_b_enc, a matrix-vector product instead of a sixth GEMM.
  d_b_dec.noalias() -= params.w_enc_t().transpose() * d_b_enc;
  g.b_dec() = d_b_dec;
  return t;
}

LossTerms TopKLoss(const ModelConfig& config, const ParameterSet& params,
                   ConstMatrixRef target, ObjectiveWorkspace& ws,
                   Gradients* grads, const UnitGradientSink* sink) {
  const Eigen::Index batch = ws.centered.rows();
  const int64_t k = config.k;
  const int64_t d_h = config.d_hidden;
  const double inv_b = 1.0 / static_cast<double>(batch);
  LossTerms t;
  ws.topk_indices.resize(static_cast<size_t>(batch * k));
  ws.topk_values.resize(static_cast<size_t>(batch * k));
  const bool screened =
      ws.use_topk_screen && ws.topk_screen.ShouldSelect(batch, config.d_in, d_h, k) &&
      ws.topk_screen.Select(ws.centered, params.w_enc_t(), params.b_enc().data(), k,
                            ws.topk_indices.data(), ws.topk_values.data());
  ws.topk_screened = screened;
  if (screened) {
    ws.pre = RowMatrix();  // the screen holds its own products; free the full ones
  } else {
    EnsureShape(ws.pre, batch, d_h);
    ws.pre.rowwise() = params.b_enc().transpose();
    Gemm(Transpose::kNo, Transpose::kYes, 1.0f, ws.centered, params.w_enc_t(),
         1.0f, ws.pre);
    ParallelFor(batch, 16, [&](int, int64_t r0, int64_t r1) {
      SelectTopK(ws.pre.middleRows(r0, r1 - r0), k, ws.topk_indices.data() + r0 * k,
                 ws.topk_values.data() + r0 * k);
    });
  }
  const int32_t* idx = ws.topk_indices.data();
  const float* val = ws.topk_values.data();

  // Group the active (row, slot) pairs by unit: unit j's entries are
  // by_unit[unit_start[j] .. unit_start[j+1]), each an index b * k + s.
  ws.unit_start.assign(static_cast<size_t>(d_h) + 1, 0);
  int64_t active = 0;
  double l1_sum = 0;
  for (int64_t e = 0; e < batch * k; ++e) {
    if (val[e] > 0.0f) {
      ++ws.unit_start[idx[e] + 1];
      ++active;
      l1_sum += val[e];
    }
  }
  for (int64_t j = 0; j < d_h; ++j) ws.unit_start[j + 1] += ws.unit_start[j];
  ws.by_unit.resize(static_cast<size_t>(active));
  {
    std::vector<int64_t>& fill = ws.unit_fill;
    fill.assign(ws.unit_start.begin(), ws.unit_start.end() - 1);
    for (int64_t e = 0; e < batch * k; ++e) {
      if (val[e] > 0.0f) ws.by_unit[fill[idx[e]]++] = static_cast<int32_t>(e);
    }
  }
  for (int64_t j = 0; j < d_h; ++j) {
    ws.unit_fired[j] = ws.unit_start[j + 1] > ws.unit_start[j];
  }

  // Sparse decode: each row sums its k active decoder rows. Threads split
  // the units, so that each decoder row is read once in all (the pass is
  // bound by reading them); chunk 0 sums into the output (from b_dec), the
  // others into zeroed scratch of their own, added in chunk order.
  auto w_dec = params.w_dec();
  const int parts = Parallelism();
  if (static_cast<int>(ws.decode_parts.size()) < parts - 1) ws.decode_parts.resize(parts - 1);
  std::vector<char> used(static_cast<size_t>(parts), 0);
  ParallelFor(d_h, 256, [&](int chunk, int64_t j0, int64_t j1) {
    RowMatrix& out = chunk == 0 ? ws.output : ws.decode_parts[chunk - 1];
    if (chunk == 0) {
      out.rowwise() = params.b_dec().transpose();
    } else {
      EnsureShape(out, batch, config.d_in);
      out.setZero();
    }
    used[chunk] = 1;
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t e = ws.unit_start[j]; e < ws.unit_start[j + 1]; ++e) {
        const int32_t entry = ws.by_unit[e];
        out.row(entry / k) += val[entry] * w_dec.row(j);
      }
    }
  });
  for (int c = 1; c < parts; ++c) {
    if (used[c]) ws.output += ws.decode_parts[c - 1];
  }
  t.mean_l0 = static_cast<double>(active) * inv_b;
  ResidualStats(target, ws.output, &t);
  t.reconstruction = t.squared_error_sum * inv_b;
  t.sparsity = config.l1_coefficient * l1_sum * inv_b;
  t.total = t.reconstruction + t.sparsity;
  if (grads == nullptr) return t;
  if (sink != nullptr && !std::isfinite(t.total)) return t;

  // Backward, one unit at a time: every gradient row is written once and
  // only for units that fired (ReLU after TopK: others get no gradient).
  // With a sink the rows are made in per-chunk scratch and handed over.
  ParameterSet& g = grads->values;
  auto g_w_dec = g.w_dec();
  auto g_w_enc_t = g.w_enc_t();
  auto g_b_enc = g.b_enc();
  auto w_enc_t = params.w_enc_t();
  RowMatrix& d_out = ws.output;
  d_out *= static_cast<float>(2.0 * inv_b);
  Vector d_b_dec(config.d_in);
  ColumnSums(d_out, d_b_dec);
  const float l1 = static_cast<float>(config.l1_coefficient * inv_b);
  // Units split across threads; each chunk keeps its own b_dec partial,
  // summed in chunk order so the result does not depend on timing.
  std::vector<Vector> partial_b_dec(static_cast<size_t>(Parallelism()));
  if (sink != nullptr) ws.unit_rows.resize(partial_b_dec.size());
  const Eigen::Index d_in = config.d_in;
  ParallelFor(d_h, 64, [&](int chunk, int64_t j0, int64_t j1) {
    Vector& part = partial_b_dec[chunk];
    part = Vector::Zero(config.d_in);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t begin = ws.unit_start[j], end = ws.unit_start[j + 1];
      grads->unit_touched[j] = begin < end;
      if (begin == end) {
        g_b_enc[j] = 0.0f;
        if (sink != nullptr) (*sink)(j, nullptr, nullptr);
        continue;
      }
      float* gd_data = g_w_dec.row(j).data();
      float* ge_data = g_w_enc_t.row(j).data();
      if (sink != nullptr) {
        std::vector<float>& rows = ws.unit_rows[chunk];
        rows.resize(static_cast<size_t>(2 * d_in));
        gd_data = rows.data();
        ge_data = rows.data() + d_in;
      }
      Eigen::Map<RowVector> gd(gd_data, d_in);
      Eigen::Map<RowVector> ge(ge_data, d_in);
      const auto wd = w_dec.row(j);
      if (j + 1 < j1) {
        // The next unit's decoder row is read from its first entry on and
        // its encoder row after its last: ask for both now, while this
        // unit computes.
        const char* next_rows[] = {reinterpret_cast<const char*>(w_enc_t.row(j + 1).data()),
                                   reinterpret_cast<const char*>(w_dec.row(j + 1).data())};
        const int64_t bytes = d_in * static_cast<int64_t>(sizeof(float));
        for (const char* row : next_rows) {
          for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b);
          __builtin_prefetch(row + bytes - 1);  // the last line, when rows are not aligned
        }
      }
      float db = 0.0f;
      for (int64_t e = begin; e < end; ++e) {
        const int32_t entry = ws.by_unit[e];
        const Eigen::Index b = entry / k;
        const auto d_row = d_out.row(b);
        const float d_f = d_row.dot(wd) + l1;
        if (e == begin) {
          gd = val[entry] * d_row;
          ge = d_f * ws.centered.row(b);
        } else {
          gd += val[entry] * d_row;
          ge += d_f * ws.centered.row(b);
        }
        db += d_f;
      }
      g_b_enc[j] = db;
      part -= db * w_enc_t.row(j).transpose();
      if (sink != nullptr) (*sink)(j, ge_data, gd_data);
    }
  });
  for (const Vector& part : partial_b_dec) {
    if (part.size() == d_b_dec.size()) d_b_dec += part;
  }
  g.b_dec() = d_b_dec;
  return t;
}

// Sizes the workspace for `input` and fills ws.centered.
void PrepareWorkspace(const ModelConfig& config, const ParameterSet& params,
                      ConstMatrixRef input, ObjectiveWorkspace& ws) {
  const Eigen::Index batch = input.rows();
  EnsureShape(ws.centered, batch, config.d_in);
  EnsureShape(ws.output, batch, config.d_in);
  ws.unit_fired.resize(static_cast<size_t>(config.d_hidden));
  ws.centered = input.rowwise() - params.b_dec().transpose();
}

}  // namespace

float ActiveThreshold(Activation activation) {
  // Sigmoid units are never exactly zero: those above one half count.
  return activation == Activation::kSigmoid ? 0.5f : 0.0f;
}

LossTerms ComputeLoss(const ModelConfig& config, const ParameterSet& params,
                      ConstMatrixRef input, ConstMatrixRef target,
                      ObjectiveWorkspace* workspace, Gradients* grads) {
  ObjectiveWorkspace& ws = *workspace;
  PrepareWorkspace(config, params, input, ws);
  if (config.activation == Activation::kTopK) {
    return TopKLoss(config, params, target, ws, grads, nullptr);
  }
  if (grads != nullptr) EnsureShape(ws.grad_codes, input.rows(), config.d_hidden);
  return DenseLoss(config, params, target, ws, grads);
}

LossTerms ComputeLossWithUnitSink(const ModelConfig& config, const ParameterSet& params,
                                  ConstMatrixRef input, ConstMatrixRef target,
                                  ObjectiveWorkspace* workspace, Gradients* grads,
                                  UnitGradientSink sink) {
  if (grads == nullptr) return ComputeLoss(config, params, input, target, workspace, nullptr);
  if (config.activation != Activation::kTopK) {
    // Dense gradients come from GEMMs: hand their rows over afterwards.
    const LossTerms t = ComputeLoss(config, params, input, target, workspace, grads);
    if (!std::isfinite(t.total)) return t;
    ParallelFor(config.d_hidden, 64, [&](int, int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const bool touched = grads->unit_touched[j] != 0;
        sink(j, touched ? grads->values.w_enc_t().row(j).data() : nullptr,
             touched ? grads->values.w_dec().row(j).data() : nullptr);
      }
    });
    return t;
  }
  ObjectiveWorkspace& ws = *workspace;
  PrepareWorkspace(config, params, input, ws);
  return TopKLoss(config, params, target, ws, grads, &sink);
}

}  // namespace sae
