#include "core/model_io.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/safetensors.h"
#include "core/testing/random_matrix.h"
#include "core/testing/test_dir.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sae {
namespace {

class ModelIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("model_io");
    ASSERT_TRUE(MakeDirectory(dir_).ok());
  }
  void TearDown() override { RemoveTree(dir_).IgnoreError(); }
  std::string dir_;
};

std::shared_ptr<const Model> RandomModel(ModelConfig c, uint64_t seed) {
  ModelWeights w = InitialWeights(c, seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n;
  for (Eigen::Index i = 0; i < w.b_enc.size(); ++i) w.b_enc[i] = n(rng);
  for (Eigen::Index i = 0; i < w.b_dec.size(); ++i) w.b_dec[i] = n(rng);
  if (c.activation == Activation::kJumpRelu) {
    w.threshold = Vector::Constant(c.d_hidden, 0.1f);
  }
  return *Model::Create(c, std::move(w));
}

RowMatrix Inputs(int64_t rows, int64_t cols) { return testing::RandomNormal(rows, cols, 99); }

void ExpectSameWeights(const Model& a, const Model& b) {
  EXPECT_EQ(a.weights().w_enc, b.weights().w_enc);
  EXPECT_EQ(a.weights().w_dec, b.weights().w_dec);
  EXPECT_EQ(a.weights().b_enc, b.weights().b_enc);
  EXPECT_EQ(a.weights().b_dec, b.weights().b_dec);
  EXPECT_EQ(a.weights().threshold, b.weights().threshold);
}

TEST_F(ModelIoTest, RoundTripIsBitwiseExactForEveryActivation) {
  for (Activation act : {Activation::kRelu, Activation::kTopK, Activation::kSigmoid,
                         Activation::kJumpRelu}) {
    ModelConfig c = DefaultConfig(12, 30, act);
    if (act == Activation::kTopK) c.k = 5;
    c.l1_coefficient = act == Activation::kSigmoid || act == Activation::kJumpRelu ? 0 : 0.25f;
    c.clip_output = true;
    auto model = RandomModel(c, 3);
    const std::string dir = absl::StrCat(dir_, "/", ActivationName(act));
    ASSERT_TRUE(MakeDirectory(dir).ok());
    ModelMetadata meta;
    meta.data_rows = 1000;
    meta.data_cols = 12;
    meta.training["epochs"] = "10";
    meta.metrics["fvu"] = 0.125;
    ASSERT_TRUE(SaveModelFolder(*model, meta, dir).ok());
    absl::StatusOr<LoadedModel> back = LoadModelFolder(dir);
    ASSERT_TRUE(back.ok()) << back.status();
    ExpectSameWeights(*model, *back->model);
    EXPECT_EQ(back->model->config().activation, act);
    EXPECT_EQ(back->model->config().k, c.k);
    EXPECT_EQ(back->model->config().l1_coefficient, c.l1_coefficient);
    EXPECT_TRUE(back->model->config().clip_output);
    EXPECT_EQ(back->metadata.data_rows, 1000);
    EXPECT_EQ(back->metadata.training.at("epochs"), "10");
    EXPECT_EQ(back->metadata.metrics.at("fvu"), 0.125);
    EXPECT_FALSE(back->metadata.created_at.empty());
  }
}

TEST_F(ModelIoTest, CfgJsonIsSaeLensShaped) {
  ModelConfig c = DefaultConfig(8, 16, Activation::kTopK);
  c.k = 4;
  ASSERT_TRUE(SaveModelFolder(*RandomModel(c, 1), {}, dir_).ok());
  std::ifstream f(dir_ + "/cfg.json");
  nlohmann::json cfg = nlohmann::json::parse(f);
  EXPECT_EQ(cfg["architecture"], "topk");
  EXPECT_EQ(cfg["d_in"], 8);
  EXPECT_EQ(cfg["d_sae"], 16);
  EXPECT_EQ(cfg["k"], 4);
  EXPECT_EQ(cfg["dtype"], "float32");
  EXPECT_EQ(cfg["apply_b_dec_to_input"], true);
  EXPECT_EQ(cfg["normalize_activations"], "none");
  EXPECT_TRUE(cfg["metadata"].contains("sae_lens_version"));
}

TEST_F(ModelIoTest, InputScaleIsFoldedIntoTheWeights) {
  ModelConfig c = DefaultConfig(10, 20, Activation::kRelu);
  c.input_scale = 0.37f;
  auto model = RandomModel(c, 5);
  ASSERT_TRUE(SaveModelFolder(*model, {}, dir_).ok());
  absl::StatusOr<LoadedModel> back = LoadModelFolder(dir_);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->model->config().input_scale, 1.0f);
  const RowMatrix x = Inputs(50, 10);
  const RowMatrix want = *model->Reconstruct(x);
  const RowMatrix got = *back->model->Reconstruct(x);
  EXPECT_LT((want - got).cwiseAbs().maxCoeff(), 1e-4f * (1 + want.cwiseAbs().maxCoeff()));
}

