"""MahalanobisScorer, mop and ibl_penalty against NumPy / scikit-learn / SciPy in float64."""
import os

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.covariance import LedoitWolf, ShrunkCovariance

from inform_fast import dispatch
from inform_fast.detect import MahalanobisScorer, ibl_penalty, mop
from inform_fast.detect.mahalanobis import chi2_sf
from inform_fast.testing import kernel_test_device, requires_triton_interpreter


def _data(n, d, seed=0, offset=3.0):
    # one well-conditioned mixing per dimension, so queries follow the reference distribution
    mix = np.random.default_rng(1000 + d).normal(size=(d, d)) * (0.5 / np.sqrt(d)) + np.eye(d)
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) @ mix + offset).astype(np.float64)


def _numpy_d2(reference, queries, shrink=None):
    """Independent float64 Mahalanobis: sklearn-style biased covariance, np.linalg.solve."""
    mean = reference.mean(0)
    cov = np.cov(reference.T, bias=True) if shrink is None else shrink
    diff = queries - mean
    return np.einsum("ij,ij->i", diff, np.linalg.solve(cov, diff.T).T)


@pytest.mark.parametrize("n, d", [(301, 13), (1000, 37), (97, 5)])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_distance_matches_numpy(n, d, dtype, rtol):
    reference = _data(n, d)
    queries = _data(211, d, seed=1) * 1.5
    scorer = MahalanobisScorer(eps=0.0).fit(torch.tensor(reference, dtype=dtype))
    expected = _numpy_d2(reference.astype(np.float32).astype(np.float64) if dtype == torch.float32 else reference, queries)
    got = scorer.distance(torch.tensor(queries, dtype=dtype), squared=True, backend="reference")
    assert got.dtype == dtype and got.shape == (211,)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=rtol)
    np.testing.assert_allclose(scorer.distance(torch.tensor(queries, dtype=dtype)).double().numpy(), np.sqrt(expected), rtol=rtol)


def test_numpy_input_and_bfloat16():
    reference = _data(400, 8)
    queries = torch.tensor(_data(50, 8, seed=2), dtype=torch.bfloat16)
    scorer = MahalanobisScorer().fit(reference.astype(np.float32))
    got = scorer.distance(queries, squared=True)
    assert got.dtype == torch.float32
    expected = _numpy_d2(reference, queries.double().numpy())
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=2e-3)


