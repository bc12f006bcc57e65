"""Every Triton kernel compiles for an H100 (sm_90) on this GPU-less machine.

The rest of the suite runs the kernels under TRITON_INTERPRET=1, which checks their arithmetic
but accepts constructs the compiler rejects; this lowers each kernel to a cubin in a process
without the interpreter. On Triton 3.6 (the GPU image's version) as on newer ones.
"""
import json
import os
import subprocess
import sys

import pytest

from inform_fast.testing import requires_triton

EXPECTED = {
    "vib_head": ["_project_partial_kernel", "_pair_loss_fwd_kernel", "_grad_input_kernel", "_grad_weight_kernel",
                 "_pair_loss_fwd_kernel", "_encode_fwd_kernel", "_encode_fwd_kernel", "_encode_bwd_kernel",
                 "_encode_bwd_kernel"],
    "mahalanobis": ["_mahalanobis_sq_kernel"] * 3,
    "min_distance": ["_nearest_kernel", "_nearest_kernel", "_within_kernel"],
    "dbscan": ["_neighbour_kernel", "_hook_kernel"],
}


def _nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except Exception:
        return False
    return "nvidia" in backends


@requires_triton()
@pytest.mark.skipif(not _nvidia_backend(), reason="this triton build has no NVIDIA backend to compile for")
@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_kernels_compile_for_sm90_without_gpu(module):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = (f"from inform_fast.kernels import {module} as K; from inform_fast.kernels._compile import compile_configs; "
              "print(','.join(compile_configs(K.gpu_configs(), 90)))")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if "NotImplementedError: compile_for_gpu: unsupported Triton" in result.stderr:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].split(",") == EXPECTED[module]


_REPORT_SCRIPT = """
import importlib, json
from inform_fast.kernels._compile import resource_report
print(json.dumps({name: resource_report(importlib.import_module("inform_fast.kernels." + name).gpu_configs(), 90)
                  for name in ("vib_head", "mahalanobis", "min_distance", "dbscan")}))
"""


@requires_triton()
@pytest.mark.skipif(not _nvidia_backend(), reason="this triton build has no NVIDIA backend to compile for")
def test_hot_kernels_use_hopper_tensor_cores_without_spills():
    # What ptxas made of the launch configurations (benchmarks/kernel_resources.py prints it):
    # the tile sizes and warp counts were chosen so that the GEMM-shaped kernels get Hopper's
    # warpgroup MMA (HGMMA; 16-row dots only get the per-warp HMMA) and nothing spills to local
    # memory. A change of tiles or a Triton upgrade that loses either shows up here.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _REPORT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    if "NotImplementedError: compile_for_gpu: unsupported Triton" in result.stderr or "cuobjdump" in result.stderr:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    head = {}
    for entry in report["vib_head"]:
        head.setdefault(entry["kernel"], entry)  # each kernel's first entry is its goal-size launch
    for name in ("_project_partial_kernel", "_grad_input_kernel", "_grad_weight_kernel"):
        assert head[name]["hgmma"] > 0 and head[name]["hmma"] == 0 and head[name]["local_stores"] == 0, head[name]
    # (the head's epilogues are not checked: Triton 3.6 gives them 16-32 bytes of stack that 3.9 does not)
    for entry in report["mahalanobis"] + report["dbscan"]:
        assert entry["local_stores"] == 0, entry
    for entry in report["mahalanobis"] + report["min_distance"]:
        if entry["constexprs"].get("PRECISION") == "tf32":
            assert entry["local_stores"] == 0, entry
            if entry["constexprs"].get("BLOCK_Q", 64) >= 64:
                assert entry["hgmma"] > 0, entry
