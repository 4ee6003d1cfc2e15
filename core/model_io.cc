#include "core/model_io.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/parallel.h"
#include "core/safetensors.h"
#include "nlohmann/json.hpp"
#include "xxhash.h"

namespace sae {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxJsonFileBytes = 16u << 20;
// 2: sae_service.json carries a checksum of its own content (kSelfChecksum).
constexpr int kMetadataFormatVersion = 2;
// The XXH3-128 of the metadata object's compact dump without this key (keys
// sorted, numbers in their shortest round-trip form: a parsed copy dumps to
// the same text).
constexpr char kSelfChecksum[] = "self_checksum";
// Written into cfg.json's metadata so that SAELens takes the v6 code path.
constexpr char kSaeLensFormatVersion[] = "6.0.0";

std::string HexDigest(XXH128_hash_t h) {
  return absl::StrFormat("xxh3-128:%016x%016x", h.high64, h.low64);
}

std::string NowRfc3339() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// One tensor read from a safetensors file, converted to float32.
struct LoadedTensor {
  std::vector<int64_t> shape;
  RowMatrix matrix;  // rank 2
  Vector vector;     // rank 1
};

struct WeightsFile {
  std::map<std::string, LoadedTensor> tensors;
  std::string checksum;
};

absl::Status WithPath(const absl::Status& s, const std::string& path) {
  return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
}

// Reads every tensor straight into float32 matrices (one pread per float32
// tensor, no intermediate copy) while hashing the file's bytes in order.
absl::StatusOr<WeightsFile> ReadWeightsFile(const std::string& path) {
  absl::StatusOr<FileReader> file = FileReader::Open(path);
  if (!file.ok()) {
    // In a version's folder, a missing weights file is damage.
    if (absl::IsNotFound(file.status())) return absl::DataLossError(file.status().message());
    return file.status();
  }
  const uint64_t file_size = file->size();

  std::string prefix(std::min<uint64_t>(file_size, 8), '\0');
  if (absl::Status s = file->ReadAt(0, prefix.size(), prefix.data()); !s.ok()) return s;
  absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(prefix, file_size);
  if (absl::IsOutOfRange(header.status())) {
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) {
      n |= static_cast<uint64_t>(static_cast<unsigned char>(prefix[i])) << (8 * i);
    }
    prefix.resize(8 + n);  // bounded: the parser checked n against the limits
    if (absl::Status s = file->ReadAt(8, n, prefix.data() + 8); !s.ok()) return s;
    header = ParseSafetensorsHeader(prefix, file_size);
  }
  if (!header.ok()) return WithPath(header.status(), path);

  XXH3_state_t* state = XXH3_createState();
  struct StateFree {
    XXH3_state_t* s;
    ~StateFree() { XXH3_freeState(s); }
  } state_free{state};
  XXH3_128bits_reset(state);
  XXH3_128bits_update(state, prefix.data(), prefix.size());

  WeightsFile out;
  std::string scratch;
  for (const TensorInfo& t : header->tensors) {
    if (t.shape.size() != 1 && t.shape.size() != 2) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", t.name, "' has rank ",
                                              t.shape.size(), "; expected 1 or 2"));
    }
    LoadedTensor lt;
    lt.shape = t.shape;
    float* dst;
    if (t.shape.size() == 2) {
      lt.matrix.resize(t.shape[0], t.shape[1]);
      dst = lt.matrix.data();
    } else {
      lt.vector.resize(t.shape[0]);
      dst = lt.vector.data();
    }
    const uint64_t bytes = t.end - t.begin;
    const uint64_t offset = header->data_start + t.begin;
    if (t.dtype == TensorDType::kF32) {
      // Read in pieces split between the threads (the copy from the page
      // cache and the first touch of the matrix's pages are most of a
      // load), then hashed in file order.
      char* raw = reinterpret_cast<char*>(dst);
      constexpr uint64_t kPiece = 1 << 20;
      const int64_t pieces = static_cast<int64_t>((bytes + kPiece - 1) / kPiece);
      std::vector<absl::Status> read(static_cast<size_t>(Parallelism()));
      ParallelFor(pieces, 4, [&](int chunk, int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1 && read[chunk].ok(); ++p) {
          const uint64_t done = static_cast<uint64_t>(p) * kPiece;
          read[chunk] = file->ReadAt(offset + done, std::min(kPiece, bytes - done), raw + done);
        }
      });
      for (const absl::Status& s : read) {
        if (!s.ok()) return s;
      }
      XXH3_128bits_update(state, raw, bytes);
    } else {
      scratch.resize(bytes);
      if (absl::Status s = file->ReadAt(offset, bytes, scratch.data()); !s.ok()) return s;
      XXH3_128bits_update(state, scratch.data(), bytes);
      ConvertToFloat32(t.dtype, scratch.data(), t.element_count(), dst);
    }
    out.tensors.emplace(t.name, std::move(lt));
  }
  out.checksum = HexDigest(XXH3_128bits_digest(state));
  return out;
}

