"""``InfoRMHead``: the variational information bottleneck between a backbone and the reward.

Usable alone on any hidden states; the Hugging Face reward model wraps it. The math lives in
``inform_fast.reference`` (derived in ``docs/math.md``); this module validates input, pools, and
calls the registered ops of ``inform_fast.ops.vib_head``, which run the fused Triton kernels on
CUDA and the reference everywhere else (``inform_fast.dispatch``).

The training loss has one path: ``InfoRMHead.forward`` with ``num_pairs`` (what
``InfoRMForRewardModel.forward`` calls, so that DeepSpeed ZeRO-3 gathers the head's weights
around it), and ``pairwise_loss`` on separate chosen / rejected rows, both through the same op.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from inform_fast import dispatch, reference
from inform_fast.ops import vib_head as ops
from inform_fast.validation import (
    check_attention_mask,
    check_beta,
    check_choice,
    check_finite,
    check_float_tensor,
    check_h_splits,
    check_margin,
    check_noise,
    check_positive_int,
    check_real,
    check_same_rows,
)

DECODERS = ("linear", "mlp")


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


class InfoRMLossOutput(NamedTuple):
    """The pairwise InfoRM loss over B preference pairs. Only ``loss`` is meant for backward.

    A NamedTuple for the same reason as ``InfoRMHeadOutput``: ``InfoRMHead.forward`` returns it
    in pair mode, and ZeRO-3's backward hooks must find its tensors."""

    loss: torch.Tensor  # [] preference_loss + beta * kl (+ c * mean((r_w + r_l)^2))
    preference_loss: torch.Tensor  # [] mean of -logsigmoid(r_w - r_l - margin)
    kl: torch.Tensor  # [] mean over pairs of KL_w + KL_l (half of it with kl="authors")
    accuracy: torch.Tensor  # [] fraction of pairs with r_w > r_l
    reward_margin: torch.Tensor  # [] mean of r_w - r_l
    reward_chosen: torch.Tensor  # [B] raw rewards
    reward_rejected: torch.Tensor  # [B]
    mu: torch.Tensor  # [2B, L] latent means, chosen rows then rejected rows (no gradient)
    logvar: torch.Tensor  # [2B, L] latent log-variances (no gradient)


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


