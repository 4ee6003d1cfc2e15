#include "core/file_util.h"

#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/testing/test_dir.h"
#include "gtest/gtest.h"

namespace sae {
namespace {

class FileUtilTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("file_util");
    ASSERT_TRUE(MakeDirectory(dir_).ok());
  }
  void TearDown() override {
    SetStatFaultHookForTesting(nullptr);
    RemoveTree(dir_).IgnoreError();
  }
  std::string dir_;
};

TEST_F(FileUtilTest, FileReaderReadsAtOffsets) {
  const std::string path = dir_ + "/f";
  ASSERT_TRUE(ReplaceFileAtomically(path, {"hello ", "world"}).ok());
  absl::StatusOr<FileReader> reader = FileReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->size(), 11u);
  std::string out(5, '\0');
  ASSERT_TRUE(reader->ReadAt(6, 5, out.data()).ok());
  EXPECT_EQ(out, "world");
  EXPECT_EQ(FileReader::Open(dir_ + "/missing").status().code(), absl::StatusCode::kNotFound);
}

// A file cut short under its reader (another client truncating it on a
// network file system) is DATA_LOSS naming the path; a mapping would raise
// SIGBUS at the first byte past the new end.
TEST_F(FileUtilTest, AFileTruncatedUnderItsReaderIsDataLoss) {
  const std::string path = dir_ + "/big";
  ASSERT_TRUE(ReplaceFileAtomically(path, std::string(1 << 16, 'x')).ok());
  absl::StatusOr<FileReader> reader = FileReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ(::truncate(path.c_str(), 100), 0);
  std::string out(1 << 16, '\0');
  absl::Status s = reader->ReadAt(0, out.size(), out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find(path), std::string::npos) << s;
  EXPECT_TRUE(reader->ReadAt(0, 100, out.data()).ok());
}

TEST_F(FileUtilTest, IsFolderTellsAbsenceFromAFault) {
  ASSERT_TRUE(MakeDirectory(dir_ + "/sub").ok());
  ASSERT_TRUE(ReplaceFileAtomically(dir_ + "/file", "x").ok());
  ASSERT_EQ(::symlink((dir_ + "/sub").c_str(), (dir_ + "/link").c_str()), 0);
  EXPECT_TRUE(*IsFolder(dir_ + "/sub"));
  EXPECT_FALSE(*IsFolder(dir_ + "/file"));
  EXPECT_FALSE(*IsFolder(dir_ + "/link"));  // a symlink to a folder is not one
  EXPECT_FALSE(*IsFolder(dir_ + "/missing"));
  EXPECT_FALSE(*IsFolder(dir_ + "/file/below"));  // ENOTDIR
  SetStatFaultHookForTesting([](const std::string&) { return EIO; });
  absl::StatusOr<bool> faulty = IsFolder(dir_ + "/sub");
  EXPECT_EQ(faulty.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(faulty.status().message().find("cannot examine"), std::string::npos);
}

}  // namespace
}  // namespace sae