absl::StatusOr<Json> ReadJsonFile(const std::string& path, std::string* checksum) {
  absl::StatusOr<std::string> text = ReadSmallFile(path, kMaxJsonFileBytes);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) return absl::DataLossError(text.status().message());
    return text.status();
  }
  if (checksum != nullptr) *checksum = ChecksumOf(*text);
  Json j = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": not a JSON object"));
  }
  return j;
}

// Typed accessors that turn a wrong type into INVALID_ARGUMENT naming the key.
absl::StatusOr<int64_t> GetPositiveInt(const Json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": '", key, "' must be a positive integer"));
  }
  return it->get<int64_t>();
}

std::string GetString(const Json& j, const char* key, const std::string& fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}

bool GetBool(const Json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

double GetNumber(const Json& j, const char* key, double fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

// What cfg.json says about the architecture, after SAELens's own defaulting
// rules (v6, and v3-v5 via activation_fn_str / activation_fn_kwargs).
struct SaeLensConfig {
  int64_t d_in = 0, d_sae = 0;
  Activation activation = Activation::kRelu;
  int64_t k = 0;
  bool apply_b_dec_to_input = true;
  bool rescale_acts_by_decoder_norm = false;
};

absl::StatusOr<SaeLensConfig> ParseSaeLensConfig(const Json& cfg, const std::string& where) {
  SaeLensConfig c;
  absl::StatusOr<int64_t> d_in = GetPositiveInt(cfg, "d_in", where);
  if (!d_in.ok()) return d_in.status();
  absl::StatusOr<int64_t> d_sae = GetPositiveInt(cfg, "d_sae", where);
  if (!d_sae.ok()) return d_sae.status();
  c.d_in = *d_in;
  c.d_sae = *d_sae;
  std::string activation_fn = GetString(cfg, "activation_fn", GetString(cfg, "activation_fn_str", "relu"));
  std::string architecture = GetString(cfg, "architecture", activation_fn == "topk" ? "topk" : "standard");
  if (architecture == "standard" && activation_fn == "topk") architecture = "topk";
  if (architecture == "standard") {
    c.activation = Activation::kRelu;
  } else if (architecture == "topk") {
    c.activation = Activation::kTopK;
    int64_t k = 0;
    if (auto it = cfg.find("k"); it != cfg.end() && it->is_number_integer()) {
      k = it->get<int64_t>();
    } else if (auto kw = cfg.find("activation_fn_kwargs"); kw != cfg.end() && kw->is_object()) {
      if (auto kk = kw->find("k"); kk != kw->end() && kk->is_number_integer()) k = kk->get<int64_t>();
    }
    if (k < 1) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": topk architecture without a positive 'k'"));
    }
    c.k = k;
    c.rescale_acts_by_decoder_norm = GetBool(cfg, "rescale_acts_by_decoder_norm", false);
  } else if (architecture == "jumprelu") {
    c.activation = Activation::kJumpRelu;
  } else if (architecture == "sigmoid_kl") {
    c.activation = Activation::kSigmoid;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": unsupported architecture '", architecture,
        "'; supported: standard, topk, jumprelu (and this service's sigmoid_kl)"));
  }
  c.apply_b_dec_to_input = GetBool(cfg, "apply_b_dec_to_input", true);
  if (auto it = cfg.find("normalize_activations"); it != cfg.end()) {
    const bool ok = it->is_null() || (it->is_boolean() && !it->get<bool>()) ||
                    (it->is_string() && (it->get<std::string>() == "none" ||
                                         it->get<std::string>() == "expected_average_only_in"));
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": normalize_activations = ", it->dump(),
          " is not supported; expected \"none\" or \"expected_average_only_in\""));
    }
  }
  if (auto it = cfg.find("reshape_activations"); it != cfg.end() && it->is_string() &&
                                                  it->get<std::string>() != "none") {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": reshape_activations = \"", it->get<std::string>(), "\" is not supported"));
  }
  return c;
}

