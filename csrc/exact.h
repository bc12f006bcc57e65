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

// Four rows j[0..3] of ``b`` against row i of ``a`` at once: each sum in exactly the order of
// exact_d2 (so the same values), the four independent, so that their additions and loads overlap
// instead of waiting on one another (one sum is a chain of ``dim`` dependent additions).
template <typename T>
inline void exact_d2_four_typed(const T* a, const T* b0, const T* b1, const T* b2, const T* b3, int64_t dim, double scale,
                                double* out) {
  double acc0 = 0.0, acc1 = 0.0, acc2 = 0.0, acc3 = 0.0;
  if (scale == 1.0) {
    for (int64_t k = 0; k < dim; ++k) {
      const double x = static_cast<double>(a[k]);
      const double d0 = x - static_cast<double>(b0[k]), d1 = x - static_cast<double>(b1[k]);
      const double d2 = x - static_cast<double>(b2[k]), d3 = x - static_cast<double>(b3[k]);
      acc0 += d0 * d0;
      acc1 += d1 * d1;
      acc2 += d2 * d2;
      acc3 += d3 * d3;
    }
  } else {
    for (int64_t k = 0; k < dim; ++k) {
      const double x = static_cast<double>(a[k]) * scale;
      const double d0 = x - static_cast<double>(b0[k]) * scale, d1 = x - static_cast<double>(b1[k]) * scale;
      const double d2 = x - static_cast<double>(b2[k]) * scale, d3 = x - static_cast<double>(b3[k]) * scale;
      acc0 += d0 * d0;
      acc1 += d1 * d1;
      acc2 += d2 * d2;
      acc3 += d3 * d3;
    }
  }
  out[0] = acc0;
  out[1] = acc1;
  out[2] = acc2;
  out[3] = acc3;
}

// Asks the caches for row j of ``b`` ahead of its exact test (the rows a search tests are
// scattered over the whole array: each test otherwise waits on memory).
inline void prefetch_row(const Rows& b, int64_t j) {
#if defined(__GNUC__)
  const int64_t bytes = b.dim * (b.is_double ? 8 : 4);
  const char* row = static_cast<const char*>(b.data) + j * bytes;
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(row + offset);
#else
  (void)b;
  (void)j;
#endif
}

// exact_d2 of row i of ``a`` and rows j[0..count) of ``b`` into out[0..count).
inline void exact_d2_many(const Rows& a, int64_t i, const Rows& b, const int64_t* j, int64_t count, double* out) {
  const int64_t dim = a.dim;
  int64_t t = 0;
  if (a.is_double == b.is_double) {
    for (; t + 4 <= count; t += 4) {
      if (a.is_double) {
        const double* rows = static_cast<const double*>(b.data);
        exact_d2_four_typed(static_cast<const double*>(a.data) + i * dim, rows + j[t] * dim, rows + j[t + 1] * dim,
                            rows + j[t + 2] * dim, rows + j[t + 3] * dim, dim, a.scale, out + t);
      } else {
        const float* rows = static_cast<const float*>(b.data);
        exact_d2_four_typed(static_cast<const float*>(a.data) + i * dim, rows + j[t] * dim, rows + j[t + 1] * dim,
                            rows + j[t + 2] * dim, rows + j[t + 3] * dim, dim, a.scale, out + t);
      }
    }
  }
  for (; t < count; ++t) out[t] = exact_d2(a, i, b, j[t]);
}

}  // namespace inform_fast