void FlipByte(const std::string& path, long offset_from_end_or_start, bool from_end) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(0, std::ios::end);
  const long size = f.tellg();
  const long pos = from_end ? size - offset_from_end_or_start : offset_from_end_or_start;
  f.seekg(pos);
  char c;
  f.read(&c, 1);
  c ^= 0x10;
  f.seekp(pos);
  f.write(&c, 1);
}

TEST_F(ModelIoTest, DamagedFilesAreDataLoss) {
  ModelConfig c = DefaultConfig(16, 32, Activation::kRelu);
  auto model = RandomModel(c, 7);
  struct Damage {
    const char* name;
    std::function<void(const std::string&)> apply;
  };
  const std::string w = "/sae_weights.safetensors";
  const std::vector<Damage> damages = {
      {"flip in data", [&](const std::string& d) { FlipByte(d + w, 10, true); }},
      {"flip in header", [&](const std::string& d) { FlipByte(d + w, 20, false); }},
      {"flip in length", [&](const std::string& d) { FlipByte(d + w, 2, false); }},
      {"truncated", [&](const std::string& d) { ::truncate((d + w).c_str(), 1000); }},
      {"empty weights", [&](const std::string& d) { ::truncate((d + w).c_str(), 0); }},
      {"missing weights", [&](const std::string& d) { std::remove((d + w).c_str()); }},
      {"cfg edited", [&](const std::string& d) { FlipByte(d + "/cfg.json", 5, false); }},
      {"missing metadata", [&](const std::string& d) { std::remove((d + "/sae_service.json").c_str()); }},
      {"settings edited", [&](const std::string& d) {
         // A valid file whose model settings changed (as a flipped bit in a
         // digit would change them): the model would compute something else.
         std::ifstream in(d + "/sae_service.json");
         nlohmann::json j = nlohmann::json::parse(in);
         j["model"]["l1_coefficient"] = 0.5;
         std::ofstream(d + "/sae_service.json", std::ios::trunc) << j.dump(2);
       }},
      {"self checksum removed", [&](const std::string& d) {
         std::ifstream in(d + "/sae_service.json");
         nlohmann::json j = nlohmann::json::parse(in);
         j.erase("self_checksum");
         std::ofstream(d + "/sae_service.json", std::ios::trunc) << j.dump(2);
       }},
      {"checksum edited", [&](const std::string& d) {
         std::ifstream in(d + "/sae_service.json");
         nlohmann::json j = nlohmann::json::parse(in);
         j["checksums"]["sae_weights.safetensors"] = "xxh3-128:00000000000000000000000000000000";
         std::ofstream(d + "/sae_service.json", std::ios::trunc) << j.dump();
       }},
  };
  for (const Damage& damage : damages) {
    const std::string dir = absl::StrCat(dir_, "/", &damage - damages.data());
    ASSERT_TRUE(MakeDirectory(dir).ok());
    ASSERT_TRUE(SaveModelFolder(*model, {}, dir).ok());
    damage.apply(dir);
    absl::StatusOr<LoadedModel> back = LoadModelFolder(dir);
    EXPECT_EQ(back.status().code(), absl::StatusCode::kDataLoss) << damage.name << ": " << back.status();
  }
}

// Writes a SAELens-style folder by hand, as SAELens itself would.
void WriteSaeLensFolder(const std::string& dir, const nlohmann::json& cfg,
                        const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>,
                                                     std::string>>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [name, dtype, shape, bytes] : tensors) {
    header[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {data.size(), data.size() + bytes.size()}}};
    data += bytes;
  }
  std::string text = header.dump();
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  std::ofstream(dir + "/sae_weights.safetensors", std::ios::binary) << file << text << data;
  std::ofstream(dir + "/cfg.json") << cfg.dump();
}

std::string F32(const float* p, size_t n) { return std::string(reinterpret_cast<const char*>(p), n * 4); }
std::string BF16(const float* p, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, p + i, 4);
    const uint16_t top = static_cast<uint16_t>(bits >> 16);
    out.append(reinterpret_cast<const char*>(&top), 2);
  }
  return out;
}