absl::StatusOr<RowMatrix> TakeMatrix(WeightsFile& w, const char* name, int64_t rows,
                                     int64_t cols, const std::string& where) {
  auto it = w.tensors.find(name);
  if (it == w.tensors.end()) {
    return absl::DataLossError(absl::StrCat(where, ": missing tensor '", name, "'"));
  }
  if (it->second.shape != std::vector<int64_t>{rows, cols}) {
    return absl::DataLossError(absl::StrCat(where, ": tensor '", name, "' has the wrong shape; expected [",
                                            rows, ", ", cols, "]"));
  }
  RowMatrix m = std::move(it->second.matrix);
  w.tensors.erase(it);
  return m;
}

absl::StatusOr<Vector> TakeVector(WeightsFile& w, const char* name, int64_t n,
                                  const std::string& where) {
  auto it = w.tensors.find(name);
  if (it == w.tensors.end()) {
    return absl::DataLossError(absl::StrCat(where, ": missing tensor '", name, "'"));
  }
  if (it->second.shape != std::vector<int64_t>{n}) {
    return absl::DataLossError(
        absl::StrCat(where, ": tensor '", name, "' has the wrong shape; expected [", n, "]"));
  }
  Vector v = std::move(it->second.vector);
  w.tensors.erase(it);
  return v;
}

// Pulls W_enc, W_dec, b_enc, b_dec (+ threshold) out of the file.
absl::StatusOr<ModelWeights> TakeWeights(WeightsFile& w, const SaeLensConfig& c,
                                         const std::string& where) {
  ModelWeights out;
  absl::StatusOr<RowMatrix> w_enc = TakeMatrix(w, "W_enc", c.d_in, c.d_sae, where);
  if (!w_enc.ok()) return w_enc.status();
  absl::StatusOr<RowMatrix> w_dec = TakeMatrix(w, "W_dec", c.d_sae, c.d_in, where);
  if (!w_dec.ok()) return w_dec.status();
  absl::StatusOr<Vector> b_enc = TakeVector(w, "b_enc", c.d_sae, where);
  if (!b_enc.ok()) return b_enc.status();
  absl::StatusOr<Vector> b_dec = TakeVector(w, "b_dec", c.d_in, where);
  if (!b_dec.ok()) return b_dec.status();
  out.w_enc = std::move(*w_enc);
  out.w_dec = std::move(*w_dec);
  out.b_enc = std::move(*b_enc);
  out.b_dec = std::move(*b_dec);
  if (c.activation == Activation::kJumpRelu) {
    absl::StatusOr<Vector> t = TakeVector(w, "threshold", c.d_sae, where);
    if (!t.ok()) return t.status();
    out.threshold = std::move(*t);
  }
  return out;
}

Json ConfigToJson(const ModelConfig& c) {
  return {{"activation", std::string(ActivationName(c.activation))},
          {"k", c.k},
          {"l1_coefficient", c.l1_coefficient},
          {"kl_rho", c.kl_rho},
          {"kl_beta", c.kl_beta},
          {"weight_decay", c.weight_decay},
          {"tied_init", c.tied_init},
          {"unit_norm_decoder", c.unit_norm_decoder},
          {"init_b_dec_to_mean", c.init_b_dec_to_mean},
          {"clip_output", c.clip_output},
          {"clip_min", c.clip_min},
          {"clip_max", c.clip_max}};
}

void ApplyServiceConfig(const Json& j, ModelConfig* c) {
  c->l1_coefficient = static_cast<float>(GetNumber(j, "l1_coefficient", c->l1_coefficient));
  c->kl_rho = static_cast<float>(GetNumber(j, "kl_rho", c->kl_rho));
  c->kl_beta = static_cast<float>(GetNumber(j, "kl_beta", c->kl_beta));
  c->weight_decay = static_cast<float>(GetNumber(j, "weight_decay", c->weight_decay));
  c->tied_init = GetBool(j, "tied_init", c->tied_init);
  c->unit_norm_decoder = GetBool(j, "unit_norm_decoder", c->unit_norm_decoder);
  c->init_b_dec_to_mean = GetBool(j, "init_b_dec_to_mean", c->init_b_dec_to_mean);
  c->clip_output = GetBool(j, "clip_output", c->clip_output);
  c->clip_min = static_cast<float>(GetNumber(j, "clip_min", c->clip_min));
  c->clip_max = static_cast<float>(GetNumber(j, "clip_max", c->clip_max));
}

