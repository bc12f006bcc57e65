"""Excess ICDS: the paper's cluster deviation score over the regions where the policy's latents
are over-represented relative to the reference.

Why a variant: the paper's ICDS clusters all policy latents, so hacked responses that sit next to
normal ones join one big cluster and the score does not move (on real HH-RLHF text it stayed flat
from 0 to 50% hacked for every hack family, docs/detection.md). And a hack is often not an
outlier at all: a policy that collapses onto one answer puts many responses in a region that the
reference also visits, only far more often. What changes is the *share* of the region.

For each policy latent x (n of them) against the reference (m):

1. take its k nearest neighbours among the other policy latents and the reference latents; let
   ``r`` be the distance to the k-th of them, ``a`` the number of policy latents and ``b`` the
   number of reference latents within ``r`` (ties at ``r`` on both sides are counted, so
   duplicated rows cannot favour either set);
2. if the policy were the reference, each of those ``a + b`` neighbours would be a policy latent
   with probability ``q = (n - 1) / (n - 1 + m)``: the local p-value is the binomial tail
   ``P(Binomial(a + b, q) >= a)``;
3. the latents with p-value <= ``level`` are *excess* latents; DBSCAN (``min_samples``, ``eps``:
   the median of the r's, the policy's own neighbour spacing) groups them, isolated ones are noise;
4. ``score = sum_i |C_i| * d_i`` over those clusters (d_i: centroid to the nearest reference
   latent, as in the paper), ``normalized_score = score / n``, and ``excess_fraction``: the share
   of the n responses in such a cluster.

With ``level = 1e-3`` a policy drawn like the reference has about ``level * n`` excess latents,
scattered, so the score is 0 (measured: 0 in every setting at 0% hacked on real text); a hack
the policy repeats fills a cluster as soon as it is a few percent of the responses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from inform_fast.detect.inputs import as_latents
from inform_fast.validation import check_open_unit, check_positive_int


@dataclass
class ExcessICDSResult:
    """Result of ``excess_icds`` for n policy latents.

    score / normalized_score: ICDS over the clusters of excess latents (and / n).
    excess_fraction: share of the n latents that are excess latents in a cluster.
    labels [n] int64: cluster of each clustered excess latent, -1 otherwise.
    pvalues [n] float64: local over-representation p-value of each latent.
    cluster_sizes [c] int64, deviations [c] float32, centroids [c, L] float32.
    n_excess: latents with p-value <= level (clustered or not). eps, min_samples, k, level: used.
    """

    score: float
    normalized_score: float
    excess_fraction: float
    labels: torch.Tensor
    pvalues: torch.Tensor
    cluster_sizes: torch.Tensor
    deviations: torch.Tensor
    centroids: torch.Tensor
    n_excess: int
    eps: float
    min_samples: int
    k: int
    level: float

    @property
    def n_clusters(self) -> int:
        return int(self.cluster_sizes.numel())

    def summary(self) -> dict:
        """JSON-ready summary (no per-point arrays)."""
        return {
            "excess_icds": self.score, "normalized_score": self.normalized_score,
            "excess_fraction": self.excess_fraction, "n_clusters": self.n_clusters, "n_excess": self.n_excess,
            "n_rlhf": int(self.labels.numel()), "k": self.k, "level": self.level, "eps": self.eps,
            "min_samples": self.min_samples, "cluster_sizes": [int(v) for v in self.cluster_sizes.tolist()],
            "deviations": [float(v) for v in self.deviations.tolist()],
        }


def _count_within(own: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """[n] number of entries of each row of ``own`` [n, k] (sorted distances) at most ``radius``."""
    return (own <= radius[:, None]).sum(1)


def _counts_by_two_searches(queries: torch.Tensor, rlhf: torch.Tensor, reference: torch.Tensor, k: int, backend):
    """(a, b, radius) of step 1 for ``queries`` (rows of ``rlhf``): the k + 1 nearest policy
    latents (one of them the latent itself) and the k nearest references, each set searched
    apart, so that ties at the radius are counted on both sides."""
    from inform_fast.detect.neighbors import knn_distance_checked

    n, m = rlhf.shape[0], reference.shape[0]
    d_policy, _ = knn_distance_checked(queries, rlhf, min(k + 1, n), backend=backend)
    d_policy = d_policy[:, 1:]  # drop one zero: the latent itself (or an exact duplicate, the same thing)
    d_reference, _ = knn_distance_checked(queries, reference, min(k, m), backend=backend)
    merged = torch.sort(torch.cat([d_policy, d_reference], dim=1), dim=1).values
    radius = merged[:, min(k, merged.shape[1]) - 1]
    return _count_within(d_policy, radius), _count_within(d_reference, radius), radius


def local_excess_neighbours(rlhf: torch.Tensor, reference: torch.Tensor, k: int = 20, backend: Optional[str] = None):
    """(a [n], b [n], radius [n]) of step 1 of the module docstring for every policy latent.

    One search over the union of both sets for the k + 2 nearest (the latent itself, its k
    neighbours and one beyond): where the one beyond lies farther than the k-th, the k neighbours
    are exactly the latents within the radius and a, b are read off them. Where it does not (a tie
    at the radius: duplicated rows), those latents are searched in each set apart
    (``_counts_by_two_searches``), which counts ties on both sides. Both give the same a, b and
    radius; the union search visits about half the pairs of the two searches (one radius, at the
    union's density, instead of two)."""
    from inform_fast.detect.neighbors import knn_distance_checked

    n, m = rlhf.shape[0], reference.shape[0]
    if n + m < k + 2 or n < k + 1 or m < k:
        return _counts_by_two_searches(rlhf, rlhf, reference, k, backend)
    union = torch.cat([rlhf, reference])
    distance, index = knn_distance_checked(rlhf, union, k + 2, backend=backend)
    del union
    radius = distance[:, k].clone()
    a = (index[:, : k + 1] < n).sum(1) - 1  # the latent itself is among them: no tie beyond the radius
    b = k - a
    tied = torch.nonzero(distance[:, k + 1] <= radius).flatten()
    if tied.numel():
        a_tied, b_tied, radius_tied = _counts_by_two_searches(rlhf.index_select(0, tied), rlhf, reference, k, backend)
        a[tied], b[tied], radius[tied] = a_tied, b_tied, radius_tied
    return a, b, radius


def local_excess_pvalues(rlhf: torch.Tensor, reference: torch.Tensor, k: int = 20, backend: Optional[str] = None):
    """(pvalues [n] float64, radius [n]): the local over-representation test of each policy latent
    (steps 1-2 of the module docstring). ``rlhf`` [n, L] (n >= 2), ``reference`` [m, L], checked."""
    from scipy.stats import binom

    n, m = rlhf.shape[0], reference.shape[0]
    a, b, radius = local_excess_neighbours(rlhf, reference, k, backend=backend)
    q = (n - 1) / (n - 1 + m)
    # P(Binomial(a + b, q) >= a) = sf(a - 1), evaluated once per distinct (a, a + b): a + b is k
    # except at ties, so a few dozen values serve 10^6 latents (0.23 s per element-wise call there)
    pairs = torch.stack([a, a + b], dim=1).cpu().numpy()
    distinct, inverse = np.unique(pairs, axis=0, return_inverse=True)
    tail = binom.sf(distinct[:, 0] - 1, distinct[:, 1], q)
    pvalues = torch.from_numpy(np.asarray(tail, dtype=np.float64)[inverse.reshape(-1)])
    return pvalues.to(rlhf.device), radius


def excess_icds(
    rlhf_latents,
    reference_latents,
    k: int = 20,
    level: float = 1e-3,
    min_samples: int = 5,
    eps: Union[float, str] = "auto",
    backend: Optional[str] = None,
) -> ExcessICDSResult:
    """ICDS over the clusters of policy latents that are over-represented relative to the
    reference (see the module docstring).

    Args:
        rlhf_latents: [n, L] policy latents (n >= 2); reference_latents: [m, L] (m >= 1), same L
            and device. Tensors or arrays, any float dtype.
        k: neighbours in the local test (>= 1; 20 resolves p-values down to ~1e-9 at n = m).
        level: p-value at or below which a latent is in excess (0 < level < 1).
        min_samples: DBSCAN min_samples over the excess latents (the point itself counts).
        eps: DBSCAN radius over the excess latents, a number > 0 or "auto" (the median of the
            policy latents' k-th neighbour distances).
        backend: forced backend of the neighbour search and DBSCAN (``inform_fast.dispatch``).
    """
    from inform_fast.detect.dbscan import check_eps
    from inform_fast.detect.icds import icds

    rlhf = as_latents("rlhf_latents", rlhf_latents)
    reference = as_latents("reference_latents", reference_latents, dim=rlhf.shape[1], device=rlhf.device)
    check_positive_int("k", k)
    check_positive_int("min_samples", min_samples)
    level_value = check_open_unit("level", level)
    n = rlhf.shape[0]
    if n < 2:
        raise ValueError(f"rlhf_latents: the local test needs at least 2 policy latents, got {n}")
    pvalues, radius = local_excess_pvalues(rlhf, reference, k, backend=backend)
    if isinstance(eps, str):
        if eps != "auto":
            raise ValueError(f"eps: expected a number > 0 or 'auto', got {eps!r}")
        eps_value = float(radius.double().median())
        if not eps_value > 0:  # more than half the latents have k exact duplicates
            eps_value = float(radius[radius > 0].double().min()) if bool((radius > 0).any()) else 1.0
    else:
        eps_value = check_eps(eps)
    excess = pvalues <= level_value
    labels = torch.full((n,), -1, dtype=torch.int64, device=rlhf.device)
    sizes = torch.zeros(0, dtype=torch.int64, device=rlhf.device)
    deviations = torch.zeros(0, dtype=torch.float32, device=rlhf.device)
    centroids = torch.zeros((0, rlhf.shape[1]), dtype=torch.float32, device=rlhf.device)
    score = 0.0
    n_excess = int(excess.sum())
    if n_excess:
        clusters = icds(rlhf[excess], reference, eps=eps_value, min_samples=min_samples, backend=backend)
        labels[excess] = clusters.labels
        sizes, deviations, centroids, score = clusters.cluster_sizes, clusters.deviations, clusters.centroids, clusters.score
    return ExcessICDSResult(
        score=float(score), normalized_score=float(score) / n, excess_fraction=float((labels >= 0).sum()) / n,
        labels=labels, pvalues=pvalues, cluster_sizes=sizes, deviations=deviations, centroids=centroids,
        n_excess=n_excess, eps=eps_value, min_samples=int(min_samples), k=int(k), level=level_value,
    )
