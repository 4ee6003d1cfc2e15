// Prometheus metrics of the service (prometheus-cpp's registry and text
// format), exposed over HTTP on their own port when --metrics_listen is set.
// Names and labels are listed in docs/metrics.md. Thread-safe.
//
// The HTTP side is a small server of our own (one thread, GET of any path
// returns the text format): Debian's prometheus-cpp pull exposer crashed in
// its civetweb worker on the first scrape here.
#ifndef SAE_SERVER_METRICS_H_
#define SAE_SERVER_METRICS_H_

#include <atomic>
#include <chrono>
#include <thread>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/support/status.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace sae::server {

class Metrics {
 public:
  // Starts an HTTP exposer on `listen` ("host:port", port 0 picks one).
  static absl::StatusOr<std::unique_ptr<Metrics>> Start(const std::string& listen);
  ~Metrics();

  int port() const { return port_; }

  void RecordRpc(const std::string& method, grpc::StatusCode code, double seconds);
  void RecordRows(const std::string& model, int64_t version, int64_t rows);
  void RecordBatch(int64_t rows, double queue_seconds);
  void RecordJobState(const std::string& state);  // a job reached `state`
  void SetTrainingRowsPerSecond(double rows_per_s);
  void SetRunningJobs(int64_t n);
  void RecordModelLoad(bool ok);
  void SetModelsLoaded(int64_t versions);

 private:
  Metrics() = default;
  struct Families;
  void ServeHttp();
  std::string Render() const;

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> f_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread http_thread_;
};

// Records every RPC (method, status code, latency) from one place: a gRPC
// server interceptor. Install with ServerBuilder::experimental().
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeMetricsInterceptorFactory(
    Metrics* metrics);

// Times one RPC and records it when it ends. `metrics` may be null.
class RpcTimer {
 public:
  RpcTimer(Metrics* metrics, const char* method)
      : metrics_(metrics), method_(method), start_(std::chrono::steady_clock::now()) {}
  grpc::Status Done(grpc::Status status) {
    if (metrics_ != nullptr) {
      metrics_->RecordRpc(method_, status.error_code(),
                          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    }
    return status;
  }

 private:
  Metrics* metrics_;
  const char* method_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace sae::server

#endif  // SAE_SERVER_METRICS_H_
