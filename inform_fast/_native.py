"""Guarded import of the optional C++ extension ``inform_fast._C``.

The extension is built from ``csrc/`` by ``setup.py`` (skip with ``INFORM_FAST_BUILD_CPP=0``).
If it is missing or fails to import, everything keeps working through the PyTorch path; the
reason is logged once at debug level and reported by ``status()``.
"""
from __future__ import annotations

import functools
import logging

logger = logging.getLogger("inform_fast")


@functools.lru_cache(maxsize=1)
def _import():
    try:
        from inform_fast import _C  # type: ignore[attr-defined]
    except Exception as error:  # ImportError, or an undefined symbol from a stale build
        logger.debug("inform_fast._C not available: %s", error)
        return None, f"{type(error).__name__}: {error}"
    return _C, "built"


def module():
    """The extension module, or None."""
    return _import()[0]


def available() -> bool:
    return module() is not None


def status() -> str:
    """'built', or why the extension is not available."""
    return _import()[1]
