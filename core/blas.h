// Thin wrapper over OpenBLAS's single-precision GEMM for row-major Eigen
// views. Eigen's own product reaches about half of OpenBLAS's rate on the
// development machine, so every large product in the core goes through here.
#ifndef SAE_CORE_BLAS_H_
#define SAE_CORE_BLAS_H_

#include <string>

#include "core/tensor.h"

namespace sae {

enum class Transpose { kNo, kYes };

// C = alpha * op(A) * op(B) + beta * C, all row-major. Shapes must agree
// (checked with assertions in debug builds only: callers validate input).
// Large products are split into one block of C per thread (ParallelFor),
// each computed by single-threaded OpenBLAS. Thread-safe: a call made while
// the pool is busy runs on the calling thread alone.
void Gemm(Transpose trans_a, Transpose trans_b, float alpha, ConstMatrixRef a,
          ConstMatrixRef b, float beta, MatrixRef c);

// Sets how many threads one product (and ParallelFor) uses, process-wide.
// num_threads <= 0 means one per CPU the process may use (the default: its
// affinity mask, capped by a cgroup CPU quota; see core/cpu_count.h).
void SetBlasThreads(int num_threads);
int BlasThreads();

// The name of the kernel set OpenBLAS runs (for example "SkylakeX"). Unless
// OPENBLAS_CORETYPE is set, the project chooses it from the CPU's features
// at program start (see blas.cc).
std::string BlasKernels();

}  // namespace sae

#endif  // SAE_CORE_BLAS_H_
