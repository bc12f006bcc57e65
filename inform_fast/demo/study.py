"""Best-of-n statistics and detection scores of the demo (NumPy / PyTorch, no plotting).

Best-of-n (Gao et al. 2023, appendix): for a pool of N candidates sorted ascending by the proxy
reward, the max-of-n of a uniformly drawn n-subset is the i-th candidate (1-based) with
probability C(i-1, n-1) / C(N, n); the expected gold (or proxy) of the best-of-n policy is the
weighted sum of the sorted values, computed here in log space with ``gammaln``. The KL of the
best-of-n policy from the base policy is log n - (n-1)/n.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy.special import gammaln

from inform_fast.detect.mahalanobis import spectrum_shape


def best_of_n_kl(n) -> np.ndarray:
    """KL(best-of-n || base) = log n - (n - 1) / n, elementwise for n >= 1."""
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 1):
        raise ValueError(f"n: expected values >= 1, got {n.min()}")
    return np.log(n) - (n - 1.0) / n


def best_of_n_weights(pool_size: int, n: int) -> np.ndarray:
    """[N] probabilities that the max-of-n of an n-subset (without replacement) is the i-th
    smallest candidate: C(i-1, n-1) / C(N, n), zero for i < n. Sums to 1."""
    if not (1 <= n <= pool_size):
        raise ValueError(f"n: expected 1 <= n <= pool size {pool_size}, got {n}")
    i = np.arange(1, pool_size + 1, dtype=np.float64)
    weights = np.zeros(pool_size)
    ok = i >= n
    k = i[ok]
    log_num = gammaln(k) - gammaln(n) - gammaln(k - n + 1)  # log C(i-1, n-1)
    log_den = gammaln(pool_size + 1) - gammaln(n + 1) - gammaln(pool_size - n + 1)  # log C(N, n)
    weights[ok] = np.exp(log_num - log_den)
    return weights


def best_of_n_expectation(proxy: np.ndarray, values: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """Unbiased best-of-n estimate of E[value of the proxy's pick] for each n.

    proxy, values: [N] (one prompt's pool). Ties in the proxy are broken by position (stable
    sort), as an argmax over a random subset would break them by a random order on average.
    Returns [len(ns)] float64.
    """
    proxy = np.asarray(proxy, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if proxy.shape != values.shape or proxy.ndim != 1:
        raise ValueError(f"values: expected the shape of proxy {proxy.shape}, got {values.shape}")
    ordered = values[np.argsort(proxy, kind="stable")]
    return np.array([best_of_n_weights(proxy.shape[0], int(n)) @ ordered for n in ns])


def sample_best_of_n(rng: np.random.Generator, proxies: Sequence[np.ndarray], n: int, draws: int) -> np.ndarray:
    """Monte-Carlo best-of-n picks from one pool: ``draws`` random n-subsets (without
    replacement), the same subsets for every proxy (common random numbers).

    proxies: sequence of [N] proxy scores. Returns [len(proxies), draws] int64 pool indices.
    """
    size = proxies[0].shape[0]
    if not (1 <= n <= size):
        raise ValueError(f"n: expected 1 <= n <= pool size {size}, got {n}")
    keys = rng.random((draws, size))
    # the n smallest keys of a row are a uniform n-subset
    members = np.argpartition(keys, n - 1, axis=1)[:, :n] if n < size else np.tile(np.arange(size), (draws, 1))
    picks = []
    for proxy in proxies:
        scores = proxy[members]  # [draws, n]
        picks.append(members[np.arange(draws), scores.argmax(axis=1)])
    return np.stack(picks)


def auroc(scores: np.ndarray, positive: np.ndarray) -> Optional[float]:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive`` (rank formula,
    ties get the average rank): (sum of positive ranks - P (P + 1) / 2) / (P * Q). None when one
    class is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.size)
    sorted_scores = scores[order]
    # average rank over each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = 0.5 * (start + 1 + end)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pick_profile(distance: np.ndarray, reward_z: np.ndarray, hacked: np.ndarray, knn_distance: Optional[np.ndarray] = None) -> dict:
    """What hacked and other best-of-n picks look like to the detector: the mean Mahalanobis
    distance to the reference fit (and, when given, the mean k-NN distance) and the mean InfoRM
    reward (in reference standard deviations) of each group, the share of hacked picks, and the
    correlation of distance with |reward z| over all picks. distance, reward_z, knn_distance: [P]
    float; hacked: [P] bool. Group means are None for an empty group."""
    distance = np.asarray(distance, dtype=np.float64)
    reward_z = np.asarray(reward_z, dtype=np.float64)
    hacked = np.asarray(hacked, dtype=bool)
    if not distance.shape == reward_z.shape == hacked.shape or distance.ndim != 1 or distance.size < 2:
        raise ValueError(f"distance / reward_z / hacked: expected three [P] arrays, P >= 2, got "
                         f"{distance.shape}, {reward_z.shape}, {hacked.shape}")

    def mean(values, where):
        return float(values[where].mean()) if where.any() else None

    out = {
        "hacked_share": float(hacked.mean()),
        "hacked_distance": mean(distance, hacked), "other_distance": mean(distance, ~hacked),
        "hacked_reward_z": mean(reward_z, hacked), "other_reward_z": mean(reward_z, ~hacked),
        "corr_distance_abs_reward_z": float(np.corrcoef(distance, np.abs(reward_z))[0, 1]),
    }
    if knn_distance is not None:
        knn = np.asarray(knn_distance, dtype=np.float64)
        if knn.shape != distance.shape:
            raise ValueError(f"knn_distance: expected shape {distance.shape}, got {knn.shape}")
        out.update(hacked_knn_distance=mean(knn, hacked), other_knn_distance=mean(knn, ~hacked))
    return out


def latent_spectrum(reference: np.ndarray, reward_direction: Optional[np.ndarray] = None) -> dict:
    """How many directions the reference latents really use.

    reference: [m, L] latents; reward_direction: [L] decoder weight of a linear decoder (or None).
    Returns the covariance eigenvalues (float64, descending), the participation ratio
    (sum lambda)^2 / sum lambda^2 (1 when all the variance lies on one direction, L when it is spread
    evenly), the top direction's share of the variance and, with ``reward_direction``, the |cosine|
    between the top direction and it (``MahalanobisScorer.spectrum`` gives the same from a fit; the
    demo also needs the top eigenvector)."""
    x = np.asarray(reference, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"reference: expected [m >= 2, L] latents, got shape {x.shape}")
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]))
    values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]
    out = {"eigenvalues": values.tolist(), **spectrum_shape(values.copy()), "top_cos_reward": None}
    if reward_direction is not None:
        w = np.asarray(reward_direction, dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(w))
        if norm > 0:
            out["top_cos_reward"] = float(abs(vectors[:, 0] @ w) / norm)
    return out


def log_grid(max_n: int, points_per_octave: int = 1) -> list:
    """1, 2, 4, ... up to max_n (max_n included), with ``points_per_octave`` points per doubling."""
    if max_n < 1:
        raise ValueError(f"max_n: expected >= 1, got {max_n}")
    steps = int(math.floor(math.log2(max_n) * points_per_octave + 1e-9))
    grid = sorted({int(round(2 ** (k / points_per_octave))) for k in range(steps + 1)} | {int(max_n)})
    return grid
