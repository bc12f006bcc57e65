"""The two reward models of the demo and their training loop.

Both share the backbone architecture *and* its random initialisation (same seed), see the same
pairs in the same order with the same optimizer, steps and batch size. They differ only in the
head: ``standard`` is ``nn.Linear(H, 1)`` on the last-token hidden state with the Bradley-Terry
loss; ``inform`` is ``InfoRMHead(H, latent_dim)`` with its pairwise loss (Bradley-Terry + beta *
KL). The backbone is ``inform_fast.tiny.tiny_llama`` built from a config (no download).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from inform_fast.head import InfoRMHead
from inform_fast.reference import pool_last_token


def build_backbone(vocab_size: int, hidden_size: int, layers: int, heads: int, seed: int, max_positions: int = 64):
    """The tiny Llama of ``inform_fast.tiny.tiny_llama`` (SDPA attention) with ``heads`` attention and
    key/value heads, seeded so that both reward models start from the same weights."""
    from inform_fast.tiny import tiny_llama

    return tiny_llama(
        vocab_size, hidden_size=hidden_size, layers=layers, seed=seed, num_attention_heads=heads,
        num_key_value_heads=heads, max_position_embeddings=max_positions, use_cache=False,
    )


class DemoRewardModel(nn.Module):
    """Backbone + reward head. ``kind`` is "standard" (linear head) or "inform" (``InfoRMHead``)."""

    def __init__(self, backbone: nn.Module, kind: str, latent_dim: int = 16, seed: int = 0):
        super().__init__()
        if kind not in ("standard", "inform"):
            raise ValueError(f"kind: expected 'standard' or 'inform', got {kind!r}")
        self.kind = kind
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        torch.manual_seed(seed + 1)  # the heads differ, so seed them separately from the backbone
        self.head = nn.Linear(hidden, 1) if kind == "standard" else InfoRMHead(hidden, latent_dim, bias=True)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] ids + mask -> [B, H] hidden state at each row's last real token."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        return pool_last_token(hidden, attention_mask)

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Evaluation: (reward [B] float32, latent mu [B, L] or None for the standard head)."""
        pooled = self.pooled(input_ids, attention_mask)
        if self.kind == "standard":
            return self.head(pooled).squeeze(-1).float(), None
        out = self.head(pooled)
        return out.reward.float(), out.mu.float()


def train_reward_model(
    model: DemoRewardModel,
    chosen_ids: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_ids: torch.Tensor,
    rejected_mask: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    beta: float,
    seed: int,
    progress: Optional[Callable[[dict], None]] = None,
) -> list:
    """Train on P pairs ([P, T] ids and masks) for ``steps`` steps; returns the per-step log.

    The order of the pairs and the VIB noise come from generators seeded with ``seed``, so two
    models trained with the same seed see identical batches.
    """
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 7)
    pairs = chosen_ids.shape[0]
    order = torch.randperm(pairs, generator=order_gen)
    cursor = 0
    history = []
    device = chosen_ids.device
    for step in range(steps):
        if cursor + batch_size > pairs:
            order, cursor = torch.randperm(pairs, generator=order_gen), 0
        index = order[cursor: cursor + batch_size].to(device)
        cursor += batch_size
        # one backbone call for chosen and rejected together
        ids = torch.cat([chosen_ids[index], rejected_ids[index]])
        mask = torch.cat([chosen_mask[index], rejected_mask[index]])
        pooled = model.pooled(ids, mask)  # [2B, H]
        h_w, h_l = pooled.chunk(2)
        if model.kind == "standard":
            rewards = model.head(pooled).squeeze(-1).float()
            r_w, r_l = rewards.chunk(2)
            loss = -F.logsigmoid(r_w - r_l).mean()
            kl = torch.zeros(())
            accuracy = (r_w > r_l).float().mean()
        else:
            latent = model.head.latent_dim
            noise = torch.randn(2, h_w.shape[0], latent, generator=noise_gen).to(device)
            out = model.head.pairwise_loss(h_w, h_l, beta=beta, noise_chosen=noise[0], noise_rejected=noise[1])
            loss, kl, accuracy = out.loss, out.kl, out.accuracy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append({"step": step, "loss": float(loss.detach()), "kl": float(kl.detach()), "accuracy": float(accuracy)})
        if progress is not None:
            progress(history[-1])
    model.eval()
    return history
