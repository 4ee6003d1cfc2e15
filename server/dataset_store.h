// Datasets uploaded for training, kept as float32 .npy files in a folder:
// <root>/<id>.npy with <root>/<id>.json beside it (name, shape, time).
// Uploads are written to a temporary file, parsed and validated, then
// renamed into place. Thread-safe. Knows nothing of gRPC.
#ifndef SAE_SERVER_DATASET_STORE_H_
#define SAE_SERVER_DATASET_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dataset_io.h"
#include "core/tensor.h"

namespace sae::server {

struct DatasetInfo {
  std::string id;
  std::string display_name;
  int64_t rows = 0;
  int64_t columns = 0;
  int64_t bytes = 0;
  std::string created_at;
};

class DatasetStore;

// An upload in progress: append chunks, then Finish. Destroying it without
// Finish discards the partial file.
class DatasetUpload {
 public:
  ~DatasetUpload();
  // RESOURCE_EXHAUSTED past the store's size limit.
  absl::Status Append(absl::string_view chunk);
  // Parses the file (INVALID_ARGUMENT with the reason if malformed or not
  // finite), stores it and returns its info.
  absl::StatusOr<DatasetInfo> Finish();

 private:
  friend class DatasetStore;
  DatasetUpload(DatasetStore* store, std::string tmp_path, int fd, DatasetFormat format,
                int64_t columns, std::string display_name);
  DatasetStore* store_;
  std::string tmp_path_;
  int fd_;
  DatasetFormat format_;
  int64_t columns_;
  std::string display_name_;
  int64_t bytes_ = 0;
  bool finished_ = false;
};

class DatasetStore {
 public:
  static absl::StatusOr<std::unique_ptr<DatasetStore>> Open(const std::string& root,
                                                            int64_t max_bytes);
  // format: "npy" (default when empty), "csv" or "f32" (needs columns).
  absl::StatusOr<std::unique_ptr<DatasetUpload>> StartUpload(const std::string& format,
                                                             int64_t columns,
                                                             const std::string& display_name);
  absl::StatusOr<std::shared_ptr<const RowMatrix>> Load(const std::string& id) const;
  absl::StatusOr<std::vector<DatasetInfo>> List() const;
  absl::Status Delete(const std::string& id);
  int64_t max_bytes() const { return max_bytes_; }

 private:
  friend class DatasetUpload;
  DatasetStore(std::string root, int64_t max_bytes) : root_(std::move(root)), max_bytes_(max_bytes) {}
  absl::Status CheckId(const std::string& id) const;
  const std::string root_;
  const int64_t max_bytes_;
};

}  // namespace sae::server

#endif  // SAE_SERVER_DATASET_STORE_H_
