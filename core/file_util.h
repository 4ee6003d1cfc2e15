// Durable file-system primitives for the model store: whole-file writes that
// are fsynced before they return, directory fsync, recursive removal, and
// advisory locks. Every function reports errors as Status (NOT_FOUND,
// PERMISSION_DENIED, RESOURCE_EXHAUSTED for a full disk, INTERNAL for other
// I/O errors) with the path and errno text.
#ifndef SAE_CORE_FILE_UTIL_H_
#define SAE_CORE_FILE_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sae {

// Creates `path` (which must not exist), writes the pieces in order, fsyncs
// and closes it. On failure the partial file is removed.
absl::Status WriteFileDurably(const std::string& path,
                              const std::vector<absl::string_view>& pieces);

// Writes `path` atomically: to a sibling temporary, fsync, rename over
// `path`, fsync the parent folder. Readers see the old or the new content.
absl::Status ReplaceFileAtomically(const std::string& path, absl::string_view content);
// The same for content given in pieces, written in order.
absl::Status ReplaceFileAtomically(const std::string& path,
                                   const std::vector<absl::string_view>& pieces);

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes);

// Reads a PEM file (a TLS certificate chain, private key or CA bundle) of at
// most 1 MiB, for the setting `what` (a flag or field name, which every
// message starts with). INVALID_ARGUMENT when it holds no "-----BEGIN "
// line; otherwise ReadSmallFile's errors.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view what);

absl::Status FsyncDirectory(const std::string& path);
// mkdir; OK when the folder already exists.
absl::Status MakeDirectory(const std::string& path);
// Removes a file or a folder and everything below it (no symlink is
// followed). OK when `path` does not exist.
absl::Status RemoveTree(const std::string& path);
// Names in a folder (without "." and "..").
absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& path);
bool PathExists(const std::string& path);
// Whether `path` is a folder (by lstat: a symlink to one is not). False when
// nothing is there (ENOENT, ENOTDIR). An entry that cannot be examined (EIO,
// a stale NFS handle) is an error, so that callers do not take a folder they
// cannot read for one that is gone.
absl::StatusOr<bool> IsFolder(const std::string& path);

// A file opened for reading at offsets (pread), closed on destruction.
// Unlike a mapping, a file that shrinks under its reader (truncated by
// another client of a network file system) reads as DATA_LOSS, never as a
// SIGBUS.
class FileReader {
 public:
  // NOT_FOUND for a missing file, INVALID_ARGUMENT for one that is not a
  // regular file; other errors as ErrnoToStatus maps them.
  static absl::StatusOr<FileReader> Open(const std::string& path);
  FileReader(FileReader&& other) noexcept;
  FileReader& operator=(FileReader&& other) noexcept;
  ~FileReader();

  uint64_t size() const { return size_; }  // when opened
  const std::string& path() const { return path_; }
  int fd() const { return fd_; }  // valid while the reader lives
  // Reads exactly `n` bytes at `offset` into dst; DATA_LOSS, naming the
  // path, when the file ends first.
  absl::Status ReadAt(uint64_t offset, uint64_t n, char* dst) const;

 private:
  FileReader(int fd, uint64_t size, std::string path)
      : fd_(fd), size_(size), path_(std::move(path)) {}
  int fd_ = -1;
  uint64_t size_ = 0;
  std::string path_;
};

// An exclusive flock(2) on a lock file, released on destruction.
class FileLock {
 public:
  // Blocks until the lock is held. Creates the lock file if needed.
  static absl::StatusOr<FileLock> Acquire(const std::string& path);
  // Returns UNAVAILABLE at once when another process holds it.
  static absl::StatusOr<FileLock> TryAcquire(const std::string& path);
  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  ~FileLock();

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// Test hook: when set, called before every write of WriteFileDurably and
// ReplaceFileAtomically with the file's path; a non-OK result is returned as
// that write's error (as if the disk were full). Not thread-safe to change
// while writes run; tests set it and clear it with nullptr.
using WriteFaultHook = std::function<absl::Status(const std::string& path)>;
void SetWriteFaultHookForTesting(WriteFaultHook hook);

// Test hook: when set, IsFolder calls it with the path first; a nonzero
// result is taken as the errno of a failed lstat. Same threading rule as the
// write hook.
using StatFaultHook = std::function<int(const std::string& path)>;
void SetStatFaultHookForTesting(StatFaultHook hook);

}  // namespace sae

#endif  // SAE_CORE_FILE_UTIL_H_
