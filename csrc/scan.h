// The scan of a GEMM tile's row shared by the full-tile epilogues (DBSCAN's neighbour counts, the
// k-NN heaps): most values of a sparse tile are above the row's limit, so a chunk of values is
// compared as a vector first and only a chunk holding a candidate is walked one value at a time.
#pragma once

#include <algorithm>
#include <cstdint>

namespace inform_fast {

constexpr int64_t kScanChunk = 64;  // values compared with one vectorised pass before any scalar work

// Whether any of row[j0:j1] is at most ``limit``: the only work a chunk without a candidate costs.
inline bool any_at_most(const float* row, int64_t j0, int64_t j1, float limit) {
  int32_t any = 0;
#pragma omp simd reduction(| : any)
  for (int64_t j = j0; j < j1; ++j) any |= static_cast<int32_t>(row[j] <= limit);
  return any != 0;
}

// Calls take(j) for every j < cols with row[j] <= limit, in order, ``chunk`` values at a time.
template <typename Take>
inline void for_each_at_most(const float* row, int64_t cols, float limit, int64_t chunk, Take take) {
  for (int64_t j0 = 0; j0 < cols; j0 += chunk) {
    const int64_t j1 = std::min(cols, j0 + chunk);
    if (!any_at_most(row, j0, j1, limit)) continue;
    for (int64_t j = j0; j < j1; ++j)
      if (row[j] <= limit) take(j);
  }
}

}  // namespace inform_fast
