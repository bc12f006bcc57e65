"""Reference math of InfoRM in plain PyTorch: the head, its loss and their gradients, and the
Mahalanobis distance of the detectors.

``docs/math.md`` derives every formula here; this module is their executable form. It is the
CPU implementation of the registered ops (``inform_fast.ops``), the oracle the kernel tests
compare against, and imports neither Triton nor the C++ extension. Every function computes in
float32 (float64 when given float64) whatever the input dtype, so low-precision inputs
accumulate in float32.

Notation: N rows (sequences), H hidden size, L latent size, B preference pairs.

Head:
    [mu, logvar] = h @ W_enc^T (+ b_enc)            W_enc: [2L, H]  (nn.Linear layout)
    z = mu + exp(logvar / 2) * eps   (training)      z = mu   (evaluation)
    reward = z @ w_dec (+ b_dec)                     (linear decoder)
    reward = W_down(act(W_gate z) * (W_up z))         (gated MLP decoder; act SiLU or the backbone's)
    KL = 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)          (kl="standard")
    KL = 0.5 * (m^2 + exp(v) - 1 - v), m = mean_j mu_j, v = mean_j logvar_j   (kl="authors")

Loss over B pairs (chosen w, rejected l), with w_KL = 1 (kl="standard") or 1/2 (kl="authors"):
    loss = mean_b[-logsigmoid(r_w - r_l - margin)] + beta * w_KL * mean_b[KL_w + KL_l]
           + c * mean_b[(r_w + r_l)^2]                (c: TRL's center_rewards_coefficient, default 0)
The authors' code weights its KL by ``kl_loss_coef * mean over all rows`` (chosen and rejected
alike), half of the pair sum: with kl="authors", beta = their kl_loss_coef gives their loss.

Gradients (what the fused kernels compute; ``docs/math.md`` has the derivation): with
G = d loss / d [mu, logvar] per row, the encoder's gradients are dX = G @ W_enc,
dW_enc = G^T @ X and db_enc = sum_rows G.
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


# ------------------------------------------------------------------------------------------------
# the head


def latent_statistics(
    pooled: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's Gaussian: [N, H] @ [2L, H]^T -> mu [N, L], logvar [N, L] (float32/64)."""
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


def kl_divergence_grad(mu: torch.Tensor, logvar: torch.Tensor, mode: str = "standard") -> tuple[torch.Tensor, torch.Tensor]:
    """d KL / d mu and d KL / d logvar of each row's ``kl_divergence``: two [N, L] tensors.

    standard: mu and (exp(logvar) - 1) / 2; authors: m / L and (exp(v) - 1) / (2L) in every
    column, m and v the row means of mu and logvar."""
    if mode == "standard":
        return mu, 0.5 * (logvar.exp() - 1.0)
    latent = mu.shape[-1]
    mean_mu, mean_logvar = mu.mean(dim=-1, keepdim=True), logvar.mean(dim=-1, keepdim=True)
    return (mean_mu / latent).expand_as(mu), (0.5 * (mean_logvar.exp() - 1.0) / latent).expand_as(logvar)