@pytest.mark.parametrize("n, d", [(40, 60), (200, 17), (1500, 31), (3, 2), (100, 1)])
def test_ledoit_wolf_matches_sklearn(n, d):
    x = _data(n, d, seed=n, offset=50.0)  # large offset: the shifted sums must not cancel
    expected = LedoitWolf(assume_centered=False).fit(x)
    scorer = MahalanobisScorer(shrinkage="ledoit_wolf", eps=0.0).fit(torch.tensor(x))
    assert scorer.shrinkage_ == pytest.approx(expected.shrinkage_, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(scorer.covariance_.numpy(), expected.covariance_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(scorer.mean_.numpy(), expected.location_, rtol=1e-12)
    q = _data(30, d, seed=99, offset=50.0)
    np.testing.assert_allclose(scorer.distance(torch.tensor(q), squared=True).numpy(), expected.mahalanobis(q), rtol=1e-7)
    # streamed in uneven batches, the shrinkage is the same
    streamed = MahalanobisScorer(shrinkage="ledoit_wolf", eps=0.0)
    for part in np.array_split(x, sorted({min(1, n), min(7, n), n // 2})):
        streamed.partial_fit(torch.tensor(part))
    assert streamed.shrinkage_ == pytest.approx(expected.shrinkage_, rel=1e-8, abs=1e-12)


def test_float_shrinkage_matches_sklearn():
    x = _data(120, 9)
    expected = ShrunkCovariance(shrinkage=0.3).fit(x)
    scorer = MahalanobisScorer(shrinkage=0.3, eps=0.0).fit(x)
    np.testing.assert_allclose(scorer.covariance_.numpy(), expected.covariance_, rtol=1e-10)


def test_eps_is_added_to_the_diagonal():
    x = _data(200, 6)
    cov = np.cov(x.T, bias=True)
    scorer = MahalanobisScorer(eps=0.5).fit(x)
    np.testing.assert_allclose(scorer.covariance_.numpy(), cov + 0.5 * np.eye(6), rtol=1e-12)
    np.testing.assert_allclose(scorer.precision_.numpy(), np.linalg.inv(cov + 0.5 * np.eye(6)), rtol=1e-9)


@pytest.mark.parametrize("df", [1, 3, 128, 1024])
def test_pvalue_is_the_chi2_survival_function(df):
    d2 = np.concatenate([np.linspace(0, 3 * df, 50), scipy.stats.chi2.isf([1e-30, 1e-250], df)])
    got = chi2_sf(torch.tensor(d2), df).numpy()
    expected = scipy.stats.chi2.sf(d2, df)
    # torch's igamc agrees with scipy to ~2e-9 relative all the way down to 1e-300
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=0)
    # far in the tail 1 - cdf is exactly 0 while the survival function is resolved
    assert expected[-1] > 0 and 1.0 - scipy.stats.chi2.cdf(d2[-1], df) == 0.0
    assert got[-1] > 0


def test_pvalue_far_tail_from_the_scorer():
    x = _data(500, 4)
    scorer = MahalanobisScorer().fit(x)
    far = torch.tensor(x[:5] + 12.0)
    p = scorer.pvalue(far)
    d2 = scorer.distance(far, squared=True).numpy()
    assert p.dtype == torch.float64
    assert np.all(p.numpy() > 0) and np.all(p.numpy() < 1e-30)
    assert np.all(1.0 - scipy.stats.chi2.cdf(d2, 4) == 0.0)
    np.testing.assert_allclose(p.numpy(), scipy.stats.chi2.sf(d2, 4), rtol=1e-8)


def test_partial_fit_and_merge_equal_fit():
    x = _data(999, 11, offset=1e3)
    full = MahalanobisScorer(shrinkage="ledoit_wolf").fit(torch.tensor(x))
    streamed = MahalanobisScorer(shrinkage="ledoit_wolf")
    for part in np.array_split(x, 7):
        streamed.partial_fit(part.astype(np.float64))
    a = MahalanobisScorer(shrinkage="ledoit_wolf").partial_fit(x[:300])
    b = MahalanobisScorer(shrinkage="ledoit_wolf").partial_fit(x[300:] )  # a different shift
    a.merge(b).merge(MahalanobisScorer())  # merging an empty scorer changes nothing
    for other in (streamed, a):
        assert other.n_samples_ == 999
        np.testing.assert_allclose(other.mean_.numpy(), full.mean_.numpy(), rtol=1e-13)
        np.testing.assert_allclose(other.covariance_.numpy(), full.covariance_.numpy(), rtol=1e-9, atol=1e-12)
        assert other.shrinkage_ == pytest.approx(full.shrinkage_, rel=1e-9)
    empty = MahalanobisScorer(shrinkage="ledoit_wolf").merge(a)
    np.testing.assert_allclose(empty.covariance_.numpy(), full.covariance_.numpy(), rtol=1e-9, atol=1e-12)


def test_save_load_round_trip(tmp_path):
    x = _data(300, 7)
    scorer = MahalanobisScorer(shrinkage="ledoit_wolf", eps=1e-4).fit(torch.tensor(x, dtype=torch.float32))
    path = str(tmp_path / "scorer.safetensors")
    scorer.save(path)
    loaded = MahalanobisScorer.load(path)
    assert (loaded.shrinkage, loaded.eps, loaded.dim, loaded.n_samples_) == ("ledoit_wolf", 1e-4, 7, 300)
    q = torch.tensor(_data(20, 7, seed=5), dtype=torch.float32)
    torch.testing.assert_close(loaded.distance(q), scorer.distance(q))
    # a loaded scorer keeps streaming
    loaded.partial_fit(x[:10])
    assert loaded.n_samples_ == 310
    with pytest.raises(ValueError, match="path"):
        MahalanobisScorer.load(str(tmp_path / "missing.safetensors"))


_GLOO_WORKER = """
import sys
import numpy as np
import torch
import torch.distributed as dist
from inform_fast.detect import MahalanobisScorer

rank, store_path, data_path, result_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
try:
    data = np.load(data_path)
    chunk = data[:100] if rank == 0 else data[100:]  # uneven shares, different local shifts
    scorer = MahalanobisScorer(shrinkage="ledoit_wolf").partial_fit(torch.tensor(chunk))
    scorer.all_reduce()
    if rank == 1:
        torch.save({"cov": scorer.covariance_, "mean": scorer.mean_, "n": scorer.n_samples_,
                    "shrink": scorer.shrinkage_}, result_path)
finally:
    dist.destroy_process_group()
"""


def test_all_reduce_equals_single_process_fit(tmp_path):
    # ranks are plain subprocesses: test modules imported in importlib mode cannot be spawned by name
    import subprocess
    import sys

    data = _data(350, 9, offset=20.0)
    np.save(tmp_path / "data.npy", data)
    script = tmp_path / "worker.py"
    script.write_text(_GLOO_WORKER)
    result_path = str(tmp_path / "result.pt")
    args = [str(tmp_path / "store"), str(tmp_path / "data.npy"), result_path]
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), *args], stderr=subprocess.PIPE, text=True) for rank in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    got = torch.load(result_path)
    full = MahalanobisScorer(shrinkage="ledoit_wolf").fit(torch.tensor(data))
    assert got["n"] == 350
    np.testing.assert_allclose(got["mean"].numpy(), full.mean_.numpy(), rtol=1e-12)
    np.testing.assert_allclose(got["cov"].numpy(), full.covariance_.numpy(), rtol=1e-9, atol=1e-12)
    assert got["shrink"] == pytest.approx(full.shrinkage_, rel=1e-9)


def test_all_reduce_needs_distributed():
    with pytest.raises(ValueError, match="group"):
        MahalanobisScorer().partial_fit(_data(10, 2)).all_reduce()


def test_singular_covariance_says_shrinkage_fixes_it():
    few = _data(10, 20)
    with pytest.raises(ValueError, match="singular.*shrinkage='ledoit_wolf'"):
        MahalanobisScorer().fit(few)
    with pytest.raises(ValueError, match="reference_latents.*10 reference latents for 20 dimensions"):
        mop(_data(5, 20), few, pvalues="chi2")
    with pytest.raises(ValueError, match="reference_latents.*5 reference latents for 20 dimensions"):
        mop(_data(5, 20), few)  # empirical p-values fit on half of the reference
    constant = _data(100, 5)
    constant[:, 3] = 1.25
    with pytest.raises(ValueError, match=r"dimension\(s\) \[3\] are constant.*shrinkage"):
        MahalanobisScorer().fit(constant)
    # shrinkage fixes both
    for x in (few, constant):
        d = MahalanobisScorer(shrinkage="ledoit_wolf").fit(x).distance(x)
        assert torch.isfinite(d).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shrinkage="oas"), "shrinkage"),
        (dict(shrinkage=1.5), "shrinkage"),
        (dict(eps=-1.0), "eps"),
        (dict(precision="fp16"), "precision"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MahalanobisScorer(**kwargs)


def test_bad_input():
    x = _data(50, 4)
    scorer = MahalanobisScorer().fit(x)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="x: contains 1 NaN/Inf"):
        MahalanobisScorer().fit(bad)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="rlhf_latents: contains"):
        mop(bad, x)
    with pytest.raises(ValueError, match="x: is empty"):
        MahalanobisScorer().fit(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="dimension 5 does not match"):
        scorer.distance(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="rlhf_latents: latent dimension"):
        mop(np.zeros((3, 5)), x)
    with pytest.raises(ValueError, match="no reference latents"):
        MahalanobisScorer().distance(x)
    with pytest.raises(ValueError, match="at least 2"):
        MahalanobisScorer().fit(x[:1])
    with pytest.raises(ValueError, match="other"):
        scorer.merge(MahalanobisScorer().partial_fit(np.ones((3, 2))))
    for alpha in (0.0, 1.0, -0.1, 2):
        with pytest.raises(ValueError, match="alpha"):
            mop(x, x, alpha=alpha)


