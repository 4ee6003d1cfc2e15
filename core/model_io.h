// Model folders: the on-disk form of one model version, readable by SAELens.
//
//   cfg.json                  SAELens config (d_in, d_sae, dtype, architecture,
//                             apply_b_dec_to_input, normalize_activations, k, ...)
//   sae_weights.safetensors   float32 W_enc [d_in, d_sae], W_dec [d_sae, d_in],
//                             b_enc [d_sae], b_dec [d_in] (+ threshold [d_sae]
//                             for JumpReLU)
//   sae_service.json          this project's metadata: full model settings,
//                             training settings, metrics, creation time, data
//                             shape, an XXH3-128 checksum of each file above,
//                             and one of its own content (self_checksum)
//
// SAELens ignores sae_service.json, so `SAE.load_from_disk` reads a folder as
// it is. The architecture of a sigmoid + KL model is written as "sigmoid_kl",
// which SAELens does not know. A model with input_scale != 1 is saved with the
// scale folded into its weights (SAELens has no such field); the folded model
// computes the same function up to float rounding.
#ifndef SAE_CORE_MODEL_IO_H_
#define SAE_CORE_MODEL_IO_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model.h"

namespace sae {

inline constexpr char kCfgFileName[] = "cfg.json";
inline constexpr char kWeightsFileName[] = "sae_weights.safetensors";
inline constexpr char kMetadataFileName[] = "sae_service.json";

struct ModelMetadata {
  std::string source = "trained";  // "trained" or "imported"
  std::string created_at;          // RFC 3339 UTC; SaveModelFolder fills it when empty
  std::string description;
  int64_t data_rows = 0;  // shape of the training data, when known
  int64_t data_cols = 0;
  std::map<std::string, std::string> training;  // settings, as text
  std::map<std::string, double> metrics;        // e.g. "fvu", "mse", "psnr_db"
};

struct LoadedModel {
  std::shared_ptr<const Model> model;
  ModelMetadata metadata;
};

// Writes the three files into the existing, empty folder `dir`; each file is
// fsynced before this returns (the caller fsyncs the folder itself). Errors
// from the file system are returned as is (RESOURCE_EXHAUSTED when full).
absl::Status SaveModelFolder(const Model& model, const ModelMetadata& metadata,
                             const std::string& dir);

// Reads a folder written by SaveModelFolder. Every file must match its
// checksum: a missing, truncated or altered file is DATA_LOSS with the
// reason. Weights are read straight into the model's matrices.
absl::StatusOr<LoadedModel> LoadModelFolder(const std::string& dir);

// Reads only the metadata file of a model folder (no checksum verification):
// for listings. DATA_LOSS when it is missing or malformed.
absl::StatusOr<ModelMetadata> ReadModelMetadata(const std::string& dir);

// Reads a model folder's config (cfg.json and sae_service.json) without its
// weights or checksum verification: for listings. DATA_LOSS when malformed.
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& dir);

// Imports a folder written by SAELens (v6 layout, and the older v3-v5 one):
// architectures standard, topk (with rescale_acts_by_decoder_norm folded in)
// and jumprelu; float32, float16, bfloat16 and float64 weights converted to
// float32; apply_b_dec_to_input = false folded into b_enc. Unsupported
// settings (gated SAEs, layer-norm or constant-norm input normalisation)
// get INVALID_ARGUMENT naming them; a malformed file DATA_LOSS.
absl::StatusOr<LoadedModel> ImportSaeLensFolder(const std::string& dir);

// Hex checksum as written in sae_service.json: "xxh3-128:<32 hex digits>".
std::string ChecksumOf(absl::string_view bytes);

}  // namespace sae

#endif  // SAE_CORE_MODEL_IO_H_
