// k nearest references (see ops.h): the epilogue of the GEMM tiles and the direct exact search.
// Both keep, per query, a max-heap of the k best (exact squared distance, reference id) pairs, so
// the result is the k smallest pairs in that order whatever the order the references come in.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bound_block.h"
#include "ops.h"
#include "scan.h"

namespace inform_fast {

namespace {

inline bool before(double d_a, int64_t i_a, double d_b, int64_t i_b) {
  return d_a < d_b || (d_a == d_b && i_a < i_b);
}

// Replaces the heap's worst pair (its root) by (d, id) if (d, id) comes before it; sift down.
inline bool offer(double* hd, int64_t* hi, int64_t k, double d, int64_t id) {
  if (!before(d, id, hd[0], hi[0])) return false;
  int64_t pos = 0;
  while (true) {
    const int64_t left = 2 * pos + 1;
    if (left >= k) break;
    int64_t worst = left;
    const int64_t right = left + 1;
    if (right < k && before(hd[left], hi[left], hd[right], hi[right])) worst = right;
    if (!before(d, id, hd[worst], hi[worst])) break;
    hd[pos] = hd[worst];
    hi[pos] = hi[worst];
    pos = worst;
  }
  hd[pos] = d;
  hi[pos] = id;
  return true;
}

// Largest float L with: partial > L implies the approximate squared distance partial + q_norm,
// less its band, exceeds the heap's worst exact distance (so the reference cannot enter).
inline float tile_limit(double worst_exact, double frame_to_exact, float band, float q_norm) {
  if (std::isinf(worst_exact)) return std::numeric_limits<float>::infinity();
  const double limit = worst_exact * frame_to_exact + static_cast<double>(band) - static_cast<double>(q_norm);
  float rounded = static_cast<float>(limit);
  if (static_cast<double>(rounded) < limit) rounded = std::nextafter(rounded, std::numeric_limits<float>::infinity());
  return rounded;
}

template <typename T>
void exact_search(const T* queries, int64_t n_queries, const T* refs, int64_t n_refs, int64_t dim, double scale, int64_t k,
                  double* heap_d, int64_t* heap_i) {
  for (int64_t r = 0; r < n_refs; ++r) {
    const T* ref = refs + r * dim;
    int64_t q = 0;
    // four queries per pass over a reference row (exact.h's four-at-once sums: the same values as
    // exact_d2, the four chains overlapped)
    for (; q + 4 <= n_queries; q += 4) {
      const T* q0 = queries + q * dim;
      double d2[4];
      exact_d2_four_typed(ref, q0, q0 + dim, q0 + 2 * dim, q0 + 3 * dim, dim, scale, d2);
      for (int64_t u = 0; u < 4; ++u) offer(heap_d + (q + u) * k, heap_i + (q + u) * k, k, d2[u], r);
    }
    for (; q < n_queries; ++q)
      offer(heap_d + q * k, heap_i + q * k, k, exact_d2_typed(queries + q * dim, ref, dim, scale), r);
  }
}

// The k-th smallest of row[0:cols] (cols >= k). The row is dealt into S >= k interleaved
// segments (value j to segment j mod S): the k smallest of their minima are k values of the row,
// so the k-th of them bounds the answer from above, and only the values at or below it (about k
// of them) are selected from. The minima are an element-wise min of consecutive S-vectors and
// the filter a vector compare, so both vectorise, and the selections run over a few dozen
// values; a heap over the whole row, before, spent most of a first-chunk tile's epilogue in its
// sift-downs (tile epilogue at 781 x 2,000, k = 22: 11.3-12.4 -> 8.5-9.1 ms). The same value.
float kth_smallest(const float* row, int64_t cols, int64_t k, std::vector<float>& scratch) {
  constexpr int64_t kLanes = 16;
  const int64_t segments = std::min(cols, (4 * k + kLanes - 1) / kLanes * kLanes);
  scratch.assign(row, row + segments);
  float* low = scratch.data();
  int64_t j = segments;
  for (; j + segments <= cols; j += segments) {
    const float* block = row + j;
#pragma omp simd
    for (int64_t s = 0; s < segments; ++s) low[s] = block[s] < low[s] ? block[s] : low[s];
  }
  for (int64_t s = 0; j + s < cols; ++s) low[s] = row[j + s] < low[s] ? row[j + s] : low[s];
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end());
  const float bound = scratch[k - 1];
  scratch.clear();
  for_each_at_most(row, cols, bound, kLanes, [&](int64_t t) { scratch.push_back(row[t]); });
  if (static_cast<int64_t>(scratch.size()) < k) return std::numeric_limits<float>::infinity();  // NaN in the row: no cap
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end());
  return scratch[k - 1];
}