def test_mop_score_and_reuse():
    reference = _data(800, 6)
    rlhf = np.concatenate([_data(150, 6, seed=3), _data(50, 6, seed=4) + 6.0])
    result = mop(rlhf, reference, alpha=0.05, eps=0.0, pvalues="chi2")
    d2 = _numpy_d2(reference, rlhf)
    p = scipy.stats.chi2.sf(d2, 6)
    np.testing.assert_allclose(result.pvalues.numpy(), p, rtol=1e-5, atol=1e-12)
    assert result.score == pytest.approx(np.mean(p < 0.05))
    assert result.n_outliers >= 50 and result.alpha == 0.05
    again = mop(rlhf, alpha=0.05, scorer=result.scorer, pvalues="chi2")
    assert again.score == result.score
    summary = result.summary()
    assert summary["n_reference"] == 800 and summary["latent_dim"] == 6


def test_dispatch_registration():
    assert set(dispatch.registered("mahalanobis_sq")) >= {"reference", "triton"}
    assert dispatch.resolve("mahalanobis_sq", "cpu", "reference")[0] == "reference"


@requires_triton_interpreter()
@pytest.mark.parametrize("n, d", [(37, 5), (70, 19), (131, 40)])
def test_triton_kernel_matches_float64(n, d):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    reference = _data(4 * d + 50, d)
    scorer = MahalanobisScorer(precision="ieee").fit(reference)
    queries = torch.tensor(_data(n, d, seed=7) * 1.3, dtype=torch.float32)
    expected = _numpy_d2(reference, queries.double().numpy())
    got = scorer.distance(queries.to(kernel_test_device()), squared=True, backend="triton")
    assert got.dtype == torch.float32 and got.shape == (n,) and got.device.type == kernel_test_device()
    np.testing.assert_allclose(got.cpu().double().numpy(), expected, rtol=2e-5)


