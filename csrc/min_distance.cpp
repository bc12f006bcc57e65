// Nearest reference on the CPU (see ops.h):
// * nearest_reference: exact search by direct squared differences, so there is no
//   ||q||^2 + ||r||^2 - 2 q.r cancellation; OpenMP over reference chunks, then a reduction.
// * nearest_tile_update: the epilogue of the GEMM tiles (many queries): a row-wise argmin of
//   ||r||^2 - 2 q.r merged into the running best, OpenMP over rows.
#include <algorithm>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops.h"

namespace inform_fast {

namespace {

// Runtime-dispatched SIMD width (AVX-512 / AVX2 / baseline) where the compiler supports it; the
// build flags stay portable.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INFORM_FAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define INFORM_FAST_CLONES
#endif

// Smallest norm[j] + row[j]; a pure min reduction, so it vectorizes.
INFORM_FAST_CLONES float row_min(const float* row, const float* norm, int64_t cols) {
  float m = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : m)
  for (int64_t j = 0; j < cols; ++j) m = std::min(m, norm[j] + row[j]);
  return m;
}

inline void keep(float d2, int64_t r, float* best_d2, int64_t* best_index) {
  if (d2 < best_d2[0]) {  // strict: an earlier reference keeps its index on a tie
    best_d2[0] = d2;
    best_index[0] = r;
  }
}

// Squared distance from reference row r to every query; keeps the strictly smaller ones. Four
// queries at a time: four independent accumulators hide the add latency, and each reference
// element is loaded once for the four.
INFORM_FAST_CLONES void compare_reference(const float* ref, int64_t r, const float* queries, int64_t n_queries,
                                          int64_t dim, float* best_d2, int64_t* best_index) {
  int64_t q = 0;
  for (; q + 4 <= n_queries; q += 4) {
    const float* q0 = queries + q * dim;
    const float *q1 = q0 + dim, *q2 = q1 + dim, *q3 = q2 + dim;
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t k = 0; k < dim; ++k) {
      const float x = ref[k], d0 = q0[k] - x, d1 = q1[k] - x, d2 = q2[k] - x, d3 = q3[k] - x;
      a0 += d0 * d0;
      a1 += d1 * d1;
      a2 += d2 * d2;
      a3 += d3 * d3;
    }
    keep(a0, r, best_d2 + q, best_index + q);
    keep(a1, r, best_d2 + q + 1, best_index + q + 1);
    keep(a2, r, best_d2 + q + 2, best_index + q + 2);
    keep(a3, r, best_d2 + q + 3, best_index + q + 3);
  }
  for (; q < n_queries; ++q) {
    const float* query = queries + q * dim;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < dim; ++k) {
      const float diff = query[k] - ref[k];
      acc += diff * diff;
    }
    keep(acc, r, best_d2 + q, best_index + q);
  }
}

}  // namespace

void nearest_reference(const float* queries, int64_t n_queries, const float* refs, int64_t n_refs,
                       int64_t dim, float* best_d2, int64_t* best_index) {
  for (int64_t q = 0; q < n_queries; ++q) {
    best_d2[q] = std::numeric_limits<float>::infinity();
    best_index[q] = -1;
  }
#pragma omp parallel
  {
    std::vector<float> local_d2(n_queries, std::numeric_limits<float>::infinity());
    std::vector<int64_t> local_index(n_queries, -1);
    // References are the long axis: each thread streams its own contiguous chunk once and
    // compares it against every query while the row is in cache.
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n_refs; ++r)
      compare_reference(refs + r * dim, r, queries, n_queries, dim, local_d2.data(), local_index.data());
#pragma omp critical
    for (int64_t q = 0; q < n_queries; ++q) {
      if (local_index[q] < 0) continue;
      if (local_d2[q] < best_d2[q] || (local_d2[q] == best_d2[q] && local_index[q] < best_index[q])) {
        best_d2[q] = local_d2[q];
        best_index[q] = local_index[q];
      }
    }
  }
}

void nearest_tile_update(const float* tile, int64_t rows, int64_t cols, const float* col_norm, int64_t col_offset,
                         float* best, int64_t* best_index) {
#pragma omp parallel for schedule(static) if (rows * cols >= (int64_t{1} << 16))
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = tile + i * cols;
    const float m = row_min(row, col_norm, cols);
    if (!(m < best[i])) continue;  // strict: an earlier tile keeps its (smaller) index on a tie
    // The minimum improved (rare after the first tiles): find its first column. The sum is
    // recomputed exactly as in row_min, so the comparison is an equality of identical values.
    int64_t j = 0;
    while (j + 1 < cols && col_norm[j] + row[j] != m) ++j;
    best[i] = m;
    best_index[i] = col_offset + j;
  }
}

}  // namespace inform_fast
