#include "server/server.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/blas.h"
#include "core/file_util.h"
#include "core/model_store.h"
#include "core/parallel.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/auth.h"
#include "server/batcher.h"
#include "server/compute_pool.h"
#include "server/dataset_store.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/sae_service.h"
#include "server/training_jobs.h"

namespace sae::server {

namespace {

// TLS (optionally mutual) credentials, or plaintext when asked for.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const SecurityOptions& o) {
  const bool any_tls = !o.tls_cert_file.empty() || !o.tls_key_file.empty() ||
                       !o.tls_client_ca_file.empty();
  if (o.plaintext) {
    if (any_tls) {
      return absl::InvalidArgumentError(
          "plaintext excludes tls_cert, tls_key and tls_client_ca: choose one");
    }
    return grpc::InsecureServerCredentials();
  }
  if (o.tls_cert_file.empty() || o.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "no transport security chosen: give tls_cert and tls_key (TLS), or plaintext to serve "
        "without TLS");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  absl::StatusOr<std::string> cert = ReadPemFile(o.tls_cert_file, "tls_cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPemFile(o.tls_key_file, "tls_key");
  if (!key.ok()) return key.status();
  pair.cert_chain = std::move(*cert);
  pair.private_key = std::move(*key);
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!o.tls_client_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPemFile(o.tls_client_ca_file, "tls_client_ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = std::move(*ca);
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

struct Server::Impl {
  std::unique_ptr<TokenAuthenticator> auth;
  std::unique_ptr<Metrics> metrics;
  std::unique_ptr<ModelStore> store;
  std::unique_ptr<DatasetStore> datasets;
  std::unique_ptr<ModelRegistry> registry;
  std::unique_ptr<TrainingJobManager> jobs;
  std::unique_ptr<Batcher> batcher;
  std::unique_ptr<ComputePool> compute_pool;
  std::unique_ptr<SaeService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  std::unique_ptr<grpc::Server> health_server;  // --health_listen
  int port = 0;
  int health_port = 0;

  void SetServing(bool serving) {
    grpc_server->GetHealthCheckService()->SetServingStatus(serving);
    if (health_server) health_server->GetHealthCheckService()->SetServingStatus(serving);
  }
  bool shut_down = false;
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { Shutdown(std::chrono::milliseconds(0)); }

int Server::port() const { return impl_->port; }

int Server::health_port() const { return impl_->health_port; }

int Server::metrics_port() const { return impl_->metrics ? impl_->metrics->port() : 0; }

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  if (options.max_message_bytes < 1024 || options.max_message_bytes > (int64_t{2} << 30) - 1) {
    return absl::InvalidArgumentError("max_message_bytes must be in [1 KiB, 2 GiB)");
  }
  if (options.max_rows_per_request < 1) {
    return absl::InvalidArgumentError("max_rows_per_request must be >= 1");
  }
  if (options.max_training_jobs < 1 || options.max_queued_jobs < 1) {
    // A job always passes through the queue, however briefly.
    return absl::InvalidArgumentError("max_training_jobs and max_queued_jobs must be >= 1");
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeCredentials(options.security);
  if (!credentials.ok()) return credentials.status();
  auto impl = std::make_unique<Impl>();
  if (!options.security.token_file.empty()) {
    absl::StatusOr<std::unique_ptr<TokenAuthenticator>> auth =
        TokenAuthenticator::FromFile(options.security.token_file);
    if (!auth.ok()) return auth.status();
    impl->auth = std::move(*auth);
  }
  if (!options.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Start(options.metrics_listen);
    if (!metrics.ok()) return metrics.status();
    impl->metrics = std::move(*metrics);
  }
  Metrics* metrics = impl->metrics.get();
  absl::StatusOr<std::unique_ptr<ModelStore>> store = ModelStore::Open(options.store_root);
  if (!store.ok()) return store.status();
  impl->store = std::move(*store);
  const std::string datasets_root =
      options.datasets_root.empty() ? options.store_root + "/../datasets" : options.datasets_root;
  absl::StatusOr<std::unique_ptr<DatasetStore>> datasets =
      DatasetStore::Open(datasets_root, options.max_dataset_bytes);
  if (!datasets.ok()) return datasets.status();
  impl->datasets = std::move(*datasets);
  impl->registry = std::make_unique<ModelRegistry>(
      impl->store.get(), options.reload_interval,
      metrics == nullptr ? std::function<void(bool)>() : [metrics](bool ok) { metrics->RecordModelLoad(ok); },
      metrics == nullptr ? std::function<void(int64_t)>()
                         : [metrics](int64_t held) { metrics->SetModelsLoaded(held); });
  // Only a server that trains keeps a journal of its jobs.
  std::unique_ptr<JobJournal> journal;
  if (options.accept_training) {
    const std::string jobs_root =
        options.jobs_root.empty() ? options.store_root + "/../jobs" : options.jobs_root;
    absl::StatusOr<std::unique_ptr<JobJournal>> opened =
        JobJournal::Open(jobs_root, options.jobs_lock_wait);
    if (!opened.ok()) return opened.status();
    journal = std::move(*opened);
  }
  impl->jobs = std::make_unique<TrainingJobManager>(
      impl->store.get(), JobManagerOptions{options.max_training_jobs, options.max_queued_jobs},
      std::move(journal));
  if (metrics != nullptr) {
    impl->jobs->set_observers(
        [metrics](const std::string& state, int64_t running) {
          metrics->RecordJobState(state);
          metrics->SetRunningJobs(running);
        },
        [metrics](double rows_per_s) { metrics->SetTrainingRowsPerSecond(rows_per_s); });
  }
  BatchingOptions batching{options.batching, options.batch_max_rows, options.batch_max_delay_us,
                           options.batch_max_queued_rows};
  if (batching.max_batch_rows < 1 || batching.max_queue_delay_us < 0 ||
      batching.max_queued_rows < batching.max_batch_rows) {
    return absl::InvalidArgumentError(
        "batching: need max_rows >= 1, max_delay_us >= 0, max_queued_rows >= max_rows");
  }
  absl::StatusOr<std::map<std::string, BatchingOptions>> overrides =
      ParseBatchingOverrides(options.batch_model_overrides, batching);
  if (!overrides.ok()) return overrides.status();
  impl->batcher = std::make_unique<Batcher>(batching, std::move(*overrides));
  if (metrics != nullptr) {
    impl->batcher->set_observer(
        [metrics](int64_t rows, double queue_us) { metrics->RecordBatch(rows, queue_us * 1e-6); });
  }
  // Enough threads that a small call rarely waits behind large ones for a
  // thread; the cores are shared by the kernel's scheduler.
  impl->compute_pool = std::make_unique<ComputePool>(std::max(8, 4 * BlasThreads()));
  // A call that leads its batching queue computes its own batch and hands
  // the rest to the pool, so that it is answered at once however long the
  // queue stays busy. The hand-off goes ahead of large products waiting for
  // a thread: the small calls it leads would otherwise wait behind them.
  // The pool outlives the batcher's last work: it is destroyed first
  // (Impl's member order) and runs what it was given.
  impl->batcher->set_executor([pool = impl->compute_pool.get()](std::function<void()> fn) {
    pool->RunNext(std::move(fn));
  });
  impl->service = std::make_unique<SaeService>(
      impl->store.get(), impl->registry.get(), impl->jobs.get(), impl->datasets.get(),
      impl->batcher.get(), metrics, impl->auth.get(),
      ServiceLimits{options.max_rows_per_request, 1 << 20, options.max_message_bytes,
                    4 * options.max_message_bytes, options.accept_training},
      impl->compute_pool.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, *credentials, &impl->port);
  builder.RegisterService(impl->service.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  if (metrics != nullptr) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
    creators.push_back(MakeMetricsInterceptorFactory(metrics));
    builder.experimental().SetInterceptorCreators(std::move(creators));
  }
  if (options.rpc_threads > 0) {
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS,
                                options.rpc_threads);
  }
  impl->grpc_server = builder.BuildAndStart();
  if (impl->grpc_server == nullptr || impl->port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", options.listen_address, "' (in use, or not an address)"));
  }
  if (!options.health_listen.empty()) {
    // A server of its own: the default health service, and server reflection
    // (gRPC adds it to every builder; it tells only the public schema, and
    // gives the port the sync method the builder needs). No sae.v1 method.
    grpc::ServerBuilder health;
    health.AddListeningPort(options.health_listen, grpc::InsecureServerCredentials(),
                            &impl->health_port);
    impl->health_server = health.BuildAndStart();
    if (impl->health_server == nullptr || impl->health_port == 0) {
      impl->grpc_server->Shutdown();
      return absl::UnavailableError(absl::StrCat(
          "cannot listen for health on '", options.health_listen, "' (in use, or not an address)"));
    }
  }
  impl->SetServing(true);
  const SecurityOptions& sec = options.security;
  LogLine("server", absl::StrCat("serving on port ", impl->port, ", store '",
                                 options.store_root, "', ",
                                 sec.plaintext ? "plaintext"
                                 : sec.tls_client_ca_file.empty() ? "TLS" : "mutual TLS",
                                 impl->auth ? absl::StrCat(", ", impl->auth->size(), " tokens")
                                            : std::string(", no tokens"),
                                 metrics != nullptr ? absl::StrCat(", metrics on port ", metrics->port())
                                                    : std::string(),
                                 impl->health_port != 0
                                     ? absl::StrCat(", health on port ", impl->health_port)
                                     : std::string(),
                                 "; compute on ", BlasThreads(), " threads (training on ",
                                 BackgroundThreads(), "), OpenBLAS kernels ", BlasKernels()));
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

void Server::Wait() { impl_->grpc_server->Wait(); }

void Server::Shutdown(std::chrono::milliseconds grace) {
  if (impl_ == nullptr || impl_->shut_down) return;
  impl_->shut_down = true;
  LogLine("server", "shutting down");
  impl_->SetServing(false);
  // Training first: running jobs become INTERRUPTED and publish nothing, so
  // watchers see a final state before their streams end.
  impl_->jobs->Shutdown();
  impl_->grpc_server->Shutdown(std::chrono::system_clock::now() + grace);
  if (impl_->health_server) impl_->health_server->Shutdown();
  impl_->registry.reset();
  LogLine("server", "stopped");
}

void DisableMutexDeadlockDetection() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

}  // namespace sae::server