ModelConfig BaseConfig(const SaeLensConfig& s) {
  ModelConfig c = DefaultConfig(s.d_in, s.d_sae, s.activation);
  c.k = s.activation == Activation::kTopK ? s.k : 0;
  if (s.activation == Activation::kSigmoid) c.kl_beta = 0;
  return c;
}

ModelMetadata MetadataFromJson(const Json& meta) {
  ModelMetadata m;
  m.source = GetString(meta, "source", "trained");
  m.created_at = GetString(meta, "created_at", "");
  m.description = GetString(meta, "description", "");
  if (auto it = meta.find("data_shape"); it != meta.end() && it->is_array() && it->size() == 2 &&
                                         (*it)[0].is_number_integer() && (*it)[1].is_number_integer()) {
    m.data_rows = (*it)[0].get<int64_t>();
    m.data_cols = (*it)[1].get<int64_t>();
  }
  if (auto it = meta.find("training"); it != meta.end() && it->is_object()) {
    for (auto t = it->begin(); t != it->end(); ++t) {
      if (t.value().is_string()) m.training[t.key()] = t.value().get<std::string>();
    }
  }
  if (auto it = meta.find("metrics"); it != meta.end() && it->is_object()) {
    for (auto t = it->begin(); t != it->end(); ++t) {
      if (t.value().is_number()) m.metrics[t.key()] = t.value().get<double>();
    }
  }
  return m;
}

}  // namespace

absl::StatusOr<ModelMetadata> ReadModelMetadata(const std::string& dir) {
  absl::StatusOr<Json> meta = ReadJsonFile(dir + "/" + kMetadataFileName, nullptr);
  if (!meta.ok()) return meta.status();
  return MetadataFromJson(*meta);
}

absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& dir) {
  const std::string cfg_path = dir + "/" + kCfgFileName;
  absl::StatusOr<Json> cfg = ReadJsonFile(cfg_path, nullptr);
  if (!cfg.ok()) return cfg.status();
  absl::StatusOr<SaeLensConfig> s = ParseSaeLensConfig(*cfg, cfg_path);
  if (!s.ok()) return absl::DataLossError(s.status().message());
  ModelConfig config = BaseConfig(*s);
  absl::StatusOr<Json> meta = ReadJsonFile(dir + "/" + kMetadataFileName, nullptr);
  if (meta.ok() && meta->contains("model") && (*meta)["model"].is_object()) {
    ApplyServiceConfig((*meta)["model"], &config);
  }
  return config;
}

std::string ChecksumOf(absl::string_view bytes) {
  return HexDigest(XXH3_128bits(bytes.data(), bytes.size()));
}

