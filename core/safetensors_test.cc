#include "core/safetensors.h"

#include <cstring>
#include <random>
#include <string>

#include "gtest/gtest.h"

namespace sae {
namespace {

std::string File(const std::string& json, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + json + data;
}

absl::StatusOr<SafetensorsHeader> Parse(const std::string& file) {
  return ParseSafetensorsHeader(file, file.size());
}

TEST(SafetensorsTest, EncodeThenParse) {
  const float a[6] = {1, 2, 3, 4, 5, 6};
  const float b[2] = {7, 8};
  const std::string header =
      EncodeSafetensorsHeader({{"a", {2, 3}, a}, {"b", {2}, b}}, {{"format", "pt"}});
  EXPECT_EQ((header.size() - 8) % 8, 0u);
  const std::string file = header + std::string(reinterpret_cast<const char*>(a), 24) +
                           std::string(reinterpret_cast<const char*>(b), 8);
  absl::StatusOr<SafetensorsHeader> h = Parse(file);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->data_start, header.size());
  EXPECT_EQ(h->Find("a")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h->Find("b")->begin, 24u);
  EXPECT_EQ(h->metadata.at("format"), "pt");
}

struct Bad {
  const char* name;
  std::string file;
  const char* reason;
};

TEST(SafetensorsTest, RejectsMalformedHeadersWithDataLoss) {
  const std::string eight(8, 'x');
  std::string huge_len(8, '\0');
  huge_len[4] = 1;  // 2^32 bytes
  const std::vector<Bad> cases = {
      {"short", "abc", "shorter than the 8-byte"},
      {"huge length", huge_len + "{}", "exceeds the limit"},
      {"past end", File("{}", "").substr(0, 8) + "{", "past the end"},
      {"not json", File("{nope}  ", ""), "not valid JSON"},
      {"not object", File("[1,2]   ", ""), "not a JSON object"},
      {"duplicate", File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight), "duplicate key"},
      {"unknown field", File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", eight), "unknown field"},
      {"dtype", File(R"({"a":{"dtype":"I8","shape":[8],"data_offsets":[0,8]}})", eight), "unsupported dtype"},
      {"missing", File(R"({"a":{"dtype":"F32","shape":[2]}})", eight), "lacks"},
      {"negative dim", File(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight), "shape"},
      {"outside", File(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", eight), "outside"},
      {"size mismatch", File(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight), "need 12 bytes"},
      {"overlap", File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight), "overlapping"},
      {"hole", File(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight), "hole"},
      {"trailing", File(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight), "cover 4 of the 8"},
      {"overflow", File(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", eight), "overflows"},
      {"reversed", File(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight), "outside"},
      {"metadata type", File(R"({"__metadata__":{"k":1}})", ""), "not a string"},
  };
  for (const Bad& c : cases) {
    absl::StatusOr<SafetensorsHeader> h = Parse(c.file);
    ASSERT_FALSE(h.ok()) << c.name;
    EXPECT_EQ(h.status().code(), absl::StatusCode::kDataLoss) << c.name << ": " << h.status();
    EXPECT_NE(h.status().message().find(c.reason), absl::string_view::npos)
        << c.name << ": " << h.status();
  }
}

TEST(SafetensorsTest, AskForMoreBytesWhenThePrefixIsShort) {
  const std::string file = File(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcd");
  EXPECT_EQ(ParseSafetensorsHeader(file.substr(0, 12), file.size()).status().code(),
            absl::StatusCode::kOutOfRange);
}

TEST(SafetensorsTest, RandomMutationsNeverCrash) {
  const float a[4] = {1, 2, 3, 4};
  const std::string good = EncodeSafetensorsHeader({{"W", {2, 2}, a}}, {}) +
                           std::string(reinterpret_cast<const char*>(a), 16);
  std::mt19937 rng(3);
  int ok = 0;
  for (int i = 0; i < 5000; ++i) {
    std::string f = good;
    for (int k = 0; k <= i % 3; ++k) f[rng() % f.size()] = static_cast<char>(rng());
    if (i % 7 == 0) f.resize(rng() % f.size());
    absl::StatusOr<SafetensorsHeader> h = Parse(f);
    if (h.ok()) {
      ++ok;
      for (const TensorInfo& t : h->tensors) EXPECT_LE(h->data_start + t.end, f.size());
    }
  }
  EXPECT_GT(ok, 0);  // flips in the payload or in padding leave a valid file
}

TEST(SafetensorsTest, HalfPrecisionConversions) {
  // float16: 1.0 = 0x3c00, -2.0 = 0xc000, 65504 = 0x7bff, smallest subnormal 0x0001.
  const uint16_t f16[4] = {0x3c00, 0xc000, 0x7bff, 0x0001};
  float out[4];
  ConvertToFloat32(TensorDType::kF16, reinterpret_cast<const char*>(f16), 4, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 65504.0f);
  EXPECT_FLOAT_EQ(out[3], 5.9604645e-8f);
  // bfloat16 is the top half of a float32: 1.5 = 0x3fc0.
  const uint16_t bf16[2] = {0x3fc0, 0xc2f6};
  ConvertToFloat32(TensorDType::kBF16, reinterpret_cast<const char*>(bf16), 2, out);
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], -123.0f);
}

}  // namespace
}  // namespace sae
