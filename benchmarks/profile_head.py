"""Where the time of one head + loss forward/backward goes, kernel by kernel.

    python benchmarks/profile_head.py                          # CUDA: B=512, H=4096, L=128, bf16
    python benchmarks/profile_head.py --pairs 64 --hidden 2048 --backend reference
    python benchmarks/profile_head.py --h-splits 0            # the one-kernel forward layout

Runs the step of ``benchmarks/bench_head.py`` (``InfoRMHead.pairwise_loss`` on pooled rows, then
``backward``) a few times under ``torch.profiler`` and prints the device-side time of each kernel
(CPU-side time on a machine without CUDA), the launch count and the share of the step: the
table to read first when the fused path misses its goal (e.g. a kernel whose grid under-fills
the GPU). ``--json`` also writes the table.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from inform_fast import InfoRMHead


def profile_step(pairs: int, hidden: int, latent: int, dtype: torch.dtype, backend: str, device: str, steps: int = 5,
                 h_splits=None):
    """Profile ``steps`` steps; ``h_splits`` forces the fused kernels' split-H layout (None: heuristic)."""
    torch.manual_seed(0)
    head = InfoRMHead(hidden, latent, backend=backend, h_splits=h_splits).to(device=device, dtype=dtype).train()
    chosen = torch.randn(pairs, hidden, device=device, dtype=dtype, requires_grad=True)
    rejected = torch.randn(pairs, hidden, device=device, dtype=dtype, requires_grad=True)

    def step():
        chosen.grad = rejected.grad = None
        head.zero_grad(set_to_none=True)
        head.pairwise_loss(chosen, rejected, beta=0.1).loss.backward()

    for _ in range(3):  # compile and warm up outside the profile
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    from torch.autograd import DeviceType

    rows = []
    for event in prof.key_averages():
        if device == "cuda":
            # the kernels themselves: an operator's device time is its kernels' time, so keeping
            # operators too would count every kernel twice
            if getattr(event, "device_type", None) != DeviceType.CUDA:
                continue
            total_us = event.device_time_total
        else:
            total_us = event.self_cpu_time_total
        rows.append({"name": event.key, "calls_per_step": event.count / steps, "us_per_step": total_us / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    step_us = sum(r["us_per_step"] for r in rows) if device == "cuda" else None
    return rows, step_us


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--latent", type=int, default=128)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--backend", choices=["triton", "reference"], default=None, help="default: triton on CUDA")
    parser.add_argument("--h-splits", type=int, default=None,
                        help="force the fused kernels' layout: N >= 1 H ranges of the projection kernel, 0 the "
                             "one-kernel forward (default: what the launchers pick)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = args.backend or ("triton" if device == "cuda" else "reference")
    if backend == "triton" and device != "cuda":
        print("the triton backend needs CUDA here (the profile never times the interpreter)", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    rows, step_us = profile_step(args.pairs, args.hidden, args.latent, dtype, backend, device, h_splits=args.h_splits)
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (self time of each op)"
    layout = "" if args.h_splits is None else f" h_splits<={args.h_splits}"
    print(f"head + loss fwd+bwd, B={args.pairs} H={args.hidden} L={args.latent} {dtype} backend={backend}{layout} on {where}")
    if step_us is not None:
        print(f"device time per step: {step_us:.1f} us in {sum(r['calls_per_step'] for r in rows):.0f} kernels")
    for r in rows[: args.top]:
        share = f"{r['us_per_step'] / step_us:6.1%}" if step_us else ""
        print(f"{r['us_per_step']:10.1f} us {r['calls_per_step']:5.1f}x {share}  {r['name'][:100]}")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"pairs": args.pairs, "hidden": args.hidden, "latent": args.latent, "dtype": str(dtype),
                       "backend": backend, "h_splits": args.h_splits, "device": where, "step_us": step_us, "kernels": rows}, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
