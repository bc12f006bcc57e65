"""Across-seed statistics of the demo: the mean of a per-seed number with its 95% interval.

Each seed is one independent replication of the whole study (its own world, pairs, pool,
initialisation and training), so the per-seed values of a number are i.i.d. draws and the
interval for their mean is Student's t: ``mean +- t_{(1 + c) / 2, N - 1} * sd / sqrt(N)`` with
the sample standard deviation (N - 1 in the denominator). Paired comparisons (InfoRM minus the
standard RM on the same seed) are intervals of the per-seed differences. With one seed there is no
interval (``low`` and ``high`` are None); the report then says so instead of printing one.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

CONFIDENCE = 0.95  # the coverage of every interval the demo reports


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Mean of ``values`` ([N] finite floats, one per seed) and its Student-t interval.

    Returns ``{"mean", "low", "high", "sd", "n"}`` (floats; ``low`` / ``high`` / ``sd`` are None
    when N == 1). ValueError for an empty, non-1-D or non-finite input, or a confidence outside (0, 1).
    """
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values: expected a non-empty 1-D sequence of per-seed numbers, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"values: expected finite numbers, got {x[~np.isfinite(x)][:3].tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "low": None, "high": None, "sd": None, "n": 1}
    sd = float(x.std(ddof=1))
    half = float(student_t.ppf(0.5 + confidence / 2.0, df=x.size - 1)) * sd / math.sqrt(x.size)
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": int(x.size)}


def curve_interval(rows: Sequence[Sequence[float]], confidence: float = CONFIDENCE) -> dict:
    """Pointwise ``mean_interval`` of per-seed curves ([N seeds][K points], equal lengths):
    ``{"mean": [K], "low": [K], "high": [K], "n": N}`` (low / high None with one seed)."""
    table = np.asarray(rows, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError(f"rows: expected [seeds, points] curves of equal length, got shape {table.shape}")
    columns = [mean_interval(table[:, k], confidence) for k in range(table.shape[1])]
    return {
        "mean": [c["mean"] for c in columns],
        "low": None if table.shape[0] == 1 else [c["low"] for c in columns],
        "high": None if table.shape[0] == 1 else [c["high"] for c in columns],
        "n": int(table.shape[0]),
    }


def direction(interval: dict) -> Optional[str]:
    """Where an interval of a difference lies: "above zero", "below zero", "includes zero", or None
    when there is no interval (one seed)."""
    if interval["low"] is None:
        return None
    if interval["low"] > 0.0:
        return "above zero"
    if interval["high"] < 0.0:
        return "below zero"
    return "includes zero"


def count(flags: Sequence[bool]) -> dict:
    """How many seeds a per-seed yes/no finding holds in: ``{"count": k, "seeds": N, "holds": "all" |
    "none" | "some"}`` ("some": the finding is seed-dependent)."""
    flags = [bool(f) for f in flags]
    if not flags:
        raise ValueError("flags: expected one yes/no value per seed, got none")
    k = int(sum(flags))
    return {"count": k, "seeds": len(flags), "holds": "all" if k == len(flags) else "none" if k == 0 else "some"}


def format_interval(interval: Optional[dict], digits: int = 2) -> str:
    """``mean [low, high]`` of a ``mean_interval`` result, the mean alone with one seed, "n/a" for None."""
    if interval is None:
        return "n/a"
    if interval["low"] is None:
        return f"{interval['mean']:.{digits}f}"
    return f"{interval['mean']:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"
