"""Tiled nearest-reference distance against an exact NumPy / scikit-learn search."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from inform_fast.detect import neighbors
from inform_fast.detect.neighbors import CPP_MAX_QUERIES, knn_distance, nearest_distance
from inform_fast.testing import kernel_test_device, requires_cpp, requires_triton_interpreter

BACKENDS = ["reference", pytest.param("cpp", marks=requires_cpp())]
ALL_BACKENDS = BACKENDS + [pytest.param("triton", marks=requires_triton_interpreter())]
# the cpp backend: exact search up to CPP_MAX_QUERIES queries, GEMM tiles + C++ epilogue above
FEW, MANY = CPP_MAX_QUERIES, CPP_MAX_QUERIES + 5


def exact(queries, references):
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - references[None].astype(np.float64)) ** 2).sum(-1))
    return d.min(1), d.argmin(1)


def assert_matches_exact(queries, references, rtol, **kwargs):
    """nearest_distance(queries, references, **kwargs) against ``exact``: the same indices, and
    distances within rtol; returns its (distances, indices)."""
    dist, index = nearest_distance(queries, references, **kwargs)
    want_d, want_i = exact(queries, references)
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_allclose(dist.numpy(), want_d, rtol=rtol)
    return dist, index


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "n_q, n_r, dim, bq, br",
    [(37, 301, 7, 8, 64), (5, 1000, 33, 1024, 8192), (64, 257, 3, 13, 17), (FEW, 77, 130, 5, 9),
     (MANY, 1001, 130, 16, 250), (MANY, 1, 4, 1, 1), (301, 129, 16, 1024, 8192), (FEW - 1, 500, 130, 1024, 8192)],
)
def test_matches_exact_search(backend, n_q, n_r, dim, bq, br):
    rng = np.random.default_rng(n_q)
    queries = rng.normal(size=(n_q, dim)).astype(np.float32)
    references = rng.normal(size=(n_r, dim)).astype(np.float32)
    dist, index = assert_matches_exact(queries, references, 1e-6, block_queries=bq, block_refs=br, backend=backend)
    assert dist.dtype == torch.float32 and index.dtype == torch.int64


def test_matches_sklearn_float64_and_large_offset():
    rng = np.random.default_rng(1)
    # a large common offset: ||q||^2 + ||r||^2 - 2 q.r cancels badly; the refined distance must not
    queries = rng.normal(size=(41, 16)) + 1000.0
    references = rng.normal(size=(503, 16)) + 1000.0
    dist, index = nearest_distance(queries, references, block_queries=16, block_refs=100)
    nn = NearestNeighbors(n_neighbors=1).fit(references)
    want_d, want_i = nn.kneighbors(queries)
    np.testing.assert_array_equal(index.numpy(), want_i[:, 0])
    np.testing.assert_allclose(dist.numpy(), want_d[:, 0], rtol=1e-6)  # sklearn itself cancels
    np.testing.assert_allclose(dist.numpy(), exact(queries, references)[0], rtol=1e-12)
    f32_dist, _ = nearest_distance(queries.astype(np.float32), references.astype(np.float32))
    np.testing.assert_allclose(f32_dist.numpy(), want_d[:, 0], rtol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_q", [3, MANY])
def test_float64_tiles(backend, n_q):
    rng = np.random.default_rng(4)
    queries = rng.normal(size=(n_q, 9)) * 1e3
    references = rng.normal(size=(211, 9)) * 1e3
    dist, _ = assert_matches_exact(queries, references, 1e-12, block_queries=7, block_refs=50, backend=backend)
    assert dist.dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_q", [FEW, MANY])
def test_float32_far_from_origin(backend, n_q):
    # ||q||^2 ~ 1.6e9 here: without the mean shift, float32 ||r||^2 - 2 q.r loses the unit-scale
    # gaps between references entirely; with it, every query finds the reference it was drawn near
    rng = np.random.default_rng(5)
    references = (rng.normal(size=(500, 16)) * 3.0 + 1e4).astype(np.float32)
    near = rng.integers(0, 500, size=n_q)
    queries = (references[near] + rng.normal(size=(n_q, 16)) * 0.05).astype(np.float32)
    np.testing.assert_array_equal(exact(queries, references)[1], near)  # the data has clear winners
    assert_matches_exact(queries, references, 1e-6, block_queries=8, block_refs=96, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_q", [FEW, MANY])
def test_ties_keep_the_smallest_index(backend, n_q):
    # small integers: every product, norm and distance is exact in float32, and the references
    # are symmetric about 0, so the mean shift is exactly 0 and the ties stay exact ties
    rng = np.random.default_rng(6)
    half = rng.integers(-3, 4, size=(60, 5)).astype(np.float32)
    half[[7, 20, 45]] = half[3]  # duplicates: in one tile (block_refs=16) and across tiles
    references = np.concatenate([half, -half])
    queries = np.concatenate([half[[3, 20, 45]], rng.integers(-3, 4, size=(n_q - 3, 5))]).astype(np.float32)
    dist, index = nearest_distance(queries, references, block_queries=6, block_refs=16, backend=backend)
    d = ((queries[:, None, :].astype(np.float64) - references[None]) ** 2).sum(-1)
    first = (d == d.min(1, keepdims=True)).argmax(1)  # smallest index among the exact ties
    np.testing.assert_array_equal(index.numpy(), first)
    assert list(index[:3]) == [3, 3, 3]
    assert (d == d.min(1, keepdims=True)).sum(1).max() > 1  # ties did occur
    np.testing.assert_allclose(dist.numpy(), np.sqrt(d.min(1)), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_q", [FEW, MANY])
def test_strided_inputs_requiring_grad(backend, n_q):
    rng = np.random.default_rng(7)
    queries = torch.tensor(rng.normal(size=(6, n_q)), dtype=torch.float32, requires_grad=True).T  # column-major
    references = torch.tensor(rng.normal(size=(90, 12)), dtype=torch.float32, requires_grad=True)[:, ::2]
    dist, index = nearest_distance(queries, references, block_queries=10, block_refs=32, backend=backend)
    want_d, want_i = exact(queries.detach().numpy(), references.detach().numpy())
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_allclose(dist.detach().numpy(), want_d, rtol=1e-6)


def test_bf16_input():
    rng = np.random.default_rng(2)
    queries = torch.from_numpy(rng.normal(size=(9, 8))).bfloat16()
    references = torch.from_numpy(rng.normal(size=(77, 8))).bfloat16()
    dist, index = nearest_distance(queries, references)
    want_d, want_i = exact(queries.float().numpy(), references.float().numpy())
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_allclose(dist.numpy(), want_d, rtol=1e-5)


@requires_triton_interpreter()
@pytest.mark.parametrize("offset, dtype", [(0.0, np.float32), (1e4, np.float32), (1e9, np.float64)])
def test_triton_under_interpreter(offset, dtype):
    rng = np.random.default_rng(3)
    queries = (rng.normal(size=(19, 7)) + offset).astype(dtype)
    references = (rng.normal(size=(301, 7)) + offset).astype(dtype)
    device = kernel_test_device()
    dist, index = nearest_distance(torch.from_numpy(queries).to(device), torch.from_numpy(references).to(device), backend="triton")
    assert dist.device.type == index.device.type == device
    want_d, want_i = exact(queries, references)
    np.testing.assert_array_equal(index.cpu().numpy(), want_i)
    np.testing.assert_allclose(dist.cpu().numpy(), want_d, rtol=1e-6)


def test_bad_input():
    good = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="references"):
        nearest_distance(good, np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="references"):
        nearest_distance(good, np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="queries"):
        nearest_distance(np.full((2, 3), np.nan), good)
    with pytest.raises(ValueError, match="block_refs"):
        nearest_distance(good, good, block_refs=0)
    with pytest.raises(ValueError, match="backend"):
        nearest_distance(good, good, backend="gpu")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_knn_distance_matches_scikit_learn(dtype):
    from sklearn.neighbors import NearestNeighbors

    from inform_fast.detect.neighbors import knn_distance

    g = torch.Generator().manual_seed(3)
    queries = torch.randn(211, 13, generator=g, dtype=torch.float64) + 50.0
    references = torch.randn(1999, 13, generator=g, dtype=torch.float64) + 50.0
    expected, expected_index = NearestNeighbors(n_neighbors=7).fit(references.numpy()).kneighbors(queries.numpy())
    distance, index = knn_distance(queries.to(dtype), references.to(dtype), 7, block_queries=64, block_refs=300)
    assert distance.shape == (211, 7) and distance.dtype == dtype and index.dtype == torch.int64
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(distance.double().numpy(), expected, rtol=0, atol=tol)
    if dtype == torch.float64:
        np.testing.assert_array_equal(index.numpy(), expected_index)
    assert bool((distance[:, 1:] >= distance[:, :-1]).all())


def test_knn_distance_bad_input():
    from inform_fast.detect.neighbors import knn_distance

    with pytest.raises(ValueError, match="k: 4 neighbours requested but references has only 3 rows"):
        knn_distance(torch.zeros(2, 3), torch.zeros(3, 3), 4)
    with pytest.raises(ValueError, match="k:"):
        knn_distance(torch.zeros(2, 3), torch.zeros(3, 3), 0)
    with pytest.raises(ValueError, match="references: latent dimension"):
        knn_distance(torch.zeros(2, 3), torch.zeros(3, 4), 1)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("n_q", [5, MANY])
def test_magnitudes_of_1e20(backend, n_q):
    # float32 squares of 1e20 overflow (the old search raised IndexError or returned a neighbour
    # 15x farther than the nearest): the frame's power-of-two scale keeps every distance exact
    rng = np.random.default_rng(8)
    references = (rng.normal(size=(400, 6)) * 1e20).astype(np.float32)
    queries = (rng.normal(size=(n_q, 6)) * 1e20).astype(np.float32)
    device = kernel_test_device() if backend == "triton" else "cpu"
    dist, index = nearest_distance(torch.from_numpy(queries).to(device), torch.from_numpy(references).to(device), backend=backend)
    want_d, want_i = exact(queries, references)
    np.testing.assert_array_equal(index.cpu().numpy(), want_i)
    np.testing.assert_allclose(dist.cpu().double().numpy(), want_d, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_ties_and_duplicates(backend):
    # 30 exact copies of one reference: the k nearest are copies in index order, at distance 0
    rng = np.random.default_rng(9)
    references = rng.normal(size=(500, 12)).astype(np.float32)
    references[100:130] = references[7]
    queries = np.concatenate([references[[7, 100]], rng.normal(size=(MANY, 12)).astype(np.float32)])
    distance, index = knn_distance(queries, references, 10, backend=backend)
    assert index[0].tolist() == [7] + list(range(100, 109)) and bool((distance[:2] == 0).all())
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - references[None]) ** 2).sum(-1))
    np.testing.assert_allclose(distance.double().numpy(), np.sort(d, axis=1)[:, :10], rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spectrum", ["collapsed", "isotropic"])
def test_knn_pruned_and_brute_paths_are_exact(monkeypatch, backend, spectrum):
    # enough queries for the tree over the references: latents on a few directions (the InfoRM
    # case) are searched by pruning, isotropic ones fall back to brute force after the pilot groups
    monkeypatch.setattr(neighbors, "INDEX_MIN_QUERIES", 64)
    monkeypatch.setattr(neighbors, "INDEX_MIN_REFS", 512)
    monkeypatch.setattr(neighbors, "QUERY_GROUP", 32)
    monkeypatch.setattr(neighbors, "FIRST_COLUMNS", 128)  # a first chunk small against the 3,001 references
    monkeypatch.setattr(neighbors, "PILOT_GROUPS", 2)
    rng = np.random.default_rng(10)
    scale = 0.3 ** np.arange(24) if spectrum == "collapsed" else np.ones(24)
    references = (rng.normal(size=(3001, 24)) * scale + 50.0).astype(np.float32)
    queries = (rng.normal(size=(301, 24)) * scale + 50.0).astype(np.float32)
    stats = neighbors.search_stats(queries, references, 5, backend=backend)
    if spectrum == "collapsed":
        assert stats["strategy"] == "pruned" and stats["pairs"] + stats["bound_pairs"] < 0.25 * 301 * 3001
        # past the first chunk the principal coordinates decide most pairs, leaving few exact tests
        assert stats["bound_pairs"] > 0.2 * stats["pairs"] and stats["bound_tests"] < 0.1 * stats["bound_pairs"]
    else:
        assert stats["strategy"] == "pilot, then brute"
    distance, index = knn_distance(queries, references, 5, backend=backend)
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - references[None]) ** 2).sum(-1))
    want_index = np.argsort(d, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(index.numpy(), want_index)
    np.testing.assert_allclose(distance.double().numpy(), np.take_along_axis(d, want_index, 1), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_loose_bound_hands_rows_to_full_tiles(monkeypatch, backend):
    # a budget of no exact tests: every lower-bound tile stops after its first row block and the
    # rest of the group goes through full tiles; the result must not change
    monkeypatch.setattr(neighbors, "INDEX_MIN_QUERIES", 64)
    monkeypatch.setattr(neighbors, "INDEX_MIN_REFS", 512)
    monkeypatch.setattr(neighbors, "QUERY_GROUP", 37)
    monkeypatch.setattr(neighbors, "FIRST_COLUMNS", 96)
    monkeypatch.setattr(neighbors, "BOUND_MAX_FRACTION", 0.0)
    rng = np.random.default_rng(12)
    references = (rng.normal(size=(2003, 19)) * 0.4 ** np.arange(19) - 7.0).astype(np.float32)
    references[1500:1510] = references[3]  # duplicates: ties at the k-th distance
    queries = (rng.normal(size=(211, 19)) * 0.4 ** np.arange(19) - 7.0).astype(np.float32)
    queries[:4] = references[3]
    stats = neighbors.search_stats(queries, references, 7, backend=backend)
    assert stats["strategy"] == "pruned" and stats["bound_pairs"] > 0
    distance, index = knn_distance(queries, references, 7, backend=backend)
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - references[None]) ** 2).sum(-1))
    want_index = np.argsort(d, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(index.numpy(), want_index)
    np.testing.assert_allclose(distance.double().numpy(), np.take_along_axis(d, want_index, 1), rtol=1e-6)


def _record_group_statuses(monkeypatch) -> list:
    """Wraps the C++ epilogue's group loop so a test sees which of its exits ran."""
    statuses = []
    original = neighbors._CppKnn.bound_group

    def recording(self, *args):
        result = original(self, *args)
        statuses.append(result[0])
        return result

    monkeypatch.setattr(neighbors._CppKnn, "bound_group", recording)
    return statuses


