// The bad-input matrix (docs/status-codes.md, "Bad input matrix"): every
// RPC of sae.v1 called with empty, malformed, oversized and hostile requests
// through real channels. Each case gets its documented code, none gets
// UNKNOWN (or OK), and the server still serves afterwards.
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/model_store.h"
#include "core/trainer.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sae/v1/sae.grpc.pb.h"
#include "server/server.h"
#include "server/testing/generic_call.h"
#include "server/testing/test_util.h"

namespace sae::server {
namespace {

using grpc::StatusCode;

constexpr int64_t kDIn = 4;
constexpr int64_t kDHidden = 8;
constexpr int64_t kMaxRows = 64;
constexpr int64_t kMaxMessageBytes = 256 << 10;

const google::protobuf::ServiceDescriptor* Service() {
  return v1::EncodeRequest::descriptor()->file()->FindServiceByName("SparseAutoencoderService");
}

std::string Path(const std::string& method) {
  return "/sae.v1.SparseAutoencoderService/" + method;
}

// The names every name field is tried with; each is INVALID_ARGUMENT.
std::vector<std::pair<std::string, std::string>> HostileNames() {
  return {{"empty", ""},
          {"dot-dot", ".."},
          {"parent path", "../m"},
          {"slash", "a/b"},
          {"absolute path", "/etc/passwd"},
          {"NUL", std::string("m\0x", 3)},
          {"10,000 characters", std::string(10000, 'a')},
          {"uppercase", "M"},
          {"space", "m m"}};
}

const std::vector<std::string>& InferenceMethods() {
  static const auto* methods = new std::vector<std::string>{
      "Encode", "Decode", "Reconstruct", "Denoise", "StreamEncode", "StreamReconstruct",
      "StreamDenoise"};
  return *methods;
}

// A serialized request of an inference `method` with `model` and `tensor`
// (streams: as their first message).
std::string InferenceRequest(const std::string& method, const v1::ModelRef& model,
                             const v1::Tensor& tensor) {
  auto fill = [&](auto* r) {
    *r->mutable_model() = model;
    if constexpr (std::is_same_v<std::decay_t<decltype(*r)>, v1::DecodeRequest>) {
      *r->mutable_codes() = tensor;
    } else {
      *r->mutable_input() = tensor;
    }
  };
  if (method == "Encode" || method == "StreamEncode") {
    v1::StreamEncodeRequest s;
    fill(s.mutable_request());
    return method == "Encode" ? s.request().SerializeAsString() : s.SerializeAsString();
  }
  if (method == "Reconstruct" || method == "StreamReconstruct") {
    v1::StreamReconstructRequest s;
    fill(s.mutable_request());
    return method == "Reconstruct" ? s.request().SerializeAsString() : s.SerializeAsString();
  }
  if (method == "Denoise" || method == "StreamDenoise") {
    v1::StreamDenoiseRequest s;
    fill(s.mutable_request());
    return method == "Denoise" ? s.request().SerializeAsString() : s.SerializeAsString();
  }
  v1::DecodeRequest r;
  fill(&r);
  return r.SerializeAsString();
}

v1::Tensor Matrix(int64_t rows, int64_t cols, bool raw = false) {
  v1::Tensor t;
  testing::SetTensor(testing::RandomMatrix(rows, cols, 3), &t, raw);
  return t;
}

v1::ModelRef Ref(const std::string& name) {
  v1::ModelRef ref;
  ref.set_name(name);
  return ref;
}

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(absl::StrCat(::testing::TempDir(), "/bad_input_", ::getpid()));
    ASSERT_TRUE(RemoveTree(*root_).ok());
    auto store = ModelStore::Open(*root_ + "/models");
    ASSERT_TRUE(store.ok());
    ModelConfig config = DefaultConfig(kDIn, kDHidden, Activation::kRelu);
    TrainerOptions options;
    options.epochs = 1;
    options.batch_size = 8;
    absl::StatusOr<TrainingResult> trained =
        Train(config, options, testing::RandomMatrix(32, kDIn, 1));
    ASSERT_TRUE(trained.ok());
    ASSERT_TRUE((*store)->Publish("m", *trained->model, {}).ok());
    ASSERT_TRUE((*store)->SetLabel("m", "stable", 1).ok());

    ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.security.plaintext = true;
    o.store_root = *root_ + "/models";
    o.max_rows_per_request = kMaxRows;
    o.max_message_bytes = kMaxMessageBytes;
    auto server = Server::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(64 << 20);  // let oversized requests reach the server
    channel_ = new std::shared_ptr<grpc::Channel>(grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", server_->port()), grpc::InsecureChannelCredentials(), args));
  }
  static void TearDownTestSuite() {
    delete channel_;
    delete server_;
    RemoveTree(*root_).IgnoreError();
    delete root_;
  }

