"""ICDS, the Integrated Cluster Deviation Score (the paper's CSI), at scale.

docs/math.md: cluster the RLHF latents R [n, L] with DBSCAN(eps, min_samples) (noise is not a
cluster); for each cluster C_i its centroid c_i; d_i = Euclidean distance from c_i to the nearest
reference latent in S [m, L]; ``ICDS = sum_i |C_i| * d_i``. ``normalized_score = ICDS / n``.

With ``include_noise=True`` the noise points form one more group (as in the paper's pseudocode):
its centroid, size and deviation are appended as the last row of the per-cluster table and count
in the score. Neither the clustering nor the nearest-reference search ever holds an n x n or
n x m matrix (``inform_fast.detect.dbscan``, ``inform_fast.detect.neighbors``).

Automatic eps (``eps="auto"``, ``auto_eps`` / ``auto_eps_details``): the k-distance curve with
k = min_samples. For a sample of points (``sample_size``, drawn with a fixed seed), the exact
distance to the k-th nearest point among *all* points, the point itself counted as the first (as
scikit-learn's min_samples counts it, so a point at that eps is exactly core). Points with
min_samples - 1 copies of themselves (k-distance zero, or below the resolution floor: 1e-6 of
the data's RMS spread, where float32 latents differ by rounding only) are core at any eps, so they
are left out of the curve: repeated responses, the collapsed policy ICDS should catch, no longer
pull eps down to rounding noise. The rest is sorted; both axes are scaled to [0, 1] and the knee is
the point farthest below the chord joining the first and last points. A flat curve falls back to
its median, and eps is never below the floor. What was chosen and why is in
``ICDSResult.eps_choice`` (an ``AutoEps`` as a dict).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch

from inform_fast.detect.dbscan import DEFAULT_BLOCK, check_eps, dbscan_checked
from inform_fast.detect.inputs import as_latents
from inform_fast.detect.neighbors import knn_distance_checked, nearest_distance_checked
from inform_fast.spatial import fit_frame
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
    n_noise: number of noise points.  eps_choice: with eps="auto", what ``auto_eps_details``
    chose and why (``AutoEps.to_dict()``), else None.
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
    eps_choice: Optional[dict] = None

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
            "eps_choice": self.eps_choice,
            "cluster_sizes": [int(v) for v in self.cluster_sizes.tolist()],
            "deviations": [float(v) for v in self.deviations.tolist()],
            "centroids": [[float(v) for v in row] for row in self.centroids.tolist()],
        }
        if include_labels:
            out["labels"] = [int(v) for v in self.labels.tolist()]
        return out


def _kth_neighbor_distance(sample: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """[s] exact distance from each sample row to its k-th nearest row of x (itself counted when
    it is a row of x); the monitor's neighbour scale reads it."""
    distances, _ = knn_distance_checked(sample, x, min(k, x.shape[0]))
    return distances[:, -1]


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


RESOLUTION = 1e-6  # distances below this share of the RMS spread count as duplicates


@dataclass
class AutoEps:
    """What ``auto_eps`` chose: eps, the rule that gave it ("knee", "median" for a flat curve,
    "floor" when the knee fell below the resolution floor, "identical" when every sampled point
    has min_samples - 1 copies), k, the points sampled, the share of them with k-distance at the
    floor or below (duplicates), and the floor."""

    eps: float
    rule: str
    k: int
    sample_size: int
    duplicate_share: float
    floor: float

    def to_dict(self) -> dict:
        return {"eps": float(self.eps), "rule": self.rule, "k": int(self.k), "sample_size": int(self.sample_size),
                "duplicate_share": float(self.duplicate_share), "floor": float(self.floor)}


def auto_eps_details(x, min_samples: int = 5, sample_size: int = 2048, seed: int = 0, backend: Optional[str] = None,
                     name: str = "x") -> AutoEps:
    """eps from the k-distance curve (k = min_samples) of ``x`` [n, L], with the reasons; see the
    module docstring. ``name`` is the argument that errors name (the caller's name for ``x``)."""
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
    distances, _ = knn_distance_checked(sample, x, k, backend=backend)
    kth = torch.sort(distances[:, -1].to(torch.float64).cpu()).values
    centred = sample.to(torch.float64) - sample.to(torch.float64).mean(0)
    spread = float((centred * centred).sum(1).mean().sqrt())
    floor = RESOLUTION * spread
    positive = kth[kth > floor]
    duplicate_share = 1.0 - positive.numel() / kth.numel()
    if positive.numel() == 0:
        # every sampled point is core at any eps: the smallest eps that is not rounding noise
        return AutoEps(eps=floor if floor > 0 else 1.0, rule="identical", k=k, sample_size=int(kth.numel()),
                       duplicate_share=duplicate_share, floor=floor)
    eps, rule = knee_of_sorted(positive), "knee"
    if positive.numel() < 3 or float(positive[-1] - positive[0]) <= 0:
        rule = "median"
    if eps < floor:
        eps, rule = floor, "floor"
    return AutoEps(eps=float(eps), rule=rule, k=k, sample_size=int(kth.numel()), duplicate_share=duplicate_share, floor=floor)


def auto_eps(x, min_samples: int = 5, sample_size: int = 2048, seed: int = 0, name: str = "x") -> float:
    """eps from the k-distance curve (k = min_samples) of ``x`` [n, L]; see the module docstring
    (``auto_eps_details`` also says why). ``name`` is the argument that errors name."""
    return auto_eps_details(x, min_samples, sample_size, seed, name=name).eps


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
        eps: DBSCAN radius (> 0) or "auto" (k-distance knee, see ``auto_eps``; the choice is
            reported in ``ICDSResult.eps_choice``).
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
    eps_choice = None
    if isinstance(eps, str):
        if eps != "auto":
            raise ValueError(f"eps: expected a number > 0 or 'auto', got {eps!r}")
        choice = auto_eps_details(rlhf, min_samples, sample_size=auto_sample_size, backend=backend, name="rlhf_latents")
        eps, eps_choice = choice.eps, choice.to_dict()
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
    # centroids of the members in the data's own frame (centred, scaled by a power of two): float32
    # partial sums are then accurate relative to the clusters' spread, not to their distance from
    # the origin, and nothing overflows at any magnitude
    frame = fit_frame(rlhf, axes=False)
    sums = torch.zeros((n_groups, dim), dtype=torch.float64, device=rlhf.device)
    members, member_group = rlhf[kept], group[kept]
    for a in range(0, members.shape[0], 1 << 16):
        # float32 partial sums over 65,536 rows at a time, accumulated in float64: accurate and
        # much faster than a float64 index_add over all rows
        chunk = frame.apply(members[a : a + (1 << 16)]).to(torch.float32)
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
        centroids = sums / sizes[:, None].to(torch.float64) / frame.scale + frame.mean.to(rlhf.device)
        # exact nearest reference of each float64 centroid (distances in float64)
        deviations, _ = nearest_distance_checked(centroids, reference, backend=backend)
        deviations = deviations.to(torch.float64)
        score = float((sizes.to(torch.float64) * deviations).sum())
    else:
        centroids = torch.zeros((0, dim), dtype=torch.float64, device=rlhf.device)
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
        eps_choice=eps_choice,
    )
