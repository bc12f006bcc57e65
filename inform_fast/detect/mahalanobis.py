"""Mahalanobis distance to a reference set: a streaming, mergeable fit and a whitening GEMM.

The fit keeps only sums (float64), taken around a fixed shift ``k`` (the mean of the first batch)
so that a large common offset does not cancel catastrophically::

    n,  s = sum_i y_i,  S2 = sum_i y_i y_i^T,  u = sum_i ||y_i||^2 y_i,  T4 = sum_i ||y_i||^4,
    with y_i = x_i - k.

Sums add across batches and ranks (``partial_fit`` / ``merge`` / ``all_reduce``), so a streamed or
distributed fit equals the one-shot fit up to float64 rounding. ``u`` and ``T4`` are what the
Ledoit-Wolf shrinkage needs: moving the sums to another shift ``d`` (``y -> y - d``) is exact
algebra (``_shift``), and at ``d = mean`` it yields the centred ``sum_i ||x_i - mean||^4`` of
sklearn's formula.

Covariance (biased, /n, as sklearn's ``EmpiricalCovariance`` / ``LedoitWolf``)::

    C = S2/n - (s/n)(s/n)^T
    shrinkage=None        Sigma = C + eps I  (singular C raises; shrinkage fixes it)
    shrinkage=a in [0,1]  Sigma = (1-a) C + a mu I + eps I,  mu = tr(C)/L
    "ledoit_wolf"         a = sklearn.covariance.ledoit_wolf_shrinkage(X) computed from the sums

Distances: with ``Sigma = L L^T`` and ``A = L^{-T}``, ``d2(x) = ||(x - mean) @ A||^2``: one GEMM per
chunk plus a square-sum: the registered op ``inform_fast.ops.mahalanobis.mahalanobis_sq``, whose
backends are ``reference`` (``inform_fast.reference.mahalanobis_sq``, chunked PyTorch, CPU
default; a C++ path would only re-implement the GEMM) and ``triton``
(``inform_fast.kernels.mahalanobis``, CUDA: mean subtraction, tensor-core GEMM and square-sum
fused, writes only [n]).

P-values: ``chi2_L.sf(d2) = Q(L/2, d2/2)`` (regularised upper incomplete gamma,
``torch.special.gammaincc``) in float64 on the latents' device: a survival function, so p-values
far in the tail (1e-200) are resolved instead of underflowing as ``1 - cdf`` does. It agrees with
``scipy.stats.chi2.sf`` to ~2e-9 relative (df 1..4096, p down to 1e-300).
"""
from __future__ import annotations

import json
from typing import Optional, Union

import torch

from inform_fast._io import atomic_path
from inform_fast.detect.inputs import as_latents
from inform_fast.ops.mahalanobis import mahalanobis_sq
from inform_fast.validation import check_real

PRECISIONS = ("tf32", "tf32x3", "ieee")
SHRINKAGE_NAMES = (None, "ledoit_wolf")
# eigenvalue floor (relative to the largest) below which C counts as singular
_SINGULAR_RTOL = 1e-12
_FORMAT_VERSION = 1


def _check_shrinkage(shrinkage) -> Union[None, str, float]:
    if shrinkage is None or shrinkage == "ledoit_wolf":
        return shrinkage
    if isinstance(shrinkage, str):
        if shrinkage.lower() in ("none", ""):
            return None
        try:
            shrinkage = float(shrinkage)
        except ValueError:
            raise ValueError(f"shrinkage: expected None, 'ledoit_wolf' or a float in [0, 1], got {shrinkage!r}") from None
    try:
        return check_real("shrinkage", shrinkage, minimum=0, maximum=1)
    except ValueError:
        raise ValueError(f"shrinkage: expected None, 'ledoit_wolf' or a float in [0, 1], got {shrinkage!r}") from None


def _shift(n: float, s, S2, u, T4, d):
    """The sums of y - d given the sums of y (exact algebra; all float64)."""
    e = d @ d
    tr = torch.trace(S2)
    S2d = S2 @ d
    ds = d @ s
    T4_new = T4 + 4.0 * (d @ S2d) + n * e * e - 4.0 * (d @ u) + 2.0 * e * tr - 4.0 * e * ds
    u_new = u - 2.0 * S2d + e * s - tr * d + 2.0 * ds * d - n * e * d
    S2_new = S2 - torch.outer(s, d) - torch.outer(d, s) + n * torch.outer(d, d)
    s_new = s - n * d
    return s_new, S2_new, u_new, T4_new


