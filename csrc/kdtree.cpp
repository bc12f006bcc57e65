// The k-d leaf order of the pair searches (inform_fast.spatial._kd_order): median splits along the
// widest coordinate down to leaves of at most leaf_size rows. The Python version copies each
// node's rows to find the widest coordinate and partition them (2.4 of the 4 s that indexing
// 6x10^5 latents took); here the permutation is partitioned in place. And the leaf pairs whose
// boxes come within a radius (spatial._box_pairs), by a descent over runs of consecutive leaves.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <limits>
#include <utility>
#include <vector>

#include "bound_block.h"
#include "frame.h"
#include "ops.h"

namespace inform_fast {

std::vector<int64_t> kd_order(const float* coords, int64_t n, int64_t dims, int64_t leaf_size, int64_t* order) {
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::vector<int64_t> sizes;
  std::vector<std::pair<int64_t, int64_t>> stack{{0, n}};
  std::vector<float> lo(dims), hi(dims);
  while (!stack.empty()) {
    const auto [a, b] = stack.back();
    stack.pop_back();
    if (b - a <= leaf_size) {
      sizes.push_back(b - a);  // only an empty root is empty
      continue;
    }
    std::fill(lo.begin(), lo.end(), std::numeric_limits<float>::infinity());
    std::fill(hi.begin(), hi.end(), -std::numeric_limits<float>::infinity());
    for (int64_t i = a; i < b; ++i) {
      const float* row = coords + order[i] * dims;
      for (int64_t d = 0; d < dims; ++d) {
        lo[d] = std::min(lo[d], row[d]);
        hi[d] = std::max(hi[d], row[d]);
      }
    }
    int64_t widest = 0;
    for (int64_t d = 1; d < dims; ++d)
      if (hi[d] - lo[d] > hi[widest] - lo[widest]) widest = d;
    const int64_t half = (b - a) / 2;
    std::nth_element(order + a, order + a + half, order + b,
                     [&](int64_t x, int64_t y) { return coords[x * dims + widest] < coords[y * dims + widest]; });
    // the left half is popped first, so the leaves come out in storage order
    stack.push_back({a + half, b});
    stack.push_back({a, a + half});
  }
  return sizes;
}

}  // namespace inform_fast

namespace inform_fast {

namespace {

// Boxes of runs of 1, 2, 4, ... consecutive leaves (spatial._box_levels): level l + 1's run a
// is the union of level l's runs 2a and 2a + 1 (2a alone at an odd end).
struct BoxLevel {
  int64_t runs = 0;
  std::vector<double> lo, hi;  // [runs, dims]
};

double box_gap2(const BoxLevel& level, int64_t a, int64_t b, int64_t dims) {
  return bound::box_gap2(level.lo.data() + a * dims, level.hi.data() + a * dims, level.lo.data() + b * dims,
                         level.hi.data() + b * dims, dims);
}

std::vector<BoxLevel> box_levels(const double* box_lo, const double* box_hi, int64_t n_leaves, int64_t dims,
                                 int64_t top_groups) {
  std::vector<BoxLevel> levels(1);
  levels[0].runs = n_leaves;
  levels[0].lo.assign(box_lo, box_lo + n_leaves * dims);
  levels[0].hi.assign(box_hi, box_hi + n_leaves * dims);
  while (levels.back().runs > top_groups) {
    const BoxLevel& child = levels.back();
    BoxLevel up;
    up.runs = (child.runs + 1) / 2;
    up.lo.resize(up.runs * dims);
    up.hi.resize(up.runs * dims);
    for (int64_t a = 0; a < up.runs; ++a) {
      const int64_t second = std::min(2 * a + 1, child.runs - 1);
      for (int64_t d = 0; d < dims; ++d) {
        up.lo[a * dims + d] = std::min(child.lo[2 * a * dims + d], child.lo[second * dims + d]);
        up.hi[a * dims + d] = std::max(child.hi[2 * a * dims + d], child.hi[second * dims + d]);
      }
    }
    levels.push_back(std::move(up));
  }
  return levels;
}

// visit(a, b) for every unordered pair a <= b of leaves below the runs (a, b) at ``level`` whose
// boxes are within reach.
template <typename Visit>
void descend(const std::vector<BoxLevel>& levels, int64_t level, int64_t a, int64_t b, int64_t dims, double reach,
             Visit& visit) {
  if (std::sqrt(box_gap2(levels[level], a, b, dims)) > reach) return;
  if (level == 0) {
    visit(a, b);
    return;
  }
  const int64_t below = levels[level - 1].runs;
  for (int64_t ca = 2 * a; ca <= 2 * a + 1 && ca < below; ++ca)
    for (int64_t cb = (a == b ? ca : 2 * b); cb <= 2 * b + 1 && cb < below; ++cb) descend(levels, level - 1, ca, cb, dims, reach, visit);
}

// The descent from every pair of top-level runs, on ``threads`` threads; ``visit`` must be safe to
// call concurrently.
template <typename Visit>
void for_each_box_pair(const std::vector<BoxLevel>& levels, int64_t dims, double reach, int threads, Visit& visit) {
  const int64_t top = levels.back().runs, level = static_cast<int64_t>(levels.size()) - 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < top * top; ++r) {
    const int64_t a = r / top, b = r % top;
    if (a <= b) descend(levels, level, a, b, dims, reach, visit);
  }
}

}  // namespace