  // After every group of cases: the server still serves.
  void TearDown() override {
    auto health = grpc::health::v1::Health::NewStub(*channel_);
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&ctx, {}, &response).ok());
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
    Expect("Encode", InferenceRequest("Encode", Ref("m"), Matrix(3, kDIn)), StatusCode::OK,
           "a valid request after the bad ones");
    std::printf("%d calls checked\n", cases_);
  }

  // Calls `method` with `request` and checks the code; never UNKNOWN.
  void Expect(const std::string& method, const std::string& request, StatusCode expected,
              const std::string& what) {
    grpc::Status s = testing::CallWithBytes(*channel_, Path(method), request);
    EXPECT_EQ(s.error_code(), expected)
        << method << " with " << what << ": got " << s.error_code() << " '" << s.error_message()
        << "'";
    EXPECT_NE(s.error_code(), StatusCode::UNKNOWN) << method << " with " << what;
    EXPECT_LT(s.error_message().size(), 1000u) << method << " with " << what
                                              << ": the message echoes the input";
    ++cases_;
  }

  static int cases_;
  static std::string* root_;
  static Server* server_;
  static std::shared_ptr<grpc::Channel>* channel_;
};

int BadInputTest::cases_ = 0;
std::string* BadInputTest::root_ = nullptr;
Server* BadInputTest::server_ = nullptr;
std::shared_ptr<grpc::Channel>* BadInputTest::channel_ = nullptr;

TEST_F(BadInputTest, EveryMethodWithAnEmptyRequest) {
  // The documented code of each method for a request with no field set.
  const std::map<std::string, StatusCode> expected = {
      {"Train", StatusCode::INVALID_ARGUMENT},
      {"GetTrainingJob", StatusCode::INVALID_ARGUMENT},
      {"ListTrainingJobs", StatusCode::OK},
      {"CancelTrainingJob", StatusCode::INVALID_ARGUMENT},
      {"WatchTrainingJob", StatusCode::INVALID_ARGUMENT},
      {"UploadDataset", StatusCode::INVALID_ARGUMENT},
      {"ListDatasets", StatusCode::OK},
      {"DeleteDataset", StatusCode::INVALID_ARGUMENT},
      {"Encode", StatusCode::INVALID_ARGUMENT},
      {"Decode", StatusCode::INVALID_ARGUMENT},
      {"Reconstruct", StatusCode::INVALID_ARGUMENT},
      {"Denoise", StatusCode::INVALID_ARGUMENT},
      {"StreamEncode", StatusCode::INVALID_ARGUMENT},
      {"StreamReconstruct", StatusCode::INVALID_ARGUMENT},
      {"StreamDenoise", StatusCode::INVALID_ARGUMENT},
      {"ListModels", StatusCode::OK},
      {"GetModel", StatusCode::INVALID_ARGUMENT},
      {"DeleteModelVersion", StatusCode::INVALID_ARGUMENT},
      {"SetModelLabel", StatusCode::INVALID_ARGUMENT},
      {"ImportModel", StatusCode::INVALID_ARGUMENT},
      {"ExportModel", StatusCode::INVALID_ARGUMENT},
  };
  for (const auto& [name, path] : testing::MethodPaths(Service())) {
    auto it = expected.find(name);
    ASSERT_NE(it, expected.end()) << "no expected code for the new method " << name;
    Expect(name, "", it->second, "an empty request");
  }
}

TEST_F(BadInputTest, EveryMethodWithAnOversizedMessage) {
  // Bytes of an unknown field beyond --max_message_mb: refused before parsing.
  v1::FloatList big;
  big.mutable_values()->Resize(kMaxMessageBytes / 4 + 1024, 0.5f);
  std::string request;
  {
    v1::Tensor t;
    *t.mutable_values() = big;
    request = t.SerializeAsString();
  }
  for (const auto& [name, path] : testing::MethodPaths(Service())) {
    Expect(name, request, StatusCode::RESOURCE_EXHAUSTED, "a message over the limit");
  }
}

