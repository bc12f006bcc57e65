"""Our tiled DBSCAN against scikit-learn's DBSCAN (the oracle): same core points, same partition
of core points up to label permutation, border points validly assigned, noise equal."""
import importlib

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN
from sklearn.datasets import make_blobs

from inform_fast.detect.dbscan import dbscan
from inform_fast.testing import kernel_test_device, requires_cpp, requires_triton_interpreter


def check_against_sklearn(x: np.ndarray, eps: float, min_samples: int, result) -> None:
    sk = DBSCAN(eps=eps, min_samples=min_samples).fit(x)
    core = np.zeros(len(x), bool)
    core[sk.core_sample_indices_] = True
    labels = result.labels.cpu().numpy()
    ours_core = result.core_mask.cpu().numpy()
    np.testing.assert_array_equal(ours_core, core, err_msg="core masks differ")
    # core partition equal up to a permutation: a bijection between label sets on core points
    pairs = set(zip(labels[core].tolist(), sk.labels_[core].tolist()))
    assert len(pairs) == len(set(labels[core])) == len(set(sk.labels_[core])), "core partitions differ"
    assert result.n_clusters == len(set(sk.labels_[core]))
    np.testing.assert_array_equal(labels == -1, sk.labels_ == -1, err_msg="noise differs")
    # border points: in the cluster of one of their core neighbours
    dist = np.sqrt(((x[:, None, :] - x[None, core, :]) ** 2).sum(-1))
    core_labels = labels[core]
    for i in np.flatnonzero(~core & (labels >= 0)):
        assert labels[i] in set(core_labels[dist[i] <= eps].tolist()), f"border point {i} wrongly assigned"
    # deterministic numbering: clusters in order of their smallest core point index
    firsts = [np.flatnonzero((labels == k) & ours_core)[0] for k in range(result.n_clusters)]
    assert firsts == sorted(firsts)


CASES = [
    # (n, dim, centers, std, eps, min_samples)
    (301, 7, 4, 1.5, 2.5, 5),
    (257, 3, 3, 1.0, 0.6, 4),
    (199, 5, 5, 2.0, 2.0, 1),
    (150, 2, 2, 0.3, 0.05, 3),  # mostly noise
]


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=requires_cpp())])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("block", [64, 4096])
def test_matches_sklearn_float64(backend, case, block):
    n, dim, centers, std, eps, min_samples = case
    x, _ = make_blobs(n, n_features=dim, centers=centers, cluster_std=std, random_state=n)
    check_against_sklearn(x, eps, min_samples, dbscan(x, eps, min_samples, block=block, backend=backend))


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=requires_cpp())])
def test_matches_sklearn_float32_blobs(backend):
    x, _ = make_blobs(523, n_features=16, centers=6, cluster_std=0.5, random_state=3)
    x = x.astype(np.float32)
    result = dbscan(x, 2.0, 5, block=100, backend=backend)
    check_against_sklearn(x.astype(np.float64), 2.0, 5, result)
    assert result.n_clusters == 6


@requires_cpp()
def test_cpp_equals_reference_exactly():
    x = torch.from_numpy(make_blobs(611, n_features=9, centers=5, cluster_std=1.2, random_state=7)[0]).float()
    a = dbscan(x, 1.5, 6, block=128, backend="reference")
    b = dbscan(x, 1.5, 6, block=128, backend="cpp")
    torch.testing.assert_close(a.labels, b.labels)
    torch.testing.assert_close(a.core_mask, b.core_mask)


def test_all_noise_and_single_point():
    x = np.arange(10, dtype=np.float64)[:, None] * 10
    result = dbscan(x, 1.0, 2)
    assert result.n_clusters == 0 and (result.labels == -1).all() and not result.core_mask.any()
    one = dbscan(np.zeros((1, 3)), 0.1, 1)  # min_samples=1: every point is core
    assert one.n_clusters == 1 and one.labels.tolist() == [0]


def test_bf16_input():
    x, _ = make_blobs(120, n_features=4, centers=[[0] * 4, [20] * 4], cluster_std=0.3, random_state=1)
    result = dbscan(torch.from_numpy(x).bfloat16(), 2.0, 5)
    assert result.n_clusters == 2


