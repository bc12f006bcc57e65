// DBSCAN tile epilogues (see ops.h): neighbour counts + capped lists, union-find, both with the
// exact test of the pairs inside the error band. OpenMP over tile rows.
#include <algorithm>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bound_block.h"
#include "ops.h"
#include "scan.h"

namespace inform_fast {

namespace {

// Certain neighbours in row[j0:j1] and whether any pair needs the exact test.
inline void summarise(const float* row, int64_t j0, int64_t j1, float lo, float hi, int64_t& sure, bool& maybe) {
  int64_t s = 0;
  int32_t m = 0;
#pragma omp simd reduction(+ : s) reduction(| : m)
  for (int64_t j = j0; j < j1; ++j) {
    const float v = row[j];
    s += v <= lo;
    m |= static_cast<int32_t>(v > lo) & static_cast<int32_t>(v <= hi);
  }
  sure = s;
  maybe = m != 0;
}

// Column of each id in the tile (-1 if absent), by binary search in the sorted (id, column) pairs.
struct ColumnOf {
  std::vector<std::pair<int64_t, int64_t>> sorted;
  ColumnOf(const int64_t* col_ids, int64_t cols) : sorted(cols) {
    for (int64_t j = 0; j < cols; ++j) sorted[j] = {col_ids[j], j};
    std::sort(sorted.begin(), sorted.end());
  }
  int64_t operator()(int64_t id) const {
    auto it = std::lower_bound(sorted.begin(), sorted.end(), std::make_pair(id, int64_t{-1}));
    return (it != sorted.end() && it->first == id) ? it->second : -1;
  }
};

inline int64_t find_root(int64_t* parent, int64_t x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];  // path halving
    x = parent[x];
  }
  return x;
}

// Joins the components of a and b: the larger root goes under the smaller, so every root stays
// the smallest index of its component.
inline void link(int64_t* parent, int64_t a, int64_t b) {
  int64_t ra = find_root(parent, a), rb = find_root(parent, b);
  if (ra == rb) return;
  if (ra < rb) std::swap(ra, rb);
  parent[ra] = rb;
}

// Full compression: every entry its root.
inline void compress(int64_t* parent, int64_t n) {
  for (int64_t x = 0; x < n; ++x) parent[x] = find_root(parent, x);
}

}  // namespace

int64_t dbscan_tile_neighbours(const float* partial, int64_t rows, int64_t cols, const float* thr_lo, const float* thr_hi,
                               const int64_t* row_ids, const int64_t* col_ids, const Rows& points, double eps2,
                               int32_t* counts, int32_t* lists, int64_t cap, int threads) {
  int64_t exact_tests = 0;
  const ColumnOf column_of(col_ids, cols);
#pragma omp parallel for schedule(dynamic, 4) reduction(+ : exact_tests) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = partial + i * cols;
    const float lo = thr_lo[i], hi = thr_hi[i];
    const int64_t id = row_ids[i];
    const int64_t self = column_of(id);  // the row's own column, never its neighbour
    int32_t count = counts[id];
    int32_t* list = lists + id * cap;
    for (int64_t j0 = 0; j0 < cols; j0 += kScanChunk) {
      const int64_t j1 = std::min(cols, j0 + kScanChunk);
      if (!any_at_most(row, j0, j1, hi)) continue;
      if (count >= cap) {  // the list is full: count the certain pairs, test only the band's
        int64_t sure = 0;
        bool maybe = false;
        summarise(row, j0, j1, lo, hi, sure, maybe);
        if (!maybe) {
          count += static_cast<int32_t>(sure - (self >= j0 && self < j1 && row[self] <= lo));
          continue;
        }
      }
      for (int64_t j = j0; j < j1; ++j) {
        const float v = row[j];
        if (v > hi || j == self) continue;
        if (v > lo) {
          ++exact_tests;
          if (!(exact_d2(points, id, points, col_ids[j]) <= eps2)) continue;
        }
        if (count < cap) list[count] = static_cast<int32_t>(col_ids[j]);
        ++count;
      }
    }
    counts[id] = count;
  }
  return exact_tests;
}

