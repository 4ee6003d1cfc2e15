// Products of a few rows through a fixed weight matrix, as a served model
// computes them: C += A B with A [m, k] small (one request, or a batch of a
// few dozen merged requests) and B [k, n] a layer's weights.
//
// OpenBLAS's sgemm copies ("packs") all of B into its own layout on every
// call; for a few rows that copy costs as much as the arithmetic (a 32-row
// product through 784 x 4096 reached 130 GFLOP/s, against 280 for a large
// one). A PackedMatrix makes that copy once: B is stored as column panels of
// kPanelWidth columns, each panel's k x kPanelWidth values contiguous, so a
// product streams B once, in order, with each panel re-read from L2 for each
// block of rows.
//
// Zeros of A cost little: a block of rows skips the steps of k where all
// its rows are zero, so a decoder's input (sparse codes, a few percent
// nonzero) reads only the weight rows of its active units.
//
// Results: each element of C is its old value plus the sum over k taken in
// order (fused multiply-adds where the CPU has them), independent of m, of
// the other rows, and of the thread count. So a row computed alone and the
// same row computed in a batch are bitwise equal (for finite B: a skipped
// step would add an exact zero; up to the sign of a zero result). They
// differ from sgemm's results by float rounding.
#ifndef SAE_CORE_PACKED_GEMM_H_
#define SAE_CORE_PACKED_GEMM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace sae {

class PackedMatrix {
 public:
  static constexpr int64_t kPanelWidth = 32;

  // Copies b [k, n] into panels (the last one zero-padded). Uses
  // k * round_up(n, kPanelWidth) floats.
  explicit PackedMatrix(ConstMatrixRef b);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t panels() const { return panels_; }
  // Panel p: rows() x kPanelWidth floats, row-major, 64-byte aligned.
  const float* panel(int64_t p) const { return data_.get() + p * rows_ * kPanelWidth; }

 private:
  struct FreeAligned {
    void operator()(float* p) const;
  };
  int64_t rows_ = 0, cols_ = 0, panels_ = 0;
  std::unique_ptr<float[], FreeAligned> data_;
};

// C += A B for A [m, k], b packed from [k, n], C [m, n]. Shapes must agree
// (assertions in debug builds). Splits the panels over ParallelFor's threads.
// Runs the widest kernel the CPU has (AVX-512, AVX2 with FMA, or plain C++),
// chosen at run time, so binaries built for a baseline CPU still use it.
void MultiplyAddPacked(ConstMatrixRef a, const PackedMatrix& b, MatrixRef c);

// Name of the kernel MultiplyAddPacked runs on this CPU: "avx512", "avx2" or
// "generic".
const char* PackedKernelName();

// For tests: every kernel name this CPU can run (widest first), and
// MultiplyAddPacked with a named one (false when the CPU cannot run it).
namespace packed_internal {
std::vector<std::string> UsableKernelNames();
bool MultiplyAddPackedWith(const std::string& kernel, ConstMatrixRef a, const PackedMatrix& b,
                           MatrixRef c);
}  // namespace packed_internal

}  // namespace sae

#endif  // SAE_CORE_PACKED_GEMM_H_
