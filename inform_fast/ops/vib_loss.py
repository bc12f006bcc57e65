"""Fused InfoRM pairwise loss with the linear decoder, as an autograd.Function.

``linear_pairwise_loss`` is the Triton implementation of the dispatch op "linear_pairwise_loss"
(see ``inform_fast.head``), with the keyword interface of the reference adapter
``inform_fast.head._reference_linear_pairwise_loss``.

One kernel computes the per-pair loss terms and, since the loss is the last node, the gradient
G = d loss / d [mu, logvar] of every row (the Philox noise lives only inside that kernel: it is
neither stored nor needed again). The backward scales G by the upstream gradient: dX = s G W
(one kernel for chosen and rejected rows), dW = s G^T X (one kernel, deterministic), db = s sum G.
Only ``loss`` is differentiable; the metrics and rewards are returned detached.
"""
from __future__ import annotations

import torch

from inform_fast import reference
from inform_fast.kernels import vib_head as K
from inform_fast.ops.vib_encode import _check_encoder_args


class LinearPairwiseLossFunction(torch.autograd.Function):
    """(chosen [B, H], rejected [B, H], enc_weight [2L, H], enc_bias [2L]|None, dec_weight [L],
    dec_bias [1]|None, noise_chosen [B, L]|None, noise_rejected [B, L]|None, margin [B]|None,
    seed, noise_mode, kl_authors, beta) -> (loss [], means [4], rewards [2, B]).

    ``means``: the batch means of -logsigmoid(r_w - r_l - margin), KL_w + KL_l, r_w - r_l and
    [r_w > r_l] (preference loss, KL, reward margin, accuracy: one reduction for all four);
    ``rewards``: r_w, r_l. Only ``loss`` has a gradient (w.r.t. chosen, rejected, the encoder and
    decoder parameters).
    """

    @staticmethod
    def forward(ctx, chosen, rejected, enc_weight, enc_bias, dec_weight, dec_bias,
                noise_chosen, noise_rejected, margin, seed: int, noise_mode: int, kl_authors: bool, beta: float):
        store_grad = any(ctx.needs_input_grad[:6])
        pair, rewards, g, dwdec = K.pair_loss_forward(
            chosen, rejected, enc_weight, enc_bias, dec_weight, dec_bias, noise_chosen, noise_rejected,
            margin, seed, noise_mode, kl_authors, beta, store_grad,
        )
        means = pair.mean(dim=1)
        loss = torch.add(means[0], means[1], alpha=beta)
        ctx.save_for_backward(chosen, rejected, enc_weight, g, dwdec)
        ctx.has_enc_bias, ctx.dec_weight_shape = enc_bias is not None, dec_weight.shape
        ctx.dtypes = (enc_bias.dtype if enc_bias is not None else None, dec_weight.dtype,
                      dec_bias.dtype if dec_bias is not None else None)
        ctx.mark_non_differentiable(means, rewards)
        return loss, means, rewards

    @staticmethod
    def backward(ctx, grad_loss, _grad_means, _grad_rewards):
        chosen, rejected, enc_weight, g, dwdec = ctx.saved_tensors
        need = ctx.needs_input_grad
        pairs = chosen.shape[0]
        scale = grad_loss.detach().to(g.dtype).reshape(1).contiguous()
        d_chosen = d_rejected = d_weight = d_bias = d_dec_weight = d_dec_bias = None
        if need[0] or need[1]:
            weight_c = K._dot_operands(chosen, enc_weight)[1]
            dx = K.grad_input(g, weight_c, scale, chosen.dtype)  # [2B, H]
            d_chosen, d_rejected = dx[:pairs], dx[pairs:]
        if need[2]:
            chosen_c, weight_c = K._dot_operands(chosen, enc_weight)
            rejected_c = K._dot_operands(rejected, enc_weight)[0]
            d_weight = K.grad_weight(g, chosen_c, rejected_c, scale, enc_weight.dtype)
        bias_dtype, dec_w_dtype, dec_b_dtype = ctx.dtypes
        if need[3]:
            d_bias = (g.sum(0) * scale).to(bias_dtype)
        if need[4]:
            d_dec_weight = (dwdec.sum(0) * scale).to(dec_w_dtype).reshape(ctx.dec_weight_shape)
        if need[5]:
            # the decoder bias cancels in r_w - r_l and the KL does not see it: its gradient is 0
            d_dec_bias = torch.zeros(1, device=g.device, dtype=dec_b_dtype)
        return (d_chosen if need[0] else None, d_rejected if need[1] else None, d_weight, d_bias,
                d_dec_weight, d_dec_bias, None, None, None, None, None, None, None)


