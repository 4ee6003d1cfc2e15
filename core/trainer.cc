#include "core/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/objective.h"
#include "core/parameters.h"

namespace sae {
namespace {

constexpr int64_t kMaxEvalRows = 10000;

// Independent random streams derived from the one seed.
enum class Stream : uint64_t { kInit = 1, kShuffle = 2, kNoise = 3, kSplit = 4 };
uint64_t StreamSeed(uint64_t seed, Stream stream) {
  // SplitMix64 finaliser: decorrelates nearby seeds.
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(stream);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

absl::Status CheckData(const ModelConfig& config, ConstMatrixRef data) {
  if (data.cols() != config.d_in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "training data has ", data.cols(), " columns, config.d_in is ",
        config.d_in));
  }
  if (data.rows() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("training needs at least 2 rows, got ", data.rows()));
  }
  for (Eigen::Index r = 0; r < data.rows(); ++r) {
    if (!data.row(r).allFinite()) {
      return absl::InvalidArgumentError(
          absl::StrCat("training data row ", r, " holds NaN or Inf"));
    }
  }
  return absl::OkStatus();
}

// Gathers rows `ids` of `data`, times `scale`, into `out`.
void GatherRows(ConstMatrixRef data, const int64_t* ids, int64_t n,
                float scale, RowMatrix* out) {
  if (out->rows() != n) out->resize(n, data.cols());
  for (int64_t i = 0; i < n; ++i) out->row(i) = data.row(ids[i]) * scale;
}

}  // namespace

absl::Status TrainerOptions::Validate() const {
  if (batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("trainer.batch_size: must be >= 1, got ", batch_size));
  }
  if (epochs < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("trainer.epochs: must be >= 1, got ", epochs));
  }
  if (max_steps < 0) {
    return absl::InvalidArgumentError("trainer.max_steps: must be >= 0");
  }
  if (!(validation_fraction >= 0 && validation_fraction <= 0.9)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trainer.validation_fraction: must be in [0, 0.9], got ",
        validation_fraction));
  }
  if (progress_every_steps < 0 || dead_window_rows < 0) {
    return absl::InvalidArgumentError(
        "trainer.progress_every_steps and dead_window_rows must be >= 0");
  }
  if (absl::Status s = optimizer.Validate(); !s.ok()) return s;
  return corruption.Validate();
}

