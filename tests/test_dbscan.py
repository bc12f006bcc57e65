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
    from inform_fast.kernels.dbscan import TritonPairs

    device = kernel_test_device()
    order = torch.randperm(70, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(70, 3)
    x[order, 0] = torch.arange(70.0)
    x = (x - x.mean(0)).to(device)
    parent = torch.arange(70, device=device)
    everything = torch.arange(70, device=device)
    TritonPairs(x, 1.01).union(everything, everything, parent)
    assert (parent == 0).all()
    counts = torch.zeros(70, dtype=torch.int64, device=device)
    TritonPairs(x, 1.01).count(everything, everything, counts)
    ends = order[[0, 69]].to(device)
    assert counts[ends].tolist() == [1, 1] and int(counts.sum()) == 2 * 69

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


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=requires_cpp()), TRITON])
@pytest.mark.parametrize("sample_columns, max_components", [(7, 128), (7, 1), (40, 2), (1, 128)])
def test_seed_and_pruning_paths(monkeypatch, backend, sample_columns, max_components):
    # few sample columns: many uncertain points and many seed components, so the component-pair
    # union, the ball pruning, the all-tiles fallback and the late-core pass all run
    module = importlib.import_module("inform_fast.detect.dbscan")  # the module, not the function of that name

    monkeypatch.setattr(module, "SAMPLE_COLUMNS", sample_columns)
    monkeypatch.setattr(module, "MAX_COMPONENTS", max_components)
    x, _ = make_blobs(407, n_features=6, centers=5, cluster_std=1.3, random_state=11)
    x = x.astype(np.float32)
    device = kernel_test_device() if backend == "triton" else "cpu"
    result = dbscan(torch.from_numpy(x).to(device), 1.9, 5, block=50, backend=backend)
    check_against_sklearn(x.astype(np.float64), 1.9, 5, result)
