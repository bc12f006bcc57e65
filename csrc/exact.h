// The exact pair test shared by every epilogue: the squared Euclidean distance of two rows of the
// caller's original data, summed in double from differences of the (double-converted) values, as
// scikit-learn's tree searches evaluate it. The GEMM tiles only *classify* pairs; a pair whose
// float32 value lies within the error band of the threshold is decided here.
#pragma once

#include <cstdint>

namespace inform_fast {

// Rows of a row-major [n, dim] float32 or float64 array. ``scale`` (a power of two, 1 unless the
// values are too large to square in double) multiplies every element first, which changes no
// comparison against a threshold scaled the same way.
struct Rows {
  const void* data = nullptr;
  bool is_double = false;
  int64_t dim = 0;
  double scale = 1.0;
};

template <typename T>
inline double exact_d2_typed(const T* a, const T* b, int64_t dim, double scale) {
  double acc = 0.0;
  if (scale == 1.0) {
    for (int64_t k = 0; k < dim; ++k) {
      const double d = static_cast<double>(a[k]) - static_cast<double>(b[k]);
      acc += d * d;
    }
  } else {
    for (int64_t k = 0; k < dim; ++k) {
      const double d = static_cast<double>(a[k]) * scale - static_cast<double>(b[k]) * scale;
      acc += d * d;
    }
  }
  return acc;
}

// Squared distance between row i of ``a`` and row j of ``b`` (same dim, same scale).
inline double exact_d2(const Rows& a, int64_t i, const Rows& b, int64_t j) {
  const int64_t dim = a.dim;
  if (a.is_double && b.is_double)
    return exact_d2_typed(static_cast<const double*>(a.data) + i * dim, static_cast<const double*>(b.data) + j * dim, dim, a.scale);
  if (!a.is_double && !b.is_double)
    return exact_d2_typed(static_cast<const float*>(a.data) + i * dim, static_cast<const float*>(b.data) + j * dim, dim, a.scale);
  // mixed precision: promote both rows element by element
  double acc = 0.0;
  for (int64_t k = 0; k < dim; ++k) {
    const double x = a.is_double ? static_cast<const double*>(a.data)[i * dim + k] : static_cast<const float*>(a.data)[i * dim + k];
    const double y = b.is_double ? static_cast<const double*>(b.data)[j * dim + k] : static_cast<const float*>(b.data)[j * dim + k];
    const double d = x * a.scale - y * a.scale;
    acc += d * d;
  }
  return acc;
}

}  // namespace inform_fast
