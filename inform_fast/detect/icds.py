"""ICDS, the Integrated Cluster Deviation Score (the paper's CSI), at scale.

docs/math.md: cluster the RLHF latents R [n, L] with DBSCAN(eps, min_samples) (noise is not a
cluster); for each cluster C_i its centroid c_i; d_i = Euclidean distance from c_i to the nearest
reference latent in S [m, L]; ``ICDS = sum_i |C_i| * d_i``. ``normalized_score = ICDS / n``.

With ``include_noise=True`` the noise points form one more group (as in the paper's pseudocode):
its centroid, size and deviation are appended as the last row of the per-cluster table and count
in the score. Neither the clustering nor the nearest-reference search ever holds an n x n or
n x m matrix (``inform_fast.detect.dbscan``, ``inform_fast.detect.neighbors``).

Automatic eps (``eps="auto"``, ``auto_eps``): the k-distance curve with k = min_samples. For a
sample of points (``sample_size``, drawn with a fixed seed), the distance to the k-th nearest
neighbour among *all* points, the point itself counted as the first (as scikit-learn's
min_samples counts it, so a point at that eps is exactly core). The distances are sorted
ascending; both axes are scaled to [0, 1] and the knee is the point farthest from the chord
joining the first and last points of the curve. Its distance is the eps used
(``ICDSResult.eps``); a flat curve (no knee) falls back to the median.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch

from inform_fast.detect.dbscan import DEFAULT_BLOCK, check_eps, dbscan_checked
from inform_fast.detect.inputs import as_latents
from inform_fast.detect.neighbors import nearest_distance_checked
from inform_fast.detect.projection import apply_projection
from inform_fast.validation import check_positive_int


@dataclass
class ICDSResult:
    """ICDS and its per-cluster table.

    score: float, sum_i |C_i| * d_i.  normalized_score: score / n (number of RLHF latents).
    labels: [n] int64 DBSCAN labels (-1 noise).  cluster_sizes: [k] int64.
    centroids: [k, L'] float32 (L' = projected dim if a projection was used).
    deviations: [k] float32, d_i.  With include_noise=True the last row is the noise group.
    eps / min_samples: the values used.  n_clusters: DBSCAN clusters (noise group excluded).
    n_noise: number of noise points.
    """

    score: float
    normalized_score: float
    labels: torch.Tensor
    cluster_sizes: torch.Tensor
    centroids: torch.Tensor
    deviations: torch.Tensor
    eps: float
    min_samples: int
    n_clusters: int
    n_noise: int
    include_noise: bool = False
    projection: Optional[str] = None
    backend: Optional[str] = field(default=None, repr=False)

    def to_dict(self, include_labels: bool = False) -> dict:
        """JSON-ready dict (plain floats/ints/lists). Labels only when asked (they are [n])."""
        out = {
            "score": float(self.score),
            "normalized_score": float(self.normalized_score),
            "eps": float(self.eps),
            "min_samples": int(self.min_samples),
            "n_clusters": int(self.n_clusters),
            "n_noise": int(self.n_noise),
            "n_points": int(self.labels.numel()),
            "include_noise": bool(self.include_noise),
            "projection": self.projection,
            "cluster_sizes": [int(v) for v in self.cluster_sizes.tolist()],
            "deviations": [float(v) for v in self.deviations.tolist()],
            "centroids": [[float(v) for v in row] for row in self.centroids.tolist()],
        }
        if include_labels:
            out["labels"] = [int(v) for v in self.labels.tolist()]
        return out


def _kth_neighbor_distance(sample: torch.Tensor, x: torch.Tensor, k: int, block: int = 8192) -> torch.Tensor:
    """[s] distance from each sample row to its k-th nearest row of x (itself counted), tiled."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = sample.to(dtype)
    sn = (s * s).sum(1)
    best = None  # [s, <=k] smallest squared distances so far
    for c0 in range(0, x.shape[0], block):
        c = x[c0 : c0 + block].to(dtype)
        d2 = (sn[:, None] + (c * c).sum(1)[None, :] - 2.0 * s @ c.T).clamp_min_(0)
        d2 = d2 if best is None else torch.cat([best, d2], dim=1)
        best = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False).values
    return best[:, -1].sqrt()


def knee_of_sorted(values: torch.Tensor) -> float:
    """Knee of an ascending curve: the point farthest from the chord, both axes scaled to [0, 1]."""
    y = values.to(torch.float64)
    n = y.numel()
    span = float(y[-1] - y[0])
    if n < 3 or span <= 0:
        return float(y.median())
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    u = (y - y[0]) / span
    # distance to the chord u = t (up to the constant 1/sqrt 2); the knee of a convex curve lies below it
    gap = t - u
    return float(y[int(torch.argmax(gap))])


def auto_eps(x, min_samples: int = 5, sample_size: int = 2048, seed: int = 0, name: str = "x") -> float:
    """eps from the k-distance curve (k = min_samples) of ``x`` [n, L]; see the module docstring.
    ``name`` is the argument that errors name (the caller's name for ``x``)."""
    x = as_latents(name, x)
    check_positive_int("min_samples", min_samples)
    check_positive_int("sample_size", sample_size)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"{name}: automatic eps needs at least 2 latents, got {n}")
    if n > sample_size:
        generator = torch.Generator().manual_seed(seed)
        pick = torch.randperm(n, generator=generator)[:sample_size].to(x.device)
        sample = x.index_select(0, pick)
    else:
        sample = x
    k = min(min_samples, n)
    kth = torch.sort(_kth_neighbor_distance(sample, x, k).cpu()).values
    eps = knee_of_sorted(kth)
    if not eps > 0:  # duplicated points: fall back to the smallest positive k-distance
        positive = kth[kth > 0]
        if positive.numel() == 0:
            raise ValueError(f"{name}: all sampled latents coincide with their neighbours; eps cannot be chosen automatically")
        eps = float(positive[0])
    return eps