@pytest.mark.parametrize("case, dtype", [("bound", np.float32), ("bound", np.float64), ("loose bound", np.float32),
                                         ("heaps not full", np.float32)])
def test_knn_group_loop_in_cpp_is_exact(monkeypatch, case, dtype):
    # the C++ group loop (_C.knn_bound_group) through each of its exits: done; a bound tile that
    # leaves too many pairs (its rows go to a full tile of that chunk, in Python); heaps not yet
    # full after the first chunk (k above a leaf: Python takes one more chunk). Against brute force.
    monkeypatch.setattr(neighbors, "INDEX_MIN_QUERIES", 64)
    monkeypatch.setattr(neighbors, "INDEX_MIN_REFS", 512)
    monkeypatch.setattr(neighbors, "QUERY_GROUP", 41)
    monkeypatch.setattr(neighbors, "FIRST_COLUMNS", 100)
    k = 6
    if case == "loose bound":
        monkeypatch.setattr(neighbors, "BOUND_MAX_FRACTION", 0.0)
    if case == "heaps not full":
        monkeypatch.setattr(neighbors, "LEAF_SIZE", 8)
        monkeypatch.setattr(neighbors, "FIRST_COLUMNS", 4)
        k = 13
    statuses = _record_group_statuses(monkeypatch)
    rng = np.random.default_rng(14)
    spectrum = 0.35 ** np.arange(21)
    references = (rng.normal(size=(2501, 21)) * spectrum + 30.0).astype(dtype)
    references[2000:2012] = references[5]  # ties at the k-th distance
    queries = (rng.normal(size=(257, 21)) * spectrum + 30.0).astype(dtype)
    queries[:3] = references[5]
    distance, index = knn_distance(queries, references, k, backend="cpp")
    want = {"bound": neighbors._GROUP_DONE, "loose bound": neighbors._GROUP_FULL_TILE,
            "heaps not full": neighbors._GROUP_NOT_FULL}[case]
    assert want in statuses
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - references[None]) ** 2).sum(-1))
    want_index = np.argsort(d, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(index.numpy(), want_index)
    np.testing.assert_allclose(distance.double().numpy(), np.take_along_axis(d, want_index, 1), rtol=1e-6)


def test_knn_group_loop_refuses_bad_arguments(monkeypatch):
    # the arguments of _C.knn_bound_group as the search passes them, then one broken at a time
    from inform_fast import _native

    monkeypatch.setattr(neighbors, "INDEX_MIN_QUERIES", 64)
    monkeypatch.setattr(neighbors, "INDEX_MIN_REFS", 512)
    monkeypatch.setattr(neighbors, "QUERY_GROUP", 64)
    monkeypatch.setattr(neighbors, "FIRST_COLUMNS", 100)
    calls = []
    original = _native.module().knn_bound_group

    class Recording:
        def __getattr__(self, name):
            return getattr(_native.module(), name)

        def knn_bound_group(self, *args):
            calls.append(tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args))
            return original(*args)

    original_init = neighbors._CppKnn.__init__

    def init(self, *args):
        original_init(self, *args)
        self.C = Recording()

    monkeypatch.setattr(neighbors._CppKnn, "__init__", init)
    rng = np.random.default_rng(15)
    references = (rng.normal(size=(1200, 9)) * 0.3 ** np.arange(9)).astype(np.float32)
    queries = (rng.normal(size=(128, 9)) * 0.3 ** np.arange(9)).astype(np.float32)
    knn_distance(queries, references, 4, backend="cpp")
    assert calls
    good = list(calls[0])
    names = ["top", "starts", "order", "norms", "box_lo", "box_hi", "visit_order", "visit_bound", "covered", "visited",
             "width", "max_width", "slack", "ids", "low", "box_coords", "global_norms", "centre_low", "c1", "c2",
             "frame_to_exact", "queries", "references", "scale", "best_d2", "best_index", "bound_fraction"]
    at = {name: i for i, name in enumerate(names)}

    def broken(name, value, message):
        args = [a.copy() if isinstance(a, np.ndarray) else a for a in good]
        args[at[name]] = value(args[at[name]]) if callable(value) else value
        with pytest.raises(ValueError, match=f"knn_bound_group: .*{message}"):
            original(*args)

    broken("visit_bound", lambda b: b[::-1].copy() if b.size > 1 and b[0] != b[-1] else np.array([1.0] + [0.0] * (b.size - 1)),
           "visit_bound must be ascending")
    broken("covered", lambda c: c + 1, "covered must")
    broken("order", lambda o: np.full_like(o, 10**7), "order holds an index outside")
    broken("ids", lambda i: np.full_like(i, -1), "ids holds an index outside")
    broken("low", lambda a: a.astype(np.float64), "low must have dtype float32")
    broken("box_coords", lambda a: np.ascontiguousarray(a[:, :1]), "box_coords must have the columns of box_lo")
    broken("width", 0, "width must satisfy")
    broken("bound_fraction", 2.0, "bound_fraction must be in")
    broken("slack", float("nan"), "slack must be")


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("rows, cols, dim", [(1, 1, 1), (7, 33, 5), (13, 16, 16), (4, 50, 3)])
def test_knn_bound_update_kernel(rows, cols, dim, portable):
    # the C++ lower-bound kernel (AVX2 where the CPU has it, and the portable loops) against its definition: a column is tested exactly iff
    # col_norm - 2 q.c <= (sqrt(worst) + slack)^2 + band - q_norm; with a zero band and slack and a
    # bound that is the full distance (dim = the points' dimension) it is a brute-force update
    from inform_fast import _native

    C = _native.module()
    rng = np.random.default_rng(rows * 100 + cols)
    k = 3
    queries = rng.normal(size=(rows, dim)).astype(np.float32)
    refs = rng.normal(size=(cols, dim)).astype(np.float32)
    stride = -(-cols // 16) * 16
    cols_t = np.zeros((dim, stride), np.float32)
    cols_t[:, :cols] = refs.T
    col_norm = np.zeros(stride, np.float32)
    col_norm[:cols] = (refs * refs).sum(1)
    q_norm = (queries * queries).sum(1).astype(np.float32)
    best = np.full((rows, k), np.inf)
    best[:, 0] = 1e9  # full heaps with a loose worst: every reference is a candidate
    best[:, 1:] = 1e9 - 1
    best_index = np.full((rows, k), 10**6, np.int64)
    band = np.full(rows, 1e-3, np.float32)
    tests = C.knn_bound_update(queries, cols_t, col_norm, q_norm, band, 0.0, 1.0, np.arange(rows), np.arange(cols), queries,
                               refs, 1.0, best, best_index, 10**9, portable=portable)
    d2 = ((queries[:, None, :].astype(np.float64) - refs[None]) ** 2).sum(-1)
    want = np.sort(d2, axis=1)[:, :k]
    np.testing.assert_allclose(np.sort(best, axis=1)[:, : min(k, cols)], want[:, : min(k, cols)], rtol=1e-12)
    assert tests >= rows * min(cols, k)
    # budget 0 and more than one row block: stops after the first block, the rest untouched
    if rows > 4:
        best2 = np.full((rows, k), 1e9)
        done = C.knn_bound_update(queries, cols_t, col_norm, q_norm, band, 0.0, 1.0, np.arange(rows), np.arange(cols), queries,
                                  refs, 1.0, best2, best_index.copy(), 0, portable=portable)
        assert done == -4 and bool((best2[4:] == 1e9).all()) and bool((best2[:4] < 1e9).any())
    if stride != cols:
        with pytest.raises(ValueError, match="padded"):
            C.knn_bound_update(queries, np.ascontiguousarray(cols_t[:, :cols]), col_norm[:cols], q_norm, band, 0.0, 1.0,
                               np.arange(rows), np.arange(cols), queries, refs, 1.0, best, best_index, 10**9)


@requires_triton_interpreter()
def test_knn_on_the_triton_backend():
    rng = np.random.default_rng(11)
    queries = torch.from_numpy(rng.normal(size=(9, 5)).astype(np.float32)).to(kernel_test_device())
    references = torch.from_numpy(rng.normal(size=(200, 5)).astype(np.float32)).to(kernel_test_device())
    distance, index = knn_distance(queries, references, 4, backend="triton")
    want, want_index = knn_distance(queries.cpu(), references.cpu(), 4, backend="reference")
    torch.testing.assert_close(index.cpu(), want_index)
    torch.testing.assert_close(distance.cpu(), want)


@pytest.mark.parametrize("n, dims, leaf", [(0, 3, 8), (1, 1, 1), (1000, 5, 64), (777, 2, 7)])
def test_native_kd_order_matches_python(n, dims, leaf):
    # the C++ tree build makes the same leaves as the Python one (continuous coordinates: no ties
    # at a median) and a permutation of the rows
    from inform_fast import _native
    from inform_fast.spatial import _kd_order

    if not _native.available():
        pytest.skip("inform_fast._C not built")
    coords = np.random.default_rng(n).normal(size=(n, dims)).astype(np.float32) * np.linspace(3, 1, dims, dtype=np.float32)
    order, sizes = _kd_order(coords, leaf)
    order_c, sizes_c = _kd_order(coords, leaf, native=True)
    assert sizes == sizes_c and sorted(order_c.tolist()) == list(range(n))
    starts = np.cumsum([0] + sizes)
    for a, b in zip(starts[:-1], starts[1:]):
        assert set(order[a:b].tolist()) == set(order_c[a:b].tolist())
    with pytest.raises(ValueError, match="leaf_size"):
        _native.module().kd_order(coords.reshape(n, dims), 0)


@pytest.mark.parametrize("x_dtype,radius", [(torch.float32, None), (torch.float64, None), (torch.float64, 1e-9)])
def test_frame_apply_in_place_chunks_match_one_pass(x_dtype, radius):
    """``Frame.apply`` in small chunks and into ``out`` (how the index is built, to keep its
    temporaries small) gives each value rounded once, as one float64 pass then a rounding does:
    float32 frames of float32 and float64 input, and a float64 frame (a radius below float32's
    resolution)."""
    from inform_fast.spatial import fit_frame

    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(1003, 37, generator=gen, dtype=torch.float64) * 3 + 1e3).to(x_dtype)
    frame = fit_frame(x, radius=radius)
    expected_dtype = torch.float64 if radius is not None else torch.float32
    assert frame.dtype == expected_dtype
    work = torch.float32 if x_dtype == torch.float32 and frame.dtype == torch.float32 else torch.float64
    expected = ((x.to(work) - frame.mean.to(work)) * frame.scale).to(frame.dtype)
    out = torch.full(x.shape, float("nan"), dtype=frame.dtype)
    returned = frame.apply(x, rows=100, out=out)
    assert returned is out
    assert torch.equal(out, expected)
    assert torch.equal(frame.apply(x, rows=7), expected)


