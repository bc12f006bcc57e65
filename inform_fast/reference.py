"""Reference math of the InfoRM head and loss, in plain PyTorch.

This module is the single source of truth for the formulas of ``../SPEC.md``: it is the CPU
fallback, the oracle the kernel tests compare against, and the documentation of the math. It
imports neither Triton nor the C++ extension. Every function works in float32 (or float64 when
given float64) whatever the input dtype, so low-precision inputs accumulate in float32.

Notation: N rows (sequences), H hidden size, L latent size, B preference pairs.

Head:
    [mu, logvar] = h @ W_enc^T (+ b_enc)            W_enc: [2L, H]  (nn.Linear layout)
    z = mu + exp(logvar / 2) * eps   (training)      z = mu   (evaluation)
    reward = z @ w_dec (+ b_dec)                     (linear decoder)
    reward = W_down(act(W_gate z) * (W_up z))         (gated MLP decoder; act SiLU or the backbone's)
    KL = 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)          (kl="standard")
    KL = 0.5 * (m^2 + exp(v) - 1 - v), m = mean_j mu_j, v = mean_j logvar_j   (kl="authors")

Loss over B pairs (chosen w, rejected l):
    loss = mean_b[-logsigmoid(r_w - r_l - margin)] + beta * mean_b[KL_w + KL_l]     (kl="standard")
    loss = mean_b[-logsigmoid(r_w - r_l - margin)] + beta * mean over the 2B rows of KL   (kl="authors")
The authors' code weights its KL by ``kl_loss_coef * mean over all rows`` (chosen and rejected
alike), half of the pair sum: with kl="authors", beta = their kl_loss_coef gives their loss.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

KL_MODES = ("standard", "authors")
# weight of mean_b[KL_w + KL_l] in the loss: the authors' code averages KL over the 2B rows
KL_PAIR_WEIGHT = {"standard": 1.0, "authors": 0.5}


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (for gradcheck); everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def last_token_indices(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding position of each row.

    attention_mask: [B, T], nonzero where a token is real. Correct for left padding, right
    padding and no padding. Returns [B] int64. Rows with no real token must be rejected by the
    caller (see ``inform_fast.validation``).
    """
    seq_len = attention_mask.shape[-1]
    # argmax returns the first maximum, so search the flipped mask for the first real token.
    flipped_first = (attention_mask.flip(-1) != 0).to(torch.int8).argmax(dim=-1)
    return seq_len - 1 - flipped_first


def pool_last_token(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last non-padding token: [B, T, H] + [B, T] -> [B, H]."""
    index = last_token_indices(attention_mask)
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), index]


def vib_encode(
    pooled: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder of the bottleneck: [N, H] @ [2L, H]^T -> mu [N, L], logvar [N, L] (float32/64)."""
    acc = accumulation_dtype(pooled.dtype)
    stats = F.linear(pooled.to(acc), weight.to(acc), None if bias is None else bias.to(acc))
    mu, logvar = stats.chunk(2, dim=-1)
    return mu, logvar


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * noise; ``noise=None`` means evaluation mode (z = mu)."""
    if noise is None:
        return mu
    return mu + torch.exp(0.5 * logvar) * noise.to(mu.dtype)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, mode: str = "standard") -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row: [N, L] x 2 -> [N].

    ``mode="authors"`` reproduces the authors' code, which averages mu and logvar over the L
    latent dimensions first and applies the one-dimensional formula to those means. It is not
    a KL of the latent distribution (it is about L times smaller and ignores the spread of mu
    across dimensions); use it only to reproduce their numbers.
    """
    if mode == "standard":
        return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)
    if mode == "authors":
        mean_mu, mean_logvar = mu.mean(dim=-1), logvar.mean(dim=-1)
        return 0.5 * (mean_mu.square() + mean_logvar.exp() - 1.0 - mean_logvar)
    raise ValueError(f"kl: expected one of {KL_MODES}, got {mode!r}")


