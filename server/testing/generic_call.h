// Test helper: calls any method of a gRPC service with raw message bytes,
// whatever its kind (unary or streaming), so that a test can walk over every
// method of a service descriptor.
#ifndef SAE_SERVER_TESTING_GENERIC_CALL_H_
#define SAE_SERVER_TESTING_GENERIC_CALL_H_

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace sae::server::testing {

// Sends `request` (a serialized message) as the only message of a call of
// `method` ("/package.Service/Method"), reads every response, and returns the
// call's status.
inline grpc::Status CallWithBytes(const std::shared_ptr<grpc::Channel>& channel,
                                  const std::string& method, const std::string& request,
                                  const std::multimap<std::string, std::string>& metadata = {},
                                  std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
  grpc::CompletionQueue cq;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call = stub.PrepareCall(&ctx, method, &cq);
  void* tag;
  bool ok;
  auto step = [&](int id) {
    cq.Next(&tag, &ok);
    (void)id;
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  if (step(1)) {
    grpc::Slice slice(request);
    grpc::ByteBuffer buffer(&slice, 1);
    call->WriteLast(buffer, grpc::WriteOptions(), reinterpret_cast<void*>(2));
    step(2);
    grpc::ByteBuffer response;
    for (int i = 0; i < 100000; ++i) {  // until the server ends the stream
      call->Read(&response, reinterpret_cast<void*>(3));
      if (!step(3)) break;
    }
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  step(4);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

// "/package.Service/Method" for every method of `service`.
inline std::vector<std::pair<std::string, std::string>> MethodPaths(
    const google::protobuf::ServiceDescriptor* service) {
  std::vector<std::pair<std::string, std::string>> paths;  // (name, path)
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string& name = service->method(i)->name();
    paths.emplace_back(name, "/" + service->full_name() + "/" + name);
  }
  return paths;
}

}  // namespace sae::server::testing

#endif  // SAE_SERVER_TESTING_GENERIC_CALL_H_