using bound::round_up;

// Largest float L with: a lower-bound value > L means the pair's stored distance, less ``slack``
// and the band, exceeds the heap's worst exact distance.
// A heap's reach in frame units: its k-th exact distance (``worst_exact``, squared) plus the
// stored points' ``slack``; a lower bound of a pair's distance above it cannot enter the heap.
inline double bound_reach(double worst_exact, double frame_to_exact, double slack) {
  return std::sqrt(worst_exact * frame_to_exact) + slack;
}

inline float bound_limit(double worst_exact, double frame_to_exact, float band, double slack) {
  if (std::isinf(worst_exact)) return std::numeric_limits<float>::infinity();
  const double reach = bound_reach(worst_exact, frame_to_exact, slack);
  return round_up(reach * reach + static_cast<double>(band));
}

// A pair that passed a tile's limit: its tile value (the approximate or lower-bound distance, less
// the query's norm) and reference id.
struct Candidate {
  float value;
  int64_t id;
};

// Offers a row's candidates to its heap (hd, hi), nearest by tile value first, so that the heap's
// k-th distance, and with it ``limit``, falls as early as it can (``refresh`` recomputes the limit
// after an improvement; candidates above it are not tested). The exact distances go four at a
// time (exact_d2_many), the next four rows prefetched meanwhile: the rows are scattered over the
// reference array, and tested one at a time, as they came in column order, each test waited on
// memory and on its own chain of additions (~0.5 us a test). Any order offers the same pairs to
// the same heap, so the result is unchanged. Empties ``cand``; returns the exact tests.
template <typename Refresh>
inline int64_t offer_nearest_first(const Rows& queries, int64_t qid, const Rows& refs, std::vector<Candidate>& cand,
                                   double* hd, int64_t* hi, int64_t k, float limit, Refresh refresh) {
  std::sort(cand.begin(), cand.end(), [](const Candidate& a, const Candidate& b) {
    return a.value < b.value || (a.value == b.value && a.id < b.id);
  });
  const int64_t count = static_cast<int64_t>(cand.size());
  constexpr int64_t kAhead = 8;  // rows prefetched ahead: two groups (one hid too little of a miss)
  for (int64_t u = 0; u < std::min(count, kAhead); ++u) prefetch_row(refs, cand[u].id);
  int64_t tests = 0;
  int64_t pending[4];
  double d2[4];
  int64_t t = 0;
  while (t < count && cand[t].value <= limit) {
    int64_t m = 0;
    for (; t < count && m < 4 && cand[t].value <= limit; ++t) pending[m++] = cand[t].id;
    for (int64_t u = t + kAhead - 4; u < std::min(count, t + kAhead); ++u) prefetch_row(refs, cand[u].id);
    exact_d2_many(queries, qid, refs, pending, m, d2);
    tests += m;
    for (int64_t u = 0; u < m; ++u)
      if (offer(hd, hi, k, d2[u], pending[u])) limit = refresh();
  }
  cand.clear();
  return tests;
}

}  // namespace

