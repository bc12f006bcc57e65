"""InfoRM head + pairwise loss, forward + backward, four ways (one pytest-benchmark group per size).

* ``authors_eager``: the authors' style (OpenRLHF value-head pattern): encoder, reparameterisation
  and decoder applied to all T positions of the [B, T, H] hidden states of chosen and rejected
  rows, then the last token's reward and latent statistics gathered; eager PyTorch.
* ``reference_eager``: our reference path (pool first): ``InfoRMHead(backend="reference")
  .pairwise_loss`` on the pooled last-token rows [B, H].
* ``reference_compile``: ``torch.compile`` of that same step (forward and AOT-compiled backward).
* ``triton_fused``: ``InfoRMHead(backend="triton").pairwise_loss``: the fused kernels (CUDA only;
  the benchmarks never time the Triton interpreter).
* ``triton_single_kernel``: the same kernels in their one-kernel forward layout
  (``InfoRMHead(h_splits=0)``: the loss kernel projects its 16-pair blocks itself, dX not split over
  H), timed as a baseline so that the run shows what the separate projection kernel (64-row
  blocks, H split over idle SMs) buys at each size.

The pooled variants take the pooled rows as inputs that require grad (what the backbone's
last-token gather hands over; the gather itself is the same for all three and not timed).
Every variant returns gradients for the head's parameters and for its inputs.

Sizes: CPU (default) B=32, H=256, L=128, T=64 in float32; ``--gpu-sizes``: B in {64, 512, 4096},
H in {2048, 4096, 8192}, L=128, T=1024 (for the authors' style) in bf16; authors-style sizes whose
[B, T, H] tensors would not fit the GPU are skipped with the reason. Peak memory is the CUDA
allocator's peak above what was allocated before the step (not measured on CPU).

    python -m pytest benchmarks/bench_head.py --benchmark-only -q -p no:cacheprovider
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inform_fast import InfoRMHead, dispatch

IMPLEMENTATIONS = ("authors_eager", "reference_eager", "reference_compile", "triton_fused", "triton_single_kernel")
LATENT = 128
CPU_SIZE = dict(pairs=32, hidden=256, seq=64)


def pytest_generate_tests(metafunc):
    if "size" not in metafunc.fixturenames:
        return
    if metafunc.config.getoption("--gpu-sizes"):
        sizes = [dict(pairs=b, hidden=h, seq=1024) for b in (64, 512, 4096) for h in (2048, 4096, 8192)]
    else:
        sizes = [CPU_SIZE]
    metafunc.parametrize("size", sizes, ids=[f"B{s['pairs']}-H{s['hidden']}" for s in sizes])


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _authors_step(head: InfoRMHead, states_w, states_l, last_w, last_l, beta=0.1):
    """The head on every position, then gather the last token (eager, in the model's dtype)."""
    def per_position(states, last):  # [B, T, H], [B]
        stats = head.encoder(states)  # [B, T, 2L]
        mu, logvar = stats.chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        reward = head.decoder(z).squeeze(-1)  # [B, T]
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)  # [B, T]
        rows = torch.arange(states.shape[0], device=states.device)
        return reward[rows, last].float(), kl[rows, last].float()

    r_w, kl_w = per_position(states_w, last_w)
    r_l, kl_l = per_position(states_l, last_l)
    return -F.logsigmoid(r_w - r_l).mean() + beta * (kl_w + kl_l).mean()


