// The one PYBIND11_MODULE of inform_fast._C. Takes NumPy arrays (no torch headers at build
// time); every argument is checked here and errors start with the op name and name the argument.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "ops.h"

namespace py = pybind11;

namespace {

using F32 = py::array_t<float, py::array::c_style>;
using F64 = py::array_t<double, py::array::c_style>;
using I64 = py::array_t<int64_t, py::array::c_style>;

[[noreturn]] void fail(const std::string& op, const std::string& message) {
  throw py::value_error(op + ": " + message);
}

// Rejects anything that is not already a C-contiguous array of the right dtype, so in-place
// outputs are never silently written into a converted copy.
template <typename T>
py::array_t<T, py::array::c_style> checked(const std::string& op, const char* name, const py::handle& obj, int ndim) {
  if (!py::isinstance<py::array>(obj)) fail(op, std::string(name) + " must be a NumPy array");
  auto arr = py::reinterpret_borrow<py::array>(obj);
  // equal, not identical: an unpickled array carries its own dtype object (same type, same byte order)
  if (!arr.dtype().equal(py::dtype::of<T>()))
    fail(op, std::string(name) + " must have dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                 std::string(py::str(arr.dtype())));
  if (!(arr.flags() & py::array::c_style)) fail(op, std::string(name) + " must be C-contiguous");
  if (arr.ndim() != ndim)
    fail(op, std::string(name) + " must be " + std::to_string(ndim) + "-D, got " + std::to_string(arr.ndim()) + "-D");
  return py::array_t<T, py::array::c_style>::ensure(arr);
}

void check_len(const std::string& op, const char* name, const py::array& arr, int64_t expected) {
  if (arr.shape(0) != expected)
    fail(op, std::string(name) + " must have length " + std::to_string(expected) + ", got " + std::to_string(arr.shape(0)));
}

void check_ids(const std::string& op, const char* name, const I64& ids, int64_t n, const char* bound) {
  const int64_t* p = ids.data();
  for (int64_t i = 0; i < ids.shape(0); ++i)
    if (p[i] < 0 || p[i] >= n) fail(op, std::string(name) + " holds an index outside [0, " + bound + ")");
}

// fn(In{}, Out{}) for the float types of an input (float64 where ``in_double``, else float32) and of
// an output: one call site for the four instantiations of a kernel templated on both.
template <typename Fn>
void with_float_types(bool in_double, bool out_double, Fn&& fn) {
  if (in_double && out_double)
    fn(double{}, double{});
  else if (in_double)
    fn(double{}, float{});
  else if (out_double)
    fn(float{}, double{});
  else
    fn(float{}, float{});
}

// The union-find forest the panel kernels update in place: fully compressed, roots at minima.
void check_parent(const std::string& op, const I64& parent) {
  const int64_t* p = parent.data();
  for (int64_t k = 0; k < parent.shape(0); ++k)
    if (p[k] < 0 || p[k] > k || p[p[k]] != p[k])
      fail(op, "parent must be a fully compressed union-find forest rooted at minima (parent[parent[x]] == parent[x] <= x)");
}

// A float32 or float64 C-contiguous 2-D array, checked (``is_double`` receives which).
py::array float_matrix(const std::string& op, const char* name, py::handle obj, bool& is_double) {
  if (!py::isinstance<py::array>(obj)) fail(op, std::string(name) + " must be a NumPy array");
  auto arr = py::reinterpret_borrow<py::array>(obj);
  is_double = arr.dtype().equal(py::dtype::of<double>());
  if (!is_double && !arr.dtype().equal(py::dtype::of<float>()))
    fail(op, std::string(name) + " must have dtype float32 or float64, got " + std::string(py::str(arr.dtype())));
  if (!(arr.flags() & py::array::c_style)) fail(op, std::string(name) + " must be C-contiguous");
  if (arr.ndim() != 2) fail(op, std::string(name) + " must be 2-D, got " + std::to_string(arr.ndim()) + "-D");
  return arr;
}

// A float32 or float64 [n, dim] C-contiguous array as exact-test rows; the array is kept alive by ``keep``.
inform_fast::Rows rows_of(const std::string& op, const char* name, const py::handle& obj, double scale, py::array& keep) {
  bool is_double = false;
  keep = float_matrix(op, name, obj, is_double);
  if (!(scale > 0.0) || !std::isfinite(scale)) fail(op, "scale must be a finite number > 0");
  inform_fast::Rows rows;
  rows.data = keep.data();
  rows.is_double = is_double;
  rows.dim = keep.shape(1);
  rows.scale = scale;
  return rows;
}

// A lower-bound tile's operands, checked: the rows' principal coordinates, the columns'
// coordinate-major and padded to a multiple of 16, and the columns' squared norms (padded alike).
struct BoundTile {
  py::array_t<float, py::array::c_style> rows_low, cols_low_t, col_norm;
  int64_t rows, dim, stride;

  BoundTile(const std::string& op, const char* rows_name, py::handle rows_obj, py::handle cols_obj, py::handle norm_obj,
            int64_t cols) {
    rows_low = checked<float>(op, rows_name, rows_obj, 2);
    cols_low_t = checked<float>(op, "cols_low_t", cols_obj, 2);
    col_norm = checked<float>(op, "col_norm", norm_obj, 1);
    rows = rows_low.shape(0);
    dim = rows_low.shape(1);
    stride = cols_low_t.shape(1);
    if (cols_low_t.shape(0) != dim) fail(op, std::string("cols_low_t must be [dim, stride] with the dim of ") + rows_name);
    if (stride % 16 != 0 || stride < cols || stride >= cols + 16)
      fail(op, "cols_low_t must have its columns padded to the next multiple of 16 (" + std::to_string(cols) + " columns)");
    check_len(op, "col_norm", col_norm, stride);
  }
};

// The columns of a panel tile, packed (ops.h pack_panels) into caller-owned buffers.
template <typename T>
void pack_panels_typed(const std::string& op, const py::array& source, const I64& ids, py::handle mean_obj, double scale,
                       py::handle centre_obj, py::array_t<float, py::array::c_style>& panels,
                       py::array_t<float, py::array::c_style>& norm) {
  const int64_t dim = source.shape(1);
  py::array_t<T, py::array::c_style> mean;
  if (!mean_obj.is_none()) {
    mean = checked<T>(op, "mean", mean_obj, 1);
    check_len(op, "mean", mean, dim);
  }
  F32 centre;
  if (!centre_obj.is_none()) {
    centre = checked<float>(op, "centre", centre_obj, 1);
    check_len(op, "centre", centre, dim);
  }
  const T* data = static_cast<const T*>(source.data());
  const T* mean_data = mean_obj.is_none() ? nullptr : mean.data();
  const float* centre_data = centre_obj.is_none() ? nullptr : centre.data();
  py::gil_scoped_release release;
  inform_fast::pack_panels<T>(data, dim, ids.data(), ids.shape(0), mean_data, scale, centre_data, panels.mutable_data(),
                              norm.mutable_data());
}

void pack_panels(py::handle source_obj, py::handle ids_obj, py::handle mean_obj, double scale, py::handle centre_obj,
                 py::handle panels_obj, py::handle norm_obj) {
  const std::string op = "pack_panels";
  bool is_double = false;
  const py::array source = float_matrix(op, "source", source_obj, is_double);
  auto ids = checked<int64_t>(op, "ids", ids_obj, 1);
  auto panels = checked<float>(op, "panels", panels_obj, 3);
  auto norm = checked<float>(op, "norm", norm_obj, 1);
  const int64_t cols = ids.shape(0), dim = source.shape(1), n_panels = (cols + 15) / 16;
  if (panels.shape(0) != n_panels || panels.shape(1) != dim || panels.shape(2) != 16)
    fail(op, "panels must be [ceil(len(ids) / 16), dim, 16] = [" + std::to_string(n_panels) + ", " + std::to_string(dim) +
                 ", 16]");
  check_len(op, "norm", norm, n_panels * 16);
  check_ids(op, "ids", ids, source.shape(0), "len(source)");
  if (!(scale > 0.0) || !std::isfinite(scale)) fail(op, "scale must be a finite number > 0");
  if (is_double)
    pack_panels_typed<double>(op, source, ids, mean_obj, scale, centre_obj, panels, norm);
  else
    pack_panels_typed<float>(op, source, ids, mean_obj, scale, centre_obj, panels, norm);
}

// A panel tile's operands, checked: the rows, the packed columns and their norms, the thresholds
// and the ids of rows and columns (in [0, n)).
struct PanelTile {
  F32 rows, panels, col_norm;
  F64 lo, hi;
  I64 row_ids, col_ids;
  bool has_lo = false;
  int64_t n_rows = 0, dim = 0, cols = 0;

  PanelTile(const std::string& op, py::handle rows_obj, py::handle panels_obj, py::handle norm_obj, py::handle lo_obj,
            py::handle hi_obj, py::handle row_ids_obj, py::handle col_ids_obj, int64_t n) {
    rows = checked<float>(op, "rows", rows_obj, 2);
    panels = checked<float>(op, "panels", panels_obj, 3);
    col_norm = checked<float>(op, "col_norm", norm_obj, 1);
    has_lo = !lo_obj.is_none();
    if (has_lo) lo = checked<double>(op, "thr_lo", lo_obj, 1);
    hi = checked<double>(op, "thr_hi", hi_obj, 1);
    row_ids = checked<int64_t>(op, "row_ids", row_ids_obj, 1);
    col_ids = checked<int64_t>(op, "col_ids", col_ids_obj, 1);
    n_rows = rows.shape(0);
    dim = rows.shape(1);
    cols = col_ids.shape(0);
    if (panels.shape(0) != (cols + 15) / 16 || panels.shape(1) != dim || panels.shape(2) != 16)
      fail(op, "panels must be [ceil(len(col_ids) / 16), dim of rows, 16]");
    check_len(op, "col_norm", col_norm, panels.shape(0) * 16);
    if (has_lo) check_len(op, "thr_lo", lo, n_rows);
    check_len(op, "thr_hi", hi, n_rows);
    check_len(op, "row_ids", row_ids, n_rows);
    for (int64_t i = 0; i < n_rows; ++i)
      if ((has_lo && std::isnan(lo.data()[i])) || std::isnan(hi.data()[i])) fail(op, "thr_lo and thr_hi must not be NaN");
    check_ids(op, "row_ids", row_ids, n, "n_points");
    check_ids(op, "col_ids", col_ids, n, "n_points");
  }

  const double* lo_data() const { return has_lo ? lo.data() : nullptr; }
};

int64_t panel_neighbours(py::handle rows_obj, py::handle panels_obj, py::handle norm_obj, py::handle lo_obj,
                         py::handle hi_obj, py::handle row_ids_obj, py::handle col_ids_obj, py::handle points_obj,
                         double scale, double eps2, py::handle counts_obj, py::handle lists_obj, int64_t budget,
                         bool portable) {
  const std::string op = "dbscan_panel_neighbours";
  py::array keep;
  const auto points = rows_of(op, "points", points_obj, scale, keep);
  const int64_t n = keep.shape(0);
  if (n >= (int64_t{1} << 31)) fail(op, "points must have fewer than 2^31 rows");
  const PanelTile t(op, rows_obj, panels_obj, norm_obj, lo_obj, hi_obj, row_ids_obj, col_ids_obj, n);
  auto counts = checked<int32_t>(op, "counts", counts_obj, 1);
  auto lists = checked<int32_t>(op, "lists", lists_obj, 2);
  check_len(op, "counts", counts, n);
  check_len(op, "lists", lists, n);
  if (budget < 0) fail(op, "budget must be >= 0");
  py::gil_scoped_release release;
  return inform_fast::dbscan_panel_neighbours(t.rows.data(), t.n_rows, t.dim, t.panels.data(), t.col_norm.data(), t.cols,
                                              t.lo_data(), t.hi.data(), t.row_ids.data(), t.col_ids.data(), points, eps2,
                                              counts.mutable_data(), lists.mutable_data(), lists.shape(1), budget, portable);
}

int64_t panel_union(py::handle rows_obj, py::handle panels_obj, py::handle norm_obj, py::handle lo_obj, py::handle hi_obj,
                    py::handle row_ids_obj, py::handle col_ids_obj, py::handle points_obj, double scale, double eps2,
                    py::handle parent_obj, int64_t budget, bool portable) {
  const std::string op = "dbscan_panel_union";
  py::array keep;
  const auto points = rows_of(op, "points", points_obj, scale, keep);
  auto parent = checked<int64_t>(op, "parent", parent_obj, 1);
  const int64_t n = parent.shape(0);
  if (keep.shape(0) != n) fail(op, "points must have one row per parent entry");
  const PanelTile t(op, rows_obj, panels_obj, norm_obj, lo_obj, hi_obj, row_ids_obj, col_ids_obj, n);
  check_parent(op, parent);
  if (budget < 0) fail(op, "budget must be >= 0");
  py::gil_scoped_release release;
  return inform_fast::dbscan_panel_union(t.rows.data(), t.n_rows, t.dim, t.panels.data(), t.col_norm.data(), t.cols,
                                         t.lo_data(), t.hi.data(), t.row_ids.data(), t.col_ids.data(), points, eps2,
                                         parent.mutable_data(), n, budget, portable);
}

template <typename T>
int64_t full_tile_typed(const std::string& op, inform_fast::FullTile<T> tile, const py::array& source, py::handle mean_obj,
                        const inform_fast::Rows& points, double eps2, int32_t* counts, int32_t* lists, int64_t cap,
                        int64_t* parent, int64_t n, bool portable) {
  auto mean = checked<T>(op, "mean", mean_obj, 1);
  check_len(op, "mean", mean, tile.dim);
  tile.source = static_cast<const T*>(source.data());
  tile.mean = mean.data();
  py::gil_scoped_release release;
  return inform_fast::dbscan_full_tile<T>(tile, points, eps2, counts, lists, cap, parent, n, portable);
}

int64_t full_tile(py::handle rows_obj, py::handle threshold_obj, py::handle row_local_obj, py::handle row_global_obj,
                  double c1, double c2, py::handle source_obj, py::handle mean_obj, double scale, py::handle centre_obj,
                  py::handle col_ids_obj, py::handle col_pos_obj, py::handle global_norms_obj, py::handle row_ids_obj,
                  py::handle points_obj, double points_scale, double eps2, py::handle panels_obj, py::handle norm_obj,
                  py::handle counts_obj, py::handle lists_obj, py::handle parent_obj, bool portable) {
  const std::string op = "dbscan_full_tile";
  auto rows = checked<float>(op, "rows", rows_obj, 2);
  const int64_t n_rows = rows.shape(0), dim = rows.shape(1);
  auto threshold = checked<double>(op, "threshold", threshold_obj, 1);
  auto row_local = checked<double>(op, "row_local", row_local_obj, 1);
  auto row_global = checked<double>(op, "row_global", row_global_obj, 1);
  auto row_ids = checked<int64_t>(op, "row_ids", row_ids_obj, 1);
  for (const auto* arr : {&threshold, &row_local, &row_global}) check_len(op, "threshold, row_local and row_global", *arr, n_rows);
  check_len(op, "row_ids", row_ids, n_rows);
  for (int64_t i = 0; i < n_rows; ++i)
    if (std::isnan(threshold.data()[i]) || !std::isfinite(row_local.data()[i]) || !std::isfinite(row_global.data()[i]))
      fail(op, "threshold must not be NaN and row_local, row_global must be finite");
  if (!std::isfinite(c1) || !std::isfinite(c2) || c1 < 0.0 || c2 < 0.0) fail(op, "c1 and c2 must be finite numbers >= 0");
  if (!(scale > 0.0) || !std::isfinite(scale)) fail(op, "scale must be a finite number > 0");
  bool is_double = false;
  const py::array source = float_matrix(op, "source", source_obj, is_double);
  if (source.shape(1) != dim) fail(op, "source must have the dim of rows");
  F32 centre;
  if (!centre_obj.is_none()) {
    centre = checked<float>(op, "centre", centre_obj, 1);
    check_len(op, "centre", centre, dim);
  }
  auto col_ids = checked<int64_t>(op, "col_ids", col_ids_obj, 1);
  auto col_pos = checked<int64_t>(op, "col_pos", col_pos_obj, 1);
  auto global_norms = checked<double>(op, "global_norms", global_norms_obj, 1);
  check_len(op, "col_pos", col_pos, col_ids.shape(0));
  check_ids(op, "col_pos", col_pos, global_norms.shape(0), "len(global_norms)");
  py::array keep;
  const auto points = rows_of(op, "points", points_obj, points_scale, keep);
  const int64_t n = keep.shape(0);
  if (points.dim != dim || source.shape(0) != n) fail(op, "points must have the rows and the dim of source");
  check_ids(op, "col_ids", col_ids, n, "len(source)");
  check_ids(op, "row_ids", row_ids, n, "len(source)");
  auto panels = checked<float>(op, "panels", panels_obj, 3);
  auto norm = checked<float>(op, "norm", norm_obj, 1);
  if (panels.shape(0) < 1 || panels.shape(1) != dim || panels.shape(2) != 16)
    fail(op, "panels must be [chunk_cols / 16 >= 1, dim of rows, 16]");
  check_len(op, "norm", norm, panels.shape(0) * 16);
  const bool neighbours = !counts_obj.is_none();
  if (neighbours == !parent_obj.is_none() || neighbours == lists_obj.is_none())
    fail(op, "give counts and lists (neighbours) or parent (union)");
  py::array_t<int32_t, py::array::c_style> counts, lists;
  I64 parent;
  if (neighbours) {
    counts = checked<int32_t>(op, "counts", counts_obj, 1);
    lists = checked<int32_t>(op, "lists", lists_obj, 2);
    check_len(op, "counts", counts, n);
    check_len(op, "lists", lists, n);
  } else {
    parent = checked<int64_t>(op, "parent", parent_obj, 1);
    check_len(op, "parent", parent, n);
    check_parent(op, parent);
  }
  const float* centre_data = centre_obj.is_none() ? nullptr : centre.data();
  int32_t* counts_data = neighbours ? counts.mutable_data() : nullptr;
  int32_t* lists_data = neighbours ? lists.mutable_data() : nullptr;
  const int64_t cap = neighbours ? lists.shape(1) : 0;
  int64_t* parent_data = neighbours ? nullptr : parent.mutable_data();
  const auto run = [&](auto zero) {
    using T = decltype(zero);
    const inform_fast::FullTile<T> tile{rows.data(), n_rows, dim, threshold.data(), row_local.data(), row_global.data(),
                                        c1, c2, nullptr, nullptr, scale, centre_data, col_ids.data(), col_pos.data(),
                                        global_norms.data(), col_ids.shape(0), row_ids.data(), panels.mutable_data(),
                                        norm.mutable_data(), panels.shape(0) * 16};
    return full_tile_typed<T>(op, tile, source, mean_obj, points, eps2, counts_data, lists_data, cap, parent_data, n, portable);
  };
  return is_double ? run(double{}) : run(float{});
}

void union_edges(py::handle parent_obj, py::handle a_obj, py::handle b_obj) {
  const std::string op = "union_edges";
  auto parent = checked<int64_t>(op, "parent", parent_obj, 1);
  auto a = checked<int64_t>(op, "edge_a", a_obj, 1);
  auto b = checked<int64_t>(op, "edge_b", b_obj, 1);
  const int64_t n = parent.shape(0), e = a.shape(0);
  check_len(op, "edge_b", b, e);
  for (int64_t k = 0; k < n; ++k)
    if (parent.data()[k] < 0 || parent.data()[k] >= n) fail(op, "parent holds an index outside [0, n)");
  for (int64_t k = 0; k < e; ++k)
    if (a.data()[k] < 0 || a.data()[k] >= n || b.data()[k] < 0 || b.data()[k] >= n)
      fail(op, "edge_a/edge_b hold an index outside [0, len(parent))");
  py::gil_scoped_release release;
  inform_fast::union_edges(parent.mutable_data(), n, a.data(), b.data(), e);
}

void union_lists(py::handle parent_obj, py::handle lists_obj, py::handle counts_obj, py::handle core_obj) {
  const std::string op = "union_lists";
  auto parent = checked<int64_t>(op, "parent", parent_obj, 1);
  auto lists = checked<int32_t>(op, "lists", lists_obj, 2);
  auto counts = checked<int32_t>(op, "counts", counts_obj, 1);
  auto core = checked<bool>(op, "core", core_obj, 1);
  const int64_t n = parent.shape(0), cap = lists.shape(1);
  check_len(op, "lists", lists, n);
  check_len(op, "counts", counts, n);
  check_len(op, "core", core, n);
  for (int64_t k = 0; k < n; ++k)
    if (parent.data()[k] < 0 || parent.data()[k] >= n) fail(op, "parent holds an index outside [0, n)");
  for (int64_t i = 0; i < n; ++i) {
    if (!core.data()[i]) continue;
    const int64_t listed = std::min<int64_t>(counts.data()[i], cap);
    for (int64_t t = 0; t < listed; ++t)
      if (lists.data()[i * cap + t] < 0 || lists.data()[i * cap + t] >= n)
        fail(op, "lists holds an index outside [0, n) within a core point's count");
  }
  py::gil_scoped_release release;
  inform_fast::union_lists(parent.mutable_data(), n, lists.data(), cap, counts.data(), core.data());
}

// The arguments every k-NN heap update shares, checked: the original rows (exact tests), the
// heaps, and the ids of a tile's rows (queries) and columns (references).
struct KnnHeaps {
  py::array keep_q, keep_r;
  inform_fast::Rows queries, refs;
  py::array_t<int64_t, py::array::c_style> row_ids, col_ids, best_index;
  py::array_t<double, py::array::c_style> best_d2;
  int64_t rows, cols, k;

  KnnHeaps(const std::string& op, py::handle queries_obj, py::handle refs_obj, double scale, py::handle row_ids_obj,
           py::handle col_ids_obj, py::handle best_d2_obj, py::handle best_index_obj, double frame_to_exact) {
    queries = rows_of(op, "queries", queries_obj, scale, keep_q);
    refs = rows_of(op, "references", refs_obj, scale, keep_r);
    if (queries.dim != refs.dim) fail(op, "queries and references must have the same dimension");
    row_ids = checked<int64_t>(op, "row_ids", row_ids_obj, 1);
    col_ids = checked<int64_t>(op, "col_ids", col_ids_obj, 1);
    best_d2 = checked<double>(op, "best_d2", best_d2_obj, 2);
    best_index = checked<int64_t>(op, "best_index", best_index_obj, 2);
    rows = row_ids.shape(0);
    cols = col_ids.shape(0);
    k = best_d2.shape(1);
    if (!(frame_to_exact > 0.0) || !std::isfinite(frame_to_exact)) fail(op, "frame_to_exact must be a finite number > 0");
    check_len(op, "best_d2", best_d2, keep_q.shape(0));
    check_len(op, "best_index", best_index, keep_q.shape(0));
    if (best_index.shape(1) != k || k < 1) fail(op, "best_d2 and best_index must both be [n_queries, k] with k >= 1");
    check_ids(op, "row_ids", row_ids, keep_q.shape(0), "n_queries");
    check_ids(op, "col_ids", col_ids, keep_r.shape(0), "n_references");
  }
};

int64_t knn_tile_update(py::handle partial_obj, py::handle q_norm_obj, py::handle band_obj, double frame_to_exact,
                        py::handle row_ids_obj, py::handle col_ids_obj, py::handle queries_obj, py::handle refs_obj,
                        double scale, py::handle best_d2_obj, py::handle best_index_obj, int threads) {
  const std::string op = "knn_tile_update";
  KnnHeaps h(op, queries_obj, refs_obj, scale, row_ids_obj, col_ids_obj, best_d2_obj, best_index_obj, frame_to_exact);
  auto partial = checked<float>(op, "partial", partial_obj, 2);
  auto q_norm = checked<float>(op, "q_norm", q_norm_obj, 1);
  auto band = checked<float>(op, "band", band_obj, 1);
  check_len(op, "row_ids", h.row_ids, partial.shape(0));
  check_len(op, "col_ids", h.col_ids, partial.shape(1));
  check_len(op, "q_norm", q_norm, h.rows);
  check_len(op, "band", band, h.rows);
  py::gil_scoped_release release;
  return inform_fast::knn_tile_update(partial.data(), h.rows, h.cols, q_norm.data(), band.data(), frame_to_exact,
                                      h.row_ids.data(), h.col_ids.data(), h.queries, h.refs, h.k, h.best_d2.mutable_data(),
                                      h.best_index.mutable_data(), threads);
}

int64_t knn_bound_update(py::handle q_low_obj, py::handle cols_low_t_obj, py::handle col_norm_obj, py::handle q_norm_obj,
                         py::handle band_obj, double slack, double frame_to_exact, py::handle row_ids_obj,
                         py::handle col_ids_obj, py::handle queries_obj, py::handle refs_obj, double scale,
                         py::handle best_d2_obj, py::handle best_index_obj, int64_t budget, bool portable,
                         py::handle gate_starts_obj, py::handle gate_lo_obj, py::handle gate_hi_obj, py::handle gate_rows_obj) {
  const std::string op = "knn_bound_update";
  KnnHeaps h(op, queries_obj, refs_obj, scale, row_ids_obj, col_ids_obj, best_d2_obj, best_index_obj, frame_to_exact);
  const BoundTile t(op, "q_low", q_low_obj, cols_low_t_obj, col_norm_obj, h.cols);
  auto q_norm = checked<float>(op, "q_norm", q_norm_obj, 1);
  auto band = checked<float>(op, "band", band_obj, 1);
  check_len(op, "row_ids", h.row_ids, t.rows);
  check_len(op, "q_norm", q_norm, h.rows);
  check_len(op, "band", band, h.rows);
  if (!(slack >= 0.0) || !std::isfinite(slack)) fail(op, "slack must be a finite number >= 0");
  // the optional leaf gate: all four arrays or none
  const int given = !gate_starts_obj.is_none() + !gate_lo_obj.is_none() + !gate_hi_obj.is_none() + !gate_rows_obj.is_none();
  if (given != 0 && given != 4) fail(op, "gate_starts, gate_lo, gate_hi and gate_rows go together (all or none)");
  I64 gate_starts;
  F64 gate_lo, gate_hi, gate_rows;
  inform_fast::LeafGate gate;
  if (given == 4) {
    gate_starts = checked<int64_t>(op, "gate_starts", gate_starts_obj, 1);
    gate_lo = checked<double>(op, "gate_lo", gate_lo_obj, 2);
    gate_hi = checked<double>(op, "gate_hi", gate_hi_obj, 2);
    gate_rows = checked<double>(op, "gate_rows", gate_rows_obj, 2);
    const int64_t groups = gate_lo.shape(0), dims = gate_lo.shape(1);
    check_len(op, "gate_starts", gate_starts, groups + 1);
    if (gate_hi.shape(0) != groups || gate_hi.shape(1) != dims) fail(op, "gate_hi must have the shape of gate_lo");
    if (gate_rows.shape(0) != h.rows || gate_rows.shape(1) != dims)
      fail(op, "gate_rows must be [rows, " + std::to_string(dims) + "] (one row per query row, gate_lo's columns)");
    const int64_t* starts = gate_starts.data();
    if (starts[0] != 0 || starts[groups] != h.cols) fail(op, "gate_starts must run from 0 to the number of columns");
    for (int64_t g = 0; g < groups; ++g)
      if (starts[g + 1] < starts[g]) fail(op, "gate_starts must be non-decreasing");
    for (const F64* arr : {&gate_lo, &gate_hi, &gate_rows})
      for (int64_t e = 0; e < arr->size(); ++e)
        if (!std::isfinite(arr->data()[e])) fail(op, "gate_lo, gate_hi and gate_rows must be finite");
    gate = inform_fast::LeafGate{starts, groups, dims, gate_lo.data(), gate_hi.data(), gate_rows.data()};
  }
  py::gil_scoped_release release;
  return inform_fast::knn_bound_update(t.rows_low.data(), h.rows, t.cols_low_t.data(), t.stride, h.cols, t.dim, t.col_norm.data(),
                                       q_norm.data(), band.data(), slack, frame_to_exact, h.row_ids.data(), h.col_ids.data(),
                                       h.queries, h.refs, h.k, h.best_d2.mutable_data(), h.best_index.mutable_data(), budget,
                                       portable, gate);
}

py::tuple knn_bound_group(py::handle top_obj, py::handle starts_obj, py::handle order_obj, py::handle norms_obj,
                          py::handle box_lo_obj, py::handle box_hi_obj, py::handle visit_order_obj, py::handle visit_bound_obj,
                          py::handle covered_obj, int64_t visited, int64_t width, int64_t max_width, double slack,
                          py::handle ids_obj, py::handle low_obj, py::handle box_coords_obj, py::handle global_obj,
                          py::handle centre_low_obj, double c1, double c2, double frame_to_exact, py::handle queries_obj,
                          py::handle refs_obj, double scale, py::handle best_d2_obj, py::handle best_index_obj,
                          double bound_fraction, bool portable) {
  const std::string op = "knn_bound_group";
  auto top = checked<float>(op, "top", top_obj, 2);
  auto starts = checked<int64_t>(op, "starts", starts_obj, 1);
  auto order = checked<int64_t>(op, "order", order_obj, 1);
  auto norms = checked<double>(op, "norms", norms_obj, 1);
  auto box_lo = checked<double>(op, "box_lo", box_lo_obj, 2);
  auto box_hi = checked<double>(op, "box_hi", box_hi_obj, 2);
  auto visit_order = checked<int64_t>(op, "visit_order", visit_order_obj, 1);
  auto visit_bound = checked<double>(op, "visit_bound", visit_bound_obj, 1);
  auto covered = checked<int64_t>(op, "covered", covered_obj, 1);
  auto ids = checked<int64_t>(op, "ids", ids_obj, 1);
  auto low = checked<float>(op, "low", low_obj, 2);
  auto box_coords = checked<double>(op, "box_coords", box_coords_obj, 2);
  auto global = checked<double>(op, "global_norms", global_obj, 1);
  auto centre_low = checked<float>(op, "centre_low", centre_low_obj, 1);
  auto best_d2 = checked<double>(op, "best_d2", best_d2_obj, 2);
  auto best_index = checked<int64_t>(op, "best_index", best_index_obj, 2);
  py::array keep_q, keep_r;
  const auto queries = rows_of(op, "queries", queries_obj, scale, keep_q);
  const auto refs = rows_of(op, "references", refs_obj, scale, keep_r);
  if (queries.dim != refs.dim) fail(op, "queries and references must have the same dimension");
  const int64_t n = top.shape(0), dim_low = top.shape(1), n_leaves = box_lo.shape(0), box_dims = box_lo.shape(1);
  const int64_t leaves = visit_order.shape(0), rows = ids.shape(0), k = best_d2.shape(1);
  check_len(op, "order", order, n);
  check_len(op, "norms", norms, n);
  check_len(op, "starts", starts, n_leaves + 1);
  if (box_hi.shape(0) != n_leaves || box_hi.shape(1) != box_dims) fail(op, "box_hi must have the shape of box_lo");
  check_len(op, "visit_bound", visit_bound, leaves);
  check_len(op, "covered", covered, leaves + 1);
  check_len(op, "low", low, rows);
  check_len(op, "box_coords", box_coords, rows);
  check_len(op, "global_norms", global, rows);
  check_len(op, "centre_low", centre_low, dim_low);
  if (low.shape(1) != dim_low) fail(op, "low must have the columns of top");
  if (box_coords.shape(1) != box_dims) fail(op, "box_coords must have the columns of box_lo");
  check_len(op, "best_d2", best_d2, keep_q.shape(0));
  check_len(op, "best_index", best_index, keep_q.shape(0));
  if (best_index.shape(1) != k || k < 1) fail(op, "best_d2 and best_index must both be [n_queries, k] with k >= 1");
  check_ids(op, "ids", ids, keep_q.shape(0), "n_queries");
  check_ids(op, "visit_order", visit_order, n_leaves, "n_leaves");
  const int64_t* st = starts.data();
  if (st[0] != 0 || st[n_leaves] != n) fail(op, "starts must run from 0 to the number of points");
  for (int64_t l = 0; l < n_leaves; ++l)
    if (st[l + 1] < st[l]) fail(op, "starts must be non-decreasing");
  const int64_t* cov = covered.data();
  if (cov[0] != 0) fail(op, "covered must start at 0");
  for (int64_t v = 0; v < leaves; ++v) {
    const int64_t leaf = visit_order.data()[v];
    if (cov[v + 1] - cov[v] != st[leaf + 1] - st[leaf]) fail(op, "covered must be the running point counts of visit_order");
    if (v > 0 && !(visit_bound.data()[v] >= visit_bound.data()[v - 1])) fail(op, "visit_bound must be ascending");
  }
  if (visited < 0 || visited > leaves) fail(op, "visited must be in [0, the number of leaves to visit]");
  if (width < 1 || max_width < width) fail(op, "width must satisfy 1 <= width <= max_width");
  if (!(slack >= 0.0) || !std::isfinite(slack)) fail(op, "slack must be a finite number >= 0");
  if (!(frame_to_exact > 0.0) || !std::isfinite(frame_to_exact)) fail(op, "frame_to_exact must be a finite number > 0");
  if (!(c1 >= 0.0) || !(c2 >= 0.0) || !std::isfinite(c1) || !std::isfinite(c2)) fail(op, "c1 and c2 must be finite numbers >= 0");
  if (!(bound_fraction >= 0.0) || !(bound_fraction <= 1.0)) fail(op, "bound_fraction must be in [0, 1]");
  // order's values are checked where the search reads them (all n of them per group would cost more than the group)
  const int64_t n_refs = keep_r.shape(0);
  py::array_t<int64_t> keep(rows), full_rows(rows);
  inform_fast::KnnGroupResult result;
  {
    py::gil_scoped_release release;
    const inform_fast::KnnLeafIndex index{top.data(), dim_low, st, order.data(), norms.data(), box_lo.data(), box_hi.data(), box_dims};
    inform_fast::KnnVisit visit{visit_order.data(), visit_bound.data(), cov, leaves, visited, width, max_width, slack};
    const inform_fast::KnnGroupRows group{ids.data(), low.data(), box_coords.data(), global.data(), centre_low.data(), rows};
    const inform_fast::KnnBand band{c1, c2, frame_to_exact};
    result = inform_fast::knn_bound_group(index, visit, group, band, queries, refs, k, best_d2.mutable_data(),
                                          best_index.mutable_data(), bound_fraction, portable, keep.mutable_data(),
                                          full_rows.mutable_data(), n_refs);
  }
  keep.resize({static_cast<py::ssize_t>(result.active)});
  full_rows.resize({static_cast<py::ssize_t>(result.failed_rows)});
  return py::make_tuple(result.status, result.visited, result.width, keep, full_rows, result.failed_start,
                        result.bound_pairs, result.tests);
}

void knn_sort_rows(py::handle best_d2_obj, py::handle best_index_obj, int threads) {
  const std::string op = "knn_sort_rows";
  auto best_d2 = checked<double>(op, "best_d2", best_d2_obj, 2);
  auto best_index = checked<int64_t>(op, "best_index", best_index_obj, 2);
  if (best_index.shape(0) != best_d2.shape(0) || best_index.shape(1) != best_d2.shape(1))
    fail(op, "best_index must have the shape of best_d2");
  if (!best_d2.writeable() || !best_index.writeable()) fail(op, "best_d2 and best_index must be writeable (sorted in place)");
  if (threads < 1) fail(op, "threads must be >= 1");
  const int64_t rows = best_d2.shape(0), k = best_d2.shape(1);
  py::gil_scoped_release release;
  inform_fast::knn_sort_rows(best_d2.mutable_data(), best_index.mutable_data(), rows, k, threads);
}

py::tuple kd_order(py::handle coords_obj, int64_t leaf_size) {
  const std::string op = "kd_order";
  auto coords = checked<float>(op, "coords", coords_obj, 2);
  if (leaf_size < 1) fail(op, "leaf_size must be >= 1");
  const int64_t n = coords.shape(0), dims = coords.shape(1);
  if (dims < 1) fail(op, "coords must have at least one column");
  py::array_t<int64_t> order(n);
  std::vector<int64_t> sizes;
  {
    py::gil_scoped_release release;
    sizes = inform_fast::kd_order(coords.data(), n, dims, leaf_size, order.mutable_data());
  }
  py::array_t<int64_t> size_array(static_cast<py::ssize_t>(sizes.size()));
  std::copy(sizes.begin(), sizes.end(), size_array.mutable_data());
  return py::make_tuple(order, size_array);
}

void gather_frame(py::handle source_obj, py::handle ids_obj, py::handle mean_obj, double scale, py::handle out_obj) {
  const std::string op = "gather_frame";
  auto source = checked<float>(op, "source", source_obj, 2);
  auto ids = checked<int64_t>(op, "ids", ids_obj, 1);
  auto mean = checked<float>(op, "mean", mean_obj, 1);
  auto out = checked<float>(op, "out", out_obj, 2);
  const int64_t n = source.shape(0), dim = source.shape(1), m = ids.shape(0);
  check_len(op, "mean", mean, dim);
  check_len(op, "out", out, m);
  if (out.shape(1) != dim) fail(op, "out must have as many columns as source");
  // a power of two (frames scale by one), so the product rounds nothing
  int exponent = 0;
  if (!(scale > 0.0) || !std::isfinite(scale) || std::frexp(scale, &exponent) != 0.5 || static_cast<double>(static_cast<float>(scale)) != scale)
    fail(op, "scale must be a power of two representable in float32");
  check_ids(op, "ids", ids, n, "n");
  py::gil_scoped_release release;
  inform_fast::gather_frame(source.data(), dim, ids.data(), m, mean.data(), static_cast<float>(scale), out.mutable_data());
}

template <typename T, typename O>
void principal_coordinates_typed(const std::string& op, const py::array& source, const int64_t* ids, int64_t n,
                                 py::handle mean_obj, double scale, bool float_frame, const F64& axes, py::handle out_obj,
                                 int threads) {
  auto mean = checked<T>(op, "mean", mean_obj, 1);
  check_len(op, "mean", mean, source.shape(1));
  auto out = checked<O>(op, "out", out_obj, 2);
  if (out.shape(0) != n || out.shape(1) != axes.shape(1)) fail(op, "out must be [len(ids) or len(source), p]");
  const T* data = static_cast<const T*>(source.data());
  py::gil_scoped_release release;
  inform_fast::principal_coordinates<T, O>(data, source.shape(1), ids, n, mean.data(), scale, float_frame, axes.data(),
                                           axes.shape(1), out.mutable_data(), threads);
}

void principal_coordinates(py::handle source_obj, py::handle mean_obj, double scale, bool float_frame, py::handle axes_obj,
                           py::handle out_obj, int threads, py::handle ids_obj) {
  const std::string op = "principal_coordinates";
  bool is_double = false;
  const py::array source = float_matrix(op, "source", source_obj, is_double);
  auto axes = checked<double>(op, "axes", axes_obj, 2);
  if (axes.shape(0) != source.shape(1)) fail(op, "axes must be [dim, p] with the dim of source");
  if (!(scale > 0.0) || !std::isfinite(scale)) fail(op, "scale must be a finite number > 0");
  if (threads < 1) fail(op, "threads must be >= 1");
  I64 ids;
  const int64_t* id_data = nullptr;
  int64_t n = source.shape(0);
  if (!ids_obj.is_none()) {
    ids = checked<int64_t>(op, "ids", ids_obj, 1);
    check_ids(op, "ids", ids, source.shape(0), "len(source)");
    id_data = ids.data();
    n = ids.shape(0);
  }
  if (!py::isinstance<py::array>(out_obj)) fail(op, "out must be a NumPy array");
  const bool out_double = py::reinterpret_borrow<py::array>(out_obj).dtype().equal(py::dtype::of<double>());
  with_float_types(is_double, out_double, [&](auto in, auto out) {
    principal_coordinates_typed<decltype(in), decltype(out)>(op, source, id_data, n, mean_obj, scale, float_frame, axes,
                                                             out_obj, threads);
  });
}

template <typename T, typename O>
void leaf_statistics_typed(const std::string& op, const py::array& source, const I64& order, const I64& starts,
                           py::handle mean_obj, double scale, bool float_frame, double inflate, py::handle sqnorm_obj,
                           F64& norms, F64& centre, F64& radius, int threads) {
  auto mean = checked<T>(op, "mean", mean_obj, 1);
  check_len(op, "mean", mean, source.shape(1));
  auto sqnorm = checked<O>(op, "sqnorm", sqnorm_obj, 1);
  check_len(op, "sqnorm", sqnorm, order.shape(0));
  const T* data = static_cast<const T*>(source.data());
  py::gil_scoped_release release;
  inform_fast::leaf_statistics<T, O>(data, source.shape(1), order.data(), starts.data(), starts.shape(0) - 1, mean.data(),
                                     scale, float_frame, inflate, sqnorm.mutable_data(), norms.mutable_data(),
                                     centre.mutable_data(), radius.mutable_data(), threads);
}

void leaf_statistics(py::handle source_obj, py::handle order_obj, py::handle starts_obj, py::handle mean_obj, double scale,
                     bool float_frame, double inflate, py::handle sqnorm_obj, py::handle norms_obj, py::handle centre_obj,
                     py::handle radius_obj, int threads) {
  const std::string op = "leaf_statistics";
  bool is_double = false;
  const py::array source = float_matrix(op, "source", source_obj, is_double);
  auto order = checked<int64_t>(op, "order", order_obj, 1);
  auto starts = checked<int64_t>(op, "starts", starts_obj, 1);
  auto norms = checked<double>(op, "norms", norms_obj, 1);
  auto centre = checked<double>(op, "centre", centre_obj, 2);
  auto radius = checked<double>(op, "radius", radius_obj, 1);
  const int64_t n = order.shape(0), n_leaves = starts.shape(0) - 1;
  if (n_leaves < 0) fail(op, "starts must hold n_leaves + 1 >= 1 entries");
  const int64_t* st = starts.data();
  if (st[0] != 0 || st[n_leaves] != n) fail(op, "starts must run from 0 to len(order)");
  for (int64_t l = 0; l < n_leaves; ++l)
    if (st[l + 1] < st[l]) fail(op, "starts must be non-decreasing");
  check_ids(op, "order", order, source.shape(0), "len(source)");
  check_len(op, "norms", norms, n);
  check_len(op, "centre", centre, n_leaves);
  if (centre.shape(1) != source.shape(1)) fail(op, "centre must be [n_leaves, dim of source]");
  check_len(op, "radius", radius, n_leaves);
  if (!(scale > 0.0) || !std::isfinite(scale)) fail(op, "scale must be a finite number > 0");
  if (!(inflate >= 1.0) || !std::isfinite(inflate)) fail(op, "inflate must be a finite number >= 1");
  if (threads < 1) fail(op, "threads must be >= 1");
  const bool out_double = py::isinstance<py::array>(sqnorm_obj) &&
                          py::reinterpret_borrow<py::array>(sqnorm_obj).dtype().equal(py::dtype::of<double>());
  with_float_types(is_double, out_double, [&](auto in, auto out) {
    leaf_statistics_typed<decltype(in), decltype(out)>(op, source, order, starts, mean_obj, scale, float_frame, inflate,
                                                       sqnorm_obj, norms, centre, radius, threads);
  });
}

py::tuple leaf_candidates(py::handle lo_obj, py::handle hi_obj, double box_reach, py::handle centre_obj, py::handle radius_obj,
                          double ball_offset, double ball_reach, int64_t top_groups, int threads) {
  const std::string op = "leaf_candidates";
  auto lo = checked<double>(op, "box_lo", lo_obj, 2);
  auto hi = checked<double>(op, "box_hi", hi_obj, 2);
  auto centre = checked<double>(op, "centre", centre_obj, 2);
  auto radius = checked<double>(op, "radius", radius_obj, 1);
  const int64_t n = lo.shape(0), dims = lo.shape(1);
  if (hi.shape(0) != n || hi.shape(1) != dims) fail(op, "box_hi must have the shape of box_lo");
  check_len(op, "centre", centre, n);
  check_len(op, "radius", radius, n);
  if (n > std::numeric_limits<int32_t>::max()) fail(op, "more than 2^31 - 1 leaves");
  if (!(box_reach >= 0.0) || std::isinf(box_reach)) fail(op, "box_reach must be a finite number >= 0");
  if (!std::isfinite(ball_offset) || !std::isfinite(ball_reach)) fail(op, "ball_offset and ball_reach must be finite");
  if (top_groups < 1) fail(op, "top_groups must be >= 1");
  for (int64_t e = 0; e < n * dims; ++e)
    if (!std::isfinite(lo.data()[e]) || !std::isfinite(hi.data()[e]) || lo.data()[e] > hi.data()[e])
      fail(op, "box_lo and box_hi must be finite with box_lo <= box_hi");
  for (int64_t e = 0; e < centre.size(); ++e)
    if (!std::isfinite(centre.data()[e])) fail(op, "centre must be finite");
  for (int64_t e = 0; e < n; ++e)
    if (!(radius.data()[e] >= 0.0) || std::isinf(radius.data()[e])) fail(op, "radius must be finite and >= 0");
  I64 indptr(n + 1);
  int32_t* columns;
  {
    py::gil_scoped_release release;
    columns = inform_fast::leaf_candidates(lo.data(), hi.data(), n, dims, box_reach, top_groups, centre.data(),
                                           radius.data(), centre.shape(1), ball_offset, ball_reach, threads,
                                           indptr.mutable_data());
  }
  // the columns stay where the search wrote them: the array owns them
  py::capsule owner(columns, [](void* p) { std::free(p); });
  py::array_t<int32_t> out({static_cast<py::ssize_t>(indptr.data()[n])}, {static_cast<py::ssize_t>(sizeof(int32_t))}, columns,
                           owner);
  return py::make_tuple(indptr, out);
}

py::tuple knn_exact(py::handle queries_obj, py::handle refs_obj, int64_t k, double scale, int threads) {
  const std::string op = "knn_exact";
  py::array keep_q, keep_r;
  const auto queries = rows_of(op, "queries", queries_obj, scale, keep_q);
  const auto refs = rows_of(op, "references", refs_obj, scale, keep_r);
  if (queries.dim != refs.dim)
    fail(op, "queries and references must have the same dimension, got " + std::to_string(queries.dim) + " and " +
                 std::to_string(refs.dim));
  if (queries.is_double != refs.is_double) fail(op, "queries and references must have the same dtype");
  const int64_t nq = keep_q.shape(0), nr = keep_r.shape(0);
  if (k < 1 || k > nr) fail(op, "k must be in [1, len(references)]");
  F64 d2({nq, k});
  I64 index({nq, k});
  {
    py::gil_scoped_release release;
    inform_fast::knn_exact(queries, nq, refs, nr, k, d2.mutable_data(), index.mutable_data(), threads);
  }
  return py::make_tuple(d2, index);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "inform_fast CPU kernels: DBSCAN and k-NN tile epilogues with the exact test of pairs inside the GEMM's "
            "error band, union-find, exact k-NN search";
  m.def("pack_panels", &pack_panels, py::arg("source"), py::arg("ids"), py::arg("mean"), py::arg("scale"),
        py::arg("centre"), py::arg("panels"), py::arg("norm"),
        "Rows ids of source (float32/float64 [n, dim]), through the frame (x - mean) * scale where mean is given, less "
        "centre (float32) where given, into panels [ceil(cols / 16), dim, 16] and their squared norms (padding 0 / +inf).");
  m.def("dbscan_panel_neighbours", &panel_neighbours, py::arg("rows"), py::arg("panels"), py::arg("col_norm"),
        py::arg("thr_lo"), py::arg("thr_hi"), py::arg("row_ids"), py::arg("col_ids"), py::arg("points"), py::arg("scale"),
        py::arg("eps2"), py::arg("counts"), py::arg("lists"), py::arg("budget"), py::arg("portable") = false,
        "Count the neighbours of each tile row (int32 counts, in place) and append them to its capped int32 list, the "
        "tile computed in registers from packed columns: value <= thr_lo: neighbour, > thr_hi: not, else exact test on "
        "points (thr_lo None: every pair <= thr_hi tested). Returns the exact tests, or -r when the first r rows needed "
        "more than budget of them (the other rows untouched).");
  m.def("dbscan_full_tile", &full_tile, py::arg("rows"), py::arg("threshold"), py::arg("row_local"), py::arg("row_global"),
        py::arg("c1"), py::arg("c2"), py::arg("source"), py::arg("mean"), py::arg("scale"), py::arg("centre"),
        py::arg("col_ids"), py::arg("col_pos"), py::arg("global_norms"), py::arg("row_ids"), py::arg("points"),
        py::arg("points_scale"), py::arg("eps2"), py::arg("panels"), py::arg("norm"), py::arg("counts") = py::none(),
        py::arg("lists") = py::none(), py::arg("parent") = py::none(), py::arg("portable") = false,
        "A full tile of dbscan_panel_neighbours (counts and lists given) or dbscan_panel_union (parent given) whose "
        "columns are packed a scratch's worth at a time (panels [chunk_cols / 16, dim, 16], norm [chunk_cols]), each "
        "chunk with its own error band: c1 (row_local + L)^2 + c2 (row_local + L)(row_global + G). Returns the exact tests.");
  m.def("dbscan_panel_union", &panel_union, py::arg("rows"), py::arg("panels"), py::arg("col_norm"), py::arg("thr_lo"),
        py::arg("thr_hi"), py::arg("row_ids"), py::arg("col_ids"), py::arg("points"), py::arg("scale"), py::arg("eps2"),
        py::arg("parent"), py::arg("budget"), py::arg("portable") = false,
        "Union-find (in place, int64 parent, roots at minima) over the neighbour pairs of a tile computed in registers "
        "from packed columns. Returns the exact tests, or -r as dbscan_panel_neighbours.");
  m.def("leaf_statistics", &leaf_statistics, py::arg("source"), py::arg("order"), py::arg("starts"), py::arg("mean"),
        py::arg("scale"), py::arg("float_frame"), py::arg("inflate"), py::arg("sqnorm"), py::arg("norms"), py::arg("centre"),
        py::arg("radius"), py::arg("threads") = 1,
        "An index's squared norms, inflated norms, leaf centres and inflated leaf radii of the frame values of "
        "source[order], leaf l being order[starts[l]:starts[l + 1]] (into the given arrays)");
  m.def("leaf_candidates", &leaf_candidates, py::arg("box_lo"), py::arg("box_hi"), py::arg("box_reach"), py::arg("centre"),
        py::arg("radius"), py::arg("ball_offset"), py::arg("ball_reach"), py::arg("top_groups") = 64, py::arg("threads") = 1,
        "(indptr int64 [n_leaves + 1], columns int32): per leaf, the leaves whose boxes come within box_reach and "
        "whose balls within ball_reach (distance - radii - ball_offset), itself first, then by centre distance");
  m.def("union_lists", &union_lists, py::arg("parent"), py::arg("lists"), py::arg("counts"), py::arg("core"),
        "union_edges over the listed neighbours of the core points that are core too.");
  m.def("gather_frame", &gather_frame, py::arg("source"), py::arg("ids"), py::arg("mean"), py::arg("scale"), py::arg("out"),
        "out[i] = (source[ids[i]] - mean) * scale, float32, scale a power of two (spatial.Frame.apply's values).");
  m.def("principal_coordinates", &principal_coordinates, py::arg("source"), py::arg("mean"), py::arg("scale"),
        py::arg("float_frame"), py::arg("axes"), py::arg("out"), py::arg("threads") = 1, py::arg("ids") = py::none(),
        "out = y @ axes (summed in float64, stored in out's dtype, float32 or float64) with y = (source[ids] - mean) * "
        "scale, rounded to float32 first where float_frame; all rows in order where ids is None.");
  m.def("kd_order", &kd_order, py::arg("coords"), py::arg("leaf_size"),
        "(order, leaf sizes): rows of coords (float32 [n, dims]) in k-d leaf order, median splits on the widest coordinate.");
  m.def("union_edges", &union_edges, py::arg("parent"), py::arg("edge_a"), py::arg("edge_b"),
        "Union-find over parent (int64, in place); roots are the smallest index of each component.");
  m.def("knn_tile_update", &knn_tile_update, py::arg("partial"), py::arg("q_norm"), py::arg("band"),
        py::arg("frame_to_exact"), py::arg("row_ids"), py::arg("col_ids"), py::arg("queries"), py::arg("references"),
        py::arg("scale"), py::arg("best_d2"), py::arg("best_index"), py::arg("threads") = 1,
        "Merge a tile's references into the per-query heaps of the k best (exact squared distance, id). "
        "Returns the number of exact tests.");
  m.def("knn_bound_update", &knn_bound_update, py::arg("q_low"), py::arg("cols_low_t"), py::arg("col_norm"),
        py::arg("q_norm"), py::arg("band"), py::arg("slack"),
        py::arg("frame_to_exact"), py::arg("row_ids"), py::arg("col_ids"), py::arg("queries"), py::arg("references"),
        py::arg("scale"), py::arg("best_d2"), py::arg("best_index"), py::arg("budget"), py::arg("portable") = false,
        py::arg("gate_starts") = py::none(), py::arg("gate_lo") = py::none(), py::arg("gate_hi") = py::none(),
        py::arg("gate_rows") = py::none(),
        "k-NN heaps updated from lower-bound coordinates (in place). Returns the number of exact tests, or -r when "
        "the first r rows needed more than budget of them (the other rows untouched).");
  m.def("knn_bound_group", &knn_bound_group, py::arg("top"), py::arg("starts"), py::arg("order"), py::arg("norms"),
        py::arg("box_lo"), py::arg("box_hi"), py::arg("visit_order"), py::arg("visit_bound"), py::arg("covered"),
        py::arg("visited"), py::arg("width"), py::arg("max_width"), py::arg("slack"), py::arg("ids"), py::arg("low"),
        py::arg("box_coords"), py::arg("global_norms"), py::arg("centre_low"), py::arg("c1"), py::arg("c2"),
        py::arg("frame_to_exact"), py::arg("queries"), py::arg("references"), py::arg("scale"), py::arg("best_d2"),
        py::arg("best_index"), py::arg("bound_fraction"), py::arg("portable") = false,
        "One query group of the pruned k-NN search after its first chunk (ops.h knn_bound_group), heaps in place. Returns "
        "(status 0 done / 1 a heap not full / 2 full tile needed, visited, width, open rows, rows needing a full tile, "
        "that chunk's first leaf, lower-bound pairs, exact tests).");
  m.def("knn_sort_rows", &knn_sort_rows, py::arg("best_d2"), py::arg("best_index"), py::arg("threads") = 1,
        "Sorts each row of k-NN heaps (float64 distances, int64 ids, [rows, k]) in place by (distance, id).");
  m.def("knn_exact", &knn_exact, py::arg("queries"), py::arg("references"), py::arg("k"), py::arg("scale") = 1.0,
        py::arg("threads") = 1,
        "Exact k nearest references by direct float64 differences: (squared distances float64 [q, k], ids int64 [q, k]), "
        "each row a max-heap (unsorted).");
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
