"""What this process can run: Triton importable, Triton's CPU interpreter on, the C++ extension
built. The bottom of the package: the kernels and the dispatch read it, it imports neither."""
from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install on an unsupported platform
        return False
    return True


def triton_interpret() -> bool:
    """``TRITON_INTERPRET=1``: Triton kernels run in its NumPy interpreter on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def cpp_available() -> bool:
    from inform_fast import _native

    return _native.available()
