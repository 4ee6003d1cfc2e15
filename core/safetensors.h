// The safetensors format: an 8-byte little-endian header length N, N bytes
// of JSON describing each tensor (dtype, shape, byte range), then the raw
// tensor bytes. https://github.com/huggingface/safetensors
//
// Parsing is defensive: the header length is bounded (<= 100 MB and <= the
// bytes present), the JSON is parsed strictly (duplicate or unknown keys are
// errors), and every tensor's dtype, shape and byte range are checked: inside
// the data, sized exactly shape x dtype, no overlaps and no holes. A bad file
// gets DATA_LOSS with the reason. Nothing is allocated before the checks.
#ifndef SAE_CORE_SAFETENSORS_H_
#define SAE_CORE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sae {

enum class TensorDType { kF32, kF16, kBF16, kF64 };
absl::string_view TensorDTypeName(TensorDType dtype);  // "F32", ...
size_t TensorDTypeSize(TensorDType dtype);

struct TensorInfo {
  std::string name;
  TensorDType dtype = TensorDType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
  int64_t element_count() const;
};

struct SafetensorsHeader {
  uint64_t data_start = 0;  // 8 + header length: where tensor bytes begin
  uint64_t data_size = 0;
  std::vector<TensorInfo> tensors;  // in data order
  std::map<std::string, std::string> metadata;  // "__metadata__"

  const TensorInfo* Find(absl::string_view name) const;
};

constexpr uint64_t kMaxSafetensorsHeaderBytes = 100u * 1000u * 1000u;

// Parses and validates the header of a file of `file_size` bytes whose
// first bytes (at least the 8-byte length, then the JSON) are `prefix`.
// OUT_OF_RANGE when `prefix` is too short to hold the header it announces
// (the caller reads more and retries); DATA_LOSS for a malformed header.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size);

// A float32 tensor to write.
struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // product(shape) floats
};

// Serialises the header (JSON padded with spaces to a multiple of 8 bytes)
// for `tensors` laid out in the given order. Append each tensor's bytes in
// the same order after it to form the file.
std::string EncodeSafetensorsHeader(const std::vector<TensorToWrite>& tensors,
                                    const std::map<std::string, std::string>& metadata);

// Converts `count` values of `dtype` at `src` (little-endian) to float32.
void ConvertToFloat32(TensorDType dtype, const char* src, int64_t count, float* dst);

}  // namespace sae

#endif  // SAE_CORE_SAFETENSORS_H_