int64_t knn_tile_update(const float* partial, int64_t rows, int64_t cols, const float* q_norm, const float* band,
                        double frame_to_exact, const int64_t* row_ids, const int64_t* col_ids, const Rows& queries,
                        const Rows& refs, int64_t k, double* best_d2, int64_t* best_index, int threads) {
  int64_t exact_tests = 0;
#pragma omp parallel for schedule(dynamic, 4) reduction(+ : exact_tests) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = partial + i * cols;
    const int64_t qid = row_ids[i];
    double* hd = best_d2 + qid * k;
    int64_t* hi = best_index + qid * k;
    float limit = tile_limit(hd[0], frame_to_exact, band[i], q_norm[i]);
    // A heap not yet full would test every pair until it fills, and then the pairs below a
    // loose k-th distance. The tile's own k-th value v bounds it: k references have an exact
    // squared distance <= v + q_norm + band, so a reference whose value exceeds v + 2 band
    // cannot be among the k nearest.
    float cap = std::numeric_limits<float>::infinity();
    if (std::isinf(hd[0]) && cols >= k) {
      thread_local std::vector<float> scratch;
      cap = round_up(static_cast<double>(kth_smallest(row, cols, k, scratch)) + 2.0 * static_cast<double>(band[i]));
      limit = std::min(limit, cap);
    }
    thread_local std::vector<Candidate> cand;
    for_each_at_most(row, cols, limit, kScanChunk, [&](int64_t j) { cand.push_back({row[j], col_ids[j]}); });
    exact_tests += offer_nearest_first(queries, qid, refs, cand, hd, hi, k, limit,
                                       [&] { return std::min(cap, tile_limit(hd[0], frame_to_exact, band[i], q_norm[i])); });
  }
  return exact_tests;
}

int64_t knn_bound_update(const float* q_low, int64_t rows, const float* cols_low_t, int64_t stride, int64_t cols,
                         int64_t dim, const float* col_norm, const float* q_norm, const float* band, double slack,
                         double frame_to_exact, const int64_t* row_ids, const int64_t* col_ids, const Rows& queries,
                         const Rows& refs, int64_t k, double* best_d2, int64_t* best_index, int64_t budget, bool portable,
                         const LeafGate& gate) {
  // a row's limit on the block values: (sqrt(k-th best) + slack)^2 + band - q_norm, rounded up
  const auto limit_of = [&](int64_t i) {
    return round_up(static_cast<double>(bound_limit(best_d2[row_ids[i] * k], frame_to_exact, band[i], slack)) -
                    static_cast<double>(q_norm[i]));
  };
  // each row's candidates are collected over the whole tile and tested at its end, nearest first
  thread_local std::vector<Candidate> cand[bound::kBoundRows];
  const auto visit = [&](int64_t, int r, int64_t j0, const float* value, float& limit) -> int64_t {
    for (int64_t j = 0; j < bound::kBoundWidth && j0 + j < cols; ++j)
      if (value[j] <= limit) cand[r].push_back({value[j], col_ids[j0 + j]});
    return 0;
  };
  const auto flush = [&](int64_t i0, int64_t count) -> int64_t {
    int64_t tests = 0;
    for (int64_t r = 0; r < count; ++r) {
      const int64_t i = i0 + r, qid = row_ids[i];
      tests += offer_nearest_first(queries, qid, refs, cand[r], best_d2 + qid * k, best_index + qid * k, k, limit_of(i),
                                   [&] { return limit_of(i); });
    }
    return tests;
  };
  // the column blocks no row of a block needs: those of groups whose box is beyond each row's reach
  // (sqrt(k-th best) + slack; the box distance in double, compared with a relative margin far
  // above its rounding, so only a group that is certainly out of reach is skipped)
  thread_local std::vector<uint8_t> skip_blocks;
  const auto skip = [&](int64_t i0, int64_t count) -> const uint8_t* {
    if (gate.starts == nullptr) return nullptr;
    double reach2[bound::kBoundRows];
    for (int64_t r = 0; r < count; ++r) {
      const double worst = best_d2[row_ids[i0 + r] * k];
      if (std::isinf(worst)) return nullptr;
      const double reach = bound_reach(worst, frame_to_exact, slack);
      reach2[r] = reach * reach * (1.0 + 1e-9);
    }
    skip_blocks.assign(stride / bound::kBoundWidth, 1);
    for (int64_t g = 0; g < gate.groups; ++g) {
      const double* lo = gate.lo + g * gate.dims;
      const double* hi = gate.hi + g * gate.dims;
      bool needed = false;
      for (int64_t r = 0; r < count && !needed; ++r) {
        const double* q = gate.rows + (i0 + r) * gate.dims;
        needed = bound::box_gap2(lo, hi, q, q, gate.dims) <= reach2[r];
      }
      if (!needed || gate.starts[g + 1] <= gate.starts[g]) continue;
      const int64_t first = gate.starts[g] / bound::kBoundWidth, last = (gate.starts[g + 1] - 1) / bound::kBoundWidth;
      for (int64_t b = first; b <= last; ++b) skip_blocks[b] = 0;
    }
    return skip_blocks.data();
  };
  return bound::scan_tile(bound::Tile{q_low, cols_low_t, col_norm, dim, stride}, rows, budget, portable, limit_of, visit,
                          flush, skip);
}

