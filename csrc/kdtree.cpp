// The k-d leaf order of the pair searches (inform_fast.spatial._kd_order): median splits along the
// widest coordinate down to leaves of at most leaf_size rows. The Python version copies each
// node's rows to find the widest coordinate and partition them (2.4 of the 4 s that indexing
// 6x10^5 latents took); here the permutation is partitioned in place.
#include <algorithm>
#include <limits>
#include <vector>

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
