"""Optional projection of latents before ICDS clustering.

``PCAProjection`` (``projection="pca"`` in ``icds``): fit on the *reference* latents only, so
that both sets land in the same, reference-defined coordinates:

1. mean and the top ``n_components`` principal axes of the reference set (eigenvectors of its
   [L, L] covariance, accumulated in float64: one pass, no [m, m] matrix);
2. ``transform(x) = (x - mean) @ axes``;
3. with ``normalize=True`` (the default, like the paper, which clustered a 2-D map scaled to
   [0, 1]), each axis is then min-max scaled with the range of the *reference* projection, so
   reference points fall in [0, 1] and RLHF points outside it stay outside (a value can be < 0 or
   > 1: that is the deviation being measured).

Anything with ``fit(x)`` and ``transform(x)`` (scikit-learn style) can be passed instead; it is
fitted on the reference set and applied to both.
"""
from __future__ import annotations

import numpy as np
import torch

from inform_fast.validation import check_positive_int


class PCAProjection:
    """PCA fitted on reference latents. ``fit(x [m, L])``, ``transform(x [n, L]) -> [n, k]`` float32."""

    def __init__(self, n_components: int = 2, normalize: bool = True):
        self.n_components = check_positive_int("n_components", n_components)
        self.normalize = bool(normalize)
        self.mean_ = None
        self.components_ = None  # [L, k]
        self.low_ = None
        self.scale_ = None

    def fit(self, x) -> "PCAProjection":
        x = _as_tensor(x)
        if self.n_components > x.shape[1]:
            raise ValueError(f"n_components: {self.n_components} exceeds the latent dimension {x.shape[1]}")
        x64 = x.to(torch.float64)
        self.mean_ = x64.mean(0)
        centred = x64 - self.mean_
        cov = centred.T @ centred / max(x.shape[0] - 1, 1)  # [L, L]
        values, vectors = torch.linalg.eigh(cov)  # ascending
        axes = vectors[:, torch.argsort(values, descending=True)[: self.n_components]]
        # fix the sign so the largest-magnitude loading of each axis is positive (deterministic)
        signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
        self.components_ = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
        if self.normalize:
            projected = centred @ self.components_
            self.low_ = projected.min(0).values
            span = projected.max(0).values - self.low_
            self.scale_ = torch.where(span > 0, span, torch.ones_like(span))
        return self

    def transform(self, x) -> torch.Tensor:
        if self.components_ is None:
            raise ValueError("projection: PCAProjection.transform called before fit")
        x = _as_tensor(x)
        if x.shape[1] != self.components_.shape[0]:
            raise ValueError(f"x: latent dimension {x.shape[1]} does not match the fitted {self.components_.shape[0]}")
        out = (x.to(torch.float64) - self.mean_.to(x.device)) @ self.components_.to(x.device)
        if self.normalize:
            out = (out - self.low_.to(x.device)) / self.scale_.to(x.device)
        return out.to(torch.float32)

    def fit_transform(self, x) -> torch.Tensor:
        return self.fit(x).transform(x)


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def apply_projection(projection, rlhf: torch.Tensor, reference: torch.Tensor):
    """Fit ``projection`` on ``reference`` and transform both; returns float tensors on rlhf's device."""
    if projection is None:
        return rlhf, reference
    if isinstance(projection, str):
        if projection != "pca":
            raise ValueError(f"projection: expected None, 'pca' or an object with fit/transform, got {projection!r}")
        projection = PCAProjection()
    if not (hasattr(projection, "fit") and hasattr(projection, "transform")):
        raise ValueError(f"projection: expected None, 'pca' or an object with fit/transform, got {type(projection).__name__}")
    if isinstance(projection, PCAProjection):
        projection.fit(reference)
        return projection.transform(rlhf), projection.transform(reference)
    # scikit-learn style: NumPy in, NumPy out
    projection.fit(reference.detach().cpu().numpy())
    out = []
    for x in (rlhf, reference):
        y = np.asarray(projection.transform(x.detach().cpu().numpy()))
        if y.ndim != 2:
            raise ValueError(f"projection: transform returned shape {y.shape}, expected 2-D")
        out.append(torch.from_numpy(np.ascontiguousarray(y)).to(rlhf.device))
    return out[0], out[1]