void knn_exact(const Rows& queries, int64_t n_queries, const Rows& refs, int64_t n_refs, int64_t k, double* best_d2,
               int64_t* best_index, int threads) {
  const int64_t slots = n_queries * k;
  std::fill(best_d2, best_d2 + slots, std::numeric_limits<double>::infinity());
  std::fill(best_index, best_index + slots, int64_t{-1});
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<double> local_d(slots, std::numeric_limits<double>::infinity());
    std::vector<int64_t> local_i(slots, -1);
    // References are the long axis: each thread streams its own contiguous chunk once.
    int64_t begin = 0, end = n_refs;
#ifdef _OPENMP
    const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
    begin = n_refs * me / threads;
    end = n_refs * (me + 1) / threads;
#endif
    if (queries.is_double)
      exact_search(static_cast<const double*>(queries.data), n_queries, static_cast<const double*>(refs.data) + begin * refs.dim,
                   end - begin, queries.dim, queries.scale, k, local_d.data(), local_i.data());
    else
      exact_search(static_cast<const float*>(queries.data), n_queries, static_cast<const float*>(refs.data) + begin * refs.dim,
                   end - begin, queries.dim, queries.scale, k, local_d.data(), local_i.data());
#pragma omp critical
    for (int64_t s = 0; s < slots; ++s) {
      if (local_i[s] < 0) continue;
      offer(best_d2 + (s / k) * k, best_index + (s / k) * k, k, local_d[s], local_i[s] + begin);
    }
  }
}

}  // namespace inform_fast

