// Pictures for people: rows of a matrix drawn as a grid of grayscale tiles
// in a PNG (libpng).
#ifndef SAE_CLIENT_PNG_GRID_H_
#define SAE_CLIENT_PNG_GRID_H_

#include <string>

#include "absl/status/status.h"
#include "core/tensor.h"

namespace sae::client {

struct GridOptions {
  int tile_height = 28;
  int tile_width = 28;
  int columns = 10;          // tiles per grid row
  int scale = 2;             // each value becomes scale x scale pixels
  int gap = 2;               // pixels between tiles (drawn mid-grey)
  // Each tile stretched to its own [min, max] (for features, whose values
  // have no fixed range); otherwise values are clipped to [0, 1].
  bool normalize_each = false;
};

// Writes rows of `tiles` (each tile_height * tile_width values) as a PNG.
// INVALID_ARGUMENT when the row width is not tile_height * tile_width.
absl::Status WriteTileGridPng(const std::string& path, ConstMatrixRef tiles,
                              const GridOptions& options);

// Guesses a square tile (28 x 28 for 784 values); 1 x n when n is not square.
void SquareTile(int64_t n, int* height, int* width);

}  // namespace sae::client

#endif  // SAE_CLIENT_PNG_GRID_H_