int32_t* leaf_candidates(const double* box_lo, const double* box_hi, int64_t n_leaves, int64_t dims, double box_reach,
                         int64_t top_groups, const double* centre, const double* radius, int64_t centre_dims,
                         double ball_offset, double ball_reach, int threads, int64_t* indptr) {
  const auto levels = box_levels(box_lo, box_hi, n_leaves, dims, top_groups);
  // 1. how many box pairs each leaf has (both orders), 2. the pairs written into their rows:
  // no list of pairs is ever held, only the CSR of the box pairs, which the ball bound then shrinks
  std::fill(indptr, indptr + n_leaves + 1, int64_t{0});
  int64_t* count = indptr + 1;
  auto tally = [count](int64_t a, int64_t b) {
#pragma omp atomic
    count[a] += 1;
    if (a != b) {
#pragma omp atomic
      count[b] += 1;
    }
  };
  for_each_box_pair(levels, dims, box_reach, threads, tally);
  for (int64_t l = 0; l < n_leaves; ++l) indptr[l + 1] += indptr[l];
  const int64_t total = indptr[n_leaves];
  auto* columns = static_cast<int32_t*>(std::malloc(std::max<int64_t>(total, 1) * sizeof(int32_t)));
  if (columns == nullptr) throw std::bad_alloc();
  std::vector<int64_t> cursor(indptr, indptr + n_leaves);
  auto place = [&cursor, columns](int64_t a, int64_t b) {
    int64_t slot;
#pragma omp atomic capture
    slot = cursor[a]++;
    columns[slot] = static_cast<int32_t>(b);
    if (a != b) {
#pragma omp atomic capture
      slot = cursor[b]++;
      columns[slot] = static_cast<int32_t>(a);
    }
  };
  for_each_box_pair(levels, dims, box_reach, threads, place);
  std::vector<int64_t>().swap(cursor);
  // 3. per leaf: the ball bound (the centres' distance less both radii and the offset), itself
  // first, then by centre distance (ties by leaf), kept ones moved to the front of the row
  std::vector<int64_t> kept(n_leaves);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<std::pair<float, int32_t>> row;
#pragma omp for schedule(dynamic, 16)
    for (int64_t a = 0; a < n_leaves; ++a) {
      row.clear();
      const double* ca = centre + a * centre_dims;
      for (int64_t s = indptr[a]; s < indptr[a + 1]; ++s) {
        const int32_t b = columns[s];
        const double* cb = centre + b * centre_dims;
        double sum = 0.0;
        for (int64_t d = 0; d < centre_dims; ++d) {
          const double diff = ca[d] - cb[d];
          sum += diff * diff;
        }
        const double distance = std::sqrt(sum);
        if (distance - radius[a] - radius[b] - ball_offset <= ball_reach)
          row.push_back({b == a ? -1.0f : static_cast<float>(distance), b});
      }
      std::sort(row.begin(), row.end());
      for (size_t k = 0; k < row.size(); ++k) columns[indptr[a] + k] = row[k].second;
      kept[a] = static_cast<int64_t>(row.size());
    }
  }
  // 4. rows compacted to the left, and the array shrunk to what is kept
  int64_t write = 0;
  for (int64_t a = 0; a < n_leaves; ++a) {
    const int64_t begin = indptr[a];
    std::memmove(columns + write, columns + begin, kept[a] * sizeof(int32_t));
    indptr[a] = write;
    write += kept[a];
  }
  indptr[n_leaves] = write;
  if (auto* shrunk = static_cast<int32_t*>(std::realloc(columns, std::max<int64_t>(write, 1) * sizeof(int32_t))))
    columns = shrunk;
  return columns;
}

