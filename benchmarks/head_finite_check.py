"""What ``InfoRMHead``'s finite check of the hidden states costs: the head's eval forward on
[B, T, H] hidden states with an attention mask, ``check_finite=True`` (the default) against
``check_finite=False`` on the same weights and inputs.

The check reads only the pooled [B, H] rows (one sum; an elementwise search only when that sum is
not finite). Inputs: standard-normal hidden states (no NaN: the common case), all tokens real,
L = 128. On CUDA the check also waits for the device once per call, which is included.

The two are timed interleaved, round by round, and each reported as its best round, so that a
busy machine slows both alike; the printed number is the ratio checked / unchecked.

    python benchmarks/head_finite_check.py            # CPU, float32: [64, 512, 1024], [8, 2048, 4096]
    python benchmarks/head_finite_check.py --gpu      # CUDA, bf16: [512, 1024, 4096], [4096, 1024, 8192]
"""
from __future__ import annotations

import argparse
import time

import torch

from inform_fast import InfoRMHead

CPU_SIZES = [(64, 512, 1024), (8, 2048, 4096)]
GPU_SIZES = [(512, 1024, 4096), (4096, 1024, 8192)]


def best_times(size, device: str, dtype: torch.dtype, rounds: int) -> tuple:
    batch, seq, hidden_size = size
    generator = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(batch, seq, hidden_size, device=device, dtype=dtype, generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    checked = InfoRMHead(hidden_size, 128).to(device).eval()
    unchecked = InfoRMHead(hidden_size, 128, check_finite=False).to(device).eval()
    unchecked.load_state_dict(checked.state_dict())

    def once(head) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            head(hidden, attention_mask=mask)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(3):  # warm-up
        once(checked), once(unchecked)
    times = {True: [], False: []}
    for _ in range(rounds):
        times[True].append(once(checked))
        times[False].append(once(unchecked))
    return min(times[True]), min(times[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA sizes in bf16")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    device, dtype, sizes = ("cuda", torch.bfloat16, GPU_SIZES) if args.gpu else ("cpu", torch.float32, CPU_SIZES)
    print(f"device {device}, dtype {dtype}, torch {torch.__version__}, best of {args.rounds} interleaved rounds")
    for size in sizes:
        checked, unchecked = best_times(size, device, dtype, args.rounds)
        print(f"[B, T, H] = {list(size)}: check_finite {checked * 1e3:.3f} ms, without {unchecked * 1e3:.3f} ms, "
              f"ratio {checked / unchecked:.3f}")


if __name__ == "__main__":
    main()
