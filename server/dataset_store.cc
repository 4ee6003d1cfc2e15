#include "server/dataset_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/mapped_file.h"
#include "nlohmann/json.hpp"

namespace sae::server {
namespace {

std::string Now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string NewId() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("ds-%016x", rng());
}

}  // namespace

DatasetUpload::DatasetUpload(DatasetStore* store, std::string tmp_path, int fd,
                             DatasetFormat format, int64_t columns, std::string display_name)
    : store_(store), tmp_path_(std::move(tmp_path)), fd_(fd), format_(format),
      columns_(columns), display_name_(std::move(display_name)) {}

DatasetUpload::~DatasetUpload() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(tmp_path_.c_str());
}

absl::Status DatasetUpload::Append(absl::string_view chunk) {
  if (bytes_ + static_cast<int64_t>(chunk.size()) > store_->max_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "dataset exceeds the server's limit of ", store_->max_bytes_, " bytes"));
  }
  while (!chunk.empty()) {
    const ssize_t n = ::write(fd_, chunk.data(), chunk.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "cannot write", tmp_path_);
    }
    chunk.remove_prefix(static_cast<size_t>(n));
    bytes_ += n;
  }
  return absl::OkStatus();
}

absl::StatusOr<DatasetInfo> DatasetUpload::Finish() {
  ::close(fd_);
  fd_ = -1;
  if (bytes_ == 0) return absl::InvalidArgumentError("the upload is empty");
  absl::StatusOr<RowMatrix> data = ReadDataset(tmp_path_, format_, columns_);
  if (!data.ok()) {
    // The temporary path means nothing to the caller: keep only the reason.
    std::string message(data.status().message());
    if (absl::StartsWith(message, tmp_path_ + ": ")) message = message.substr(tmp_path_.size() + 2);
    return absl::Status(data.status().code(), absl::StrCat("dataset: ", message));
  }
  for (Eigen::Index r = 0; r < data->rows(); ++r) {
    if (!data->row(r).allFinite()) {
      return absl::InvalidArgumentError(absl::StrCat("dataset: row ", r, " holds NaN or Inf"));
    }
  }
  DatasetInfo info;
  info.id = NewId();
  info.display_name = display_name_;
  info.rows = data->rows();
  info.columns = data->cols();
  info.created_at = Now();
  const std::string base = absl::StrCat(store_->root_, "/", info.id);
  if (absl::Status s = WriteNpy(base + ".npy", *data); !s.ok()) return s;
  struct stat st;
  if (::stat((base + ".npy").c_str(), &st) == 0) info.bytes = st.st_size;
  nlohmann::json meta = {{"display_name", info.display_name}, {"rows", info.rows},
                         {"columns", info.columns}, {"created_at", info.created_at}};
  if (absl::Status s = ReplaceFileAtomically(base + ".json", meta.dump()); !s.ok()) {
    ::unlink((base + ".npy").c_str());
    return s;
  }
  finished_ = true;
  ::unlink(tmp_path_.c_str());
  return info;
}

absl::StatusOr<std::unique_ptr<DatasetStore>> DatasetStore::Open(const std::string& root,
                                                                 int64_t max_bytes) {
  for (size_t pos = root.find('/', 1);; pos = root.find('/', pos + 1)) {
    const std::string prefix = pos == std::string::npos ? root : root.substr(0, pos);
    if (absl::Status s = MakeDirectory(prefix); !s.ok()) return s;
    if (pos == std::string::npos) break;
  }
  // Uploads cut short by a crash.
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(root);
  if (!names.ok()) return names.status();
  for (const std::string& n : *names) {
    if (absl::StartsWith(n, ".upload-")) ::unlink((root + "/" + n).c_str());
  }
  return std::unique_ptr<DatasetStore>(new DatasetStore(root, max_bytes));
}

absl::StatusOr<std::unique_ptr<DatasetUpload>> DatasetStore::StartUpload(
    const std::string& format_name, int64_t columns, const std::string& display_name) {
  absl::StatusOr<DatasetFormat> format = ParseDatasetFormat(format_name.empty() ? "npy" : format_name);
  if (!format.ok()) return format.status();
  if (*format == DatasetFormat::kAuto) {
    return absl::InvalidArgumentError("format: name the format: npy, csv or f32");
  }
  // The widest row a model takes (ModelConfig's d_in limit).
  constexpr int64_t kMaxColumns = int64_t{1} << 20;
  if (*format == DatasetFormat::kRawFloat32 && (columns < 1 || columns > kMaxColumns)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "columns: f32 uploads need the row width, in [1, ", kMaxColumns, "]; got ", columns));
  }
  if (display_name.size() > 256) {
    return absl::InvalidArgumentError("display_name: at most 256 characters");
  }
  const std::string tmp = absl::StrCat(root_, "/.upload-", NewId());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoToStatus(errno, "cannot create", tmp);
  return std::unique_ptr<DatasetUpload>(
      new DatasetUpload(this, tmp, fd, *format, columns, display_name));
}

absl::Status DatasetStore::CheckId(const std::string& id) const {
  if (id.size() != 19 || !absl::StartsWith(id, "ds-")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset_id '", id.substr(0, 40), "' is malformed; expected an id from UploadDataset"));
  }
  for (char c : id.substr(3)) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return absl::InvalidArgumentError("dataset_id is malformed; expected an id from UploadDataset");
    }
  }
  if (!PathExists(absl::StrCat(root_, "/", id, ".npy"))) {
    return absl::NotFoundError(absl::StrCat("unknown dataset '", id, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const RowMatrix>> DatasetStore::Load(const std::string& id) const {
  if (absl::Status s = CheckId(id); !s.ok()) return s;
  absl::StatusOr<RowMatrix> m = ReadNpy(absl::StrCat(root_, "/", id, ".npy"));
  if (!m.ok()) return absl::DataLossError(m.status().message());
  return std::make_shared<const RowMatrix>(std::move(*m));
}

absl::StatusOr<std::vector<DatasetInfo>> DatasetStore::List() const {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(root_);
  if (!names.ok()) return names.status();
  std::vector<DatasetInfo> out;
  for (const std::string& n : *names) {
    if (!absl::EndsWith(n, ".json") || !absl::StartsWith(n, "ds-")) continue;
    DatasetInfo info;
    info.id = n.substr(0, n.size() - 5);
    absl::StatusOr<std::string> text = ReadSmallFile(root_ + "/" + n, 1 << 16);
    if (!text.ok()) continue;
    nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_discarded()) continue;
    info.display_name = j.value("display_name", "");
    info.rows = j.value("rows", int64_t{0});
    info.columns = j.value("columns", int64_t{0});
    info.created_at = j.value("created_at", "");
    struct stat st;
    if (::stat(absl::StrCat(root_, "/", info.id, ".npy").c_str(), &st) == 0) info.bytes = st.st_size;
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(),
            [](const DatasetInfo& a, const DatasetInfo& b) { return a.created_at > b.created_at; });
  return out;
}

absl::Status DatasetStore::Delete(const std::string& id) {
  if (absl::Status s = CheckId(id); !s.ok()) return s;
  ::unlink(absl::StrCat(root_, "/", id, ".json").c_str());
  if (::unlink(absl::StrCat(root_, "/", id, ".npy").c_str()) != 0 && errno != ENOENT) {
    return ErrnoToStatus(errno, "cannot delete dataset", id);
  }
  return absl::OkStatus();
}

}  // namespace sae::server
