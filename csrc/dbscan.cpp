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

static inline int64_t find_root(int64_t* parent, int64_t x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];  // path halving
    x = parent[x];
  }
  return x;
}

void dbscan_tile_union(const float* partial, int64_t rows, int64_t cols, const float* thr, const int64_t* row_ids,
                       const int64_t* col_ids, int64_t* parent, int64_t n) {
  // Phase 1 (parallel, read-only): with parent fully compressed, parent[id] is the root. A row
  // needs work only if some neighbour has another root; once the clusters have merged almost no
  // row does, and this branch-free, vectorised scan is all the tile costs.
  std::vector<char> busy(rows, 0);
  std::vector<int32_t> root_cols(cols);  // int32 snapshot (the binding checks n < 2^31): same width as float, SIMD-friendly
  for (int64_t j = 0; j < cols; ++j) root_cols[j] = static_cast<int32_t>(parent[col_ids[j]]);
  const int32_t* rc = root_cols.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = partial + i * cols;
    const float t = thr[i];
    const int32_t ri = static_cast<int32_t>(parent[row_ids[i]]);
    int32_t any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t j = 0; j < cols; ++j) any |= static_cast<int32_t>(row[j] <= t) & static_cast<int32_t>(rc[j] != ri);
    busy[i] = any != 0;
  }
  // Phase 2 (sequential, live union-find): after the first busy row of a cluster links its
  // neighbours, the next rows of that cluster find one root and link nothing more.
  bool changed = false;
  for (int64_t i = 0; i < rows; ++i) {
    if (!busy[i]) continue;
    const float* row = partial + i * cols;
    const float t = thr[i];
    int64_t ri = find_root(parent, row_ids[i]);
    for (int64_t j = 0; j < cols; ++j) {
      if (row[j] > t) continue;
      int64_t rj = find_root(parent, col_ids[j]);
      if (rj == ri) continue;
      if (rj < ri) std::swap(ri, rj);
      parent[rj] = ri;  // smaller index becomes the root
      changed = true;
    }
  }
  if (changed) {
#pragma omp parallel for schedule(static)
    for (int64_t x = 0; x < n; ++x) {
      int64_t r = x;
      while (parent[r] != r) r = parent[r];
      parent[x] = r;  // readers only; every write is a root, so concurrent chasing stays valid
    }
  }
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