TEST_F(BadInputTest, InferenceWithBadTensors) {
  const double nan = std::numeric_limits<float>::quiet_NaN();
  const double inf = std::numeric_limits<float>::infinity();
  for (const std::string& method : InferenceMethods()) {
    const int64_t width = method == "Decode" ? kDHidden : kDIn;
    const v1::ModelRef model = Ref("m");
    auto with = [&](const v1::Tensor& t, StatusCode code, const std::string& what) {
      Expect(method, InferenceRequest(method, model, t), code, what);
    };
    with(Matrix(2, width), StatusCode::OK, "a valid tensor");
    with(Matrix(2, width, true), StatusCode::OK, "a valid raw tensor");
    with(v1::Tensor(), StatusCode::INVALID_ARGUMENT, "no tensor");
    v1::Tensor shape_only;
    shape_only.add_shape(2);
    shape_only.add_shape(width);
    with(shape_only, StatusCode::INVALID_ARGUMENT, "a shape without values");
    v1::Tensor three_d = Matrix(2, width);
    three_d.add_shape(1);
    with(three_d, StatusCode::INVALID_ARGUMENT, "a 3-D shape");
    v1::Tensor zero_rows = Matrix(1, width);
    zero_rows.set_shape(0, 0);
    with(zero_rows, StatusCode::INVALID_ARGUMENT, "zero rows");
    v1::Tensor negative = Matrix(2, width);
    negative.set_shape(0, -2);
    negative.set_shape(1, -width);
    with(negative, StatusCode::INVALID_ARGUMENT, "negative dimensions");
    v1::Tensor huge = Matrix(2, width);
    huge.set_shape(1, int64_t{1} << 62);
    with(huge, StatusCode::INVALID_ARGUMENT, "dimensions whose product overflows");
    v1::Tensor huge_rows = Matrix(2, width);
    huge_rows.set_shape(0, int64_t{1} << 62);
    with(huge_rows, StatusCode::RESOURCE_EXHAUSTED, "2^62 rows");
    v1::Tensor short_values = Matrix(2, width);
    short_values.mutable_values()->mutable_values()->RemoveLast();
    with(short_values, StatusCode::INVALID_ARGUMENT, "one value fewer than the shape");
    v1::Tensor short_raw = Matrix(2, width, true);
    short_raw.mutable_raw()->pop_back();
    with(short_raw, StatusCode::INVALID_ARGUMENT, "raw bytes not a multiple of 4");
    with(Matrix(2, width + 1), StatusCode::INVALID_ARGUMENT, "the wrong width");
    for (double bad : {nan, inf, -inf}) {
      v1::Tensor t = Matrix(2, width);
      t.mutable_values()->set_values(3, static_cast<float>(bad));
      with(t, StatusCode::INVALID_ARGUMENT, absl::StrCat("a value ", bad));
      v1::Tensor raw = Matrix(2, width, true);
      const float f = static_cast<float>(bad);
      std::memcpy(raw.mutable_raw()->data() + 4, &f, 4);
      with(raw, StatusCode::INVALID_ARGUMENT, absl::StrCat("a raw value ", bad));
    }
    with(Matrix(kMaxRows + 1, width), StatusCode::RESOURCE_EXHAUSTED, "too many rows");
  }
}

