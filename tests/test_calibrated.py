"""Calibrated scores: conformal p-values, the k-NN score, KOP, and MOP's empirical p-values."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from inform_fast.detect.calibrated import (
    CalibratedScorer,
    EmpiricalPValues,
    KNNScorer,
    kop,
    knn_scores,
    split_reference,
)
from inform_fast.detect.mahalanobis import MahalanobisScorer
from inform_fast.detect.mop import mop


def collapsed_latents(n: int, dim: int = 24, seed: int = 0, duplicates: bool = True) -> np.ndarray:
    """Latents shaped like InfoRM's on real text: most variance on one skewed direction (the
    reward), heavy-tailed small noise on the others, a few exact duplicates."""
    rng = np.random.default_rng(seed)
    direction = np.zeros(dim)
    direction[0] = 1.0
    along = rng.gamma(2.0, 1.5, size=n) - 3.0  # skewed
    noise = 0.05 * rng.standard_t(3, size=(n, dim))
    x = along[:, None] * direction[None, :] + noise
    if duplicates:
        x[n // 2 : n // 2 + n // 50] = x[0]  # 2% duplicates of one response
    return x.astype(np.float32)


def test_empirical_pvalues_match_the_definition():
    rng = np.random.default_rng(1)
    calibration = np.round(rng.normal(size=301), 1)  # ties on purpose
    scores = np.concatenate([np.round(rng.normal(size=97), 1), calibration[:5], [-100.0, 100.0]])
    p = EmpiricalPValues(torch.tensor(calibration)).pvalues(torch.tensor(scores, dtype=torch.float32))
    expected = (1 + (calibration[None, :] >= scores.astype(np.float32).astype(np.float64)[:, None]).sum(1)) / (1 + 301)
    np.testing.assert_allclose(p.numpy(), expected, rtol=0, atol=1e-15)
    assert p.dtype == torch.float64
    assert float(p.max()) == 1.0 and float(p.min()) == pytest.approx(1 / 302)


def test_empirical_pvalues_merge_and_bad_input():
    a, b = EmpiricalPValues(torch.tensor([3.0, 1.0])), EmpiricalPValues(torch.tensor([2.0]))
    assert a.merge(b).sorted_scores.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="calibration_scores: is empty"):
        EmpiricalPValues(torch.zeros(0))
    with pytest.raises(ValueError, match="calibration_scores: contains NaN"):
        EmpiricalPValues(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        EmpiricalPValues(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"alpha: 0.01 is below the smallest empirical p-value 1/\(1 \+ 3\)"):
        a.check_alpha(0.01)


def test_split_reference_is_seeded_disjoint_and_complete():
    x = torch.arange(101, dtype=torch.float32)[:, None].repeat(1, 3)
    fit, cal = split_reference(x, 0.3, seed=4)
    assert cal.shape[0] == 30 and fit.shape[0] == 71
    values = sorted(fit[:, 0].tolist() + cal[:, 0].tolist())
    assert values == list(range(101))
    again_fit, _ = split_reference(x, 0.3, seed=4)
    assert torch.equal(fit, again_fit)
    other, _ = split_reference(x, 0.3, seed=5)
    assert not torch.equal(fit, other)
    for bad in (0.0, 1.0, "0.5", True, float("nan")):
        with pytest.raises(ValueError, match="calibration_fraction"):
            split_reference(x, bad)
    with pytest.raises(ValueError, match="at least 2 reference latents"):
        split_reference(x[:1], 0.5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalize", [None, "l2", "standardize"])
def test_knn_scores_match_scikit_learn(dtype, normalize):
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(613, 9)) * np.linspace(0.1, 3.0, 9) + 4.0
    rlhf = rng.normal(size=(157, 9)) * 2.0 + 4.0
    ref_t, rlhf_t = reference, rlhf
    if normalize == "l2":
        ref_t = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        rlhf_t = rlhf / np.linalg.norm(rlhf, axis=1, keepdims=True)
    elif normalize == "standardize":
        scale = reference.std(axis=0)
        ref_t, rlhf_t = reference / scale, rlhf / scale
    expected = NearestNeighbors(n_neighbors=10).fit(ref_t).kneighbors(rlhf_t)[0][:, -1]
    got = knn_scores(torch.tensor(rlhf, dtype=dtype), torch.tensor(reference, dtype=dtype), k=10, normalize=normalize)
    assert got.shape == (157,) and got.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=tol, atol=tol)


def test_knn_scores_bad_input():
    x = np.zeros((20, 3), np.float32)
    with pytest.raises(ValueError, match="reference_latents: 5 latents for k = 10"):
        knn_scores(x, x[:5], k=10)
    with pytest.raises(ValueError, match="k:"):
        knn_scores(x, x, k=0)
    with pytest.raises(ValueError, match="normalize"):
        knn_scores(x, x, normalize="whiten")
    with pytest.raises(ValueError, match="reference_latents: latent dimension"):
        knn_scores(x, np.zeros((20, 4)))
    bad = x.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="rlhf_latents: contains 1 NaN/Inf"):
        knn_scores(bad, x)
    with pytest.raises(ValueError, match="not fitted"):
        KNNScorer().distance(x)


def test_kop_and_mop_empirical_follow_their_definition():
    reference = collapsed_latents(1200, seed=2)
    rlhf = np.concatenate([collapsed_latents(300, seed=3), collapsed_latents(60, seed=4) + 0.6])
    result = kop(rlhf, reference, alpha=0.05, k=7, calibration_fraction=0.4, seed=11)
    fit, cal = split_reference(torch.tensor(reference), 0.4, seed=11)
    nn = NearestNeighbors(n_neighbors=7).fit(fit.numpy())
    cal_scores = nn.kneighbors(cal.numpy())[0][:, -1]
    scores = nn.kneighbors(rlhf)[0][:, -1]
    p = (1 + (cal_scores[None, :] >= scores.astype(np.float32)[:, None]).sum(1)) / (1 + len(cal_scores))
    np.testing.assert_allclose(result.pvalues.numpy(), p, rtol=0, atol=1e-12)
    assert result.score == pytest.approx(np.mean(p <= 0.05))
    assert result.n_outliers == int(np.sum(p <= 0.05)) and result.summary()["n_calibration"] == 480
    again = kop(rlhf, alpha=0.05, calibrated=result.calibrated)
    assert again.score == result.score

    outcome = mop(rlhf, reference, alpha=0.05, shrinkage="ledoit_wolf", calibration_fraction=0.4, seed=11)
    scorer = MahalanobisScorer(shrinkage="ledoit_wolf").fit(fit)
    cal_d = scorer.distance(cal).double().numpy()
    d = scorer.distance(torch.tensor(rlhf)).double().numpy()
    p = (1 + (cal_d[None, :] >= d[:, None]).sum(1)) / (1 + len(cal_d))
    np.testing.assert_allclose(outcome.pvalues.numpy(), p, rtol=0, atol=1e-12)
    assert outcome.pvalue_method == "empirical" and outcome.summary()["pvalue_method"] == "empirical"
    assert mop(rlhf, alpha=0.05, calibrated=outcome.calibrated).score == outcome.score


def test_false_alarm_rate_is_alpha_on_non_gaussian_latents():
    # the reason for empirical p-values: on collapsed, skewed, heavy-tailed latents the chi-square
    # MOP flags far more than alpha of clean responses; the conformal ones flag alpha
    rates = {"mop_empirical": [], "kop": [], "mop_chi2": []}
    for seed in range(12):
        reference = collapsed_latents(1000, seed=100 + seed)
        clean = collapsed_latents(1000, seed=200 + seed)
        rates["mop_empirical"].append(mop(clean, reference, alpha=0.05, shrinkage="ledoit_wolf", seed=seed).score)
        rates["kop"].append(kop(clean, reference, alpha=0.05, seed=seed).score)
        rates["mop_chi2"].append(mop(clean, reference, alpha=0.05, shrinkage="ledoit_wolf", pvalues="chi2").score)
    mean = {name: float(np.mean(values)) for name, values in rates.items()}
    # 12 x 1000 responses: the standard error of the mean rate is about 0.006 (more with the
    # calibration set's own randomness); conformal guarantees alpha - 1/(1 + 500) <= E <= alpha
    assert 0.035 <= mean["mop_empirical"] <= 0.065, mean
    assert 0.035 <= mean["kop"] <= 0.065, mean
    assert mean["mop_chi2"] > 0.1, mean  # the Gaussian assumption is what fails


def test_outliers_are_found():
    reference = collapsed_latents(1000, seed=5)
    shifted = collapsed_latents(200, seed=6)
    shifted[:, 3] += 1.5  # off the reference's support in a squeezed direction (~17 of its std)
    assert mop(shifted, reference, alpha=0.01).score > 0.9
    assert mop(shifted, reference, alpha=0.01, shrinkage="ledoit_wolf").score > 0.9
    assert kop(shifted, reference, alpha=0.01, normalize="standardize").score > 0.9
    # the plain Euclidean k-NN distance is dominated by the wide direction (std 2.1): this shift
    # is within its reach; one beyond it is not
    assert kop(shifted, reference, alpha=0.01).score < 0.2
    shifted[:, 3] += 1.5
    assert kop(shifted, reference, alpha=0.01).score > 0.9


def test_mop_and_kop_argument_errors():
    reference = collapsed_latents(400, seed=1)
    with pytest.raises(ValueError, match="pvalues"):
        mop(reference, reference, pvalues="gaussian")
    scorer = MahalanobisScorer(shrinkage=0.1).fit(reference)
    with pytest.raises(ValueError, match="scorer: a fitted MahalanobisScorer gives chi-square p-values"):
        mop(reference, scorer=scorer)
    result = kop(reference, reference, alpha=0.05)
    with pytest.raises(ValueError, match="calibrated: expected the CalibratedScorer of an earlier mop"):
        mop(reference, calibrated=result.calibrated)
    with pytest.raises(ValueError, match="calibrated: holds empirical p-values"):
        mop(reference, pvalues="chi2", scorer=scorer, calibrated=mop(reference, reference, shrinkage=0.1).calibrated)
    with pytest.raises(ValueError, match=r"alpha: 0.001 is below the smallest empirical p-value 1/\(1 \+ 200\)"):
        kop(reference, reference, alpha=0.001)
    with pytest.raises(ValueError, match="alpha"):
        kop(reference, reference, alpha=1.5)
    assert kop(reference, reference, alpha=np.float32(0.05)).alpha == pytest.approx(0.05)  # NumPy scalars are fine
    with pytest.raises(ValueError, match="reference_latents: required"):
        kop(reference)


def test_public_names_are_functions():
    import importlib

    import inform_fast
    from inform_fast import detect

    for module in ("dbscan", "icds", "mop", "calibrated", "monitor"):
        importlib.import_module(f"inform_fast.detect.{module}")  # the shadowing happened after these
    from inform_fast import dbscan, icds, mop as mop_function

    assert all(callable(f) and not isinstance(f, type(inform_fast)) for f in (dbscan, icds, mop_function))
    assert detect.mop is mop and detect.icds is icds

    assert callable(inform_fast.knn_scores) and callable(inform_fast.kop)
    assert detect.KNNScorer is KNNScorer and detect.EmpiricalPValues is EmpiricalPValues
    assert isinstance(CalibratedScorer.fit(KNNScorer(k=3), collapsed_latents(50)), CalibratedScorer)


def test_rank_shift_is_the_mann_whitney_auroc_and_calibrated():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(3)
    calibration = np.round(rng.normal(size=401), 1)  # ties
    scores = np.round(rng.normal(0.3, 1.0, size=157), 1)
    shift, z = EmpiricalPValues(torch.tensor(calibration)).rank_shift(torch.tensor(scores))
    u = mannwhitneyu(scores, calibration, alternative="greater").statistic
    assert shift == pytest.approx(u / (157 * 401), abs=1e-12) and z > 2
    # under no change the z statistic is standard normal
    zs = []
    for seed in range(300):
        g = np.random.default_rng(seed)
        zs.append(EmpiricalPValues(torch.tensor(g.standard_t(3, size=200))).rank_shift(torch.tensor(g.standard_t(3, size=150)))[1])
    assert abs(np.mean(zs)) < 0.2 and 0.85 < np.std(zs) < 1.15


def test_shift_rises_with_the_hacked_fraction():
    # a shift too small to push responses past alpha still moves the rank statistic, in step
    reference = collapsed_latents(1000, seed=8)
    fitted = kop(collapsed_latents(10, seed=9), reference, alpha=0.05).calibrated
    shifts = []
    for fraction in (0.0, 0.05, 0.2, 0.5):
        rlhf = collapsed_latents(2000, seed=10)
        rlhf[: int(fraction * 2000), 0] += 1.0
        shifts.append(kop(rlhf, alpha=0.05, calibrated=fitted).shift)
    assert abs(shifts[0] - 0.5) < 0.03 and all(b > a for a, b in zip(shifts, shifts[1:])), shifts


def test_cli_kop_and_mop_pvalues(tmp_path, capsys):
    import json

    from inform_fast.cli import main

    reference = collapsed_latents(800, seed=20)
    rlhf = collapsed_latents(300, seed=21)
    rlhf[:100, 2] += 3.0
    np.save(tmp_path / "ref.npy", reference)
    np.save(tmp_path / "rlhf.npy", rlhf)
    out = tmp_path / "kop.json"
    assert main(["kop", "--rlhf", str(tmp_path / "rlhf.npy"), "--reference", str(tmp_path / "ref.npy"),
                 "--alpha", "0.05", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    expected = kop(rlhf, reference, alpha=0.05)
    assert saved["kop"] == pytest.approx(expected.score) and saved["shift"] == pytest.approx(expected.shift)
    assert "KOP = " in printed and "shift" in printed and saved["n_outliers"] == expected.n_outliers
    for pvalues in ("empirical", "chi2"):
        out = tmp_path / f"mop-{pvalues}.json"
        assert main(["mop", "--rlhf", str(tmp_path / "rlhf.npy"), "--reference", str(tmp_path / "ref.npy"), "--alpha", "0.05",
                     "--pvalues", pvalues, "--output", str(out)]) == 0
        saved = json.loads(out.read_text())  # valid JSON: no NaN for the chi-square run's missing shift
        assert saved["mop"] == pytest.approx(mop(rlhf, reference, alpha=0.05, pvalues=pvalues).score)
        assert saved["pvalue_method"] == pvalues and (saved["shift"] is None) == (pvalues == "chi2")
    # an alpha no empirical p-value can reach is refused in one line, nothing written
    out = tmp_path / "refused.json"
    assert main(["kop", "--rlhf", str(tmp_path / "rlhf.npy"), "--reference", str(tmp_path / "ref.npy"),
                 "--alpha", "0.001", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "smallest empirical p-value" in err and not out.exists()
