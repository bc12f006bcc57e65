"""The C++ extension inform_fast._C against the PyTorch reference, and its argument checks."""
import numpy as np
import pytest
import torch

from inform_fast import _native
from inform_fast.testing import requires_cpp

pytestmark = requires_cpp()


def C():
    return _native.module()


def tile(seed, rows=37, cols=53, dim=5):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(rows, dim)).astype(np.float32)
    c = rng.normal(size=(cols, dim)).astype(np.float32)
    partial = ((c * c).sum(1)[None, :] - 2 * r @ c.T).astype(np.float32)
    thr = (2.0 - (r * r).sum(1)).astype(np.float32)  # eps^2 = 2
    return partial, thr


def test_tile_counts_match_numpy():
    partial, thr = tile(0)
    rows = np.zeros(partial.shape[0], np.int64)
    cols = np.full(partial.shape[1], 5, np.int64)
    C().dbscan_tile_counts(partial, thr, rows, cols)
    hit = partial <= thr[:, None]
    np.testing.assert_array_equal(rows, hit.sum(1))
    np.testing.assert_array_equal(cols, 5 + hit.sum(0))
    C().dbscan_tile_counts(partial, thr, rows)  # row counts only, accumulating
    np.testing.assert_array_equal(rows, 2 * hit.sum(1))


def components(hit, n):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = np.nonzero(hit)
    return connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)[1]


def assert_roots_are_component_minima(parent, comp):
    for k in np.unique(comp):
        members = np.flatnonzero(comp == k)
        assert (parent[members] == members.min()).all()


def test_tile_union_gives_components():
    partial, thr = tile(1, rows=40, cols=40)
    n = 40
    parent = np.arange(n, dtype=np.int64)
    ids = np.arange(n, dtype=np.int64)
    C().dbscan_tile_union(partial, thr, ids, ids, parent)
    assert_roots_are_component_minima(parent, components(partial <= thr[:, None], n))


def test_tile_union_two_tiles_with_id_maps():
    # rows of a 50-point set split into two tiles mapped through a permutation
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    perm = rng.permutation(50).astype(np.int64)
    parent = np.arange(50, dtype=np.int64)
    xp = x[perm]
    for rows in (slice(0, 25), slice(25, 50)):
        for cols in (slice(0, 25), slice(25, 50)):
            r, c = xp[rows], xp[cols]
            partial = ((c * c).sum(1)[None, :] - 2 * r @ c.T).astype(np.float32)
            thr = (0.6 - (r * r).sum(1)).astype(np.float32)
            C().dbscan_tile_union(partial, thr, perm[rows].copy(), perm[cols].copy(), parent)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    assert_roots_are_component_minima(parent, components(d2 <= 0.6, 50))


def test_union_edges_gives_components():
    rng = np.random.default_rng(6)
    a = rng.integers(0, 60, 45).astype(np.int64)
    b = rng.integers(0, 60, 45).astype(np.int64)
    parent = np.arange(60, dtype=np.int64)
    C().union_edges(parent, a, b)
    hit = np.zeros((60, 60), bool)
    hit[a, b] = True
    assert_roots_are_component_minima(parent, components(hit, 60))


def test_nearest_matches_numpy():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(7, 13)).astype(np.float32)
    r = rng.normal(size=(301, 13)).astype(np.float32)
    d2, index = C().nearest_reference(q, r)
    full = ((q[:, None, :].astype(np.float64) - r[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(index, full.argmin(1))
    np.testing.assert_allclose(d2, full.min(1), rtol=1e-5)


def test_checks_name_op_and_argument():
    partial, thr = tile(3)
    with pytest.raises(ValueError, match="dbscan_tile_counts: thr must have length"):
        C().dbscan_tile_counts(partial, thr[:-1], np.zeros(partial.shape[0], np.int64))
    with pytest.raises(ValueError, match="dbscan_tile_counts: count_rows must have dtype"):
        C().dbscan_tile_counts(partial, thr, np.zeros(partial.shape[0], np.int32))
    with pytest.raises(ValueError, match="dbscan_tile_counts: partial must be C-contiguous"):
        C().dbscan_tile_counts(np.asfortranarray(partial), thr, np.zeros(partial.shape[0], np.int64))
    with pytest.raises(ValueError, match="union_edges: edge_a/edge_b hold an index"):
        C().union_edges(np.arange(3, dtype=np.int64), np.array([0], np.int64), np.array([5], np.int64))
    with pytest.raises(ValueError, match="nearest_reference: queries and references must have the same dimension"):
        C().nearest_reference(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="nearest_reference: queries must have dtype"):
        C().nearest_reference(np.zeros((2, 3)), np.zeros((4, 3), np.float32))
    rows, cols = partial.shape
    with pytest.raises(ValueError, match="dbscan_tile_union: row_ids holds an index"):
        C().dbscan_tile_union(partial, thr, np.full(rows, 99, np.int64), np.zeros(cols, np.int64), np.arange(60, dtype=np.int64))
    with pytest.raises(ValueError, match="dbscan_tile_union: parent must be fully compressed"):
        C().dbscan_tile_union(partial, thr, np.zeros(rows, np.int64), np.zeros(cols, np.int64), np.array([0, 0, 1] + list(range(3, 60)), np.int64))


def test_dispatch_prefers_cpp_on_cpu():
    from inform_fast import dispatch  # its static table: nothing to import to register

    assert dispatch.resolve("dbscan", torch.device("cpu"))[0] == "cpp"
    assert dispatch.resolve("nearest_distance", torch.device("cpu"))[0] == "cpp"