absl::Status SaveModelFolder(const Model& model, const ModelMetadata& metadata,
                             const std::string& dir) {
  const ModelConfig& config = model.config();
  const ModelWeights* w = &model.weights();
  ModelWeights folded;
  if (config.input_scale != 1.0f) {
    // pre = W_enc^T (s x - b_dec) + b_enc = (s W_enc)^T (x - b_dec / s) + b_enc
    // x_hat = (W_dec^T f + b_dec) / s = (W_dec / s)^T f + b_dec / s
    const float s = config.input_scale;
    folded = *w;
    folded.w_enc *= s;
    folded.w_dec /= s;
    folded.b_dec /= s;
    w = &folded;
  }
  const int64_t d_in = config.d_in, d_h = config.d_hidden;
  std::vector<TensorToWrite> tensors = {
      {"W_enc", {d_in, d_h}, w->w_enc.data()},
      {"W_dec", {d_h, d_in}, w->w_dec.data()},
      {"b_enc", {d_h}, w->b_enc.data()},
      {"b_dec", {d_in}, w->b_dec.data()},
  };
  if (config.activation == Activation::kJumpRelu) {
    tensors.push_back({"threshold", {d_h}, w->threshold.data()});
  }
  const std::string header = EncodeSafetensorsHeader(tensors, {{"format", "pt"}});
  std::vector<absl::string_view> pieces = {header};
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  XXH3_128bits_update(state, header.data(), header.size());
  for (const TensorToWrite& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    pieces.emplace_back(reinterpret_cast<const char*>(t.data), static_cast<size_t>(n) * 4);
    XXH3_128bits_update(state, pieces.back().data(), pieces.back().size());
  }
  const std::string weights_checksum = HexDigest(XXH3_128bits_digest(state));
  XXH3_freeState(state);

  Json cfg = {{"d_in", d_in},
              {"d_sae", d_h},
              {"dtype", "float32"},
              {"device", "cpu"},
              {"apply_b_dec_to_input", true},
              {"normalize_activations", "none"},
              {"reshape_activations", "none"},
              {"metadata",
               {{"sae_lens_version", kSaeLensFormatVersion},
                {"sae_lens_training_version", kSaeLensFormatVersion},
                {"model_name", "sparse-autoencoder-service"},
                {"hook_name", "input"}}}};
  switch (config.activation) {
    case Activation::kRelu:
      cfg["architecture"] = "standard";
      break;
    case Activation::kTopK:
      cfg["architecture"] = "topk";
      cfg["k"] = config.k;
      cfg["rescale_acts_by_decoder_norm"] = false;
      break;
    case Activation::kJumpRelu:
      cfg["architecture"] = "jumprelu";
      break;
    case Activation::kSigmoid:
      cfg["architecture"] = "sigmoid_kl";
      break;
  }
  const std::string cfg_text = cfg.dump(2) + "\n";

  Json meta = {{"format_version", kMetadataFormatVersion},
               {"source", metadata.source},
               {"created_at", metadata.created_at.empty() ? NowRfc3339() : metadata.created_at},
               {"description", metadata.description},
               {"data_shape", {metadata.data_rows, metadata.data_cols}},
               {"model", ConfigToJson(config)},
               {"input_scale_folded", config.input_scale},
               {"training", metadata.training},
               {"metrics", Json::object()},
               {"checksums", {{kCfgFileName, ChecksumOf(cfg_text)},
                              {kWeightsFileName, weights_checksum}}}};
  for (const auto& [name, value] : metadata.metrics) {
    if (std::isfinite(value)) meta["metrics"][name] = value;  // JSON has no inf/nan
  }
  meta[kSelfChecksum] = ChecksumOf(meta.dump());
  const std::string meta_text = meta.dump(2) + "\n";

  if (absl::Status s = WriteFileDurably(dir + "/" + kWeightsFileName, pieces); !s.ok()) return s;
  if (absl::Status s = WriteFileDurably(dir + "/" + kCfgFileName, {cfg_text}); !s.ok()) return s;
  return WriteFileDurably(dir + "/" + kMetadataFileName, {meta_text});
}

absl::StatusOr<LoadedModel> LoadModelFolder(const std::string& dir) {
  const std::string meta_path = dir + "/" + kMetadataFileName;
  absl::StatusOr<Json> meta = ReadJsonFile(meta_path, nullptr);
  if (!meta.ok()) return meta.status();
  // The model's settings live here too: a flipped bit in them must not
  // serve a different model. Folders of format 1 have no such checksum.
  if (auto self = meta->find(kSelfChecksum); self != meta->end()) {
    Json rest = *meta;
    rest.erase(kSelfChecksum);
    const std::string have = ChecksumOf(rest.dump());
    if (!self->is_string() || self->get<std::string>() != have) {
      return absl::DataLossError(absl::StrCat(meta_path, ": checksum mismatch (", have,
                                              ", recorded ", self->dump(), ")"));
    }
  } else if (GetNumber(*meta, "format_version", 1) >= 2) {
    return absl::DataLossError(absl::StrCat(meta_path, ": no ", kSelfChecksum));
  }
  const Json* sums = meta->contains("checksums") ? &(*meta)["checksums"] : nullptr;
  if (sums == nullptr || !sums->is_object()) {
    return absl::DataLossError(absl::StrCat(meta_path, ": no checksums"));
  }
  const std::string want_cfg = GetString(*sums, kCfgFileName, "");
  const std::string want_weights = GetString(*sums, kWeightsFileName, "");

  const std::string cfg_path = dir + "/" + kCfgFileName;
  std::string cfg_checksum;
  absl::StatusOr<Json> cfg = ReadJsonFile(cfg_path, &cfg_checksum);
  if (!cfg.ok()) return cfg.status();
  if (cfg_checksum != want_cfg) {
    return absl::DataLossError(absl::StrCat(cfg_path, ": checksum mismatch (", cfg_checksum,
                                            ", recorded ", want_cfg, ")"));
  }
  const std::string weights_path = dir + "/" + kWeightsFileName;
  absl::StatusOr<WeightsFile> weights = ReadWeightsFile(weights_path);
  if (!weights.ok()) return weights.status();
  if (weights->checksum != want_weights) {
    return absl::DataLossError(absl::StrCat(weights_path, ": checksum mismatch (",
                                            weights->checksum, ", recorded ", want_weights, ")"));
  }
  absl::StatusOr<SaeLensConfig> s = ParseSaeLensConfig(*cfg, cfg_path);
  if (!s.ok()) return absl::DataLossError(s.status().message());
  absl::StatusOr<ModelWeights> w = TakeWeights(*weights, *s, weights_path);
  if (!w.ok()) return w.status();
  if (!weights->tensors.empty()) {
    return absl::DataLossError(absl::StrCat(weights_path, ": unexpected tensor '",
                                            weights->tensors.begin()->first, "'"));
  }
  ModelConfig config = BaseConfig(*s);
  if (meta->contains("model") && (*meta)["model"].is_object()) {
    ApplyServiceConfig((*meta)["model"], &config);
  }
  LoadedModel out;
  out.metadata = MetadataFromJson(*meta);
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Create(config, std::move(*w));
  if (!model.ok()) return absl::DataLossError(absl::StrCat(dir, ": ", model.status().message()));
  out.model = *model;
  return out;
}

