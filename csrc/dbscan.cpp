// DBSCAN's tiles (see ops.h): neighbour counts + capped lists and union-find from the panel kernel
// (panel_block.h), both with the exact test of the pairs inside the error band; the union-find
// over listed edges.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bound_block.h"  // bound::round_up
#include "frame.h"
#include "ops.h"
#include "panel_block.h"

namespace inform_fast {

namespace {

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

template <typename T>
void pack_panels(const T* source, int64_t dim, const int64_t* ids, int64_t cols, const T* mean, double scale,
                 const float* centre, float* panels, float* norm) {
  using panel::kPanelWidth;
  constexpr int64_t kAhead = 8;  // rows requested ahead: the ids are scattered over the source
  const int64_t n_panels = (cols + kPanelWidth - 1) / kPanelWidth;
  for (int64_t j = 0; j < n_panels * kPanelWidth; ++j) {
    float* out = panels + (j / kPanelWidth) * dim * kPanelWidth + j % kPanelWidth;
    if (j >= cols) {
      for (int64_t d = 0; d < dim; ++d) out[d * kPanelWidth] = 0.0f;
      norm[j] = std::numeric_limits<float>::infinity();
      continue;
    }
    if (j + kAhead < cols) {
      const char* next = reinterpret_cast<const char*>(source + ids[j + kAhead] * dim);
      for (int64_t b = 0; b < dim * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(next + b);
    }
    const T* row = source + ids[j] * dim;
    double sum = 0.0;
    for (int64_t d = 0; d < dim; ++d) {
      // the frame's value rounded once to float (float input: a float difference, then an exact
      // power-of-two scale), then the tile's centre subtracted in float: spatial.frame_rows, then ``c -= centre``
      float v = static_cast<float>(mean != nullptr ? frame_value(row[d], mean[d], scale, true) : row[d]);
      if (centre != nullptr) v -= centre[d];
      out[d * kPanelWidth] = v;
      sum += static_cast<double>(v) * v;
    }
    norm[j] = static_cast<float>(sum);
  }
}

template void pack_panels<float>(const float*, int64_t, const int64_t*, int64_t, const float*, double, const float*,
                                 float*, float*);
template void pack_panels<double>(const double*, int64_t, const int64_t*, int64_t, const double*, double, const float*,
                                  float*, float*);

namespace {

// A tile's float64 thresholds rounded outwards to float (lo down, hi up: a value the float
// comparison takes is one the exact comparison takes); no lo: -inf (a lower-bound tile).
struct Thresholds {
  std::vector<float> lo, hi;
  Thresholds(const double* thr_lo, const double* thr_hi, int64_t rows) : lo(rows), hi(rows) {
    for (int64_t i = 0; i < rows; ++i) {
      hi[i] = bound::round_up(thr_hi[i]);
      lo[i] = thr_lo == nullptr ? -std::numeric_limits<float>::infinity() : -bound::round_up(-thr_lo[i]);
    }
  }
};

// Each row's own column in the tile (-1 where absent): never its own neighbour.
std::vector<int64_t> own_columns(const int64_t* row_ids, int64_t rows, const int64_t* col_ids, int64_t cols) {
  const ColumnOf column_of(col_ids, cols);
  std::vector<int64_t> own(rows);
  for (int64_t i = 0; i < rows; ++i) own[i] = column_of(row_ids[i]);
  return own;
}

}  // namespace

int64_t dbscan_panel_neighbours(const float* rows, int64_t n_rows, int64_t dim, const float* panels, const float* col_norm,
                                int64_t cols, const double* thr_lo, const double* thr_hi, const int64_t* row_ids,
                                const int64_t* col_ids, const Rows& points, double eps2, int32_t* counts, int32_t* lists,
                                int64_t cap, int64_t budget, bool portable) {
  using panel::kPanelWidth;
  const std::vector<int64_t> own = own_columns(row_ids, n_rows, col_ids, cols);
  const auto visit = [&](int64_t i, int64_t p, uint32_t below_lo, uint32_t mask) -> int64_t {
    const int64_t j0 = p * kPanelWidth;
    if (own[i] >= j0 && own[i] < j0 + kPanelWidth) mask &= ~(uint32_t{1} << (own[i] - j0));
    const uint32_t sure = below_lo & mask;
    const uint32_t band = mask & ~sure;
    const int64_t id = row_ids[i];
    int32_t count = counts[id];
    if (band == 0 && count >= cap) {  // a full list and no pair to test: only the count moves
      counts[id] = count + __builtin_popcount(sure);
      return 0;
    }
    // the band's pairs tested together (four sums at once), then taken in column order
    int64_t tested[kPanelWidth];
    double d2[kPanelWidth];
    int64_t n_tested = 0;
    for (uint32_t b = band; b != 0; b &= b - 1) tested[n_tested++] = col_ids[j0 + __builtin_ctz(b)];
    exact_d2_many(points, id, points, tested, n_tested, d2);
    if (count >= cap) {
      count += __builtin_popcount(sure);
      for (int64_t t = 0; t < n_tested; ++t) count += d2[t] <= eps2;
    } else {
      int32_t* list = lists + id * cap;
      int64_t t = 0;
      for (uint32_t b = mask; b != 0; b &= b - 1) {
        const int j = __builtin_ctz(b);
        if ((band >> j) & 1u) {
          if (!(d2[t++] <= eps2)) continue;
        }
        if (count < cap) list[count] = static_cast<int32_t>(col_ids[j0 + j]);
        ++count;
      }
    }
    counts[id] = count;
    return n_tested;
  };
  const panel::Operands t{rows, panels, col_norm, n_rows, (cols + kPanelWidth - 1) / kPanelWidth, dim};
  const Thresholds thr(thr_lo, thr_hi, n_rows);
  return panel::scan(t, thr.lo.data(), thr.hi.data(), budget, portable, visit);
}

int64_t dbscan_panel_union(const float* rows, int64_t n_rows, int64_t dim, const float* panels, const float* col_norm,
                           int64_t cols, const double* thr_lo, const double* thr_hi, const int64_t* row_ids,
                           const int64_t* col_ids, const Rows& points, double eps2, int64_t* parent, int64_t n,
                           int64_t budget, bool portable) {
  using panel::kPanelWidth;
  bool changed = false;
  const auto visit = [&](int64_t i, int64_t p, uint32_t below_lo, uint32_t mask) -> int64_t {
    const int64_t j0 = p * kPanelWidth;
    const int64_t a = row_ids[i];
    int64_t tests = 0;
    for (uint32_t b = mask; b != 0; b &= b - 1) {
      const int j = __builtin_ctz(b);
      int64_t ra = find_root(parent, a), rb = find_root(parent, col_ids[j0 + j]);
      if (ra == rb) continue;
      if (!((below_lo >> j) & 1u)) {
        ++tests;
        if (!(exact_d2(points, a, points, col_ids[j0 + j]) <= eps2)) continue;
      }
      if (ra < rb) std::swap(ra, rb);
      parent[ra] = rb;  // the smaller index stays the root
      changed = true;
    }
    return tests;
  };
  const panel::Operands t{rows, panels, col_norm, n_rows, (cols + kPanelWidth - 1) / kPanelWidth, dim};
  const Thresholds thr(thr_lo, thr_hi, n_rows);
  const int64_t result = panel::scan(t, thr.lo.data(), thr.hi.data(), budget, portable, visit);
  if (changed) compress(parent, n);
  return result;
}

template <typename T>
int64_t dbscan_full_tile(const FullTile<T>& tile, const Rows& points, double eps2, int32_t* counts, int32_t* lists,
                         int64_t cap, int64_t* parent, int64_t n, bool portable) {
  std::vector<double> lo(tile.n_rows), hi(tile.n_rows);
  int64_t tests = 0;
  for (int64_t c0 = 0; c0 < tile.cols; c0 += tile.chunk_cols) {
    const int64_t m = std::min(tile.chunk_cols, tile.cols - c0);
    pack_panels<T>(tile.source, tile.dim, tile.col_ids + c0, m, tile.mean, tile.scale, tile.centre, tile.panels, tile.norm);
    float widest = 0.0f;
    double global = 0.0;
    for (int64_t j = 0; j < m; ++j) {
      widest = std::max(widest, tile.norm[j]);
      global = std::max(global, tile.global_norms[tile.col_pos[c0 + j]]);
    }
    const double local = std::sqrt(static_cast<double>(widest)) * (1.0 + 1e-6);
    for (int64_t i = 0; i < tile.n_rows; ++i) {
      const double reach = tile.row_local[i] + local;
      const double band = tile.c1 * reach * reach + tile.c2 * reach * (tile.row_global[i] + global);
      lo[i] = tile.threshold[i] - band;
      hi[i] = tile.threshold[i] + band;
    }
    constexpr int64_t kNoBudget = std::numeric_limits<int64_t>::max();
    tests += counts != nullptr
                 ? dbscan_panel_neighbours(tile.rows, tile.n_rows, tile.dim, tile.panels, tile.norm, m, lo.data(), hi.data(),
                                           tile.row_ids, tile.col_ids + c0, points, eps2, counts, lists, cap, kNoBudget,
                                           portable)
                 : dbscan_panel_union(tile.rows, tile.n_rows, tile.dim, tile.panels, tile.norm, m, lo.data(), hi.data(),
                                      tile.row_ids, tile.col_ids + c0, points, eps2, parent, n, kNoBudget, portable);
  }
  return tests;
}

template int64_t dbscan_full_tile<float>(const FullTile<float>&, const Rows&, double, int32_t*, int32_t*, int64_t, int64_t*,
                                         int64_t, bool);
template int64_t dbscan_full_tile<double>(const FullTile<double>&, const Rows&, double, int32_t*, int32_t*, int64_t,
                                          int64_t*, int64_t, bool);

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
