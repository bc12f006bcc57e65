"""Compile Triton kernels for an NVIDIA GPU without one (Triton front end, MLIR lowering, ptxas).

Catches what only the interpreter accepts: the test suite runs the kernels under
``TRITON_INTERPRET=1`` on the CPU, which checks their arithmetic but not that they compile.
Must run with TRITON_INTERPRET unset (the kernels are then real JITFunctions).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import triton

from inform_fast._platform import triton_interpret


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
    _compile(kernel, pointer_types, constexprs, scalar_types, capability, num_warps)
    return kernel.__name__


def resource_usage(kernel, pointer_types: Mapping[str, str], constexprs: Mapping[str, object], **options) -> dict:
    """Compile like ``compile_for_gpu`` (same arguments) and read the cubin with the cuobjdump Triton ships:
    registers per thread, stack bytes and local-memory stores (register spills), shared memory,
    and the tensor-core instructions in the SASS (HGMMA: Hopper's warpgroup MMA; HMMA: the older
    per-warp MMA). What ptxas decided, known without a GPU; not a timing."""
    import re
    import subprocess
    import tempfile

    options = dict(dict(scalar_types=None, capability=90, num_warps=4), **options)
    compiled = _compile(kernel, pointer_types, constexprs, **options)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernel.cubin")
        with open(cubin, "wb") as stream:
            stream.write(compiled.asm["cubin"])
        usage = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {
        "kernel": kernel.__name__, "num_warps": options["num_warps"], "registers": int(fields.get("REG", -1)),
        "stack_bytes": int(fields.get("STACK", -1)), "local_stores": len(re.findall(r"\bSTL(\.|\s)", sass)),
        "shared_bytes": compiled.metadata.shared, "hgmma": len(re.findall(r"\bHGMMA\.", sass)),
        "hmma": len(re.findall(r"\bHMMA\.", sass)),
    }


def compile_configs(configs, capability: int = 90) -> list[str]:
    """``compile_for_gpu`` over a kernel module's ``gpu_configs()`` entries (kernel, pointer
    types, constexprs, num_warps[, scalar types]): the launch configurations the module uses on
    CUDA, compiled for compute capability ``capability`` without a GPU. Catches constructs that
    only the interpreter accepts. Returns the kernel names in order; raises on failure."""
    return [compile_for_gpu(kernel, pointers, constexprs, *rest, capability=capability, num_warps=num_warps)
            for kernel, pointers, constexprs, num_warps, *rest in configs]


def resource_report(configs, capability: int = 90) -> list[dict]:
    """``resource_usage`` of each ``gpu_configs()`` entry, with its block sizes and precision."""
    report = []
    for kernel, pointers, constexprs, num_warps, *rest in configs:
        usage = resource_usage(kernel, pointers, constexprs, scalar_types=rest[0] if rest else None,
                               capability=capability, num_warps=num_warps)
        usage["constexprs"] = {k: v for k, v in constexprs.items() if k.startswith(("BLOCK", "PRE", "SETS", "PRECISION", "STORE_DX"))}
        report.append(usage)
    return report


def _compile(kernel, pointer_types, constexprs, scalar_types, capability, num_warps):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if triton_interpret():
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
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})
