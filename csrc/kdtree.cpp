// The k-d leaf order of the pair searches (inform_fast.spatial._kd_order): median splits along the
// widest coordinate down to leaves of at most leaf_size rows. The Python version copies each
// node's rows to find the widest coordinate and partition them (2.4 of the 4 s that indexing
// 6x10^5 latents took); here the permutation is partitioned in place. And the leaf pairs whose
// boxes come within a radius (spatial._box_pairs), by a descent over runs of consecutive leaves.
#include <algorithm>
#include <cmath>
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

// Pairs (a, b), a <= b, of runs at ``level`` whose boxes are within reach: their children's
// pairs, down to the leaves; both orders of a leaf pair are written.
void descend(const std::vector<BoxLevel>& levels, int64_t level, int64_t a, int64_t b, int64_t dims, double reach,
             std::vector<int64_t>& out) {
  if (std::sqrt(box_gap2(levels[level], a, b, dims)) > reach) return;
  if (level == 0) {
    out.push_back(a);
    out.push_back(b);
    if (a != b) {
      out.push_back(b);
      out.push_back(a);
    }
    return;
  }
  const int64_t below = levels[level - 1].runs;
  for (int64_t ca = 2 * a; ca <= 2 * a + 1 && ca < below; ++ca)
    for (int64_t cb = (a == b ? ca : 2 * b); cb <= 2 * b + 1 && cb < below; ++cb) descend(levels, level - 1, ca, cb, dims, reach, out);
}

}  // namespace

std::vector<int64_t> box_pairs(const double* box_lo, const double* box_hi, int64_t n_leaves, int64_t dims, double reach,
                               int64_t top_groups, int threads) {
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
  const int64_t top = levels.back().runs, level = static_cast<int64_t>(levels.size()) - 1;
  std::vector<std::pair<int64_t, int64_t>> roots;
  for (int64_t a = 0; a < top; ++a)
    for (int64_t b = a; b < top; ++b) roots.push_back({a, b});
  std::vector<std::vector<int64_t>> found(roots.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < static_cast<int64_t>(roots.size()); ++r)
    descend(levels, level, roots[r].first, roots[r].second, dims, reach, found[r]);
  std::vector<int64_t> pairs;
  size_t total = 0;
  for (const auto& f : found) total += f.size();
  pairs.reserve(total);
  for (const auto& f : found) pairs.insert(pairs.end(), f.begin(), f.end());
  return pairs;
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

#define INFORM_FAST_PRINCIPAL(T, O)                                                                                   \
  template void principal_coordinates<T, O>(const T*, int64_t, const int64_t*, int64_t, const T*, double, bool,      \
                                            const double*, int64_t, O*, int);
INFORM_FAST_PRINCIPAL(float, float)
INFORM_FAST_PRINCIPAL(float, double)
INFORM_FAST_PRINCIPAL(double, float)
INFORM_FAST_PRINCIPAL(double, double)
#undef INFORM_FAST_PRINCIPAL

}  // namespace inform_fast
