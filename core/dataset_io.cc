#include "core/dataset_io.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/file_util.h"
#include "core/mapped_file.h"

namespace sae {
namespace {

constexpr absl::string_view kNpyMagic = "\x93NUMPY";
constexpr size_t kMaxNpyHeader = 1 << 16;

absl::Status NpyError(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("malformed .npy: ", why));
}

// Parses the Python dict literal of a .npy header, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class NpyHeaderParser {
 public:
  explicit NpyHeaderParser(absl::string_view text) : s_(text) {}

  absl::Status Parse() {
    SkipSpace();
    if (!Eat('{')) return NpyError("header does not start with '{'");
    while (true) {
      SkipSpace();
      if (Eat('}')) break;
      std::optional<std::string> key = String();
      if (!key) return NpyError("expected a quoted key in the header");
      SkipSpace();
      if (!Eat(':')) return NpyError("expected ':' after a header key");
      SkipSpace();
      if (*key == "descr") {
        descr = String();
        if (!descr) return NpyError("'descr' is not a string");
      } else if (*key == "fortran_order") {
        if (Word("True")) {
          fortran_order = true;
        } else if (Word("False")) {
          fortran_order = false;
        } else {
          return NpyError("'fortran_order' is not True or False");
        }
      } else if (*key == "shape") {
        if (absl::Status st = Shape(); !st.ok()) return st;
      } else {
        return NpyError(absl::StrCat("unexpected header key '", *key, "'"));
      }
      SkipSpace();
      if (Eat(',')) continue;
      SkipSpace();
      if (Eat('}')) break;
      return NpyError("expected ',' or '}' in the header");
    }
    if (!descr || !fortran_order || !shape) {
      return NpyError("header lacks one of 'descr', 'fortran_order', 'shape'");
    }
    return absl::OkStatus();
  }

  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<std::vector<int64_t>> shape;

 private:
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' ||
                                s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Eat(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool Word(absl::string_view w) {
    if (s_.substr(pos_, w.size()) == w) {
      pos_ += w.size();
      return true;
    }
    return false;
  }
  std::optional<std::string> String() {
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) return {};
    const char quote = s_[pos_++];
    const size_t end = s_.find(quote, pos_);
    if (end == absl::string_view::npos || end - pos_ > 64) return {};
    std::string out(s_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return out;
  }
  absl::Status Shape() {
    if (!Eat('(')) return NpyError("'shape' is not a tuple");
    std::vector<int64_t> dims;
    while (true) {
      SkipSpace();
      if (Eat(')')) break;
      size_t start = pos_;
      while (pos_ < s_.size() && absl::ascii_isdigit(s_[pos_])) ++pos_;
      int64_t dim = 0;
      if (pos_ == start || pos_ - start > 18 ||
          !absl::SimpleAtoi(s_.substr(start, pos_ - start), &dim)) {
        return NpyError("'shape' holds something other than a whole number");
      }
      dims.push_back(dim);
      if (dims.size() > 8) return NpyError("more than 8 dimensions");
      SkipSpace();
      if (Eat(',')) continue;
      SkipSpace();
      if (Eat(')')) break;
      return NpyError("expected ',' or ')' in 'shape'");
    }
    shape = std::move(dims);
    return absl::OkStatus();
  }

  absl::string_view s_;
  size_t pos_ = 0;
};

template <typename T>
void ConvertInto(const char* src, int64_t count, float scale, float* dst) {
  for (int64_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    dst[i] = static_cast<float>(v) * scale;
  }
}

bool EndsWith(absl::string_view s, absl::string_view suffix) {
  return s.size() >= suffix.size() &&
         absl::AsciiStrToLower(s.substr(s.size() - suffix.size())) == suffix;
}

}  // namespace

