// One-line, timestamped log records on stderr: "2026-12-03T19:00:00Z [job] ...".
// Thread-safe (one write(2) per line).
#ifndef SAE_SERVER_LOG_H_
#define SAE_SERVER_LOG_H_

#include "absl/strings/string_view.h"

namespace sae::server {

void LogLine(absl::string_view topic, absl::string_view message);

}  // namespace sae::server

#endif  // SAE_SERVER_LOG_H_
