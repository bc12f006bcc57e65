"""Triton kernels and their launchers, installed as ``inform_fast.kernels``.

Only ``@triton.jit`` kernels and the Python functions that launch them live here; the
autograd.Functions are in ``inform_fast.ops`` and the reference math in ``inform_fast.reference``.
Never import this package as a top-level ``kernels``: that name belongs to other projects.
"""
