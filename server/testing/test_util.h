// Test helpers shared by the server's tests: data, tensors, and the real
// sae_server binary run as a child process.
#ifndef SAE_SERVER_TESTING_TEST_UTIL_H_
#define SAE_SERVER_TESTING_TEST_UTIL_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/tensor.h"
#include "grpcpp/grpcpp.h"
#include "sae/v1/sae.pb.h"

namespace sae::server::testing {

// rows x cols uniform values in [0, 1), the same for the same seed.
inline RowMatrix RandomMatrix(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0, 1);
  RowMatrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = u(rng);
  return m;
}

// A plaintext channel to a server on this machine, for messages up to
// `max_message_bytes` each way.
inline std::shared_ptr<grpc::Channel> LocalChannel(int port, int max_message_bytes) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_message_bytes);
  args.SetMaxSendMessageSize(max_message_bytes);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials(), args);
}

// Fills a v1::Tensor with `m`, as packed floats or (raw) as little-endian bytes.
inline void SetTensor(const RowMatrix& m, v1::Tensor* t, bool raw = false) {
  t->add_shape(m.rows());
  t->add_shape(m.cols());
  if (raw) {
    t->set_raw(std::string(reinterpret_cast<const char*>(m.data()), m.size() * 4));
  } else {
    for (Eigen::Index i = 0; i < m.size(); ++i) t->mutable_values()->add_values(m.data()[i]);
  }
}

// GET `path` over HTTP/1.0 from 127.0.0.1:port; the whole response, or "".
inline std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: localhost\r\n\r\n");
  (void)!::write(fd, request.data(), request.size());
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

// The value of the first sample of `name` whose labels contain every one of
// `labels` (each like method="Encode"); -1 when absent.
inline double Sample(const std::string& text, const std::string& name,
              const std::vector<std::string>& labels) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.rfind(name, 0) != 0) continue;
    const std::string l(line);
    const char after = l.size() > name.size() ? l[name.size()] : ' ';
    if (after != '{' && after != ' ') continue;
    bool all = true;
    for (const std::string& lab : labels) all = all && l.find(lab) != std::string::npos;
    if (!all) continue;
    return std::stod(l.substr(l.rfind(' ') + 1));
  }
  return -1;
}

// The sae_server binary in a child process. Its stdout's first line
// ("sae_server listening on port N") gives the port; stderr goes to a file.
class ServerProcess {
 public:
  // Starts `binary` with `args` and waits for its port. INTERNAL when it
  // exits before saying where it listens.
  static absl::StatusOr<ServerProcess> Start(const std::string& binary,
                                             const std::vector<std::string>& args,
                                             const std::string& log_file = "/dev/null") {
    int out_pipe[2];
    if (::pipe(out_pipe) != 0) return absl::InternalError("pipe failed");
    std::vector<std::string> argv_text = {binary};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_text) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(out_pipe[1], 1);
      ::close(out_pipe[0]);
      if (FILE* log = std::fopen(log_file.c_str(), "a")) ::dup2(::fileno(log), 2);
      ::execv(binary.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(out_pipe[1]);
    std::string line;
    char c;
    while (::read(out_pipe[0], &c, 1) == 1 && c != '\n') line += c;
    ::close(out_pipe[0]);
    const size_t pos = line.rfind(' ');
    if (line.find("listening on port") == std::string::npos || pos == std::string::npos) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      return absl::InternalError(absl::StrCat("the server did not start; it said '", line, "'"));
    }
    return ServerProcess(pid, "127.0.0.1:" + line.substr(pos + 1));
  }

  ServerProcess(ServerProcess&& other) noexcept : pid_(other.pid_), address_(other.address_) {
    other.pid_ = -1;
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  // Kills the process if it still runs.
  ~ServerProcess() {
    if (pid_ > 0) Stop(SIGKILL);
  }

  const std::string& address() const { return address_; }
  pid_t pid() const { return pid_; }

  // Sends `signal` and waits for the process; returns its wait status.
  int Stop(int signal) {
    int status = 0;
    if (pid_ <= 0) return status;
    ::kill(pid_, signal);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

 private:
  ServerProcess(pid_t pid, std::string address) : pid_(pid), address_(std::move(address)) {}
  pid_t pid_;
  std::string address_;
};

}  // namespace sae::server::testing

#endif  // SAE_SERVER_TESTING_TEST_UTIL_H_
