"""The one dispatch point between the reference PyTorch path and the kernels.

Each op registers its implementations by backend name with a lazy loader (so importing
``inform_fast`` never imports Triton or probes a device). ``resolve(op, device)`` picks one:

* an explicit ``backend=`` argument, else ``INFORM_FAST_BACKEND=reference|triton|cpp``, forces
  a path. A forced backend that cannot run here raises, naming the backends the op has.
  ``cpp`` forced on an op that has no C++ implementation uses the reference (``cpp`` means
  "the native CPU path where there is one").
* otherwise: Triton for CUDA tensors, the C++ extension for CPU tensors where the op has one and
  it is built, else the reference. An automatic choice whose loader fails falls back to the
  reference with a warning.

Triton runs on CPU tensors only under ``TRITON_INTERPRET=1`` (the test suite does that on small
shapes), and only when asked for explicitly.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from typing import Callable, Optional

import torch

BACKENDS = ("reference", "triton", "cpp")
ENV_VAR = "INFORM_FAST_BACKEND"

class BackendUnavailableError(ValueError, RuntimeError):
    """A forced backend cannot run here (no CUDA for Triton, no C++ extension). A ValueError (a
    choice the caller can change) and, as before, a RuntimeError."""


# op -> backend -> "module:attribute" (imported on first use)
_REGISTRY: dict[str, dict[str, str]] = {}


def register(op: str, backend: str, target: str) -> None:
    """Register ``target`` ("package.module:function") as the ``backend`` implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = target


def registered(op: str) -> tuple[str, ...]:
    return tuple(_REGISTRY.get(op, {}))


@functools.lru_cache(maxsize=None)
def _load(target: str) -> Callable:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install on an unsupported platform
        return False
    return True


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def cpp_available() -> bool:
    from inform_fast import _native

    return _native.available()


def requested_backend(backend: Optional[str] = None) -> Optional[str]:
    """The forced backend: the argument if given, else the environment variable, else None."""
    choice = backend if backend is not None else (os.environ.get(ENV_VAR) or None)
    if choice is None or choice == "auto":
        return None
    if choice not in BACKENDS:
        source = "backend" if backend is not None else ENV_VAR
        raise ValueError(f"{source}: expected one of {BACKENDS + ('auto',)}, got {choice!r}")
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


def resolve(op: str, device: torch.device | str, backend: Optional[str] = None) -> tuple[str, Callable]:
    """Return (backend name, implementation) for ``op`` on ``device``."""
    impls = _REGISTRY.get(op)
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
        return forced, _load(impls[forced])

    if device.type == "cuda":
        preferences = ("triton", "reference")
    else:
        preferences = ("cpp", "reference")
    for name in preferences:
        if name not in impls or not _runnable(name, device)[0]:
            continue
        try:
            return name, _load(impls[name])
        except Exception as error:  # an automatic choice falls back rather than failing
            if name == "reference":
                raise
            warnings.warn(f"inform_fast: {name} backend for {op!r} failed to load ({error}); using the reference")
    return "reference", _load(impls["reference"])
