"""The one dispatch point between the reference PyTorch path and the kernels.

``BACKENDS`` below is the static table of every op's implementations, by backend name, as
"module:function" strings loaded on first use (so importing ``inform_fast`` never imports Triton
or probes a device). All implementations of an op take the same arguments.
``resolve(op, device)`` picks one:

* an explicit ``backend=`` argument, else ``INFORM_FAST_BACKEND=reference|triton|cpp``, forces
  a path. A forced backend that cannot run here raises, naming the backends the op has.
  ``cpp`` forced on an op that has no C++ implementation uses the reference (``cpp`` means
  "the native CPU path where there is one").
* otherwise: Triton for CUDA tensors, the C++ extension for CPU tensors where the op has one and
  it is built, else the reference. An automatic choice whose loader fails falls back to the
  reference with a warning.

Triton runs on CPU tensors only under ``TRITON_INTERPRET=1`` (the test suite does that on small
shapes), and only when asked for explicitly. ``recording()`` lists the choices made while it is
open (which backend a training step really ran).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import warnings
from typing import Callable, Iterator, Optional

import torch

from inform_fast._platform import cpp_available, triton_importable, triton_interpret  # noqa: F401  (dispatch's API)

BACKEND_NAMES = ("reference", "triton", "cpp")
ENV_VAR = "INFORM_FAST_BACKEND"

# op -> backend -> "module:function". The head's ops and Mahalanobis are registered torch ops
# (inform_fast.ops), which resolve here when they run. The DBSCAN / nearest-reference / k-NN
# backends still live in inform_fast.detect (their code is being rewritten; they become ops too).
BACKENDS: dict[str, dict[str, str]] = {
    "vib_encode": {
        "reference": "inform_fast.ops.vib_head:vib_encode_reference",
        "triton": "inform_fast.kernels.vib_head:vib_encode",
    },
    "vib_encode_backward": {
        "reference": "inform_fast.ops.vib_head:vib_encode_backward_reference",
        "triton": "inform_fast.kernels.vib_head:vib_encode_backward",
    },
    "linear_pairwise_loss": {
        "reference": "inform_fast.ops.vib_head:linear_pairwise_loss_reference",
        "triton": "inform_fast.kernels.vib_head:linear_pairwise_loss",
    },
    "linear_pairwise_loss_backward": {
        "reference": "inform_fast.ops.vib_head:linear_pairwise_loss_backward_reference",
        "triton": "inform_fast.kernels.vib_head:linear_pairwise_loss_backward",
    },
    "mahalanobis_sq": {
        "reference": "inform_fast.reference:mahalanobis_sq",
        "triton": "inform_fast.kernels.mahalanobis:mahalanobis_sq",
    },
    "dbscan": {
        "reference": "inform_fast.detect.dbscan:_dbscan_reference",
        "cpp": "inform_fast.detect.dbscan:_dbscan_cpp",
        "triton": "inform_fast.detect.dbscan:_dbscan_triton",
    },
    # one search for both ops (nearest is k = 1): inform_fast.detect.neighbors
    "nearest_distance": {
        "reference": "inform_fast.detect.neighbors:_knn_reference",
        "cpp": "inform_fast.detect.neighbors:_knn_cpp",
        "triton": "inform_fast.detect.neighbors:_knn_device",
    },
    "knn_distance": {
        "reference": "inform_fast.detect.neighbors:_knn_reference",
        "cpp": "inform_fast.detect.neighbors:_knn_cpp",
        "triton": "inform_fast.detect.neighbors:_knn_device",
    },
}


class BackendUnavailableError(ValueError, RuntimeError):
    """A forced backend cannot run here (no CUDA for Triton, no C++ extension). A ValueError (a
    choice the caller can change) and, as before, a RuntimeError."""


def registered(op: str) -> tuple[str, ...]:
    """The backends ``op`` has."""
    return tuple(BACKENDS.get(op, {}))


@functools.lru_cache(maxsize=None)
def _load(target: str) -> Callable:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def requested_backend(backend: Optional[str] = None) -> Optional[str]:
    """The forced backend: the argument if given, else the environment variable, else None."""
    choice = backend if backend is not None else (os.environ.get(ENV_VAR) or None)
    if choice is None or choice == "auto":
        return None
    if choice not in BACKEND_NAMES:
        source = "backend" if backend is not None else ENV_VAR
        raise ValueError(f"{source}: expected one of {BACKEND_NAMES + ('auto',)}, got {choice!r}")
    return choice


def _runnable(backend: str, device: torch.device) -> tuple[bool, str]:
    if backend == "reference":
        return True, ""
    if backend == "triton":
        if not triton_importable():
            return False, "triton is not installed"
        if device.type == "cuda" or triton_interpret():
            return True, ""
        return False, f"Triton needs CUDA tensors (got {device.type}) or TRITON_INTERPRET=1"
    if backend == "cpp":
        if device.type != "cpu":
            return False, f"the C++ extension runs on CPU tensors (got {device.type})"
        if not cpp_available():
            from inform_fast import _native

            return False, f"the C++ extension inform_fast._C is not available ({_native.status()})"
        return True, ""
    return False, "unknown backend"


# open recorders (``recording``): a process-wide list, because CUDA runs a backward's ops in the
# autograd engine's own thread
_RECORDERS: list[list] = []
_RECORDERS_LOCK = threading.Lock()


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """Within the block, every ``resolve`` appends (op, backend) to the list it yields."""
    calls: list = []
    with _RECORDERS_LOCK:
        _RECORDERS.append(calls)
    try:
        yield calls
    finally:
        with _RECORDERS_LOCK:
            _RECORDERS.remove(calls)


def _chosen(op: str, name: str, implementation: Callable) -> tuple[str, Callable]:
    if _RECORDERS:
        with _RECORDERS_LOCK:
            for calls in _RECORDERS:
                calls.append((op, name))
    return name, implementation


def resolve(op: str, device: torch.device | str, backend: Optional[str] = None) -> tuple[str, Callable]:
    """Return (backend name, implementation) for ``op`` on ``device``."""
    impls = BACKENDS.get(op)
    if not impls:
        raise ValueError(f"op: no implementation registered for {op!r}")
    device = torch.device(device)
    forced = requested_backend(backend)
    if forced is not None:
        if forced == "cpp" and "cpp" not in impls:
            forced = "reference"
        if forced not in impls:
            raise ValueError(f"backend: {op!r} has no {forced!r} implementation; registered: {tuple(impls)}")
        ok, why = _runnable(forced, device)
        if not ok:
            source = "backend" if backend is not None and backend != "auto" else ENV_VAR
            raise BackendUnavailableError(
                f"{source}: {forced!r} was requested for {op!r} but cannot run: {why}; registered: {tuple(impls)}")
        return _chosen(op, forced, _load(impls[forced]))

    if device.type == "cuda":
        preferences = ("triton", "reference")
    else:
        preferences = ("cpp", "reference")
    for name in preferences:
        if name not in impls or not _runnable(name, device)[0]:
            continue
        try:
            return _chosen(op, name, _load(impls[name]))
        except Exception as error:  # an automatic choice falls back rather than failing
            if name == "reference":
                raise
            warnings.warn(f"inform_fast: {name} backend for {op!r} failed to load ({error}); using the reference")
    return _chosen(op, "reference", _load(impls["reference"]))
