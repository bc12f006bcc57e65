// Plain CPU kernels behind inform_fast._C (no Python, no pybind11 here: csrc/bindings.cpp holds
// the one PYBIND11_MODULE and checks the arguments before calling these).
//
// Tiles: the value of a pair is the GEMM form of its squared distance less the row's norm,
//   partial[i, j] = ||c_j||^2 - 2 r_i . c_j
// of float32 coordinates in a frame (centred, scaled by a power of two, centred again on the
// tile's row group). For DBSCAN, "r_i and c_j are eps-neighbours" is ||r_i - c_j||^2 <= eps^2,
// i.e. partial[i, j] <= eps^2 - ||r_i||^2. The rounding is bounded, so the driver passes two
// thresholds per row: partial <= thr_lo[i] is certainly a neighbour, partial > thr_hi[i] certainly
// not, and a pair in between is decided exactly on the original data (exact.h). The result is
// therefore the one of the exact float64 test whatever the cancellation. The k-NN tiles come from
// a BLAS GEMM ([rows, cols] float32, row-major); DBSCAN's are computed in registers by the panel
// kernel (panel_block.h) and never stored.
// ``threads``: OpenMP threads of a call (1: no parallel region at all). The Python drivers run
// their own pool of workers over row groups and call these with 1, so that no call waits at a
// barrier for a thread the OS has descheduled (measured on a busy 2-core machine: per-call
// parallel regions made DBSCAN 10-20x slower than one thread).
#pragma once

#include <cstdint>
#include <vector>

#include "exact.h"

