// The lower-bound tile kernel shared by the k-NN and DBSCAN epilogues: rows' and columns' top
// principal coordinates (centred alike) give value[i][j] = col_norm[j] - 2 r_i . c_j, the GEMM form
// of their squared distance less |r_i|^2 (so its error is inside the tile band), computed in
// registers for blocks of kBoundRows rows x kBoundWidth columns; only the blocks with a value at or
// below a row's limit reach the caller's scalar work (the exact tests). The columns are stored
// coordinate-major (cols_low_t [dim, stride], stride a multiple of kBoundWidth, padding ignored).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace inform_fast {
namespace bound {

// The float at or above ``value`` nearest to it (a threshold rounded outwards).
inline float round_up(double value) {
  float rounded = static_cast<float>(value);
  if (static_cast<double>(rounded) < value) rounded = std::nextafter(rounded, std::numeric_limits<float>::infinity());
  return rounded;
}

// Squared Euclidean distance between two axis-aligned boxes [lo_a, hi_a] and [lo_b, hi_b] of
// ``dims`` coordinates (a point is a box with lo = hi), in double: a lower bound of the distance
// between any point of one and any point of the other.
inline double box_gap2(const double* lo_a, const double* hi_a, const double* lo_b, const double* hi_b, int64_t dims) {
  double sum = 0.0;
  for (int64_t d = 0; d < dims; ++d) {
    const double gap = std::max({0.0, lo_b[d] - hi_a[d], lo_a[d] - hi_b[d]});
    sum += gap * gap;
  }
  return sum;
}

constexpr int64_t kBoundWidth = 16;  // columns per block
constexpr int kBoundRows = 4;        // rows per block: each column value loaded once for four rows

struct Tile {
  const float *rows_low, *cols_low_t, *col_norm;
  int64_t dim, stride;
};

// Portable block: plain loops (the compiler vectorises them for its baseline target).
template <int R>
struct PlainBlock {
  Tile t;
  bool operator()(int64_t i0, int64_t j0, const float* limit, float (*value)[kBoundWidth]) const {
    float dot[R][kBoundWidth] = {};
    for (int64_t d = 0; d < t.dim; ++d) {
      const float* c = t.cols_low_t + d * t.stride + j0;
      for (int r = 0; r < R; ++r) {
        const float rd = t.rows_low[(i0 + r) * t.dim + d];
        for (int64_t j = 0; j < kBoundWidth; ++j) dot[r][j] += rd * c[j];
      }
    }
    bool any = false;
    for (int r = 0; r < R; ++r)
      for (int64_t j = 0; j < kBoundWidth; ++j) {
        value[r][j] = t.col_norm[j0 + j] - 2.0f * dot[r][j];
        any |= value[r][j] <= limit[r];
      }
    return any;
  }
};

#if defined(__x86_64__) && defined(__GNUC__)
// The same block with AVX2 fused multiply-adds (chosen at run time where the CPU has them):
// about 3x the plain loops on a 2-core EPYC (0.6 vs 1.8 ns per pair at 16 coordinates).
template <int R>
struct Avx2Block {
  Tile t;
  __attribute__((target("avx2,fma"))) bool operator()(int64_t i0, int64_t j0, const float* limit,
                                                       float (*value)[kBoundWidth]) const {
    __m256 dot[R][2];
    for (int r = 0; r < R; ++r) dot[r][0] = dot[r][1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < t.dim; ++d) {
      const float* c = t.cols_low_t + d * t.stride + j0;
      const __m256 c0 = _mm256_loadu_ps(c), c1 = _mm256_loadu_ps(c + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 rd = _mm256_set1_ps(t.rows_low[(i0 + r) * t.dim + d]);
        dot[r][0] = _mm256_fmadd_ps(rd, c0, dot[r][0]);
        dot[r][1] = _mm256_fmadd_ps(rd, c1, dot[r][1]);
      }
    }
    const __m256 n0 = _mm256_loadu_ps(t.col_norm + j0), n1 = _mm256_loadu_ps(t.col_norm + j0 + 8);
    const __m256 minus_two = _mm256_set1_ps(-2.0f);
    int any = 0;
    for (int r = 0; r < R; ++r) {
      const __m256 v0 = _mm256_fmadd_ps(minus_two, dot[r][0], n0), v1 = _mm256_fmadd_ps(minus_two, dot[r][1], n1);
      const __m256 lim = _mm256_set1_ps(limit[r]);
      any |= _mm256_movemask_ps(_mm256_cmp_ps(v0, lim, _CMP_LE_OQ)) | _mm256_movemask_ps(_mm256_cmp_ps(v1, lim, _CMP_LE_OQ));
      _mm256_storeu_ps(value[r], v0);
      _mm256_storeu_ps(value[r] + 8, v1);
    }
    return any != 0;
  }
};

inline bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

// Rows [i0, i0 + R) over every column block: ``limit`` [R] (the caller's, updated by ``visit``);
// visit(r, j0, values) handles row i0 + r's values in block j0 (some at or below limit[r]) and
// returns its exact tests.
// ``skip`` (or nullptr): per column block, nonzero where the caller knows no row of these needs it.
template <int R, typename Block, typename Visit>
inline int64_t scan_rows(const Block& block, int64_t i0, int64_t stride, float* limit, Visit& visit,
                         const uint8_t* skip = nullptr) {
  int64_t tests = 0;
  float value[R][kBoundWidth];
  for (int64_t j0 = 0; j0 < stride; j0 += kBoundWidth) {
    if (skip != nullptr && skip[j0 / kBoundWidth]) continue;
    if (!block(i0, j0, limit, value)) continue;
    for (int r = 0; r < R; ++r) tests += visit(i0 + r, r, j0, value[r], limit[r]);
  }
  return tests;
}

// Every row, in blocks of kBoundRows (the last ones one by one): init(i) gives row i's starting
// limit, visit(i, r, j0, values, limit) handles a block (updating limit), flush(i0, count) ends the
// rows [i0, i0 + count) once every column block was seen (work visit deferred; its exact tests),
// skip(i0, count) names the column blocks those rows need not see (see scan_rows; nullptr: none).
// Stops after a block once the exact tests exceed ``budget``: returns -(rows done) then, else the
// exact tests.
template <typename Init, typename Visit, typename Flush, typename Skip>
int64_t scan_tile(const Tile& tile, int64_t rows, int64_t budget, bool portable, Init init, Visit visit, Flush flush,
                  Skip skip) {
  const auto run = [&](const auto& block1, const auto& block4) -> int64_t {
    int64_t tests = 0;
    for (int64_t i = 0; i < rows; i += kBoundRows) {
      if (i + kBoundRows <= rows) {
        float limit[kBoundRows];
        for (int r = 0; r < kBoundRows; ++r) limit[r] = init(i + r);
        tests += scan_rows<kBoundRows>(block4, i, tile.stride, limit, visit, skip(i, kBoundRows));
        tests += flush(i, kBoundRows);
      } else {
        for (int64_t r = i; r < rows; ++r) {
          float limit[1] = {init(r)};
          tests += scan_rows<1>(block1, r, tile.stride, limit, visit, skip(r, 1));
          tests += flush(r, 1);
        }
      }
      const int64_t done = std::min(rows, i + kBoundRows);
      if (tests > budget && done < rows) return -done;
    }
    return tests;
  };
#if defined(__x86_64__) && defined(__GNUC__)
  if (!portable && has_avx2_fma()) return run(Avx2Block<1>{tile}, Avx2Block<kBoundRows>{tile});
#endif
  return run(PlainBlock<1>{tile}, PlainBlock<kBoundRows>{tile});
}

template <typename Init, typename Visit>
int64_t scan_tile(const Tile& tile, int64_t rows, int64_t budget, bool portable, Init init, Visit visit) {
  return scan_tile(tile, rows, budget, portable, init, visit, [](int64_t, int64_t) { return int64_t{0}; },
                   [](int64_t, int64_t) -> const uint8_t* { return nullptr; });
}

}  // namespace bound
}  // namespace inform_fast
