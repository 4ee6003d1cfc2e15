// sae_demo: the core library end to end, without the service.
//
// Trains a denoising sparse autoencoder on the digits committed in data/,
// printing progress, then corrupts held-out digits with Gaussian noise
// (sigma 0.3, clipped to [0, 1]) and reports PSNR before and after denoising.
//
//   build/bin/sae_demo [--data=data/mnist-2500-images-u8.npy] [--epochs=60]
#include <cstdio>
#include <random>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "core/dataset_io.h"
#include "core/metrics.h"
#include "core/trainer.h"

ABSL_FLAG(std::string, data, SAE_DEFAULT_DATA,
          ".npy of digits in rows (uint8 0..255 or float in [0, 1])");
ABSL_FLAG(int64_t, held_out, 500, "rows at the end kept for evaluation");
ABSL_FLAG(int64_t, d_hidden, 256, "hidden units");
ABSL_FLAG(int64_t, epochs, 60, "training epochs");
ABSL_FLAG(double, sigma, 0.3, "Gaussian corruption during training and test");
ABSL_FLAG(uint64_t, seed, 1, "random seed");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Trains a denoising sparse autoencoder on digits.");
  absl::ParseCommandLine(argc, argv);
  const std::string path = absl::GetFlag(FLAGS_data);
  absl::StatusOr<sae::RowMatrix> digits = sae::ReadNpy(path);
  if (!digits.ok()) {
    std::fprintf(stderr, "sae_demo: cannot read %s: %s\n", path.c_str(),
                 digits.status().ToString().c_str());
    return 2;
  }
  const int64_t held_out = absl::GetFlag(FLAGS_held_out);
  if (held_out < 1 || held_out >= digits->rows() - 1) {
    std::fprintf(stderr, "sae_demo: --held_out must be in [1, %lld)\n",
                 static_cast<long long>(digits->rows() - 1));
    return 2;
  }
  const sae::RowMatrix train = digits->topRows(digits->rows() - held_out);
  const sae::RowMatrix test = digits->bottomRows(held_out);

  sae::ModelConfig config =
      sae::DefaultConfig(digits->cols(), absl::GetFlag(FLAGS_d_hidden), sae::Activation::kRelu);
  config.l1_coefficient = 0.01f;
  config.clip_output = true;
  sae::TrainerOptions options;
  options.batch_size = 32;
  options.epochs = absl::GetFlag(FLAGS_epochs);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.progress_every_steps = 250;
  options.corruption.kind = sae::CorruptionKind::kGaussian;
  options.corruption.sigma = static_cast<float>(absl::GetFlag(FLAGS_sigma));
  options.corruption.clip = true;

  std::printf("training %lld -> %lld ReLU+L1 denoising SAE on %lld digits\n",
              static_cast<long long>(config.d_in), static_cast<long long>(config.d_hidden),
              static_cast<long long>(train.rows()));
  sae::TrainingHooks hooks;
  hooks.on_progress = [](const sae::TrainingProgress& p) {
    std::printf("step %6lld/%lld  epoch %3lld  loss %8.4f  fvu %.4f  L0 %6.1f  "
                "dead %.3f  %7.0f rows/s  eta %4.0fs\n",
                static_cast<long long>(p.step), static_cast<long long>(p.total_steps),
                static_cast<long long>(p.epoch), p.loss, p.fvu, p.mean_l0,
                p.dead_fraction, p.rows_per_s, p.eta_s);
  };
  absl::StatusOr<sae::TrainingResult> result = sae::Train(config, options, train, hooks);
  if (!result.ok()) {
    std::fprintf(stderr, "sae_demo: training failed: %s\n",
                 result.status().ToString().c_str());
    return 1;
  }
  std::mt19937_64 rng(options.seed + 1000);
  sae::RowMatrix noisy(test.rows(), test.cols());
  sae::Corrupt(options.corruption, test, rng, noisy);
  absl::StatusOr<sae::DenoisingMetrics> m =
      sae::EvaluateDenoising(*result->model, test, noisy, 1.0);
  absl::StatusOr<sae::QualityMetrics> q = sae::Evaluate(*result->model, test);
  if (!m.ok() || !q.ok()) return 1;
  std::printf("held-out digits: reconstruction FVU %.4f, mean L0 %.1f, dead %.3f\n",
              q->fvu, q->mean_l0, q->dead_fraction);
  std::printf("held-out digits with noise sigma %.2f: PSNR %.2f dB noisy -> %.2f dB denoised\n",
              options.corruption.sigma, m->noisy_psnr_db, m->denoised_psnr_db);
  return 0;
}
