// A folder of its own for each test.
#ifndef SAE_CORE_TESTING_TEST_DIR_H_
#define SAE_CORE_TESTING_TEST_DIR_H_

#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/file_util.h"
#include "gtest/gtest.h"

namespace sae::testing {

// The path of a folder under the test temp dir named after `prefix`, this
// process and the running test, emptied: removed if it was there (it is not
// created). Callers remove it when done.
inline std::string FreshTestDir(absl::string_view prefix) {
  std::string dir = absl::StrCat(::testing::TempDir(), "/", prefix, "_", ::getpid(), "_",
                                 ::testing::UnitTest::GetInstance()->current_test_info()->name());
  EXPECT_TRUE(RemoveTree(dir).ok()) << dir;
  return dir;
}

}  // namespace sae::testing

#endif  // SAE_CORE_TESTING_TEST_DIR_H_