TEST_F(BadInputTest, EveryModelReferenceWithHostileNamesAndUnknownTargets) {
  struct Target {
    std::string what;
    v1::ModelRef ref;
    StatusCode code;
  };
  std::vector<Target> targets;
  for (const auto& [what, name] : HostileNames()) {
    targets.push_back({"the name " + what, Ref(name), StatusCode::INVALID_ARGUMENT});
  }
  v1::ModelRef unknown_version = Ref("m"), negative = Ref("m"), unknown_label = Ref("m"),
               bad_label = Ref("m"), long_label = Ref("m");
  unknown_version.set_version(99);
  negative.set_version(-1);
  unknown_label.set_label("ghost");
  bad_label.set_label("../stable");
  long_label.set_label(std::string(10000, 's'));
  targets.push_back({"an unknown model", Ref("ghost"), StatusCode::NOT_FOUND});
  targets.push_back({"an unknown version", unknown_version, StatusCode::NOT_FOUND});
  targets.push_back({"version -1", negative, StatusCode::INVALID_ARGUMENT});
  targets.push_back({"an unknown label", unknown_label, StatusCode::NOT_FOUND});
  targets.push_back({"the label ../stable", bad_label, StatusCode::INVALID_ARGUMENT});
  targets.push_back({"a 10,000-character label", long_label, StatusCode::INVALID_ARGUMENT});
  for (const Target& t : targets) {
    for (const std::string& method : InferenceMethods()) {
      const int64_t width = method == "Decode" ? kDHidden : kDIn;
      Expect(method, InferenceRequest(method, t.ref, Matrix(1, width)), t.code, t.what);
    }
    v1::ExportModelRequest exp;
    *exp.mutable_model() = t.ref;
    Expect("ExportModel", exp.SerializeAsString(), t.code, t.what);
  }
}

TEST_F(BadInputTest, EveryNameFieldWithHostileNames) {
  for (const auto& [what, name] : HostileNames()) {
    const std::string with = "the name " + what;
    v1::GetModelRequest get;
    get.set_name(name);
    Expect("GetModel", get.SerializeAsString(), StatusCode::INVALID_ARGUMENT, with);
    v1::DeleteModelVersionRequest del;
    del.set_name(name);
    del.set_version(1);
    Expect("DeleteModelVersion", del.SerializeAsString(), StatusCode::INVALID_ARGUMENT, with);
    v1::SetModelLabelRequest label;
    label.set_name(name);
    label.set_label("stable");
    label.set_version(1);
    Expect("SetModelLabel", label.SerializeAsString(), StatusCode::INVALID_ARGUMENT, with);
    v1::SetModelLabelRequest bad_label;
    bad_label.set_name("m");
    bad_label.set_label(name);
    bad_label.set_version(1);
    Expect("SetModelLabel", bad_label.SerializeAsString(), StatusCode::INVALID_ARGUMENT,
           "the label " + what);
    v1::TrainRequest train;
    train.set_model_name(name);
    train.mutable_config()->set_d_in(kDIn);
    train.mutable_config()->set_d_hidden(kDHidden);
    *train.mutable_inline_data() = Matrix(8, kDIn);
    Expect("Train", train.SerializeAsString(), StatusCode::INVALID_ARGUMENT, with);
    v1::ImportModelRequest import;
    import.set_name(name);
    import.set_file_name("cfg.json");
    import.set_chunk("{}");
    Expect("ImportModel", import.SerializeAsString(), StatusCode::INVALID_ARGUMENT, with);
    // Job and dataset ids are names too: none of these can be one.
    v1::GetTrainingJobRequest job;
    job.set_job_id(name);
    Expect("GetTrainingJob", job.SerializeAsString(), StatusCode::INVALID_ARGUMENT, with);
    v1::CancelTrainingJobRequest cancel;
    cancel.set_job_id(name);
    Expect("CancelTrainingJob", cancel.SerializeAsString(), StatusCode::INVALID_ARGUMENT, with);
    v1::WatchTrainingJobRequest watch;
    watch.set_job_id(name);
    Expect("WatchTrainingJob", watch.SerializeAsString(), StatusCode::INVALID_ARGUMENT, with);
    v1::DeleteDatasetRequest dataset;
    dataset.set_dataset_id(name);
    Expect("DeleteDataset", dataset.SerializeAsString(), StatusCode::INVALID_ARGUMENT, with);
    v1::TrainRequest from_dataset = train;
    from_dataset.set_model_name("m");
    from_dataset.set_dataset_id(name);
    Expect("Train", from_dataset.SerializeAsString(), StatusCode::INVALID_ARGUMENT,
           "the dataset id " + what);
  }
  // Well-formed but unknown: NOT_FOUND.
  v1::GetModelRequest get;
  get.set_name("ghost");
  Expect("GetModel", get.SerializeAsString(), StatusCode::NOT_FOUND, "an unknown model");
  v1::DeleteModelVersionRequest del;
  del.set_name("m");
  del.set_version(99);
  Expect("DeleteModelVersion", del.SerializeAsString(), StatusCode::NOT_FOUND, "version 99");
  v1::SetModelLabelRequest label;
  label.set_name("m");
  label.set_label("canary");
  label.set_version(99);
  Expect("SetModelLabel", label.SerializeAsString(), StatusCode::NOT_FOUND, "version 99");
  v1::GetTrainingJobRequest job;
  job.set_job_id("job-999999-ffff");
  Expect("GetTrainingJob", job.SerializeAsString(), StatusCode::NOT_FOUND, "an unknown job");
  v1::DeleteDatasetRequest dataset;
  dataset.set_dataset_id("ds-0123456789abcdef");
  Expect("DeleteDataset", dataset.SerializeAsString(), StatusCode::NOT_FOUND,
         "an unknown dataset");
}

