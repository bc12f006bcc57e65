// The fused tile kernel of DBSCAN's passes: value[i][j] = col_norm[j] - 2 r_i . c_j (the GEMM form
// of a squared distance less |r_i|^2, so its rounding is inside the tile band) for row points r_i
// against column points c_j of any dimension (all D coordinates, or the top principal ones for a
// lower bound), computed in registers and compared with each row's threshold there: no tile in
// memory and no BLAS workspace. The columns come packed in panels of kPanelWidth (pack_panels):
// panel p holds columns [16 p, 16 p + 16) coordinate by coordinate ([dim][16], 64 contiguous bytes
// per coordinate), so a register block streams one contiguous panel; padding columns have
// coordinates 0 and norm +inf, so no threshold ever takes them.
// Why not the BLAS GEMM plus an epilogue: the GEMM's tile (512 x 4096 float32, 8 MB per worker)
// and its packing buffers were most of DBSCAN's memory at 32,000 points, and the epilogue read the
// tile back from memory; this kernel measured 82-92 GFLOP/s on one core of the 2-core EPYC against
// 65 (torch's sgemm) and 76 (NumPy's) for the same 512 x 4032 x 128 product alone.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace inform_fast {
namespace panel {

constexpr int64_t kPanelWidth = 16;  // columns per panel (two AVX2 vectors)
constexpr int kBlockRows = 6;        // rows per register block: 12 accumulators + 2 column vectors + 1 broadcast
// Column panels kept in L2 while every row block passes over them (256 KB: 32 panels of 128
// coordinates; a whole tile of 4,096 such columns is 2 MB and would stream from L3 per row block)
constexpr int64_t kGroupBytes = 256 * 1024;

struct Operands {
  const float* rows = nullptr;      // [n_rows, dim] row-major
  const float* panels = nullptr;    // [n_panels, dim, kPanelWidth]
  const float* col_norm = nullptr;  // [n_panels * kPanelWidth], +inf on padding
  int64_t n_rows = 0, n_panels = 0, dim = 0;
};

// Rows [i0, i0 + R) against panel p: for each row r, the bits j of the columns whose value is at
// most hi[r] (``below_hi[r]``) and at most lo[r] (``below_lo[r]``).
template <int R>
struct PlainBlock {
  const Operands& t;
  void operator()(int64_t i0, int64_t p, const float* lo, const float* hi, uint32_t* below_lo, uint32_t* below_hi) const {
    float dot[R][kPanelWidth] = {};
    const float* c = t.panels + p * t.dim * kPanelWidth;
    for (int64_t d = 0; d < t.dim; ++d) {
      for (int r = 0; r < R; ++r) {
        const float rd = t.rows[(i0 + r) * t.dim + d];
        for (int64_t j = 0; j < kPanelWidth; ++j) dot[r][j] += rd * c[d * kPanelWidth + j];
      }
    }
    const float* norm = t.col_norm + p * kPanelWidth;
    for (int r = 0; r < R; ++r) {
      uint32_t bits_lo = 0, bits_hi = 0;
      for (int64_t j = 0; j < kPanelWidth; ++j) {
        const float value = norm[j] - 2.0f * dot[r][j];
        bits_lo |= static_cast<uint32_t>(value <= lo[r]) << j;
        bits_hi |= static_cast<uint32_t>(value <= hi[r]) << j;
      }
      below_lo[r] = bits_lo;
      below_hi[r] = bits_hi;
    }
  }
};

#if defined(__x86_64__) && defined(__GNUC__)
template <int R>
struct Avx2Block {
  const Operands& t;
  // Always six rows in twelve named accumulators (blocks of fewer rows repeat their last row and
  // keep only theirs): with an array of accumulators GCC stored every one to the stack on each
  // coordinate, at a third of the speed.
  __attribute__((target("avx2,fma"))) void operator()(int64_t i0, int64_t p, const float* lo, const float* hi,
                                                       uint32_t* below_lo, uint32_t* below_hi) const {
    static_assert(R >= 1 && R <= 6, "blocks of 1 to 6 rows");
    const int64_t dim = t.dim;
    const float* c = t.panels + p * dim * kPanelWidth;
    const float* r0 = t.rows + i0 * dim;
    const float* r1 = r0 + (R > 1 ? 1 : 0) * dim;
    const float* r2 = r0 + (R > 2 ? 2 : R - 1) * dim;
    const float* r3 = r0 + (R > 3 ? 3 : R - 1) * dim;
    const float* r4 = r0 + (R > 4 ? 4 : R - 1) * dim;
    const float* r5 = r0 + (R > 5 ? 5 : R - 1) * dim;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    for (int64_t d = 0; d < dim; ++d) {
      const __m256 c0 = _mm256_loadu_ps(c + d * kPanelWidth), c1 = _mm256_loadu_ps(c + d * kPanelWidth + 8);
      __m256 b = _mm256_broadcast_ss(r0 + d);
      a00 = _mm256_fmadd_ps(b, c0, a00);
      a01 = _mm256_fmadd_ps(b, c1, a01);
      b = _mm256_broadcast_ss(r1 + d);
      a10 = _mm256_fmadd_ps(b, c0, a10);
      a11 = _mm256_fmadd_ps(b, c1, a11);
      b = _mm256_broadcast_ss(r2 + d);
      a20 = _mm256_fmadd_ps(b, c0, a20);
      a21 = _mm256_fmadd_ps(b, c1, a21);
      b = _mm256_broadcast_ss(r3 + d);
      a30 = _mm256_fmadd_ps(b, c0, a30);
      a31 = _mm256_fmadd_ps(b, c1, a31);
      b = _mm256_broadcast_ss(r4 + d);
      a40 = _mm256_fmadd_ps(b, c0, a40);
      a41 = _mm256_fmadd_ps(b, c1, a41);
      b = _mm256_broadcast_ss(r5 + d);
      a50 = _mm256_fmadd_ps(b, c0, a50);
      a51 = _mm256_fmadd_ps(b, c1, a51);
    }
    const float* norm = t.col_norm + p * kPanelWidth;
    const __m256 n0 = _mm256_loadu_ps(norm), n1 = _mm256_loadu_ps(norm + 8);
    finish(n0, n1, lo[0], hi[0], a00, a01, below_lo[0], below_hi[0]);
    if (R > 1) finish(n0, n1, lo[1], hi[1], a10, a11, below_lo[1], below_hi[1]);
    if (R > 2) finish(n0, n1, lo[2], hi[2], a20, a21, below_lo[2], below_hi[2]);
    if (R > 3) finish(n0, n1, lo[3], hi[3], a30, a31, below_lo[3], below_hi[3]);
    if (R > 4) finish(n0, n1, lo[4], hi[4], a40, a41, below_lo[4], below_hi[4]);
    if (R > 5) finish(n0, n1, lo[5], hi[5], a50, a51, below_lo[5], below_hi[5]);
  }

