"""Excess ICDS: the local over-representation test and the clusters it finds."""
import numpy as np
import pytest
import torch
from scipy.stats import binom

from inform_fast.detect.excess import _counts_by_two_searches, excess_icds, local_excess_neighbours, local_excess_pvalues


def latents(n: int, seed: int, dim: int = 16) -> np.ndarray:
    """Anisotropic, skewed latents (most variance on one direction, as InfoRM's)."""
    rng = np.random.default_rng(seed)
    x = 0.1 * rng.standard_t(4, size=(n, dim))
    x[:, 0] = rng.gamma(2.0, 1.0, size=n)
    return x.astype(np.float32)


def test_local_pvalues_follow_the_definition():
    rlhf, reference = torch.tensor(latents(83, 1), dtype=torch.float64), torch.tensor(latents(131, 2), dtype=torch.float64)
    k = 7
    pvalues, radius = local_excess_pvalues(rlhf, reference, k)
    d_rr = torch.cdist(rlhf, rlhf)
    d_rs = torch.cdist(rlhf, reference)
    for i in range(83):
        own = torch.cat([d_rr[i, :i], d_rr[i, i + 1:]])
        merged = torch.sort(torch.cat([own, d_rs[i]])).values
        r = merged[k - 1]
        a, b = int((own <= r).sum()), int((d_rs[i] <= r).sum())
        assert float(radius[i]) == pytest.approx(float(r), abs=1e-12)
        expected = binom.sf(a - 1, a + b, 82 / (82 + 131))
        assert float(pvalues[i]) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("n, m", [(37, 29), (400, 8300)])
