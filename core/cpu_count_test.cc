#include "core/cpu_count.h"

#include <sched.h>

#include <thread>

#include "gtest/gtest.h"

namespace sae {
namespace {

TEST(CpuCountTest, CgroupV2QuotaRoundsUp) {
  EXPECT_EQ(CpusFromCgroupV2("200000 100000\n"), 2);
  EXPECT_EQ(CpusFromCgroupV2("150000 100000"), 2);   // 1.5 CPUs: two threads
  EXPECT_EQ(CpusFromCgroupV2("50000 100000"), 1);    // half a CPU: one
  EXPECT_EQ(CpusFromCgroupV2("max 100000\n"), 0);    // no limit
  EXPECT_EQ(CpusFromCgroupV2(""), 0);                // no file
  EXPECT_EQ(CpusFromCgroupV2("garbage"), 0);
  EXPECT_EQ(CpusFromCgroupV2("100000 0"), 0);
}

TEST(CpuCountTest, CgroupV1QuotaRoundsUp) {
  EXPECT_EQ(CpusFromCgroupV1("400000\n", "100000\n"), 4);
  EXPECT_EQ(CpusFromCgroupV1("-1", "100000"), 0);  // no limit
  EXPECT_EQ(CpusFromCgroupV1("", ""), 0);
}

TEST(CpuCountTest, NeverMoreThanTheAffinityMaskAllows) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int n = AvailableCpus();
  EXPECT_GE(n, 1);
  EXPECT_LE(n, CPU_COUNT(&set));
  EXPECT_LE(n, static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace
}  // namespace sae
