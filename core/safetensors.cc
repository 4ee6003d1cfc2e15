#include "core/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace sae {
namespace {

using Json = nlohmann::json;

absl::Status Corrupt(absl::string_view why) {
  return absl::DataLossError(absl::StrCat("malformed safetensors: ", why));
}

absl::StatusOr<TensorDType> ParseDType(const std::string& s) {
  if (s == "F32") return TensorDType::kF32;
  if (s == "F16") return TensorDType::kF16;
  if (s == "BF16") return TensorDType::kBF16;
  if (s == "F64") return TensorDType::kF64;
  return Corrupt(absl::StrCat("unsupported dtype '", s, "'; expected F32, F16, BF16 or F64"));
}

// Reads a JSON array of non-negative integers that fit in int64.
bool ReadUnsignedArray(const Json& j, std::vector<uint64_t>* out) {
  if (!j.is_array()) return false;
  for (const Json& v : j) {
    if (!v.is_number_unsigned()) return false;
    out->push_back(v.get<uint64_t>());
  }
  return true;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

absl::string_view TensorDTypeName(TensorDType dtype) {
  switch (dtype) {
    case TensorDType::kF32:
      return "F32";
    case TensorDType::kF16:
      return "F16";
    case TensorDType::kBF16:
      return "BF16";
    case TensorDType::kF64:
      return "F64";
  }
  return "?";
}

size_t TensorDTypeSize(TensorDType dtype) {
  switch (dtype) {
    case TensorDType::kF32:
      return 4;
    case TensorDType::kF16:
    case TensorDType::kBF16:
      return 2;
    case TensorDType::kF64:
      return 8;
  }
  return 0;
}

int64_t TensorInfo::element_count() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const TensorInfo* SafetensorsHeader::Find(absl::string_view name) const {
  for (const TensorInfo& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size) {
  if (file_size < 8) {
    return Corrupt(absl::StrCat("file of ", file_size,
                                " bytes is shorter than the 8-byte header length"));
  }
  if (prefix.size() < 8) return absl::OutOfRangeError("need the first 8 bytes");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) {
    n |= static_cast<uint64_t>(static_cast<unsigned char>(prefix[i])) << (8 * i);
  }
  if (n > kMaxSafetensorsHeaderBytes) {
    return Corrupt(absl::StrCat("header length ", n, " exceeds the limit of ",
                                kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (n > file_size - 8) {
    return Corrupt(absl::StrCat("header length ", n, " runs past the end of the ",
                                file_size, "-byte file"));
  }
  if (n < 2) return Corrupt("header is too short to be a JSON object");
  if (prefix.size() < 8 + n) {
    return absl::OutOfRangeError(absl::StrCat("need ", 8 + n, " bytes"));
  }
  const absl::string_view text = prefix.substr(8, n);

  // Strict parse: duplicate keys at any depth are rejected (nlohmann would
  // keep the last one silently).
  std::vector<std::set<std::string>> keys_at_depth;
  bool duplicate = false;
  std::string duplicate_key;
  Json::parser_callback_t check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      if (static_cast<int>(keys_at_depth.size()) <= depth + 1) keys_at_depth.resize(depth + 2);
      keys_at_depth[depth + 1].clear();
    } else if (event == Json::parse_event_t::key) {
      if (static_cast<int>(keys_at_depth.size()) <= depth) keys_at_depth.resize(depth + 1);
      if (!keys_at_depth[depth].insert(parsed.get<std::string>()).second) {
        duplicate = true;
        duplicate_key = parsed.get<std::string>();
      }
    }
    return true;
  };
  Json header = Json::parse(text.begin(), text.end(), check, /*allow_exceptions=*/false);
  if (header.is_discarded()) return Corrupt("header is not valid JSON");
  if (duplicate) return Corrupt(absl::StrCat("duplicate key '", duplicate_key, "' in the header"));
  if (!header.is_object()) return Corrupt("header is not a JSON object");

  SafetensorsHeader out;
  out.data_start = 8 + n;
  out.data_size = file_size - out.data_start;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const Json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return Corrupt("__metadata__ is not an object");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) {
          return Corrupt(absl::StrCat("__metadata__ value '", m.key(), "' is not a string"));
        }
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) return Corrupt(absl::StrCat("tensor '", name, "' is not an object"));
    TensorInfo t;
    t.name = name;
    bool has_dtype = false, has_shape = false, has_offsets = false;
    for (auto f = entry.begin(); f != entry.end(); ++f) {
      if (f.key() == "dtype") {
        if (!f.value().is_string()) return Corrupt(absl::StrCat("tensor '", name, "': dtype is not a string"));
        absl::StatusOr<TensorDType> d = ParseDType(f.value().get<std::string>());
        if (!d.ok()) return d.status();
        t.dtype = *d;
        has_dtype = true;
      } else if (f.key() == "shape") {
        std::vector<uint64_t> dims;
        if (!ReadUnsignedArray(f.value(), &dims) || dims.size() > 8) {
          return Corrupt(absl::StrCat("tensor '", name,
                                      "': shape is not a list of at most 8 non-negative integers"));
        }
        for (uint64_t d : dims) {
          if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
            return Corrupt(absl::StrCat("tensor '", name, "': dimension too large"));
          }
          t.shape.push_back(static_cast<int64_t>(d));
        }
        has_shape = true;
      } else if (f.key() == "data_offsets") {
        std::vector<uint64_t> offsets;
        if (!ReadUnsignedArray(f.value(), &offsets) || offsets.size() != 2) {
          return Corrupt(absl::StrCat("tensor '", name,
                                      "': data_offsets is not a pair of non-negative integers"));
        }
        t.begin = offsets[0];
        t.end = offsets[1];
        has_offsets = true;
      } else {
        return Corrupt(absl::StrCat("tensor '", name, "': unknown field '", f.key(), "'"));
      }
    }
    if (!has_dtype || !has_shape || !has_offsets) {
      return Corrupt(absl::StrCat("tensor '", name, "' lacks dtype, shape or data_offsets"));
    }
    if (t.begin > t.end || t.end > out.data_size) {
      return Corrupt(absl::StrCat("tensor '", name, "': byte range [", t.begin, ", ", t.end,
                                  ") is outside the ", out.data_size, "-byte data section"));
    }
    // Expected size with overflow checks: product(shape) * dtype size.
    uint64_t bytes = TensorDTypeSize(t.dtype);
    for (int64_t d : t.shape) {
      const uint64_t ud = static_cast<uint64_t>(d);
      if (ud != 0 && bytes > std::numeric_limits<uint64_t>::max() / ud) {
        return Corrupt(absl::StrCat("tensor '", name, "': shape overflows"));
      }
      bytes *= ud;
    }
    if (bytes != t.end - t.begin) {
      return Corrupt(absl::StrCat("tensor '", name, "': shape and dtype need ", bytes,
                                  " bytes, data_offsets give ", t.end - t.begin));
    }
    out.tensors.push_back(std::move(t));
  }
  std::sort(out.tensors.begin(), out.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t expected_begin = 0;
  for (const TensorInfo& t : out.tensors) {
    if (t.begin != expected_begin) {
      return Corrupt(absl::StrCat("tensor '", t.name, "' starts at byte ", t.begin,
                                  t.begin < expected_begin ? ", overlapping the previous tensor"
                                                           : ", leaving a hole",
                                  " (expected ", expected_begin, ")"));
    }
    expected_begin = t.end;
  }
  if (expected_begin != out.data_size) {
    return Corrupt(absl::StrCat("tensors cover ", expected_begin, " of the ", out.data_size,
                                " data bytes"));
  }
  return out;
}

std::string EncodeSafetensorsHeader(const std::vector<TensorToWrite>& tensors,
                                    const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    uint64_t bytes = 4;
    for (int64_t d : t.shape) bytes *= static_cast<uint64_t>(d);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += text;
  return out;
}

void ConvertToFloat32(TensorDType dtype, const char* src, int64_t count, float* dst) {
  switch (dtype) {
    case TensorDType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(count) * 4);
      return;
    case TensorDType::kF64:
      for (int64_t i = 0; i < count; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        dst[i] = static_cast<float>(v);
      }
      return;
    case TensorDType::kF16:
      for (int64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = HalfToFloat(h);
      }
      return;
    case TensorDType::kBF16:
      for (int64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(dst + i, &bits, 4);
      }
      return;
  }
}

}  // namespace sae