absl::StatusOr<TrainingResult> Train(const ModelConfig& config_in,
                                     const TrainerOptions& options,
                                     ConstMatrixRef data,
                                     const TrainingHooks& hooks) {
  if (absl::Status s = config_in.Validate(); !s.ok()) return s;
  if (config_in.activation == Activation::kJumpRelu) {
    return absl::InvalidArgumentError(
        "config.activation: JumpReLU models can be imported and served but not "
        "trained here; train relu, topk or sigmoid");
  }
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (absl::Status s = CheckData(config_in, data); !s.ok()) return s;
  ModelConfig config = config_in;
  const auto start = std::chrono::steady_clock::now();

  // Split rows into training and validation sets.
  std::vector<int64_t> order(static_cast<size_t>(data.rows()));
  std::iota(order.begin(), order.end(), 0);
  int64_t validation_rows =
      static_cast<int64_t>(std::floor(options.validation_fraction *
                                      static_cast<double>(data.rows())));
  if (validation_rows > 0) {
    std::mt19937_64 split_rng(StreamSeed(options.seed, Stream::kSplit));
    std::shuffle(order.begin(), order.end(), split_rng);
  }
  const int64_t train_rows = data.rows() - validation_rows;
  std::vector<int64_t> train_ids(order.begin(), order.begin() + train_rows);
  std::vector<int64_t> validation_ids(order.begin() + train_rows, order.end());
  std::sort(train_ids.begin(), train_ids.end());
  std::sort(validation_ids.begin(), validation_ids.end());

  if (options.normalize_input) {
    double sq = 0;
    for (int64_t id : train_ids) sq += data.row(id).cast<double>().squaredNorm();
    const double mean_sq = sq / static_cast<double>(train_rows);
    config.input_scale =
        mean_sq > 0 ? static_cast<float>(std::sqrt(config.d_in / mean_sq)) : 1.0f;
  }
  const float scale = config.input_scale;

  ParameterSet params = ParameterSet::FromWeights(
      InitialWeights(config, StreamSeed(options.seed, Stream::kInit)));
  if (config.init_b_dec_to_mean) {
    Eigen::VectorXd mean = Eigen::VectorXd::Zero(config.d_in);
    for (int64_t id : train_ids) mean += data.row(id).cast<double>().transpose();
    params.b_dec() = (mean / static_cast<double>(train_rows) * scale).cast<float>();
  }
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer =
      Optimizer::Create(options.optimizer, params);
  if (!optimizer.ok()) return optimizer.status();

  const int64_t batch = std::min(options.batch_size, train_rows);
  const int64_t steps_per_epoch = (train_rows + batch - 1) / batch;
  const int64_t total_steps = options.max_steps > 0
                                  ? options.max_steps
                                  : steps_per_epoch * options.epochs;
  const int64_t dead_window =
      options.dead_window_rows > 0 ? options.dead_window_rows : train_rows;

  std::mt19937_64 shuffle_rng(StreamSeed(options.seed, Stream::kShuffle));
  std::mt19937_64 noise_rng(StreamSeed(options.seed, Stream::kNoise));
  const bool corrupt = options.corruption.kind != CorruptionKind::kNone;
  CorruptionOptions corruption = options.corruption;
  if (scale != 1.0f) {  // corruption is specified in data units
    corruption.sigma *= scale;
    corruption.low *= scale;
    corruption.high *= scale;
  }

  Gradients grads(config.d_in, config.d_hidden);
  ObjectiveWorkspace workspace;
  workspace.use_topk_screen = options.topk_screen;
  RowMatrix clean, noisy;
  std::vector<int64_t> last_fired(static_cast<size_t>(config.d_hidden), 0);
  int64_t rows_seen = 0;
  int64_t screened_steps = 0;
  double screen_candidates = 0;

  // Running sums since the last progress report.
  double sum_loss = 0, sum_err = 0, sum_var = 0, sum_l0 = 0;
  int64_t window_steps = 0, window_elems = 0;
  TrainingProgress progress;
  progress.total_steps = total_steps;
  auto dead_fraction = [&] {
    int64_t dead = 0;
    for (int64_t t : last_fired) dead += (rows_seen - t > dead_window) ? 1 : 0;
    return static_cast<double>(dead) / static_cast<double>(last_fired.size());
  };
  auto report = [&](int64_t step, int64_t epoch) {
    const double elapsed = std::chrono::duration<double>(
                               std::chrono::steady_clock::now() - start)
                               .count();
    progress.step = step;
    progress.epoch = epoch;
    progress.rows_seen = rows_seen;
    const double n = std::max<int64_t>(window_steps, 1);
    progress.loss = sum_loss / n;
    progress.mse = window_elems > 0 ? sum_err / static_cast<double>(window_elems) : 0;
    progress.fvu = sum_var > 0 ? sum_err / sum_var : 0;
    progress.mean_l0 = sum_l0 / n;
    progress.dead_fraction = dead_fraction();
    progress.elapsed_s = elapsed;
    progress.rows_per_s = elapsed > 0 ? rows_seen / elapsed : 0;
    progress.eta_s = step > 0 ? elapsed / step * (total_steps - step) : 0;
    progress.learning_rate = (*optimizer)->CurrentLearningRate();
    if (hooks.on_progress) hooks.on_progress(progress);
    sum_loss = sum_err = sum_var = sum_l0 = 0;
    window_steps = window_elems = 0;
  };

  int64_t step = 0;
  for (int64_t epoch = 0; step < total_steps; ++epoch) {
    std::shuffle(train_ids.begin(), train_ids.end(), shuffle_rng);
    for (int64_t b0 = 0; b0 < train_rows && step < total_steps; b0 += batch) {
      if (hooks.cancel != nullptr &&
          hooks.cancel->load(std::memory_order_relaxed)) {
        return absl::CancelledError(
            absl::StrCat("training cancelled after ", step, " of ",
                         total_steps, " steps"));
      }
      const int64_t n = std::min(batch, train_rows - b0);
      GatherRows(data, train_ids.data() + b0, n, scale, &clean);
      if (corrupt) {
        if (noisy.rows() != n) noisy.resize(n, config.d_in);
        Corrupt(corruption, clean, noise_rng, noisy);
      }
      // For TopK each unit's rows are updated as soon as the backward pass
      // has made their gradients (bitwise the same as ComputeLoss + Step;
      // saves writing and re-reading a gradient the size of the weights).
      const LossTerms terms = (*optimizer)->ComputeLossAndStep(
          config, corrupt ? noisy : clean, clean, &workspace, &grads, &params);
      if (!std::isfinite(terms.total)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "training diverged at step ", step,
            " (loss is not finite); lower the learning rate"));
      }

      rows_seen += n;
      if (workspace.topk_screened) {
        ++screened_steps;
        screen_candidates += workspace.topk_screen.candidates_per_row();
      }
      for (size_t j = 0; j < last_fired.size(); ++j) {
        if (workspace.unit_fired[j]) last_fired[j] = rows_seen;
      }
      ++step;
      sum_loss += terms.total;
      sum_err += terms.squared_error_sum;
      sum_var += terms.target_variance_sum;
      sum_l0 += terms.mean_l0;
      window_elems += n * config.d_in;
      ++window_steps;
      const bool last = step == total_steps;
      if (last || (options.progress_every_steps > 0 &&
                   step % options.progress_every_steps == 0)) {
        report(step, epoch);
      }
    }
  }

  TrainingResult result;
  result.final_loss = progress.loss;
  result.dead_fraction = progress.dead_fraction;
  result.topk_screened_steps = screened_steps;
  if (screened_steps > 0) {
    result.topk_screen_candidates_per_row = screen_candidates / static_cast<double>(screened_steps);
  }
  absl::StatusOr<std::shared_ptr<const Model>> model =
      Model::Create(config, params.ToWeights());
  if (!model.ok()) return model.status();
  result.model = *model;
  result.steps = step;
  result.train_rows = train_rows;
  result.validation_rows = validation_rows;
  result.seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count();
  result.rows_per_s = progress.rows_per_s;

  auto gather = [&](const std::vector<int64_t>& ids, int64_t limit) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(ids.size()), limit);
    RowMatrix out;
    GatherRows(data, ids.data(), n, 1.0f, &out);
    return out;
  };
  const RowMatrix train_sample = gather(train_ids, kMaxEvalRows);
  absl::StatusOr<QualityMetrics> train_metrics = Evaluate(**model, train_sample);
  if (!train_metrics.ok()) return train_metrics.status();
  result.train_metrics = *train_metrics;
  if (validation_rows > 0) {
    const RowMatrix validation = gather(validation_ids, validation_rows);
    absl::StatusOr<QualityMetrics> m = Evaluate(**model, validation);
    if (!m.ok()) return m.status();
    result.validation_metrics = *m;
    if (corrupt) {
      RowMatrix noisy_validation(validation.rows(), validation.cols());
      std::mt19937_64 eval_rng(StreamSeed(options.seed, Stream::kNoise) + 1);
      Corrupt(options.corruption, validation, eval_rng, noisy_validation);
      const double peak = validation.maxCoeff() - validation.minCoeff();
      absl::StatusOr<DenoisingMetrics> d = EvaluateDenoising(
          **model, validation, noisy_validation, peak > 0 ? peak : 1.0);
      if (!d.ok()) return d.status();
      result.validation_denoising = *d;
    }
  }
  return result;
}

}  // namespace sae
