// Assembles and runs the service: store, registry (hot reload), training
// job manager, dataset store, the gRPC server with the health and reflection
// services. main.cc reads flags into ServerOptions; tests run it in-process.
#ifndef SAE_SERVER_SERVER_H_
#define SAE_SERVER_SERVER_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sae::server {

// Transport security and who may call (docs/security.md). Serving without
// TLS must be asked for with `plaintext`.
struct SecurityOptions {
  bool plaintext = false;          // no TLS: only on a trusted network or behind a TLS proxy
  std::string tls_cert_file;       // PEM certificate chain of the server
  std::string tls_key_file;        // PEM private key of that certificate
  std::string tls_client_ca_file;  // PEM CA bundle: when set, clients must present a
                                   // certificate signed by it (mutual TLS)
  std::string token_file;          // bearer tokens with roles (server/auth.h); empty: none
};

struct ServerOptions {
  std::string listen_address = "0.0.0.0:50051";  // port 0: pick a free one
  std::string store_root = "./var/models";
  std::string datasets_root;  // default: <store_root>/../datasets
  // The training jobs' journal (server/job_journal.h), one folder per server
  // that trains; default: <store_root>/../jobs. Unused with accept_training
  // false.
  std::string jobs_root;
  // How long to wait for the jobs folder's lock when another process holds
  // it (JobJournal::Open); 0: fail at once.
  absl::Duration jobs_lock_wait = absl::ZeroDuration();
  int64_t max_message_bytes = 64 << 20;
  int64_t max_rows_per_request = 65536;
  int64_t max_dataset_bytes = int64_t{2} << 30;
  int max_training_jobs = 1;  // running at once
  int max_queued_jobs = 8;
  std::chrono::milliseconds reload_interval{1000};
  int rpc_threads = 0;  // gRPC sync server threads (0: gRPC's default)
  bool accept_training = true;  // false: a serving-only replica
  // Dynamic batching of Encode/Reconstruct/Denoise (defaults, and per-model
  // overrides "name=off" or "name=ROWS:DELAY_US", comma-separated).
  bool batching = true;
  int64_t batch_max_rows = 256;
  int64_t batch_max_delay_us = 0;
  int64_t batch_max_queued_rows = 16384;
  std::string batch_model_overrides;
  // Prometheus metrics over HTTP on this address ("host:port"); empty: off.
  std::string metrics_listen;
  // grpc.health.v1 (and reflection, no sae.v1 method), plaintext and without
  // tokens, on this address (for probes that cannot speak TLS, such as
  // Kubernetes' gRPC probes); empty: off. Health is also served on the main
  // port.
  std::string health_listen;
  SecurityOptions security;
};

class Server {
 public:
  // Opens the stores and starts listening. INVALID_ARGUMENT for bad options
  // (including no transport security chosen), NOT_FOUND for a certificate,
  // key or token file that cannot be read, UNAVAILABLE when the address
  // cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  // The port actually bound (useful with port 0).
  int port() const;
  // The health-only port, or 0 when it is off.
  int health_port() const;
  // The metrics port, or 0 when metrics are off.
  int metrics_port() const;
  // Blocks until Shutdown.
  void Wait();
  // Stops accepting calls, lets in-flight ones finish within `grace`, marks
  // running training jobs interrupted, and returns. Idempotent.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns off Abseil's deadlock detector for the whole process. Debian builds
// Abseil without NDEBUG, so the detector is on, and every absl::Mutex (the
// server's and gRPC's own, several per call) then enters a process-wide
// graph under one global lock when first locked and leaves it when
// destroyed: about 1% of the CPU time of sae_load at 32 clients (perf),
// and a lock where all threads meet. A serving process calls this once at
// the start of main.
void DisableMutexDeadlockDetection();

}  // namespace sae::server

#endif  // SAE_SERVER_SERVER_H_
