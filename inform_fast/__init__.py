"""inform_fast: fast InfoRM reward models and reward-hacking detection.

Main names (imported lazily, so ``import inform_fast`` stays light and never probes a device):

* ``InfoRMHead``, ``inform_loss`` — the information-bottleneck reward head and its pairwise loss.
* ``icds``, ``mop``, ``knn_scores``, ``kop``, ``MahalanobisScorer``, ``ibl_penalty``, ``OverOptimizationMonitor``,
  ``dbscan`` — reward-hacking detection on latents (``inform_fast.detect``).
* ``InfoRMConfig``, ``InfoRMForRewardModel`` — the Hugging Face reward model
  (``inform_fast.modeling``). ``import inform_fast`` is enough for the Transformers Auto classes
  to load a saved InfoRM folder (``inform_fast._auto``; nothing is imported until Transformers is).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "InfoRMHead": "inform_fast.head",
    "InfoRMHeadOutput": "inform_fast.head",
    "InfoRMLossOutput": "inform_fast.head",
    "inform_loss": "inform_fast.head",
    # the defining modules, not inform_fast.detect: once a submodule such as inform_fast.detect.icds
    # is imported, the package attribute of that name is the submodule, not the function
    "icds": "inform_fast.detect.icds",
    "ICDSResult": "inform_fast.detect.icds",
    "mop": "inform_fast.detect.mop",
    "MOPResult": "inform_fast.detect.mop",
    "knn_scores": "inform_fast.detect.calibrated",
    "kop": "inform_fast.detect.calibrated",
    "KOPResult": "inform_fast.detect.calibrated",
    "KNNScorer": "inform_fast.detect.calibrated",
    "EmpiricalPValues": "inform_fast.detect.calibrated",
    "excess_icds": "inform_fast.detect.excess",
    "ExcessICDSResult": "inform_fast.detect.excess",
    "MahalanobisScorer": "inform_fast.detect.mahalanobis",
    "ibl_penalty": "inform_fast.detect.ibl",
    "dbscan": "inform_fast.detect.dbscan",
    "nearest_distance": "inform_fast.detect.neighbors",
    "OverOptimizationMonitor": "inform_fast.detect.monitor",
    "InfoRMConfig": "inform_fast.configuration",
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


def _install_auto_registration() -> None:
    from inform_fast import _auto

    _auto.install()


_install_auto_registration()