namespace inform_fast {

// The columns of a panel tile (panel_block.h): column j is row ids[j] of ``source`` [n, dim]
// (float32 or float64, row-major), mapped through a frame where ``mean`` is given ((x - mean) *
// scale rounded once to float32, scale a power of two: the values of spatial.frame_rows) and less
// ``centre`` [dim] (float32) where given, stored in panels [ceil(cols / 16), dim, 16]; norm
// [ceil(cols / 16) * 16] receives each column's squared norm (summed in double, rounded to float),
// padding columns 0 and +inf.
template <typename T>
void pack_panels(const T* source, int64_t dim, const int64_t* ids, int64_t cols, const T* mean, double scale,
                 const float* centre, float* panels, float* norm);

// DBSCAN's neighbour counts and capped lists over one tile, computed by the panel kernel
// (panel_block.h): rows [n_rows, dim] (float32, the row points in the tile's frame) against the
// packed columns (col_ids [cols] their ids). A pair whose value ||c_j||^2 - 2 r_i . c_j is at most
// thr_lo[i] is a neighbour, one in (thr_lo[i], thr_hi[i]] is decided by the exact test (exact_d2 <=
// eps2), one above thr_hi[i] is not (float64 thresholds, rounded outwards to float; thr_lo null for
// a lower-bound tile: every pair it keeps is tested). For each neighbour pair (i, j) with col_ids[j]
// != row_ids[i], id = row_ids[i]: if counts[id] < cap, lists[id * cap + counts[id]] = col_ids[j];
// then counts[id] += 1 (each row's columns in order, so a list holds its first neighbours). Returns
// the exact tests, or -r when more than ``budget`` were needed by the first r rows (those done, the
// others untouched; budget INT64_MAX: none).
int64_t dbscan_panel_neighbours(const float* rows, int64_t n_rows, int64_t dim, const float* panels, const float* col_norm,
                                int64_t cols, const double* thr_lo, const double* thr_hi, const int64_t* row_ids,
                                const int64_t* col_ids, const Rows& points, double eps2, int32_t* counts, int32_t* lists,
                                int64_t cap, int64_t budget, bool portable = false);

// Union-find over the neighbour pairs of a panel tile (operands, thresholds and budget as in
// dbscan_panel_neighbours), in place on parent[0:n], which must be fully compressed on entry
// (parent[x] is x's root) and is again on exit; roots are always the smallest index of their
// component. Returns the exact tests, or -r as above.
int64_t dbscan_panel_union(const float* rows, int64_t n_rows, int64_t dim, const float* panels, const float* col_norm,
                           int64_t cols, const double* thr_lo, const double* thr_hi, const int64_t* row_ids,
                           const int64_t* col_ids, const Rows& points, double eps2, int64_t* parent, int64_t n,
                           int64_t budget, bool portable = false);

// A full DBSCAN tile (all D coordinates) whose columns are packed chunk by chunk into the caller's
// scratch instead of all at once: for each chunk of ``chunk_cols`` columns, pack_panels of
// source rows col_ids (through mean/scale, less centre), then per row the error band of
// spatial.tile_band, band_i = c1 (l_i + L)^2 + c2 (l_i + L)(g_i + G) with l_i = row_local[i], g_i =
// row_global[i], L = sqrt(the chunk's largest packed squared norm) (1 + 1e-6), G = the largest
// global_norms[col_pos[j]] of the chunk, and thresholds threshold[i] -/+ band_i for the panel kernel
// (dbscan_panel_neighbours where counts is given, else dbscan_panel_union on parent).
template <typename T>
struct FullTile {
  const float* rows;           // [n_rows, dim], the rows in the tile's frame
  int64_t n_rows, dim;
  const double* threshold;     // [n_rows] eps2 - |r_i|^2 in that frame, before the band
  const double* row_local;     // [n_rows] |r_i| in that frame
  const double* row_global;    // [n_rows] |r_i| in the global frame
  double c1, c2;               // spatial.Frame.band_coefficients(dim)
  const T* source;             // [*, dim] the points, mapped through mean / scale as pack_panels does
  const T* mean;
  double scale;
  const float* centre;         // [dim] or null: the rows' centre
  const int64_t* col_ids;      // [cols] rows of source (and of points for the exact test)
  const int64_t* col_pos;      // [cols] their positions in global_norms
  const double* global_norms;
  int64_t cols;
  const int64_t* row_ids;      // [n_rows]
  float* panels;               // scratch [chunk_cols / 16, dim, 16]
  float* norm;                 // scratch [chunk_cols]
  int64_t chunk_cols;          // a multiple of 16
};

template <typename T>
int64_t dbscan_full_tile(const FullTile<T>& tile, const Rows& points, double eps2, int32_t* counts, int32_t* lists,
                         int64_t cap, int64_t* parent, int64_t n, bool portable = false);

// Union-find over parent[0:n] (in place): for each edge links the larger root under the smaller
// one, so every root is the smallest index of its component; finishes with full compression.
void union_edges(int64_t* parent, int64_t n, const int64_t* edge_a, const int64_t* edge_b, int64_t n_edges);

// union_edges over the neighbour lists of dbscan_panel_neighbours: an edge (i, lists[i, t]) for
// every core point i, t < min(counts[i], cap), whose neighbour is core too.
void union_lists(int64_t* parent, int64_t n, const int32_t* lists, int64_t cap, const int32_t* counts, const bool* core);

// k nearest references, exact, for queries whose tiles are given: partial[i, j] = ||c_j||^2 -
// 2 q_i . c_j in the tile's frame, q_norm[i] = ||q_i||^2 there, band[i] >= the rounding error of
// partial[i, j] + q_norm[i] as a squared distance (frame units), frame_to_exact = the factor from
// exact squared distances to frame units (the square of the frame's scale). best_d2 / best_index
// [n_queries, k] hold per query a max-heap of the k best (exact squared distance, reference id)
// pairs, ordered by distance then id (empty slots: +inf, -1). A reference is tested exactly only if
// its approximate value is within the band of the current k-th best (and, while a heap is not
// full, within twice the band of the tile's own k-th value). Returns the number of exact tests.
int64_t knn_tile_update(const float* partial, int64_t rows, int64_t cols, const float* q_norm, const float* band,
                        double frame_to_exact, const int64_t* row_ids, const int64_t* col_ids, const Rows& queries,
                        const Rows& refs, int64_t k, double* best_d2, int64_t* best_index, int threads);

// The same heaps updated from a lower bound: q_low [rows, dim] and cols_low_t [dim, stride] (column
// j's coordinates at stride ``stride``, a multiple of 16 >= cols; padding columns are never
// tested) are points' top principal coordinates in one frame, centred alike; col_norm [stride] and
// q_norm [rows] their squared norms. The value col_norm[j] - 2 q_i . c_j, plus q_norm[i], is within
// band[i] of a lower bound of the squared frame distance of the stored points, which exceed the true
// distance by at most ``slack``; a reference is tested exactly only if that value is within
// (sqrt(k-th best) + slack)^2 + band[i]. Returns the number of exact tests, or -r when more than
// ``budget`` tests were needed by the first r rows (those rows are done, the others untouched: a
// loose bound hands them to a full tile). ``portable``: the plain loops even where AVX2 is there.
//
// ``gate`` (optional): the columns come in groups (the leaves of the tile, gate.starts [groups + 1]
// column offsets) with boxes gate.lo / gate.hi [groups, gate.dims] in some principal coordinates,
// and gate.rows [rows, gate.dims] are the queries' coordinates there (the same frame, not centred):
// the box distance, less ``slack``, is a lower bound too, so a query skips the column blocks of
// every group whose box lies beyond its k-th distance (each query's own reach, where the caller's
// chunk is shared by a whole group of queries).
struct LeafGate {
  const int64_t* starts = nullptr;
  int64_t groups = 0, dims = 0;
  const double *lo = nullptr, *hi = nullptr, *rows = nullptr;
};
int64_t knn_bound_update(const float* q_low, int64_t rows, const float* cols_low_t, int64_t stride, int64_t cols,
                         int64_t dim, const float* col_norm, const float* q_norm, const float* band, double slack,
                         double frame_to_exact, const int64_t* row_ids, const int64_t* col_ids, const Rows& queries,
                         const Rows& refs, int64_t k, double* best_d2, int64_t* best_index, int64_t budget,
                         bool portable = false, const LeafGate& gate = LeafGate{});

// One query group of the pruned k-NN search (neighbors._pruned_group) after its first chunk: the
// group visits the index's leaves in ``visit.order`` (their lower bounds ``visit.bound`` ascending,
// ``visit.covered`` [leaves + 1] the running point counts), from leaf ``visit.visited`` on, in
// chunks of at most ``visit.width`` points (doubling up to ``visit.max_width``) while a leaf's bound
// is within the largest open k-th distance. Per chunk: rows whose k-th distance is below the next
// leaf's bound leave; the rows the chunk's box can reach get a lower-bound tile of the chunk's
// columns (knn_bound_update with its leaf gate). Runs until the group is done, a row's heap is not
// full (kNotFull: the caller goes on), or a bound tile leaves too many pairs (kFullTile: the rows
// full_rows[0:failed_rows] (indices into the group's arrays) still need a full tile of the chunk
// from leaf failed_start to ``visited``). keep[0:active] receives the indices of the rows still open.
struct KnnLeafIndex {
  const float* top = nullptr;  // [n, dim_low] the points' principal coordinates, leaf order
  int64_t dim_low = 0;
  const int64_t* starts = nullptr;  // [n_leaves + 1] first position of each leaf
  const int64_t* order = nullptr;   // [n] position -> reference id
  const double* norms = nullptr;    // [n] global norms by position (rounded up)
  const double *box_lo = nullptr, *box_hi = nullptr;  // [n_leaves, box_dims] tree-coordinate boxes
  int64_t box_dims = 0;
};
struct KnnVisit {
  const int64_t* order = nullptr;  // [leaves] leaf ids in visit order
  const double* bound = nullptr;   // [leaves] their lower bounds (frame units, less the slack), ascending
  const int64_t* covered = nullptr;  // [leaves + 1]
  int64_t leaves = 0, visited = 0, width = 0, max_width = 0;
  double slack = 0.0;
};
struct KnnGroupRows {
  const int64_t* ids = nullptr;         // [rows] query ids
  const float* low = nullptr;           // [rows, dim_low] principal coordinates less centre_low
  const double* box_coords = nullptr;   // [rows, box_dims] tree coordinates
  const double* global = nullptr;       // [rows] global norms (rounded up)
  const float* centre_low = nullptr;    // [dim_low]
  int64_t rows = 0;
};
struct KnnBand {
  double c1 = 0.0, c2 = 0.0;  // spatial.Frame.band_coefficients(dim_low)
  double frame_to_exact = 1.0;
};
struct KnnGroupResult {
  static constexpr int kDone = 0, kNotFull = 1, kFullTile = 2;
  int status = kDone;
  int64_t visited = 0, width = 0, active = 0, failed_start = 0, failed_rows = 0, bound_pairs = 0, tests = 0;
};
KnnGroupResult knn_bound_group(const KnnLeafIndex& index, const KnnVisit& visit, const KnnGroupRows& group,
                               const KnnBand& band, const Rows& queries, const Rows& refs, int64_t k, double* best_d2,
                               int64_t* best_index, double bound_fraction, bool portable, int64_t* keep, int64_t* full_rows,
                               int64_t n_refs);

// The same heaps filled by an exact search over every reference (no tiles): for few queries this
// streams the references once and is faster than any GEMM.
void knn_exact(const Rows& queries, int64_t n_queries, const Rows& refs, int64_t n_refs, int64_t k, double* best_d2,
               int64_t* best_index, int threads);

// Each row of the heaps best_d2 / best_index [rows, k] sorted in place by (distance, id), ascending:
// the order of knn_distance's results (the heaps themselves are unordered max-heaps).
void knn_sort_rows(double* best_d2, int64_t* best_index, int64_t rows, int64_t k, int threads);

// The k-d leaf order of coords [n, dims] (float32, row-major): order [n] receives the permutation
// (rows in leaf order), the return value the leaf sizes in that order. Median splits along the
// widest coordinate down to leaves of at most leaf_size (>= 1) rows.
std::vector<int64_t> kd_order(const float* coords, int64_t n, int64_t dims, int64_t leaf_size, int64_t* order);

// Rows ``ids`` [m] of ``source`` [n, dim] (float32, row-major) mapped through a frame into out
// [m, dim]: out[i][d] = (source[ids[i]][d] - mean[d]) * scale, each difference rounded once to
// float32 and ``scale`` a power of two (exact): the values of spatial.Frame.apply, without its
// second pass over the rows.
void gather_frame(const float* source, int64_t dim, const int64_t* ids, int64_t m, const float* mean, float scale,
                  float* out);

// The principal coordinates of rows of ``source`` [.., dim] (float32 or float64, row-major) in a
// frame: out[i][k] = sum_d y_d axes[d][k] (summed in double, d ascending, then rounded to O; out
// [n, p]) for row ids[i] (row i where ids is null), with y = (x - mean) * scale, the values the
// frame stores (spatial.Frame.apply: float32 rows into a float32 frame in float, else in double,
// rounded to float32 where ``float_frame``; scale a power of two; ``mean`` holds the frame's mean
// in the source's dtype, exact for float32 rows, whose frames centre on a float32 value). A
// coordinate's value does not depend on p, so the first k axes alone give the first k
// coordinates of all p bit for bit: spatial.build_index computes the tree's coordinates (float64)
// first, then all of them in leaf order in the frame's dtype, without a float64 copy of all.
template <typename T, typename O>
void principal_coordinates(const T* source, int64_t dim, const int64_t* ids, int64_t n, const T* mean, double scale,
                           bool float_frame, const double* axes, int64_t p, O* out, int threads);

// The per-point and per-leaf statistics of an index (spatial.build_index) in one pass over the
// leaves, each point y = the frame value (frame.h) of source[order[i]], its leaf's rows being
// order[starts[l] : starts[l + 1]]: sqnorm[i] = |y|^2 (summed in double, rounded to O), norms[i] =
// |y| * inflate, centre[l] = the mean of the leaf's y [n_leaves, dim], radius[l] = the largest
// |y - centre| * inflate, all but sqnorm in double (each an upper bound where the caller's bounds
// need one: the inflation covers the rounding of the frame's dtype).
template <typename T, typename O>
void leaf_statistics(const T* source, int64_t dim, const int64_t* order, const int64_t* starts, int64_t n_leaves,
                     const T* mean, double scale, bool float_frame, double inflate, O* sqnorm, double* norms,
                     double* centre, double* radius, int threads);

// The candidate leaves of every leaf (spatial.candidate_leaves) in CSR form: the leaves whose
// boxes come within ``box_reach`` (spatial._box_pairs's descent over runs of 1, 2, 4, ...
// consecutive leaves, down from the first level of at most ``top_groups`` runs, each unordered
// pair of runs tested once: the pairs counted, then written straight into their rows, no list of
// pairs) and whose balls (centre [n_leaves, centre_dims], radius
// [n_leaves], float64) come within ``ball_reach`` (distance - radius_a - radius_b - ball_offset
// <= ball_reach), itself first, then by centre distance (ties by leaf). Writes indptr
// [n_leaves + 1]; returns the malloc'ed int32 columns [indptr[n_leaves]] (the caller frees them).
int32_t* leaf_candidates(const double* box_lo, const double* box_hi, int64_t n_leaves, int64_t dims, double box_reach,
                         int64_t top_groups, const double* centre, const double* radius, int64_t centre_dims,
                         double ball_offset, double ball_reach, int threads, int64_t* indptr);

}  // namespace inform_fast
