// Exact nearest-reference search on the CPU (see ops.h): direct squared differences, so there is
// no ||q||^2 + ||r||^2 - 2 q.r cancellation; OpenMP over reference chunks, then a reduction.
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

}  // namespace inform_fast
