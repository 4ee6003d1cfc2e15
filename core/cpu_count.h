// How many CPUs this process may use, for the default thread counts.
//
// std::thread::hardware_concurrency() counts the machine's CPUs; in a
// container limited to a CPU quota (Kubernetes' resources.limits.cpu, docker
// --cpus) that oversubscribes the quota and the kernel throttles the whole
// process. So the count is the affinity mask's size, capped by the cgroup CPU
// quota (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us / cpu.cfs_period_us)
// rounded up, and at least 1.
#ifndef SAE_CORE_CPU_COUNT_H_
#define SAE_CORE_CPU_COUNT_H_

#include <string>

namespace sae {

int AvailableCpus();

// The quota of a cgroup v2 cpu.max file ("max 100000" or "QUOTA PERIOD") in
// CPUs, rounded up; 0 for no limit or text that is not a quota.
int CpusFromCgroupV2(const std::string& cpu_max);
// The same for cgroup v1's cpu.cfs_quota_us (-1: no limit) and
// cpu.cfs_period_us.
int CpusFromCgroupV1(const std::string& quota_us, const std::string& period_us);

}  // namespace sae

#endif  // SAE_CORE_CPU_COUNT_H_
