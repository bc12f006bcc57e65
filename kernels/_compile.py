"""Compile Triton kernels for an NVIDIA GPU without one (Triton front end, MLIR lowering, ptxas).

Catches what only the interpreter accepts: the test suite runs the kernels under
``TRITON_INTERPRET=1`` on the CPU, which checks their arithmetic but not that they compile.
Must run with TRITON_INTERPRET unset (the kernels are then real JITFunctions).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import triton


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def compile_for_gpu(
    kernel,
    pointer_types: Mapping[str, str],
    constexprs: Mapping[str, object],
    scalar_types: Optional[Mapping[str, str]] = None,
    capability: int = 90,
    num_warps: int = 4,
) -> str:
    """Compile ``kernel`` for compute capability ``capability``; returns its name, raises on failure.

    pointer_types: Triton pointer types by argument name ("*bf16"); other ``*_ptr`` arguments are
    "*fp32". scalar_types: types of non-pointer runtime arguments (default "i32").
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreting():
        raise RuntimeError("compile_for_gpu: unset TRITON_INTERPRET (the kernels are interpreted)")
    scalar_types = scalar_types or {}
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types.get(name, "*fp32")
        else:
            signature[name] = scalar_types.get(name, "i32")
    positions = {(kernel.arg_names.index(k),): v for k, v in constexprs.items()}
    try:
        source = ASTSource(kernel, signature, constexprs=positions)
    except (TypeError, AttributeError) as error:  # the ASTSource API of another Triton version
        raise NotImplementedError(f"compile_for_gpu: unsupported Triton {triton.__version__}: {error}") from error
    triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})
    return kernel.__name__
