// OpenBLAS, loaded at first use once its kernels are chosen.
//
// OpenBLAS (built with DYNAMIC_ARCH, as Debian's is) picks its kernels when
// it loads, from the CPU's model number, unless OPENBLAS_CORETYPE names them.
// A CPU newer than the library falls back to the generic Prescott (SSE3)
// kernels: on the development machine (an Intel family 6 model 207 with
// AVX-512, under OpenBLAS 0.3.21) that made every product about 4.5x slower
// than the AVX-512 kernels the same library ships. The variable must be set
// before the library's constructor runs, and the C library resets the
// environment after an executable's preinit functions, so the project does
// not link OpenBLAS: it sets OPENBLAS_CORETYPE from the CPU's features (when
// the user has not set it) and then dlopen()s the library.
//
// Internal to core/: everything else calls sae::Gemm (core/blas.h).
#ifndef SAE_CORE_OPENBLAS_H_
#define SAE_CORE_OPENBLAS_H_

#include <cblas.h>

#include <string>

namespace sae::openblas {

struct Api {
  decltype(&cblas_sgemm) sgemm;
  decltype(&cblas_sgemv) sgemv;
  std::string kernels;  // openblas_get_corename(), e.g. "SkylakeX"
};

// Loads the library on the first call (thread-safe) and runs it
// single-threaded. Exits the process with a message naming the library if
// it cannot be loaded (an installation error: see scripts/setup.sh).
const Api& Get();

}  // namespace sae::openblas

#endif  // SAE_CORE_OPENBLAS_H_