namespace inform_fast {

KnnGroupResult knn_bound_group(const KnnLeafIndex& index, const KnnVisit& visit, const KnnGroupRows& group,
                               const KnnBand& band_of, const Rows& queries, const Rows& refs, int64_t k, double* best_d2,
                               int64_t* best_index, double bound_fraction, bool portable, int64_t* keep, int64_t* full_rows,
                               int64_t n_refs) {
  const int64_t dim = index.dim_low, box_dims = index.box_dims;
  KnnGroupResult out;
  out.visited = visit.visited;
  out.width = visit.width;
  // the group's rows still open (indices into the caller's arrays), their k-th distances (frame units)
  std::vector<int64_t> active(group.rows);
  for (int64_t a = 0; a < group.rows; ++a) active[a] = a;
  std::vector<double> worst(group.rows);
  // per chunk: the rows it reaches, its columns (coordinate-major, padded to the kernel's block),
  // their ids, and the leaf gate
  std::vector<int64_t> here, row_ids, col_ids, positions, gate_starts;
  std::vector<float> cols_t, col_norm, q_low, q_norm, band;
  std::vector<double> gate_lo, gate_hi, gate_rows, chunk_lo(box_dims), chunk_hi(box_dims);
  const auto finish = [&](int status) {
    out.status = status;
    out.active = static_cast<int64_t>(active.size());
    std::copy(active.begin(), active.end(), keep);
    return out;
  };
  while (out.visited < visit.leaves) {
    const int64_t at = out.visited;
    // each open row's k-th distance; a row whose heap is not full goes back to the caller
    for (const int64_t a : active) {
      const double w = best_d2[group.ids[a] * k];
      if (std::isinf(w)) return finish(KnnGroupResult::kNotFull);
      worst[a] = w * band_of.frame_to_exact;
    }
    // rows whose k-th distance is below the next leaf's bound are finished
    active.erase(std::remove_if(active.begin(), active.end(), [&](int64_t a) { return std::sqrt(worst[a]) < visit.bound[at]; }),
                 active.end());
    if (active.empty()) return finish(KnnGroupResult::kDone);
    double reach2 = 0.0;
    for (const int64_t a : active) reach2 = std::max(reach2, worst[a]);
    const double reach = std::sqrt(reach2);
    // the next leaves up to ``width`` points, while their bound is within reach (at least one)
    const int64_t* covered = visit.covered;
    const int64_t within_width = std::upper_bound(covered, covered + visit.leaves + 1, covered[at] + out.width) - covered - 1;
    const int64_t within_reach = std::upper_bound(visit.bound, visit.bound + visit.leaves, reach) - visit.bound;
    const int64_t stop = std::max(at + 1, std::min(within_width, within_reach));
    // the rows the chunk can reach, each by its own bound (its coordinates against the chunk's box)
    std::fill(chunk_lo.begin(), chunk_lo.end(), std::numeric_limits<double>::infinity());
    std::fill(chunk_hi.begin(), chunk_hi.end(), -std::numeric_limits<double>::infinity());
    for (int64_t v = at; v < stop; ++v) {
      const int64_t leaf = visit.order[v];
      for (int64_t d = 0; d < box_dims; ++d) {
        chunk_lo[d] = std::min(chunk_lo[d], index.box_lo[leaf * box_dims + d]);
        chunk_hi[d] = std::max(chunk_hi[d], index.box_hi[leaf * box_dims + d]);
      }
    }
    here.clear();
    for (const int64_t a : active) {
      const double* p = group.box_coords + a * box_dims;
      if (std::sqrt(bound::box_gap2(chunk_lo.data(), chunk_hi.data(), p, p, box_dims)) - visit.slack <= std::sqrt(worst[a]))
        here.push_back(a);
    }
    if (!here.empty()) {
      // the chunk's columns: top coordinates less the group's centre, coordinate-major
      positions.clear();
      gate_starts.assign(1, 0);
      gate_lo.clear();
      gate_hi.clear();
      for (int64_t v = at; v < stop; ++v) {
        const int64_t leaf = visit.order[v];
        for (int64_t p = index.starts[leaf]; p < index.starts[leaf + 1]; ++p) positions.push_back(p);
        gate_starts.push_back(static_cast<int64_t>(positions.size()));
        gate_lo.insert(gate_lo.end(), index.box_lo + leaf * box_dims, index.box_lo + (leaf + 1) * box_dims);
        gate_hi.insert(gate_hi.end(), index.box_hi + leaf * box_dims, index.box_hi + (leaf + 1) * box_dims);
      }
      const int64_t cols = static_cast<int64_t>(positions.size());
      const int64_t stride = (cols + bound::kBoundWidth - 1) / bound::kBoundWidth * bound::kBoundWidth;
      cols_t.assign(dim * stride, 0.0f);
      col_norm.assign(stride, 0.0f);
      col_ids.resize(cols);
      float col_norm_max = 0.0f;
      double col_global_max = 0.0;
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t p = positions[j];
        const float* c = index.top + p * dim;
        float sum = 0.0f;
        for (int64_t d = 0; d < dim; ++d) {
          const float value = c[d] - group.centre_low[d];
          cols_t[d * stride + j] = value;
          sum += value * value;
        }
        col_norm[j] = sum;
        col_norm_max = std::max(col_norm_max, sum);
        col_ids[j] = index.order[p];
        if (col_ids[j] < 0 || col_ids[j] >= n_refs)
          throw std::invalid_argument("knn_bound_group: order holds an index outside [0, n_references)");
        col_global_max = std::max(col_global_max, index.norms[p]);
      }
      const double col_local = std::sqrt(static_cast<double>(col_norm_max)) * (1 + 1e-6);
      // the rows' operands and error bands (spatial.tile_band, rounded up into float32)
      const int64_t rows = static_cast<int64_t>(here.size());
      row_ids.resize(rows);
      q_low.resize(rows * dim);
      q_norm.resize(rows);
      band.resize(rows);
      gate_rows.resize(rows * box_dims);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t a = here[r];
        row_ids[r] = group.ids[a];
        const float* q = group.low + a * dim;
        float sum = 0.0f;
        for (int64_t d = 0; d < dim; ++d) {
          q_low[r * dim + d] = q[d];
          sum += q[d] * q[d];
        }
        q_norm[r] = sum;
        const double local = std::sqrt(static_cast<double>(sum)) + col_local;
        const double band_width = band_of.c1 * local * local + band_of.c2 * local * (group.global[a] + col_global_max);
        band[r] = static_cast<float>(band_width * (1 + 1e-6));
        std::copy(group.box_coords + a * box_dims, group.box_coords + (a + 1) * box_dims, gate_rows.begin() + r * box_dims);
      }
      const LeafGate gate{gate_starts.data(), stop - at, box_dims, gate_lo.data(), gate_hi.data(), gate_rows.data()};
      const int64_t budget = static_cast<int64_t>(bound_fraction * static_cast<double>(rows) * static_cast<double>(cols));
      const int64_t done = knn_bound_update(q_low.data(), rows, cols_t.data(), stride, cols, dim, col_norm.data(), q_norm.data(),
                                            band.data(), visit.slack, band_of.frame_to_exact, row_ids.data(), col_ids.data(),
                                            queries, refs, k, best_d2, best_index, budget, portable, gate);
      const int64_t rows_done = done >= 0 ? rows : -done;
      out.bound_pairs += rows_done * cols;
      out.tests += done >= 0 ? done : budget;
      if (done < 0) {
        // the bound leaves too much here: the caller gives the other rows a full tile of this chunk
        out.failed_start = at;
        out.failed_rows = rows - rows_done;
        for (int64_t r = rows_done; r < rows; ++r) full_rows[r - rows_done] = here[r];
        out.visited = stop;
        out.width = std::min(2 * out.width, visit.max_width);
        return finish(KnnGroupResult::kFullTile);
      }
    }
    out.visited = stop;
    out.width = std::min(2 * out.width, visit.max_width);
  }
  return finish(KnnGroupResult::kDone);
}

void knn_sort_rows(double* best_d2, int64_t* best_index, int64_t rows, int64_t k, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < rows; ++i) {
    double* d = best_d2 + i * k;
    int64_t* id = best_index + i * k;
    // insertion sort: k is small (tens), and a row comes as a heap, already partly ordered
    for (int64_t a = 1; a < k; ++a) {
      const double dv = d[a];
      const int64_t iv = id[a];
      int64_t b = a;
      for (; b > 0 && before(dv, iv, d[b - 1], id[b - 1]); --b) {
        d[b] = d[b - 1];
        id[b] = id[b - 1];
      }
      d[b] = dv;
      id[b] = iv;
    }
  }
}

}  // namespace inform_fast
