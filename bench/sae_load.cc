// sae_load: a load generator for sae_server, in the manner of Triton's
// perf_analyzer and ghz.
//
// It sweeps client concurrency (1, 2, 4, 8, 16, 32 by default) for one RPC
// and rows per call, runs each level for --seconds after a warm-up, and
// prints calls/s, rows/s, p50/p90/p99 latency and errors per status code
// (--csv writes the table). The health check is measured in the same run as
// the bare RPC cost, and a training job is run beside Encode to measure its
// effect on latency.
//
// With --target it calls a running server (which must hold --model).
// Without, it starts two in-process servers on one temporary store, with
// dynamic batching on and off, and publishes a random 784 x 4096 ReLU model,
// so one command measures everything, batching gain included. It ends with
// key=value lines:
//
//   encode_1row_c16_rows_per_s   single-row Encode, 16 clients, batching on
//   batching_gain_c32            rows/s with batching over without, 32 clients
//   encode_p50_vs_health_p50     single-row Encode p50 over health p50, 1 client
//   encode_p50_floor_vs_health_p50  the lowest that ratio can be here: a health
//                                check plus one read of the encoder's weights
//                                (in-process runs only)
//   encode_p99_training_vs_idle  Encode p99 while a job trains over idle p99
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/blas.h"
#include "core/file_util.h"
#include "core/model_store.h"
#include "core/packed_gemm.h"
#include "core/parallel.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "sae/v1/sae.grpc.pb.h"
#include "server/server.h"
#include "server/status_util.h"

ABSL_FLAG(std::string, target, "", "host:port of a running server (empty: start servers in-process)");
ABSL_FLAG(std::string, target_unbatched, "",
          "with --target: a server without batching, for batching_gain_c32");
ABSL_FLAG(std::string, model, "load-test", "model to call (published automatically in-process)");
ABSL_FLAG(std::string, rpc, "encode",
          "encode, reconstruct, denoise, or health (the bare RPC at every level)");
ABSL_FLAG(int64_t, rows, 1, "rows per call");
ABSL_FLAG(std::string, concurrency, "1,2,4,8,16,32", "client concurrency levels to sweep");
ABSL_FLAG(double, seconds, 3.0, "measured seconds per level (after 0.5 s of warm-up)");
ABSL_FLAG(int64_t, d_in, 784, "input width of the in-process model");
ABSL_FLAG(int64_t, d_hidden, 4096, "hidden units of the in-process model");
ABSL_FLAG(std::string, csv, "", "also write the sweep table to this CSV file");
ABSL_FLAG(bool, quick, false, "small model, short levels (a smoke run)");
ABSL_FLAG(int64_t, batch_max_delay_us, 0, "in-process server: --batch_max_delay_us");
ABSL_FLAG(int64_t, batch_max_rows, 256, "in-process server: --batch_max_rows");
ABSL_FLAG(int, compute_threads, 0, "in-process server: --compute_threads");
ABSL_FLAG(int, training_threads, 0, "in-process server: --training_threads");
ABSL_FLAG(int, rpc_threads, 0, "in-process server: --rpc_threads");

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = sae::v1;

struct LevelResult {
  int concurrency = 0;
  double calls_per_s = 0, rows_per_s = 0, p50 = 0, p90 = 0, p99 = 0;
  std::map<std::string, int64_t> errors;  // status code name -> count
};

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

class Load {
 public:
  Load(const std::string& target, const std::string& model, const std::string& rpc, int64_t rows,
       int64_t d_in)
      : rpc_(rpc), rows_(rows) {
    for (int i = 0; i < 4; ++i) {
      grpc::ChannelArguments args;
      args.SetInt("sae_load_channel", i);  // distinct channels, distinct connections
      auto ch = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
      stubs_.push_back(v1::SparseAutoencoderService::NewStub(ch));
      health_.push_back(grpc::health::v1::Health::NewStub(ch));
    }
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(0, 1);
    std::string raw(static_cast<size_t>(rows * d_in) * 4, '\0');
    for (int64_t i = 0; i < rows * d_in; ++i) {
      const float v = u(rng);
      std::memcpy(raw.data() + 4 * i, &v, 4);
    }
    v1::Tensor t;
    t.add_shape(rows);
    t.add_shape(d_in);
    t.set_raw(raw);
    encode_.mutable_model()->set_name(model);
    *encode_.mutable_input() = t;
    encode_.set_raw_output(true);
    reconstruct_.mutable_model()->set_name(model);
    *reconstruct_.mutable_input() = t;
    reconstruct_.set_raw_output(true);
    denoise_.mutable_model()->set_name(model);
    *denoise_.mutable_input() = t;
    denoise_.set_raw_output(true);
  }

