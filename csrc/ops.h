// Plain CPU kernels behind inform_fast._C (no Python, no pybind11 here: csrc/bindings.cpp holds
// the one PYBIND11_MODULE and checks the arguments before calling these).
//
// DBSCAN tiles: the Python driver computes, with a BLAS GEMM, the partial squared distance
//   partial[i, j] = ||c_j||^2 - 2 r_i . c_j            [rows, cols] float32, row-major
// and a per-row threshold thr[i] = eps^2 - ||r_i||^2, so "r_i and c_j are eps-neighbours" is
// partial[i, j] <= thr[i]. These functions are the fused epilogues over such a tile.
#pragma once

#include <cstdint>
#include <vector>

namespace inform_fast {

// Adds the number of eps-neighbours in the tile to count_rows[i] (per row) and, when
// count_cols is not null, to count_cols[j] (per column; used for the mirrored half of a
// symmetric tiling).
void dbscan_tile_counts(const float* partial, int64_t rows, int64_t cols, const float* thr,
                        int64_t* count_rows, int64_t* count_cols);

// Union-find over the eps-neighbour pairs of a tile, in place on parent[0:n], which must be
// fully compressed on entry (parent[x] is x's root) and is again on exit. row_ids / col_ids map
// tile rows / columns to parent indices. Roots are always the smallest index of the component.
void dbscan_tile_union(const float* partial, int64_t rows, int64_t cols, const float* thr, const int64_t* row_ids,
                       const int64_t* col_ids, int64_t* parent, int64_t n);

// Union-find over parent[0:n] (in place): for each edge links the larger root under the smaller
// one, so every root is the smallest index of its component; finishes with full compression.
void union_edges(int64_t* parent, int64_t n, const int64_t* edge_a, const int64_t* edge_b, int64_t n_edges);

// Nearest reference (exact squared Euclidean distance, no GEMM cancellation) for each query:
// best_d2[q] and best_index[q] (the smallest index among ties).
void nearest_reference(const float* queries, int64_t n_queries, const float* refs, int64_t n_refs,
                       int64_t dim, float* best_d2, int64_t* best_index);

// Epilogue of a nearest-reference GEMM tile: tile[i, j] = -2 q_i . r_j ([rows, cols] float32,
// row-major) and col_norm[j] = ||r_j||^2, so col_norm[j] + tile[i, j] orders the references by
// distance to q_i. Where a row's minimum is strictly below best[i], sets best[i] to it and
// best_index[i] to col_offset + its first column (so ties keep the smallest index, and an
// earlier tile wins a tie against a later one).
void nearest_tile_update(const float* tile, int64_t rows, int64_t cols, const float* col_norm, int64_t col_offset,
                         float* best, int64_t* best_index);

}  // namespace inform_fast
