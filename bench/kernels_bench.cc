// Micro-benchmarks (Google Benchmark) of the kernels one training step is
// made of, at the service's reference shape 784 -> 4096, batch 256:
// each of the five GEMMs, the TopK selection and the optimizer update.
//
//   build/bin/sae_kernels_bench [--benchmark_filter=Gemm]
#include <cstdlib>
#include <random>

#include "benchmark/benchmark.h"
#include "core/activations.h"
#include "core/blas.h"
#include "core/packed_gemm.h"
#include "core/objective.h"
#include "core/optimizer.h"
#include "core/parallel.h"
#include "core/parameters.h"
#include "core/topk_screen.h"

namespace sae {
namespace {

constexpr int64_t kBatch = 256, kIn = 784, kHidden = 4096;

RowMatrix Random(int64_t rows, int64_t cols) {
  std::mt19937_64 rng(rows * 31 + cols);
  std::normal_distribution<float> n;
  RowMatrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

// op(A) [m x k] * op(B) [k x n] with the transposes of one training GEMM.
void BM_Gemm(benchmark::State& state, Transpose ta, Transpose tb, int64_t m,
             int64_t n, int64_t k) {
  const RowMatrix a = ta == Transpose::kNo ? Random(m, k) : Random(k, m);
  const RowMatrix b = tb == Transpose::kNo ? Random(k, n) : Random(n, k);
  RowMatrix c(m, n);
  for (auto _ : state) {
    Gemm(ta, tb, 1.0f, a, b, 0.0f, c);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPS"] = benchmark::Counter(
      2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1000);
}
BENCHMARK_CAPTURE(BM_Gemm, encode_X_WencT, Transpose::kNo, Transpose::kYes, kBatch, kHidden, kIn)->UseRealTime();
BENCHMARK_CAPTURE(BM_Gemm, decode_F_Wdec, Transpose::kNo, Transpose::kNo, kBatch, kIn, kHidden)->UseRealTime();
BENCHMARK_CAPTURE(BM_Gemm, grad_Wdec_FT_D, Transpose::kYes, Transpose::kNo, kHidden, kIn, kBatch)->UseRealTime();
BENCHMARK_CAPTURE(BM_Gemm, grad_F_D_WdecT, Transpose::kNo, Transpose::kYes, kBatch, kHidden, kIn)->UseRealTime();
BENCHMARK_CAPTURE(BM_Gemm, grad_Wenc_PT_X, Transpose::kYes, Transpose::kNo, kHidden, kIn, kBatch)->UseRealTime();
// The serving product: a few rows through the encoder, as one (merged)
// Encode call computes it. Time per row shows what batching can gain.
void BM_EncodeRows(benchmark::State& state) {
  const int64_t rows = state.range(0);
  const RowMatrix x = Random(rows, kIn);
  const RowMatrix w = Random(kIn, kHidden);  // the model's w_enc layout
  RowMatrix c(rows, kHidden);
  for (auto _ : state) {
    Gemm(Transpose::kNo, Transpose::kNo, 1.0f, x, w, 0.0f, c);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["rows_per_s"] = benchmark::Counter(
      static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_EncodeRows)->RangeMultiplier(2)->Range(1, 256)->UseRealTime();

// The same products through weights packed once (core/packed_gemm.h), as a
// served model runs them.
void BM_EncodeRowsPacked(benchmark::State& state) {
  const int64_t rows = state.range(0);
  const RowMatrix x = Random(rows, kIn);
  const PackedMatrix w(Random(kIn, kHidden));
  RowMatrix c = RowMatrix::Zero(rows, kHidden);
  for (auto _ : state) {
    MultiplyAddPacked(x, w, c);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["rows_per_s"] = benchmark::Counter(
      static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(PackedKernelName());
}
BENCHMARK(BM_EncodeRowsPacked)->RangeMultiplier(2)->Range(1, 256)->UseRealTime();

// Decoder products (codes [rows, 4096] through W_dec [4096, 784]) of codes
// with a given percentage of nonzeros, in sgemm / sgemv (packed = false)
// and on the packed weights, which skip a step when a whole block of rows
// is zero there.
void BM_DecodeRows(benchmark::State& state) {
  const int64_t rows = state.range(0);
  const bool packed = state.range(1) != 0;
  const double density = static_cast<double>(state.range(2)) / 100.0;
  RowMatrix codes = Random(rows, kHidden);
  std::mt19937_64 rng(3);
  std::bernoulli_distribution keep(density);
  for (Eigen::Index i = 0; i < codes.size(); ++i) {
    codes.data()[i] = keep(rng) ? std::abs(codes.data()[i]) : 0.0f;
  }
  const RowMatrix w = Random(kHidden, kIn);  // the model's w_dec layout
  const PackedMatrix w_packed(w);
  RowMatrix out = RowMatrix::Zero(rows, kIn);
  for (auto _ : state) {
    if (packed) {
      MultiplyAddPacked(codes, w_packed, out);
    } else {
      Gemm(Transpose::kNo, Transpose::kNo, 1.0f, codes, w, 1.0f, out);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["rows_per_s"] = benchmark::Counter(
      static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DecodeRows)
    ->ArgNames({"rows", "packed", "density_pct"})
    ->ArgsProduct({{1, 8, 32, 128}, {0, 1}, {2, 50}})
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Gemm, square_2048, Transpose::kNo, Transpose::kNo, 2048, 2048, 2048)->UseRealTime();

void BM_SelectTopK(benchmark::State& state) {
  const RowMatrix pre = Random(kBatch, kHidden);
  std::vector<int32_t> idx(kBatch * 32);
  std::vector<float> val(kBatch * 32);
  for (auto _ : state) {
    SelectTopK(pre, 32, idx.data(), val.data());
    benchmark::DoNotOptimize(idx.data());
  }
}
BENCHMARK(BM_SelectTopK)->UseRealTime();

// Arg: hidden units. 4096 streams the model's 6.4M parameters and moments
// from memory; 16 (25K parameters) keeps them in cache, which tells how far
// memory bounds the step.
void BM_AdamStep(benchmark::State& state) {
  const int64_t hidden = state.range(0);
  ParameterSet p(kIn, hidden);
  Gradients g(kIn, hidden);
  g.values.flat().setConstant(0.01f);
  auto opt = Optimizer::Create(OptimizerOptions{}, p);
  for (auto _ : state) (*opt)->Step(g, 0.0f, false, &p);
  state.SetBytesProcessed(state.iterations() * p.flat().size() * 4 * 7);
}
BENCHMARK(BM_AdamStep)->ArgName("hidden")->Arg(kHidden)->Arg(16)->UseRealTime();

void BM_TrainingLoss(benchmark::State& state, Activation activation) {
  ModelConfig c = DefaultConfig(kIn, kHidden, activation);
  ParameterSet p = ParameterSet::FromWeights(InitialWeights(c, 1));
  const RowMatrix x = Random(kBatch, kIn);
  ObjectiveWorkspace ws;
  Gradients g(kIn, kHidden);
  for (auto _ : state) {
    benchmark::DoNotOptimize(ComputeLoss(c, p, x, x, &ws, &g).total);
  }
}
BENCHMARK_CAPTURE(BM_TrainingLoss, relu, Activation::kRelu)->UseRealTime();
BENCHMARK_CAPTURE(BM_TrainingLoss, topk, Activation::kTopK)->UseRealTime();

// The TopK selection of a training step, from the encoder's input to the
// k units of each row: the full sgemm and SelectTopK (screen = 0), or the
// bfloat16 screen (1, core/topk_screen.h; where the CPU has it).
void BM_TopKSelection(benchmark::State& state) {
  const bool screen = state.range(0) != 0;
  if (screen && !TopKScreen::Supported()) {
    state.SkipWithError("no AVX512_BF16 on this CPU");
    return;
  }
  ModelConfig c = DefaultConfig(kIn, kHidden, Activation::kTopK);
  const ModelWeights w = InitialWeights(c, 1);
  const RowMatrix x = Random(kBatch, kIn);
  const RowMatrix w_enc_t = w.w_enc.transpose();
  RowMatrix pre(kBatch, kHidden);
  std::vector<int32_t> idx(kBatch * 32);
  std::vector<float> val(kBatch * 32);
  TopKScreen topk_screen;
  for (auto _ : state) {
    if (screen) {
      topk_screen.Select(x, w_enc_t, w.b_enc.data(), 32, idx.data(), val.data());
    } else {
      pre.rowwise() = w.b_enc.transpose();
      Gemm(Transpose::kNo, Transpose::kYes, 1.0f, x, w_enc_t, 1.0f, pre);
      ParallelFor(kBatch, 16, [&](int, int64_t r0, int64_t r1) {
        SelectTopK(pre.middleRows(r0, r1 - r0), 32, idx.data() + r0 * 32, val.data() + r0 * 32);
      });
    }
    benchmark::DoNotOptimize(idx.data());
  }
  if (screen) state.counters["candidates_per_row"] = topk_screen.candidates_per_row();
}
BENCHMARK(BM_TopKSelection)->ArgName("screen")->Arg(0)->Arg(1)->UseRealTime();

// A whole TopK training step (loss, gradient and Adam): as the trainer runs
// it, each unit's rows updated as the backward pass makes them (row_by_row
// = 1), or through a gradient buffer and Optimizer::Step (0); with the
// bfloat16 screen where the CPU has it (screen = 1) or the full product.
void BM_TopKTrainingStep(benchmark::State& state) {
  const bool row_by_row = state.range(0) != 0;
  ModelConfig c = DefaultConfig(kIn, kHidden, Activation::kTopK);
  ParameterSet p = ParameterSet::FromWeights(InitialWeights(c, 1));
  // Eight batches in turn, as a training run sees new rows (a model that
  // sees one batch over and over memorises it).
  constexpr int64_t kBatches = 8;
  const RowMatrix data = Random(kBatches * kBatch, kIn);
  ObjectiveWorkspace ws;
  ws.use_topk_screen = state.range(1) != 0;
  int64_t step = 0;
  Gradients g(kIn, kHidden);
  auto opt = Optimizer::Create(OptimizerOptions{}, p);
  Optimizer& o = **opt;
  for (auto _ : state) {
    const auto x = data.middleRows((step++ % kBatches) * kBatch, kBatch);
    if (row_by_row) {
      o.ComputeLossAndStep(c, x, x, &ws, &g, &p);
    } else {
      ComputeLoss(c, p, x, x, &ws, &g);
      o.Step(g, c.weight_decay, c.unit_norm_decoder, &p);
    }
  }
  state.counters["rows_per_s"] = benchmark::Counter(
      static_cast<double>(kBatch), benchmark::Counter::kIsIterationInvariantRate);
  if (ws.use_topk_screen) state.counters["candidates_per_row"] = ws.topk_screen.candidates_per_row();
}
BENCHMARK(BM_TopKTrainingStep)
    ->ArgNames({"row_by_row", "screen"})
    ->ArgsProduct({{0, 1}, {0, 1}})
    ->UseRealTime();

}  // namespace
}  // namespace sae


namespace sae {
namespace {
// The five GEMMs of a ReLU training step back to back, as the trainer and
// sae_bench run them.
void BM_FiveTrainingGemms(benchmark::State& state) {
  const RowMatrix x = Random(kBatch, kIn);
  const RowMatrix w = Random(kHidden, kIn);
  RowMatrix pre(kBatch, kHidden), out(kBatch, kIn), gw(kHidden, kIn);
  for (auto _ : state) {
    Gemm(Transpose::kNo, Transpose::kYes, 1, x, w, 0, pre);
    Gemm(Transpose::kNo, Transpose::kNo, 1, pre, w, 0, out);
    Gemm(Transpose::kYes, Transpose::kNo, 1, pre, out, 0, gw);
    Gemm(Transpose::kNo, Transpose::kYes, 1, out, w, 0, pre);
    Gemm(Transpose::kYes, Transpose::kNo, 1, pre, x, 0, gw);
  }
  state.counters["GFLOPS"] = benchmark::Counter(
      5 * 2.0 * kBatch * kIn * kHidden, benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1000);
}
BENCHMARK(BM_FiveTrainingGemms)->UseRealTime();
}  // namespace
}  // namespace sae

int main(int argc, char** argv) {
  // SAE_THREADS=N runs the kernels with N threads (default: one per core).
  if (const char* t = std::getenv("SAE_THREADS")) sae::SetBlasThreads(std::atoi(t));
  benchmark::AddCustomContext("blas_kernels", sae::BlasKernels());
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
