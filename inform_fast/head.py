"""``InfoRMHead``: the variational information bottleneck between a backbone and the reward.

Usable alone on any hidden states; the Hugging Face reward model wraps it. The math lives in
``inform_fast.reference``; this module validates input, pools, and dispatches the hot path to
the fused Triton kernels (CUDA) or the reference (everywhere else) through ``inform_fast.dispatch``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import nn

from inform_fast import dispatch, reference
from inform_fast.validation import (
    check_attention_mask,
    check_choice,
    check_finite,
    check_float_tensor,
    check_noise,
    check_positive_int,
    check_real,
    check_same_rows,
)

DECODERS = ("linear", "mlp")

dispatch.register("vib_encode", "reference", "inform_fast.head:_reference_vib_encode")
dispatch.register("vib_encode", "triton", "inform_fast.ops.vib_encode:vib_encode")
dispatch.register("linear_pairwise_loss", "reference", "inform_fast.head:_reference_linear_pairwise_loss")
dispatch.register("linear_pairwise_loss", "triton", "inform_fast.ops.vib_loss:linear_pairwise_loss")


class InfoRMHeadOutput(NamedTuple):
    """Output of ``InfoRMHead.forward`` for N sequences (float32; float64 for float64 input).

    A NamedTuple, not a dataclass: hooks that look for the tensors a module returns (DeepSpeed
    ZeRO-3 re-gathers the head's weights for the backward through them) see into tuples.
    """

    reward: torch.Tensor  # [N]
    mu: torch.Tensor  # [N, L] mean of the latent (the detection latent)
    logvar: torch.Tensor  # [N, L] log-variance of the latent
    z: torch.Tensor  # [N, L] sampled latent (training) or mu (evaluation)
    kl: torch.Tensor  # [N] KL(q(z|h) || N(0, I)) per sequence


@dataclass
class InfoRMLossOutput:
    """Output of the pairwise InfoRM loss over B preference pairs. Only ``loss`` is meant for backward."""

    loss: torch.Tensor  # [] preference_loss + beta * kl
    preference_loss: torch.Tensor  # [] mean of -logsigmoid(r_w - r_l - margin)
    kl: torch.Tensor  # [] mean over pairs of KL_w + KL_l
    accuracy: torch.Tensor  # [] fraction of pairs with r_w > r_l
    reward_margin: torch.Tensor  # [] mean of r_w - r_l
    reward_chosen: torch.Tensor  # [B]
    reward_rejected: torch.Tensor  # [B]


class GatedMLPDecoder(nn.Module):
    """reward = W_down(act(W_gate z) * (W_up z)), intermediate size 4L by default; ``activation``
    a name in ``reference.ACTIVATIONS`` (SiLU by default; the authors use the backbone's)."""

    def __init__(self, latent_dim: int, intermediate_size: Optional[int] = None, bias: bool = False, activation: str = "silu"):
        super().__init__()
        intermediate_size = intermediate_size or 4 * latent_dim
        self.activation = check_choice("decoder_activation", activation, tuple(reference.ACTIVATIONS))
        self.gate_proj = nn.Linear(latent_dim, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(latent_dim, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, 1, bias=bias)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [N, L] -> [N]
        return reference.decode_gated_mlp(
            z,
            self.gate_proj.weight,
            self.up_proj.weight,
            self.down_proj.weight,
            self.gate_proj.bias,
            self.up_proj.bias,
            self.down_proj.bias,
            activation=self.activation,
        )


def _draw_noise(mu: torch.Tensor, noise: Optional[torch.Tensor], sample: bool) -> Optional[torch.Tensor]:
    if noise is not None or not sample:
        return noise
    return torch.randn_like(mu)


def _reference_vib_encode(pooled, weight, bias, *, noise=None, sample=False, kl_mode="standard"):
    """Reference adapter for the "vib_encode" op: returns (mu, logvar, z, kl)."""
    mu, logvar = reference.vib_encode(pooled, weight, bias)
    z = reference.reparameterize(mu, logvar, _draw_noise(mu, noise, sample))
    return mu, logvar, z, reference.kl_divergence(mu, logvar, kl_mode)


def _reference_linear_pairwise_loss(
    chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
    *, noise_chosen=None, noise_rejected=None, sample=False, beta=0.1, margin=None, kl_mode="standard",
):
    """Reference adapter for the "linear_pairwise_loss" op: returns (PairwiseLoss, r_w, r_l)."""
    latent_dim = encoder_weight.shape[0] // 2
    if sample:
        acc = reference.accumulation_dtype(chosen.dtype)
        if noise_chosen is None:
            noise_chosen = torch.randn(chosen.shape[0], latent_dim, device=chosen.device, dtype=acc)
        if noise_rejected is None:
            noise_rejected = torch.randn(rejected.shape[0], latent_dim, device=rejected.device, dtype=acc)
    return reference.linear_head_pairwise_loss(
        chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
        noise_chosen=noise_chosen, noise_rejected=noise_rejected, beta=beta, margin=margin, kl_mode=kl_mode,
    )


class InfoRMHead(nn.Module):
    """Variational information-bottleneck reward head.

    Args:
        hidden_size: H, the backbone's hidden size.
        latent_dim: L, the bottleneck size (default 128). With ``beta`` it bounds how much of the
            input the reward can use.
        decoder: "linear" (reward = w . z + b, the default and the fused path) or "mlp" (gated MLP
            with intermediate size 4L).
        bias: whether the encoder and decoder layers have biases.
        kl: "standard" (per-dimension KL to N(0, I), the default) or "authors" (the authors' code:
            mu and logvar averaged over the latent dimensions before the scalar formula, and the
            loss weighting beta * mean over the 2B rows: beta = their kl_loss_coef gives their loss).
        decoder_activation: the MLP decoder's activation, a name in ``reference.ACTIVATIONS``
            ("silu" by default; the authors' code uses the backbone's, e.g. "gelu_new" for GPT-2).
        backend: None (automatic), "reference" or "triton"; ``INFORM_FAST_BACKEND`` also forces one.
        check_finite: refuse NaN / Inf hidden states with an error naming the argument and the first
            bad index (default). The check reads only the pooled [N, H] rows, one reduction (an
            elementwise search only when that sum is not finite); on CUDA it waits for the device
            once per call; skipped while ``torch.compile`` traces. ``False`` turns it off (NaN / Inf
            rewards and loss then follow NaN input).

    Submodules: ``encoder`` = nn.Linear(H, 2L) whose first L outputs are mu and last L are
    logvar; ``decoder`` = nn.Linear(L, 1) or ``GatedMLPDecoder``.
    """

    def __init__(
        self,
        hidden_size: int,
        latent_dim: int = 128,
        decoder: str = "linear",
        bias: bool = False,
        kl: str = "standard",
        backend: Optional[str] = None,
        decoder_activation: str = "silu",
        check_finite: bool = True,
    ):
        super().__init__()
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.decoder_type = check_choice("decoder", decoder, DECODERS)
        self.kl_mode = check_choice("kl", kl, reference.KL_MODES)
        check_choice("decoder_activation", decoder_activation, tuple(reference.ACTIVATIONS))
        if decoder == "linear" and decoder_activation != "silu":
            raise ValueError(f"decoder_activation: {decoder_activation!r} given, but only decoder='mlp' has an activation")
        if backend is not None:
            dispatch.requested_backend(backend)  # validates the name now rather than at the first call
        self.backend = backend
        if not isinstance(check_finite, bool):
            raise ValueError(f"check_finite: expected True or False, got {check_finite!r}")
        self.check_finite = check_finite
        self.encoder = nn.Linear(hidden_size, 2 * latent_dim, bias=bias)
        if decoder == "linear":
            self.decoder = nn.Linear(latent_dim, 1, bias=bias)
        else:
            self.decoder = GatedMLPDecoder(latent_dim, bias=bias, activation=decoder_activation)

    def extra_repr(self) -> str:
        return f"decoder={self.decoder_type!r}, kl={self.kl_mode!r}"

    def linear_layers(self):
        """(name, module) of the head's linear layers, which it reads weights from directly."""
        if self.decoder_type == "linear":
            return [("encoder", self.encoder), ("decoder", self.decoder)]
        return [("encoder", self.encoder)] + [(f"decoder.{n}", getattr(self.decoder, n)) for n in ("gate_proj", "up_proj", "down_proj")]

    def check_layers(self) -> None:
        """Refuse layers that an adapter library has wrapped: the head reads its layers' weights
        directly (the fused kernels need them), so a wrapper's extra weights, a LoRA adapter's
        say, would be silently bypassed and the head would train, or stay, without them."""
        for name, layer in self.linear_layers():
            # isinstance, not type(): FSDP2 swaps a sharded module's class for a subclass of it
            if not isinstance(layer, nn.Linear) or hasattr(layer, "base_layer"):
                raise ValueError(
                    f"head.{name}: is a {type(layer).__name__}, not a plain nn.Linear; the InfoRM head reads its weights "
                    "directly, so an adapter there would be bypassed. Keep the head out of PEFT's target_modules and "
                    "train it in full with modules_to_save=['head'] (InfoRMRewardTrainer does both for you)"
                )

    # ----------------------------------------------------------------------------------------
    # input handling

    def pool(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, name: str = "hidden_states") -> torch.Tensor:
        """Validate and pool: [N, H] passes through; [B, T, H] + mask [B, T] -> [B, H] at the
        last non-padding token (left or right padding). [B, T, H] without a mask takes position T-1.
        With ``check_finite`` (the default) NaN / Inf in the pooled rows raise, naming ``name``."""
        pooled = self._pool(hidden_states, attention_mask, name)
        # not while torch.compile traces (a host sync breaks the graph), nor on meta tensors (no values)
        if self.check_finite and pooled.device.type != "meta" and not torch.compiler.is_compiling():
            check_finite(name, pooled)
        return pooled

    def _pool(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor], name: str) -> torch.Tensor:
        check_float_tensor(name, hidden_states, ndims=(2, 3))
        if hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(
                f"{name}: last dimension is {hidden_states.shape[-1]} but the head's hidden_size is {self.hidden_size}"
            )
        if hidden_states.dim() == 2:
            if attention_mask is not None:
                raise ValueError(f"attention_mask: given with already pooled {name} of shape {tuple(hidden_states.shape)}; pass [B, T, H] hidden states with it")
            return hidden_states
        batch, seq_len, _ = hidden_states.shape
        if seq_len == 0:
            raise ValueError(f"{name}: sequence length is 0")
        if attention_mask is None:
            return hidden_states[:, -1]
        mask_name = "attention_mask" if name == "hidden_states" else name.replace("hidden", "attention_mask")
        check_attention_mask(mask_name, attention_mask, batch, seq_len)
        return reference.pool_last_token(hidden_states, attention_mask)

    # ----------------------------------------------------------------------------------------
    # forward

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
    ) -> InfoRMHeadOutput:
        """Rewards and latents.

        Args:
            hidden_states: pooled [N, H], or [B, T, H] with ``attention_mask`` [B, T] (the head then
                runs only on each row's last non-padding token). Any float dtype.
            noise: optional [N, L] standard-normal noise for the reparameterisation (training mode
                only; drawn if not given). In eval mode z = mu and ``noise`` is ignored.
        """
        self.check_layers()
        pooled = self.pool(hidden_states, attention_mask)
        rows = pooled.shape[0]
        check_noise("noise", noise, rows, self.latent_dim)
        sample = self.training
        _, encode = dispatch.resolve("vib_encode", pooled.device, self.backend)
        mu, logvar, z, kl = encode(
            pooled, self.encoder.weight, self.encoder.bias,
            noise=noise if sample else None, sample=sample, kl_mode=self.kl_mode,
        )
        reward = self.decode(z)
        return InfoRMHeadOutput(reward=reward, mu=mu, logvar=logvar, z=z, kl=kl)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reward from latents: [N, L] -> [N] (float32, float64 for float64 latents)."""
        if self.decoder_type == "linear":
            return reference.decode_linear(z, self.decoder.weight, self.decoder.bias)
        return self.decoder(z)

    @torch.no_grad()
    def latents(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Detection latents (mu, the evaluation-mode latent), [N, L], without gradients."""
        self.check_layers()
        pooled = self.pool(hidden_states, attention_mask)
        mu, _ = reference.vib_encode(pooled, self.encoder.weight, self.encoder.bias)
        return mu

    # ----------------------------------------------------------------------------------------
    # loss

    def pairwise_loss(
        self,
        chosen_hidden: torch.Tensor,
        rejected_hidden: torch.Tensor,
        beta: float = 0.1,
        margin: Optional[torch.Tensor | float] = None,
        noise_chosen: Optional[torch.Tensor] = None,
        noise_rejected: Optional[torch.Tensor] = None,
        chosen_attention_mask: Optional[torch.Tensor] = None,
        rejected_attention_mask: Optional[torch.Tensor] = None,
    ) -> InfoRMLossOutput:
        """InfoRM loss over B pairs: mean[-logsigmoid(r_w - r_l - margin)] + beta * mean[KL_w + KL_l].

        Args:
            chosen_hidden, rejected_hidden: pooled [B, H], or [B, T, H] with the matching
                ``*_attention_mask`` [B, T].
            beta: weight of the KL term (>= 0). margin: None, a float, or a [B] tensor.
            noise_chosen, noise_rejected: optional [B, L] noise (training mode only).
        """
        self.check_layers()
        chosen = self.pool(chosen_hidden, chosen_attention_mask, name="chosen_hidden")
        rejected = self.pool(rejected_hidden, rejected_attention_mask, name="rejected_hidden")
        check_same_rows("chosen_hidden", chosen, "rejected_hidden", rejected)
        if chosen.shape[0] == 0:
            raise ValueError("chosen_hidden: no pairs (batch size 0)")
        beta = _check_beta(beta)
        margin = _check_margin(margin, chosen.shape[0])
        check_noise("noise_chosen", noise_chosen, chosen.shape[0], self.latent_dim)
        check_noise("noise_rejected", noise_rejected, rejected.shape[0], self.latent_dim)
        sample = self.training
        if not sample:
            noise_chosen = noise_rejected = None

        if self.decoder_type == "linear" and not _partitioned(self):
            _, loss_fn = dispatch.resolve("linear_pairwise_loss", chosen.device, self.backend)
            terms, r_w, r_l = loss_fn(
                chosen, rejected, self.encoder.weight, self.encoder.bias, self.decoder.weight, self.decoder.bias,
                noise_chosen=noise_chosen, noise_rejected=noise_rejected, sample=sample,
                beta=beta, margin=margin, kl_mode=self.kl_mode,
            )
        else:
            # one forward of the head over the chosen and rejected rows, through ``self(...)``:
            # DeepSpeed ZeRO-3 gathers a module's partitioned weights only around its forward
            noise = None
            if noise_chosen is not None or noise_rejected is not None:
                latent_shape = (chosen.shape[0], self.latent_dim)
                acc = reference.accumulation_dtype(chosen.dtype)
                noise = torch.cat([
                    noise_chosen if noise_chosen is not None else torch.randn(latent_shape, device=chosen.device, dtype=acc),
                    noise_rejected if noise_rejected is not None else torch.randn(latent_shape, device=chosen.device, dtype=acc),
                ])
            out = self(torch.cat([chosen, rejected]), noise=noise)
            r_w, r_l = out.reward.chunk(2)
            kl_w, kl_l = out.kl.chunk(2)
            terms = reference.pairwise_loss_from_rewards(r_w, r_l, kl_w, kl_l, beta=beta, margin=margin, kl_mode=self.kl_mode)
        return InfoRMLossOutput(
            loss=terms.loss,
            preference_loss=terms.preference_loss,
            kl=terms.kl,
            accuracy=terms.accuracy,
            reward_margin=terms.reward_margin,
            reward_chosen=r_w,
            reward_rejected=r_l,
        )


def _partitioned(module: nn.Module) -> bool:
    """True under DeepSpeed ZeRO-3, whose partitioned parameters (they carry ``ds_id``) hold their
    full values only inside a module's forward: the fused loss, which reads the weights
    directly, must then go through the forward instead."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _check_beta(beta) -> float:
    return check_real("beta", beta, minimum=0)


def _check_margin(margin, pairs: int):
    if margin is None:
        return None
    if isinstance(margin, torch.Tensor):
        if margin.dim() == 0:
            return margin
        if tuple(margin.shape) != (pairs,):
            raise ValueError(f"margin: expected a scalar or shape ({pairs},), got {tuple(margin.shape)}")
        return margin
    return check_real("margin", margin)


def inform_loss(
    head: InfoRMHead,
    chosen_hidden: torch.Tensor,
    rejected_hidden: torch.Tensor,
    beta: float = 0.1,
    margin: Optional[torch.Tensor | float] = None,
    **kwargs,
) -> InfoRMLossOutput:
    """Functional form of ``InfoRMHead.pairwise_loss`` (same arguments, same output)."""
    return head.pairwise_loss(chosen_hidden, rejected_hidden, beta=beta, margin=margin, **kwargs)