TRITON = pytest.param("triton", marks=requires_triton_interpreter())


@requires_triton_interpreter()
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_sklearn(case):
    # float32 data (the kernels compute in float32), checked against scikit-learn in float64
    n, dim, centers, std, eps, min_samples = case
    x = make_blobs(n, n_features=dim, centers=centers, cluster_std=std, random_state=n)[0].astype(np.float32)
    result = dbscan(torch.from_numpy(x).to(kernel_test_device()), eps, min_samples, backend="triton")
    assert result.labels.device.type == kernel_test_device()
    check_against_sklearn(x.astype(np.float64), eps, min_samples, result)


@requires_triton_interpreter()
def test_triton_all_noise_and_bf16():
    device = kernel_test_device()
    noise = dbscan(torch.arange(10.0, device=device)[:, None] * 10, 1.0, 2, backend="triton")
    assert noise.n_clusters == 0 and (noise.labels == -1).all() and not noise.core_mask.any()
    x, _ = make_blobs(120, n_features=4, centers=[[0] * 4, [20] * 4], cluster_std=0.3, random_state=1)
    two = dbscan(torch.from_numpy(x).bfloat16().to(device), 2.0, 5, backend="triton")
    assert two.n_clusters == 2


@requires_triton_interpreter()
def test_triton_union_joins_chains_across_launches():
    # a chain of points eps apart whose indices are shuffled: one component needs several
    # hooking launches (each launch only links roots), and must end as one cluster rooted at
    # its smallest index
    from inform_fast.spatial import build_index
    from inform_fast.kernels.dbscan import TritonTiles

    device = kernel_test_device()
    order = torch.randperm(70, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(70, 3)
    x[order, 0] = torch.arange(70.0)
    index = build_index(x.to(device), leaf_size=8, radius=1.0)
    engine = TritonTiles(index, x, 1.0)
    parent = torch.arange(70, device=device)
    everything = torch.arange(70, device=device)
    engine.union(everything, everything, parent)
    assert (parent == 0).all()
    counts = torch.zeros(70, dtype=torch.int32, device=device)
    lists = torch.full((70, 4), -1, dtype=torch.int32, device=device)
    engine.neighbours(everything, everything, counts, lists)
    ends = order[[0, 69]].to(device)
    assert counts[ends].tolist() == [1, 1] and int(counts.sum()) == 2 * 69  # points at exactly eps are neighbours
    assert engine.exact_tests > 0  # pairs at eps sit inside the band and were decided exactly


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=0.0), "eps"),
        (dict(eps=-1.0), "eps"),
        (dict(eps=float("nan")), "eps"),
        (dict(min_samples=0), "min_samples"),
        (dict(block=0), "block"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dbscan(np.zeros((5, 2)), **{"eps": 0.5, "min_samples": 2, **kwargs})


def test_bad_input():
    with pytest.raises(ValueError, match="x"):
        dbscan(np.zeros((0, 3)), 0.5, 2)
    bad = np.zeros((4, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="x"):
        dbscan(bad, 0.5, 2)
    with pytest.raises(ValueError, match="x"):
        dbscan(np.zeros(5), 0.5, 2)


BACKENDS = ["reference", pytest.param("cpp", marks=requires_cpp()), TRITON]


def _on(backend, x):
    return torch.from_numpy(x).to(kernel_test_device() if backend == "triton" else "cpu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "settings",
    [
        dict(NEAR_COLUMNS=8, ROW_GROUP=16),  # small near pass: most points go through the far pass
        dict(LIST_CAP=1, UNION_ROWS=1),  # overflowing lists: components joined pairwise
        dict(FILTER_MAX_FRACTION=1.0),  # lower-bound tiles everywhere (exact tests of every candidate)
        dict(FILTER_MAX_FRACTION=0.0, NEAR_COLUMNS=40),  # full tiles everywhere
    ],
)
def test_every_pass_matches_sklearn(monkeypatch, backend, settings):
    from inform_fast import spatial

    module = importlib.import_module("inform_fast.detect.dbscan")
    for name, value in settings.items():
        monkeypatch.setattr(module, name, value)
    monkeypatch.setattr(module, "LEAF_SIZE", 8)
    monkeypatch.setattr(spatial, "MAX_TREE_DIMS", 3)
    x, _ = make_blobs(407, n_features=6, centers=5, cluster_std=1.3, random_state=11)
    x = np.vstack([x, x[:30]]).astype(np.float32)  # some exact duplicates
    result = dbscan(_on(backend, x), 1.9, 5, block=50, backend=backend)
    check_against_sklearn(x.astype(np.float64), 1.9, 5, result)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=requires_cpp())])