  // Keeps `concurrency` calls in flight for `seconds` (after a warm-up), as
  // ghz and perf_analyzer do: asynchronous calls on gRPC's callback API, each
  // completion starting the next, so that the load generator needs no
  // thread per client (on a small machine those would compete with the
  // server for the cores).
  LevelResult Run(int concurrency, double seconds, bool health = false) {
    struct Client {
      int index;
      std::unique_ptr<grpc::ClientContext> ctx;
      grpc::health::v1::HealthCheckResponse health_out;
      v1::EncodeResponse encode_out;
      v1::ReconstructResponse reconstruct_out;
      v1::DenoiseResponse denoise_out;
      Clock::time_point start;
      std::vector<double> latencies;
      std::map<std::string, int64_t> errors;
    };
    const bool call_health = health || rpc_ == "health";
    std::atomic<bool> measuring{false}, stop{false};
    std::mutex mu;
    int in_flight = concurrency;  // guarded by mu once the calls run
    std::condition_variable drained;
    std::vector<Client> clients(concurrency);
    std::function<void(Client*)> issue;
    auto done = [&](Client* c, const grpc::Status& s) {
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - c->start).count();
      if (measuring) {
        if (s.ok()) {
          c->latencies.push_back(ms);
        } else {
          ++c->errors[StatusName(s.error_code())];
        }
      }
      if (!stop) {
        issue(c);
        return;
      }
      std::lock_guard<std::mutex> lock(mu);
      if (--in_flight == 0) drained.notify_all();
    };
    issue = [&](Client* c) {
      c->ctx = std::make_unique<grpc::ClientContext>();
      c->ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      c->start = Clock::now();
      const size_t i = static_cast<size_t>(c->index);
      auto callback = [&done, c](grpc::Status s) { done(c, s); };
      if (call_health) {
        health_[i % health_.size()]->async()->Check(c->ctx.get(), &health_request_,
                                                    &c->health_out, callback);
      } else if (rpc_ == "reconstruct") {
        stubs_[i % stubs_.size()]->async()->Reconstruct(c->ctx.get(), &reconstruct_,
                                                        &c->reconstruct_out, callback);
      } else if (rpc_ == "denoise") {
        stubs_[i % stubs_.size()]->async()->Denoise(c->ctx.get(), &denoise_, &c->denoise_out,
                                                    callback);
      } else {
        stubs_[i % stubs_.size()]->async()->Encode(c->ctx.get(), &encode_, &c->encode_out,
                                                   callback);
      }
    };
    for (int t = 0; t < concurrency; ++t) {
      clients[t].index = t;
      issue(&clients[t]);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // warm-up
    measuring = true;
    const auto start = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    measuring = false;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    {
      std::unique_lock<std::mutex> lock(mu);
      stop = true;
      drained.wait(lock, [&] { return in_flight == 0; });
    }
    LevelResult r;
    r.concurrency = concurrency;
    std::vector<double> all;
    for (const Client& c : clients) {
      all.insert(all.end(), c.latencies.begin(), c.latencies.end());
      for (const auto& [k, v] : c.errors) r.errors[k] += v;
    }
    r.calls_per_s = static_cast<double>(all.size()) / elapsed;
    r.rows_per_s = r.calls_per_s * (call_health ? 0 : static_cast<double>(rows_));
    r.p50 = Percentile(all, 0.5);
    r.p90 = Percentile(all, 0.9);
    r.p99 = Percentile(all, 0.99);
    return r;
  }

  static std::string StatusName(grpc::StatusCode c) { return sae::server::StatusCodeName(c); }

  v1::SparseAutoencoderService::Stub* stub() { return stubs_[0].get(); }

 private:
  std::string rpc_;
  int64_t rows_;
  std::vector<std::unique_ptr<v1::SparseAutoencoderService::Stub>> stubs_;
  std::vector<std::unique_ptr<grpc::health::v1::Health::Stub>> health_;
  v1::EncodeRequest encode_;
  v1::ReconstructRequest reconstruct_;
  v1::DenoiseRequest denoise_;
  grpc::health::v1::HealthCheckRequest health_request_;
};