def _fits(size, dtype, device) -> tuple[bool, str]:
    if device != "cuda":
        return True, ""
    # two [B, T, H] input tensors and their two gradients, plus the [B, T, 2L] intermediates
    element = torch.tensor([], dtype=dtype).element_size()
    need = 4 * size["pairs"] * size["seq"] * size["hidden"] * element + 12 * size["pairs"] * size["seq"] * 2 * LATENT * 4
    total = torch.cuda.get_device_properties(0).total_memory
    if need > 0.7 * total:
        return False, f"[B, T, H] tensors need ~{need / 2**30:.0f} GiB, the GPU has {total / 2**30:.0f} GiB"
    return True, ""


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_head_loss_fwd_bwd(benchmark, device, gpu_sizes, size, impl, plumbing):
    dtype = torch.bfloat16 if gpu_sizes else torch.float32
    pairs, hidden, seq = size["pairs"], size["hidden"], size["seq"]
    benchmark.group = f"head+loss fwd+bwd B={pairs} H={hidden} L={LATENT} {str(dtype).replace('torch.', '')}"
    fused = impl.startswith("triton")
    if fused and device != "cuda" and not plumbing:
        pytest.skip("the fused Triton kernels need CUDA (the benchmarks never time the interpreter)")
    if fused and not dispatch.triton_importable():
        pytest.skip("triton is not installed")
    if impl == "authors_eager":
        ok, why = _fits(size, dtype, device)
        if not ok:
            pytest.skip(why)

    torch.manual_seed(0)
    backend = "triton" if fused else "reference"
    h_splits = 0 if impl == "triton_single_kernel" else None
    head = InfoRMHead(hidden, LATENT, backend=backend, h_splits=h_splits).to(device=device, dtype=dtype).train()
    if impl == "authors_eager":
        states_w = torch.randn(pairs, seq, hidden, device=device, dtype=dtype, requires_grad=True)
        states_l = torch.randn(pairs, seq, hidden, device=device, dtype=dtype, requires_grad=True)
        # right padding with ragged lengths: the last real token is somewhere in the second half
        last_w = torch.randint(seq // 2, seq, (pairs,), device=device)
        last_l = torch.randint(seq // 2, seq, (pairs,), device=device)
        inputs = (states_w, states_l)

        def loss_fn():
            return _authors_step(head, states_w, states_l, last_w, last_l)
    else:
        chosen = torch.randn(pairs, hidden, device=device, dtype=dtype, requires_grad=True)
        rejected = torch.randn(pairs, hidden, device=device, dtype=dtype, requires_grad=True)
        inputs = (chosen, rejected)

        def pooled_loss(chosen, rejected):
            return head.pairwise_loss(chosen, rejected, beta=0.1).loss

        fn = torch.compile(pooled_loss) if impl == "reference_compile" else pooled_loss

        def loss_fn():
            return fn(chosen, rejected)

    def step():
        for t in inputs:
            t.grad = None
        head.zero_grad(set_to_none=True)
        loss_fn().backward()
        _sync(device)

    if impl == "reference_compile":
        try:
            step()  # compile outside the timed rounds
        except Exception as error:  # inductor needs a working C++/CUDA toolchain
            pytest.skip(f"torch.compile failed here: {type(error).__name__}: {str(error).splitlines()[0][:200]}")

    peak = None
    if device == "cuda":
        step()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated() - before

    rounds = 20 if gpu_sizes else 2 if plumbing else 10
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=2)
    ours = impl == "triton_fused" or (impl == "reference_eager" and device == "cpu")  # what dispatch picks
    benchmark.extra_info.update(
        role="ours" if ours else "baseline", impl=impl, device=device, dtype=str(dtype).replace("torch.", ""),
        pairs=pairs, hidden=hidden, latent=LATENT, seq=seq if impl == "authors_eager" else None,
        backend=backend, peak_memory_bytes=peak,
    )
    if impl != "authors_eager":
        # the pooled-row work every path must do: 3 GEMMs of [2B, H] x [H, 2L] (forward, dX, dW)
        # and reading X twice / writing dX once; report.py turns these into fractions of the ceilings
        element = torch.tensor([], dtype=dtype).element_size()
        benchmark.extra_info.update(flops=3 * 2 * (2 * pairs) * hidden * (2 * LATENT), bytes=3 * (2 * pairs) * hidden * element)
