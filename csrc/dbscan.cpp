// Fused DBSCAN tile epilogues and union-find (see ops.h). OpenMP over tile rows.
#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops.h"

namespace inform_fast {

void dbscan_tile_counts(const float* partial, int64_t rows, int64_t cols, const float* thr,
                        int64_t* count_rows, int64_t* count_cols) {
#pragma omp parallel
  {
    // Column counts are accumulated per thread and reduced once, avoiding atomics in the loop.
    std::vector<int32_t> local(count_cols != nullptr ? cols : 0, 0);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const float* row = partial + i * cols;
      const float t = thr[i];
      int64_t c = 0;
      if (count_cols != nullptr) {
        int32_t* lc = local.data();
        for (int64_t j = 0; j < cols; ++j) {
          const int32_t hit = row[j] <= t;
          c += hit;
          lc[j] += hit;
        }
      } else {
#pragma omp simd reduction(+ : c)
        for (int64_t j = 0; j < cols; ++j) c += row[j] <= t;
      }
      count_rows[i] += c;
    }
    if (count_cols != nullptr) {
#pragma omp critical
      for (int64_t j = 0; j < cols; ++j) count_cols[j] += local[j];
    }
  }
}

void dbscan_tile_root_edges(const float* partial, int64_t rows, int64_t cols, const float* thr,
                            const int64_t* root_rows, const int64_t* root_cols, int64_t n_roots,
                            std::vector<int64_t>& edge_a, std::vector<int64_t>& edge_b) {
#pragma omp parallel
  {
    std::vector<int64_t> a, b;
    // seen[root] == i + 1 when row i already emitted an edge to that root.
    std::vector<int64_t> seen(n_roots, 0);
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < rows; ++i) {
      const float* row = partial + i * cols;
      const float t = thr[i];
      const int64_t ri = root_rows[i];
      for (int64_t j = 0; j < cols; ++j) {
        if (row[j] <= t) {
          const int64_t rj = root_cols[j];
          if (rj != ri && seen[rj] != i + 1) {
            seen[rj] = i + 1;
            a.push_back(ri);
            b.push_back(rj);
          }
        }
      }
    }
#pragma omp critical
    {
      edge_a.insert(edge_a.end(), a.begin(), a.end());
      edge_b.insert(edge_b.end(), b.begin(), b.end());
    }
  }
}

static inline int64_t find_root(int64_t* parent, int64_t x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];  // path halving
    x = parent[x];
  }
  return x;
}

void union_edges(int64_t* parent, int64_t n, const int64_t* edge_a, const int64_t* edge_b, int64_t n_edges) {
  for (int64_t e = 0; e < n_edges; ++e) {
    int64_t ra = find_root(parent, edge_a[e]);
    int64_t rb = find_root(parent, edge_b[e]);
    if (ra == rb) continue;
    if (ra < rb) std::swap(ra, rb);
    parent[ra] = rb;  // smaller index becomes the root
  }
  for (int64_t x = 0; x < n; ++x) parent[x] = find_root(parent, x);
}

}  // namespace inform_fast
