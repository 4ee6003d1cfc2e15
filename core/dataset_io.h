// Reading and writing datasets: NumPy .npy, CSV, and raw float32.
//
// Every reader is defensive: a malformed, truncated or unsupported file gets
// INVALID_ARGUMENT (NOT_FOUND for a missing file) with the reason, and no
// reader allocates more than the file's size justifies.
#ifndef SAE_CORE_DATASET_IO_H_
#define SAE_CORE_DATASET_IO_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace sae {

struct NpyReadOptions {
  // uint8 arrays are divided by 255 into [0, 1] (as for pixels) when set,
  // and converted as-is otherwise.
  bool scale_uint8 = true;
};

// Parses a .npy image held in memory: versions 1.0-3.0, little-endian
// float32 ('<f4'), float64 ('<f8') or uint8 ('|u1'), C order. A 1-D array
// becomes one row; dimensions after the first are flattened into columns
// (so [N, 28, 28] images become [N, 784]).
absl::StatusOr<RowMatrix> ParseNpy(absl::string_view bytes,
                                   const NpyReadOptions& options = {});
absl::StatusOr<RowMatrix> ReadNpy(const std::string& path,
                                  const NpyReadOptions& options = {});

// Serialises as a version 1.0 '<f4' .npy of shape [rows, cols].
std::string EncodeNpy(ConstMatrixRef m);
// Writes atomically and durably (file_util.h's ReplaceFileAtomically): a
// reader sees the old file or the whole new one, also after a crash.
absl::Status WriteNpy(const std::string& path, ConstMatrixRef m);

// CSV: one row per line, values separated by commas (spaces around them
// allowed), every row the same width. A first line that is not numeric is
// taken as a header and skipped. Blank lines are skipped.
// The only allocation is the result (4 bytes a value).
absl::StatusOr<RowMatrix> ParseCsv(absl::string_view text);
absl::StatusOr<RowMatrix> ReadCsv(const std::string& path);
// Written as WriteNpy is.
absl::Status WriteCsv(const std::string& path, ConstMatrixRef m);

// Raw little-endian float32, row-major, `cols` values per row. The file size
// must be a whole number of rows; rows = 0 infers the count from the size.
absl::StatusOr<RowMatrix> ReadRawFloat32(const std::string& path, int64_t cols,
                                         int64_t rows = 0);

enum class DatasetFormat { kAuto, kNpy, kCsv, kRawFloat32 };
absl::StatusOr<DatasetFormat> ParseDatasetFormat(absl::string_view name);

// Reads by format; kAuto picks by extension (.npy, .csv, .f32/.bin/.raw).
// raw_cols is required for raw float32.
absl::StatusOr<RowMatrix> ReadDataset(const std::string& path,
                                      DatasetFormat format = DatasetFormat::kAuto,
                                      int64_t raw_cols = 0);

}  // namespace sae

#endif  // SAE_CORE_DATASET_IO_H_
