"""The C++ extension inform_fast._C against NumPy oracles, and its argument checks."""
import numpy as np
import pytest
import torch

from inform_fast import _native
from inform_fast.testing import requires_cpp

pytestmark = requires_cpp()


def C():
    return _native.module()


def components(hit, n):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = np.nonzero(hit)
    return connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)[1]


def assert_roots_are_component_minima(parent, comp):
    for k in np.unique(comp):
        members = np.flatnonzero(comp == k)
        assert (parent[members] == members.min()).all()


def exact_d2(points, a, b):
    return ((points[a].astype(np.float64)[:, None] - points[b].astype(np.float64)[None]) ** 2).sum(-1)


def packed(points, cols, centre=None):
    """(panels, norms) of the columns ``cols`` of float32 points, through pack_panels."""
    n_panels = -(-len(cols) // 16)
    panels = np.full((n_panels, points.shape[1], 16), np.nan, np.float32)  # every entry must be written
    norm = np.full(n_panels * 16, np.nan, np.float32)
    C().pack_panels(points, np.asarray(cols, np.int64), None, 1.0, centre, panels, norm)
    return panels, norm


def panel_thresholds(points, rows, eps2, band):
    """float64 thresholds eps2 - ||r||^2 -/+ band of the tile rows."""
    r = points[rows].astype(np.float64)
    thr = eps2 - (r * r).sum(1)
    return thr - band, thr + band


@pytest.mark.parametrize("source_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", [1, 16, 37])
def test_pack_panels_is_the_frame_map_column_by_column(cols, source_dtype):
    # column j of panel p, coordinate d, is (source[ids[16 p + j], d] - mean[d]) * scale rounded once
    # to float32, less the centre in float32; padding columns are 0 with norm +inf
    rng = np.random.default_rng(cols)
    source = (rng.normal(size=(50, 7)) * 100 + 3).astype(source_dtype)
    ids = rng.integers(0, 50, cols).astype(np.int64)
    mean = source.mean(0).astype(source_dtype)
    centre = rng.normal(size=7).astype(np.float32)
    n_panels = -(-cols // 16)
    panels = np.full((n_panels, 7, 16), np.nan, np.float32)
    norm = np.full(n_panels * 16, np.nan, np.float32)
    C().pack_panels(source, ids, mean, 0.25, centre, panels, norm)
    want = ((source[ids] - mean) * source_dtype(0.25)).astype(np.float32) - centre
    got = panels.transpose(0, 2, 1).reshape(-1, 7)
    np.testing.assert_array_equal(got[:cols], want)
    assert (got[cols:] == 0).all() and np.isinf(norm[cols:]).all()
    np.testing.assert_allclose(norm[:cols], (want.astype(np.float64) ** 2).sum(1), rtol=1e-6)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("band", [0.0, 0.3, None])  # none, some, every pair decided exactly (None: a lower bound)
@pytest.mark.parametrize("points_dtype", [np.float32, np.float64])
def test_panel_neighbours_counts_and_lists(band, portable, points_dtype):
    # rows not a multiple of the kernel's 6, columns not a multiple of its 16, the rows among the
    # columns (self pairs), an exact duplicate, a list cap below the counts
    rng = np.random.default_rng(0)
    points = rng.normal(size=(90, 5)).astype(points_dtype)
    points[10] = points[3]
    rows, cols = np.arange(0, 41), np.arange(0, 90)
    coords = points.astype(np.float32)
    panels, norm = packed(coords, cols)
    lo, hi = panel_thresholds(coords, rows, 2.0, 0.0 if band is None else band)
    if band is None:
        lo, hi = None, hi + 100.0  # a loose lower bound: every pair is tested
    counts = np.zeros(90, np.int32)
    lists = np.full((90, 6), -1, np.int32)
    tests = C().dbscan_panel_neighbours(coords[rows], panels, norm, lo, hi, rows.astype(np.int64), cols.astype(np.int64),
                                        points, 1.0, 2.0, counts, lists, 2**63 - 1, portable=portable)
    hit = (exact_d2(points, rows, cols) <= 2.0) & (rows[:, None] != cols[None, :])
    np.testing.assert_array_equal(counts[:41], hit.sum(1))
    assert (counts[41:] == 0).all()
    for i in range(41):  # the first neighbours in column order, while there is room
        want = cols[hit[i]][:6]
        np.testing.assert_array_equal(lists[i, : len(want)], want)
    assert counts[3] >= 1 and 10 in lists[3].tolist()
    if band == 0.0:
        assert tests == 0
    elif band is None:
        assert tests == 41 * 90 - 41  # every pair but the rows' own
    else:
        assert tests > 0


@pytest.mark.parametrize("portable", [False, True])
def test_panel_neighbours_stops_after_the_budget_with_the_rows_before_untouched(portable):
    rng = np.random.default_rng(2)
    points = rng.normal(size=(40, 4)).astype(np.float32)
    rows, cols = np.arange(20, dtype=np.int64), np.arange(40, dtype=np.int64)
    panels, norm = packed(points, cols)
    _, hi = panel_thresholds(points, rows, 1.0, 100.0)
    full_counts = np.zeros(40, np.int32)
    C().dbscan_panel_neighbours(points[rows], panels, norm, None, hi, rows, cols, points, 1.0, 1.0, full_counts,
                                np.full((40, 8), -1, np.int32), 2**63 - 1, portable=portable)
    counts = np.zeros(40, np.int32)
    done = C().dbscan_panel_neighbours(points[rows], panels, norm, None, hi, rows, cols, points, 1.0, 1.0, counts,
                                       np.full((40, 8), -1, np.int32), 0, portable=portable)
    assert done == -6  # the first block of six rows, then the budget (0 tests) is spent
    np.testing.assert_array_equal(counts[:6], full_counts[:6])
    assert (counts[6:] == 0).all()


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("band", [0.0, 0.2, None])
def test_panel_union_gives_components_with_exact_band(band, portable):
    rng = np.random.default_rng(1)
    points = rng.normal(size=(61, 3)).astype(np.float32)
    ids = np.arange(61, dtype=np.int64)
    panels, norm = packed(points, ids)
    lo, hi = panel_thresholds(points, ids, 0.6, 0.0 if band is None else band)
    if band is None:
        lo, hi = None, hi + 50.0
    parent = np.arange(61, dtype=np.int64)
    tests = C().dbscan_panel_union(points, panels, norm, lo, hi, ids, ids, points, 1.0, 0.6, parent, 2**63 - 1,
                                   portable=portable)
    assert_roots_are_component_minima(parent, components(exact_d2(points, ids, ids) <= 0.6, 61))
    assert (parent[parent] == parent).all()  # fully compressed
    assert (tests == 0) if band == 0.0 else tests > 0


def test_panel_kernel_values_come_from_the_centred_frame():
    # the pair values of a tile centred on its rows (points far from the origin, pack_panels with a
    # centre): the same neighbours as brute force, only band pairs tested
    rng = np.random.default_rng(4)
    points = (rng.normal(size=(70, 6)) * 0.1 + 1e3).astype(np.float32)
    rows, cols = np.arange(25, dtype=np.int64), np.arange(70, dtype=np.int64)
    centre = points[rows].mean(0).astype(np.float32)
    panels, norm = packed(points, cols, centre)
    local = points[rows] - centre
    eps2 = 0.02
    thr = eps2 - (local.astype(np.float64) ** 2).sum(1)
    band = 1e-3
    counts = np.zeros(70, np.int32)
    C().dbscan_panel_neighbours(local, panels, norm, thr - band, thr + band, rows, cols, points, 1.0, eps2, counts,
                                np.full((70, 4), -1, np.int32), 2**63 - 1)
    hit = (exact_d2(points, rows, cols) <= eps2) & (rows[:, None] != cols[None, :])
    np.testing.assert_array_equal(counts[:25], hit.sum(1))


def full_tile_operands(points, rows, cols, chunk, centre=None, c1=1e-6, c2=1e-6):
    """dbscan_full_tile's tile arguments for float points (a float32 frame with mean 0, scale 1)."""
    source = points
    local = (points[rows].astype(np.float32) - (0 if centre is None else centre)).astype(np.float32)
    row_local = np.sqrt((local.astype(np.float64) ** 2).sum(1))
    return dict(rows=local, threshold=None, row_local=row_local, row_global=np.sqrt((points[rows].astype(np.float64) ** 2).sum(1)),
                c1=c1, c2=c2, source=source, mean=np.zeros(points.shape[1], points.dtype), scale=1.0, centre=centre,
                col_ids=cols.astype(np.int64), col_pos=cols.astype(np.int64),
                global_norms=np.sqrt((points.astype(np.float64) ** 2).sum(1)), row_ids=rows.astype(np.int64),
                panels=np.full((chunk // 16, points.shape[1], 16), np.nan, np.float32), norm=np.full(chunk, np.nan, np.float32))


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("chunk", [16, 48, 256])  # several chunks, the last one partial; one chunk
@pytest.mark.parametrize("points_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("centred", [False, True])
def test_full_tile_neighbours_and_union_in_chunks_equal_brute_force(portable, chunk, points_dtype, centred):
    # the columns packed a chunk at a time, each chunk with its own band: exact counts, lists in
    # column order across chunks, and the components of the union; points far from the origin
    # when the tile is centred on its rows
    rng = np.random.default_rng(chunk)
    points = (rng.normal(size=(101, 7)) * (0.3 if centred else 1.0) + (50.0 if centred else 0.0)).astype(points_dtype)
    points[17] = points[4]
    rows, cols = np.arange(3, 44), np.arange(101)[::-1].copy()  # columns in a non-sorted order
    centre = points[rows].astype(np.float32).mean(0).astype(np.float32) if centred else None
    eps2 = 1.5 * (0.3**2 if centred else 1.0)
    operands = full_tile_operands(points, rows, cols, chunk, centre)
    operands["threshold"] = eps2 - operands["row_local"] ** 2
    counts = np.zeros(101, np.int32)
    lists = np.full((101, 5), -1, np.int32)
    C().dbscan_full_tile(**operands, points=points, points_scale=1.0, eps2=eps2, counts=counts, lists=lists, portable=portable)
    hit = (exact_d2(points, rows, cols) <= eps2) & (rows[:, None] != cols[None, :])
    np.testing.assert_array_equal(counts[rows], hit.sum(1))
    assert (np.delete(counts, rows) == 0).all()
    for i, row in enumerate(rows):
        want = cols[hit[i]][:5]
        np.testing.assert_array_equal(lists[row, : len(want)], want)
    everything = np.arange(101)
    operands = full_tile_operands(points, everything, everything, chunk, None if centre is None else points.astype(np.float32).mean(0))
    operands["threshold"] = eps2 - operands["row_local"] ** 2
    parent = np.arange(101, dtype=np.int64)
    C().dbscan_full_tile(**operands, points=points, points_scale=1.0, eps2=eps2, parent=parent, portable=portable)
    assert_roots_are_component_minima(parent, components(exact_d2(points, everything, everything) <= eps2, 101))
    assert (parent[parent] == parent).all()


def test_full_tile_refuses_bad_arguments():
    points = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    ids = np.arange(20)
    operands = full_tile_operands(points, ids, ids, 16)
    operands["threshold"] = 1.0 - operands["row_local"] ** 2
    state = dict(points=points, points_scale=1.0, eps2=1.0)
    lists = np.full((20, 4), -1, np.int32)
    with pytest.raises(ValueError, match="dbscan_full_tile: give counts and lists \\(neighbours\\) or parent \\(union\\)"):
        C().dbscan_full_tile(**operands, **state)
    with pytest.raises(ValueError, match="dbscan_full_tile: give counts and lists"):
        C().dbscan_full_tile(**operands, **state, counts=np.zeros(20, np.int32), lists=lists, parent=np.arange(20))
    with pytest.raises(ValueError, match="dbscan_full_tile: col_pos holds an index outside"):
        C().dbscan_full_tile(**{**operands, "col_pos": ids + 1}, **state, parent=np.arange(20))
    with pytest.raises(ValueError, match="dbscan_full_tile: panels must be"):
        C().dbscan_full_tile(**{**operands, "panels": np.zeros((1, 3, 16), np.float32)}, **state, parent=np.arange(20))
    with pytest.raises(ValueError, match="dbscan_full_tile: c1 and c2 must be finite numbers >= 0"):
        C().dbscan_full_tile(**{**operands, "c1": -1.0}, **state, parent=np.arange(20))
    with pytest.raises(ValueError, match="dbscan_full_tile: threshold must not be NaN"):
        C().dbscan_full_tile(**{**operands, "threshold": np.full(20, np.nan)}, **state, parent=np.arange(20))
    with pytest.raises(ValueError, match="dbscan_full_tile: parent must be a fully compressed"):
        C().dbscan_full_tile(**operands, **state, parent=np.arange(20)[::-1].copy())


def test_union_edges_gives_components():
    rng = np.random.default_rng(6)
    a = rng.integers(0, 60, 45).astype(np.int64)
    b = rng.integers(0, 60, 45).astype(np.int64)
    parent = np.arange(60, dtype=np.int64)
    C().union_edges(parent, a, b)
    hit = np.zeros((60, 60), bool)
    hit[a, b] = True
    assert_roots_are_component_minima(parent, components(hit, 60))


def test_union_lists_equals_union_edges_of_the_core_pairs():
    # the listed neighbours of core points that are core too, as union_edges gets them; counts
    # beyond the list's capacity read only the capacity, non-core rows' lists are not read
    rng = np.random.default_rng(3)
    n, cap = 301, 5
    counts = rng.integers(0, 9, size=n).astype(np.int32)
    lists = np.full((n, cap), -1, np.int32)
    for i in range(n):
        listed = min(int(counts[i]), cap)
        lists[i, :listed] = rng.integers(0, n, size=listed)
    core = rng.random(n) < 0.6
    lists[~core, 0] = -7  # never read
    a, b = [], []
    for i in np.flatnonzero(core):
        for j in lists[i, : min(int(counts[i]), cap)]:
            if core[j]:
                a.append(i)
                b.append(j)
    want = np.arange(n, dtype=np.int64)
    C().union_edges(want, np.array(a, np.int64), np.array(b, np.int64))
    got = np.arange(n, dtype=np.int64)
    C().union_lists(got, lists, counts, core)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="union_lists: lists holds an index outside"):
        bad = lists.copy()
        bad[np.flatnonzero(core & (counts > 0))[0], 0] = n
        C().union_lists(np.arange(n, dtype=np.int64), bad, counts, core)
    with pytest.raises(ValueError, match="union_lists: core must have dtype bool"):
        C().union_lists(np.arange(n, dtype=np.int64), lists, counts, core.astype(np.uint8))


def test_arrays_with_an_equal_dtype_object_are_accepted_and_written_in_place():
    # an unpickled array (as from multiprocessing) carries its own dtype object: the same type and
    # byte order must pass the checks and be written in place; another byte order is refused
    import pickle

    parent = pickle.loads(pickle.dumps(np.arange(5, dtype=np.int64)))
    assert parent.dtype is not np.dtype(np.int64)
    C().union_edges(parent, np.array([1], np.int64), np.array([2], np.int64))
    np.testing.assert_array_equal(parent, [0, 1, 1, 3, 4])
    points = pickle.loads(pickle.dumps(np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)))
    d2, index = C().knn_exact(points, points, 2)
    np.testing.assert_array_equal(np.sort(d2, axis=1), [[0.0, 25.0], [0.0, 25.0]])
    with pytest.raises(ValueError, match="union_edges: parent must have dtype int64, got >i8"):
        C().union_edges(np.arange(5, dtype=">i8"), np.array([1], np.int64), np.array([2], np.int64))


def heap_sorted(d2, index):
    order = np.lexsort((index, d2), axis=1)
    return np.take_along_axis(d2, order, 1), np.take_along_axis(index, order, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_knn_exact_and_tile_update_match_numpy(dtype):
    rng = np.random.default_rng(2)
    queries = rng.normal(size=(13, 9)).astype(dtype)
    refs = rng.normal(size=(300, 9)).astype(dtype)
    refs[50] = refs[40]  # a tie: the smaller index comes first
    d2 = ((queries[:, None].astype(np.float64) - refs[None].astype(np.float64)) ** 2).sum(-1)
    want_index = np.lexsort((np.broadcast_to(np.arange(300), d2.shape), d2), axis=1)[:, :4]
    got_d2, got_index = C().knn_exact(queries, refs, 4)
    got_d2, got_index = heap_sorted(got_d2, got_index)
    np.testing.assert_array_equal(got_index, want_index)
    np.testing.assert_allclose(got_d2, np.take_along_axis(d2, want_index, 1), rtol=1e-14)  # summation order
    # the tile epilogue over two tiles, with a band that leaves every reference to the exact test
    best_d2 = np.full((13, 4), np.inf)
    best_index = np.full((13, 4), -1, np.int64)
    q32, r32 = queries.astype(np.float32), refs.astype(np.float32)
    for c0 in (0, 150):
        cols = np.arange(c0, c0 + 150, dtype=np.int64)
        partial = ((r32[cols] ** 2).sum(1)[None, :] - 2 * q32 @ r32[cols].T).astype(np.float32)
        tests = C().knn_tile_update(partial, (q32 * q32).sum(1).astype(np.float32), np.full(13, 1e-3, np.float32), 1.0,
                                    np.arange(13, dtype=np.int64), cols, queries, refs, 1.0, best_d2, best_index)
        assert 0 < tests < 13 * 150
    tiled_d2, tiled_index = heap_sorted(best_d2, best_index)
    np.testing.assert_array_equal(tiled_index, want_index)
    np.testing.assert_array_equal(tiled_d2, got_d2)  # the same sequential float64 sums


@pytest.mark.parametrize("k", [1, 5, 22])
@pytest.mark.parametrize("cols", [22, 23, 37, 211, 1000])
def test_knn_tile_update_first_tile_caps_at_the_kth_value(k, cols):
    # empty heaps: the tile's own k-th value caps the exact tests (segment minima bound it, then a
    # selection among the values below): integer coordinates, so many exact ties, and widths that
    # are and are not multiples of the segment count
    if cols < k:
        pytest.skip("a tile narrower than k has no cap")
    rng = np.random.default_rng(k * 1000 + cols)
    queries = rng.integers(-3, 4, size=(7, 3)).astype(np.float32)
    refs = rng.integers(-3, 4, size=(cols, 3)).astype(np.float32)
    d2 = ((queries[:, None].astype(np.float64) - refs[None].astype(np.float64)) ** 2).sum(-1)
    want = np.lexsort((np.broadcast_to(np.arange(cols), d2.shape), d2), axis=1)[:, :k]
    best_d2, best_index = np.full((7, k), np.inf), np.full((7, k), -1, np.int64)
    partial = ((refs**2).sum(1)[None, :] - 2 * queries @ refs.T).astype(np.float32)
    tests = C().knn_tile_update(partial, (queries * queries).sum(1).astype(np.float32), np.full(7, 1e-4, np.float32), 1.0,
                                np.arange(7, dtype=np.int64), np.arange(cols, dtype=np.int64), queries, refs, 1.0,
                                best_d2, best_index)
    got_d2, got_index = heap_sorted(best_d2, best_index)
    np.testing.assert_array_equal(got_index, want)
    np.testing.assert_array_equal(got_d2, np.take_along_axis(d2, want, 1))
    kth = np.sort(d2, axis=1)[:, k - 1]
    assert tests <= int((d2 <= kth[:, None] + 1e-3).sum())  # nothing beyond the k-th value (and its ties) is tested


@pytest.mark.parametrize("n_leaves, dims, top_groups", [(1, 1, 64), (7, 3, 2), (67, 4, 4), (300, 16, 64), (129, 2, 1)])
def test_box_descent_matches_all_pairs_in_cpp_and_python(n_leaves, dims, top_groups):
    # every ordered leaf pair whose boxes are within reach, against the n^2 box distances in
    # float64, odd level sizes (a run paired with itself): the C++ descent of leaf_candidates (balls
    # that never prune) and the Python one
    from inform_fast.spatial import LeafIndex, _box_pairs

    rng = np.random.default_rng(n_leaves * 10 + dims)
    centre = np.cumsum(rng.normal(size=(n_leaves, dims)), axis=0)  # consecutive leaves near, as in k-d order
    half = rng.uniform(0.0, 0.5, size=(n_leaves, dims))
    lo, hi = centre - half, centre + half
    gap = np.maximum(0.0, np.maximum(lo[None] - hi[:, None], lo[:, None] - hi[None]))
    distance = np.sqrt((gap * gap).sum(-1))
    reach = float(np.quantile(distance, 0.2)) if n_leaves > 1 else 0.0
    want = set(zip(*np.nonzero(distance <= reach)))
    want = {(int(a), int(b)) for a, b in want}
    for threads in (1, 2):
        indptr, columns = C().leaf_candidates(lo, hi, reach, np.zeros((n_leaves, 1)), np.zeros(n_leaves), 0.0, 1.0,
                                              top_groups=top_groups, threads=threads)
        got = {(a, int(b)) for a in range(n_leaves) for b in columns[indptr[a] : indptr[a + 1]]}
        assert len(columns) == len(want) and got == want
    index = LeafIndex(frame=None, source=torch.zeros(0, 1), top=torch.zeros(0, 1), order=torch.zeros(0, dtype=torch.int64),
                      starts=torch.zeros(n_leaves + 1, dtype=torch.int64), norms=torch.zeros(0), sqnorm=torch.zeros(0),
                      box_lo=torch.from_numpy(lo),
                      box_hi=torch.from_numpy(hi), centre=torch.zeros(n_leaves, 1), radius=torch.zeros(n_leaves), slack=0.0)
    python = _box_pairs(index, reach)
    assert len(python[0]) == len(want) and set(zip(*(t.tolist() for t in python))) == want


def test_candidate_leaves_native_gives_the_same_lists():
    # the same candidate leaves per leaf, itself first and nearest centre first, from the C++ pass
    # (_C.leaf_candidates) as from the Python descent (one chunk, chunks grouped by a sort, chunks
    # that select their pairs by a mask)
    from inform_fast.spatial import _box_pairs, build_index, candidate_leaves

    rng = np.random.default_rng(5)
    x = torch.from_numpy((rng.normal(size=(3001, 24)) * np.linspace(3.0, 0.1, 24)).astype(np.float32))
    index = build_index(x, leaf_size=16, radius=1.5)
    radius = 1.5 * index.frame.scale
    pairs = len(_box_pairs(index, radius)[0])
    for chunk_elements, chunk_pairs in ((1 << 20, pairs), (4096, pairs), (1 << 20, pairs // 5 + 1)):
        ip_py, col_py = candidate_leaves(index, radius, chunk_elements=chunk_elements, chunk_pairs=chunk_pairs)
        ip_cc, col_cc = candidate_leaves(index, radius, chunk_elements=chunk_elements, native=True, workers=2,
                                         chunk_pairs=chunk_pairs)
        assert torch.equal(ip_py, ip_cc)
        if chunk_pairs == pairs and chunk_elements == 1 << 20:
            one_chunk = (ip_py, [set(col_py[int(ip_py[leaf]) : int(ip_py[leaf + 1])].tolist()) for leaf in range(index.n_leaves)])
        else:  # every chunking lists the same leaves as one chunk
            assert torch.equal(ip_py, one_chunk[0])
            assert all(set(col_py[int(ip_py[leaf]) : int(ip_py[leaf + 1])].tolist()) == one_chunk[1][leaf]
                       for leaf in range(index.n_leaves))
        centre = index.centre
        for leaf in range(index.n_leaves):
            a, b = int(ip_py[leaf]), int(ip_py[leaf + 1])
            got, want = col_cc[a:b].long(), col_py[a:b].long()
            assert int(got[0]) == leaf == int(want[0])
            assert set(got.tolist()) == set(want.tolist())
            d = (centre[got] - centre[leaf]).norm(dim=1)
            assert bool((d[2:] >= d[1:-1] * (1 - 1e-5) - 1e-9).all())  # nearest centre first after itself


@pytest.mark.parametrize("n_leaves, dims, centre_dims, top_groups", [(1, 1, 1, 64), (9, 3, 5, 2), (157, 4, 37, 4),
                                                                    (300, 8, 128, 64)])
def test_leaf_candidates_match_brute_force(n_leaves, dims, centre_dims, top_groups):
    # per leaf: exactly the leaves whose boxes and whose balls come within their reaches, itself
    # first, then by centre distance (ties by leaf), on one and on two threads
    rng = np.random.default_rng(n_leaves + dims)
    walk = np.cumsum(rng.normal(size=(n_leaves, centre_dims)), axis=0)  # consecutive leaves near, as in k-d order
    walk[rng.random(n_leaves) < 0.1] = walk[0]  # equal centres: ties broken by leaf
    half = rng.uniform(0.0, 0.6, size=(n_leaves, dims))
    lo = np.ascontiguousarray(walk[:, :dims] - half) if centre_dims >= dims else rng.normal(size=(n_leaves, dims)) - half
    hi = lo + 2 * half
    radius = rng.uniform(0.0, 0.5, size=n_leaves)
    gap = np.maximum(0.0, np.maximum(lo[None] - hi[:, None], lo[:, None] - hi[None]))
    box_distance = np.sqrt((gap * gap).sum(-1))
    centre_distance = np.sqrt(((walk[:, None] - walk[None]) ** 2).sum(-1))
    box_reach = float(np.quantile(box_distance, 0.3))
    offset, ball_reach = 0.05, float(np.quantile(centre_distance, 0.2))
    ball = centre_distance - radius[:, None] - radius[None] - offset
    for threads in (1, 2):
        indptr, columns = C().leaf_candidates(lo, hi, box_reach, walk, radius, offset, ball_reach, top_groups=top_groups,
                                              threads=threads)
        assert indptr.dtype == np.int64 and columns.dtype == np.int32 and indptr[0] == 0 and indptr[-1] == len(columns)
        for a in range(n_leaves):
            want = np.flatnonzero((box_distance[a] <= box_reach) & (ball[a] <= ball_reach))
            key = np.where(want == a, -1.0, centre_distance[a, want].astype(np.float32))
            want = want[np.lexsort((want, key))]
            np.testing.assert_array_equal(columns[indptr[a] : indptr[a + 1]], want)
    with pytest.raises(ValueError, match="leaf_candidates: radius must be finite and >= 0"):
        C().leaf_candidates(lo, hi, box_reach, walk, -radius - 1, offset, ball_reach)
    with pytest.raises(ValueError, match="leaf_candidates: centre must have length"):
        C().leaf_candidates(lo, hi, box_reach, walk[:-1], radius, offset, ball_reach)
    with pytest.raises(ValueError, match="leaf_candidates: centre must be finite"):
        C().leaf_candidates(lo, hi, box_reach, np.full_like(walk, np.nan), radius, offset, ball_reach)
    with pytest.raises(ValueError, match="leaf_candidates: box_reach must be a finite number >= 0"):
        C().leaf_candidates(lo, hi, -1.0, walk, radius, offset, ball_reach)
    with pytest.raises(ValueError, match="leaf_candidates: box_lo must have dtype float64"):
        C().leaf_candidates(lo.astype(np.float32), hi, box_reach, walk, radius, offset, ball_reach)


@pytest.mark.parametrize("source_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius", [None, 1e-9])  # a float32 frame, and one float32 cannot resolve (float64)
@pytest.mark.parametrize("native", [True, False])
def test_leaf_statistics_bound_the_stored_points(source_dtype, radius, native):
    # norms and radii are upper bounds of the float64 values of the stored (frame) points, tight
    # to the inflation; squared norms and centres within the rounding of their dtype: the C++ pass
    # (float64 sums) and the Python chunks (in the frame's precision)
    from inform_fast.spatial import build_index, fit_frame

    rng = np.random.default_rng(11)
    x = torch.from_numpy(rng.normal(size=(2003, 37)) * np.linspace(4.0, 0.01, 37) + 50.0).to(source_dtype)
    frame = fit_frame(x, radius=radius)
    index = build_index(x, leaf_size=16, radius=radius, frame=frame, native=native, workers=2, copy=False)
    stored = index.frame_points().to(torch.float64)  # leaf order
    exact_norm = stored.norm(dim=1)
    inflate = 1.0 + 2.0 * (x.shape[1] + 2) * frame.roundoff
    sum_error = (1 if native else x.shape[1]) * frame.roundoff + x.shape[1] * 2.0**-53
    assert bool((index.norms >= exact_norm).all()) and bool((index.norms <= exact_norm * inflate * (1 + sum_error)).all())
    torch.testing.assert_close(index.sqnorm.to(torch.float64), (stored * stored).sum(1), rtol=sum_error, atol=0)
    for leaf in range(index.n_leaves):
        points = stored[int(index.starts[leaf]) : int(index.starts[leaf + 1])]
        torch.testing.assert_close(index.centre[leaf], points.mean(0), rtol=0, atol=sum_error * float(points.abs().max()))
        spread = float((points - index.centre[leaf]).norm(dim=1).max())  # from the centre the index holds
        rounding = sum_error * float(points.norm(dim=1).max())  # the Python chunks' float32 differences
        assert spread <= float(index.radius[leaf]) <= spread * inflate * (1 + 1e-12) + rounding + 1e-300
    if not native:
        return
    with pytest.raises(ValueError, match="leaf_statistics: starts must run from 0 to len\\(order\\)"):
        C().leaf_statistics(x.numpy(), index.order.numpy(), index.starts.numpy()[:-1], frame.mean.to(source_dtype).numpy(),
                            frame.scale, True, inflate, np.zeros(2003, np.float32), np.zeros(2003),
                            np.zeros((index.n_leaves, 37)), np.zeros(index.n_leaves))
    with pytest.raises(ValueError, match="leaf_statistics: inflate must be a finite number >= 1"):
        C().leaf_statistics(x.numpy(), index.order.numpy(), index.starts.numpy(), frame.mean.to(source_dtype).numpy(),
                            frame.scale, True, 0.5, np.zeros(2003, np.float32), np.zeros(2003),
                            np.zeros((index.n_leaves, 37)), np.zeros(index.n_leaves))
    with pytest.raises(ValueError, match="leaf_statistics: centre must be \\[n_leaves, dim of source\\]"):
        C().leaf_statistics(x.numpy(), index.order.numpy(), index.starts.numpy(), frame.mean.to(source_dtype).numpy(),
                            frame.scale, True, inflate, np.zeros(2003, np.float32), np.zeros(2003),
                            np.zeros((index.n_leaves, 3)), np.zeros(index.n_leaves))


@pytest.mark.parametrize("dim", [1, 7, 128, 131])
def test_gather_frame_equals_the_frame_map_of_the_gathered_rows(dim):
    # bit for bit the values of Frame.apply (a float32 shift, then an exact power-of-two scale),
    # rows in any order and repeated, at widths around the vector length
    from inform_fast.spatial import fit_frame

    rng = np.random.default_rng(dim)
    x = torch.from_numpy((rng.normal(size=(301, dim)) * 10.0 ** rng.uniform(-3, 6, size=dim) + 1e4).astype(np.float32))
    frame = fit_frame(x)
    ids = torch.from_numpy(rng.integers(0, 301, size=97))
    out = np.full((97, dim), np.nan, np.float32)
    C().gather_frame(x.numpy(), ids.numpy(), frame.mean.to(torch.float32).numpy(), frame.scale, out)
    assert torch.equal(torch.from_numpy(out), frame.apply(x[ids]))


def test_gather_frame_refuses_bad_arguments():
    x, mean, out = np.zeros((5, 3), np.float32), np.zeros(3, np.float32), np.zeros((2, 3), np.float32)
    ids = np.array([0, 4], np.int64)
    with pytest.raises(ValueError, match="gather_frame: ids holds an index outside"):
        C().gather_frame(x, np.array([0, 5], np.int64), mean, 0.5, out)
    with pytest.raises(ValueError, match="gather_frame: scale must be a power of two"):
        C().gather_frame(x, ids, mean, 0.3, out)
    with pytest.raises(ValueError, match="gather_frame: out must have length 2"):
        C().gather_frame(x, ids, mean, 0.5, out[:1])
    with pytest.raises(ValueError, match="gather_frame: mean must have length 3"):
        C().gather_frame(x, ids, mean[:2], 0.5, out)
    with pytest.raises(ValueError, match="gather_frame: source must have dtype float32"):
        C().gather_frame(x.astype(np.float64), ids, mean, 0.5, out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("native", [False, True])
def test_index_read_in_place_equals_the_frame_copy(dtype, native):
    # an index without its frame copy (copy=False) reads the same frame values from the caller's
    # array, and every bound built from them is the same
    from inform_fast.spatial import build_index

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(2003, 37)) * np.linspace(4.0, 0.01, 37) + 50.0).to(dtype)
    copied = build_index(x, leaf_size=16, radius=0.5, native=native)
    in_place = build_index(x, leaf_size=16, radius=0.5, native=native, copy=False)
    assert in_place.points is None and copied.points is not None
    positions = torch.from_numpy(rng.permutation(2003)[:500])
    assert torch.equal(in_place.gather(positions), copied.points[positions])
    assert torch.equal(in_place.frame_points(), copied.points)
    for name in ("top", "order", "starts", "norms", "sqnorm", "box_lo", "box_hi", "centre", "radius"):
        assert torch.equal(getattr(in_place, name), getattr(copied, name)), name
    assert in_place.slack == copied.slack


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius", [None, 1e-9])  # a float32 frame, and one float32 cannot resolve (float64)
def test_principal_coordinates_native_equals_the_frame_map_and_projection(dtype, radius):
    from inform_fast.spatial import fit_frame, principal_coordinates

    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.normal(size=(1001, 37)) * np.linspace(0.1, 9, 37) + 250.0).to(dtype)
    frame = fit_frame(x, radius=radius)
    assert frame.dtype == (torch.float32 if radius is None else torch.float64)
    want = frame.project(frame.apply(x))
    got = principal_coordinates(frame, x, workers=2, native=True)
    # the same stored values, products summed in another order: float64 rounding apart
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))
    # the first axes of some rows, in the frame's dtype: bit for bit the native values of all axes
    # (build_index's two passes), and the reference path's within float64 rounding
    ids = torch.from_numpy(rng.permutation(1001)[:400].astype(np.int64))
    part = principal_coordinates(frame, x, workers=2, native=True, axes=3, ids=ids, dtype=frame.dtype)
    assert part.dtype == frame.dtype and part.shape == (400, 3)
    assert torch.equal(part, got[ids, :3].to(frame.dtype))
    reference = principal_coordinates(frame, x, workers=2, native=False, axes=3, ids=ids)
    torch.testing.assert_close(reference, want[ids, :3], rtol=0, atol=1e-12 * float(want.abs().max()))
    with pytest.raises(ValueError, match="principal_coordinates: out must be"):
        C().principal_coordinates(x.numpy(), frame.mean.to(dtype).numpy(), frame.scale, True, frame.axes.numpy(),
                                  np.zeros((3, frame.axes.shape[1])))
    with pytest.raises(ValueError, match="principal_coordinates: ids holds an index outside"):
        C().principal_coordinates(x.numpy(), frame.mean.to(dtype).numpy(), frame.scale, True, frame.axes.numpy(),
                                  np.zeros((1, frame.axes.shape[1])), ids=np.array([1001], np.int64))
    with pytest.raises(ValueError, match="principal_coordinates: mean must have length 37"):
        C().principal_coordinates(x.numpy(), np.zeros(3, x.numpy().dtype), frame.scale, True, frame.axes.numpy(),
                                  np.zeros((1001, frame.axes.shape[1])))
    with pytest.raises(ValueError, match="principal_coordinates: axes must be"):
        C().principal_coordinates(x.numpy(), frame.mean.to(dtype).numpy(), frame.scale, True, np.zeros((3, 2)),
                                  np.zeros((1001, 2)))


def test_checks_name_op_and_argument():
    points = np.zeros((5, 3), np.float32)
    partial = np.zeros((2, 3), np.float32)
    rows = np.zeros((2, 3), np.float32)
    panels, norm = np.zeros((1, 3, 16), np.float32), np.zeros(16, np.float32)
    lo = hi = np.zeros(2)
    ids2, ids3 = np.arange(2, dtype=np.int64), np.arange(3, dtype=np.int64)
    counts, lists = np.zeros(5, np.int32), np.zeros((5, 2), np.int32)
    big = 2**63 - 1

    def neighbours(**changed):
        args = dict(rows=rows, panels=panels, col_norm=norm, thr_lo=lo, thr_hi=hi, row_ids=ids2, col_ids=ids3,
                    points=points, scale=1.0, eps2=1.0, counts=counts, lists=lists, budget=big)
        args.update(changed)
        C().dbscan_panel_neighbours(**args)

    with pytest.raises(ValueError, match="dbscan_panel_neighbours: thr_lo must have length 2"):
        neighbours(thr_lo=lo[:1])
    with pytest.raises(ValueError, match="dbscan_panel_neighbours: thr_hi must have dtype float64"):
        neighbours(thr_hi=hi.astype(np.float32))
    with pytest.raises(ValueError, match="dbscan_panel_neighbours: thr_lo and thr_hi must not be NaN"):
        neighbours(thr_hi=np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="dbscan_panel_neighbours: counts must have dtype int32"):
        neighbours(counts=counts.astype(np.int64))
    with pytest.raises(ValueError, match="dbscan_panel_neighbours: rows must be C-contiguous"):
        neighbours(rows=np.asfortranarray(np.zeros((2, 3), np.float32)))
    with pytest.raises(ValueError, match="dbscan_panel_neighbours: col_ids holds an index outside"):
        neighbours(col_ids=np.array([0, 1, 9], np.int64))
    with pytest.raises(ValueError, match=r"dbscan_panel_neighbours: panels must be \[ceil\(len\(col_ids\) / 16\)"):
        neighbours(panels=np.zeros((1, 2, 16), np.float32))
    with pytest.raises(ValueError, match="dbscan_panel_neighbours: col_norm must have length 16"):
        neighbours(col_norm=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="dbscan_panel_neighbours: points must have dtype float32 or float64"):
        neighbours(points=points.astype(np.int32))
    with pytest.raises(ValueError, match="dbscan_panel_neighbours: budget must be >= 0"):
        neighbours(budget=-1)
    with pytest.raises(ValueError, match="dbscan_panel_union: parent must be a fully compressed union-find forest"):
        C().dbscan_panel_union(rows, panels, norm, lo, hi, ids2, ids3, points, 1.0, 1.0, np.array([0, 0, 1, 3, 3], np.int64),
                               big)
    with pytest.raises(ValueError, match="dbscan_panel_union: points must have one row per parent entry"):
        C().dbscan_panel_union(rows, panels, norm, lo, hi, ids2, ids3, points, 1.0, 1.0, np.arange(4, dtype=np.int64), big)
    with pytest.raises(ValueError, match="pack_panels: source must have dtype float32 or float64"):
        C().pack_panels(points.astype(np.int32), ids3, None, 1.0, None, panels, norm)
    with pytest.raises(ValueError, match="pack_panels: ids holds an index outside"):
        C().pack_panels(points, np.array([0, 7], np.int64), None, 1.0, None, panels, norm)
    with pytest.raises(ValueError, match="pack_panels: mean must have dtype float32"):
        C().pack_panels(points, ids3, np.zeros(3), 1.0, None, panels, norm)
    with pytest.raises(ValueError, match="pack_panels: centre must have length 3"):
        C().pack_panels(points, ids3, None, 1.0, np.zeros(2, np.float32), panels, norm)
    with pytest.raises(ValueError, match="pack_panels: scale must be a finite number > 0"):
        C().pack_panels(points, ids3, None, float("nan"), None, panels, norm)
    with pytest.raises(ValueError, match=r"pack_panels: panels must be \[ceil\(len\(ids\) / 16\), dim, 16\]"):
        C().pack_panels(points, ids3, None, 1.0, None, np.zeros((2, 3, 16), np.float32), np.zeros(32, np.float32))
    with pytest.raises(ValueError, match="union_edges: edge_a/edge_b hold an index"):
        C().union_edges(np.arange(3, dtype=np.int64), np.array([0], np.int64), np.array([5], np.int64))
    balls = (np.zeros((3, 1)), np.zeros(3), 0.0, 1.0)
    with pytest.raises(ValueError, match="leaf_candidates: box_hi must have the shape of box_lo"):
        C().leaf_candidates(np.zeros((3, 2)), np.zeros((3, 1)), 1.0, *balls)
    with pytest.raises(ValueError, match="leaf_candidates: box_lo and box_hi must be finite with box_lo <= box_hi"):
        C().leaf_candidates(np.array([[0.0, np.nan]] * 3), np.zeros((3, 2)), 1.0, *balls)
    with pytest.raises(ValueError, match="leaf_candidates: box_reach must be a finite number >= 0"):
        C().leaf_candidates(np.zeros((3, 2)), np.zeros((3, 2)), -1.0, *balls)
    with pytest.raises(ValueError, match="leaf_candidates: box_lo must have dtype float64"):
        C().leaf_candidates(np.zeros((3, 2), np.float32), np.zeros((3, 2)), 1.0, *balls)
    with pytest.raises(ValueError, match="knn_exact: queries and references must have the same dimension"):
        C().knn_exact(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32), 1)
    with pytest.raises(ValueError, match="knn_exact: k must be in"):
        C().knn_exact(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), 5)
    with pytest.raises(ValueError, match="knn_tile_update: best_d2 must have length 2"):
        C().knn_tile_update(partial, np.zeros(2, np.float32), np.zeros(2, np.float32), 1.0, ids2, ids3, np.zeros((2, 3), np.float32),
                            points, 1.0, np.zeros((3, 1)), np.zeros((3, 1), np.int64))


def test_dispatch_prefers_cpp_on_cpu():
    from inform_fast import dispatch  # its static table: nothing to import to register

    assert dispatch.resolve("dbscan", torch.device("cpu"))[0] == "cpp"
    assert dispatch.resolve("nearest_distance", torch.device("cpu"))[0] == "cpp"
    assert dispatch.resolve("knn_distance", torch.device("cpu"))[0] == "cpp"
