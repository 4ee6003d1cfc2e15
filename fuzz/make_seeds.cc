// Writes the fuzzer's seed corpus: valid folders of each architecture in
// the fuzzer's input layout (2-byte cfg length, cfg.json, safetensors).
//
//   make_seeds OUTPUT_DIR
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/model_io.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string out = argv[1];
  int n = 0;
  for (sae::Activation act : {sae::Activation::kRelu, sae::Activation::kTopK,
                              sae::Activation::kJumpRelu, sae::Activation::kSigmoid}) {
    sae::ModelConfig c = sae::DefaultConfig(3, 4, act);
    if (act == sae::Activation::kTopK) c.k = 2;
    sae::ModelWeights w = sae::InitialWeights(c, 1);
    if (act == sae::Activation::kJumpRelu) w.threshold = sae::Vector::Constant(4, 0.1f);
    auto model = sae::Model::Create(c, w);
    const std::string dir = absl::StrCat("/tmp/sae_seed_", n);
    sae::RemoveTree(dir).IgnoreError();
    sae::MakeDirectory(dir).IgnoreError();
    if (!model.ok() || !sae::SaveModelFolder(**model, {}, dir).ok()) return 1;
    std::stringstream cfg, weights;
    cfg << std::ifstream(dir + "/cfg.json").rdbuf();
    weights << std::ifstream(dir + "/sae_weights.safetensors", std::ios::binary).rdbuf();
    const std::string c_text = cfg.str();
    std::string seed;
    seed.push_back(static_cast<char>(c_text.size() & 0xff));
    seed.push_back(static_cast<char>(c_text.size() >> 8));
    seed += c_text + weights.str();
    std::ofstream(absl::StrCat(out, "/seed-", sae::ActivationName(act)), std::ios::binary) << seed;
    sae::RemoveTree(dir).IgnoreError();
    ++n;
  }
  return 0;
}
