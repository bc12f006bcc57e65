"""The InfoRM head's ops: the encoder of the bottleneck and the fused pairwise loss.

Four ops in ``torch.ops.inform_fast``, each with a fake implementation; the two forwards have
their backward registered (``torch.library.register_autograd``) as the other two:

* ``vib_encode(pooled, weight, bias?, noise?, seed?, kl_mode, backend?, h_splits?)
  -> (mu, logvar, z [N, L], kl [N])``, and ``vib_encode_backward``;
* ``linear_pairwise_loss(chosen, rejected, encoder_weight, encoder_bias?, decoder_weight,
  decoder_bias?, noise_chosen?, noise_rejected?, margin?, seed?, kl_mode, beta,
  center_rewards_coefficient, store_grad, backend?, h_splits?)
  -> (loss [], terms [5], rewards [2, B], stats [2B, 2L], grad [2B, 2L], grad_decoder [L + 1])``,
  and ``linear_pairwise_loss_backward``. The forward computes G = d loss / d stats, because the
  loss is the last node of the graph; the backward only scales it by the upstream gradient.

Randomness: the ops are pure functions of their inputs. Sampling draws a seed ([1] int64 on the
CPU, from torch's default generator, so ``torch.manual_seed`` reproduces it) outside the op; the
Triton backend turns it into Philox noise in-kernel (regenerated in the backward, never stored),
the reference into ``torch.randn`` from a generator seeded with it.

``vib_encode`` and ``linear_pairwise_loss`` below are the functional API the head calls: they
check their arguments (errors name them), draw the seed and call the ops.
"""
from __future__ import annotations

from typing import Optional

import torch

from inform_fast import dispatch, reference
from inform_fast.reference import LinearPairwiseLoss, PairwiseLoss, accumulation_dtype
from inform_fast.validation import check_beta, check_choice, check_margin, check_noise, check_real

Tensor = torch.Tensor


# ------------------------------------------------------------------------------------------------
# reference backends: the signatures of the Triton launchers in inform_fast.kernels.vib_head