def test_union_search_equals_two_searches(backend, n, m):
    # one search over policy + reference (k + 2 neighbours) must give the counts and radii of the
    # two searches, also where ties sit at the radius: duplicated rows on both sides, lattice
    # points at equal distances, and both sizes (direct and tree-pruned search paths)
    rng = np.random.default_rng(n)
    k = 6
    rlhf = latents(n, 5)
    reference = latents(m, 6)
    rlhf[: n // 4] = rlhf[0]  # a collapsed policy: many copies of one row
    reference[: m // 10] = rlhf[1]  # reference copies of a policy row
    lattice = rng.integers(0, 3, size=(n // 5, rlhf.shape[1])).astype(np.float32)
    rlhf[n // 4 : n // 4 + lattice.shape[0]] = lattice
    reference[m // 10 : m // 10 + lattice.shape[0]] = lattice[::-1]
    x, y = torch.from_numpy(rlhf), torch.from_numpy(reference)
    a, b, radius = local_excess_neighbours(x, y, k, backend=backend)
    a2, b2, radius2 = _counts_by_two_searches(x, x, y, k, backend)
    assert torch.equal(a, a2) and torch.equal(b, b2) and torch.equal(radius, radius2)


def test_duplicates_on_both_sides_are_not_excess():
    # exact ties must not favour the policy's own rows (they come first in a naive merge)
    base = latents(50, 3)
    rlhf = np.repeat(base, 4, axis=0)
    reference = np.repeat(base, 6, axis=0)
    pvalues, _ = local_excess_pvalues(torch.tensor(rlhf), torch.tensor(reference), 10)
    assert float(pvalues.min()) > 0.01


def test_zero_on_clean_data_and_rising_with_a_repeated_hack():
    reference = latents(1000, 4)
    results = []
    for fraction in (0.0, 0.05, 0.2, 0.5):
        rlhf = latents(600, 5)
        hacked = int(fraction * 600)
        # a hack inside the reference's support: many responses go to one ordinary place
        rlhf[:hacked] = reference[17] + 0.02 * np.random.default_rng(6).standard_normal((hacked, 16)).astype(np.float32)
        results.append(excess_icds(rlhf, reference))
    assert results[0].score == 0.0 and results[0].n_clusters == 0 and results[0].n_excess <= 3
    fractions = [r.excess_fraction for r in results]
    assert all(b > a for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[1] >= 0.04 and fractions[-1] >= 0.45
    last = results[-1]
    assert last.n_clusters == 1 and int(last.cluster_sizes[0]) >= 270
    assert bool((last.labels[:300] == 0).all()) and last.summary()["n_clusters"] == 1
    # the paper's ICDS sees such an in-support concentration poorly: its centroid sits on a reference latent
    assert float(last.deviations[0]) < 0.2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_shapes_and_dtypes(dtype):
    rlhf, reference = torch.tensor(latents(120, 7), dtype=dtype), torch.tensor(latents(200, 8), dtype=dtype)
    result = excess_icds(rlhf, reference, k=5, level=0.5, min_samples=2)
    assert result.labels.shape == (120,) and result.pvalues.dtype == torch.float64
    assert result.n_excess == int((result.pvalues <= 0.5).sum()) and result.eps > 0
    assert result.cluster_sizes.numel() == result.deviations.numel() == result.centroids.shape[0]


def test_bad_input():
    x = latents(20, 9)
    with pytest.raises(ValueError, match="level"):
        excess_icds(x, x, level=0.0)
    with pytest.raises(ValueError, match="level"):
        excess_icds(x, x, level="0.1")
    with pytest.raises(ValueError, match="k:"):
        excess_icds(x, x, k=0)
    with pytest.raises(ValueError, match="eps"):
        excess_icds(x, x, eps="knee")
    with pytest.raises(ValueError, match="rlhf_latents: the local test needs at least 2"):
        excess_icds(x[:1], x)
    with pytest.raises(ValueError, match="reference_latents: latent dimension"):
        excess_icds(x, latents(20, 9, dim=8))
    bad = x.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="rlhf_latents: contains 1 NaN"):
        excess_icds(bad, x)


def test_cli_excess_variant(tmp_path, capsys):
    import json

    from inform_fast.cli import main

    reference, rlhf = latents(500, 10), latents(300, 11)
    rlhf[:90] = reference[3]
    np.save(tmp_path / "ref.npy", reference)
    np.save(tmp_path / "rlhf.npy", rlhf)
    out = tmp_path / "excess.json"
    assert main(["icds", "--variant", "excess", "--rlhf", str(tmp_path / "rlhf.npy"), "--reference", str(tmp_path / "ref.npy"),
                 "--output", str(out)]) == 0
    saved = json.loads(out.read_text())
    expected = excess_icds(rlhf, reference)
    assert saved["variant"] == "excess" and saved["excess_icds"] == pytest.approx(expected.score)
    assert "excess ICDS" in capsys.readouterr().out
    assert main(["icds", "--variant", "excess", "--include-noise", "--rlhf", str(tmp_path / "rlhf.npy"),
                 "--reference", str(tmp_path / "ref.npy")]) == 2


def test_pvalues_equal_the_binomial_tail_per_latent():
    """The binomial tails are evaluated once per distinct (a, a + b) and spread back: every
    latent's p-value must equal SciPy's tail at its own counts, ties (a + b > k) included."""
    from scipy.stats import binom

    from inform_fast.detect.excess import local_excess_neighbours, local_excess_pvalues

    gen = torch.Generator().manual_seed(5)
    policy = torch.randn(1201, 6, generator=gen)
    reference = torch.randn(997, 6, generator=gen)
    policy[:40] = policy[0]  # duplicated rows: ties at the radius
    reference[:7] = policy[0]
    k = 20
    a, b, _ = local_excess_neighbours(policy, reference, k)
    assert bool(((a + b) > k).any())  # the ties are exercised
    pvalues, _ = local_excess_pvalues(policy, reference, k)
    q = (policy.shape[0] - 1) / (policy.shape[0] - 1 + reference.shape[0])
    expected = binom.sf((a - 1).numpy(), (a + b).numpy(), q)
    assert pvalues.dtype == torch.float64
    assert np.array_equal(pvalues.numpy(), expected)