absl::StatusOr<RowMatrix> ParseNpy(absl::string_view bytes,
                                   const NpyReadOptions& options) {
  if (bytes.size() < 10 || bytes.substr(0, 6) != kNpyMagic) {
    return NpyError("missing the \\x93NUMPY magic (not a .npy file)");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return NpyError("file ends inside the preamble");
    header_len = 0;
    for (int i = 0; i < 4; ++i) {
      header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i]))
                    << (8 * i);
    }
    header_start = 12;
  } else {
    return NpyError(absl::StrCat("unsupported format version ", major,
                                 "; expected 1, 2 or 3"));
  }
  if (header_len > kMaxNpyHeader) {
    return NpyError(absl::StrCat("header length ", header_len,
                                 " exceeds the limit of ", kMaxNpyHeader));
  }
  if (header_start + header_len > bytes.size()) {
    return NpyError(absl::StrCat("header length ", header_len,
                                 " runs past the end of the file (",
                                 bytes.size(), " bytes)"));
  }
  NpyHeaderParser header(bytes.substr(header_start, header_len));
  if (absl::Status s = header.Parse(); !s.ok()) return s;
  if (*header.fortran_order) {
    return absl::InvalidArgumentError(
        "unsupported .npy: Fortran order; save a C-order array "
        "(numpy.ascontiguousarray)");
  }
  size_t item_size = 0;
  const std::string& descr = *header.descr;
  if (descr == "<f4") {
    item_size = 4;
  } else if (descr == "<f8") {
    item_size = 8;
  } else if (descr == "|u1" || descr == "<u1") {
    item_size = 1;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported .npy dtype '", descr,
        "'; expected little-endian float32 '<f4', float64 '<f8' or uint8 '|u1'"));
  }
  const std::vector<int64_t>& shape = *header.shape;
  if (shape.empty()) return NpyError("a 0-dimensional array holds no rows");
  int64_t rows = shape.size() == 1 ? 1 : shape[0];
  int64_t cols = 1;
  for (size_t i = shape.size() == 1 ? 0 : 1; i < shape.size(); ++i) {
    if (shape[i] != 0 && cols > std::numeric_limits<int64_t>::max() / shape[i]) {
      return NpyError("shape overflows");
    }
    cols *= shape[i];
  }
  const size_t data_bytes = bytes.size() - header_start - header_len;
  if (rows != 0 && cols != 0 &&
      static_cast<uint64_t>(rows) >
          data_bytes / item_size / static_cast<uint64_t>(cols)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "truncated .npy: the header promises ", rows, " x ", cols,
        " values of ", item_size, " bytes but the file holds ", data_bytes,
        " data bytes"));
  }
  const uint64_t expected = static_cast<uint64_t>(rows) * cols * item_size;
  if (expected != data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed .npy: the header promises ", expected,
        " data bytes but the file holds ", data_bytes));
  }
  RowMatrix out(rows, cols);
  const char* src = bytes.data() + header_start + header_len;
  const int64_t count = rows * cols;
  if (item_size == 4) {
    std::memcpy(out.data(), src, static_cast<size_t>(count) * 4);
  } else if (item_size == 8) {
    ConvertInto<double>(src, count, 1.0f, out.data());
  } else {
    ConvertInto<uint8_t>(src, count, options.scale_uint8 ? 1.0f / 255.0f : 1.0f,
                         out.data());
  }
  return out;
}

absl::StatusOr<RowMatrix> ReadNpy(const std::string& path,
                                  const NpyReadOptions& options) {
  absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  absl::StatusOr<RowMatrix> m = ParseNpy((*file)->bytes(), options);
  if (!m.ok()) {
    return absl::Status(m.status().code(),
                        absl::StrCat(path, ": ", m.status().message()));
  }
  return m;
}

namespace {

// The magic, version 1.0, header length and the padded dict of a '<f4' .npy
// of shape [rows, cols]: what comes before the data.
std::string NpyPreamble(int64_t rows, int64_t cols) {
  std::string dict = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (",
                                  rows, ", ", cols, "), }");
  // Pad so that the data starts on a 64-byte boundary; end with '\n'.
  const size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict.push_back('\n');
  std::string out(kNpyMagic.data(), kNpyMagic.size());
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(dict.size() & 0xff));
  out.push_back(static_cast<char>((dict.size() >> 8) & 0xff));
  out.append(dict);
  return out;
}

absl::string_view RowBytes(ConstMatrixRef m, Eigen::Index r) {
  return absl::string_view(reinterpret_cast<const char*>(m.row(r).data()),
                           static_cast<size_t>(m.cols()) * sizeof(float));
}

}  // namespace

std::string EncodeNpy(ConstMatrixRef m) {
  std::string out = NpyPreamble(m.rows(), m.cols());
  out.reserve(out.size() + static_cast<size_t>(m.size()) * sizeof(float));
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    const absl::string_view row = RowBytes(m, r);
    out.append(row.data(), row.size());
  }
  return out;
}

absl::Status WriteNpy(const std::string& path, ConstMatrixRef m) {
  // Written from the matrix itself, not through a copy: datasets are large.
  const std::string preamble = NpyPreamble(m.rows(), m.cols());
  std::vector<absl::string_view> pieces = {preamble};
  if (m.rows() > 0 && m.outerStride() == m.cols()) {
    pieces.push_back(absl::string_view(reinterpret_cast<const char*>(m.data()),
                                       static_cast<size_t>(m.size()) * sizeof(float)));
  } else {
    for (Eigen::Index r = 0; r < m.rows(); ++r) pieces.push_back(RowBytes(m, r));
  }
  return ReplaceFileAtomically(path, pieces);
}

namespace {

// Parses every comma-separated field of `line` (spaces around values
// allowed), calling put(index, value); false at the first field that is not
// a number.
template <typename Put>
bool ParseCsvLine(absl::string_view line, Put put) {
  int64_t i = 0;
  for (absl::string_view field : absl::StrSplit(line, ',')) {
    float v;
    if (!absl::SimpleAtof(absl::StripAsciiWhitespace(field), &v)) return false;
    put(i++, v);
  }
  return true;
}

}  // namespace

