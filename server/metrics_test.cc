#include "server/metrics.h"


#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sae/v1/sae.grpc.pb.h"
#include "server/server.h"
#include "server/testing/test_util.h"

namespace sae::server {
namespace {

using testing::HttpGet;
using testing::Sample;

TEST(MetricsTest, ScrapeShowsCountersMoving) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/metrics_", ::getpid());
  ASSERT_TRUE(RemoveTree(root).ok());
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.security.plaintext = true;
  options.store_root = root + "/models";
  options.metrics_listen = "127.0.0.1:0";
  auto server = Server::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->metrics_port(), 0);
  auto stub = v1::SparseAutoencoderService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*server)->port()), grpc::InsecureChannelCredentials()));

  const std::string before = HttpGet((*server)->metrics_port(), "/metrics");
  ASSERT_NE(before.find("200 OK"), std::string::npos) << before.substr(0, 200);

  v1::TrainRequest train;
  train.set_model_name("m");
  train.mutable_config()->set_d_in(4);
  train.mutable_config()->set_d_hidden(8);
  train.mutable_options()->set_epochs(2);
  train.mutable_inline_data()->add_shape(20);
  train.mutable_inline_data()->add_shape(4);
  for (int i = 0; i < 80; ++i) train.mutable_inline_data()->mutable_values()->add_values(i % 7 * 0.1f);
  v1::TrainResponse started;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Train(&ctx, train, &started).ok());
  }
  {
    grpc::ClientContext ctx;
    v1::WatchTrainingJobRequest watch;
    watch.set_job_id(started.job().id());
    auto reader = stub->WatchTrainingJob(&ctx, watch);
    v1::WatchTrainingJobResponse event;
    while (reader->Read(&event)) {
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  v1::EncodeRequest enc;
  enc.mutable_model()->set_name("m");
  enc.mutable_input()->add_shape(3);
  enc.mutable_input()->add_shape(4);
  for (int i = 0; i < 12; ++i) enc.mutable_input()->mutable_values()->add_values(0.5f);
  for (int i = 0; i < 5; ++i) {
    grpc::ClientContext ctx;
    v1::EncodeResponse out;
    ASSERT_TRUE(stub->Encode(&ctx, enc, &out).ok());
  }
  enc.mutable_model()->set_name("ghost");
  {
    grpc::ClientContext ctx;
    v1::EncodeResponse out;
    EXPECT_EQ(stub->Encode(&ctx, enc, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  }

  const std::string after = HttpGet((*server)->metrics_port(), "/metrics");
  EXPECT_EQ(Sample(after, "sae_rpc_requests_total", {"method=\"Encode\"", "code=\"OK\""}), 5);
  EXPECT_EQ(Sample(after, "sae_rpc_requests_total", {"method=\"Encode\"", "code=\"NOT_FOUND\""}), 1);
  EXPECT_EQ(Sample(after, "sae_rpc_requests_total", {"method=\"Train\"", "code=\"OK\""}), 1);
  EXPECT_EQ(Sample(after, "sae_rpc_latency_seconds_count", {"method=\"Encode\""}), 6);
  EXPECT_EQ(Sample(after, "sae_rows_served_total", {"model=\"m\"", "version=\"1\""}), 15);
  EXPECT_EQ(Sample(after, "sae_batch_rows_count", {}), 5);
  EXPECT_EQ(Sample(after, "sae_training_jobs_total", {"state=\"succeeded\""}), 1);
  EXPECT_EQ(Sample(after, "sae_training_jobs_total", {"state=\"queued\""}), 1);
  EXPECT_EQ(Sample(after, "sae_training_jobs_running", {}), 0);
  EXPECT_GT(Sample(after, "sae_training_rows_per_second", {}), 0);
  EXPECT_GE(Sample(after, "sae_model_loads_total", {}), 1);
  EXPECT_EQ(Sample(after, "sae_model_reload_failures_total", {}), 0);
  EXPECT_EQ(Sample(after, "sae_models_loaded", {}), 1);
  server->reset();
  RemoveTree(root).IgnoreError();
}

}  // namespace
}  // namespace sae::server
