"""Mahalanobis distance of many latents to a fitted reference.

CPU (default): 2*10^5 x 128 float32. Ours (``MahalanobisScorer.distance``, chunked GEMM with the
whitening matrix + square-sum) against NumPy vectorised, an eager PyTorch expression and its
torch.compile, one torch
matmul of the same shape (the ceiling: our work is that GEMM plus a square-sum) and the authors'
per-row loop (``scipy.spatial.distance.mahalanobis`` called per row in Python), which is timed
on 2000 rows; benchmarks/report.py compares it per row (``extra_info["rows"]``).
Issue targets: >= 8x faster per row than the SciPy loop, >= 60% of the matmul's rate.

``--gpu-sizes``: 10^7 x 128 float32 on CUDA: the fused Triton kernel (tf32, 3xtf32, exact fp32)
against eager PyTorch and the matmul alone. Target < 2.5 ms (x is 5.1 GB: ~70% of HBM bandwidth).
"""
import numpy as np
import pytest
import torch

from inform_fast.detect import MahalanobisScorer

DIM = 128
SCIPY_ROWS = 2000


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def setup(gpu_sizes, device):
    n = 10_000_000 if gpu_sizes else 200_000
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(20_000, DIM, generator=g) * 0.5 + 0.1
    scorer = MahalanobisScorer().fit(reference)
    x = (torch.randn(n, DIM, generator=g) * 0.6 + 0.1).to(device)
    return scorer, x, device


def _info(benchmark, role, x, **extra):
    n = x.shape[0]
    benchmark.extra_info.update(
        role=role, rows=n, dim=DIM, dtype="float32", device=str(x.device),
        flops=2 * n * DIM * DIM, bytes=n * DIM * 4, **extra,
    )
    if x.is_cuda:
        benchmark.extra_info["peak_memory_bytes"] = torch.cuda.max_memory_allocated()


def _rounds(device):
    return dict(rounds=20, warmup_rounds=3) if device == "cuda" else dict(rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="mahalanobis")
def test_mahalanobis_ours(benchmark, setup):
    scorer, x, device = setup
    precision = "tf32" if device == "cuda" else "ieee"
    scorer.precision = precision

    def run():
        scorer.distance(x, squared=True)
        _sync(device)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(run, **_rounds(device))
    _info(benchmark, "ours", x, backend="triton" if device == "cuda" else "reference (chunked GEMM)", precision=precision)


@pytest.mark.benchmark(group="mahalanobis")
@pytest.mark.parametrize("precision", ["tf32x3", "ieee"])
def test_mahalanobis_ours_precise(benchmark, setup, precision):
    scorer, x, device = setup
    if device != "cuda":
        pytest.skip("tensor-core precision variants only differ on CUDA")
    scorer.precision = precision

    def run():
        scorer.distance(x, squared=True)
        _sync(device)

    torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(run, **_rounds(device))
    _info(benchmark, "ours", x, backend="triton", precision=precision)
    scorer.precision = "tf32"


@pytest.mark.benchmark(group="mahalanobis")
def test_mahalanobis_torch_eager(benchmark, setup):
    scorer, x, device = setup
    mean = scorer.mean_.float().to(device)
    precision = torch.linalg.inv(scorer.covariance_).float().to(device)

    def run():
        diff = x - mean
        ((diff @ precision) * diff).sum(1)
        _sync(device)

    benchmark.pedantic(run, **_rounds(device))
    _info(benchmark, "baseline", x, what="((x - mean) @ inv(cov) * (x - mean)).sum(1)")


@pytest.mark.benchmark(group="mahalanobis")
def test_mahalanobis_torch_compile(benchmark, setup):
    scorer, x, device = setup
    mean = scorer.mean_.float().to(device)
    precision = torch.linalg.inv(scorer.covariance_).float().to(device)

    @torch.compile(dynamic=False)
    def squared(x):
        diff = x - mean
        return ((diff @ precision) * diff).sum(1)

    def run():
        squared(x)
        _sync(device)

    try:
        run()  # compile outside the timing
    except Exception as error:  # no compiler toolchain on this machine
        pytest.skip(f"torch.compile failed: {type(error).__name__}: {error}")
    benchmark.pedantic(run, **_rounds(device))
    _info(benchmark, "baseline", x, what="torch.compile of the eager expression")


@pytest.mark.benchmark(group="mahalanobis")
def test_mahalanobis_numpy_vectorised(benchmark, setup):
    scorer, x, device = setup
    if device != "cpu":
        pytest.skip("NumPy runs on the CPU only")
    xn = x.numpy()
    mean = scorer.mean_.numpy().astype(np.float32)
    precision = np.linalg.inv(scorer.covariance_.numpy()).astype(np.float32)

    def run():
        diff = xn - mean
        np.einsum("ij,ij->i", diff @ precision, diff)

    benchmark.pedantic(run, **_rounds(device))
    _info(benchmark, "baseline", x, what="numpy: einsum(diff @ inv(cov), diff)")


@pytest.mark.benchmark(group="mahalanobis")
def test_mahalanobis_matmul_ceiling(benchmark, setup):
    _, x, device = setup
    weight = torch.randn(DIM, DIM, device=device)
    out = torch.empty(x.shape[0], DIM, device=device)

    def run():
        torch.mm(x, weight, out=out)
        _sync(device)

    benchmark.pedantic(run, **_rounds(device))
    _info(benchmark, "ceiling", x, kind="matmul", what="one torch.mm of the same shape [n, 128] x [128, 128]")


@pytest.mark.benchmark(group="mahalanobis")
def test_mahalanobis_scipy_per_row_loop(benchmark, setup):
    from scipy.spatial.distance import mahalanobis

    scorer, x, device = setup
    if device != "cpu":
        pytest.skip("the authors' loop runs on the CPU")
    rows = x[:SCIPY_ROWS].double().numpy()
    mean = scorer.mean_.numpy()
    inverse = np.linalg.inv(scorer.covariance_.numpy())

    def run():
        return [mahalanobis(row, mean, inverse) for row in rows]

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    seconds = benchmark.stats.stats.min
    benchmark.extra_info.update(
        role="baseline", rows=SCIPY_ROWS, dim=DIM, seconds_per_row=seconds / SCIPY_ROWS,
        extrapolated_seconds_for_full=seconds / SCIPY_ROWS * x.shape[0], full_rows=x.shape[0],
    )