absl::StatusOr<RowMatrix> ParseCsv(absl::string_view text) {
  // Two passes, so that the result is the only allocation: the first finds
  // the header, the width and the row count and checks every row's width
  // and that no field is empty; the second parses the values into place.
  // rows x cols is then the number of fields in the file, each at least two
  // bytes of it (a value and its separator), so a file of bare commas
  // cannot make the result outgrow twice the file.
  int64_t cols = -1, rows = 0, line_no = 0, header_line = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    if (cols < 0 && header_line == 0 && !ParseCsvLine(line, [](int64_t, float) {})) {
      header_line = line_no;  // a first line that is not numeric is a header
      continue;
    }
    int64_t fields = 0;
    for (absl::string_view field : absl::StrSplit(line, ',')) {
      if (absl::StripAsciiWhitespace(field).empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("CSV line ", line_no, ": value ", fields + 1, " is empty"));
      }
      ++fields;
    }
    if (cols < 0) cols = fields;
    if (fields != cols) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CSV line ", line_no, " has ", fields, " values, earlier rows have ", cols));
    }
    ++rows;
  }
  if (rows == 0) return absl::InvalidArgumentError("CSV holds no data rows");
  RowMatrix out(rows, cols);
  int64_t r = 0;
  line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line_no == header_line) continue;
    float* row = out.row(r++).data();
    if (!ParseCsvLine(line, [row](int64_t i, float v) { row[i] = v; })) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CSV line ", line_no, ": a value is not a number"));
    }
  }
  return out;
}

absl::StatusOr<RowMatrix> ReadCsv(const std::string& path) {
  absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  absl::StatusOr<RowMatrix> m = ParseCsv((*file)->bytes());
  if (!m.ok()) {
    return absl::Status(m.status().code(),
                        absl::StrCat(path, ": ", m.status().message()));
  }
  return m;
}

absl::Status WriteCsv(const std::string& path, ConstMatrixRef m) {
  std::string out;
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    for (Eigen::Index c = 0; c < m.cols(); ++c) {
      if (c > 0) out.push_back(',');
      absl::StrAppend(&out, m(r, c));
    }
    out.push_back('\n');
  }
  return ReplaceFileAtomically(path, out);
}

absl::StatusOr<RowMatrix> ReadRawFloat32(const std::string& path, int64_t cols,
                                         int64_t rows) {
  if (cols < 1) {
    return absl::InvalidArgumentError(
        "raw float32 needs the row width (columns >= 1)");
  }
  if (rows < 0) return absl::InvalidArgumentError("rows must be >= 0");
  absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  const absl::string_view bytes = (*file)->bytes();
  if (static_cast<uint64_t>(cols) > bytes.size() / sizeof(float)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": one row of ", cols, " float32 values is larger than the file (",
        bytes.size(), " bytes)"));
  }
  const uint64_t row_bytes = static_cast<uint64_t>(cols) * sizeof(float);
  if (bytes.size() % row_bytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", bytes.size(), " bytes is not a whole number of rows of ",
        cols, " float32 values"));
  }
  const int64_t have = static_cast<int64_t>(bytes.size() / row_bytes);
  if (rows == 0) rows = have;
  if (rows != have) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": expected ", rows, " rows of ", cols, " float32 values, the file holds ",
        have));
  }
  if (rows == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  RowMatrix out(rows, cols);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

absl::StatusOr<DatasetFormat> ParseDatasetFormat(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "auto" || lower.empty()) return DatasetFormat::kAuto;
  if (lower == "npy") return DatasetFormat::kNpy;
  if (lower == "csv") return DatasetFormat::kCsv;
  if (lower == "f32" || lower == "raw" || lower == "float32") {
    return DatasetFormat::kRawFloat32;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown dataset format '", name, "'; expected auto, npy, csv or f32"));
}

absl::StatusOr<RowMatrix> ReadDataset(const std::string& path,
                                      DatasetFormat format, int64_t raw_cols) {
  if (format == DatasetFormat::kAuto) {
    if (EndsWith(path, ".npy")) {
      format = DatasetFormat::kNpy;
    } else if (EndsWith(path, ".csv")) {
      format = DatasetFormat::kCsv;
    } else if (EndsWith(path, ".f32") || EndsWith(path, ".bin") ||
               EndsWith(path, ".raw")) {
      format = DatasetFormat::kRawFloat32;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot tell the format of '", path,
          "' from its extension; expected .npy, .csv or .f32 (or name the format)"));
    }
  }
  switch (format) {
    case DatasetFormat::kNpy:
      return ReadNpy(path);
    case DatasetFormat::kCsv:
      return ReadCsv(path);
    case DatasetFormat::kRawFloat32:
      return ReadRawFloat32(path, raw_cols);
    case DatasetFormat::kAuto:
      break;
  }
  return absl::InternalError("unreachable dataset format");
}

}  // namespace sae
