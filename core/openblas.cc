#include "core/openblas.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

#ifndef SAE_OPENBLAS_SONAME
#define SAE_OPENBLAS_SONAME "libopenblas.so.0"
#endif

namespace sae::openblas {
namespace {

// The kernel set this CPU's features call for ("SkylakeX" for AVX-512,
// "Haswell" or "Zen" for AVX2 + FMA), or "" to leave the choice to OpenBLAS.
std::string KernelsForThisCpu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return __builtin_cpu_is("amd") ? "Zen" : "Haswell";
  }
  return "";
}

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "sae: cannot use OpenBLAS (%s): %s; install Debian's libopenblas0\n",
               SAE_OPENBLAS_SONAME, what);
  std::exit(70);  // EX_SOFTWARE
}

template <typename F>
F Symbol(void* lib, const char* name) {
  void* p = dlsym(lib, name);
  if (p == nullptr) Fail(name);
  return reinterpret_cast<F>(p);
}

Api Load() {
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr) {
    const std::string kernels = KernelsForThisCpu();
    if (!kernels.empty()) setenv("OPENBLAS_CORETYPE", kernels.c_str(), /*overwrite=*/0);
  }
  void* lib = dlopen(SAE_OPENBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) Fail(dlerror());
  Api api;
  api.sgemm = Symbol<decltype(&cblas_sgemm)>(lib, "cblas_sgemm");
  api.sgemv = Symbol<decltype(&cblas_sgemv)>(lib, "cblas_sgemv");
  // The project's own pool splits products over the cores (core/blas.cc).
  Symbol<decltype(&openblas_set_num_threads)>(lib, "openblas_set_num_threads")(1);
  const char* name = Symbol<decltype(&openblas_get_corename)>(lib, "openblas_get_corename")();
  api.kernels = name == nullptr ? "unknown" : name;
  return api;  // the library stays loaded for the life of the process
}

}  // namespace

const Api& Get() {
  static const Api api = Load();
  return api;
}

}  // namespace sae::openblas
