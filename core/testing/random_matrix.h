// Seeded random matrices for the core's tests.
#ifndef SAE_CORE_TESTING_RANDOM_MATRIX_H_
#define SAE_CORE_TESTING_RANDOM_MATRIX_H_

#include <cstdint>
#include <random>

#include "core/tensor.h"

namespace sae::testing {

// rows x cols standard normal values, the same for the same seed.
inline RowMatrix RandomNormal(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n;
  RowMatrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

}  // namespace sae::testing

#endif  // SAE_CORE_TESTING_RANDOM_MATRIX_H_
