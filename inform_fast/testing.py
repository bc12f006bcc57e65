"""Test helpers shared by the test suite and the benchmarks: skip markers with stated reasons."""
from __future__ import annotations

import functools
from typing import Optional

import pytest

from inform_fast import _native, dispatch


@functools.lru_cache(maxsize=1)
def triton_interpreter_problem() -> Optional[str]:
    """Why the Triton kernels cannot be tested here, or None.

    Under TRITON_INTERPRET=1 (set by tests/conftest.py) a probe kernel with a loop over a runtime
    bound is run: Triton 3.6's interpreter fails on it with recent NumPy (2.4 here), which no longer
    turns a one-element array into an int; Triton 3.9's does not.
    """
    if not dispatch.triton_importable():
        return "triton is not installed on this platform"
    if not dispatch.triton_interpret():
        return None  # compiled kernels on a GPU (INFORM_FAST_TEST_GPU=1)
    import numpy as np
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def _probe(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        acc = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, n, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + offsets, mask=offsets < n, other=0.0)
        tl.store(out_ptr + tl.arange(0, BLOCK), acc)

    out = torch.empty(16)
    try:
        _probe[(1,)](torch.ones(40), out, 40, BLOCK=16)
    except Exception as error:
        return (f"the interpreter of Triton {triton.__version__} fails with NumPy {np.__version__} "
                f"({type(error).__name__}: {error}); use Triton >= 3.7, or test the compiled kernels "
                "on a GPU with INFORM_FAST_TEST_GPU=1")
    expected = torch.tensor([3.0] * 8 + [2.0] * 8)
    if not torch.equal(out, expected):
        return f"the interpreter of Triton {triton.__version__} computed a wrong probe result"
    return None


def kernel_test_device() -> str:
    """Where the Triton kernel tests put their tensors: "cpu" under the interpreter (the default
    in tests/conftest.py), "cuda" when INFORM_FAST_TEST_GPU=1 asks for the compiled kernels on a
    GPU (compiled kernels cannot read CPU tensors)."""
    import os

    import torch

    if os.environ.get("INFORM_FAST_TEST_GPU", "0") == "1" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def requires_triton():
    """Skip unless Triton imports (for tests that compile kernels without running them)."""
    return pytest.mark.skipif(not dispatch.triton_importable(), reason="triton is not installed on this platform")


def requires_triton_interpreter():
    """Skip unless the Triton kernels can run here: interpreted on CPU tensors (the suite sets
    TRITON_INTERPRET=1 in tests/conftest.py), or compiled on a GPU."""
    problem = triton_interpreter_problem()
    return pytest.mark.skipif(problem is not None, reason=problem or "")


def requires_cpp():
    return pytest.mark.skipif(
        not _native.available(), reason=f"C++ extension inform_fast._C not available: {_native.status()}"
    )


def requires_cuda():
    import torch

    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