absl::StatusOr<LoadedModel> ImportSaeLensFolder(const std::string& dir) {
  const std::string cfg_path = dir + "/" + kCfgFileName;
  absl::StatusOr<Json> cfg = ReadJsonFile(cfg_path, nullptr);
  if (!cfg.ok()) {
    if (absl::IsDataLoss(cfg.status()) && !PathExists(cfg_path)) {
      return absl::InvalidArgumentError(absl::StrCat(dir, " has no ", kCfgFileName,
                                                      ": not a SAELens model folder"));
    }
    return cfg.status();
  }
  absl::StatusOr<SaeLensConfig> s = ParseSaeLensConfig(*cfg, cfg_path);
  if (!s.ok()) return s.status();
  const std::string weights_path = dir + "/" + kWeightsFileName;
  absl::StatusOr<WeightsFile> weights = ReadWeightsFile(weights_path);
  if (!weights.ok()) return weights.status();
  absl::StatusOr<ModelWeights> w = TakeWeights(*weights, *s, weights_path);
  if (!w.ok()) return w.status();
  // SAELens v5 stored an optional per-unit decoder scale.
  for (const char* name : {"finetuning_scaling_factor", "scaling_factor"}) {
    auto it = weights->tensors.find(name);
    if (it == weights->tensors.end()) continue;
    if (it->second.shape != std::vector<int64_t>{s->d_sae}) {
      return absl::DataLossError(absl::StrCat(weights_path, ": '", name, "' has the wrong shape"));
    }
    for (int64_t j = 0; j < s->d_sae; ++j) w->w_dec.row(j) *= it->second.vector[j];
    weights->tensors.erase(it);
  }
  if (!weights->tensors.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(weights_path, ": unsupported tensor '",
                                                   weights->tensors.begin()->first, "'"));
  }
  if (!s->apply_b_dec_to_input) {
    // pre = W_enc^T x + b_enc = W_enc^T (x - b_dec) + (b_enc + W_enc^T b_dec)
    w->b_enc += w->w_enc.transpose() * w->b_dec;
  }
  if (s->rescale_acts_by_decoder_norm) {
    // SAELens scales pre-activations by ||W_dec_j|| and divides the codes by
    // it before decoding; folding the norms in gives the same function.
    for (int64_t j = 0; j < s->d_sae; ++j) {
      const float n = w->w_dec.row(j).norm();
      if (n > 0) {
        w->w_enc.col(j) *= n;
        w->b_enc[j] *= n;
        w->w_dec.row(j) /= n;
      }
    }
  }
  ModelConfig config = BaseConfig(*s);
  config.unit_norm_decoder = false;
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Create(config, std::move(*w));
  if (!model.ok()) return model.status();
  LoadedModel out;
  out.model = *model;
  out.metadata.source = "imported";
  out.metadata.created_at = NowRfc3339();
  out.metadata.description = absl::StrCat("imported from a SAELens folder (architecture ",
                                          GetString(*cfg, "architecture", "standard"), ")");
  if (auto md = cfg->find("metadata"); md != cfg->end() && md->is_object()) {
    for (const char* key : {"model_name", "hook_name", "sae_lens_version"}) {
      if (auto v = md->find(key); v != md->end() && v->is_string()) {
        out.metadata.training[absl::StrCat("saelens.", key)] = v->get<std::string>();
      }
    }
  }
  return out;
}

}  // namespace sae
