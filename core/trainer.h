// Trains a sparse autoencoder on rows held in memory.
//
// Mini-batch training with per-epoch shuffling, optional denoising
// corruption, Adam or SGD, a decoder kept at unit column norm, dead-unit
// tracking and progress reports. A run is a pure function of (config,
// options, data, BLAS thread count): the same inputs give bitwise-identical
// weights.
#ifndef SAE_CORE_TRAINER_H_
#define SAE_CORE_TRAINER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "core/corruption.h"
#include "core/metrics.h"
#include "core/model.h"
#include "core/model_config.h"
#include "core/optimizer.h"
#include "core/tensor.h"

namespace sae {

struct TrainerOptions {
  int64_t batch_size = 256;  // rows per step, >= 1 (capped at the data size)
  int64_t epochs = 10;       // passes over the training rows, >= 1
  int64_t max_steps = 0;     // > 0: stop after this many steps instead
  // Fraction of rows held out for validation metrics, [0, 0.9].
  double validation_fraction = 0.0;
  uint64_t seed = 1;  // weights, shuffling and corruption all derive from it
  OptimizerOptions optimizer;
  CorruptionOptions corruption;
  // Choose config.input_scale so that the mean squared row norm of the
  // scaled training data equals d_in (SAELens's normalisation).
  bool normalize_input = false;
  int64_t progress_every_steps = 50;  // 0: only the final report
  // A unit is dead when it fired for none of the last dead_window_rows
  // training rows. 0: one epoch's worth of rows.
  int64_t dead_window_rows = 0;
  // TopK: select the active units through the bfloat16 screen
  // (core/topk_screen.h) where the CPU has AVX512_BF16: the exact TopK of
  // float32 pre-activations, summed in another order than sgemm's, so the
  // values differ from the full product's by float rounding (and units
  // that tie within it may be chosen differently). A run is reproducible
  // bit for bit on one machine, not across CPUs with and without the
  // instructions. false: always the full product (for comparisons).
  bool topk_screen = true;

  absl::Status Validate() const;
};

struct TrainingProgress {
  int64_t step = 0;          // steps done
  int64_t total_steps = 0;   // steps the run will take
  int64_t epoch = 0;         // 0-based epoch of the last step
  int64_t rows_seen = 0;
  // Averages over the steps since the previous report.
  double loss = 0;
  double mse = 0;  // per element, in scaled units
  double fvu = 0;
  double mean_l0 = 0;
  double dead_fraction = 0;
  double rows_per_s = 0;  // over the whole run so far
  double elapsed_s = 0;
  double eta_s = 0;  // estimated seconds left
  float learning_rate = 0;
};

struct TrainingResult {
  std::shared_ptr<const Model> model;
  int64_t steps = 0;
  int64_t train_rows = 0;
  int64_t validation_rows = 0;
  double seconds = 0;
  double rows_per_s = 0;
  double final_loss = 0;      // average over the last progress window
  double dead_fraction = 0;   // at the end of training (dead window rule)
  // TopK: the steps whose selection went through the bfloat16 screen
  // (TrainerOptions::topk_screen), and their mean candidates per row.
  int64_t topk_screened_steps = 0;
  double topk_screen_candidates_per_row = 0;
  QualityMetrics train_metrics;  // on up to 10,000 training rows
  std::optional<QualityMetrics> validation_metrics;
  // When corruption is on and there is a validation split: PSNR of the
  // corrupted validation rows and of their denoised version (peak = max-min).
  std::optional<DenoisingMetrics> validation_denoising;
};

struct TrainingHooks {
  // Called every progress_every_steps steps and after the last step, on the
  // training thread.
  std::function<void(const TrainingProgress&)> on_progress;
  // Checked before every step; when it becomes true, Train returns
  // CANCELLED and no model.
  const std::atomic<bool>* cancel = nullptr;
};

// Trains a model on `data` [rows, config.d_in] (rows are examples).
// INVALID_ARGUMENT for a bad config, options or data (wrong width, NaN/Inf,
// too few rows); CANCELLED when hooks.cancel was raised.
absl::StatusOr<TrainingResult> Train(const ModelConfig& config,
                                     const TrainerOptions& options,
                                     ConstMatrixRef data,
                                     const TrainingHooks& hooks = {});

}  // namespace sae

#endif  // SAE_CORE_TRAINER_H_