def decode_linear(z: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Linear reward decoder: z [N, L] @ weight [1, L]^T (+ bias [1]) -> reward [N]."""
    w = weight.to(z.dtype).reshape(-1)
    reward = z @ w
    if bias is not None:
        reward = reward + bias.to(z.dtype).reshape(())
    return reward


# Activations of the gated MLP decoder, by the names Transformers configs use (``hidden_act``,
# ``activation_function``): the authors' decoder applies the backbone's own.
ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,  # exact (erf)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def decode_gated_mlp(
    z: torch.Tensor,
    gate_weight: torch.Tensor,
    up_weight: torch.Tensor,
    down_weight: torch.Tensor,
    gate_bias: Optional[torch.Tensor] = None,
    up_bias: Optional[torch.Tensor] = None,
    down_bias: Optional[torch.Tensor] = None,
    activation: str = "silu",
) -> torch.Tensor:
    """Gated MLP reward decoder: W_down(act(W_gate z) * (W_up z)) -> reward [N].

    gate/up weights: [I, L]; down weight: [1, I] (I = intermediate size, 4L by default);
    ``activation``: a name in ``ACTIVATIONS`` (SiLU by default).
    """
    def cast(t):
        return None if t is None else t.to(z.dtype)

    act = ACTIVATIONS[activation]
    hidden = act(F.linear(z, cast(gate_weight), cast(gate_bias))) * F.linear(z, cast(up_weight), cast(up_bias))
    return F.linear(hidden, cast(down_weight), cast(down_bias)).squeeze(-1)


class PairwiseLoss(NamedTuple):
    """Terms of the InfoRM pairwise loss; ``loss`` carries the gradient, the rest are metrics."""

    loss: torch.Tensor  # [] preference_loss + beta * kl
    preference_loss: torch.Tensor  # [] mean over pairs of -logsigmoid(r_w - r_l - margin)
    kl: torch.Tensor  # [] mean over pairs of KL_w + KL_l
    accuracy: torch.Tensor  # [] fraction of pairs with r_w > r_l
    reward_margin: torch.Tensor  # [] mean of r_w - r_l


def pairwise_loss_from_rewards(
    reward_chosen: torch.Tensor,
    reward_rejected: torch.Tensor,
    kl_chosen: torch.Tensor,
    kl_rejected: torch.Tensor,
    beta: float = 0.1,
    margin: Optional[torch.Tensor | float] = None,
    kl_mode: str = "standard",
) -> PairwiseLoss:
    """SPEC.md's loss from per-pair rewards and KLs (all [B], float32 or float64). The KL term
    is mean_b[KL_w + KL_l] (kl_mode="standard") or the mean over the 2B rows ("authors")."""
    gap = reward_chosen - reward_rejected
    logits = gap if margin is None else gap - margin
    preference_loss = -F.logsigmoid(logits).mean()
    kl = (kl_chosen + kl_rejected).mean() * KL_PAIR_WEIGHT[kl_mode]
    return PairwiseLoss(
        loss=preference_loss + beta * kl,
        preference_loss=preference_loss,
        kl=kl,
        accuracy=(gap > 0).to(gap.dtype).mean(),
        reward_margin=gap.mean(),
    )


def linear_head_forward(
    pooled: torch.Tensor,
    encoder_weight: torch.Tensor,
    encoder_bias: Optional[torch.Tensor],
    decoder_weight: torch.Tensor,
    decoder_bias: Optional[torch.Tensor],
    noise: Optional[torch.Tensor] = None,
    kl_mode: str = "standard",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole head with the linear decoder on pooled rows [N, H].

    Returns (reward [N], mu [N, L], logvar [N, L], z [N, L], kl [N]), float32 (float64 in).
    """
    mu, logvar = vib_encode(pooled, encoder_weight, encoder_bias)
    z = reparameterize(mu, logvar, noise)
    reward = decode_linear(z, decoder_weight, decoder_bias)
    return reward, mu, logvar, z, kl_divergence(mu, logvar, kl_mode)


def linear_head_pairwise_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    encoder_weight: torch.Tensor,
    encoder_bias: Optional[torch.Tensor],
    decoder_weight: torch.Tensor,
    decoder_bias: Optional[torch.Tensor],
    noise_chosen: Optional[torch.Tensor] = None,
    noise_rejected: Optional[torch.Tensor] = None,
    beta: float = 0.1,
    margin: Optional[torch.Tensor | float] = None,
    kl_mode: str = "standard",
) -> tuple[PairwiseLoss, torch.Tensor, torch.Tensor]:
    """The hot path the fused kernel implements: pooled chosen/rejected rows [B, H] -> loss.

    Returns (PairwiseLoss, reward_chosen [B], reward_rejected [B]).
    """
    args = (encoder_weight, encoder_bias, decoder_weight, decoder_bias)
    r_w, _, _, _, kl_w = linear_head_forward(chosen, *args, noise=noise_chosen, kl_mode=kl_mode)
    r_l, _, _, _, kl_l = linear_head_forward(rejected, *args, noise=noise_rejected, kl_mode=kl_mode)
    return pairwise_loss_from_rewards(r_w, r_l, kl_w, kl_l, beta=beta, margin=margin, kl_mode=kl_mode), r_w, r_l