def _seeded_noise(seed: int, rows: int, latent: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Standard-normal noise [rows, latent] of the reference backend for ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return torch.randn(rows, latent, generator=generator, device=device, dtype=dtype)


def vib_encode_reference(pooled, weight, bias, noise, seed, kl_mode, h_splits=None):
    """The reference backend of "vib_encode" (``h_splits``, a kernel layout, is unused)."""
    if noise is None and seed is not None:
        noise = _seeded_noise(seed, pooled.shape[0], weight.shape[0] // 2, pooled.device, accumulation_dtype(pooled.dtype))
    return reference.vib_encode(pooled, weight, bias, noise, kl_mode)


def vib_encode_backward_reference(grad_mu, grad_logvar, grad_z, grad_kl, pooled, weight, mu, logvar, noise, seed,
                                  kl_mode, need_input, need_weight, h_splits=None):
    """The reference backend of "vib_encode_backward": (G, dX or [0], dW or [0])."""
    if noise is None and seed is not None:
        noise = _seeded_noise(seed, pooled.shape[0], weight.shape[0] // 2, pooled.device, mu.dtype)
    grad = reference.vib_encode_backward(grad_mu, grad_logvar, grad_z, grad_kl, mu, logvar, noise, kl_mode)
    nothing = grad.new_empty(0)
    d_pooled = (grad @ weight.to(grad.dtype)).to(pooled.dtype) if need_input else nothing
    d_weight = (grad.t() @ pooled.to(grad.dtype)).to(weight.dtype) if need_weight else nothing
    return grad, d_pooled, d_weight


def linear_pairwise_loss_reference(chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
                                   noise_chosen, noise_rejected, margin, seed, kl_mode, beta, center_rewards_coefficient,
                                   store_grad, h_splits=None):
    """The reference backend of "linear_pairwise_loss" (outputs as the Triton launcher's)."""
    pairs = chosen.shape[0]
    if noise_chosen is None and seed is not None:
        noise = _seeded_noise(seed, 2 * pairs, encoder_weight.shape[0] // 2, chosen.device, accumulation_dtype(chosen.dtype))
        noise_chosen, noise_rejected = noise[:pairs], noise[pairs:]
    out = reference.linear_pairwise_loss(
        chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias, noise_chosen, noise_rejected,
        beta, margin, kl_mode, center_rewards_coefficient, store_grad,
    )
    terms = out.terms
    centring = (out.reward_chosen + out.reward_rejected).square().mean()
    nothing = terms.loss.new_empty(0)
    grad_decoder = torch.cat([out.grad_decoder_weight, out.grad_decoder_bias.reshape(1)]) if store_grad else nothing
    return (terms.loss, torch.stack([terms.preference_loss, terms.kl, terms.reward_margin, terms.accuracy, centring]),
            torch.stack([out.reward_chosen, out.reward_rejected]), torch.cat([out.mu, out.logvar], dim=-1),
            out.grad if store_grad else nothing, grad_decoder)


def linear_pairwise_loss_backward_reference(grad_loss, chosen, rejected, encoder_weight, grad, need_input, need_weight,
                                            h_splits=None):
    """The reference backend of "linear_pairwise_loss_backward": (dX [2B, H] or [0], dW or [0])."""
    scaled = grad * grad_loss.to(grad.dtype)
    nothing = grad.new_empty(0)
    d_rows = (scaled @ encoder_weight.to(grad.dtype)).to(chosen.dtype) if need_input else nothing
    rows = torch.cat([chosen, rejected]) if need_weight else None
    d_weight = (scaled.t() @ rows.to(grad.dtype)).to(encoder_weight.dtype) if need_weight else nothing
    return d_rows, d_weight


# ------------------------------------------------------------------------------------------------
# the registered ops


def _seed_value(seed: Optional[Tensor]) -> Optional[int]:
    return None if seed is None else int(seed.reshape(-1)[0])


def _distinct(outputs, inputs) -> tuple:
    """``outputs`` with no tensor sharing memory with an input or an earlier output (a registered
    op's outputs must not alias): such a tensor, or a non-contiguous one, is copied."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, Tensor) and t.numel()}
    fresh = []
    for tensor in outputs:
        if not tensor.numel():  # an unused output: a storage of its own
            fresh.append(tensor.new_empty(tensor.shape))
            continue
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen or tensor._base is not None or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
            pointer = tensor.untyped_storage().data_ptr()
        seen.add(pointer)
        fresh.append(tensor)
    return tuple(fresh)


@torch.library.custom_op("inform_fast::vib_encode", mutates_args=())
def _vib_encode_op(pooled: Tensor, weight: Tensor, bias: Optional[Tensor], noise: Optional[Tensor], seed: Optional[Tensor],
                   kl_mode: str, backend: Optional[str], h_splits: Optional[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _, implementation = dispatch.resolve("vib_encode", pooled.device, backend)
    outputs = implementation(pooled, weight, bias, noise, _seed_value(seed), kl_mode, h_splits)
    return _distinct(outputs, (pooled, weight, bias, noise))


@_vib_encode_op.register_fake
def _(pooled, weight, bias, noise, seed, kl_mode, backend, h_splits):
    mu = pooled.new_empty(pooled.shape[0], weight.shape[0] // 2, dtype=accumulation_dtype(pooled.dtype))
    return mu, torch.empty_like(mu), torch.empty_like(mu), mu.new_empty(pooled.shape[0])


@torch.library.custom_op("inform_fast::vib_encode_backward", mutates_args=())
def _vib_encode_backward_op(grad_mu: Tensor, grad_logvar: Tensor, grad_z: Tensor, grad_kl: Tensor, pooled: Tensor,
                            weight: Tensor, mu: Tensor, logvar: Tensor, noise: Optional[Tensor], seed: Optional[Tensor],
                            kl_mode: str, need_input: bool, need_weight: bool, backend: Optional[str],
                            h_splits: Optional[int]) -> tuple[Tensor, Tensor, Tensor]:
    _, implementation = dispatch.resolve("vib_encode_backward", pooled.device, backend)
    outputs = implementation(grad_mu, grad_logvar, grad_z, grad_kl, pooled, weight, mu, logvar, noise,
                             _seed_value(seed), kl_mode, need_input, need_weight, h_splits)
    return _distinct(outputs, (grad_mu, grad_logvar, grad_z, grad_kl, pooled, weight, mu, logvar, noise))


@_vib_encode_backward_op.register_fake
def _(grad_mu, grad_logvar, grad_z, grad_kl, pooled, weight, mu, logvar, noise, seed, kl_mode, need_input, need_weight,
      backend, h_splits):
    grad = mu.new_empty(mu.shape[0], 2 * mu.shape[1])
    d_pooled = torch.empty_like(pooled) if need_input else grad.new_empty(0)
    d_weight = torch.empty_like(weight) if need_weight else grad.new_empty(0)
    return grad, d_pooled, d_weight


def _vib_encode_setup(ctx, inputs, output):
    pooled, weight, bias, noise, seed, kl_mode, backend, h_splits = inputs
    mu, logvar, _, _ = output
    ctx.save_for_backward(pooled, weight, mu, logvar, noise, seed)
    ctx.options = (None if bias is None else bias.dtype, kl_mode, backend, h_splits)


def _vib_encode_backward(ctx, grad_mu, grad_logvar, grad_z, grad_kl):
    pooled, weight, mu, logvar, noise, seed = ctx.saved_tensors
    bias_dtype, kl_mode, backend, h_splits = ctx.options
    need = ctx.needs_input_grad
    grads = [torch.zeros_like(t) if g is None else g.contiguous()
             for g, t in ((grad_mu, mu), (grad_logvar, logvar), (grad_z, mu), (grad_kl, mu[:, 0]))]
    grad, d_pooled, d_weight = torch.ops.inform_fast.vib_encode_backward(
        *grads, pooled, weight, mu, logvar, noise, seed, kl_mode, need[0], need[1], backend, h_splits)
    d_bias = grad.sum(0).to(bias_dtype) if bias_dtype is not None and need[2] else None
    return (d_pooled if need[0] else None, d_weight if need[1] else None, d_bias) + (None,) * 5


_vib_encode_op.register_autograd(_vib_encode_backward, setup_context=_vib_encode_setup)


@torch.library.custom_op("inform_fast::linear_pairwise_loss", mutates_args=())
def _linear_pairwise_loss_op(
    chosen: Tensor, rejected: Tensor, encoder_weight: Tensor, encoder_bias: Optional[Tensor], decoder_weight: Tensor,
    decoder_bias: Optional[Tensor], noise_chosen: Optional[Tensor], noise_rejected: Optional[Tensor],
    margin: Optional[Tensor], seed: Optional[Tensor], kl_mode: str, beta: float, center_rewards_coefficient: float,
    store_grad: bool, backend: Optional[str], h_splits: Optional[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    _, implementation = dispatch.resolve("linear_pairwise_loss", chosen.device, backend)
    outputs = implementation(chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias, noise_chosen,
                             noise_rejected, margin, _seed_value(seed), kl_mode, beta, center_rewards_coefficient,
                             store_grad, h_splits)
    return _distinct(outputs, (chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
                               noise_chosen, noise_rejected, margin))


@_linear_pairwise_loss_op.register_fake
def _(chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias, noise_chosen, noise_rejected, margin,
      seed, kl_mode, beta, center_rewards_coefficient, store_grad, backend, h_splits):
    pairs, latent = chosen.shape[0], encoder_weight.shape[0] // 2
    loss = chosen.new_empty((), dtype=accumulation_dtype(chosen.dtype))
    stats = loss.new_empty(2 * pairs, 2 * latent)
    grad = torch.empty_like(stats) if store_grad else loss.new_empty(0)
    grad_decoder = loss.new_empty(latent + 1) if store_grad else loss.new_empty(0)
    return loss, loss.new_empty(5), loss.new_empty(2, pairs), stats, grad, grad_decoder


@torch.library.custom_op("inform_fast::linear_pairwise_loss_backward", mutates_args=())
def _linear_pairwise_loss_backward_op(grad_loss: Tensor, chosen: Tensor, rejected: Tensor, encoder_weight: Tensor,
                                      grad: Tensor, need_input: bool, need_weight: bool, backend: Optional[str],
                                      h_splits: Optional[int]) -> tuple[Tensor, Tensor]:
    _, implementation = dispatch.resolve("linear_pairwise_loss_backward", chosen.device, backend)
    outputs = implementation(grad_loss, chosen, rejected, encoder_weight, grad, need_input, need_weight, h_splits)
    return _distinct(outputs, (grad_loss, chosen, rejected, encoder_weight, grad))


@_linear_pairwise_loss_backward_op.register_fake
def _(grad_loss, chosen, rejected, encoder_weight, grad, need_input, need_weight, backend, h_splits):
    d_rows = chosen.new_empty(2 * chosen.shape[0], chosen.shape[1]) if need_input else grad.new_empty(0)
    return d_rows, torch.empty_like(encoder_weight) if need_weight else grad.new_empty(0)


def _linear_pairwise_loss_setup(ctx, inputs, output):
    chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias = inputs[:6]
    backend, h_splits = inputs[-2:]
    _, terms, rewards, stats, grad, grad_decoder = output
    ctx.save_for_backward(chosen, rejected, encoder_weight, grad, grad_decoder)
    ctx.options = (None if encoder_bias is None else encoder_bias.dtype, decoder_weight.shape, decoder_weight.dtype,
                   None if decoder_bias is None else (decoder_bias.shape, decoder_bias.dtype), backend, h_splits)
    ctx.mark_non_differentiable(terms, rewards, stats, grad, grad_decoder)


def _linear_pairwise_loss_backward(ctx, grad_loss, *_):
    chosen, rejected, encoder_weight, grad, grad_decoder = ctx.saved_tensors
    bias_dtype, decoder_shape, decoder_dtype, decoder_bias, backend, h_splits = ctx.options
    need = ctx.needs_input_grad
    d_rows, d_weight = torch.ops.inform_fast.linear_pairwise_loss_backward(
        grad_loss, chosen, rejected, encoder_weight, grad, need[0] or need[1], need[2], backend, h_splits)
    pairs = chosen.shape[0]
    scale = grad_loss.to(grad.dtype)
    d_bias = (grad.sum(0) * scale).to(bias_dtype) if bias_dtype is not None and need[3] else None
    d_decoder = (grad_decoder[:-1] * scale).to(decoder_dtype).reshape(decoder_shape) if need[4] else None
    d_decoder_bias = None
    if decoder_bias is not None and need[5]:
        d_decoder_bias = (grad_decoder[-1:] * scale).to(decoder_bias[1]).reshape(decoder_bias[0])
    return ((d_rows[:pairs] if need[0] else None), (d_rows[pairs:] if need[1] else None), (d_weight if need[2] else None),
            d_bias, d_decoder, d_decoder_bias) + (None,) * 10


_linear_pairwise_loss_op.register_autograd(_linear_pairwise_loss_backward, setup_context=_linear_pairwise_loss_setup)


# ------------------------------------------------------------------------------------------------
# functional API


def draw_seed() -> Tensor:
    """A Philox / generator seed [1] (int64, CPU) from torch's default generator."""
    return torch.randint(0, 2**31 - 1, (1,))


def _check_encoder_args(pooled: Tensor, weight: Tensor, bias: Optional[Tensor]) -> int:
    """Shape checks shared by the ops; returns L."""
    if pooled.dim() != 2:
        raise ValueError(f"pooled: expected [N, H], got shape {tuple(pooled.shape)}")
    if weight.dim() != 2 or weight.shape[0] % 2 != 0 or weight.shape[0] == 0 or weight.shape[1] != pooled.shape[1]:
        raise ValueError(f"weight: expected [2L, H] with H = {pooled.shape[1]}, got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return weight.shape[0] // 2


def vib_encode(pooled: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, noise: Optional[Tensor] = None,
               sample: bool = False, kl_mode: str = "standard", backend: Optional[str] = None,
               h_splits: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The encoder of the bottleneck (op "vib_encode").

    Args:
        pooled: [N, H] float16 / bfloat16 / float32 / float64 (accumulated in float32, float64 for float64).
        weight: [2L, H] encoder weight (nn.Linear layout; first L rows give mu). bias: [2L] or None.
        noise: optional [N, L] standard-normal noise (used whenever given).
        sample: without ``noise``, draw the noise (reproducible under ``torch.manual_seed``);
            otherwise z = mu.
        kl_mode: "standard" or "authors" (see ``inform_fast.reference.kl_divergence``).
        backend: None (automatic), "reference" or "triton" (see ``inform_fast.dispatch``).
        h_splits: the Triton kernels' split-H layout (``inform_fast.kernels.vib_head``).

    Returns (mu [N, L], logvar [N, L], z [N, L], kl [N]), float32 (float64 for float64 input).
    """
    latent = _check_encoder_args(pooled, weight, bias)
    check_choice("kl_mode", kl_mode, reference.KL_MODES)
    check_noise("noise", noise, pooled.shape[0], latent)
    seed = draw_seed() if noise is None and sample else None
    return torch.ops.inform_fast.vib_encode(pooled, weight, bias, noise, seed, kl_mode, backend, h_splits)


def _margin_tensor(margin, pairs: int, device, dtype) -> Optional[Tensor]:
    """None | float | 0-d tensor | [B] tensor -> None or a [B] tensor (stride 0 for a scalar)."""
    margin = check_margin(margin, pairs)
    if margin is None:
        return None
    if isinstance(margin, Tensor):
        margin = margin.detach().to(device=device, dtype=dtype)
        return margin.reshape(1).expand(pairs) if margin.dim() == 0 else margin
    return torch.full((1,), margin, device=device, dtype=dtype).expand(pairs)


def linear_pairwise_loss(
    chosen: Tensor, rejected: Tensor, encoder_weight: Tensor, encoder_bias: Optional[Tensor], decoder_weight: Tensor,
    decoder_bias: Optional[Tensor], *, noise_chosen: Optional[Tensor] = None, noise_rejected: Optional[Tensor] = None,
    sample: bool = False, beta: float = 0.1, margin=None, kl_mode: str = "standard",
    center_rewards_coefficient: float = 0.0, backend: Optional[str] = None, h_splits: Optional[int] = None,
) -> LinearPairwiseLoss:
    """The InfoRM loss over B pairs of pooled rows with the linear decoder (op "linear_pairwise_loss").

    Args:
        chosen, rejected: [B, H] pooled rows (same dtype: float16 / bfloat16 / float32; float64
            for gradcheck). encoder_weight [2L, H], encoder_bias [2L]|None, decoder_weight [1, L],
            decoder_bias [1]|None, each float32 or low precision (gradients come back in each
            parameter's dtype).
        noise_chosen, noise_rejected: optional [B, L] noise. With ``sample`` missing noise is
            drawn (one side given: ``torch.randn`` for the other); without it, z = mu on a side
            without noise.
        beta: KL weight. margin: None, a float, a 0-d or a [B] tensor (not differentiated).
        kl_mode: "standard" or "authors" (the authors' per-row KL, and their weighting: beta times
            the mean over the 2B rows, ``reference.KL_PAIR_WEIGHT``).
        center_rewards_coefficient: c of TRL's centring term c * mean((r_w + r_l)^2).
        backend, h_splits: as for ``vib_encode``.

    Returns ``reference.LinearPairwiseLoss`` (float32, float64 for float64 input) whose ``grad*``
    fields are None (the registered backward uses them); only ``terms.loss`` carries a gradient.
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
    check_choice("kl_mode", kl_mode, reference.KL_MODES)
    beta = check_beta(beta)
    center_rewards_coefficient = check_real("center_rewards_coefficient", center_rewards_coefficient)
    pairs = chosen.shape[0]
    if pairs == 0:
        raise ValueError("chosen: no pairs (batch size 0)")
    check_noise("noise_chosen", noise_chosen, pairs, latent)
    check_noise("noise_rejected", noise_rejected, pairs, latent)
    acc = accumulation_dtype(chosen.dtype)
    seed = None
    if (noise_chosen is None) != (noise_rejected is None):
        fill = torch.randn if sample else torch.zeros  # zeros: z = mu on that side
        missing = fill(pairs, latent, device=chosen.device, dtype=acc)
        noise_chosen, noise_rejected = (missing, noise_rejected) if noise_chosen is None else (noise_chosen, missing)
    elif noise_chosen is None and sample:
        seed = draw_seed()
    parameters = (chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias)
    store_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in parameters)
    loss, terms, rewards, stats, _, _ = torch.ops.inform_fast.linear_pairwise_loss(
        chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias, noise_chosen, noise_rejected,
        _margin_tensor(margin, pairs, chosen.device, acc), seed, kl_mode, float(beta), float(center_rewards_coefficient),
        store_grad, backend, h_splits,
    )
    metrics = PairwiseLoss(loss=loss, preference_loss=terms[0], kl=terms[1], accuracy=terms[3], reward_margin=terms[2])
    mu, logvar = stats.split(latent, dim=-1)
    return LinearPairwiseLoss(metrics, rewards[0], rewards[1], mu, logvar, None, None, None)