int64_t dbscan_bound_neighbours(const float* rows_low, int64_t rows, const float* cols_low_t, int64_t stride, int64_t cols,
                                int64_t dim, const float* col_norm, const double* thr_hi, const int64_t* row_ids,
                                const int64_t* col_ids, const Rows& points, double eps2, int32_t* counts, int32_t* lists,
                                int64_t cap, int64_t budget, bool portable) {
  const auto visit = [&](int64_t i, int, int64_t j0, const float* value, float& limit) -> int64_t {
    const int64_t id = row_ids[i];
    int64_t ids[bound::kBoundWidth];
    int64_t count = 0;
    for (int64_t j = 0; j < bound::kBoundWidth && j0 + j < cols; ++j)
      if (value[j] <= limit && col_ids[j0 + j] != id) ids[count++] = col_ids[j0 + j];
    double d2[bound::kBoundWidth];
    exact_d2_many(points, id, points, ids, count, d2);
    int32_t found = counts[id];
    int32_t* list = lists + id * cap;
    for (int64_t t = 0; t < count; ++t) {
      if (!(d2[t] <= eps2)) continue;
      if (found < cap) list[found] = static_cast<int32_t>(ids[t]);
      ++found;
    }
    counts[id] = found;
    return count;
  };
  return bound::scan_tile(bound::Tile{rows_low, cols_low_t, col_norm, dim, stride}, rows, budget, portable,
                          [&](int64_t i) { return bound::round_up(thr_hi[i]); }, visit);
}

int64_t tile_count_at_most(const float* partial, int64_t rows, int64_t cols, const float* thr_hi, int64_t budget) {
  int64_t total = 0;
  for (int64_t i = 0; i < rows && total <= budget; ++i) {
    const float* row = partial + i * cols;
    const float hi = thr_hi[i];
    int64_t count = 0;
#pragma omp simd reduction(+ : count)
    for (int64_t j = 0; j < cols; ++j) count += row[j] <= hi;
    total += count;
  }
  return total;
}

int64_t dbscan_tile_union(const float* partial, int64_t rows, int64_t cols, const float* thr_lo, const float* thr_hi,
                          const int64_t* row_ids, const int64_t* col_ids, const Rows& points, double eps2,
                          int64_t* parent, int64_t n, int threads) {
  // Phase 1 (parallel, read-only): with parent fully compressed, parent[id] is the root. A row
  // needs work only if a possible neighbour has another root; once the clusters have merged almost
  // no row does, and this vectorised scan is all the tile costs.
  std::vector<char> busy(rows, 0);
  std::vector<int32_t> root_cols(cols);  // int32 snapshot (the binding checks n < 2^31): as wide as float
  for (int64_t j = 0; j < cols; ++j) root_cols[j] = static_cast<int32_t>(parent[col_ids[j]]);
  const int32_t* rc = root_cols.data();
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = partial + i * cols;
    const float hi = thr_hi[i];
    const int32_t ri = static_cast<int32_t>(parent[row_ids[i]]);
    int32_t any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t j = 0; j < cols; ++j) any |= static_cast<int32_t>(row[j] <= hi) & static_cast<int32_t>(rc[j] != ri);
    busy[i] = any != 0;
  }
  // Phase 2 (sequential, live union-find): after the first busy row of a cluster links its
  // neighbours, the next rows of that cluster find one root and link nothing more.
  int64_t exact_tests = 0;
  bool changed = false;
  for (int64_t i = 0; i < rows; ++i) {
    if (!busy[i]) continue;
    const float* row = partial + i * cols;
    const float lo = thr_lo[i], hi = thr_hi[i];
    for (int64_t j = 0; j < cols; ++j) {
      if (row[j] > hi) continue;
      int64_t ri = find_root(parent, row_ids[i]);
      int64_t rj = find_root(parent, col_ids[j]);
      if (rj == ri) continue;
      if (row[j] > lo) {
        ++exact_tests;
        if (!(exact_d2(points, row_ids[i], points, col_ids[j]) <= eps2)) continue;
      }
      if (rj < ri) std::swap(ri, rj);
      parent[rj] = ri;  // smaller index becomes the root
      changed = true;
    }
  }
  if (changed) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t x = 0; x < n; ++x) {
      int64_t r = x;
      while (parent[r] != r) r = parent[r];
      parent[x] = r;  // readers only; every write is a root, so concurrent chasing stays valid
    }
  }
  return exact_tests;
}

void union_edges(int64_t* parent, int64_t n, const int64_t* edge_a, const int64_t* edge_b, int64_t n_edges) {
  for (int64_t e = 0; e < n_edges; ++e) link(parent, edge_a[e], edge_b[e]);
  compress(parent, n);
}

void union_lists(int64_t* parent, int64_t n, const int32_t* lists, int64_t cap, const int32_t* counts, const bool* core) {
  for (int64_t i = 0; i < n; ++i) {
    if (!core[i]) continue;
    const int32_t* list = lists + i * cap;
    const int64_t listed = std::min<int64_t>(counts[i], cap);
    for (int64_t t = 0; t < listed; ++t) {
      if (core[list[t]]) link(parent, i, list[t]);
    }
  }
  compress(parent, n);
}

}  // namespace inform_fast
