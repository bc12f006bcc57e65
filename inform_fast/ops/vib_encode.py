"""Fused VIB encoder (projection, split, reparameterisation, KL) as an autograd.Function.

``vib_encode`` is the Triton implementation of the dispatch op "vib_encode" (see
``inform_fast.head``); it has the keyword interface of the reference adapter
``inform_fast.head._reference_vib_encode``.
"""
from __future__ import annotations

from typing import Optional

import torch

from inform_fast import reference
from inform_fast.kernels import vib_head as K


def _check_encoder_args(pooled: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> int:
    """Shape checks shared by the fused ops; returns L."""
    if pooled.dim() != 2:
        raise ValueError(f"pooled: expected [N, H], got shape {tuple(pooled.shape)}")
    if weight.dim() != 2 or weight.shape[0] % 2 != 0 or weight.shape[0] == 0 or weight.shape[1] != pooled.shape[1]:
        raise ValueError(f"weight: expected [2L, H] with H = {pooled.shape[1]}, got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return weight.shape[0] // 2


class VIBEncodeFunction(torch.autograd.Function):
    """(pooled [N, H], weight [2L, H], bias [2L]|None, noise [N, L]|None, seed, noise_mode, kl_authors)
    -> (mu, logvar, z [N, L], kl [N]) in the accumulation dtype.

    noise_mode: 0 z = mu, 1 explicit ``noise``, 2 Philox noise from ``seed`` (regenerated in the
    backward, never stored). Differentiable w.r.t. pooled, weight and bias.
    """

    @staticmethod
    def forward(ctx, pooled, weight, bias, noise, seed: int, noise_mode: int, kl_authors: bool):
        mu, logvar, z, kl = K.encode_forward(pooled, weight, bias, noise, seed, noise_mode, kl_authors)
        ctx.save_for_backward(pooled, weight, bias, mu, logvar, noise)
        ctx.seed, ctx.noise_mode, ctx.kl_authors = seed, noise_mode, kl_authors
        return mu, logvar, z, kl

    @staticmethod
    def backward(ctx, grad_mu, grad_logvar, grad_z, grad_kl):
        pooled, weight, bias, mu, logvar, noise = ctx.saved_tensors
        grads = [g.to(mu.dtype).contiguous() for g in (grad_mu, grad_logvar, grad_z, grad_kl)]
        g, dx = K.encode_backward(pooled, weight, mu, logvar, *grads, noise, ctx.seed, ctx.noise_mode, ctx.kl_authors)
        d_weight = d_bias = None
        if ctx.needs_input_grad[1]:
            x_c, _ = K._dot_operands(pooled, weight)
            d_weight = K.grad_weight(g, x_c, None, K._constant(1.0, g.device, g.dtype), weight.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            d_bias = g.sum(0).to(bias.dtype)
        return (dx if ctx.needs_input_grad[0] else None), d_weight, d_bias, None, None, None, None


def vib_encode(pooled, weight, bias=None, *, noise=None, sample=False, kl_mode="standard"):
    """Fused encoder of the bottleneck.

    Args:
        pooled: [N, H] float16 / bfloat16 / float32 / float64 (accumulated in float32, float64 for float64).
        weight: [2L, H] encoder weight (nn.Linear layout; first L rows give mu). bias: [2L] or None.
        noise: optional [N, L] standard-normal noise (used whenever given).
        sample: without ``noise``, draw the noise in-kernel (Philox, seeded from torch's RNG, so
            ``torch.manual_seed`` makes it reproducible); otherwise z = mu.
        kl_mode: "standard" or "authors" (see ``inform_fast.reference.kl_divergence``).

    Returns (mu [N, L], logvar [N, L], z [N, L], kl [N]), float32 (float64 for float64 input).
    """
    latent = _check_encoder_args(pooled, weight, bias)
    if kl_mode not in reference.KL_MODES:
        raise ValueError(f"kl_mode: expected one of {reference.KL_MODES}, got {kl_mode!r}")
    if noise is not None and tuple(noise.shape) != (pooled.shape[0], latent):
        raise ValueError(f"noise: expected shape ({pooled.shape[0]}, {latent}), got {tuple(noise.shape)}")
    acc = reference.accumulation_dtype(pooled.dtype)
    seed, mode = 0, K.NOISE_NONE
    if noise is not None:
        noise, mode = noise.detach().to(acc).contiguous(), K.NOISE_EXPLICIT
    elif sample:
        seed, mode = K.draw_seed(), K.NOISE_PHILOX
    return VIBEncodeFunction.apply(
        pooled.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
        noise, seed, mode, kl_mode == "authors",
    )
