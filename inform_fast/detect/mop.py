"""MOP, the Mahalanobis outlier probability (InfoRM journal version): the fraction of RLHF latents
whose p-value under the reference set's Mahalanobis fit is at most ``alpha``.

Two kinds of p-value (``pvalues=``):

* ``"empirical"`` (the default): conformal p-values (``inform_fast.detect.calibrated``): the
  reference is split into a fit part and a calibration part, and a response's p-value is the
  share of calibration latents at least as far as it. The false-alarm rate is ``alpha`` on the
  user's own latent distribution, Gaussian or not.
* ``"chi2"``: the journal paper's ``P(chi2_L >= d2)``, exact only for Gaussian latents. InfoRM
  latents are not Gaussian (the KL term collapses them onto a few directions): on real HH-RLHF
  text its false-alarm rate at alpha = 0.01 was 0.07 to 0.43 (docs/detection.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from inform_fast.detect.calibrated import (
    DEFAULT_CALIBRATION_FRACTION,
    PVALUE_METHODS,
    CalibratedScorer,
    check_alpha,
)
from inform_fast.detect.inputs import as_latents
from inform_fast.detect.mahalanobis import MahalanobisScorer, chi2_sf


@dataclass
class MOPResult:
    """Result of ``mop`` for n RLHF latents."""

    score: float  # fraction of RLHF latents with p-value <= alpha
    pvalues: torch.Tensor  # [n] float64 p-values (empirical, or chi-square with df = L)
    distances: torch.Tensor  # [n] float32 (float64 for float64 input) Mahalanobis distances
    alpha: float
    scorer: MahalanobisScorer  # the fitted reference (the fit part for empirical p-values)
    pvalue_method: str = "chi2"
    calibrated: Optional[CalibratedScorer] = None  # empirical p-values: reusable as mop(x, calibrated=...)
    shift: float = math.nan  # empirical only: P(distance > a calibration latent's), 0.5 under no change
    shift_z: float = math.nan  # (shift - 0.5) / null standard deviation

    @property
    def n_outliers(self) -> int:
        return int((self.pvalues <= self.alpha).sum())

    def summary(self) -> dict:
        """JSON-ready summary (no per-point arrays)."""
        d = self.distances.double()
        q = torch.quantile(d.cpu(), torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist() if d.numel() else [math.nan] * 3
        return {
            "mop": self.score,
            "alpha": self.alpha,
            "pvalue_method": self.pvalue_method,
            "shift": None if math.isnan(self.shift) else self.shift,  # JSON has no NaN
            "shift_z": None if math.isnan(self.shift_z) else self.shift_z,
            "n_calibration": None if self.calibrated is None else self.calibrated.calibration.size,
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
    pvalues: str = "empirical",
    calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
    seed: int = 0,
    calibrated: Optional[CalibratedScorer] = None,
) -> MOPResult:
    """Mahalanobis outlier probability of ``rlhf_latents`` [n, L] against ``reference_latents``
    [m, L] (tensors or arrays, any float dtype; computed on the RLHF latents' device).

    ``pvalues="empirical"`` (default): the reference is split (``calibration_fraction`` of it,
    seeded by ``seed``) into a calibration part and a fit part; ``MahalanobisScorer(shrinkage,
    eps)`` is fitted on the fit part and a p-value is ``(1 + #{calibration d >= d(x)}) / (1 + c)``.
    Reuse the fit with ``calibrated=`` (``MOPResult.calibrated`` of an earlier call).
    ``pvalues="chi2"``: the scorer is fitted on the whole reference (or ``scorer``, already fitted,
    is used) and p = P(chi2_L >= d2). score = fraction of p-values at most ``alpha``. A singular
    reference covariance (fit part <= L latents, constant dimensions) raises unless a shrinkage
    is given.
    """
    alpha = check_alpha(alpha)
    if pvalues not in PVALUE_METHODS:
        raise ValueError(f"pvalues: expected one of {PVALUE_METHODS}, got {pvalues!r}")
    if pvalues == "empirical":
        if scorer is not None:
            raise ValueError(
                "scorer: a fitted MahalanobisScorer gives chi-square p-values; pass pvalues='chi2', or "
                "calibrated=<an earlier MOPResult.calibrated> for empirical ones"
            )
        if calibrated is None:
            if reference_latents is None:
                raise ValueError("reference_latents: required when no calibrated scorer is given")
            reference = as_latents("reference_latents", reference_latents)
            calibrated = CalibratedScorer.fit(MahalanobisScorer(shrinkage=shrinkage, eps=eps), reference,
                                              calibration_fraction, seed)
        elif not isinstance(calibrated, CalibratedScorer) or not isinstance(calibrated.scorer, MahalanobisScorer):
            raise ValueError(f"calibrated: expected the CalibratedScorer of an earlier mop() result, got {type(calibrated).__name__}")
        fitted = calibrated.scorer
        rlhf = _checked_shape(rlhf_latents, fitted.dim)
        calibrated.calibration.check_alpha(alpha, alternative="or use pvalues='chi2'")
        distance = fitted.distance(rlhf, backend=backend, name="rlhf_latents")
        p = calibrated.calibration.pvalues(distance)
        score = float((p <= alpha).double().mean())
        shift, shift_z = calibrated.calibration.rank_shift(distance)
        return MOPResult(score=score, pvalues=p, distances=distance, alpha=alpha, scorer=fitted,
                         pvalue_method="empirical", calibrated=calibrated, shift=shift, shift_z=shift_z)
    if calibrated is not None:
        raise ValueError("calibrated: holds empirical p-values; pass pvalues='empirical' with it")
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
    p = chi2_sf(d2, scorer.dim)
    score = float((p <= alpha).double().mean())
    return MOPResult(score=score, pvalues=p, distances=d2.sqrt(), alpha=alpha, scorer=scorer, pvalue_method="chi2")