@requires_triton_interpreter()
def test_triton_kernel_bf16_and_strided_rows():
    reference = _data(200, 24)
    scorer = MahalanobisScorer(shrinkage="ledoit_wolf").fit(reference)
    device = kernel_test_device()
    wide = torch.tensor(_data(45, 48, seed=8), dtype=torch.float32)
    strided = wide[:, :24]  # row stride 48
    expected = scorer.distance(strided.double(), squared=True).numpy()
    got = scorer.distance(wide.to(device)[:, :24], squared=True, backend="triton")  # strided on the device too
    np.testing.assert_allclose(got.cpu().double().numpy(), expected, rtol=2e-5)
    low = strided.to(torch.bfloat16)
    expected = scorer.distance(low.double(), squared=True).numpy()
    got = scorer.distance(low.to(device), squared=True, backend="triton")
    np.testing.assert_allclose(got.cpu().double().numpy(), expected, rtol=2e-5)
    assert scorer.distance(torch.zeros(0, 24, device=device), backend="triton").shape == (0,)


def test_ibl_penalty_single_and_gradient():
    reference = _data(300, 5)
    scorer = MahalanobisScorer(eps=0.0).fit(reference)
    latents = torch.tensor(_data(12, 5, seed=3), dtype=torch.float32)
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(0)).requires_grad_()
    out = ibl_penalty(rewards, latents, scorer, coef=0.7)
    expected = rewards.detach().double().numpy() - 0.7 * np.sqrt(_numpy_d2(reference, latents.double().numpy()))
    np.testing.assert_allclose(out.detach().double().numpy(), expected, rtol=1e-5, atol=1e-5)  # float32 rewards
    assert out.dtype == rewards.dtype
    (out * torch.arange(12.0)).sum().backward()
    torch.testing.assert_close(rewards.grad, torch.arange(12.0))


