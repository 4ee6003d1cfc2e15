// The one place where absl::Status becomes grpc::Status (as TF Serving's
// ToGRPCStatus). Codes map one to one; UNKNOWN never reaches a caller.
#ifndef SAE_SERVER_STATUS_UTIL_H_
#define SAE_SERVER_STATUS_UTIL_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace sae::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

// "OK", "NOT_FOUND", ... (for logs, metrics and load reports).
const char* StatusCodeName(grpc::StatusCode code);

}  // namespace sae::server

#endif  // SAE_SERVER_STATUS_UTIL_H_