def spectrum_shape(eigenvalues) -> dict:
    """``participation_ratio`` (sum)^2 / (sum of squares) and ``top_share`` (largest / sum) of
    non-negative covariance eigenvalues (tensor or array, descending)."""
    values = torch.as_tensor(eigenvalues, dtype=torch.float64)
    total = float(values.sum())
    if total <= 0:
        return {"participation_ratio": 0.0, "top_share": 0.0}
    return {"participation_ratio": total * total / float((values * values).sum()), "top_share": float(values[0]) / total}


class MahalanobisScorer:
    """Mahalanobis distance and chi-square p-value of latents against a fitted reference set.

    Args:
        shrinkage: None (empirical covariance), "ledoit_wolf" (sklearn's LedoitWolf estimate,
            computed from the streamed sums), or a float a in [0, 1] (``(1-a) C + a tr(C)/L I``).
        eps: added to the covariance diagonal (>= 0), a jitter for the Cholesky factorisation.
        precision: tensor-core use of the CUDA kernel: "tf32" (fastest, ~1e-3 relative error in
            d2), "tf32x3" (three tf32 products, near fp32) or "ieee" (exact fp32 products).
            CPU uses exact fp32 (or float64 for float64 input) whatever this says.

    Fit with ``fit(x)`` or stream with ``partial_fit(x)``; combine with ``merge`` / ``all_reduce``.
    Fitted attributes (float64, on the device of the first batch): ``mean_`` [L],
    ``covariance_`` [L, L] (eps included), ``shrinkage_`` (the value used), ``n_samples_``.
    """

    def __init__(self, shrinkage=None, eps: float = 1e-6, precision: str = "tf32"):
        self.shrinkage = _check_shrinkage(shrinkage)
        self.eps = check_real("eps", eps, minimum=0)
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.dim: Optional[int] = None
        self._n = 0
        self._k = self._s = self._S2 = self._u = self._T4 = None
        self._reset_fit()

    # ------------------------------------------------------------------ accumulation
    def _reset_fit(self) -> None:
        self._fitted = None  # dict of float64 results, computed lazily
        self._device_cache: dict = {}

    def _init_sums(self, dim: int, device: torch.device, shift: torch.Tensor) -> None:
        self.dim = dim
        f64 = dict(dtype=torch.float64, device=device)
        self._k = shift.to(**f64)
        self._s = torch.zeros(dim, **f64)
        self._S2 = torch.zeros(dim, dim, **f64)
        self._u = torch.zeros(dim, **f64)
        self._T4 = torch.zeros((), **f64)

    def partial_fit(self, x, name: str = "x") -> "MahalanobisScorer":
        """Add a batch x [b, L] (tensor or array, any float dtype) to the reference sums."""
        x = as_latents(name, x, dim=self.dim, allow_empty=True)
        if self._k is None:
            shift = x.double().mean(0) if x.shape[0] else torch.zeros(x.shape[1], dtype=torch.float64)
            self._init_sums(x.shape[1], x.device, shift)
        device = self._k.device
        for start in range(0, x.shape[0], 65536):
            y = x[start : start + 65536].to(device=device, dtype=torch.float64) - self._k  # [c, L]
            norms = (y * y).sum(1)  # [c]
            self._s += y.sum(0)
            self._S2.addmm_(y.T, y)
            self._u.addmv_(y.T, norms)
            self._T4 += (norms * norms).sum()
        self._n += x.shape[0]
        self._reset_fit()
        return self

    def fit(self, x, name: str = "x") -> "MahalanobisScorer":
        """Fit on x [n, L] alone (discarding earlier sums); raises on a singular covariance."""
        x = as_latents(name, x)  # unlike partial_fit, an empty x is an error here
        self._n = 0
        self.dim = None
        self._k = None
        self.partial_fit(x, name=name)
        self._finalize(name)
        return self

    def _sums_at(self, shift: torch.Tensor):
        """(s, S2, u, T4) moved to another shift (float64, on this scorer's device)."""
        return _shift(float(self._n), self._s, self._S2, self._u, self._T4, shift.to(self._k) - self._k)

    def merge(self, other: "MahalanobisScorer") -> "MahalanobisScorer":
        """Add another scorer's sums to this one (in place; returns self)."""
        if not isinstance(other, MahalanobisScorer):
            raise ValueError(f"other: expected a MahalanobisScorer, got {type(other).__name__}")
        if other._k is None:
            return self
        if self._k is None:
            self._init_sums(other.dim, other._k.device, other._k)
        elif other.dim != self.dim:
            raise ValueError(f"other: latent dimension {other.dim} does not match this scorer's {self.dim}")
        s, S2, u, T4 = other._sums_at(self._k)
        self._s += s.to(self._s)
        self._S2 += S2.to(self._S2)
        self._u += u.to(self._u)
        self._T4 += T4.to(self._T4)
        self._n += other._n
        self._reset_fit()
        return self

    def all_reduce(self, group=None) -> "MahalanobisScorer":
        """Sum the fit over the ranks of ``group`` (torch.distributed), in place; every rank ends
        with the fit of all ranks' data. Each rank must have seen at least an empty [0, L] batch
        (so that L is known). Two collectives: the global mean, then all sums around it."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("group: torch.distributed is not initialised")
        if self._k is None:
            raise ValueError("all_reduce: this rank has no latent dimension yet; call partial_fit (an empty [0, L] batch is enough) first")
        device = self._k.device
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        dim = self.dim
        first = torch.empty(dim + 2, dtype=torch.float64, device=device)
        first[0] = float(self._n)
        first[1] = float(dim)
        first[2:] = (self._s + self._n * self._k).to(device)  # absolute sum of x
        dist.all_reduce(first, group=group)
        world = dist.get_world_size(group)
        if int(round(first[1].item())) != dim * world:
            raise ValueError("all_reduce: ranks disagree on the latent dimension")
        n_total = first[0].item()
        if n_total == 0:
            raise ValueError("all_reduce: no rank has any reference latents")
        centre = first[2:] / n_total  # the global mean: a shift every rank agrees on
        s, S2, u, T4 = self._sums_at(centre.to(self._k.device))
        packed = torch.cat([torch.tensor([float(self._n)], dtype=torch.float64, device=s.device), s, S2.flatten(), u, T4.reshape(1)]).to(device)
        dist.all_reduce(packed, group=group)
        packed = packed.to(self._k.device)
        self._n = int(round(packed[0].item()))
        self._k = centre.to(self._k.device)
        self._s = packed[1 : 1 + dim].clone()
        self._S2 = packed[1 + dim : 1 + dim + dim * dim].reshape(dim, dim).clone()
        self._u = packed[1 + dim + dim * dim : 1 + 2 * dim + dim * dim].clone()
        self._T4 = packed[-1].clone()
        self._reset_fit()
        return self

    # ------------------------------------------------------------------ the fit
    @property
    def n_samples_(self) -> int:
        return self._n

    def _empirical(self, name: str = "reference latents"):
        """(mean [L], empirical covariance [L, L], the centred fourth-moment sum) from the sums."""
        if self._k is None or self._n == 0:
            raise ValueError(f"{name}: the scorer has no reference latents; call fit() or partial_fit() first")
        if self._n < 2:
            raise ValueError(f"{name}: need at least 2 reference latents to estimate a covariance, got {self._n}")
        n = float(self._n)
        delta = self._s / n  # mean in shifted coordinates
        _, S2, _, T4 = _shift(n, self._s, self._S2, self._u, self._T4, delta)  # centred sums
        C = S2 / n
        return self._k + delta, 0.5 * (C + C.T), T4

    def spectrum(self) -> dict:
        """How many directions the reference latents really use.

        Returns ``eigenvalues`` (float64 [L], descending) of the empirical covariance (before
        shrinkage), their ``participation_ratio`` (sum)^2 / (sum of squares), from 1 (all the
        variance on one direction) to L (spread evenly), and ``top_share`` (the largest
        eigenvalue's share). InfoRM's KL term squeezes the directions the decoder does not read,
        so with a linear decoder the ratio can fall to about 1: the Mahalanobis distance then
        mixes noise from the squeezed directions (weighted like the real one) with how far a
        response goes along that one (the reward) (see docs/detection.md; a float ``shrinkage``
        damps that noise)."""
        _, C, _ = self._empirical()
        eig = torch.linalg.eigvalsh(C).flip(0).clamp_min(0.0)
        return {"eigenvalues": eig.cpu(), **spectrum_shape(eig)}

    def _finalize(self, name: str = "reference latents") -> dict:
        if self._fitted is not None:
            return self._fitted
        if self._k is None or self._n == 0:
            raise ValueError(f"{name}: the scorer has no reference latents; call fit() or partial_fit() first")
        n, dim = float(self._n), self.dim
        mean, C, T4 = self._empirical(name)
        mu = torch.trace(C) / dim
        if self.shrinkage is None:
            amount = 0.0
            eig = torch.linalg.eigvalsh(C)
            top = float(eig[-1])
            if self._n <= dim or float(eig[0]) <= _SINGULAR_RTOL * max(top, 0.0) or top <= 0.0:
                constant = torch.nonzero(torch.diagonal(C) <= _SINGULAR_RTOL * max(top, 1e-300)).flatten().tolist()
                why = (
                    f"{self._n} reference latents for {dim} dimensions (need more than {dim})"
                    if self._n <= dim
                    else (f"dimension(s) {constant[:8]} are constant" if constant else "the latents lie in a lower-dimensional subspace")
                )
                raise ValueError(
                    f"{name}: the reference covariance is singular ({why}); "
                    "use shrinkage='ledoit_wolf' (or a float shrinkage in [0, 1]) to regularise it"
                )
        elif self.shrinkage == "ledoit_wolf":
            amount = self._ledoit_wolf_amount(C, mu, T4, n, dim)
        else:
            amount = float(self.shrinkage)
        cov = (1.0 - amount) * C
        cov.diagonal().add_(amount * mu + self.eps)
        L, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise ValueError(
                f"{name}: the covariance is not positive definite (the reference latents are degenerate, "
                f"shrinkage={self.shrinkage!r}, eps={self.eps}); use shrinkage='ledoit_wolf' and eps > 0"
            )
        eye = torch.eye(dim, dtype=torch.float64, device=L.device)
        whiten = torch.linalg.solve_triangular(L, eye, upper=False).T.contiguous()  # A = L^{-T}
        self._fitted = {"mean": mean, "covariance": cov, "cholesky": L, "whiten": whiten, "shrinkage": amount}
        return self._fitted

    @staticmethod
    def _ledoit_wolf_amount(C, mu, T4c, n, dim) -> float:
        """sklearn.covariance.ledoit_wolf_shrinkage (assume_centered=False) from centred sums."""
        if dim == 1:
            return 0.0
        delta_ = float((C * C).sum())  # ||X^T X||_F^2 / n^2
        beta_ = float(T4c)  # sum_jk (X2^T X2)_jk = sum_i ||x_i||^4
        beta = (beta_ / n - delta_) / (dim * n)
        trace = float(torch.trace(C))
        delta = (delta_ - 2.0 * float(mu) * trace + dim * float(mu) ** 2) / dim
        beta = min(beta, delta)
        return 0.0 if beta == 0 else beta / delta

    @property
    def mean_(self) -> torch.Tensor:
        return self._finalize()["mean"]

    @property
    def covariance_(self) -> torch.Tensor:
        return self._finalize()["covariance"]

    @property
    def precision_(self) -> torch.Tensor:
        return torch.cholesky_inverse(self._finalize()["cholesky"])

    @property
    def shrinkage_(self) -> float:
        return self._finalize()["shrinkage"]

    def _tensors(self, device: torch.device, dtype: torch.dtype):
        """(mean, whiten) cast and moved once per (device, dtype), then reused."""
        key = (str(device), dtype)
        cached = self._device_cache.get(key)
        if cached is None:
            fitted = self._finalize()
            cached = (fitted["mean"].to(device=device, dtype=dtype).contiguous(), fitted["whiten"].to(device=device, dtype=dtype).contiguous())
            self._device_cache[key] = cached
        return cached

    # ------------------------------------------------------------------ scoring
    def distance(self, x, squared: bool = False, backend: Optional[str] = None, name: str = "x", check_finite: bool = True) -> torch.Tensor:
        """Mahalanobis distance [n] (float32; float64 for float64 input) on x's device.

        x [n, L]: tensor or array, any float dtype. ``squared=True`` returns d2. ``backend``
        forces "reference" or "triton" (see ``inform_fast.dispatch``). ``check_finite=False`` skips
        the NaN/Inf check of the result (which synchronises a CUDA device once)."""
        self._finalize()
        tensor = isinstance(x, torch.Tensor) and x.dim() == 2 and x.is_floating_point() and x.shape[1] == self.dim
        if not tensor:
            x = as_latents(name, x, dim=self.dim, allow_empty=True)  # converts, or raises naming x
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        mean, whiten = self._tensors(x.device, work)
        d2 = mahalanobis_sq(x, mean, whiten, self.precision, backend)
        # NaN/Inf in a row always reach its d2, so checking the [n] result replaces a pass over
        # the [n, L] input; only then is x searched for the offending entry
        if tensor and check_finite and not bool(torch.isfinite(d2).all()):
            as_latents(name, x, dim=self.dim, allow_empty=True)
        return d2 if squared else d2.sqrt()

    def pvalue(self, x, backend: Optional[str] = None, name: str = "x") -> torch.Tensor:
        """Chi-square upper-tail p-value [n] (float64) with df = L: P(chi2_L >= d2(x))."""
        d2 = self.distance(x, squared=True, backend=backend, name=name)
        return chi2_sf(d2, self.dim)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        if self._k is None:
            raise ValueError("scorer: nothing fitted to save")
        return {
            "count": torch.tensor([float(self._n)], dtype=torch.float64),
            "shift": self._k.cpu(),
            "sum": self._s.cpu(),
            "sum_outer": self._S2.cpu(),
            "sum_norm2_x": self._u.cpu(),
            "sum_norm4": self._T4.reshape(1).cpu(),
        }

    def save(self, path: str) -> None:
        """Write the sums and the config to a .safetensors file (atomically)."""
        from safetensors.torch import save_file

        config = {"shrinkage": self.shrinkage, "eps": self.eps, "precision": self.precision, "dim": self.dim, "format": _FORMAT_VERSION}
        tensors = {k: v.contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as temp:
            save_file(tensors, temp, metadata={"inform_fast.mahalanobis": json.dumps(config)})

    @classmethod
    def load(cls, path: str, device: Optional[Union[str, torch.device]] = None) -> "MahalanobisScorer":
        """Read a scorer written by ``save`` (sums on ``device``, CPU by default)."""
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as error:
            raise ValueError(f"path: could not read a scorer from {path}: {error}") from error
        if "inform_fast.mahalanobis" not in metadata:
            raise ValueError(f"path: {path} is not a MahalanobisScorer file (no config metadata)")
        config = json.loads(metadata["inform_fast.mahalanobis"])
        scorer = cls(shrinkage=config["shrinkage"], eps=config["eps"], precision=config.get("precision", "tf32"))
        device = torch.device(device or "cpu")
        scorer._init_sums(int(config["dim"]), device, tensors["shift"])
        scorer._n = int(round(tensors["count"].item()))
        scorer._s = tensors["sum"].to(device)
        scorer._S2 = tensors["sum_outer"].to(device)
        scorer._u = tensors["sum_norm2_x"].to(device)
        scorer._T4 = tensors["sum_norm4"].reshape(()).to(device)
        return scorer

    def __repr__(self) -> str:
        return f"MahalanobisScorer(shrinkage={self.shrinkage!r}, eps={self.eps}, dim={self.dim}, n_samples={self._n})"


def chi2_sf(d2: torch.Tensor, df: int) -> torch.Tensor:
    """P(chi2_df >= d2) [n], float64, on d2's device (regularised upper incomplete gamma)."""
    d2 = d2.to(torch.float64).clamp_min(0.0)
    return torch.special.gammaincc(torch.full_like(d2, 0.5 * df), 0.5 * d2)