@pytest.mark.parametrize("dtype,magnitude", [(torch.float32, 1.0), (torch.float64, 1.0), (torch.float64, 1e300),
                                             (torch.bfloat16, 1.0)])
def test_frame_extent_from_column_ranges_matches_elementwise(dtype, magnitude):
    """The frame's scale comes from column ranges (one amin/amax pass), not an elementwise
    |x - mean| pass: it must be the same power of two as the elementwise extent, queries included,
    and at magnitudes where the values are pre-scaled."""
    import math

    from inform_fast.spatial import fit_frame

    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(517, 23, generator=gen, dtype=torch.float64) * magnitude).to(dtype)
    also = (torch.randn(61, 23, generator=gen, dtype=torch.float64) * 3 * magnitude).to(dtype)
    for queries in (None, also):
        frame = fit_frame(x, also=queries)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        pre = 1.0 / 2.0 ** math.frexp(magnitude * 100)[1] if magnitude > 1e200 else 1.0
        sets = [x] if queries is None else [x, queries]
        extent = max(float(((s.to(work) * pre) - (frame.mean * pre).to(work)).abs().max()) for s in sets) / pre
        extent *= 1.0 + 1e-6
        assert frame.scale == 1.0 / 2.0 ** math.frexp(extent)[1]


@requires_cpp()
@pytest.mark.parametrize("portable", [False, True])
def test_knn_bound_update_leaf_gate(portable):
    """The kernel's per-query leaf gate (``gate_*``: column groups with boxes in some coordinates)
    only skips what no heap could take: with true boxes the heaps end exactly as brute force, with
    the same exact tests; with boxes moved out of every query's reach nothing is scanned (no test,
    heaps untouched); malformed gates are refused."""
    from inform_fast import _native

    C = _native.module()
    rng = np.random.default_rng(23)
    rows, cols, dim, k, first = 13, 203, 5, 4, 40
    queries = rng.normal(size=(rows, dim)).astype(np.float32)
    refs = (rng.normal(size=(cols, dim)) * np.array([4, 3, 1, 1, 1])).astype(np.float32)
    refs[first:] = refs[first:][np.argsort(refs[first:, 0])]  # leaves of neighbouring columns are compact
    d2 = ((queries[:, None, :].astype(np.float64) - refs[None].astype(np.float64)) ** 2).sum(-1)
    # heaps holding the exact k best of the first 40 references (finite worst: the gate applies)
    start_index = np.argsort(d2[:, :first], axis=1)[:, :k][:, ::-1].copy()  # descending: a valid max-heap
    start_d2 = np.take_along_axis(d2[:, :first], start_index, 1)
    from inform_fast.spatial import bound_columns

    tile = refs[first:]
    n_tile = tile.shape[0]
    cols_t, col_norm = bound_columns(torch.from_numpy(tile), torch.from_numpy((tile * tile).sum(1)))
    q_norm = (queries * queries).sum(1).astype(np.float32)
    band = np.full(rows, 1e-3, np.float32)
    col_ids = np.arange(first, cols)
    # leaves of 0-30 consecutive columns (one empty), boxes in the first two coordinates
    sizes = rng.integers(1, 31, size=40)
    sizes[3] = 0
    starts = np.concatenate([[0], np.cumsum(sizes)])
    starts = starts[starts < n_tile].tolist() + [n_tile]
    starts = np.array(starts, np.int64)
    gate_dims = 2
    lo = np.array([tile[a:b, :gate_dims].min(0) if b > a else np.zeros(gate_dims) for a, b in zip(starts[:-1], starts[1:])],
                  np.float64)
    hi = np.array([tile[a:b, :gate_dims].max(0) if b > a else np.zeros(gate_dims) for a, b in zip(starts[:-1], starts[1:])],
                  np.float64)
    gate_rows = queries[:, :gate_dims].astype(np.float64)

    def run(**gate):
        best, best_index = start_d2.copy(), start_index.copy()
        tests = C.knn_bound_update(queries, cols_t, col_norm, q_norm, band, 0.0, 1.0, np.arange(rows), col_ids, queries,
                                   refs, 1.0, best, best_index, 10**9, portable=portable, **gate)
        return best, best_index, tests

    plain = run()
    gated = run(gate_starts=starts, gate_lo=lo, gate_hi=hi, gate_rows=gate_rows)
    want = np.sort(d2, axis=1)[:, :k]
    for best, best_index, _ in (plain, gated):
        np.testing.assert_array_equal(np.sort(best, axis=1), want)
        np.testing.assert_array_equal(np.take_along_axis(d2, best_index, 1), best)
    # the bound here is the full distance, so the pairs the gate skips are ones it rejects anyway
    assert gated[2] == plain[2]
    far = run(gate_starts=starts, gate_lo=lo + 1e4, gate_hi=hi + 1e4, gate_rows=gate_rows)
    assert far[2] == 0 and np.array_equal(far[0], start_d2)
    bad = dict(gate_starts=starts, gate_lo=lo, gate_hi=hi, gate_rows=gate_rows)
    with pytest.raises(ValueError, match="all or none"):
        run(gate_starts=starts, gate_lo=lo)
    with pytest.raises(ValueError, match="from 0 to the number of columns"):
        run(**{**bad, "gate_starts": np.concatenate([starts[:-1], [n_tile - 1]])})
    with pytest.raises(ValueError, match="finite"):
        run(**{**bad, "gate_rows": np.full_like(gate_rows, np.nan)})
    with pytest.raises(ValueError, match="gate_rows must be"):
        run(**{**bad, "gate_rows": gate_rows[:-1]})


