// libFuzzer target for the model-file parsers: the safetensors header
// parser, the dtype conversions, and the cfg.json reader, through the same
// ImportSaeLensFolder and LoadModelFolder entry points the store and the
// service use.
//
// Input layout: 2 bytes little-endian length L, then L bytes of cfg.json,
// then the bytes of sae_weights.safetensors. The first input byte's low bit
// also routes a copy through LoadModelFolder (which wants sae_service.json
// and so must reject the folder cleanly).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/model_io.h"
#include "core/safetensors.h"

namespace {

const std::string& Dir() {
  static const std::string* dir = [] {
    auto* d = new std::string(absl::StrCat("/dev/shm/sae_fuzz_", ::getpid()));
    if (!sae::MakeDirectory(*d).ok()) *d = absl::StrCat("/tmp/sae_fuzz_", ::getpid());
    sae::MakeDirectory(*d).IgnoreError();
    return d;
  }();
  return *dir;
}

void Write(const std::string& path, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return;
  if (size > 0) std::fwrite(data, 1, size, f);
  std::fclose(f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t cfg_len = std::min<size_t>(size - 2, data[0] | (data[1] << 8));
  const uint8_t* cfg = data + 2;
  const uint8_t* weights = cfg + cfg_len;
  const size_t weights_len = size - 2 - cfg_len;

  // The header parser on its own, with every tensor converted.
  const absl::string_view bytes(reinterpret_cast<const char*>(weights), weights_len);
  absl::StatusOr<sae::SafetensorsHeader> header = sae::ParseSafetensorsHeader(bytes, bytes.size());
  if (header.ok()) {
    for (const sae::TensorInfo& t : header->tensors) {
      if (t.element_count() > (1 << 16)) continue;
      std::vector<float> out(static_cast<size_t>(t.element_count()));
      sae::ConvertToFloat32(t.dtype, bytes.data() + header->data_start + t.begin,
                            t.element_count(), out.data());
    }
  }

  // The folder readers.
  const std::string& dir = Dir();
  Write(dir + "/cfg.json", cfg, cfg_len);
  Write(dir + "/sae_weights.safetensors", weights, weights_len);
  absl::StatusOr<sae::LoadedModel> imported = sae::ImportSaeLensFolder(dir);
  if (imported.ok()) {
    sae::RowMatrix x = sae::RowMatrix::Ones(2, imported->model->d_in());
    (void)imported->model->Reconstruct(x);
  }
  if (data[0] & 1) (void)sae::LoadModelFolder(dir);
  return 0;
}
