// Test helper: publishes `count` small models into a store, printing each
// version number as it is published. The crash and concurrency tests of
// model_store_test run it as a separate process (and kill it).
//
//   store_publisher ROOT MODEL COUNT [SEED]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/model.h"
#include "core/model_store.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: store_publisher ROOT MODEL COUNT [SEED]\n");
    return 2;
  }
  const std::string root = argv[1], name = argv[2];
  const int count = std::atoi(argv[3]);
  const uint64_t seed = argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 1;
  absl::StatusOr<std::unique_ptr<sae::ModelStore>> store = sae::ModelStore::Open(root);
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
    return 1;
  }
  sae::ModelConfig config = sae::DefaultConfig(64, 256, sae::Activation::kRelu);
  for (int i = 0; i < count; ++i) {
    auto model = sae::Model::Create(config, sae::InitialWeights(config, seed * 1000 + i));
    if (!model.ok()) return 1;
    absl::StatusOr<int64_t> v = (*store)->Publish(name, **model, {});
    if (!v.ok()) {
      std::fprintf(stderr, "%s\n", v.status().ToString().c_str());
      return 1;
    }
    std::printf("%lld\n", static_cast<long long>(*v));
    std::fflush(stdout);
  }
  return 0;
}
