"""Reward-hacking detection on bottleneck latents: ICDS, Mahalanobis / MOP, IBL, online monitor.

Inputs are latent matrices (torch tensors or NumPy arrays, [n, L]); nothing here imports the
reward head or Hugging Face. Names are imported lazily.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "icds": "inform_fast.detect.icds",
    "ICDSResult": "inform_fast.detect.icds",
    "auto_eps": "inform_fast.detect.icds",
    "dbscan": "inform_fast.detect.dbscan",
    "DBSCANResult": "inform_fast.detect.dbscan",
    "nearest_distance": "inform_fast.detect.neighbors",
    "MahalanobisScorer": "inform_fast.detect.mahalanobis",
    "mop": "inform_fast.detect.mop",
    "knn_scores": "inform_fast.detect.calibrated",
    "excess_icds": "inform_fast.detect.excess",
    "ExcessICDSResult": "inform_fast.detect.excess",
    "kop": "inform_fast.detect.calibrated",
    "KOPResult": "inform_fast.detect.calibrated",
    "KNNScorer": "inform_fast.detect.calibrated",
    "EmpiricalPValues": "inform_fast.detect.calibrated",
    "MOPResult": "inform_fast.detect.mop",
    "ibl_penalty": "inform_fast.detect.ibl",
    "OverOptimizationMonitor": "inform_fast.detect.monitor",
}

__all__ = sorted(_LAZY)

# Functions named like their module (``icds`` in icds.py, ``dbscan``, ``mop``) are bound now: once
# a submodule is imported, Python sets the package attribute of that name to the module, and the
# lazy ``__getattr__`` below would never be asked again. Binding the function first keeps it.
from inform_fast.detect.dbscan import dbscan  # noqa: E402
from inform_fast.detect.icds import icds  # noqa: E402
from inform_fast.detect.mop import mop  # noqa: E402


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'inform_fast.detect' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