def _margin_tensor(margin, pairs: int, device, dtype):
    """None | float | 0-d tensor | [B] tensor -> None or a [B] tensor (stride 0 for a scalar)."""
    if margin is None:
        return None
    if isinstance(margin, torch.Tensor):
        margin = margin.detach().to(device=device, dtype=dtype)
        if margin.dim() == 0:
            return margin.reshape(1).expand(pairs)
        if tuple(margin.shape) != (pairs,):
            raise ValueError(f"margin: expected a scalar or shape ({pairs},), got {tuple(margin.shape)}")
        return margin.contiguous()
    return torch.full((1,), float(margin), device=device, dtype=dtype).expand(pairs)


def linear_pairwise_loss(
    chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
    *, noise_chosen=None, noise_rejected=None, sample=False, beta=0.1, margin=None, kl_mode="standard",
):
    """Fused InfoRM loss over B pairs of pooled rows with the linear decoder.

    Args:
        chosen, rejected: [B, H] pooled rows (same dtype: float16 / bfloat16 / float32; float64
            for gradcheck). encoder_weight [2L, H], encoder_bias [2L]|None, decoder_weight [1, L],
            decoder_bias [1]|None, each float32 or low precision (gradients come back in each
            parameter's dtype).
        noise_chosen, noise_rejected: optional [B, L] noise. With ``sample`` a missing one is drawn
            in-kernel (Philox, seeded from torch's RNG); without ``sample`` a missing one means z = mu.
        beta: KL weight. margin: None, a float, a 0-d or a [B] tensor (not differentiated).
        kl_mode: "standard" or "authors" (the authors' per-row KL, and their weighting: beta times
            the mean over the 2B rows, ``reference.KL_PAIR_WEIGHT``).

    Returns (reference.PairwiseLoss, reward_chosen [B], reward_rejected [B]), float32 (float64 in);
    only ``loss`` carries a gradient.
    """
    latent = _check_encoder_args(chosen, encoder_weight, encoder_bias)
    if rejected.shape != chosen.shape:
        raise ValueError(f"rejected: expected shape {tuple(chosen.shape)} like chosen, got {tuple(rejected.shape)}")
    if rejected.dtype != chosen.dtype:
        raise ValueError(f"rejected: dtype {rejected.dtype} differs from chosen's {chosen.dtype}")
    if decoder_weight.numel() != latent:
        raise ValueError(f"decoder_weight: expected [1, {latent}], got shape {tuple(decoder_weight.shape)}")
    if decoder_bias is not None and decoder_bias.numel() != 1:
        raise ValueError(f"decoder_bias: expected shape (1,), got {tuple(decoder_bias.shape)}")
    if kl_mode not in reference.KL_MODES:
        raise ValueError(f"kl_mode: expected one of {reference.KL_MODES}, got {kl_mode!r}")
    pairs = chosen.shape[0]
    if pairs == 0:
        raise ValueError("chosen: no pairs (batch size 0)")
    for name, noise in (("noise_chosen", noise_chosen), ("noise_rejected", noise_rejected)):
        if noise is not None and tuple(noise.shape) != (pairs, latent):
            raise ValueError(f"{name}: expected shape ({pairs}, {latent}), got {tuple(noise.shape)}")
    # the kernel computes mean_b[KL_w + KL_l]; the mode's weight of it folds into beta
    weight = reference.KL_PAIR_WEIGHT[kl_mode]
    acc = reference.accumulation_dtype(chosen.dtype)
    device = chosen.device
    seed, mode = 0, K.NOISE_NONE
    if noise_chosen is not None or noise_rejected is not None:
        mode = K.NOISE_EXPLICIT
        filled = []
        for noise, row_base in ((noise_chosen, 0), (noise_rejected, pairs)):
            if noise is None:
                noise = (K.philox_noise(K.draw_seed(), pairs, latent, device, row_base) if sample
                         else torch.zeros(pairs, latent, device=device))
            filled.append(noise.detach().to(acc).contiguous())
        noise_chosen, noise_rejected = filled
    elif sample:
        seed, mode = K.draw_seed(), K.NOISE_PHILOX

    loss, means, rewards = LinearPairwiseLossFunction.apply(
        chosen.contiguous(), rejected.contiguous(), encoder_weight.contiguous(),
        None if encoder_bias is None else encoder_bias.contiguous(),
        decoder_weight.reshape(-1).contiguous(), None if decoder_bias is None else decoder_bias.reshape(-1).contiguous(),
        noise_chosen, noise_rejected, _margin_tensor(margin, pairs, device, acc),
        seed, mode, kl_mode == "authors", float(beta) * weight,
    )
    terms = reference.PairwiseLoss(
        loss=loss, preference_loss=means[0], kl=means[1] * weight, accuracy=means[3], reward_margin=means[2],
    )
    return terms, rewards[0], rewards[1]
