#include "core/dataset_io.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <limits>
#include <random>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/file_util.h"
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

// Datasets are written as the store writes: a failed write leaves the old
// file whole, and the new one goes through the durable (fsynced) path.
TEST(NpyTest, WritesDurablyAndAFailedWriteKeepsTheOldFile) {
  RowMatrix old_m = RowMatrix::Constant(2, 3, 1.5f);
  const std::string path = TempPath("durable.npy");
  ASSERT_TRUE(WriteNpy(path, old_m).ok());
  std::vector<std::string> written;
  SetWriteFaultHookForTesting([&](const std::string& p) {
    written.push_back(p);
    return absl::ResourceExhaustedError("disk full (injected)");
  });
  const absl::Status s = WriteNpy(path, RowMatrix::Zero(4, 3));
  SetWriteFaultHookForTesting(nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  ASSERT_FALSE(written.empty());
  EXPECT_TRUE(absl::StartsWith(written[0], path + ".tmp-")) << written[0];
  EXPECT_EQ(*ReadNpy(path), old_m);
  EXPECT_FALSE(PathExists(written[0]));
  std::remove(path.c_str());
}

// A view with an outer stride (a block of a wider matrix) is written row by
// row, the same bytes as a copy of it.
TEST(NpyTest, WritesAStridedViewAsItsRows) {
  RowMatrix wide(4, 6);
  for (Eigen::Index i = 0; i < wide.size(); ++i) wide.data()[i] = static_cast<float>(i);
  const std::string path = TempPath("strided.npy");
  ASSERT_TRUE(WriteNpy(path, wide.block(1, 2, 3, 3)).ok());
  const RowMatrix block = wide.block(1, 2, 3, 3);
  EXPECT_EQ(*ReadNpy(path), block);
  EXPECT_EQ(EncodeNpy(wide.block(1, 2, 3, 3)), EncodeNpy(block));
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

TEST(CsvTest, ReportsTheLineOfABadRowAfterAHeader) {
  absl::StatusOr<RowMatrix> ragged = ParseCsv("x,y\r\n1,2\r\n\n3,4,5\r\n");
  EXPECT_EQ(ragged.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ragged.status().message().find("line 4 has 3 values"), absl::string_view::npos)
      << ragged.status();
  absl::StatusOr<RowMatrix> word = ParseCsv("x,y\n1,2\n3,four\n");
  EXPECT_EQ(word.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(word.status().message().find("line 3"), absl::string_view::npos) << word.status();
  // A second text line is data, not another header; a trailing comma is an
  // empty value.
  EXPECT_EQ(ParseCsv("a\nb\n1\n").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCsv("1,2,\n").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCsv("a,b\n").status().code(), absl::StatusCode::kInvalidArgument);
}

// Empty fields are refused while counting, before the result is
// allocated: a file of bare commas would otherwise ask 4 bytes a byte.
TEST(CsvTest, RefusesEmptyFieldsBeforeAllocating) {
  absl::StatusOr<RowMatrix> commas = ParseCsv(absl::StrCat("1,2,3\n", std::string(1000, ','), "\n"));
  ASSERT_FALSE(commas.ok());
  EXPECT_EQ(commas.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(commas.status().message().find("CSV line 2: value 1 is empty"), std::string::npos)
      << commas.status();
  absl::StatusOr<RowMatrix> blank = ParseCsv("1,2,3\n4, ,6\n");
  ASSERT_FALSE(blank.ok());
  EXPECT_NE(blank.status().message().find("CSV line 2: value 2 is empty"), std::string::npos)
      << blank.status();
}

TEST(CsvTest, ParsesAVeryWideRowInPlace) {
  std::string line;
  for (int i = 0; i < 100000; ++i) absl::StrAppend(&line, i > 0 ? "," : "", i % 7);
  absl::StatusOr<RowMatrix> m = ParseCsv(absl::StrCat("h\n", line, "\n", line));
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->rows(), 2);
  ASSERT_EQ(m->cols(), 100000);
  for (int i = 0; i < 100000; i += 9973) EXPECT_EQ((*m)(1, i), static_cast<float>(i % 7));
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

// A width whose row size in bytes overflows (or merely exceeds the file)
// is refused with the reason, not divided by or allocated.
TEST(RawTest, AWidthLargerThanTheFileIsRejected) {
  const std::string path = TempPath("one.f32");
  WriteBytes(path, std::string(4, '\0'));
  for (int64_t cols : {int64_t{2}, int64_t{1} << 62, (int64_t{1} << 62) + 1,
                       std::numeric_limits<int64_t>::max()}) {
    absl::StatusOr<RowMatrix> m = ReadRawFloat32(path, cols);
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << cols;
    EXPECT_NE(m.status().message().find("larger than the file"), absl::string_view::npos)
        << m.status();
  }
  EXPECT_EQ(ReadRawFloat32(path, 1)->rows(), 1);
  std::remove(path.c_str());
}

TEST(DatasetTest, UnknownExtensionAsksForAFormat) {
  absl::StatusOr<RowMatrix> m = ReadDataset("data.parquet");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseDatasetFormat("hdf5").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sae
