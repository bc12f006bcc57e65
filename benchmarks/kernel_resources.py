"""What ptxas made of the head's Triton kernels for an H100 (sm_90), without a GPU.

    python benchmarks/kernel_resources.py            # TRITON_INTERPRET must be unset
    python benchmarks/kernel_resources.py --json out.json

For each configuration of ``inform_fast.kernels.vib_head.gpu_configs`` (the goal size B = 512,
H = 4096, L = 128, bf16, then the other variants): registers per thread, stack bytes and
local-memory stores (spills), shared memory, and the tensor-core instructions in the SASS
(HGMMA = Hopper warpgroup MMA, HMMA = the per-warp MMA of older GPUs). Compile-time facts,
not timings: they say whether a tile choice spills or misses the Hopper MMA, which is cheap to
know before a GPU is at hand.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capability", type=int, default=90)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    import triton

    from inform_fast.kernels import vib_head

    report = vib_head.resource_report(args.capability)
    print(f"Triton {triton.__version__}, sm_{args.capability}")
    print(f"{'kernel':24} {'blocks':46} {'warps':>5} {'regs':>5} {'stack':>6} {'STL':>4} {'shared':>7} {'HGMMA':>6} {'HMMA':>5}")
    for entry in report:
        blocks = " ".join(f"{k}={v}" for k, v in entry["constexprs"].items())
        print(f"{entry['kernel']:24} {blocks:46} {entry['num_warps']:>5} {entry['registers']:>5} {entry['stack_bytes']:>6} "
              f"{entry['local_stores']:>4} {entry['shared_bytes']:>7} {entry['hgmma']:>6} {entry['hmma']:>5}")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"triton": triton.__version__, "capability": args.capability, "kernels": report}, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
