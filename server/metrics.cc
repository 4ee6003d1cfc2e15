#include "server/metrics.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"

#include "absl/strings/str_cat.h"
#include "prometheus/counter.h"
#include "prometheus/text_serializer.h"
#include "server/status_util.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace sae::server {
namespace {


class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(grpc::experimental::ServerRpcInfo* info, Metrics* metrics)
      : info_(info), metrics_(metrics), start_(std::chrono::steady_clock::now()) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      std::string method = info_->method() != nullptr ? info_->method() : "?";
      // "/sae.v1.SparseAutoencoderService/Encode" -> "Encode"
      if (const size_t slash = method.rfind('/'); slash != std::string::npos) {
        method = method.substr(slash + 1);
      }
      metrics_->RecordRpc(method, methods->GetSendStatus().error_code(),
                          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  Metrics* metrics_;
  std::chrono::steady_clock::time_point start_;
};

class MetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MetricsInterceptor(info, metrics_);
  }

 private:
  Metrics* metrics_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeMetricsInterceptorFactory(
    Metrics* metrics) {
  return std::make_unique<MetricsInterceptorFactory>(metrics);
}

struct Metrics::Families {
  prometheus::Family<prometheus::Counter>* requests;
  prometheus::Family<prometheus::Histogram>* latency;
  prometheus::Family<prometheus::Counter>* rows;
  prometheus::Histogram* batch_rows;
  prometheus::Histogram* queue_delay;
  prometheus::Family<prometheus::Counter>* jobs;
  prometheus::Gauge* running_jobs;
  prometheus::Gauge* training_rows_per_s;
  prometheus::Counter* loads;
  prometheus::Counter* load_failures;
  prometheus::Gauge* models_loaded;
};

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Start(const std::string& listen) {
  std::unique_ptr<Metrics> m(new Metrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address '", listen,
                                                   "' is not HOST:PORT"));
  }
  std::string host = listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "*") host = "0.0.0.0";
  if (host == "localhost") host = "127.0.0.1";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("metrics host '", host, "' is not an IPv4 address"));
  }
  m->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(m->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (m->listen_fd_ < 0 || ::bind(m->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(m->listen_fd_, 16) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on '", listen, "': ",
                                               std::strerror(errno)));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(m->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  m->port_ = ntohs(addr.sin_port);
  auto& r = *m->registry_;
  m->f_ = std::make_unique<Families>();
  Families& f = *m->f_;
  f.requests = &prometheus::BuildCounter().Name("sae_rpc_requests_total")
                    .Help("RPCs handled, by method and status code").Register(r);
  f.latency = &prometheus::BuildHistogram().Name("sae_rpc_latency_seconds")
                   .Help("RPC handling time, by method").Register(r);
  f.rows = &prometheus::BuildCounter().Name("sae_rows_served_total")
                .Help("Rows through dense Encode, Reconstruct and Denoise, by model and version").Register(r);
  f.batch_rows = &prometheus::BuildHistogram().Name("sae_batch_rows")
                      .Help("Rows per batched product").Register(r)
                      .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512});
  f.queue_delay = &prometheus::BuildHistogram().Name("sae_batch_queue_delay_seconds")
                       .Help("Time the oldest request of a batch waited in the queue").Register(r)
                       .Add({}, prometheus::Histogram::BucketBoundaries{1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2});
  f.jobs = &prometheus::BuildCounter().Name("sae_training_jobs_total")
                .Help("Training jobs that reached a state (queued, running, succeeded, failed, cancelled, interrupted)")
                .Register(r);
  f.running_jobs = &prometheus::BuildGauge().Name("sae_training_jobs_running")
                        .Help("Training jobs running now").Register(r).Add({});
  f.training_rows_per_s = &prometheus::BuildGauge().Name("sae_training_rows_per_second")
                               .Help("Training speed of the latest progress report").Register(r).Add({});
  f.loads = &prometheus::BuildCounter().Name("sae_model_loads_total")
                 .Help("Model versions loaded and verified").Register(r).Add({});
  f.load_failures = &prometheus::BuildCounter().Name("sae_model_reload_failures_total")
                         .Help("Model versions refused at load (corrupt files)").Register(r).Add({});
  f.models_loaded = &prometheus::BuildGauge().Name("sae_models_loaded")
                         .Help("Model versions held loaded now").Register(r).Add({});
  Metrics* raw = m.get();
  m->http_thread_ = std::thread([raw] { raw->ServeHttp(); });
  return m;
}

Metrics::~Metrics() {
  stop_ = true;
  if (http_thread_.joinable()) http_thread_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

std::string Metrics::Render() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

void Metrics::ServeHttp() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    // Read the request head (bounded); any GET gets the metrics.
    std::string head;
    char buf[1024];
    while (head.find("\r\n\r\n") == std::string::npos && head.size() < 8192) {
      pollfd c{fd, POLLIN, 0};
      if (::poll(&c, 1, 1000) <= 0) break;
      const ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n <= 0) break;
      head.append(buf, static_cast<size_t>(n));
    }
    std::string response;
    if (head.rfind("GET ", 0) == 0) {
      const std::string body = Render();
      response = absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n",
                              "Content-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
    } else {
      response = "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    }
    size_t sent = 0;
    while (sent < response.size()) {
      const ssize_t n = ::send(fd, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    ::close(fd);
  }
}

void Metrics::RecordRpc(const std::string& method, grpc::StatusCode code, double seconds) {
  f_->requests->Add({{"method", method}, {"code", StatusCodeName(code)}}).Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets{
      1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 5};
  f_->latency->Add({{"method", method}}, kBuckets).Observe(seconds);
}

void Metrics::RecordRows(const std::string& model, int64_t version, int64_t rows) {
  f_->rows->Add({{"model", model}, {"version", absl::StrCat(version)}}).Increment(static_cast<double>(rows));
}

void Metrics::RecordBatch(int64_t rows, double queue_seconds) {
  f_->batch_rows->Observe(static_cast<double>(rows));
  f_->queue_delay->Observe(queue_seconds);
}

void Metrics::RecordJobState(const std::string& state) {
  f_->jobs->Add({{"state", state}}).Increment();
}

void Metrics::SetTrainingRowsPerSecond(double rows_per_s) { f_->training_rows_per_s->Set(rows_per_s); }
void Metrics::SetRunningJobs(int64_t n) { f_->running_jobs->Set(static_cast<double>(n)); }

void Metrics::SetModelsLoaded(int64_t versions) {
  f_->models_loaded->Set(static_cast<double>(versions));
}

void Metrics::RecordModelLoad(bool ok) {
  if (ok) {
    f_->loads->Increment();
  } else {
    f_->load_failures->Increment();
  }
}

}  // namespace sae::server
