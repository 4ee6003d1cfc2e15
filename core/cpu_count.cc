#include "core/cpu_count.h"

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/file_util.h"

namespace sae {
namespace {

int CpusOfQuota(int64_t quota, int64_t period) {
  if (quota <= 0 || period <= 0) return 0;
  return static_cast<int>(std::min<int64_t>((quota + period - 1) / period, 1 << 16));
}

std::string ReadOrEmpty(const std::string& path) {
  absl::StatusOr<std::string> text = ReadSmallFile(path, 4096);
  return text.ok() ? *text : std::string();
}

// This process's cgroup v2 path ("0::/PATH" in /proc/self/cgroup), or "".
std::string CgroupV2Path() {
  for (absl::string_view line : absl::StrSplit(ReadOrEmpty("/proc/self/cgroup"), '\n')) {
    if (absl::ConsumePrefix(&line, "0::")) return std::string(line);
  }
  return "";
}

int CgroupQuotaCpus() {
  const std::string path = CgroupV2Path();
  for (const std::string& file :
       {"/sys/fs/cgroup" + (path == "/" ? std::string() : path) + "/cpu.max",
        std::string("/sys/fs/cgroup/cpu.max")}) {
    if (const int n = CpusFromCgroupV2(ReadOrEmpty(file)); n > 0) return n;
  }
  for (const char* dir : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"}) {
    const std::string d(dir);
    if (const int n = CpusFromCgroupV1(ReadOrEmpty(d + "/cpu.cfs_quota_us"),
                                       ReadOrEmpty(d + "/cpu.cfs_period_us"));
        n > 0) {
      return n;
    }
  }
  return 0;
}

}  // namespace

int CpusFromCgroupV2(const std::string& cpu_max) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(absl::StripAsciiWhitespace(cpu_max), ' ', absl::SkipEmpty());
  int64_t quota = 0, period = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &quota) ||
      !absl::SimpleAtoi(parts[1], &period)) {
    return 0;  // "max PERIOD" (no limit), or not a quota
  }
  return CpusOfQuota(quota, period);
}

int CpusFromCgroupV1(const std::string& quota_us, const std::string& period_us) {
  int64_t quota = 0, period = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(quota_us), &quota) ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(period_us), &period)) {
    return 0;
  }
  return CpusOfQuota(quota, period);  // quota -1: no limit
}

int AvailableCpus() {
  int n = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int allowed = CPU_COUNT(&set);
    if (allowed > 0) n = n > 0 ? std::min(n, allowed) : allowed;
  }
  if (const int quota = CgroupQuotaCpus(); quota > 0) n = n > 0 ? std::min(n, quota) : quota;
  return std::max(n, 1);
}

}  // namespace sae
