"""Reward-hacking detection on bottleneck latents: ICDS, Mahalanobis / MOP, IBL, online monitor.

Inputs are latent matrices (torch tensors or NumPy arrays, [n, L]); nothing here imports the
reward head or Hugging Face. Names are imported lazily, except those that are also the names of
their submodules (``icds``, ``dbscan``, ``mop``): importing a submodule sets the package attribute
of that name to the module, which would hide a lazy function of the same name whenever anything
(the monitor, ICDS itself) had imported the submodule first. Those are bound here, so
``from inform_fast.detect import dbscan`` is the function whatever was imported before; the
modules stay reachable as ``importlib.import_module("inform_fast.detect.dbscan")`` and through
``from inform_fast.detect.dbscan import ...``.
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
    "MOPResult": "inform_fast.detect.mop",
    "ibl_penalty": "inform_fast.detect.ibl",
    "OverOptimizationMonitor": "inform_fast.detect.monitor",
}

__all__ = sorted(_LAZY)

for _name, _module in _LAZY.items():
    if _module.rsplit(".", 1)[1] == _name:
        globals()[_name] = getattr(importlib.import_module(_module), _name)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'inform_fast.detect' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
