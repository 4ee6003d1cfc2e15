#include "client/png_grid.h"

#include <png.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/mapped_file.h"

namespace sae::client {

void SquareTile(int64_t n, int* height, int* width) {
  const int64_t side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
  if (side * side == n) {
    *height = *width = static_cast<int>(side);
  } else {
    *height = 1;
    *width = static_cast<int>(n);
  }
}

absl::Status WriteTileGridPng(const std::string& path, ConstMatrixRef tiles,
                              const GridOptions& o) {
  if (o.tile_height < 1 || o.tile_width < 1 || o.columns < 1 || o.scale < 1 || o.gap < 0) {
    return absl::InvalidArgumentError("grid: tile size, columns and scale must be >= 1");
  }
  if (tiles.cols() != static_cast<int64_t>(o.tile_height) * o.tile_width) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grid: rows have ", tiles.cols(), " values, a ", o.tile_height, " x ", o.tile_width,
        " tile needs ", o.tile_height * o.tile_width));
  }
  if (tiles.rows() < 1) return absl::InvalidArgumentError("grid: no rows to draw");
  const int n = static_cast<int>(tiles.rows());
  const int cols = std::min(o.columns, n);
  const int rows = (n + cols - 1) / cols;
  const int th = o.tile_height * o.scale, tw = o.tile_width * o.scale;
  const int width = cols * tw + (cols + 1) * o.gap;
  const int height = rows * th + (rows + 1) * o.gap;
  std::vector<png_byte> image(static_cast<size_t>(width) * height, 128);
  for (int t = 0; t < n; ++t) {
    const auto row = tiles.row(t);
    float lo = 0.0f, hi = 1.0f;
    if (o.normalize_each) {
      lo = row.minCoeff();
      hi = row.maxCoeff();
      if (hi <= lo) hi = lo + 1.0f;
    }
    const int x0 = o.gap + (t % cols) * (tw + o.gap);
    const int y0 = o.gap + (t / cols) * (th + o.gap);
    for (int y = 0; y < th; ++y) {
      for (int x = 0; x < tw; ++x) {
        const float v = row[(y / o.scale) * o.tile_width + x / o.scale];
        const float u = std::clamp((v - lo) / (hi - lo), 0.0f, 1.0f);
        image[static_cast<size_t>(y0 + y) * width + x0 + x] =
            static_cast<png_byte>(std::lround(u * 255.0f));
      }
    }
  }
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return ErrnoToStatus(errno, "cannot create", path);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png != nullptr ? png_create_info_struct(png) : nullptr;
  if (png == nullptr || info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(f);
    return absl::InternalError(absl::StrCat("cannot encode PNG '", path, "'"));
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) png_write_row(png, image.data() + static_cast<size_t>(y) * width);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  if (std::fclose(f) != 0) return ErrnoToStatus(errno, "cannot write", path);
  return absl::OkStatus();
}

}  // namespace sae::client