TEST_F(BadInputTest, TrainWithBadConfigsAndData) {
  auto train = [](auto edit) {
    v1::TrainRequest r;
    r.set_model_name("t");
    r.mutable_config()->set_d_in(kDIn);
    r.mutable_config()->set_d_hidden(kDHidden);
    *r.mutable_inline_data() = Matrix(8, kDIn);
    edit(r);
    return r.SerializeAsString();
  };
  const auto bad = StatusCode::INVALID_ARGUMENT;
  Expect("Train", train([](v1::TrainRequest& r) { r.clear_config(); }), bad, "no config");
  Expect("Train", train([](v1::TrainRequest& r) { r.mutable_config()->set_d_in(-1); }), bad,
         "d_in -1");
  Expect("Train", train([](v1::TrainRequest& r) {
           r.mutable_config()->set_d_hidden(int64_t{1} << 40);
         }), StatusCode::INVALID_ARGUMENT, "d_hidden 2^40");
  Expect("Train", train([](v1::TrainRequest& r) { r.clear_inline_data(); }), bad, "no data");
  Expect("Train", train([](v1::TrainRequest& r) { *r.mutable_inline_data() = Matrix(8, 3); }),
         bad, "data of the wrong width");
  Expect("Train", train([](v1::TrainRequest& r) {
           r.mutable_inline_data()->mutable_values()->set_values(0, NAN);
         }), bad, "a NaN in the data");
  Expect("Train", train([](v1::TrainRequest& r) {
           r.mutable_options()->set_learning_rate(-1);
         }), bad, "a negative learning rate");
  Expect("Train", train([](v1::TrainRequest& r) {
           r.mutable_options()->set_batch_size(-5);
         }), bad, "a negative batch size");
  Expect("Train", train([](v1::TrainRequest& r) {
           r.mutable_config()->set_activation(static_cast<v1::Activation>(77));
         }), bad, "an unknown activation");
}

TEST_F(BadInputTest, UploadDatasetWithBadFormatsAndWidths) {
  auto upload = [](const std::string& format, int64_t columns, const std::string& chunk) {
    v1::UploadDatasetRequest r;
    r.set_format(format);
    r.set_columns(columns);
    r.set_chunk(chunk);
    return r.SerializeAsString();
  };
  const auto bad = StatusCode::INVALID_ARGUMENT;
  const std::string one_float(4, '\0');
  Expect("UploadDataset", upload("f32", 1, one_float), StatusCode::OK, "one f32 value");
  // A width whose row size overflows 64 bits (it once divided by zero).
  Expect("UploadDataset", upload("f32", int64_t{1} << 62, one_float), bad, "columns 2^62");
  Expect("UploadDataset", upload("f32", std::numeric_limits<int64_t>::max(), one_float), bad,
         "columns 2^63 - 1");
  Expect("UploadDataset", upload("f32", -1, one_float), bad, "columns -1");
  Expect("UploadDataset", upload("f32", 2, one_float), bad, "a row wider than the data");
  Expect("UploadDataset", upload("f32", 3, std::string(8, '\0')), bad, "a partial row");
  Expect("UploadDataset", upload("csv", 0, "1,2\n3\n"), bad, "a ragged CSV");
  Expect("UploadDataset", upload("csv", 0, "a,b\n"), bad, "a CSV header alone");
  Expect("UploadDataset", upload("npy", 0, "\x93NUMPY\x01"), bad, "a truncated .npy");
  Expect("UploadDataset", upload("parquet", 0, "x"), bad, "an unknown format");
}

}  // namespace
}  // namespace sae::server