@pytest.mark.parametrize("labels", ["strings", "ints", "tensor"])
def test_ibl_penalty_per_class(labels):
    refs = {"help": _data(300, 4, seed=1), "safe": _data(300, 4, seed=2, offset=-2.0)}
    scorers = {k: MahalanobisScorer(eps=0.0).fit(v) for k, v in refs.items()}
    coefs = {"help": 0.5, "safe": 2.0}
    names = ["help", "safe", "safe", "help", "safe"]
    latents = _data(5, 4, seed=9)
    rewards = torch.linspace(-1, 1, 5, dtype=torch.float64)
    if labels != "strings":
        scorers = {i: scorers[k] for i, k in enumerate(("help", "safe"))}
        coefs = {i: coefs[k] for i, k in enumerate(("help", "safe"))}
        codes = [0 if k == "help" else 1 for k in names]
        classes = codes if labels == "ints" else torch.tensor(codes)
    else:
        classes = names
    out = ibl_penalty(rewards, latents, scorers, coefs, classes=classes)
    for i, k in enumerate(names):
        d = np.sqrt(_numpy_d2(refs[k], latents[i : i + 1]))[0]
        assert out[i].item() == pytest.approx(rewards[i].item() - (0.5 if k == "help" else 2.0) * d, rel=1e-9)
    # one scorer, per-class coefficients
    single = ibl_penalty(rewards, latents, scorers[list(scorers)[0]], coefs, classes=classes)
    assert torch.isfinite(single).all()


def test_ibl_penalty_bad_input():
    scorer = MahalanobisScorer().fit(_data(100, 3))
    rewards = torch.zeros(4)
    latents = _data(4, 3)
    with pytest.raises(ValueError, match="classes"):
        ibl_penalty(rewards, latents, {"a": scorer}, 1.0)
    with pytest.raises(ValueError, match="classes: no scorer"):
        ibl_penalty(rewards, latents, {"a": scorer}, 1.0, classes=["a", "b", "a", "a"])
    with pytest.raises(ValueError, match="coef"):
        ibl_penalty(rewards, latents, scorer, -1.0)
    with pytest.raises(ValueError, match="latents"):
        ibl_penalty(rewards, latents[:3], scorer, 1.0)
    with pytest.raises(ValueError, match="rewards"):
        ibl_penalty(rewards[None], latents, scorer, 1.0)
    with pytest.raises(ValueError, match="classes"):
        ibl_penalty(rewards, latents, {"a": scorer}, 1.0, classes=["a"] * 3)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_tensor_found_from_the_result(value):
    # tensors skip the [n, L] input pass; a bad entry is found through its row's d2
    scorer = MahalanobisScorer().fit(_data(100, 6))
    x = torch.tensor(_data(20, 6, seed=4), dtype=torch.float32)
    x[7, 5] = value
    with pytest.raises(ValueError, match=r"queries: contains 1 NaN/Inf value\(s\), first at index \(7, 5\)"):
        scorer.distance(x, name="queries")
    with pytest.raises(ValueError, match="rlhf_latents: contains"):
        mop(x, scorer=scorer, pvalues="chi2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernel_and_device_labels():
    reference = _data(2000, 128)
    scorer = MahalanobisScorer(precision="ieee").fit(reference)
    queries = torch.tensor(_data(1000, 128, seed=3), dtype=torch.float32, device="cuda")
    expected = _numpy_d2(reference, queries.double().cpu().numpy())
    np.testing.assert_allclose(scorer.distance(queries, squared=True).double().cpu().numpy(), expected, rtol=1e-4)
    scorer.precision = "tf32"
    np.testing.assert_allclose(scorer.distance(queries, squared=True).double().cpu().numpy(), expected, rtol=1e-2)
    other = MahalanobisScorer().fit(reference[:1000] + 1.0)
    labels = torch.arange(1000, device="cuda") % 2
    rewards = torch.zeros(1000, device="cuda")
    out = ibl_penalty(rewards, queries, {0: scorer, 1: other}, {0: 1.0, 1: 2.0}, classes=labels)
    host = ibl_penalty(rewards.cpu(), queries.cpu(), {0: scorer, 1: other}, {0: 1.0, 1: 2.0}, classes=labels.cpu())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), host, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("offset", [0.0, 10.0, 1e3])  # folded mean (near origin), near the fold limit, subtracted first
def test_float32_accuracy_with_a_mean_far_from_the_origin(offset):
    reference = _data(3000, 16, offset=offset).astype(np.float32)
    queries = _data(500, 16, seed=6, offset=offset).astype(np.float32)
    scorer = MahalanobisScorer(eps=0.0).fit(torch.from_numpy(reference))
    expected = _numpy_d2(reference.astype(np.float64), queries.astype(np.float64))
    got = scorer.distance(torch.from_numpy(queries), squared=True).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-3)
