"""What ptxas made of our Triton kernels for an H100 (sm_90), without a GPU.

    python benchmarks/kernel_resources.py            # TRITON_INTERPRET must be unset
    python benchmarks/kernel_resources.py --json out.json

For each launch configuration in the kernel modules' ``gpu_configs()`` (the head at the goal
size B = 512, H = 4096, L = 128, bf16, and its variants; Mahalanobis, nearest reference and the
DBSCAN pair kernels at L = 128): registers per thread, stack bytes and local-memory stores
(spills), shared memory, and the tensor-core instructions in the SASS (HGMMA = Hopper warpgroup
MMA, HMMA = the per-warp MMA of older GPUs). Compile-time facts, not timings: they say whether
a tile choice spills or misses the Hopper MMA, which is cheap to know before a GPU is at hand.
"""
from __future__ import annotations

import argparse
import json
import sys

MODULES = ("vib_head", "mahalanobis", "min_distance", "dbscan")


def report(capability: int = 90) -> dict:
    """{module: [resource_usage entries]} for every kernel module."""
    import importlib

    from inform_fast.kernels._compile import resource_report

    return {name: resource_report(importlib.import_module(f"inform_fast.kernels.{name}").gpu_configs(), capability)
            for name in MODULES}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capability", type=int, default=90)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    from inform_fast._platform import triton_interpret

    if triton_interpret():
        print("unset TRITON_INTERPRET: the interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    import triton

    table = report(args.capability)
    print(f"Triton {triton.__version__}, sm_{args.capability}")
    print(f"{'kernel':24} {'blocks':52} {'warps':>5} {'regs':>5} {'stack':>6} {'STL':>4} {'shared':>7} {'HGMMA':>6} {'HMMA':>5}")
    for entries in table.values():
        for entry in entries:
            blocks = " ".join(f"{k}={v}" for k, v in entry["constexprs"].items())
            print(f"{entry['kernel']:24} {blocks:52} {entry['num_warps']:>5} {entry['registers']:>5} {entry['stack_bytes']:>6} "
                  f"{entry['local_stores']:>4} {entry['shared_bytes']:>7} {entry['hgmma']:>6} {entry['hmma']:>5}")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"triton": triton.__version__, "capability": args.capability, "modules": table}, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
