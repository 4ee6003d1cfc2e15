// Masks for AVX-512 loops over 16 floats at a time: internal to the core's
// kernels (packed_gemm.cc, topk_screen.cc). x86-64 only.
#ifndef SAE_CORE_LANE_MASKS_H_
#define SAE_CORE_LANE_MASKS_H_

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

namespace sae {

// The mask of the first `count` of 16 lanes: all for count >= 16, none for
// count <= 0. For a tail of n values loaded as two halves of 32, the masks
// are FirstLanes(n) and FirstLanes(n - 16).
inline __mmask16 FirstLanes(int64_t count) {
  if (count >= 16) return 0xFFFF;
  return count <= 0 ? 0 : static_cast<__mmask16>((1u << count) - 1);
}

}  // namespace sae

#endif  // defined(__x86_64__)
#endif  // SAE_CORE_LANE_MASKS_H_