  // One row's values norm - 2 dot compared with its two thresholds.
  __attribute__((target("avx2,fma"))) static inline void finish(__m256 n0, __m256 n1, float lo, float hi, __m256 dot0,
                                                                __m256 dot1, uint32_t& below_lo, uint32_t& below_hi) {
    const __m256 minus_two = _mm256_set1_ps(-2.0f);
    const __m256 v0 = _mm256_fmadd_ps(minus_two, dot0, n0), v1 = _mm256_fmadd_ps(minus_two, dot1, n1);
    const __m256 l = _mm256_set1_ps(lo), h = _mm256_set1_ps(hi);
    below_lo = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v0, l, _CMP_LE_OQ))) |
               (static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v1, l, _CMP_LE_OQ))) << 8);
    below_hi = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v0, h, _CMP_LE_OQ))) |
               (static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v1, h, _CMP_LE_OQ))) << 8);
  }
};

inline bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

// One register block of ``rows`` (1 to kBlockRows) rows: an instantiation per height, so the last
// rows of a tile take a smaller block.
template <template <int> class Block>
inline void block_rows(const Operands& t, int rows, int64_t i0, int64_t p, const float* lo, const float* hi,
                       uint32_t* below_lo, uint32_t* below_hi) {
  switch (rows) {
    case 6: Block<6>{t}(i0, p, lo, hi, below_lo, below_hi); break;
    case 5: Block<5>{t}(i0, p, lo, hi, below_lo, below_hi); break;
    case 4: Block<4>{t}(i0, p, lo, hi, below_lo, below_hi); break;
    case 3: Block<3>{t}(i0, p, lo, hi, below_lo, below_hi); break;
    case 2: Block<2>{t}(i0, p, lo, hi, below_lo, below_hi); break;
    default: Block<1>{t}(i0, p, lo, hi, below_lo, below_hi); break;
  }
}

// Calls visit(i, p, below_lo, below_hi) for every row i and panel p where some value is at most
// hi[i] (below_hi: those columns, bit j for column 16 p + j; below_lo: those at most lo[i]), each
// row's panels in ascending order; visit returns its exact tests. With a finite ``budget`` the rows
// go in order over all panels and the scan stops after the block of rows whose tests pass the
// budget: returns -(rows done) then, else the exact tests. Without one, panels go in L2-sized
// groups, every row over a group before the next group (the same per-row order).
template <template <int> class Block, typename Visit>
int64_t scan_with(const Operands& t, const float* lo, const float* hi, int64_t budget, Visit& visit) {
  static_assert(kBlockRows == 6, "block_rows instantiates heights 1 to 6");
  const bool budgeted = budget < std::numeric_limits<int64_t>::max();
  const int64_t panel_bytes = std::max<int64_t>(1, t.dim * kPanelWidth * static_cast<int64_t>(sizeof(float)));
  const int64_t group = budgeted ? std::max<int64_t>(t.n_panels, 1) : std::max<int64_t>(1, kGroupBytes / panel_bytes);
  int64_t tests = 0;
  uint32_t below_lo[kBlockRows], below_hi[kBlockRows];
  for (int64_t p0 = 0; p0 < t.n_panels; p0 += group) {
    const int64_t p1 = std::min(t.n_panels, p0 + group);
    for (int64_t i0 = 0; i0 < t.n_rows; i0 += kBlockRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kBlockRows, t.n_rows - i0));
      for (int64_t p = p0; p < p1; ++p) {
        block_rows<Block>(t, rows, i0, p, lo + i0, hi + i0, below_lo, below_hi);
        for (int r = 0; r < rows; ++r)
          if (below_hi[r]) tests += visit(i0 + r, p, below_lo[r], below_hi[r]);
      }
      if (budgeted && tests > budget && i0 + rows < t.n_rows) return -(i0 + rows);
    }
  }
  return tests;
}

// scan_with the AVX2 block where the CPU has it (and ``portable`` is false), else the plain one.
template <typename Visit>
int64_t scan(const Operands& t, const float* lo, const float* hi, int64_t budget, bool portable, Visit visit) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (!portable && has_avx2_fma()) return scan_with<Avx2Block>(t, lo, hi, budget, visit);
#endif
  return scan_with<PlainBlock>(t, lo, hi, budget, visit);
}

}  // namespace panel
}  // namespace inform_fast
