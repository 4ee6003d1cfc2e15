// sae_server: the sparse autoencoder service. See --help.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "core/blas.h"
#include "core/flag_util.h"
#include "core/parallel.h"
#include "server/log.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051",
          "address to serve gRPC on (host:port; port 0 picks a free port)");
ABSL_FLAG(std::string, store, "./var/models",
          "model store root: an embedded file store that needs no other server; "
          "several replicas may share it on one volume");
ABSL_FLAG(std::string, jobs_dir, "",
          "folder for the training jobs' journal, one per training server (default: "
          "<store>/../jobs)");
ABSL_FLAG(int, jobs_lock_wait_s, 0,
          "seconds to wait for the jobs folder's lock when another process holds it (a "
          "replacement trainer waiting out a dead node's NFS lock lease); 0: fail at once");
ABSL_FLAG(std::string, datasets, "",
          "folder for uploaded datasets (default: <store>/../datasets)");
ABSL_FLAG(int, compute_threads, 0, "threads for one matrix product (0: one per core)");
ABSL_FLAG(int, training_threads, 0,
          "threads for one training step (0: one fewer than --compute_threads, at least 1, so "
          "that a core stays free for inference while a job runs; on a trainer that serves no "
          "inference, set it to the core count)");
ABSL_FLAG(int, rpc_threads, 0, "maximum gRPC polling threads (0: gRPC's default)");
ABSL_FLAG(int64_t, max_message_mb, 64,
          "largest request or response in MiB; larger ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_rows, 65536,
          "most rows in one Encode/Decode/Reconstruct/Denoise message (RESOURCE_EXHAUSTED beyond)");
ABSL_FLAG(int64_t, max_dataset_mb, 2048, "largest uploaded dataset in MiB");
ABSL_FLAG(int, max_training_jobs, 1, "training jobs that run at once (each on its own worker)");
ABSL_FLAG(int, max_queued_jobs, 8,
          "training jobs that may wait for a worker; beyond, Train gets RESOURCE_EXHAUSTED");
ABSL_FLAG(int, reload_interval_ms, 1000,
          "how often to poll the store for versions and labels changed by other processes");
ABSL_FLAG(bool, accept_training, true,
          "accept Train calls; false makes a serving-only replica (Train gets FAILED_PRECONDITION), "
          "for deployments with a separate trainer");
ABSL_FLAG(bool, batching, true,
          "merge concurrent Encode/Reconstruct/Denoise calls for one model version into one product");
ABSL_FLAG(int64_t, batch_max_rows, 256, "most rows merged into one batched product");
ABSL_FLAG(int64_t, batch_max_delay_us, 0,
          "how long a batch waits for more calls (0: batch only what queued during the last product)");
ABSL_FLAG(int64_t, batch_max_queued_rows, 16384,
          "rows that may wait for batching per model; beyond, calls get RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, batch_models, "",
          "per-model batching: NAME=off or NAME=MAX_ROWS:DELAY_US, comma-separated");
ABSL_FLAG(std::string, metrics_listen, "",
          "serve Prometheus metrics over HTTP on this address (e.g. 0.0.0.0:9090); empty: off");
ABSL_FLAG(std::string, health_listen, "",
          "also serve grpc.health.v1 (no sae.v1 method), plaintext and without tokens, on this "
          "address (for probes that cannot speak TLS); empty: off");
ABSL_FLAG(bool, plaintext, false,
          "serve without TLS (only on a trusted network or behind a TLS proxy); without it "
          "--tls_cert and --tls_key are required");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain of the server (TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require client certificates signed by it (mutual TLS)");
ABSL_FLAG(std::string, token_file, "",
          "bearer tokens with roles, lines 'ROLE TOKEN [NAME]' (ROLE read or admin); empty: "
          "no token checks (docs/security.md)");
ABSL_FLAG(int, shutdown_grace_s, 10,
          "on SIGTERM/SIGINT: seconds in-flight calls get to finish");

namespace {

volatile sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "The sparse autoencoder service (gRPC, package sae.v1).\n"
      "Trains sparse autoencoders as jobs, keeps versioned models in a store, and serves\n"
      "Encode, Decode, Reconstruct and Denoise. Health (grpc.health.v1) and server reflection\n"
      "are on.\n\n"
      "Usage: sae_server --tls_cert=CERT --tls_key=KEY [--tls_client_ca=CA] [--token_file=F]\n"
      "                  [--listen=0.0.0.0:50051] [--store=./var/models] [flags]\n"
      "   or: sae_server --plaintext [flags]   (no TLS: trusted networks only)\n"
      "Flags may be spelled with dashes or underscores (--tls-cert, --tls_cert).");
  sae::NormalizeFlagDashes(argc, argv);
  sae::server::DisableMutexDeadlockDetection();
  absl::ParseCommandLine(argc, argv);
  sae::server::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.store_root = absl::GetFlag(FLAGS_store);
  options.datasets_root = absl::GetFlag(FLAGS_datasets);
  options.jobs_root = absl::GetFlag(FLAGS_jobs_dir);
  options.jobs_lock_wait = absl::Seconds(absl::GetFlag(FLAGS_jobs_lock_wait_s));
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_mb) << 20;
  options.max_rows_per_request = absl::GetFlag(FLAGS_max_rows);
  options.max_dataset_bytes = absl::GetFlag(FLAGS_max_dataset_mb) << 20;
  options.max_training_jobs = absl::GetFlag(FLAGS_max_training_jobs);
  options.max_queued_jobs = absl::GetFlag(FLAGS_max_queued_jobs);
  options.reload_interval = std::chrono::milliseconds(absl::GetFlag(FLAGS_reload_interval_ms));
  options.rpc_threads = absl::GetFlag(FLAGS_rpc_threads);
  options.accept_training = absl::GetFlag(FLAGS_accept_training);
  options.batching = absl::GetFlag(FLAGS_batching);
  options.batch_max_rows = absl::GetFlag(FLAGS_batch_max_rows);
  options.batch_max_delay_us = absl::GetFlag(FLAGS_batch_max_delay_us);
  options.batch_max_queued_rows = absl::GetFlag(FLAGS_batch_max_queued_rows);
  options.batch_model_overrides = absl::GetFlag(FLAGS_batch_models);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.health_listen = absl::GetFlag(FLAGS_health_listen);
  options.security.plaintext = absl::GetFlag(FLAGS_plaintext);
  options.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.security.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.security.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.security.token_file = absl::GetFlag(FLAGS_token_file);
  if (absl::GetFlag(FLAGS_compute_threads) < 0 || absl::GetFlag(FLAGS_training_threads) < 0 ||
      absl::GetFlag(FLAGS_shutdown_grace_s) < 0 || absl::GetFlag(FLAGS_reload_interval_ms) < 0 ||
      absl::GetFlag(FLAGS_jobs_lock_wait_s) < 0) {
    std::fprintf(stderr, "sae_server: --compute_threads, --training_threads, --shutdown_grace_s, "
                         "--reload_interval_ms and --jobs_lock_wait_s must be >= 0\n");
    return 2;
  }
  sae::SetBlasThreads(absl::GetFlag(FLAGS_compute_threads));
  sae::SetBackgroundThreads(absl::GetFlag(FLAGS_training_threads));

  absl::StatusOr<std::unique_ptr<sae::server::Server>> server = sae::server::Server::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "sae_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("sae_server listening on port %d\n", (*server)->port());
  std::fflush(stdout);
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  sae::server::LogLine("server", "signal received");
  (*server)->Shutdown(std::chrono::seconds(absl::GetFlag(FLAGS_shutdown_grace_s)));
  return 0;
}