// Folders written before sae_service.json checksummed itself (format 1)
// still load; a format-2 file carries its checksum through a parse and a
// re-dump of any indentation.
TEST_F(ModelIoTest, MetadataOfTheFirstFormatStillLoads) {
  ModelConfig c = DefaultConfig(16, 32, Activation::kTopK);
  c.k = 4;
  auto model = RandomModel(c, 9);
  ModelMetadata meta;
  meta.metrics["fvu"] = 0.123456789012345;
  meta.description = "caf\xc3\xa9 \"quoted\"";
  ASSERT_TRUE(SaveModelFolder(*model, meta, dir_).ok());
  {
    std::ifstream in(dir_ + "/sae_service.json");
    nlohmann::json j = nlohmann::json::parse(in);
    std::ofstream(dir_ + "/sae_service.json", std::ios::trunc) << j.dump(4);
  }
  ASSERT_TRUE(LoadModelFolder(dir_).ok());
  {
    std::ifstream in(dir_ + "/sae_service.json");
    nlohmann::json j = nlohmann::json::parse(in);
    j.erase("self_checksum");
    j["format_version"] = 1;
    std::ofstream(dir_ + "/sae_service.json", std::ios::trunc) << j.dump(2);
  }
  absl::StatusOr<LoadedModel> old = LoadModelFolder(dir_);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->model->config().k, 4);
  EXPECT_EQ(old->metadata.description, meta.description);
}

TEST_F(ModelIoTest, ImportsSaeLensTopKWithDecoderNormRescaling) {
  // d_in 2, d_sae 3. Values exact in bfloat16.
  const float w_enc[6] = {1, 0, 0.5, 0, 1, -1};  // [2, 3]
  const float w_dec[6] = {2, 0, 0, 4, 1, 1};     // [3, 2], row norms 2, 4, sqrt(2)
  const float b_enc[3] = {0, 0, 0};
  const float b_dec[2] = {0.5, -0.5};
  nlohmann::json cfg = {{"d_in", 2}, {"d_sae", 3}, {"dtype", "torch.bfloat16"},
                        {"architecture", "topk"}, {"k", 1}, {"rescale_acts_by_decoder_norm", true},
                        {"apply_b_dec_to_input", true}, {"normalize_activations", "none"},
                        {"metadata", {{"sae_lens_version", "6.5.0"}, {"model_name", "gpt2"}}}};
  WriteSaeLensFolder(dir_, cfg, {{"W_enc", "BF16", {2, 3}, BF16(w_enc, 6)},
                                 {"W_dec", "BF16", {3, 2}, BF16(w_dec, 6)},
                                 {"b_enc", "BF16", {3}, BF16(b_enc, 3)},
                                 {"b_dec", "BF16", {2}, BF16(b_dec, 2)}});
  absl::StatusOr<LoadedModel> m = ImportSaeLensFolder(dir_);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->model->config().activation, Activation::kTopK);
  EXPECT_EQ(m->model->config().k, 1);
  EXPECT_EQ(m->metadata.training.at("saelens.model_name"), "gpt2");
  // SAELens by hand for x = [1.5, 0.5]: x' = x - b_dec = [1, 1];
  // pre = x' W_enc = [1, 1, -0.5]; scaled by norms [2, 4, 1.414] = [2, 4, -0.7];
  // top-1 is unit 1 (4), relu 4, divided by its norm 4 -> 1; decode 1 * [0, 4] + b_dec.
  RowMatrix x(1, 2);
  x << 1.5f, 0.5f;
  const RowMatrix out = *m->model->Reconstruct(x);
  EXPECT_NEAR(out(0, 0), 0.5f, 1e-6);
  EXPECT_NEAR(out(0, 1), 3.5f, 1e-6);
}

