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
    for (int64_t r = 0; r < n_refs; ++r) {
      const float* ref = refs + r * dim;
      for (int64_t q = 0; q < n_queries; ++q) {
        const float* query = queries + q * dim;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < dim; ++k) {
          const float diff = query[k] - ref[k];
          acc += diff * diff;
        }
        if (acc < local_d2[q]) {
          local_d2[q] = acc;
          local_index[q] = r;
        }
      }
    }
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

}  // namespace

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
