#include "core/dataset_io.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/dataset_io_", ::getpid(), "_", name);
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A .npy v1 file with a given header dict and payload.
std::string Npy(const std::string& dict, const std::string& payload) {
  std::string h = dict;
  while ((10 + h.size() + 1) % 64 != 0) h.push_back(' ');
  h.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(h.size() & 0xff));
  out.push_back(static_cast<char>(h.size() >> 8));
  return out + h + payload;
}

TEST(NpyTest, RoundTripIsBitwiseExact) {
  RowMatrix m(3, 5);
  std::mt19937 rng(1);
  std::normal_distribution<float> n;
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  const std::string path = TempPath("roundtrip.npy");
  ASSERT_TRUE(WriteNpy(path, m).ok());
  absl::StatusOr<RowMatrix> back = ReadNpy(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  std::remove(path.c_str());
}

TEST(NpyTest, Uint8ScalesToUnitInterval) {
  const std::string bytes =
      Npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }",
          std::string("\x00\xff\x33\x66", 4));
  absl::StatusOr<RowMatrix> m = ParseNpy(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FLOAT_EQ((*m)(0, 1), 1.0f);
  EXPECT_FLOAT_EQ((*m)(1, 0), 0.2f);
  absl::StatusOr<RowMatrix> raw = ParseNpy(bytes, {.scale_uint8 = false});
  EXPECT_FLOAT_EQ((*raw)(1, 1), 102.0f);
}

TEST(NpyTest, Float64AndImagesFlatten) {
  double v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::string bytes =
      Npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2, 2), }",
          std::string(reinterpret_cast<const char*>(v), sizeof(v)));
  absl::StatusOr<RowMatrix> m = ParseNpy(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->rows(), 2);
  EXPECT_EQ(m->cols(), 4);
  EXPECT_EQ((*m)(1, 3), 8.0f);
}

TEST(NpyTest, ReadsTheCommittedDigits) {
  absl::StatusOr<RowMatrix> m =
      ReadNpy(std::string(SAE_DATA_DIR) + "/mnist-2500-images-u8.npy");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->rows(), 2500);
  EXPECT_EQ(m->cols(), 784);
  EXPECT_GE(m->minCoeff(), 0.0f);
  EXPECT_LE(m->maxCoeff(), 1.0f);
  EXPECT_GT(m->mean(), 0.05f);
}

struct BadCase {
  const char* name;
  std::string bytes;
  const char* message_part;
};

TEST(NpyTest, RejectsMalformedFilesWithAReason) {
  const std::string four_floats(16, '\0');
  const std::vector<BadCase> cases = {
      {"empty", "", "magic"},
      {"not npy", "hello world, this is text", "magic"},
      {"fortran", Npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", four_floats), "Fortran"},
      {"dtype", Npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }", four_floats), "dtype"},
      {"big endian", Npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }", four_floats), "dtype"},
      {"truncated", Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", four_floats), "truncated"},
      {"trailing", Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", four_floats), "promises"},
      {"huge shape", Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000), }", four_floats), "truncated"},
      {"overflow", Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 999999999999999999, 999999999999999999), }", four_floats), "overflow"},
      {"negative", Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 2), }", four_floats), "whole number"},
      {"no shape", Npy("{'descr': '<f4', 'fortran_order': False, }", four_floats), "lacks"},
      {"garbage header", Npy("[1, 2, 3]", four_floats), "'{'"},
      {"scalar", Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", four_floats), "0-dimensional"},
      {"version", std::string("\x93NUMPY\x09\x00\x10\x00", 10) + std::string(16, ' '), "version"},
      {"header past end", std::string("\x93NUMPY\x01\x00\xff\x00", 10) + "{}", "past the end"},
  };
  for (const BadCase& c : cases) {
    absl::StatusOr<RowMatrix> m = ParseNpy(c.bytes);
    ASSERT_FALSE(m.ok()) << c.name;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(m.status().message().find(c.message_part), absl::string_view::npos)
        << c.name << ": " << m.status();
  }
}

TEST(NpyTest, RandomCorruptionNeverCrashes) {
  RowMatrix m = RowMatrix::Random(4, 6);
  const std::string good = EncodeNpy(m);
  std::mt19937 rng(7);
  int parsed = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bad = good;
    const int flips = 1 + trial % 4;
    for (int f = 0; f < flips; ++f) {
      bad[rng() % bad.size()] = static_cast<char>(rng());
    }
    if (trial % 5 == 0) bad.resize(rng() % bad.size());
    absl::StatusOr<RowMatrix> r = ParseNpy(bad);
    if (r.ok()) {
      ++parsed;
      EXPECT_LE(r->size() * 4, static_cast<Eigen::Index>(bad.size()));
    }
  }
  // Flips inside the float payload leave a valid file.
  EXPECT_GT(parsed, 0);
}

TEST(NpyTest, MissingFileIsNotFound) {
  EXPECT_EQ(ReadNpy("/nonexistent/x.npy").status().code(), absl::StatusCode::kNotFound);
}

TEST(CsvTest, ParsesWithHeaderAndBlankLines) {
  absl::StatusOr<RowMatrix> m = ParseCsv("a,b,c\n1, 2,3\n\n4,5.5,-6e-1\n");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->rows(), 2);
  EXPECT_FLOAT_EQ((*m)(1, 2), -0.6f);
}

TEST(CsvTest, RejectsRaggedAndNonNumericRows) {
  absl::StatusOr<RowMatrix> ragged = ParseCsv("1,2,3\n4,5\n");
  EXPECT_EQ(ragged.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ragged.status().message().find("line 2"), absl::string_view::npos);
  EXPECT_EQ(ParseCsv("1,2\nx,3\n").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCsv("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CsvTest, WriteThenRead) {
  RowMatrix m(2, 3);
  m << 1, 2.5f, -3, 0.125f, 5, 6;
  const std::string path = TempPath("m.csv");
  ASSERT_TRUE(WriteCsv(path, m).ok());
  absl::StatusOr<RowMatrix> back = ReadDataset(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  std::remove(path.c_str());
}

TEST(RawTest, ReadsWholeRowsOnly) {
  float v[6] = {1, 2, 3, 4, 5, 6};
  const std::string path = TempPath("m.f32");
  WriteBytes(path, std::string(reinterpret_cast<const char*>(v), sizeof(v)));
  absl::StatusOr<RowMatrix> m = ReadRawFloat32(path, 3);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->rows(), 2);
  EXPECT_EQ((*m)(1, 0), 4.0f);
  EXPECT_EQ(ReadRawFloat32(path, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadRawFloat32(path, 3, 5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadRawFloat32(path, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadDataset(path, DatasetFormat::kAuto, 2)->rows(), 3);
  std::remove(path.c_str());
}

TEST(DatasetTest, UnknownExtensionAsksForAFormat) {
  absl::StatusOr<RowMatrix> m = ReadDataset("data.parquet");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseDatasetFormat("hdf5").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sae