def join_pair_noise(noise_chosen: Optional[torch.Tensor], noise_rejected: Optional[torch.Tensor], pairs: int,
                    latent_dim: int, like: torch.Tensor) -> Optional[torch.Tensor]:
    """[2B, L] noise of the chosen rows then the rejected rows, None when neither is given; a
    missing side is drawn (standard normal, float32 or float64 like ``like``)."""
    if noise_chosen is None and noise_rejected is None:
        return None
    acc = reference.accumulation_dtype(like.dtype)

    def side(noise):
        return noise if noise is not None else torch.randn(pairs, latent_dim, device=like.device, dtype=acc)

    return torch.cat([side(noise_chosen).to(acc), side(noise_rejected).to(acc)])


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
        h_splits: the Triton kernels' split-H layout (None: chosen per batch; 0: one fused kernel;
            n: at most n ranges of H), for benchmarks and tests (``inform_fast.kernels.vib_head``).

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
        h_splits: Optional[int] = None,
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
        self.h_splits = check_h_splits(h_splits)
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
        *,
        num_pairs: Optional[int] = None,
        beta: float = 0.1,
        margin: Optional[torch.Tensor | float] = None,
        center_rewards_coefficient: float = 0.0,
    ):
        """Rewards and latents (``InfoRMHeadOutput``), or with ``num_pairs`` the pairwise loss
        (``InfoRMLossOutput``).

        Args:
            hidden_states: pooled [N, H], or [B, T, H] with ``attention_mask`` [B, T] (the head then
                runs only on each row's last non-padding token). Any float dtype.
            noise: optional [N, L] standard-normal noise for the reparameterisation (training mode
                only; drawn if not given). In eval mode z = mu and ``noise`` is ignored.
            num_pairs: P: the rows are P chosen sequences, then the P rejected ones in the same
                pair order (N = 2P); the loss is ``pairwise_loss``'s, through the same op.
            beta, margin, center_rewards_coefficient: the loss's options (see ``pairwise_loss``).
        """
        self.check_layers()
        pooled = self.pool(hidden_states, attention_mask)
        rows = pooled.shape[0]
        check_noise("noise", noise, rows, self.latent_dim)
        if num_pairs is not None:
            check_positive_int("num_pairs", num_pairs)
            if rows != 2 * num_pairs:
                raise ValueError(f"hidden_states: {rows} rows, expected 2 * num_pairs = {2 * num_pairs} "
                                 "(the chosen sequences, then the rejected ones)")
            noise_chosen, noise_rejected = (None, None) if noise is None else (noise[:num_pairs], noise[num_pairs:])
            return self._pairwise(pooled[:num_pairs], pooled[num_pairs:], beta, margin, noise_chosen, noise_rejected,
                                  center_rewards_coefficient)
        sample = self.training
        mu, logvar, z, kl = ops.vib_encode(
            pooled, self.encoder.weight, self.encoder.bias, noise=noise if sample else None, sample=sample,
            kl_mode=self.kl_mode, backend=self.backend, h_splits=self.h_splits,
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
        mu, _ = reference.latent_statistics(pooled, self.encoder.weight, self.encoder.bias)
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
        center_rewards_coefficient: float = 0.0,
    ) -> InfoRMLossOutput:
        """InfoRM loss over B pairs: mean[-logsigmoid(r_w - r_l - margin)] + beta * mean[KL_w + KL_l]
        (+ c * mean[(r_w + r_l)^2]; ``docs/math.md``).

        Args:
            chosen_hidden, rejected_hidden: pooled [B, H], or [B, T, H] with the matching
                ``*_attention_mask`` [B, T].
            beta: weight of the KL term (>= 0). margin: None, a float, or a [B] tensor.
            noise_chosen, noise_rejected: optional [B, L] noise (training mode only).
            center_rewards_coefficient: c, TRL's option (0 by default).
        """
        self.check_layers()
        chosen = self.pool(chosen_hidden, chosen_attention_mask, name="chosen_hidden")
        rejected = self.pool(rejected_hidden, rejected_attention_mask, name="rejected_hidden")
        check_same_rows("chosen_hidden", chosen, "rejected_hidden", rejected)
        pairs = chosen.shape[0]
        if pairs == 0:
            raise ValueError("chosen_hidden: no pairs (batch size 0)")
        check_noise("noise_chosen", noise_chosen, pairs, self.latent_dim)
        check_noise("noise_rejected", noise_rejected, pairs, self.latent_dim)
        if _partitioned(self):
            # DeepSpeed ZeRO-3 holds the weights whole only inside a forward: the same op through it
            noise = join_pair_noise(noise_chosen, noise_rejected, pairs, self.latent_dim, chosen) if self.training else None
            return self(torch.cat([chosen, rejected]), noise=noise, num_pairs=pairs, beta=beta, margin=margin,
                        center_rewards_coefficient=center_rewards_coefficient)
        return self._pairwise(chosen, rejected, beta, margin, noise_chosen, noise_rejected, center_rewards_coefficient)

    def _pairwise(self, chosen, rejected, beta, margin, noise_chosen, noise_rejected, center_rewards_coefficient):
        """The loss of pooled chosen / rejected rows [B, H] (checked by the callers)."""
        pairs = chosen.shape[0]
        beta = check_beta(beta)
        margin = check_margin(margin, pairs)
        center = check_real("center_rewards_coefficient", center_rewards_coefficient)
        sample = self.training
        if not sample:
            noise_chosen = noise_rejected = None
        if self.decoder_type == "linear":
            result = ops.linear_pairwise_loss(
                chosen, rejected, self.encoder.weight, self.encoder.bias, self.decoder.weight, self.decoder.bias,
                noise_chosen=noise_chosen, noise_rejected=noise_rejected, sample=sample, beta=beta, margin=margin,
                kl_mode=self.kl_mode, center_rewards_coefficient=center, backend=self.backend, h_splits=self.h_splits,
            )
            terms, r_w, r_l, mu, logvar = result.terms, result.reward_chosen, result.reward_rejected, result.mu, result.logvar
        else:
            # the gated MLP decoder has no fused kernel: the encoder op over both sides, the
            # decoder, and the reference loss
            noise = join_pair_noise(noise_chosen, noise_rejected, pairs, self.latent_dim, chosen)
            mu, logvar, z, kl = ops.vib_encode(
                torch.cat([chosen, rejected]), self.encoder.weight, self.encoder.bias, noise=noise, sample=sample,
                kl_mode=self.kl_mode, backend=self.backend, h_splits=self.h_splits,
            )
            r_w, r_l = self.decode(z).chunk(2)
            kl_w, kl_l = kl.chunk(2)
            terms = reference.pairwise_loss_from_rewards(r_w, r_l, kl_w, kl_l, beta=beta, margin=margin,
                                                         kl_mode=self.kl_mode, center_rewards_coefficient=center)
            mu, logvar = mu.detach(), logvar.detach()
        return InfoRMLossOutput(
            loss=terms.loss,
            preference_loss=terms.preference_loss.detach(),
            kl=terms.kl.detach(),
            accuracy=terms.accuracy,
            reward_margin=terms.reward_margin.detach(),
            reward_chosen=r_w.detach(),
            reward_rejected=r_l.detach(),
            mu=mu,
            logvar=logvar,
        )


def _partitioned(module: nn.Module) -> bool:
    """True under DeepSpeed ZeRO-3, whose partitioned parameters (they carry ``ds_id``) hold their
    full values only inside a module's forward."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


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
