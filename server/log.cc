#include "server/log.h"

#include <unistd.h>

#include <chrono>
#include <ctime>
#include <string>

#include "absl/strings/str_cat.h"

namespace sae::server {

void LogLine(absl::string_view topic, absl::string_view message) {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm;
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
  const std::string line = absl::StrCat(stamp, " [", topic, "] ", message, "\n");
  (void)!::write(2, line.data(), line.size());
}

}  // namespace sae::server
