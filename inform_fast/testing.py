"""Test helpers shared by the test suite and the benchmarks: skip markers with stated reasons."""
from __future__ import annotations

import pytest

from inform_fast import _native, dispatch


def requires_triton_interpreter():
    """Skip unless Triton is installed; the suite sets TRITON_INTERPRET=1 in tests/conftest.py."""
    return pytest.mark.skipif(
        not dispatch.triton_importable(), reason="triton is not installed on this platform"
    )


def requires_cpp():
    return pytest.mark.skipif(
        not _native.available(), reason=f"C++ extension inform_fast._C not available: {_native.status()}"
    )


def requires_cuda():
    import torch

    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