def icds(
    rlhf_latents,
    reference_latents,
    eps: Union[float, str] = 0.5,
    min_samples: int = 5,
    include_noise: bool = False,
    projection=None,
    backend: Optional[str] = None,
    block: int = DEFAULT_BLOCK,
    auto_sample_size: int = 2048,
) -> ICDSResult:
    """Integrated Cluster Deviation Score of RLHF latents against reference latents.

    Args:
        rlhf_latents: [n, L] tensor/array (policy response latents, mu).
        reference_latents: [m, L] tensor/array (SFT response latents), same L; moved to the
            RLHF latents' device if it is elsewhere (the score is computed there).
        eps: DBSCAN radius (> 0) or "auto" (k-distance knee, see ``auto_eps``).
        min_samples: DBSCAN min_samples (>= 1; the point itself counts).
        include_noise: count the noise points as one more group.
        projection: None, "pca" (``PCAProjection``: 2 components fitted on the reference set,
            scaled to the reference's [0, 1] range) or an object with fit/transform.
        backend: forces the DBSCAN and nearest-distance backend ("reference", "cpp", "triton").

    Returns: ICDSResult (see its docstring).
    """
    rlhf = as_latents("rlhf_latents", rlhf_latents)
    reference = as_latents("reference_latents", reference_latents, dim=rlhf.shape[1])
    if reference.device != rlhf.device:
        # computed where the policy latents are; a caller that scores often (the monitor) moves
        # its reference there once instead of paying this copy on every call
        reference = reference.to(rlhf.device)
    check_positive_int("min_samples", min_samples)
    if not isinstance(include_noise, bool):
        raise ValueError(f"include_noise: expected a bool, got {include_noise!r}")
    projection_name = projection if (projection is None or isinstance(projection, str)) else type(projection).__name__
    if projection is not None:
        rlhf, reference = apply_projection(projection, rlhf, reference)
        rlhf = as_latents("projection(rlhf_latents)", rlhf)
        reference = as_latents("projection(reference_latents)", reference, dim=rlhf.shape[1])
    check_positive_int("block", block)
    if isinstance(eps, str):
        if eps != "auto":
            raise ValueError(f"eps: expected a number > 0 or 'auto', got {eps!r}")
        eps = auto_eps(rlhf, min_samples, sample_size=auto_sample_size, name="rlhf_latents")
    else:
        eps = check_eps(eps)

    clusters = dbscan_checked(rlhf, eps, min_samples, block=block, backend=backend)
    labels = clusters.labels
    n = rlhf.shape[0]
    n_groups = clusters.n_clusters
    group = labels
    noise = labels < 0
    n_noise = int(noise.sum())
    if include_noise and n_noise:
        group = torch.where(noise, torch.full_like(labels, n_groups), labels)
        n_groups += 1
    kept = group >= 0
    dim = rlhf.shape[1]
    sums = torch.zeros((n_groups, dim), dtype=torch.float64, device=rlhf.device)
    members, member_group = rlhf[kept], group[kept]
    for a in range(0, members.shape[0], 1 << 16):
        # float32 partial sums over 65,536 rows at a time, accumulated in float64: accurate and
        # much faster than a float64 index_add over all rows
        chunk = members[a : a + (1 << 16)].to(torch.float32)
        chunk_group = member_group[a : a + (1 << 16)]
        if n_groups <= 256:  # one-hot GEMM: far faster than index_add_ on CPU for few clusters
            one_hot = torch.zeros((n_groups, chunk.shape[0]), dtype=torch.float32, device=rlhf.device)
            one_hot[chunk_group, torch.arange(chunk.shape[0], device=rlhf.device)] = 1.0
            part = one_hot @ chunk
        else:
            part = torch.zeros((n_groups, dim), dtype=torch.float32, device=rlhf.device)
            part.index_add_(0, chunk_group, chunk)
        sums += part.to(torch.float64)
    sizes = torch.bincount(member_group, minlength=n_groups)
    if n_groups:
        centroids = sums / sizes[:, None].to(torch.float64)
        # search with the reference's precision (float32 unless it is float64); the winner's
        # distance is recomputed exactly in float64 by nearest_distance
        search_dtype = torch.float64 if reference.dtype == torch.float64 else torch.float32
        deviations, _ = nearest_distance_checked(centroids.to(search_dtype), reference, backend=backend)
        deviations = deviations.to(torch.float64)
        score = float((sizes.to(torch.float64) * deviations).sum())
    else:
        centroids = sums
        deviations = torch.zeros(0, dtype=torch.float64, device=rlhf.device)
        score = 0.0
    return ICDSResult(
        score=score,
        normalized_score=score / n,
        labels=labels,
        cluster_sizes=sizes,
        centroids=centroids.to(torch.float32),
        deviations=deviations.to(torch.float32),
        eps=float(eps),
        min_samples=int(min_samples),
        n_clusters=clusters.n_clusters,
        n_noise=n_noise,
        include_noise=include_noise,
        projection=projection_name,
    )