void gather_frame(const float* source, int64_t dim, const int64_t* ids, int64_t m, const float* mean, float scale,
                  float* out) {
  constexpr int64_t kAhead = 8;  // rows requested ahead: the ids are scattered over the source
  for (int64_t i = 0; i < m; ++i) {
    if (i + kAhead < m) {
      const char* next = reinterpret_cast<const char*>(source + ids[i + kAhead] * dim);
      for (int64_t b = 0; b < dim * static_cast<int64_t>(sizeof(float)); b += 64) __builtin_prefetch(next + b);
    }
    const float* row = source + ids[i] * dim;
    float* target = out + i * dim;
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) target[d] = static_cast<float>(frame_value(row[d], mean[d], scale, true));
  }
}

template <typename T, typename O>
void principal_coordinates(const T* source, int64_t dim, const int64_t* ids, int64_t n, const T* mean, double scale,
                           bool float_frame, const double* axes, int64_t p, O* out, int threads) {
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<double> y(dim), sum(p);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T* row = source + (ids != nullptr ? ids[i] : i) * dim;
      for (int64_t d = 0; d < dim; ++d) y[d] = frame_value(row[d], mean[d], scale, float_frame);
      for (int64_t k = 0; k < p; ++k) sum[k] = 0.0;
      for (int64_t d = 0; d < dim; ++d) {  // coordinate k's sum in the same order whatever p
        const double yd = y[d];
        const double* axis_row = axes + d * p;
        for (int64_t k = 0; k < p; ++k) sum[k] += yd * axis_row[k];
      }
      O* target = out + i * p;
      for (int64_t k = 0; k < p; ++k) target[k] = static_cast<O>(sum[k]);
    }
  }
}

template <typename T, typename O>
void leaf_statistics(const T* source, int64_t dim, const int64_t* order, const int64_t* starts, int64_t n_leaves,
                     const T* mean, double scale, bool float_frame, double inflate, O* sqnorm, double* norms,
                     double* centre, double* radius, int threads) {
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<double> y(dim);
#pragma omp for schedule(dynamic, 8)
    for (int64_t leaf = 0; leaf < n_leaves; ++leaf) {
      double* c = centre + leaf * dim;
      std::fill(c, c + dim, 0.0);
      for (int64_t i = starts[leaf]; i < starts[leaf + 1]; ++i) {
        const T* row = source + order[i] * dim;
        double sum = 0.0;
        for (int64_t d = 0; d < dim; ++d) {
          const double v = frame_value(row[d], mean[d], scale, float_frame);
          sum += v * v;
          c[d] += v;
        }
        sqnorm[i] = static_cast<O>(sum);
        norms[i] = std::sqrt(sum) * inflate;
      }
      const int64_t size = starts[leaf + 1] - starts[leaf];
      if (size > 0)
        for (int64_t d = 0; d < dim; ++d) c[d] /= static_cast<double>(size);
      double widest = 0.0;
      for (int64_t i = starts[leaf]; i < starts[leaf + 1]; ++i) {  // the leaf's rows again: a few KB, still in cache
        const T* row = source + order[i] * dim;
        double sum = 0.0;
        for (int64_t d = 0; d < dim; ++d) {
          const double v = frame_value(row[d], mean[d], scale, float_frame) - c[d];
          sum += v * v;
        }
        widest = std::max(widest, sum);
      }
      radius[leaf] = std::sqrt(widest) * inflate;
    }
  }
}

#define INFORM_FAST_LEAF_STATISTICS(T, O)                                                                             \
  template void leaf_statistics<T, O>(const T*, int64_t, const int64_t*, const int64_t*, int64_t, const T*, double, bool, \
                                      double, O*, double*, double*, double*, int);
INFORM_FAST_LEAF_STATISTICS(float, float)
INFORM_FAST_LEAF_STATISTICS(float, double)
INFORM_FAST_LEAF_STATISTICS(double, float)
INFORM_FAST_LEAF_STATISTICS(double, double)
#undef INFORM_FAST_LEAF_STATISTICS

#define INFORM_FAST_PRINCIPAL(T, O)                                                                                   \
  template void principal_coordinates<T, O>(const T*, int64_t, const int64_t*, int64_t, const T*, double, bool,      \
                                            const double*, int64_t, O*, int);
INFORM_FAST_PRINCIPAL(float, float)
INFORM_FAST_PRINCIPAL(float, double)
INFORM_FAST_PRINCIPAL(double, float)
INFORM_FAST_PRINCIPAL(double, double)
#undef INFORM_FAST_PRINCIPAL

}  // namespace inform_fast
