"""MOP, the Mahalanobis outlier probability (InfoRM journal version): the fraction of RLHF latents
whose chi-square p-value under the reference set's Gaussian fit is below ``alpha``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from inform_fast.detect.inputs import as_latents
from inform_fast.detect.mahalanobis import MahalanobisScorer
from inform_fast.validation import check_real


@dataclass
class MOPResult:
    """Result of ``mop`` for n RLHF latents."""

    score: float  # fraction of RLHF latents with p-value < alpha
    pvalues: torch.Tensor  # [n] float64 chi-square (df = L) upper-tail p-values
    distances: torch.Tensor  # [n] float32 (float64 for float64 input) Mahalanobis distances
    alpha: float
    scorer: MahalanobisScorer  # the fitted reference (reusable: scorer.pvalue(new_latents))

    @property
    def n_outliers(self) -> int:
        return int(round(self.score * self.pvalues.numel()))

    def summary(self) -> dict:
        """JSON-ready summary (no per-point arrays)."""
        d = self.distances.double()
        q = torch.quantile(d.cpu(), torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist() if d.numel() else [math.nan] * 3
        return {
            "mop": self.score,
            "alpha": self.alpha,
            "n_rlhf": int(self.pvalues.numel()),
            "n_outliers": self.n_outliers,
            "n_reference": self.scorer.n_samples_,
            "latent_dim": self.scorer.dim,
            "shrinkage": self.scorer.shrinkage,
            "shrinkage_used": self.scorer.shrinkage_,
            "eps": self.scorer.eps,
            "min_pvalue": float(self.pvalues.min()) if self.pvalues.numel() else math.nan,
            "distance_median": q[0],
            "distance_p90": q[1],
            "distance_p99": q[2],
        }


def check_alpha(alpha) -> float:
    return check_real("alpha", alpha, minimum=0, maximum=1, open_minimum=True, open_maximum=True)


def _checked_shape(rlhf_latents, dim: int):
    """Tensors of the right shape pass through (``distance`` checks NaN/Inf on its [n] result,
    far cheaper than a pass over [n, L]); anything else goes through ``as_latents``."""
    if isinstance(rlhf_latents, torch.Tensor) and rlhf_latents.dim() == 2 and rlhf_latents.is_floating_point() and rlhf_latents.shape[1] == dim and rlhf_latents.shape[0] > 0:
        return rlhf_latents
    return as_latents("rlhf_latents", rlhf_latents, dim=dim)


def mop(
    rlhf_latents,
    reference_latents=None,
    alpha: float = 0.01,
    shrinkage=None,
    eps: float = 1e-6,
    scorer: Optional[MahalanobisScorer] = None,
    backend: Optional[str] = None,
) -> MOPResult:
    """Mahalanobis outlier probability of ``rlhf_latents`` [n, L] against ``reference_latents``
    [m, L] (tensors or arrays, any float dtype; computed on the RLHF latents' device).

    Fits a ``MahalanobisScorer(shrinkage, eps)`` on the reference set, or uses ``scorer`` (already
    fitted; then ``reference_latents`` may be None). p-value = P(chi2_L >= d2); score = fraction of
    p-values below ``alpha``. A singular reference covariance (m <= L, constant dimensions) raises
    unless a shrinkage is given.
    """
    alpha = check_alpha(alpha)
    if scorer is None:
        if reference_latents is None:
            raise ValueError("reference_latents: required when no fitted scorer is given")
        reference = as_latents("reference_latents", reference_latents)
        rlhf = _checked_shape(rlhf_latents, reference.shape[1])
        scorer = MahalanobisScorer(shrinkage=shrinkage, eps=eps)
        scorer.fit(reference, name="reference_latents")
    else:
        if not isinstance(scorer, MahalanobisScorer):
            raise ValueError(f"scorer: expected a MahalanobisScorer, got {type(scorer).__name__}")
        scorer._finalize("scorer")
        rlhf = _checked_shape(rlhf_latents, scorer.dim)
    d2 = scorer.distance(rlhf, squared=True, backend=backend, name="rlhf_latents")
    from inform_fast.detect.mahalanobis import chi2_sf

    pvalues = chi2_sf(d2, scorer.dim)
    score = float((pvalues < alpha).double().mean())
    return MOPResult(score=score, pvalues=pvalues, distances=d2.sqrt(), alpha=alpha, scorer=scorer)
