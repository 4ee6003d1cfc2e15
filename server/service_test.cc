// End-to-end tests of the service: an in-process server on port 0 called
// through real gRPC stubs, and the real sae_server binary.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/dataset_io.h"
#include "core/file_util.h"
#include "core/model_store.h"
#include "core/testing/test_dir.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sae/v1/sae.grpc.pb.h"
#include "server/server.h"
#include "server/testing/test_util.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace sae::server {
namespace {

using v1::SparseAutoencoderService;

// Rows mixing a few fixed directions, so a small model learns them fast.
using testing::SetTensor;
constexpr auto Data = testing::RandomMatrix;

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = sae::testing::FreshTestDir("service");
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.security.plaintext = true;
    options.store_root = root_ + "/models";
    options.datasets_root = root_ + "/datasets";
    options.max_rows_per_request = 1000;
    options.max_message_bytes = 4 << 20;
    options.max_queued_jobs = 2;
    options.reload_interval = std::chrono::milliseconds(200);
    auto server = Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = testing::LocalChannel(server_->port(), 64 << 20);
    stub_ = SparseAutoencoderService::NewStub(channel_);
  }
  void TearDown() override {
    server_.reset();
    RemoveTree(root_).IgnoreError();
  }

  std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 60) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    return ctx;
  }

  v1::TrainRequest SmallTrainRequest(const std::string& name, int64_t d_in = 8) {
    v1::TrainRequest r;
    r.set_model_name(name);
    r.mutable_config()->set_d_in(d_in);
    r.mutable_config()->set_d_hidden(16);
    r.mutable_config()->set_l1_coefficient(0.01f);
    r.mutable_options()->set_batch_size(32);
    r.mutable_options()->set_epochs(3);
    SetTensor(Data(200, d_in, 1), r.mutable_inline_data());
    return r;
  }

  // Trains through the API and waits with WatchTrainingJob; returns the job.
  v1::TrainingJob TrainAndWatch(const v1::TrainRequest& request) {
    v1::TrainResponse started;
    grpc::Status s = stub_->Train(Ctx().get(), request, &started);
    EXPECT_TRUE(s.ok()) << s.error_message();
    v1::WatchTrainingJobRequest watch;
    watch.set_job_id(started.job().id());
    auto ctx = Ctx();
    auto reader = stub_->WatchTrainingJob(ctx.get(), watch);
    v1::WatchTrainingJobResponse event;
    v1::TrainingJob last;
    int events = 0;
    while (reader->Read(&event)) {
      last = event.job();
      ++events;
    }
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_GE(events, 1);
    return last;
  }

  grpc::StatusCode EncodeCode(const v1::EncodeRequest& r) {
    v1::EncodeResponse out;
    return stub_->Encode(Ctx().get(), r, &out).error_code();
  }

  std::string root_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<SparseAutoencoderService::Stub> stub_;
};

