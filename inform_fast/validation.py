"""Input checks shared by the public API. Every error names the argument and the problem.

These raise ``ValueError`` (never ``assert``, which ``python -O`` removes).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(name: str, tensor, ndims: Sequence[int] = (), finite: bool = False) -> torch.Tensor:
    """Check ``tensor`` is a floating torch.Tensor with one of ``ndims`` ranks (any if empty)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected a floating dtype (float16/bfloat16/float32/float64), got {tensor.dtype}")
    if ndims and tensor.dim() not in ndims:
        shapes = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name}: expected a {shapes} tensor, got shape {tuple(tensor.shape)}")
    if finite:
        check_finite(name, tensor)
    return tensor


class NonFiniteError(ValueError):
    """A tensor holds NaN or Inf where numbers are needed (``check_finite``)."""


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise if ``tensor`` holds NaN or Inf, saying where the first one is.

    A sum is finite only if every term is (NaN and Inf survive additions in any order), so one
    reduction clears the common case at memory speed (30x cheaper than an elementwise test on the
    CPU); only a non-finite sum (a bad value, or finite values whose sum overflows) pays for the
    elementwise search."""
    if tensor.numel() == 0 or (tensor.is_floating_point() and bool(torch.isfinite(tensor.sum()))):
        return
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        count = int(bad.sum())
        first = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
        raise NonFiniteError(f"{name}: contains {count} NaN/Inf value(s), first at index {first}")


def check_attention_mask(name: str, attention_mask: torch.Tensor, batch: int, seq_len: int) -> None:
    """A [B, T] mask with at least one real token per row."""
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.shape != (batch, seq_len):
        raise ValueError(
            f"{name}: expected shape {(batch, seq_len)} to match hidden states [B, T, H], "
            f"got {tuple(attention_mask.shape)}"
        )
    if torch.compiler.is_compiling():
        return  # a host sync on the mask's values would break the graph
    empty = (attention_mask == 0).all(dim=-1)
    if bool(empty.any()):
        rows = torch.nonzero(empty).flatten()[:8].tolist()
        raise ValueError(f"{name}: row(s) {rows} have no non-padding token; nothing to pool")


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def check_same_rows(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b}: batch sizes differ ({a.shape[0]} vs {b.shape[0]})")


def check_noise(name: str, noise: Optional[torch.Tensor], rows: int, latent_dim: int) -> None:
    if noise is None:
        return
    check_float_tensor(name, noise, ndims=(2,))
    if tuple(noise.shape) != (rows, latent_dim):
        raise ValueError(f"{name}: expected shape {(rows, latent_dim)}, got {tuple(noise.shape)}")


def check_beta(beta, name: str = "beta") -> float:
    """The KL weight of the InfoRM loss: a finite number >= 0 (``docs/math.md``)."""
    return check_real(name, beta, minimum=0)


def check_margin(margin, pairs: int, name: str = "margin"):
    """A preference margin: None, a finite number, a 0-d tensor or a [pairs] tensor."""
    if margin is None:
        return None
    if isinstance(margin, torch.Tensor):
        if margin.dim() != 0 and tuple(margin.shape) != (pairs,):
            raise ValueError(f"{name}: expected a scalar or shape ({pairs},), got {tuple(margin.shape)}")
        return margin
    return check_real(name, margin)


def check_normalization(mean, std) -> tuple[float, float]:
    """The serving normalisation of rewards, (raw - mean) / std: a finite mean and a finite std > 0."""
    return (check_real("reward_mean", mean),
            check_real("reward_std", std, minimum=0, open_minimum=True))


def check_h_splits(h_splits, name: str = "h_splits"):
    """The Triton kernels' split-H layout: None (chosen per batch), 0 or a positive count."""
    return None if h_splits is None else check_positive_int(name, h_splits, minimum=0)


class MissingDependencyError(ImportError):
    """An optional package is needed for what was asked; the message says which and how to get it."""


def require(module: str, purpose: str, extra: Optional[str] = None):
    """Import ``module`` or raise ``MissingDependencyError`` saying that ``purpose`` needs it and
    how to install it: the extra of inform-fast that brings it, or (``extra=None``, a dependency of
    the base install gone missing) the package itself."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        if extra is None:
            how = f"which is missing from this environment: pip install {package}"
        else:
            how = f"which the base install leaves out: pip install 'inform-fast[{extra}]' (or pip install {package})"
        raise MissingDependencyError(f"{purpose} needs {package}, {how}") from error


def check_open_unit(name: str, value) -> float:
    """A float strictly between 0 and 1 (a level, a fraction, alpha); anything ``float()`` takes
    but a bool or a string (NumPy scalars are accepted)."""
    import math

    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, (bool, str)) or not (0.0 < number < 1.0):
        raise ValueError(f"{name}: expected a float in (0, 1), got {value!r}")
    return number


def check_real(name: str, value, minimum: Optional[float] = None, maximum: Optional[float] = None,
               open_minimum: bool = False, open_maximum: bool = False) -> float:
    """A finite real number (Python, NumPy scalar or one-element tensor; not a bool) in the given
    range, returned as a float. The error names the argument and the range."""
    import math
    import numbers

    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a finite number{_range(minimum, maximum, open_minimum, open_maximum)}, got {value!r}")
    number = float(value)
    low_ok = minimum is None or (number > minimum if open_minimum else number >= minimum)
    high_ok = maximum is None or (number < maximum if open_maximum else number <= maximum)
    if not math.isfinite(number) or not low_ok or not high_ok:
        raise ValueError(f"{name}: expected a finite number{_range(minimum, maximum, open_minimum, open_maximum)}, got {value!r}")
    return number


def _range(minimum, maximum, open_minimum, open_maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in {'(' if open_minimum else '['}{minimum:g}, {maximum:g}{')' if open_maximum else ']'}"
    if minimum is not None:
        return f" {'>' if open_minimum else '>='} {minimum:g}"
    if maximum is not None:
        return f" {'<' if open_maximum else '<='} {maximum:g}"
    return ""
