"""Calibrated outlier scores: empirical (conformal) p-values, the k-NN score and KOP.

Why: InfoRM latents are far from Gaussian (the KL term squeezes them onto a few directions), so a
chi-square p-value of the Mahalanobis distance does not give the false-alarm rate ``alpha``
promises (measured on real HH-RLHF text: MOP 0.07-0.43 at alpha = 0.01 on clean responses,
``docs/detection.md``). An empirical p-value does, whatever the distribution:

* split the reference latents S into a fit part F and a calibration part C (seeded, disjoint);
* fit the score on F (a Mahalanobis fit, or the k-NN index) and score every c in C;
* for a response x with score s(x): ``p(x) = (1 + #{c in C : s(c) >= s(x)}) / (1 + |C|)``.

For a response drawn like the reference, C and x are exchangeable, so ``P(p(x) <= alpha) <=
alpha`` exactly (split conformal prediction; Vovk et al., 2005), and ``>= alpha - 1/(1 + |C|)``
when the scores have no ties. The smallest p-value is ``1 / (1 + |C|)``: an ``alpha`` below it can
never flag anything, which is refused.

Scores:

* ``mahalanobis``: the distance to the reference mean under the reference covariance (MOP);
* ``knn``: the distance to the k-th nearest reference latent (the deep k-NN out-of-distribution
  detector of Sun et al., ICML 2022); its outlier proportion is KOP. No distribution is assumed,
  and a cluster of responses in a region the reference does not visit is far from every
  reference latent even when it sits near the reference mean (where Mahalanobis sees nothing).

``knn_scores`` / ``kop`` / ``KNNScorer`` live here; MOP's empirical p-values are
``inform_fast.detect.mop.mop(..., pvalues="empirical")``, built from the same pieces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from inform_fast.detect.inputs import as_latents
from inform_fast.validation import check_open_unit, check_positive_int

PVALUE_METHODS = ("empirical", "chi2")
DEFAULT_CALIBRATION_FRACTION = 0.5


def check_alpha(alpha, name: str = "alpha") -> float:
    """alpha as a float in (0, 1); NumPy scalars are accepted."""
    return check_open_unit(name, alpha)


def check_calibration_fraction(fraction, name: str = "calibration_fraction") -> float:
    return check_open_unit(name, fraction)


class EmpiricalPValues:
    """Conformal p-values from calibration scores (higher score = more unusual).

    Args:
        calibration_scores: [c] scores of held-out reference latents (any float dtype, c >= 1,
            finite). Stored sorted, float64, on their device.

    ``pvalues(scores)`` [n] float64: ``(1 + #{calibration >= score}) / (1 + c)``.
    Mergeable (``merge``) across batches or ranks: the calibration set is the union.
    """

    def __init__(self, calibration_scores, name: str = "calibration_scores"):
        scores = torch.as_tensor(calibration_scores).detach()
        if scores.dim() != 1:
            raise ValueError(f"{name}: expected a 1-D tensor of scores, got shape {tuple(scores.shape)}")
        if scores.numel() == 0:
            raise ValueError(f"{name}: is empty; the calibration split needs at least one reference latent")
        scores = scores.to(torch.float64)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(f"{name}: contains NaN/Inf")
        self.sorted_scores = torch.sort(scores).values

    @property
    def size(self) -> int:
        return int(self.sorted_scores.numel())

    @property
    def min_pvalue(self) -> float:
        """The smallest p-value these calibration scores can give: 1 / (1 + c)."""
        return 1.0 / (1.0 + self.size)

    def pvalues(self, scores: torch.Tensor) -> torch.Tensor:
        """[n] float64 p-values of ``scores`` [n] (on the scores' device)."""
        scores = scores.detach().to(torch.float64)
        reference = self.sorted_scores.to(scores.device)
        # number of calibration scores >= s = c - (number strictly below s)
        below = torch.searchsorted(reference, scores, side="left")
        return (1.0 + (self.size - below).to(torch.float64)) / (1.0 + self.size)

    def rank_shift(self, scores: torch.Tensor) -> tuple[float, float]:
        """(shift, z): how much higher ``scores`` [n] rank than the calibration scores.

        ``shift`` = P(score > calibration score), ties counted half: the Mann-Whitney AUROC of the
        n scores against the c calibration scores. 0.5 when the scores are drawn like the
        reference; ``0.5 + f (a - 0.5)`` when a fraction f of them comes from responses that the
        score separates with per-response AUROC a, so it rises with f even when no single
        response crosses an alpha threshold. ``z`` = (shift - 0.5) / its null standard deviation
        sqrt((n + c + 1) / (12 n c)) (exact without ties; a one-sided test of shift > 0.5)."""
        scores = scores.detach().to(torch.float64)
        reference = self.sorted_scores.to(scores.device)
        below = torch.searchsorted(reference, scores, side="left").to(torch.float64)
        not_above = torch.searchsorted(reference, scores, side="right").to(torch.float64)
        n, c = scores.numel(), self.size
        shift = float(((below + not_above) * 0.5).sum()) / (n * c)
        z = (shift - 0.5) / math.sqrt((n + c + 1) / (12.0 * n * c))
        return shift, z

    def check_alpha(self, alpha: float, name: str = "alpha", alternative: str = "") -> None:
        """Refuse an ``alpha`` that no p-value can reach (it would never flag anything);
        ``alternative`` is appended to the advice (e.g. "or use pvalues='chi2'")."""
        if alpha < self.min_pvalue:
            need = math.ceil(1.0 / alpha) - 1
            raise ValueError(
                f"{name}: {alpha:g} is below the smallest empirical p-value 1/(1 + {self.size}) = {self.min_pvalue:.3g}; "
                f"the calibration split needs at least {need} reference latents (give more reference latents or a "
                f"larger calibration_fraction){', ' + alternative if alternative else ''}"
            )

    def merge(self, other: "EmpiricalPValues") -> "EmpiricalPValues":
        """Add another calibration set (in place; returns self)."""
        if not isinstance(other, EmpiricalPValues):
            raise ValueError(f"other: expected EmpiricalPValues, got {type(other).__name__}")
        merged = torch.cat([self.sorted_scores, other.sorted_scores.to(self.sorted_scores.device)])
        self.sorted_scores = torch.sort(merged).values
        return self

    def to(self, device) -> "EmpiricalPValues":
        self.sorted_scores = self.sorted_scores.to(device)
        return self

    def __repr__(self) -> str:
        return f"EmpiricalPValues(size={self.size})"


def split_reference(reference: torch.Tensor, calibration_fraction: float, seed: int = 0, name: str = "reference_latents"):
    """(fit part, calibration part) of ``reference`` [m, L]: a seeded random split, the
    calibration part holding ``round(calibration_fraction * m)`` rows (each part >= 1 row)."""
    fraction = check_calibration_fraction(calibration_fraction)
    m = reference.shape[0]
    if m < 2:
        raise ValueError(f"{name}: empirical p-values need at least 2 reference latents (one to fit, one to calibrate), got {m}")
    n_cal = min(m - 1, max(1, round(fraction * m)))
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(m, generator=generator).to(reference.device)
    return reference.index_select(0, order[n_cal:]), reference.index_select(0, order[:n_cal])


# ------------------------------------------------------------------------------------- k-NN
KNN_NORMALIZE = (None, "l2", "standardize")


class KNNScorer:
    """Distance from a latent to its k-th nearest reference latent (deep k-NN OOD score).

    Args:
        k: which neighbour (>= 1). Sun et al. use k = 50 on 50,000 training points; k = 10 is
            the default here for reference sets of a few thousand responses.
        normalize: None (plain Euclidean distance in the latent), "l2" (every latent scaled to
            unit norm first, as in Sun et al.) or "standardize" (each coordinate divided by the
            reference's standard deviation of that coordinate, so that every direction counts
            alike; directions with no reference variance keep scale 1).
        backend: forced backend of the neighbour search (``inform_fast.dispatch``).

    ``fit(reference)`` keeps the (normalised) reference; ``distance(x)`` [n] float32 (float64 for
    float64 input).
    """

    def __init__(self, k: int = 10, normalize: Optional[str] = None, backend: Optional[str] = None):
        self.k = check_positive_int("k", k)
        if normalize not in KNN_NORMALIZE:
            raise ValueError(f"normalize: expected one of {KNN_NORMALIZE}, got {normalize!r}")
        self.normalize = normalize
        self.backend = backend
        self.reference_: Optional[torch.Tensor] = None
        self.scale_: Optional[torch.Tensor] = None

    @property
    def dim(self) -> Optional[int]:
        return None if self.reference_ is None else int(self.reference_.shape[1])

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize == "l2":
            work = torch.float64 if x.dtype == torch.float64 else torch.float32
            x = x.to(work)
            return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(work).tiny)
        if self.normalize == "standardize":
            return x / self.scale_.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        return x

    def fit(self, reference, name: str = "reference_latents") -> "KNNScorer":
        reference = as_latents(name, reference)
        if reference.shape[0] < self.k:
            raise ValueError(f"{name}: {reference.shape[0]} latents for k = {self.k}; need at least k")
        if self.normalize == "standardize":
            std = reference.double().std(dim=0, correction=0)
            self.scale_ = torch.where(std > 0, std, torch.ones_like(std))
        self.reference_ = self._transform(reference)
        return self

    def distance(self, x, name: str = "x") -> torch.Tensor:
        """[n] distance to the k-th nearest reference latent."""
        from inform_fast.detect.neighbors import knn_distance_checked

        if self.reference_ is None:
            raise ValueError("scorer: not fitted; call fit(reference_latents) first")
        x = as_latents(name, x, dim=self.dim)
        if x.device != self.reference_.device:
            self.reference_ = self.reference_.to(x.device)  # the reference follows the latents, once
        distances, _ = knn_distance_checked(self._transform(x), self.reference_, self.k, backend=self.backend)
        return distances[:, -1]

    def __repr__(self) -> str:
        size = None if self.reference_ is None else self.reference_.shape[0]
        return f"KNNScorer(k={self.k}, normalize={self.normalize!r}, n_reference={size})"


def knn_scores(rlhf_latents, reference_latents, k: int = 10, normalize: Optional[str] = None,
               backend: Optional[str] = None) -> torch.Tensor:
    """Per-response k-NN outlier score: the distance from each of ``rlhf_latents`` [n, L] to its
    k-th nearest latent of ``reference_latents`` [m, L] (m >= k). Returns [n] float32 (float64
    for float64 input) on the RLHF latents' device. Higher = less like the reference.
    See ``KNNScorer`` for ``normalize``."""
    rlhf = as_latents("rlhf_latents", rlhf_latents)
    scorer = KNNScorer(k=k, normalize=normalize, backend=backend)
    scorer.fit(as_latents("reference_latents", reference_latents, dim=rlhf.shape[1], device=rlhf.device))
    return scorer.distance(rlhf, name="rlhf_latents")


@dataclass
class CalibratedScorer:
    """A score fitted on one part of the reference and calibrated on the other.

    ``scorer`` has ``distance(x, name=...)`` ([n], higher = more unusual): a ``KNNScorer`` or a
    ``MahalanobisScorer``. ``calibration`` holds the scores of the held-out reference part.
    """

    scorer: object
    calibration: EmpiricalPValues

    @classmethod
    def fit(cls, scorer, reference_latents, calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
            seed: int = 0, name: str = "reference_latents") -> "CalibratedScorer":
        reference = as_latents(name, reference_latents)
        fit_part, calibration_part = split_reference(reference, calibration_fraction, seed, name=name)
        try:
            scorer.fit(fit_part, name=name)
        except ValueError as error:
            raise ValueError(
                f"{error} (empirical p-values fit on {fit_part.shape[0]} of the {reference.shape[0]} reference latents "
                f"and calibrate on the other {calibration_part.shape[0]}: give more reference latents, a smaller "
                f"calibration_fraction, or use pvalues='chi2')"
            ) from None
        return cls(scorer, EmpiricalPValues(scorer.distance(calibration_part, name=name), name=name))

    def distance(self, x, name: str = "x") -> torch.Tensor:
        return self.scorer.distance(x, name=name)

    def pvalues(self, x, name: str = "x") -> torch.Tensor:
        """[n] float64 empirical p-values of ``x`` [n, L]."""
        return self.calibration.pvalues(self.distance(x, name=name))


@dataclass
class KOPResult:
    """Result of ``kop`` for n RLHF latents."""

    score: float  # fraction of RLHF latents with empirical p-value <= alpha
    pvalues: torch.Tensor  # [n] float64 empirical p-values
    distances: torch.Tensor  # [n] distance to the k-th nearest reference latent (of the fit part)
    alpha: float
    k: int
    calibrated: CalibratedScorer  # reusable: calibrated.pvalues(new_latents)
    shift: float = math.nan  # P(k-NN score > a calibration latent's), 0.5 under no change (EmpiricalPValues.rank_shift)
    shift_z: float = math.nan  # (shift - 0.5) / null standard deviation

    @property
    def n_outliers(self) -> int:
        return int((self.pvalues <= self.alpha).sum())

    def summary(self) -> dict:
        """JSON-ready summary (no per-point arrays)."""
        d = self.distances.double().cpu()
        q = torch.quantile(d, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
        return {
            "kop": self.score,
            "alpha": self.alpha,
            "k": self.k,
            "normalize": self.calibrated.scorer.normalize,
            "n_rlhf": int(self.pvalues.numel()),
            "n_outliers": self.n_outliers,
            "n_calibration": self.calibrated.calibration.size,
            "shift": self.shift,
            "shift_z": self.shift_z,
            "min_pvalue": float(self.pvalues.min()),
            "distance_median": q[0],
            "distance_p90": q[1],
            "distance_p99": q[2],
        }


def kop(
    rlhf_latents,
    reference_latents=None,
    alpha: float = 0.01,
    k: int = 10,
    normalize: Optional[str] = None,
    calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
    seed: int = 0,
    calibrated: Optional[CalibratedScorer] = None,
    backend: Optional[str] = None,
) -> KOPResult:
    """k-NN outlier proportion: the fraction of ``rlhf_latents`` [n, L] whose empirical p-value
    under the k-NN score is at most ``alpha``.

    The reference [m, L] is split (``calibration_fraction`` of it, seeded by ``seed``) into a
    calibration part and a fit part; the k-NN score is the distance to the k-th nearest latent of
    the fit part. For responses drawn like the reference, the expected KOP is at most ``alpha``
    (and at least ``alpha - 1/(1 + calibration size)``), whatever the latent distribution.
    Pass ``calibrated`` (a ``KOPResult.calibrated`` from an earlier call) to reuse the fit.
    """
    alpha = check_alpha(alpha)
    rlhf = as_latents("rlhf_latents", rlhf_latents)
    if calibrated is None:
        if reference_latents is None:
            raise ValueError("reference_latents: required when no calibrated scorer is given")
        reference = as_latents("reference_latents", reference_latents, dim=rlhf.shape[1], device=rlhf.device)
        calibrated = CalibratedScorer.fit(KNNScorer(k=k, normalize=normalize, backend=backend), reference,
                                          calibration_fraction, seed)
    elif not isinstance(calibrated, CalibratedScorer) or not isinstance(calibrated.scorer, KNNScorer):
        raise ValueError(f"calibrated: expected the CalibratedScorer of an earlier kop() result, got {type(calibrated).__name__}")
    calibrated.calibration.check_alpha(alpha)
    distances = calibrated.distance(rlhf, name="rlhf_latents")
    pvalues = calibrated.calibration.pvalues(distances)
    score = float((pvalues <= alpha).double().mean())
    shift, shift_z = calibrated.calibration.rank_shift(distances)
    return KOPResult(score=score, pvalues=pvalues, distances=distances, alpha=alpha, k=calibrated.scorer.k,
                     calibrated=calibrated, shift=shift, shift_z=shift_z)