TEST_F(ServiceTest, HealthIsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(ServiceTest, TrainWatchThenServeEveryInferenceCall) {
  const v1::TrainingJob job = TrainAndWatch(SmallTrainRequest("small"));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error();
  EXPECT_EQ(job.published_version(), 1);
  EXPECT_GT(job.metrics().at("fvu"), 0.0);
  EXPECT_EQ(job.progress().step(), job.progress().total_steps());

  const RowMatrix x = Data(5, 8, 9);
  v1::EncodeRequest enc;
  enc.mutable_model()->set_name("small");
  SetTensor(x, enc.mutable_input());
  v1::EncodeResponse codes;
  ASSERT_TRUE(stub_->Encode(Ctx().get(), enc, &codes).ok());
  EXPECT_EQ(codes.model_version(), 1);
  ASSERT_EQ(codes.dense().shape(0), 5);
  ASSERT_EQ(codes.dense().shape(1), 16);

  enc.set_sparse(true);
  enc.set_top_n(3);
  v1::EncodeResponse sparse;
  ASSERT_TRUE(stub_->Encode(Ctx().get(), enc, &sparse).ok());
  EXPECT_EQ(sparse.sparse().row_offsets_size(), 6);
  EXPECT_LE(sparse.sparse().indices_size(), 15);

  v1::DecodeRequest dec;
  dec.mutable_model()->set_version(1);
  dec.mutable_model()->set_name("small");
  *dec.mutable_codes() = codes.dense();
  v1::DecodeResponse decoded;
  ASSERT_TRUE(stub_->Decode(Ctx().get(), dec, &decoded).ok());

  v1::ReconstructRequest rec;
  rec.mutable_model()->set_name("small");
  SetTensor(x, rec.mutable_input(), /*raw=*/true);
  rec.set_raw_output(true);
  v1::ReconstructResponse recon;
  ASSERT_TRUE(stub_->Reconstruct(Ctx().get(), rec, &recon).ok());
  EXPECT_EQ(recon.row_mse_size(), 5);
  ASSERT_EQ(recon.output().raw().size(), 5u * 8 * 4);
  // Decode(Encode(x)) and Reconstruct(x) agree.
  const float* r = reinterpret_cast<const float*>(recon.output().raw().data());
  for (int i = 0; i < 40; ++i) EXPECT_NEAR(r[i], decoded.output().values().values(i), 1e-5);

  v1::DenoiseRequest den;
  den.mutable_model()->set_name("small");
  SetTensor(x, den.mutable_input());
  v1::DenoiseResponse denoised;
  ASSERT_TRUE(stub_->Denoise(Ctx().get(), den, &denoised).ok());
  EXPECT_EQ(denoised.output().values().values_size(), 40);
}

TEST_F(ServiceTest, TrainIsIdempotentWithARequestId) {
  v1::TrainRequest r = SmallTrainRequest("idem");
  r.set_request_id("client-42");
  v1::TrainResponse a, b;
  ASSERT_TRUE(stub_->Train(Ctx().get(), r, &a).ok());
  ASSERT_TRUE(stub_->Train(Ctx().get(), r, &b).ok());
  EXPECT_EQ(a.job().id(), b.job().id());
  v1::ListTrainingJobsResponse list;
  ASSERT_TRUE(stub_->ListTrainingJobs(Ctx().get(), {}, &list).ok());
  EXPECT_EQ(list.jobs_size(), 1);
}

TEST_F(ServiceTest, CancelStopsARunningJobAndPublishesNothing) {
  v1::TrainRequest r = SmallTrainRequest("cancel");
  r.mutable_options()->set_epochs(100000);
  v1::TrainResponse started;
  ASSERT_TRUE(stub_->Train(Ctx().get(), r, &started).ok());
  v1::GetTrainingJobRequest get;
  get.set_job_id(started.job().id());
  v1::GetTrainingJobResponse now;
  for (int i = 0; i < 100; ++i) {  // wait until it runs
    ASSERT_TRUE(stub_->GetTrainingJob(Ctx().get(), get, &now).ok());
    if (now.job().progress().step() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  v1::CancelTrainingJobRequest cancel;
  cancel.set_job_id(started.job().id());
  v1::CancelTrainingJobResponse cancelled;
  ASSERT_TRUE(stub_->CancelTrainingJob(Ctx().get(), cancel, &cancelled).ok());
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(stub_->GetTrainingJob(Ctx().get(), get, &now).ok());
    if (now.job().state() != v1::JOB_STATE_RUNNING) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(now.job().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(now.job().published_version(), 0);
  v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(Ctx().get(), {}, &models).ok());
  for (const auto& m : models.models()) EXPECT_NE(m.name(), "cancel");
  // A second cancel: the job has already finished.
  EXPECT_EQ(stub_->CancelTrainingJob(Ctx().get(), cancel, &cancelled).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServiceTest, UploadDatasetInChunksThenTrainFromIt) {
  const RowMatrix data = Data(300, 8, 4);
  const std::string npy = EncodeNpy(data);
  auto ctx = Ctx();
  v1::UploadDatasetResponse uploaded;
  auto writer = stub_->UploadDataset(ctx.get(), &uploaded);
  for (size_t off = 0; off < npy.size(); off += 1000) {
    v1::UploadDatasetRequest chunk;
    if (off == 0) {
      chunk.set_format("npy");
      chunk.set_display_name("random rows");
    }
    chunk.set_chunk(npy.substr(off, 1000));
    ASSERT_TRUE(writer->Write(chunk));
  }
  writer->WritesDone();
  ASSERT_TRUE(writer->Finish().ok());
  EXPECT_EQ(uploaded.dataset().rows(), 300);
  EXPECT_EQ(uploaded.dataset().columns(), 8);

  v1::ListDatasetsResponse list;
  ASSERT_TRUE(stub_->ListDatasets(Ctx().get(), {}, &list).ok());
  ASSERT_EQ(list.datasets_size(), 1);
  EXPECT_EQ(list.datasets(0).display_name(), "random rows");

  v1::TrainRequest r = SmallTrainRequest("from-dataset");
  r.set_dataset_id(uploaded.dataset().id());
  const v1::TrainingJob job = TrainAndWatch(r);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error();

  v1::DeleteDatasetRequest del;
  del.set_dataset_id(uploaded.dataset().id());
  v1::DeleteDatasetResponse deleted;
  ASSERT_TRUE(stub_->DeleteDataset(Ctx().get(), del, &deleted).ok());
  EXPECT_EQ(stub_->DeleteDataset(Ctx().get(), del, &deleted).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, StreamsKeepOrderAndAnswerEveryMessage) {
  ASSERT_EQ(TrainAndWatch(SmallTrainRequest("stream")).state(), v1::JOB_STATE_SUCCEEDED);
  auto ctx = Ctx();
  auto stream = stub_->StreamReconstruct(ctx.get());
  std::vector<RowMatrix> batches;
  for (int i = 0; i < 20; ++i) {
    batches.push_back(Data(1 + i, 8, 100 + i));
    v1::StreamReconstructRequest req;
    req.mutable_request()->mutable_model()->set_name("stream");
    SetTensor(batches.back(), req.mutable_request()->mutable_input());
    ASSERT_TRUE(stream->Write(req));
  }
  stream->WritesDone();
  v1::StreamReconstructResponse resp;
  int n = 0;
  while (stream->Read(&resp)) {
    EXPECT_EQ(resp.response().output().shape(0), batches[n].rows()) << "message " << n;
    ++n;
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(n, 20);
}

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * ::sysconf(_SC_PAGESIZE);
}

// Two million rows through one stream: memory must stay flat (client and
// server share this process, so both sides are measured).
TEST_F(ServiceTest, ATwoMillionRowStreamKeepsMemoryFlat) {
  ASSERT_EQ(TrainAndWatch(SmallTrainRequest("flat")).state(), v1::JOB_STATE_SUCCEEDED);
  auto ctx = Ctx(300);
  auto stream = stub_->StreamEncode(ctx.get());
  const RowMatrix batch = Data(1000, 8, 3);
  v1::StreamEncodeRequest req;
  req.mutable_request()->mutable_model()->set_name("flat");
  req.mutable_request()->set_raw_output(true);
  SetTensor(batch, req.mutable_request()->mutable_input(), /*raw=*/true);
  std::thread writer([&] {
    for (int i = 0; i < 2000; ++i) {
      if (!stream->Write(req)) break;
    }
    stream->WritesDone();
  });
  v1::StreamEncodeResponse resp;
  // Peaks of the resident size over rows 100K - 1.05M and 1.05M - 2M.
  int64_t rows = 0, rss_early = 0, first_half = 0, second_half = 0;
  while (stream->Read(&resp)) {
    rows += resp.response().dense().shape(0);
    if (rows == 100000) rss_early = ResidentBytes();
    if (rows > 100000) {
      int64_t& peak = rows <= 1050000 ? first_half : second_half;
      peak = std::max(peak, ResidentBytes());
    }
  }
  writer.join();
  ASSERT_TRUE(stream->Finish().ok());
  EXPECT_EQ(rows, 2000000);
  // 2M rows of codes are 128 MB. What gRPC buffers in flight (its windows
  // grow with the load on the machine: 6 - 26 MB seen over 1M rows) is
  // reached early and may grow a little later (up to 12 MB seen); memory
  // held per row would add about 61 MB over the second half alone.
  EXPECT_LT(std::max(first_half, second_half) - rss_early, 48 << 20)
      << "early " << rss_early << " peaks " << first_half << ", " << second_half;
  EXPECT_LT(second_half - first_half, 24 << 20)
      << "memory grew with the rows: peaks " << first_half << ", then " << second_half;
}

TEST_F(ServiceTest, ExportThenImportGivesTheSameModel) {
  ASSERT_EQ(TrainAndWatch(SmallTrainRequest("orig")).state(), v1::JOB_STATE_SUCCEEDED);
  v1::ExportModelRequest exp;
  exp.mutable_model()->set_name("orig");
  auto ctx = Ctx();
  auto reader = stub_->ExportModel(ctx.get(), exp);
  std::vector<v1::ExportModelResponse> chunks;
  v1::ExportModelResponse chunk;
  while (reader->Read(&chunk)) chunks.push_back(chunk);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_GE(chunks.size(), 2u);

  auto ctx2 = Ctx();
  v1::ImportModelResponse imported;
  auto writer = stub_->ImportModel(ctx2.get(), &imported);
  for (size_t i = 0; i < chunks.size(); ++i) {
    v1::ImportModelRequest req;
    if (i == 0) req.set_name("copy");
    req.set_file_name(chunks[i].file_name());
    req.set_chunk(chunks[i].chunk());
    ASSERT_TRUE(writer->Write(req));
  }
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(imported.version().version(), 1);
  EXPECT_EQ(imported.version().source(), "imported");

  const RowMatrix x = Data(3, 8, 5);
  std::vector<std::string> outputs;
  for (const char* name : {"orig", "copy"}) {
    v1::ReconstructRequest rec;
    rec.mutable_model()->set_name(name);
    SetTensor(x, rec.mutable_input());
    rec.set_raw_output(true);
    v1::ReconstructResponse out;
    ASSERT_TRUE(stub_->Reconstruct(Ctx().get(), rec, &out).ok());
    outputs.push_back(out.output().raw());
  }
  EXPECT_EQ(outputs[0], outputs[1]);
}

TEST_F(ServiceTest, ModelsLabelsAndDeletes) {
  ASSERT_EQ(TrainAndWatch(SmallTrainRequest("m")).state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_EQ(TrainAndWatch(SmallTrainRequest("m")).published_version(), 2);
  v1::SetModelLabelRequest label;
  label.set_name("m");
  label.set_label("stable");
  label.set_version(1);
  v1::SetModelLabelResponse labels;
  ASSERT_TRUE(stub_->SetModelLabel(Ctx().get(), label, &labels).ok());
  EXPECT_EQ(labels.labels().at("stable"), 1);

  v1::EncodeRequest enc;
  enc.mutable_model()->set_name("m");
  enc.mutable_model()->set_label("stable");
  SetTensor(Data(1, 8, 1), enc.mutable_input());
  v1::EncodeResponse out;
  ASSERT_TRUE(stub_->Encode(Ctx().get(), enc, &out).ok());
  EXPECT_EQ(out.model_version(), 1);

  v1::GetModelRequest get;
  get.set_name("m");
  v1::GetModelResponse model;
  ASSERT_TRUE(stub_->GetModel(Ctx().get(), get, &model).ok());
  ASSERT_EQ(model.versions_size(), 2);
  EXPECT_EQ(model.versions(0).labels(0), "stable");
  EXPECT_EQ(model.versions(1).config().d_hidden(), 16);
  EXPECT_GT(model.versions(1).metrics().at("fvu"), 0);

  v1::DeleteModelVersionRequest del;
  del.set_name("m");
  del.set_version(1);
  v1::DeleteModelVersionResponse deleted;
  EXPECT_EQ(stub_->DeleteModelVersion(Ctx().get(), del, &deleted).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  del.set_force(true);
  ASSERT_TRUE(stub_->DeleteModelVersion(Ctx().get(), del, &deleted).ok());
  EXPECT_EQ(stub_->Encode(Ctx().get(), enc, &out).error_code(), grpc::StatusCode::NOT_FOUND);
}

// Every row of docs/status-codes.md that a single call can trigger.
TEST_F(ServiceTest, StatusCodeTable) {
  ASSERT_EQ(TrainAndWatch(SmallTrainRequest("t")).state(), v1::JOB_STATE_SUCCEEDED);
  auto enc = [&](auto edit) {
    v1::EncodeRequest r;
    r.mutable_model()->set_name("t");
    SetTensor(Data(2, 8, 1), r.mutable_input());
    edit(r);
    return EncodeCode(r);
  };
  using C = grpc::StatusCode;
  EXPECT_EQ(enc([](auto&) {}), C::OK);
  EXPECT_EQ(enc([](auto& r) { r.mutable_model()->set_name("nope"); }), C::NOT_FOUND);
  EXPECT_EQ(enc([](auto& r) { r.mutable_model()->set_version(9); }), C::NOT_FOUND);
  EXPECT_EQ(enc([](auto& r) { r.mutable_model()->set_label("canary"); }), C::NOT_FOUND);
  EXPECT_EQ(enc([](auto& r) { r.mutable_model()->set_version(-1); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_model()->set_name("../etc"); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_model()->set_name(std::string("a\0b", 3)); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_model()->set_name(std::string(10000, 'a')); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_model()->set_name(""); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.clear_input(); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_input()->clear_values(); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_input()->set_shape(1, 9); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_input()->set_shape(0, 3); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_input()->set_shape(0, 0); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_input()->add_shape(1); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_input()->mutable_values()->set_values(3, NAN); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_input()->mutable_values()->set_values(0, INFINITY); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.mutable_input()->set_raw("abc"); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) { r.set_top_n(-2); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(enc([](auto& r) {
              r.clear_input();
              SetTensor(Data(1001, 8, 1), r.mutable_input(), true);
            }), C::RESOURCE_EXHAUSTED);  // more rows than --max_rows
  EXPECT_EQ(enc([](auto& r) {
              r.clear_input();
              SetTensor(Data(1, 1 << 20, 1), r.mutable_input(), true);
            }), C::RESOURCE_EXHAUSTED);  // larger than --max_message_mb
  {
    v1::EncodeRequest r;
    r.mutable_model()->set_name("t");
    SetTensor(Data(2, 8, 1), r.mutable_input());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() - std::chrono::seconds(1));
    v1::EncodeResponse out;
    EXPECT_EQ(stub_->Encode(&ctx, r, &out).error_code(), C::DEADLINE_EXCEEDED);
  }
  // Training requests.
  auto train = [&](auto edit) {
    v1::TrainRequest r = SmallTrainRequest("t2");
    edit(r);
    v1::TrainResponse out;
    return stub_->Train(Ctx().get(), r, &out).error_code();
  };
  EXPECT_EQ(train([](auto& r) { r.clear_config(); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(train([](auto& r) { r.mutable_config()->set_d_in(9); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(train([](auto& r) { r.mutable_config()->set_k(3); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(train([](auto& r) { r.mutable_config()->set_activation(v1::ACTIVATION_JUMPRELU); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(train([](auto& r) { r.mutable_config()->set_activation(static_cast<v1::Activation>(99)); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(train([](auto& r) { r.mutable_options()->set_learning_rate(-1); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(train([](auto& r) { r.mutable_options()->set_validation_fraction(2); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(train([](auto& r) { r.set_model_name("Bad Name"); }), C::INVALID_ARGUMENT);
  // Messages name the request's fields, not the core's.
  for (const auto& [edit, field] :
       std::vector<std::pair<std::function<void(v1::TrainRequest&)>, std::string>>{
           {[](auto& r) { r.mutable_options()->set_batch_size(-3); }, "options.batch_size"},
           {[](auto& r) { r.mutable_options()->set_learning_rate(-1); }, "options.learning_rate"},
           {[](auto& r) { r.mutable_options()->set_noise_sigma(-1); }, "options.noise_sigma"},
           {[](auto& r) { r.mutable_options()->set_noise_probability(2); },
            "options.noise_probability"}}) {
    v1::TrainRequest r = SmallTrainRequest("t2");
    edit(r);
    v1::TrainResponse out;
    grpc::Status s = stub_->Train(Ctx().get(), r, &out);
    EXPECT_EQ(s.error_code(), C::INVALID_ARGUMENT) << field;
    EXPECT_TRUE(absl::StartsWith(s.error_message(), field)) << s.error_message();
  }
  EXPECT_EQ(train([](auto& r) { r.clear_inline_data(); }), C::INVALID_ARGUMENT);
  EXPECT_EQ(train([](auto& r) { r.set_dataset_id("ds-0000000000000000"); }), C::NOT_FOUND);
  EXPECT_EQ(train([](auto& r) { r.set_dataset_id("../../etc/passwd"); }), C::INVALID_ARGUMENT);
  // Jobs.
  v1::GetTrainingJobRequest get;
  get.set_job_id("job-missing");
  v1::GetTrainingJobResponse job;
  EXPECT_EQ(stub_->GetTrainingJob(Ctx().get(), get, &job).error_code(), C::NOT_FOUND);
  // Labels.
  v1::SetModelLabelRequest label;
  label.set_name("t");
  label.set_label("stable");
  label.set_version(5);
  v1::SetModelLabelResponse labels;
  EXPECT_EQ(stub_->SetModelLabel(Ctx().get(), label, &labels).error_code(), C::NOT_FOUND);
  label.set_label("latest");
  label.set_version(1);
  EXPECT_EQ(stub_->SetModelLabel(Ctx().get(), label, &labels).error_code(), C::INVALID_ARGUMENT);
  // Uploads.
  {
    auto ctx = Ctx();
    v1::UploadDatasetResponse out;
    auto w = stub_->UploadDataset(ctx.get(), &out);
    v1::UploadDatasetRequest chunk;
    chunk.set_chunk("this is not a .npy file");
    w->Write(chunk);
    w->WritesDone();
    EXPECT_EQ(w->Finish().error_code(), C::INVALID_ARGUMENT);
  }
  {
    auto ctx = Ctx();
    v1::ImportModelResponse out;
    auto w = stub_->ImportModel(ctx.get(), &out);
    v1::ImportModelRequest chunk;
    chunk.set_name("imp");
    chunk.set_file_name("../../evil");
    chunk.set_chunk("x");
    w->Write(chunk);
    w->WritesDone();
    EXPECT_EQ(w->Finish().error_code(), C::INVALID_ARGUMENT);
  }
  // A corrupt version: DATA_LOSS when asked for by number. It is made in
  // another store and moved in whole, so it is corrupt from its first
  // appearance (a loaded model is served from memory).
  {
    auto other = ModelStore::Open(root_ + "/other");
    ASSERT_TRUE(other.ok());
    ModelConfig c = DefaultConfig(8, 16, Activation::kRelu);
    ASSERT_TRUE((*other)->Publish("t", **Model::Create(c, InitialWeights(c, 1)), {}).ok());
    const std::string weights = root_ + "/other/t/1/sae_weights.safetensors";
    { std::fstream f(weights, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(-2, std::ios::end);
      f.put('\x55'); }
    ASSERT_EQ(::rename((root_ + "/other/t/1").c_str(), (root_ + "/models/t/7").c_str()), 0);
  }
  EXPECT_EQ(enc([](auto& r) { r.mutable_model()->set_version(7); }), C::DATA_LOSS);
}

// A reply larger than the message limit (4 MiB here) is refused before any
// work, with the rows per call that would fit; gRPC would otherwise fail
// the send only after computing and copying it all.
TEST_F(ServiceTest, AReplyLargerThanTheMessageLimitIsRefusedUpFront) {
  auto store = ModelStore::Open(root_ + "/models");
  ASSERT_TRUE(store.ok()) << store.status();
  ModelConfig wide = DefaultConfig(4, 8192, Activation::kRelu);
  ModelConfig narrow = DefaultConfig(8192, 4, Activation::kRelu);
  ASSERT_TRUE((*store)->Publish("wide", **Model::Create(wide, InitialWeights(wide, 1)), {}).ok());
  ASSERT_TRUE(
      (*store)->Publish("narrow", **Model::Create(narrow, InitialWeights(narrow, 1)), {}).ok());
  auto expect_refused = [](const grpc::Status& s) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_NE(s.error_message().find("message limit"), std::string::npos) << s.error_message();
  };
  v1::EncodeRequest encode;
  encode.mutable_model()->set_name("wide");
  SetTensor(Data(200, 4, 1), encode.mutable_input());  // 200 x 8192 codes: 6.25 MiB
  v1::EncodeResponse codes;
  grpc::Status s = stub_->Encode(Ctx().get(), encode, &codes);
  expect_refused(s);
  EXPECT_NE(s.error_message().find("send at most 127 rows"), std::string::npos)
      << s.error_message();
  encode.clear_input();
  SetTensor(Data(100, 4, 1), encode.mutable_input());
  grpc::Status fits = stub_->Encode(Ctx().get(), encode, &codes);
  ASSERT_TRUE(fits.ok()) << fits.error_message();
  EXPECT_EQ(codes.dense().shape(1), 8192);

  // Sparse codes are checked as they are made: a few per row fit, all of a
  // ReLU model's nonzeros (about half its units) do not.
  encode.clear_input();
  SetTensor(Data(200, 4, 1), encode.mutable_input());
  encode.set_sparse(true);
  encode.set_top_n(8);
  ASSERT_TRUE(stub_->Encode(Ctx().get(), encode, &codes).ok());
  EXPECT_EQ(codes.sparse().rows(), 200);
  encode.set_top_n(0);
  expect_refused(stub_->Encode(Ctx().get(), encode, &codes));

  v1::DecodeRequest decode;
  decode.mutable_model()->set_name("narrow");
  SetTensor(Data(200, 4, 1), decode.mutable_codes());  // 200 x 8192 outputs
  v1::DecodeResponse decoded;
  expect_refused(stub_->Decode(Ctx().get(), decode, &decoded));
  v1::ReconstructRequest reconstruct;
  reconstruct.mutable_model()->set_name("narrow");
  SetTensor(Data(100, 8192, 1), reconstruct.mutable_input());  // fits, as its input did
  v1::ReconstructResponse reconstructed;
  grpc::Status r = stub_->Reconstruct(Ctx().get(), reconstruct, &reconstructed);
  EXPECT_TRUE(r.ok()) << r.error_message();
}

TEST_F(ServiceTest, TrainingQueueLimitIsResourceExhausted) {
  v1::TrainRequest slow = SmallTrainRequest("busy");
  slow.mutable_options()->set_epochs(100000);
  std::vector<std::string> ids;
  v1::TrainResponse first;
  ASSERT_TRUE(stub_->Train(Ctx().get(), slow, &first).ok());
  ids.push_back(first.job().id());
  // Wait until the one worker runs it; then the queue holds 2 more.
  v1::GetTrainingJobRequest get;
  get.set_job_id(first.job().id());
  v1::GetTrainingJobResponse now;
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(stub_->GetTrainingJob(Ctx().get(), get, &now).ok());
    if (now.job().state() == v1::JOB_STATE_RUNNING) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(now.job().state(), v1::JOB_STATE_RUNNING);
  std::vector<grpc::StatusCode> codes;
  for (int i = 0; i < 3; ++i) {
    v1::TrainResponse out;
    codes.push_back(stub_->Train(Ctx().get(), slow, &out).error_code());
    if (codes.back() == grpc::StatusCode::OK) ids.push_back(out.job().id());
  }
  EXPECT_EQ(codes, (std::vector<grpc::StatusCode>{grpc::StatusCode::OK, grpc::StatusCode::OK,
                                                   grpc::StatusCode::RESOURCE_EXHAUSTED}));
  // The queue is checked before the data is loaded: a dataset id is not
  // even looked up, and a retry of a queued job gets that job back.
  v1::TrainRequest from_dataset = SmallTrainRequest("busy");
  from_dataset.set_dataset_id("ds-0000000000000000");
  v1::TrainResponse refused;
  EXPECT_EQ(stub_->Train(Ctx().get(), from_dataset, &refused).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  v1::TrainRequest retry = slow;
  retry.set_request_id("retry-me");
  for (const std::string& id : ids) {
    v1::CancelTrainingJobRequest c;
    c.set_job_id(id);
    v1::CancelTrainingJobResponse out;
    stub_->CancelTrainingJob(Ctx().get(), c, &out);
  }
  ids.clear();
  v1::TrainResponse queued, again;
  ASSERT_TRUE(stub_->Train(Ctx().get(), retry, &queued).ok());
  ids.push_back(queued.job().id());
  for (int i = 0; i < 2; ++i) {
    v1::TrainResponse filler;
    if (stub_->Train(Ctx().get(), slow, &filler).ok()) ids.push_back(filler.job().id());
  }
  grpc::Status s = stub_->Train(Ctx().get(), retry, &again);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(again.job().id(), queued.job().id());
  for (const std::string& id : ids) {
    v1::CancelTrainingJobRequest c;
    c.set_job_id(id);
    v1::CancelTrainingJobResponse out;
    stub_->CancelTrainingJob(Ctx().get(), c, &out);
  }
}

TEST_F(ServiceTest, HotReloadServesVersionsPublishedByAnotherProcess) {
  // Another process (a replica sharing the volume) publishes versions.
  const std::string cmd = absl::StrCat(SAE_STORE_PUBLISHER, " ", root_, "/models shared 1 7 > /dev/null");
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  v1::EncodeRequest r;
  r.mutable_model()->set_name("shared");
  SetTensor(Data(1, 64, 1), r.mutable_input());
  v1::EncodeResponse out;
  ASSERT_TRUE(stub_->Encode(Ctx().get(), r, &out).ok());
  EXPECT_EQ(out.model_version(), 1);
  ASSERT_EQ(std::system(cmd.c_str()), 0);  // version 2
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    ASSERT_TRUE(stub_->Encode(Ctx().get(), r, &out).ok());
    if (out.model_version() == 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(out.model_version(), 2);
  // A corrupt new version is refused; version 2 keeps serving.
  ASSERT_EQ(std::system(cmd.c_str()), 0);  // version 3
  const std::string weights = root_ + "/models/shared/3/sae_weights.safetensors";
  { std::fstream f(weights, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('\x11'); }
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  for (int i = 0; i < 5; ++i) {
    grpc::Status s = stub_->Encode(Ctx().get(), r, &out);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(out.model_version(), 2);
  }
}

TEST(ServingOnlyReplicaTest, RefusesTrainWithFailedPrecondition) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/serving_only_", ::getpid());
  ASSERT_TRUE(RemoveTree(root).ok());
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.security.plaintext = true;
  options.store_root = root + "/models";
  options.accept_training = false;
  auto server = Server::Start(options);
  ASSERT_TRUE(server.ok());
  auto stub = SparseAutoencoderService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*server)->port()), grpc::InsecureChannelCredentials()));
  v1::TrainRequest r;
  r.set_model_name("m");
  r.mutable_config()->set_d_in(2);
  r.mutable_config()->set_d_hidden(2);
  SetTensor(Data(4, 2, 1), r.mutable_inline_data());
  grpc::ClientContext ctx;
  v1::TrainResponse out;
  grpc::Status s = stub->Train(&ctx, r, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("trainer"), std::string::npos);
  server->reset();
  RemoveTree(root).IgnoreError();
}

// The real binary: start, train through a job, watch, serve, SIGTERM.
TEST(ServerBinaryTest, TrainsServesAndShutsDownOnSigterm) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/binary_", ::getpid());
  ASSERT_TRUE(RemoveTree(root).ok());
  absl::StatusOr<testing::ServerProcess> server = testing::ServerProcess::Start(
      SAE_SERVER_BINARY, {"--plaintext", "--listen=127.0.0.1:0", "--store=" + root + "/models",
                          "--shutdown_grace_s=2"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = server->address();
  auto stub = SparseAutoencoderService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));

  // Train a denoising model on committed digits.
  absl::StatusOr<RowMatrix> digits =
      ReadNpy(std::string(SAE_DATA_DIR) + "/mnist-2500-images-u8.npy");
  ASSERT_TRUE(digits.ok());
  v1::TrainRequest r;
  r.set_model_name("digits");
  r.mutable_config()->set_d_in(784);
  r.mutable_config()->set_d_hidden(64);
  r.mutable_config()->set_l1_coefficient(0.01f);
  r.mutable_config()->set_clip_output(true);
  r.mutable_config()->set_clip_max(1.0f);
  r.mutable_options()->set_epochs(2);
  r.mutable_options()->set_batch_size(64);
  r.mutable_options()->set_corruption(v1::CORRUPTION_GAUSSIAN);
  r.mutable_options()->set_noise_sigma(0.3f);
  r.mutable_options()->set_noise_clip(true);
  SetTensor(digits->topRows(500), r.mutable_inline_data(), true);
  v1::TrainResponse started;
  grpc::ClientContext ctx1;
  ASSERT_TRUE(stub->Train(&ctx1, r, &started).ok());
  grpc::ClientContext ctx2;
  v1::WatchTrainingJobRequest watch;
  watch.set_job_id(started.job().id());
  auto reader = stub->WatchTrainingJob(&ctx2, watch);
  v1::WatchTrainingJobResponse event;
  v1::TrainingJob job;
  while (reader->Read(&event)) job = event.job();
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error();

  v1::EncodeRequest enc;
  enc.mutable_model()->set_name("digits");
  enc.mutable_model()->set_version(job.published_version());
  SetTensor(digits->bottomRows(3), enc.mutable_input());
  v1::EncodeResponse codes;
  grpc::ClientContext ctx3;
  ASSERT_TRUE(stub->Encode(&ctx3, enc, &codes).ok());
  EXPECT_EQ(codes.dense().shape(1), 64);
  v1::DenoiseRequest den;
  den.mutable_model()->set_name("digits");
  SetTensor(digits->bottomRows(3), den.mutable_input());
  v1::DenoiseResponse clean;
  grpc::ClientContext ctx4;
  ASSERT_TRUE(stub->Denoise(&ctx4, den, &clean).ok());
  for (float v : clean.output().values().values()) {
    EXPECT_GE(v, 0.0f);
    EXPECT_LE(v, 1.0f);
  }

  const int status = server->Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  RemoveTree(root).IgnoreError();
}

}  // namespace
}  // namespace sae::server