std::string Errors(const LevelResult& r) {
  std::string out;
  for (const auto& [k, v] : r.errors) absl::StrAppend(&out, out.empty() ? "" : " ", k, "=", v);
  return out.empty() ? "-" : out;
}

void PrintRow(const LevelResult& r) {
  std::printf("%11d %10.0f %10.0f %9.3f %9.3f %9.3f  %s\n", r.concurrency, r.calls_per_s,
              r.rows_per_s, r.p50, r.p90, r.p99, Errors(r).c_str());
  std::fflush(stdout);
}

// Starts a training job on the server and returns its id once it runs.
std::string StartTraining(v1::SparseAutoencoderService::Stub* stub, const std::string& model,
                          int64_t d_in, int64_t d_hidden) {
  v1::TrainRequest train;
  train.set_model_name(model + "-training");
  train.mutable_config()->set_d_in(d_in);
  train.mutable_config()->set_d_hidden(d_hidden);
  train.mutable_options()->set_epochs(1000000);
  const int64_t rows = 1024;
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(0, 1);
  std::string data(static_cast<size_t>(rows * d_in) * 4, '\0');
  for (int64_t i = 0; i < rows * d_in; ++i) {
    const float v = u(rng);
    std::memcpy(data.data() + 4 * i, &v, 4);
  }
  train.mutable_inline_data()->add_shape(rows);
  train.mutable_inline_data()->add_shape(d_in);
  train.mutable_inline_data()->set_raw(data);
  v1::TrainResponse job;
  grpc::ClientContext ctx;
  if (!stub->Train(&ctx, train, &job).ok()) return "";
  for (int i = 0; i < 500; ++i) {
    grpc::ClientContext c;
    v1::GetTrainingJobRequest get;
    get.set_job_id(job.job().id());
    v1::GetTrainingJobResponse now;
    stub->GetTrainingJob(&c, get, &now);
    if (now.job().progress().step() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return job.job().id();
}

// What the machine allows a one-row Encode at one client (of the in-process
// servers), whatever the server's own code: one read of the encoder's
// weights (d_in x d_hidden floats, from cache or memory) by one thread per
// core that spins between reads, so no hand-off or wake-up is counted; and
// for comparison the product as the server runs it (core/packed_gemm.h,
// whose ParallelFor wakes a pool thread). Medians of 31 runs, in ms.
struct EncodeFloor {
  double weights_read_ms = 0;
  double product_ms = 0;
};

EncodeFloor MeasureEncodeFloor(int64_t d_in, int64_t d_hidden, int64_t rows) {
  const sae::RowMatrix w = sae::RowMatrix::Random(d_in, d_hidden);
  const sae::PackedMatrix packed(w);
  const sae::RowMatrix x = sae::RowMatrix::Random(rows, d_in);
  sae::RowMatrix out = sae::RowMatrix::Zero(rows, d_hidden);
  const int threads = std::max(1, sae::Parallelism());
  const auto median_ms = [](const std::function<void()>& fn) {
    std::vector<double> ms;
    for (int i = 0; i < 34; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - t0;
      if (i >= 3) ms.push_back(took.count());  // the first runs warm the caches
    }
    return Percentile(ms, 0.5);
  };
  // Thread t sums rows [d_in * t / threads, d_in * (t + 1) / threads).
  std::vector<double> sums(static_cast<size_t>(threads), 0.0);
  const auto read_share = [&](int t) {
    const int64_t lo = d_in * t / threads, hi = d_in * (t + 1) / threads;
    sums[static_cast<size_t>(t)] += w.middleRows(lo, hi - lo).sum();
  };
  std::atomic<int> round{0}, finished{0};
  std::atomic<bool> quit{false};
  std::vector<std::thread> helpers;
  for (int t = 1; t < threads; ++t) {
    helpers.emplace_back([&, t] {
      int seen = 0;
      while (!quit.load(std::memory_order_acquire)) {
        const int r = round.load(std::memory_order_acquire);
        if (r == seen) continue;  // spin: a wake-up would be counted otherwise
        seen = r;
        read_share(t);
        finished.fetch_add(1, std::memory_order_acq_rel);
      }
    });
  }
  EncodeFloor floor;
  floor.weights_read_ms = median_ms([&] {
    const int target = finished.load() + threads - 1;
    round.fetch_add(1, std::memory_order_acq_rel);
    read_share(0);
    while (finished.load(std::memory_order_acquire) < target) {
    }
  });
  quit = true;
  for (std::thread& h : helpers) h.join();
  floor.product_ms = median_ms([&] { sae::MultiplyAddPacked(x, packed, out); });
  volatile double keep = sums[0];  // the sums must not be optimised away
  static_cast<void>(keep);
  return floor;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Load generator for sae_server (see the header of bench/sae_load.cc).");
  absl::ParseCommandLine(argc, argv);
  sae::server::DisableMutexDeadlockDetection();
  const bool quick = absl::GetFlag(FLAGS_quick);
  const double seconds = quick ? 0.5 : absl::GetFlag(FLAGS_seconds);
  const int64_t d_in = quick ? 64 : absl::GetFlag(FLAGS_d_in);
  const int64_t d_hidden = quick ? 256 : absl::GetFlag(FLAGS_d_hidden);
  const int64_t rows = absl::GetFlag(FLAGS_rows);
  const std::string model = absl::GetFlag(FLAGS_model);
  const std::string rpc = absl::GetFlag(FLAGS_rpc);
  if (rpc != "encode" && rpc != "reconstruct" && rpc != "denoise" && rpc != "health") {
    std::fprintf(stderr, "sae_load: --rpc must be encode, reconstruct, denoise or health\n");
    return 2;
  }
  std::vector<int> levels;
  for (absl::string_view s : absl::StrSplit(quick ? "1,4" : absl::GetFlag(FLAGS_concurrency), ',')) {
    int c;
    if (!absl::SimpleAtoi(s, &c) || c < 1 || c > 1024) {
      std::fprintf(stderr, "sae_load: bad --concurrency entry '%s'\n", std::string(s).c_str());
      return 2;
    }
    levels.push_back(c);
  }

  std::string target = absl::GetFlag(FLAGS_target);
  std::string unbatched = absl::GetFlag(FLAGS_target_unbatched);
  std::unique_ptr<sae::server::Server> server, server_unbatched;
  std::string root;
  if (target.empty()) {
    root = absl::StrCat("/tmp/sae_load_", ::getpid());
    sae::RemoveTree(root).IgnoreError();
    auto store = sae::ModelStore::Open(root + "/models");
    sae::ModelConfig c = sae::DefaultConfig(d_in, d_hidden, sae::Activation::kRelu);
    auto m = sae::Model::Create(c, sae::InitialWeights(c, 1));
    if (!store.ok() || !m.ok() || !(*store)->Publish(model, **m, {}).ok()) {
      std::fprintf(stderr, "sae_load: cannot prepare the in-process store\n");
      return 1;
    }
    sae::server::ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.security.plaintext = true;
    options.store_root = root + "/models";
    options.batch_max_delay_us = absl::GetFlag(FLAGS_batch_max_delay_us);
    options.batch_max_rows = absl::GetFlag(FLAGS_batch_max_rows);
    options.rpc_threads = absl::GetFlag(FLAGS_rpc_threads);
    sae::SetBlasThreads(absl::GetFlag(FLAGS_compute_threads));
    sae::SetBackgroundThreads(absl::GetFlag(FLAGS_training_threads));
    auto a = sae::server::Server::Start(options);
    options.batching = false;
    options.accept_training = false;
    auto b = sae::server::Server::Start(options);
    if (!a.ok() || !b.ok()) {
      std::fprintf(stderr, "sae_load: cannot start the in-process servers\n");
      return 1;
    }
    server = std::move(*a);
    server_unbatched = std::move(*b);
    target = absl::StrCat("127.0.0.1:", server->port());
    unbatched = absl::StrCat("127.0.0.1:", server_unbatched->port());
  }
  Load load(target, model, rpc, rows, d_in);
  load.Run(1, 0.3);  // loads the model, opens the channels

  std::printf("sae_load: %s, %lld row(s) per call, target %s\n", rpc.c_str(),
              static_cast<long long>(rows), target.c_str());
  std::printf("%11s %10s %10s %9s %9s %9s  %s\n", "concurrency", "calls/s", "rows/s", "p50 ms",
              "p90 ms", "p99 ms", "errors");
  LevelResult health = load.Run(1, seconds, /*health=*/true);
  std::printf("%11s %10.0f %10s %9.3f %9.3f %9.3f  %s   (health check)\n", "1", health.calls_per_s,
              "-", health.p50, health.p90, health.p99, Errors(health).c_str());
  std::vector<LevelResult> results;
  for (int c : levels) {
    results.push_back(load.Run(c, seconds));
    PrintRow(results.back());
  }
  const std::string csv = absl::GetFlag(FLAGS_csv);
  if (!csv.empty()) {
    std::FILE* f = std::fopen(csv.c_str(), "w");
    if (f != nullptr) {
      std::fprintf(f, "rpc,rows_per_call,concurrency,calls_per_s,rows_per_s,p50_ms,p90_ms,p99_ms,errors\n");
      std::fprintf(f, "health,0,1,%.1f,0,%.4f,%.4f,%.4f,%s\n", health.calls_per_s, health.p50, health.p90,
                   health.p99, Errors(health).c_str());
      for (const LevelResult& r : results) {
        std::fprintf(f, "%s,%lld,%d,%.1f,%.1f,%.4f,%.4f,%.4f,%s\n", rpc.c_str(),
                     static_cast<long long>(rows), r.concurrency, r.calls_per_s, r.rows_per_s, r.p50,
                     r.p90, r.p99, Errors(r).c_str());
      }
      std::fclose(f);
    }
  }

  auto level = [&](int c) -> const LevelResult* {
    for (const LevelResult& r : results) {
      if (r.concurrency == c) return &r;
    }
    return nullptr;
  };
  if (const LevelResult* c1 = level(1)) {
    std::printf("encode_p50_vs_health_p50=%.3f\n", c1->p50 / health.p50);
    // In-process only: the floor is this machine's, for the model shape of
    // the in-process servers.
    if (rpc == "encode" && server) {
      const EncodeFloor floor = MeasureEncodeFloor(d_in, d_hidden, rows);
      std::printf("encode_weights_read_ms=%.4f\nencode_product_ms=%.4f\n", floor.weights_read_ms,
                  floor.product_ms);
      // The lowest encode_p50_vs_health_p50 the machine allows: a health
      // check plus one read of the weights.
      std::printf("encode_p50_floor_vs_health_p50=%.3f\n",
                  (health.p50 + floor.weights_read_ms) / health.p50);
    }
  }
  if (const LevelResult* c16 = level(16); c16 && rows == 1) {
    std::printf("encode_1row_c16_rows_per_s=%.1f\n", c16->rows_per_s);
  }
  if (const LevelResult* c32 = level(32); c32 && !unbatched.empty()) {
    Load plain(unbatched, model, rpc, rows, d_in);
    plain.Run(1, 0.3);
    LevelResult u = plain.Run(32, seconds);
    std::printf("without batching: ");
    PrintRow(u);
    std::printf("batching_gain_c32=%.3f\n", c32->rows_per_s / std::max(u.rows_per_s, 1e-9));
  }
  // Encode p99 while a training job runs, against the idle p99 (1 client).
  if (const LevelResult* c1 = level(1); c1 && (server || absl::GetFlag(FLAGS_target_unbatched).empty())) {
    const std::string job = StartTraining(load.stub(), model, d_in, d_hidden);
    if (!job.empty()) {
      LevelResult busy = load.Run(1, seconds);
      grpc::ClientContext ctx;
      v1::CancelTrainingJobRequest cancel;
      cancel.set_job_id(job);
      v1::CancelTrainingJobResponse out;
      load.stub()->CancelTrainingJob(&ctx, cancel, &out);
      std::printf("while training: ");
      PrintRow(busy);
      std::printf("encode_p99_idle_ms=%.4f\nencode_p99_training_ms=%.4f\n", c1->p99, busy.p99);
      std::printf("encode_p99_training_vs_idle=%.3f\n", busy.p99 / c1->p99);
    }
  }
  if (server) {
    server->Shutdown(std::chrono::milliseconds(500));
    server_unbatched->Shutdown(std::chrono::milliseconds(500));
    server.reset();
    server_unbatched.reset();
    sae::RemoveTree(root).IgnoreError();
  }
  return 0;
}
