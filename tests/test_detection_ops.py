"""The detection searches as registered ops (``torch.ops.inform_fast.knn_distance`` and
``torch.ops.inform_fast.dbscan``): their registration (``torch.library.opcheck``), a compiled
caller with no graph break, and the same answers as scikit-learn through the op."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inform_fast.detect.dbscan import dbscan
from inform_fast.detect.neighbors import knn_distance

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _latents(n: int, dim: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64).to(dtype)


def _opcheck(op, args):
    result = torch.library.opcheck(op, args, test_utils=OPCHECK_TESTS)
    assert all(value == "SUCCESS" for value in result.values()), result


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_knn_distance(backend, dtype):
    from inform_fast import dispatch

    if backend == "cpp" and not dispatch.cpp_available():
        pytest.skip("the C++ extension is not built")
    queries, references = _latents(37, 5, 0, dtype), _latents(301, 5, 1, dtype)
    _opcheck(torch.ops.inform_fast.knn_distance.default, (queries, references, 4, 1024, 8192, backend, "knn_distance"))
    distances, indices = torch.ops.inform_fast.knn_distance(queries, references, 4, 1024, 8192, backend, "knn_distance")
    assert distances.dtype == dtype and indices.dtype == torch.int64 and distances.shape == (37, 4)
    exact = torch.cdist(queries.double(), references.double()).sort(dim=1).values[:, :4]
    torch.testing.assert_close(distances.double(), exact, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck_dbscan(backend):
    from inform_fast import dispatch

    if backend == "cpp" and not dispatch.cpp_available():
        pytest.skip("the C++ extension is not built")
    x = torch.cat([_latents(90, 6, 2) * 0.1, _latents(60, 6, 3) * 0.1 + 3.0, _latents(11, 6, 4) * 4.0])
    _opcheck(torch.ops.inform_fast.dbscan.default, (x, 0.6, 4, 4096, backend))


def test_dbscan_through_the_op_matches_sklearn_and_keeps_its_stats():
    sklearn = pytest.importorskip("sklearn.cluster")
    x = torch.cat([_latents(120, 5, 5) * 0.2, _latents(80, 5, 6) * 0.2 + 2.5, _latents(23, 5, 7) * 3.0])
    result = dbscan(x, 0.7, 5)
    theirs = sklearn.DBSCAN(eps=0.7, min_samples=5).fit(x.numpy())
    core = np.zeros(x.shape[0], bool)
    core[theirs.core_sample_indices_] = True
    assert np.array_equal(result.core_mask.numpy(), core)
    assert result.n_clusters == len(set(theirs.labels_[core].tolist()))
    assert result.stats["n"] == x.shape[0]  # the run's statistics still reach the eager caller


def test_compiled_callers_have_no_graph_break_and_match_eager():
    queries, references = _latents(29, 4, 8), _latents(200, 4, 9)

    def neighbours(q, r):
        distances, indices = torch.ops.inform_fast.knn_distance(q, r, 3, 1024, 8192, None, "knn_distance")
        return distances.sum(1), indices[:, 0]

    def clusters(x):
        core, root = torch.ops.inform_fast.dbscan(x, 0.8, 4, 4096, None)
        return core.sum(), root.max()

    for fn, args in ((neighbours, (queries, references)), (clusters, (references,))):
        explanation = torch._dynamo.explain(fn)(*args)
        assert explanation.graph_count >= 1 and explanation.graph_break_count == 0
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        for got, expected in zip(compiled(*args), fn(*args)):
            torch.testing.assert_close(got, expected)


def test_first_calls_do_not_import_dynamo():
    # torch.library.custom_op's wrapper imports torch._dynamo on an op's first call (1.7-3.5 s on
    # a 2-core CPU, most of a first clustering of 32,000 latents); the detection ops are defined
    # without it
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from inform_fast import dbscan, knn_scores, mop\n"
        "x = torch.randn(300, 8)\n"
        "dbscan(x, 1.5, 4); knn_scores(x[:50], x, k=3); mop(x[:50], x, alpha=0.05)\n"
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