TEST_F(ModelIoTest, ImportsOldStandardConfigWithoutBDecSubtraction) {
  const float w_enc[4] = {1, 2, 3, 4};
  const float w_dec[4] = {1, 0, 0, 1};
  const float b_enc[2] = {0.1f, -0.2f};
  const float b_dec[2] = {1, 1};
  nlohmann::json cfg = {{"d_in", 2}, {"d_sae", 2}, {"dtype", "float32"}, {"activation_fn_str", "relu"},
                        {"apply_b_dec_to_input", false}, {"normalize_activations", false},
                        {"hook_name", "blocks.0.hook_resid_pre"}};
  WriteSaeLensFolder(dir_, cfg, {{"W_enc", "F32", {2, 2}, F32(w_enc, 4)},
                                 {"W_dec", "F32", {2, 2}, F32(w_dec, 4)},
                                 {"b_enc", "F32", {2}, F32(b_enc, 2)},
                                 {"b_dec", "F32", {2}, F32(b_dec, 2)}});
  absl::StatusOr<LoadedModel> m = ImportSaeLensFolder(dir_);
  ASSERT_TRUE(m.ok()) << m.status();
  // Without b_dec subtraction: pre = x W_enc + b_enc. x = [1, 1] -> [4.1, 5.8].
  RowMatrix x(1, 2);
  x << 1, 1;
  const RowMatrix codes = *m->model->Encode(x);
  EXPECT_NEAR(codes(0, 0), 4.1f, 1e-5);
  EXPECT_NEAR(codes(0, 1), 5.8f, 1e-5);
}

TEST_F(ModelIoTest, ImportsJumpReluWithThresholdInFloat16) {
  const uint16_t one = 0x3c00, half = 0x3800, zero = 0, two = 0x4000;
  auto h = [](std::initializer_list<uint16_t> v) {
    std::string s;
    for (uint16_t x : v) s.append(reinterpret_cast<const char*>(&x), 2);
    return s;
  };
  nlohmann::json cfg = {{"d_in", 2}, {"d_sae", 2}, {"dtype", "float16"}, {"architecture", "jumprelu"},
                        {"apply_b_dec_to_input", false}};
  WriteSaeLensFolder(dir_, cfg, {{"W_enc", "F16", {2, 2}, h({one, zero, zero, one})},
                                 {"W_dec", "F16", {2, 2}, h({one, zero, zero, one})},
                                 {"b_enc", "F16", {2}, h({zero, zero})},
                                 {"b_dec", "F16", {2}, h({zero, zero})},
                                 {"threshold", "F16", {2}, h({half, two})}});
  absl::StatusOr<LoadedModel> m = ImportSaeLensFolder(dir_);
  ASSERT_TRUE(m.ok()) << m.status();
  RowMatrix x(1, 2);
  x << 1, 1;  // unit 0 passes its threshold 0.5, unit 1 does not reach 2
  const RowMatrix codes = *m->model->Encode(x);
  EXPECT_EQ(codes(0, 0), 1.0f);
  EXPECT_EQ(codes(0, 1), 0.0f);
}

TEST_F(ModelIoTest, ImportRejectsUnsupportedSettings) {
  const float z[4] = {0, 0, 0, 0};
  auto write = [&](nlohmann::json cfg) {
    WriteSaeLensFolder(dir_, cfg, {{"W_enc", "F32", {2, 2}, F32(z, 4)}, {"W_dec", "F32", {2, 2}, F32(z, 4)},
                                   {"b_enc", "F32", {2}, F32(z, 2)}, {"b_dec", "F32", {2}, F32(z, 2)}});
  };
  write({{"d_in", 2}, {"d_sae", 2}, {"architecture", "gated"}});
  absl::StatusOr<LoadedModel> m = ImportSaeLensFolder(dir_);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("gated"), absl::string_view::npos);
  write({{"d_in", 2}, {"d_sae", 2}, {"normalize_activations", "layer_norm"}});
  EXPECT_EQ(ImportSaeLensFolder(dir_).status().code(), absl::StatusCode::kInvalidArgument);
  write({{"d_in", 3}, {"d_sae", 2}});  // shapes disagree with the tensors
  EXPECT_EQ(ImportSaeLensFolder(dir_).status().code(), absl::StatusCode::kDataLoss);
  write({{"d_in", 2}, {"d_sae", 2}, {"architecture", "topk"}});  // no k
  EXPECT_EQ(ImportSaeLensFolder(dir_).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ImportSaeLensFolder(dir_ + "/nope").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelIoTest, ImportOfAnExportedModelGivesTheSameModel) {
  ModelConfig c = DefaultConfig(6, 9, Activation::kTopK);
  c.k = 3;
  auto model = RandomModel(c, 11);
  ASSERT_TRUE(SaveModelFolder(*model, {}, dir_).ok());
  absl::StatusOr<LoadedModel> m = ImportSaeLensFolder(dir_);
  ASSERT_TRUE(m.ok()) << m.status();
  ExpectSameWeights(*model, *m->model);
}

}  // namespace
}  // namespace sae
