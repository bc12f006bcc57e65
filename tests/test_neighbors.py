"""Tiled nearest-reference distance against an exact NumPy / scikit-learn search."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from inform_fast.detect.neighbors import nearest_distance
from inform_fast.testing import requires_cpp, requires_triton_interpreter

BACKENDS = ["reference", pytest.param("cpp", marks=requires_cpp())]


def exact(queries, references):
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - references[None].astype(np.float64)) ** 2).sum(-1))
    return d.min(1), d.argmin(1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_q, n_r, dim, bq, br", [(37, 301, 7, 8, 64), (5, 1000, 33, 1024, 8192), (64, 257, 3, 13, 17)])
def test_matches_exact_search(backend, n_q, n_r, dim, bq, br):
    rng = np.random.default_rng(n_q)
    queries = rng.normal(size=(n_q, dim)).astype(np.float32)
    references = rng.normal(size=(n_r, dim)).astype(np.float32)
    dist, index = nearest_distance(queries, references, block_queries=bq, block_refs=br, backend=backend)
    want_d, want_i = exact(queries, references)
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_allclose(dist.numpy(), want_d, rtol=1e-6)
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


def test_bf16_input():
    rng = np.random.default_rng(2)
    queries = torch.from_numpy(rng.normal(size=(9, 8))).bfloat16()
    references = torch.from_numpy(rng.normal(size=(77, 8))).bfloat16()
    dist, index = nearest_distance(queries, references)
    want_d, want_i = exact(queries.float().numpy(), references.float().numpy())
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_allclose(dist.numpy(), want_d, rtol=1e-5)


@requires_triton_interpreter()
def test_triton_under_interpreter():
    rng = np.random.default_rng(3)
    queries = torch.from_numpy(rng.normal(size=(19, 7)).astype(np.float32))
    references = torch.from_numpy(rng.normal(size=(301, 7)).astype(np.float32))
    dist, index = nearest_distance(queries, references, backend="triton")
    want_d, want_i = exact(queries.numpy(), references.numpy())
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_allclose(dist.numpy(), want_d, rtol=1e-6)


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
