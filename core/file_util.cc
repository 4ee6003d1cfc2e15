#include "core/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/mapped_file.h"

namespace sae {
namespace {

WriteFaultHook& Hook() {
  static WriteFaultHook* hook = new WriteFaultHook();
  return *hook;
}

StatFaultHook& StatHook() {
  static StatFaultHook* hook = new StatFaultHook();
  return *hook;
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "cannot write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

std::string Parent(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

void SetWriteFaultHookForTesting(WriteFaultHook hook) { Hook() = std::move(hook); }
void SetStatFaultHookForTesting(StatFaultHook hook) { StatHook() = std::move(hook); }

absl::Status WriteFileDurably(const std::string& path,
                              const std::vector<absl::string_view>& pieces) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoToStatus(errno, "cannot create", path);
  absl::Status status;
  for (absl::string_view piece : pieces) {
    if (Hook()) status = Hook()(path);
    if (status.ok()) status = WriteAll(fd, piece, path);
    if (!status.ok()) break;
  }
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoToStatus(errno, "cannot fsync", path);
  if (::close(fd) != 0 && status.ok()) status = ErrnoToStatus(errno, "cannot close", path);
  if (!status.ok()) ::unlink(path.c_str());
  return status;
}

absl::Status ReplaceFileAtomically(const std::string& path, absl::string_view content) {
  return ReplaceFileAtomically(path, std::vector<absl::string_view>{content});
}

absl::Status ReplaceFileAtomically(const std::string& path,
                                   const std::vector<absl::string_view>& pieces) {
  std::random_device rd;
  const std::string tmp = absl::StrCat(path, ".tmp-", ::getpid(), "-", rd());
  if (absl::Status s = WriteFileDurably(tmp, pieces); !s.ok()) return s;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return ErrnoToStatus(e, "cannot rename into", path);
  }
  return FsyncDirectory(Parent(path));
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "cannot open", path);
  std::string out;
  char buf[65536];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      return ErrnoToStatus(e, "cannot read", path);
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      ::close(fd);
      return absl::DataLossError(absl::StrCat("'", path, "' is larger than the limit of ",
                                              max_bytes, " bytes"));
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view what) {
  absl::StatusOr<std::string> pem = ReadSmallFile(path, 1 << 20);
  if (!pem.ok()) {
    return absl::Status(pem.status().code(), absl::StrCat(what, ": ", pem.status().message()));
  }
  if (pem->find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": '", path, "' is not PEM (no '-----BEGIN' line)"));
  }
  return pem;
}

absl::Status FsyncDirectory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "cannot open folder", path);
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (rc != 0 && e != EINVAL) return ErrnoToStatus(e, "cannot fsync folder", path);
  return absl::OkStatus();
}

absl::Status MakeDirectory(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, "cannot create folder", path);
  }
  return absl::OkStatus();
}

absl::Status RemoveTree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoToStatus(errno, "cannot stat", path);
  }
  if (S_ISDIR(st.st_mode)) {
    absl::StatusOr<std::vector<std::string>> names = ListDirectory(path);
    if (!names.ok()) return names.status();
    for (const std::string& name : *names) {
      if (absl::Status s = RemoveTree(path + "/" + name); !s.ok()) return s;
    }
    if (::rmdir(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoToStatus(errno, "cannot remove folder", path);
    }
  } else if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoToStatus(errno, "cannot remove", path);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& path) {
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) return ErrnoToStatus(errno, "cannot list", path);
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(dir);
  return names;
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

absl::StatusOr<bool> IsFolder(const std::string& path) {
  struct stat st;
  const int injected = StatHook() ? StatHook()(path) : 0;
  if (injected != 0 || ::lstat(path.c_str(), &st) != 0) {
    const int e = injected != 0 ? injected : errno;
    if (e == ENOENT || e == ENOTDIR) return false;
    return ErrnoToStatus(e, "cannot examine", path);
  }
  return S_ISDIR(st.st_mode);
}

absl::StatusOr<FileReader> FileReader::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "cannot open", path);
  FileReader reader(fd, 0, path);  // closes fd on every return below
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoToStatus(errno, "cannot stat", path);
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a regular file"));
  }
  reader.size_ = static_cast<uint64_t>(st.st_size);
  return reader;
}

FileReader::FileReader(FileReader&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), size_(other.size_), path_(std::move(other.path_)) {}

FileReader& FileReader::operator=(FileReader&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = other.size_;
    path_ = std::move(other.path_);
  }
  return *this;
}

FileReader::~FileReader() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status FileReader::ReadAt(uint64_t offset, uint64_t n, char* dst) const {
  while (n > 0) {
    const ssize_t got = ::pread(fd_, dst, n, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "cannot read", path_);
    }
    if (got == 0) {
      return absl::DataLossError(absl::StrCat("'", path_, "' ended early (truncated?)"));
    }
    dst += got;
    n -= static_cast<uint64_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return absl::OkStatus();
}

absl::StatusOr<FileLock> FileLock::Acquire(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoToStatus(errno, "cannot open lock", path);
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    const int e = errno;
    ::close(fd);
    return ErrnoToStatus(e, "cannot lock", path);
  }
  return FileLock(fd);
}

absl::StatusOr<FileLock> FileLock::TryAcquire(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoToStatus(errno, "cannot open lock", path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    ::close(fd);
    if (e == EWOULDBLOCK) return absl::UnavailableError(absl::StrCat("'", path, "' is locked"));
    return ErrnoToStatus(e, "cannot lock", path);
  }
  return FileLock(fd);
}

FileLock::FileLock(FileLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

}  // namespace sae
