// The one PYBIND11_MODULE of inform_fast._C. Takes NumPy arrays (no torch headers at build
// time); every argument is checked here and errors start with the op name and name the argument.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "ops.h"

namespace py = pybind11;

namespace {

using F32 = py::array_t<float, py::array::c_style>;
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
  if (!arr.dtype().is(py::dtype::of<T>()))
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

void tile_counts(py::handle partial_obj, py::handle thr_obj, py::handle count_rows_obj, py::object count_cols_obj) {
  const std::string op = "dbscan_tile_counts";
  auto partial = checked<float>(op, "partial", partial_obj, 2);
  auto thr = checked<float>(op, "thr", thr_obj, 1);
  auto count_rows = checked<int64_t>(op, "count_rows", count_rows_obj, 1);
  const int64_t rows = partial.shape(0), cols = partial.shape(1);
  check_len(op, "thr", thr, rows);
  check_len(op, "count_rows", count_rows, rows);
  int64_t* cc = nullptr;
  I64 count_cols;
  if (!count_cols_obj.is_none()) {
    count_cols = checked<int64_t>(op, "count_cols", count_cols_obj, 1);
    check_len(op, "count_cols", count_cols, cols);
    cc = count_cols.mutable_data();
  }
  py::gil_scoped_release release;
  inform_fast::dbscan_tile_counts(partial.data(), rows, cols, thr.data(), count_rows.mutable_data(), cc);
}

void tile_union(py::handle partial_obj, py::handle thr_obj, py::handle row_ids_obj, py::handle col_ids_obj,
                py::handle parent_obj) {
  const std::string op = "dbscan_tile_union";
  auto partial = checked<float>(op, "partial", partial_obj, 2);
  auto thr = checked<float>(op, "thr", thr_obj, 1);
  auto row_ids = checked<int64_t>(op, "row_ids", row_ids_obj, 1);
  auto col_ids = checked<int64_t>(op, "col_ids", col_ids_obj, 1);
  auto parent = checked<int64_t>(op, "parent", parent_obj, 1);
  const int64_t rows = partial.shape(0), cols = partial.shape(1), n = parent.shape(0);
  if (n >= (int64_t{1} << 31)) fail(op, "parent must have fewer than 2^31 entries");
  check_len(op, "thr", thr, rows);
  check_len(op, "row_ids", row_ids, rows);
  check_len(op, "col_ids", col_ids, cols);
  for (int64_t i = 0; i < rows; ++i)
    if (row_ids.data()[i] < 0 || row_ids.data()[i] >= n) fail(op, "row_ids holds an index outside [0, len(parent))");
  for (int64_t j = 0; j < cols; ++j)
    if (col_ids.data()[j] < 0 || col_ids.data()[j] >= n) fail(op, "col_ids holds an index outside [0, len(parent))");
  const int64_t* p = parent.data();
  for (int64_t k = 0; k < n; ++k)
    if (p[k] < 0 || p[k] > k || p[p[k]] != p[k])
      fail(op, "parent must be fully compressed with parent[x] <= x (as union_edges leaves it)");
  py::gil_scoped_release release;
  inform_fast::dbscan_tile_union(partial.data(), rows, cols, thr.data(), row_ids.data(), col_ids.data(),
                                 parent.mutable_data(), n);
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

py::tuple nearest_reference(py::handle queries_obj, py::handle refs_obj) {
  const std::string op = "nearest_reference";
  auto queries = checked<float>(op, "queries", queries_obj, 2);
  auto refs = checked<float>(op, "references", refs_obj, 2);
  if (queries.shape(1) != refs.shape(1))
    fail(op, "queries and references must have the same dimension, got " + std::to_string(queries.shape(1)) + " and " +
                 std::to_string(refs.shape(1)));
  if (refs.shape(0) < 1) fail(op, "references must not be empty");
  const int64_t nq = queries.shape(0), nr = refs.shape(0), dim = queries.shape(1);
  F32 d2(nq);
  I64 index(nq);
  {
    py::gil_scoped_release release;
    inform_fast::nearest_reference(queries.data(), nq, refs.data(), nr, dim, d2.mutable_data(), index.mutable_data());
  }
  return py::make_tuple(d2, index);
}

void nearest_tile_update(py::handle tile_obj, py::handle norm_obj, int64_t col_offset, py::handle best_obj,
                         py::handle index_obj) {
  const std::string op = "nearest_tile_update";
  auto tile = checked<float>(op, "tile", tile_obj, 2);
  auto norm = checked<float>(op, "col_norm", norm_obj, 1);
  auto best = checked<float>(op, "best", best_obj, 1);
  auto index = checked<int64_t>(op, "best_index", index_obj, 1);
  const int64_t rows = tile.shape(0), cols = tile.shape(1);
  if (cols < 1) fail(op, "tile must have at least one column");
  if (col_offset < 0) fail(op, "col_offset must be >= 0");
  check_len(op, "col_norm", norm, cols);
  check_len(op, "best", best, rows);
  check_len(op, "best_index", index, rows);
  py::gil_scoped_release release;
  inform_fast::nearest_tile_update(tile.data(), rows, cols, norm.data(), col_offset, best.mutable_data(),
                                   index.mutable_data());
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "inform_fast CPU kernels (DBSCAN tile epilogues and union-find, nearest reference: exact search and GEMM tile epilogue)";
  m.def("dbscan_tile_counts", &tile_counts, py::arg("partial"), py::arg("thr"), py::arg("count_rows"),
        py::arg("count_cols") = py::none(),
        "Add eps-neighbour counts of a [rows, cols] float32 tile (partial <= thr[row]) to count_rows / count_cols (int64, in place).");
  m.def("dbscan_tile_union", &tile_union, py::arg("partial"), py::arg("thr"), py::arg("row_ids"), py::arg("col_ids"),
        py::arg("parent"),
        "Union-find (in place on a fully compressed int64 parent) over the eps-neighbour pairs of a float32 tile.");
  m.def("union_edges", &union_edges, py::arg("parent"), py::arg("edge_a"), py::arg("edge_b"),
        "Union-find over parent (int64, in place); roots are the smallest index of each component.");
  m.def("nearest_reference", &nearest_reference, py::arg("queries"), py::arg("references"),
        "Exact nearest reference per query: (squared distance float32 [q], index int64 [q]).");
  m.def("nearest_tile_update", &nearest_tile_update, py::arg("tile"), py::arg("col_norm"), py::arg("col_offset"),
        py::arg("best"), py::arg("best_index"),
        "Merge the row minima of col_norm + tile (float32 [rows, cols], -2 q.r) into best / best_index (in place; "
        "strictly smaller wins, ties keep the first column).");
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