def vib_encode(
    pooled: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    kl_mode: str = "standard",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op "vib_encode": pooled rows [N, H] -> (mu, logvar, z [N, L], kl [N]).

    weight [2L, H], bias [2L] or None, noise [N, L] or None (z = mu). float32 (float64 in)."""
    mu, logvar = latent_statistics(pooled, weight, bias)
    return mu, logvar, reparameterize(mu, logvar, noise), kl_divergence(mu, logvar, kl_mode)


def vib_encode_backward(
    grad_mu: torch.Tensor,
    grad_logvar: torch.Tensor,
    grad_z: torch.Tensor,
    grad_kl: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    noise: Optional[torch.Tensor],
    kl_mode: str = "standard",
) -> torch.Tensor:
    """G = d out / d [mu, logvar] [N, 2L] of ``vib_encode`` given the gradients of its four
    outputs ([N, L] x 3, [N]); ``noise`` as in the forward (None: z = mu). Then
    dX = G @ W, dW = G^T @ X, db = sum_rows G."""
    dkl_dmu, dkl_dlogvar = kl_divergence_grad(mu, logvar, kl_mode)
    g_mu = grad_mu + grad_z + grad_kl[:, None] * dkl_dmu
    g_logvar = grad_logvar + grad_kl[:, None] * dkl_dlogvar
    if noise is not None:
        g_logvar = g_logvar + grad_z * 0.5 * torch.exp(0.5 * logvar) * noise.to(mu.dtype)
    return torch.cat([g_mu, g_logvar], dim=-1)


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


# ------------------------------------------------------------------------------------------------
# the loss


class PairwiseLoss(NamedTuple):
    """Terms of the InfoRM pairwise loss; ``loss`` carries the gradient, the rest are metrics."""

    loss: torch.Tensor  # [] preference_loss + beta * kl (+ c * mean((r_w + r_l)^2))
    preference_loss: torch.Tensor  # [] mean over pairs of -logsigmoid(r_w - r_l - margin)
    kl: torch.Tensor  # [] w_KL * mean over pairs of KL_w + KL_l
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
    center_rewards_coefficient: float = 0.0,
) -> PairwiseLoss:
    """The loss from per-pair rewards and KLs (all [B], float32 or float64)."""
    gap = reward_chosen - reward_rejected
    logits = gap if margin is None else gap - margin
    preference_loss = -F.logsigmoid(logits).mean()
    kl = (kl_chosen + kl_rejected).mean() * KL_PAIR_WEIGHT[kl_mode]
    loss = preference_loss + beta * kl
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * (reward_chosen + reward_rejected).square().mean()
    return PairwiseLoss(
        loss=loss,
        preference_loss=preference_loss,
        kl=kl,
        accuracy=(gap > 0).to(gap.dtype).mean(),
        reward_margin=gap.mean(),
    )


def pairwise_loss_reward_grad(
    reward_chosen: torch.Tensor,
    reward_rejected: torch.Tensor,
    margin: Optional[torch.Tensor | float] = None,
    center_rewards_coefficient: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """d loss / d r_w and d loss / d r_l, each [B]: with t = r_w - r_l - margin and
    s = r_w + r_l, (-sigmoid(-t) + 2 c s) / B and (sigmoid(-t) + 2 c s) / B."""
    pairs = reward_chosen.shape[0]
    logits = reward_chosen - reward_rejected
    if margin is not None:
        logits = logits - margin
    preference = torch.sigmoid(-logits) / pairs
    center = 2.0 * center_rewards_coefficient * (reward_chosen + reward_rejected) / pairs
    return center - preference, center + preference


class LinearPairwiseLoss(NamedTuple):
    """What the fused loss with the linear decoder returns (the op "linear_pairwise_loss")."""

    terms: PairwiseLoss
    reward_chosen: torch.Tensor  # [B]
    reward_rejected: torch.Tensor  # [B]
    mu: torch.Tensor  # [2B, L] chosen rows, then rejected rows
    logvar: torch.Tensor  # [2B, L]
    grad: Optional[torch.Tensor]  # [2B, 2L] d loss / d [mu, logvar] (``store_grad``)
    grad_decoder_weight: Optional[torch.Tensor]  # [L] d loss / d w_dec (``store_grad``)
    grad_decoder_bias: Optional[torch.Tensor]  # [] d loss / d b_dec (``store_grad``)


def linear_pairwise_loss(
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
    center_rewards_coefficient: float = 0.0,
    store_grad: bool = False,
) -> LinearPairwiseLoss:
    """The hot path the fused kernel implements: pooled chosen/rejected rows [B, H] -> the loss,
    and with ``store_grad`` its gradient w.r.t. every row's [mu, logvar] and the decoder.

    A missing noise means z = mu for that side. Because the loss is the last node of the graph,
    the gradient G can be computed in the forward (Liger-style); a backward only scales it by
    the upstream gradient: dX = s G W_enc, dW_enc = s G^T X, db_enc = s sum G, dw_dec = s g_dec.
    """
    mu_w, logvar_w, z_w, kl_w = vib_encode(chosen, encoder_weight, encoder_bias, noise_chosen, kl_mode)
    mu_l, logvar_l, z_l, kl_l = vib_encode(rejected, encoder_weight, encoder_bias, noise_rejected, kl_mode)
    r_w = decode_linear(z_w, decoder_weight, decoder_bias)
    r_l = decode_linear(z_l, decoder_weight, decoder_bias)
    terms = pairwise_loss_from_rewards(r_w, r_l, kl_w, kl_l, beta, margin, kl_mode, center_rewards_coefficient)
    mu, logvar = torch.cat([mu_w, mu_l]), torch.cat([logvar_w, logvar_l])
    grad = grad_decoder_weight = grad_decoder_bias = None
    if store_grad:
        pairs = chosen.shape[0]
        a_w, a_l = pairwise_loss_reward_grad(r_w, r_l, margin, center_rewards_coefficient)
        a = torch.cat([a_w, a_l])[:, None]  # [2B, 1] d loss / d reward
        w_dec = decoder_weight.to(mu.dtype).reshape(1, -1)
        z = torch.cat([z_w, z_l])
        kl_weight = beta * KL_PAIR_WEIGHT[kl_mode] / pairs
        dkl_dmu, dkl_dlogvar = kl_divergence_grad(mu, logvar, kl_mode)
        g_mu = a * w_dec + kl_weight * dkl_dmu
        g_logvar = kl_weight * dkl_dlogvar
        noise = [n for n in (noise_chosen, noise_rejected)]
        if any(n is not None for n in noise):
            eps = torch.cat([torch.zeros_like(mu_w) if n is None else n.to(mu.dtype) for n in noise])
            g_logvar = g_logvar + a * w_dec * 0.5 * torch.exp(0.5 * logvar) * eps
        grad = torch.cat([g_mu, g_logvar], dim=-1)
        grad_decoder_weight = (a * z).sum(0)
        grad_decoder_bias = a.sum()
    return LinearPairwiseLoss(terms, r_w, r_l, mu, logvar, grad, grad_decoder_weight, grad_decoder_bias)


# ------------------------------------------------------------------------------------------------
# detection: Mahalanobis distance

# Rows per chunk of ``mahalanobis_sq`` (bounds the [chunk, L] temporary: 16 MiB at L = 128 fp32,
# inside the L3 cache). Measured on the 2-core development machine, 2*10^5 x 128, against one
# torch.mm of the same shape: idle, 8192 rows 103%, 32768 rows 97%, one chunk 63%; with other
# processes competing for the cores, small chunks fall to 25-50% (each chunk's ops are OpenMP
# regions whose barriers wait for descheduled threads) while 32768 rows stay near 60-80%.
MAHALANOBIS_CHUNK_ROWS = 1 << 15
# largest Mahalanobis norm of the mean for which the mean is folded into the GEMM
_FOLD_MAX_NORM = 64.0


def mahalanobis_sq(x: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor, precision: str = "ieee") -> torch.Tensor:
    """The op "mahalanobis_sq": d2 [n] = ||(x - mean) @ whiten||^2, whiten = L^{-T} for the
    Cholesky factor L of the covariance, in chunks of ``MAHALANOBIS_CHUNK_ROWS`` rows.

    x [n, dim] any float dtype; mean [dim] and whiten [dim, dim] in the work dtype (float32, or
    float64 for float64 x), which d2 has. ``precision`` (the kernels' tensor-core mode) is unused."""
    work = whiten.dtype
    n = x.shape[0]
    out = torch.empty(n, dtype=work, device=x.device)
    if n == 0:
        return out
    # x @ A - mean @ A (one addmm) saves the subtraction pass, but the error of a whitened
    # coordinate grows like eps * ||mean @ A||: fold only when the mean is near the origin in
    # whitened units (a host check, so only for CPU tensors); else subtract first.
    shift = mean[None, :] @ whiten  # [1, dim]
    fold = x.device.type == "cpu" and x.dtype == work and float(shift.norm()) <= _FOLD_MAX_NORM
    negated = -shift
    for start in range(0, n, MAHALANOBIS_CHUNK_ROWS):
        chunk = x[start : start + MAHALANOBIS_CHUNK_ROWS]
        if fold:
            projected = torch.addmm(negated, chunk, whiten)  # [c, dim]
        else:
            projected = (chunk.to(work) - mean) @ whiten  # [c, dim]
        torch.linalg.vector_norm(projected, dim=1, out=out[start : start + chunk.shape[0]])
    return out.square_()