@pytest.mark.parametrize("few_dims_below", [0, 10**9])  # 16 principal coordinates per point, or 8
def test_lower_bound_tiles_on_8_or_16_principal_coordinates_match_sklearn(monkeypatch, backend, few_dims_below):
    # D = 40 with a decaying spectrum: the lower bound from 8 or 16 coordinates rules pairs out,
    # every tile tries it, and the clustering stays sklearn's
    module = importlib.import_module("inform_fast.detect.dbscan")
    monkeypatch.setattr(module, "FEW_DIMS_BELOW", few_dims_below)
    monkeypatch.setattr(module, "FILTER_MAX_FRACTION", 1.0)
    monkeypatch.setattr(module, "LEAF_SIZE", 16)
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(1501, 40)) * (1.0 / np.arange(1, 41)) ** 0.5).astype(np.float32)
    x[:300] = x[:300] * 0.05 + x[0]  # a dense cluster among diffuse points
    result = dbscan(torch.from_numpy(x), 0.45, 5, block=200, backend=backend)
    assert result.stats["pairs_filtered"] > 0 and result.stats["filter_dims"] == (16 if few_dims_below == 0 else 8)
    check_against_sklearn(x.astype(np.float64), 0.45, 5, result)


def test_candidate_fraction_in_chunks_is_the_share_of_candidate_pairs():
    # the share of all n^2 point pairs in candidate leaf pairs, summed a chunk of leaf pairs at a
    # time, equals the sum over every leaf pair at once
    from inform_fast.spatial import build_index, candidate_leaves

    module = importlib.import_module("inform_fast.detect.dbscan")
    rng = np.random.default_rng(4)
    x = torch.from_numpy((rng.normal(size=(3001, 12)) * np.linspace(3.0, 0.2, 12)).astype(np.float32))
    index = build_index(x, leaf_size=16, radius=1.0)
    indptr, candidates = candidate_leaves(index, 1.0 * index.frame.scale)
    sizes = index.leaf_sizes.to(torch.float64)
    owner = torch.repeat_interleave(torch.arange(index.n_leaves), indptr[1:] - indptr[:-1])
    want = float((sizes[owner] * sizes[candidates.long()]).sum()) / 3001.0**2
    assert 0 < want < 1
    for chunk in (1, 7, 1 << 16):
        assert module._candidate_fraction(index, indptr, candidates, chunk=chunk) == pytest.approx(want, rel=1e-12)


