"""inform_fast: fast InfoRM reward models and reward-hacking detection.

Main names (imported lazily, so ``import inform_fast`` stays light and never probes a device; each
resolves to the function or class, whatever was imported before):

* ``InfoRMHead``, ``inform_loss`` — the information-bottleneck reward head and its pairwise loss.
* ``icds``, ``mop``, ``MahalanobisScorer``, ``ibl_penalty``, ``OverOptimizationMonitor``,
  ``dbscan`` — reward-hacking detection on latents (``inform_fast.detect``).
* ``InfoRMConfig``, ``InfoRMForRewardModel`` — the Hugging Face reward model
  (``inform_fast.modeling``).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "InfoRMHead": "inform_fast.head",
    "InfoRMHeadOutput": "inform_fast.head",
    "InfoRMLossOutput": "inform_fast.head",
    "inform_loss": "inform_fast.head",
    "icds": "inform_fast.detect",
    "ICDSResult": "inform_fast.detect",
    "mop": "inform_fast.detect",
    "MOPResult": "inform_fast.detect",
    "MahalanobisScorer": "inform_fast.detect",
    "ibl_penalty": "inform_fast.detect",
    "dbscan": "inform_fast.detect",
    "nearest_distance": "inform_fast.detect",
    "OverOptimizationMonitor": "inform_fast.detect",
    "InfoRMConfig": "inform_fast.modeling",
    "InfoRMForRewardModel": "inform_fast.modeling",
    "InfoRMRewardModelOutput": "inform_fast.modeling",
}

__all__ = sorted(_LAZY) + ["__version__", "cpp_extension_status"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'inform_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


def cpp_extension_status() -> str:
    """'built' if the C++ extension ``inform_fast._C`` imports, else the reason it does not."""
    from inform_fast import _native

    return _native.status()