@pytest.mark.parametrize("rows, k", [(1, 1), (37, 5), (203, 22)])
def test_knn_sort_rows_orders_by_distance_then_id(rows, k):
    # the C++ sort of the finished heaps (_finish with the cpp backend) against a lexicographic sort;
    # distances drawn from a few values so that ties must be ordered by id
    from inform_fast import _native

    rng = np.random.default_rng(rows + k)
    d2 = rng.integers(0, 4, size=(rows, k)).astype(np.float64) / 3.0
    ids = np.stack([rng.permutation(10 * k)[:k] for _ in range(rows)]).astype(np.int64)
    order = np.lexsort((ids, d2), axis=1)
    want_d, want_i = np.take_along_axis(d2, order, 1), np.take_along_axis(ids, order, 1)
    _native.module().knn_sort_rows(d2, ids, 2)
    np.testing.assert_array_equal(d2, want_d)
    np.testing.assert_array_equal(ids, want_i)
    with pytest.raises(ValueError, match="knn_sort_rows: best_index must have the shape of best_d2"):
        _native.module().knn_sort_rows(d2, ids[:, :0].copy(), 1)
    with pytest.raises(ValueError, match="knn_sort_rows: best_d2 must have dtype float64"):
        _native.module().knn_sort_rows(d2.astype(np.float32), ids, 1)