# --- exactness (issue 11): the reproduction cases, on every backend --------------------------


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=requires_cpp())])
def test_points_on_a_line_far_from_the_origin(backend):
    # 8,000 points 0.9 apart on a line at a large offset, eps = 1, min_samples = 2: one cluster (the
    # float32 GEMM expansion without re-checks gave 353 clusters)
    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    direction /= np.linalg.norm(direction)
    x = (3e3 * rng.normal(size=16) + 0.9 * np.arange(8000)[:, None] * direction).astype(np.float32)
    result = dbscan(x[rng.permutation(8000)], 1.0, 2, backend=backend)
    assert result.n_clusters == 1 and bool(result.core_mask.all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_lines_far_from_their_mean(backend):
    # two lines 0.9-spaced, 2e4 apart: centring on the mean leaves both far from the origin, so
    # only local centring and the exact re-check keep each line one cluster
    rng = np.random.default_rng(3)
    direction = rng.normal(size=16)
    direction /= np.linalg.norm(direction)
    line = 0.9 * np.arange(150)[:, None] * direction
    x = np.vstack([1e4 * direction + line, -1e4 * direction - line]).astype(np.float32)
    result = dbscan(_on(backend, x[rng.permutation(300)]), 1.0, 2, backend=backend)
    assert result.n_clusters == 2 and bool(result.core_mask.all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [3, 5])  # seeds where the pre-fix code made every copy noise
def test_exact_duplicates_are_one_cluster(backend, seed):
    # 300 copies of one latent far from the data's mean (other points on the opposite side): one
    # cluster of core points (the unchecked expansion gave 258 clusters and 84 noise points; on
    # these draws all 300 copies came out as noise)
    rng = np.random.default_rng(seed)
    v = rng.normal(size=128)
    x = np.vstack([np.repeat(1e3 * v[None], 300, 0), -1e3 * v + rng.normal(size=(300, 128))]).astype(np.float32)
    shuffle = rng.permutation(600)
    result = dbscan(_on(backend, x[shuffle]), 0.5, 5, backend=backend)
    labels, core = np.empty(600, np.int64), np.empty(600, bool)
    labels[shuffle], core[shuffle] = result.labels.cpu().numpy(), result.core_mask.cpu().numpy()
    assert result.n_clusters == 1
    assert core[:300].all() and (labels[:300] == labels[0]).all() and labels[0] >= 0
    assert (labels[300:] == -1).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_points_at_exactly_eps_are_neighbours(backend, dtype):
    # dist <= eps is a neighbour, as in scikit-learn: all five points form one cluster
    x = np.array([[0, 1], [1, 1], [2, 1], [2, 0], [1, 0]], dtype)
    result = dbscan(_on(backend, x), 1.0, 3, backend=backend)
    assert result.n_clusters == 1 and bool((result.labels == 0).all())
    check_against_sklearn(x.astype(np.float64), 1.0, 3, result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_magnitudes_of_1e20(backend):
    # float32 squares of 1e20 overflow: the frame's power-of-two scale keeps them finite and exact
    x = np.array([[0, 1], [1, 1], [2, 1], [2, 0], [1, 0], [40, 40]], np.float64) * 1e20
    result = dbscan(_on(backend, x), 1e20, 3, backend=backend)
    assert result.n_clusters == 1 and result.labels.tolist() == [0, 0, 0, 0, 0, -1]
    check_against_sklearn(x, 1e20, 3, result)


def test_float64_eps_below_float32_resolution():
    # neighbours 1e-6 apart at a unit scale: float32 cannot tell them apart, the frame turns float64
    rng = np.random.default_rng(2)
    base = rng.normal(size=(40, 8))
    x = np.vstack([base, base + 1e-6 * rng.normal(size=(40, 8)), base + 2e-6 * rng.normal(size=(40, 8))])
    result = dbscan(x, 5e-6, 3)
    assert result.stats["frame_dtype"] == "float64"
    check_against_sklearn(x, 5e-6, 3, result)


# --- repeated rows (a collapsed policy) -------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("min_samples", [1, 3, 6])
def test_rows_repeated_beyond_min_samples_are_set_aside_without_changing_the_result(backend, min_samples):
    # groups of 1..12 copies of a few latents among diffuse points and a loose cluster: copies
    # beyond the min_samples-th are set aside, and core points, clusters, noise and the border
    # rule still match scikit-learn; -0.0 and 0.0 are one value, as in the distance
    rng = np.random.default_rng(5 + min_samples)
    base = rng.normal(size=(40, 9)).astype(np.float32)
    copies = np.repeat(base, rng.integers(1, 13, size=40), axis=0)
    x = np.vstack([copies, rng.normal(scale=1.5, size=(150, 9)), 0.3 * rng.normal(size=(60, 9)) + 2.0]).astype(np.float32)
    x[:5, 0] = 0.0
    x[5:9] = x[:4]
    x[5:9, 0] = -0.0
    x = x[rng.permutation(len(x))]
    result = dbscan(_on(backend, x), 1.1, min_samples, backend=backend)
    assert result.stats.get("repeated_rows_set_aside", 0) > 0
    check_against_sklearn(x.astype(np.float64), 1.1, min_samples, result)


def test_rows_equal_in_the_hashed_columns_but_not_elsewhere_are_kept():
    # 20 rows that agree in every column the duplicate search hashes but differ in one other:
    # they are not copies (nothing may be set aside), and the clustering is scikit-learn's
    module = importlib.import_module("inform_fast.detect.dbscan")
    x = np.zeros((20, 12), np.float32)
    x[:, 4] = np.arange(20) * 0.5  # column 4 is not among the hashed ones for 12 columns
    hashed = torch.linspace(0, 11, module.HASH_COLUMNS).round().long().tolist()
    assert 4 not in hashed
    assert module.repeated_rows(torch.from_numpy(x), 3) is None
    result = dbscan(x, 0.6, 3)
    check_against_sklearn(x.astype(np.float64), 0.6, 3, result)


@requires_cpp()
@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("rows, cols, dim", [(1, 1, 1), (9, 37, 5), (12, 16, 16), (7, 33, 128)])
def test_panel_kernel_lower_bound_and_full_tiles(rows, cols, dim, portable):
    # the panel kernel against its definition: a lower-bound tile (no thr_lo) whose limit leaves
    # every pair tests them all, a full tile with a zero band tests none; both give the brute-force
    # neighbours within eps (in column order, the row itself excluded) and the budget stops after
    # the first block of six rows
    from inform_fast import _native

    C = _native.module()
    rng = np.random.default_rng(rows + cols + dim)
    n = rows + cols
    points = rng.normal(size=(n, dim)).astype(np.float32)
    row_ids = np.arange(rows, dtype=np.int64)
    col_ids = rng.permutation(n)[:cols].astype(np.int64)
    eps2 = float(np.median(((points[:, None].astype(np.float64) - points[None]) ** 2).sum(-1)))
    n_panels = -(-cols // 16)
    panels, norm = np.empty((n_panels, dim, 16), np.float32), np.empty(n_panels * 16, np.float32)
    C.pack_panels(points, col_ids, None, 1.0, None, panels, norm)
    d2 = ((points[:rows, None, :].astype(np.float64) - points[col_ids][None]) ** 2).sum(-1)
    want = [[int(c) for c, v in zip(col_ids, d2[i]) if v <= eps2 and c != i] for i in range(rows)]
    # thresholds of the float32 value that no rounding can cross: pairs within 1e-3 of eps2 tested
    thr = eps2 - (points[:rows].astype(np.float64) ** 2).sum(1)
    for lo, hi in ((None, np.full(rows, 1e30)), (thr - 1e-3 * (1 + eps2), thr + 1e-3 * (1 + eps2))):
        counts = np.zeros(n, np.int32)
        lists = np.full((n, 4), -1, np.int32)
        tests = C.dbscan_panel_neighbours(points[:rows], panels, norm, lo, hi, row_ids, col_ids, points, 1.0, eps2, counts,
                                          lists, 2**63 - 1, portable=portable)
        for i in range(rows):
            assert counts[i] == len(want[i]) and lists[i, : min(4, len(want[i]))].tolist() == want[i][:4]
        if lo is None:
            assert tests == sum(int((col_ids != i).sum()) for i in range(rows))
        else:
            # only pairs near the threshold are tested (the band plus float32 rounding, well inside 2x)
            assert tests <= int(sum(((np.abs(d2[i] - eps2) <= 2e-3 * (1 + eps2)) & (col_ids != i)).sum() for i in range(rows)))
    if rows > 6:  # budget 0: the first block of six rows only
        counts2 = np.zeros(n, np.int32)
        done = C.dbscan_panel_neighbours(points[:rows], panels, norm, None, np.full(rows, 1e30), row_ids, col_ids, points,
                                         1.0, eps2, counts2, np.full((n, 4), -1, np.int32), 0, portable=portable)
        assert done == -6 and bool((counts2[6:] == 0).all()) and counts2[:6].tolist() == [len(w) for w in want[:6]]
