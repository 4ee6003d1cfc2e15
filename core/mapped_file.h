// A read-only memory map of a whole file. Movable, not copyable; unmaps on
// destruction. Safe to read from many threads.
#ifndef SAE_CORE_MAPPED_FILE_H_
#define SAE_CORE_MAPPED_FILE_H_

#include <cstddef>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace sae {

class MappedFile {
 public:
  // NOT_FOUND when the file does not exist, PERMISSION_DENIED when it cannot
  // be read, INVALID_ARGUMENT when it is not a regular file, INTERNAL for
  // other system errors (with errno's text).
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  absl::string_view bytes() const { return {static_cast<const char*>(data_), size_}; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, void* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  void* data_;
  size_t size_;
};

// Maps errno from a failed file operation on `path` to a Status.
absl::Status ErrnoToStatus(int error, absl::string_view what,
                           absl::string_view path);

}  // namespace sae

#endif  // SAE_CORE_MAPPED_FILE_H_
