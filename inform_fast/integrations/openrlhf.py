"""Reward functions for RL loops: OpenRLHF-style ``reward_func(queries, prompts, labels, **kw)``
and the shared batched scorer that the TRL reward function (``inform_fast.integrations.trl``)
uses too. No TRL / OpenRLHF import is needed here.

Hooks shared by both reward functions:

* ``ibl_penalty(rewards [n], latents [n, L]) -> rewards [n]``: applied before returning, e.g.
  ``functools.partial(inform_fast.detect.ibl.ibl_penalty, scorer=fitted, coef=0.1)``;
* ``monitor(latents [n, L], rewards [n]) -> dict[str, float] | None``: called on every batch;
  the numbers it returns are logged. An ``inform_fast.detect.OverOptimizationMonitor`` can be
  passed as it is: it evaluates ICDS / MOP at its due steps (TRL's global step; here, without
  a step, the count of reward batches) and its scores and onset flag are logged.

Scoring happens under ``torch.inference_mode`` on the model's device, in batches sorted by length;
the model is put in eval mode (z = mu, so rewards are deterministic).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from inform_fast import data

PenaltyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MonitorFn = Callable[[torch.Tensor, torch.Tensor], Optional[Dict[str, float]]]


class RewardScorer:
    """Batched rewards and latents of token sequences with an InfoRM model.

    Args:
        model: ``InfoRMForRewardModel`` (put in eval mode here).
        tokenizer: its tokenizer (pad token, EOS, chat template).
        batch_size: sequences per forward. max_length: truncation (None: none); the module
            policy of ``inform_fast.data`` (end of prompt kept, response cut keeping EOS).
    """

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: Optional[int] = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise ValueError(f"max_length: expected an integer >= 2 or None, got {max_length!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else pad

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompt, response) -> List[int]:
        """Token ids of prompt + response (strings, or message lists rendered with the chat template)."""
        ids = data.encode(self.tokenizer, data.render_text(self.tokenizer, prompt, response, where="reward input"))
        if self.max_length is not None and len(ids) > self.max_length:
            prompt_length = 0
            if prompt:
                if isinstance(prompt, str):
                    prompt_ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
                else:
                    prompt_ids = self.tokenizer(
                        self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
                        add_special_tokens=True,
                    )["input_ids"]
                prompt_length = data.common_prefix_length(prompt_ids, ids)
            ids = data.truncate_sequence(ids, prompt_length, self.max_length, self.tokenizer.bos_token_id)
        return ids

    def score_ids(self, sequences: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(rewards [n] float32, mu [n, L] float32) on the model's device, in input order."""
        if len(sequences) == 0:
            return torch.zeros(0, device=self.device), torch.zeros(0, self.model.config.latent_dim, device=self.device)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        rewards = torch.empty(len(sequences), dtype=torch.float32, device=self.device)
        mu = torch.empty(len(sequences), self.model.config.latent_dim, dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                input_ids, attention_mask = data.pad_sequences([sequences[i] for i in chunk], self.pad_id, "right")
                r, m = self.model.score(input_ids.to(self.device), attention_mask.to(self.device))
                index = torch.as_tensor(chunk, device=self.device)
                rewards[index] = r.float()
                mu[index] = m.float()
        return rewards, mu

    def score(self, prompts, responses) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rewards and mu of ``prompts[i] + responses[i]`` (``prompts`` may be None)."""
        if prompts is not None and len(prompts) != len(responses):
            raise ValueError(f"prompts: {len(prompts)} prompts for {len(responses)} responses")
        sequences = [self.encode(None if prompts is None else prompts[i], r) for i, r in enumerate(responses)]
        return self.score_ids(sequences)


def apply_hooks(rewards: torch.Tensor, mu: torch.Tensor, ibl_penalty: Optional[PenaltyFn], monitor: Optional[MonitorFn],
                step: Optional[int] = None):
    """Run the optional penalty and monitor: returns (final rewards [n], metrics dict of floats).
    ``step`` (the trainer's global step, when known) goes to an ``OverOptimizationMonitor``."""
    metrics: Dict[str, float] = {}
    if rewards.numel():
        metrics["inform/reward_raw_mean"] = rewards.mean().item()
        metrics["inform/mu_norm"] = mu.norm(dim=-1).mean().item()
    final = rewards
    if ibl_penalty is not None and rewards.numel():
        final = torch.as_tensor(ibl_penalty(rewards, mu), device=rewards.device, dtype=torch.float32)
        if final.shape != rewards.shape:
            raise ValueError(f"ibl_penalty: returned shape {tuple(final.shape)}, expected {tuple(rewards.shape)}")
        metrics["inform/ibl_penalty_mean"] = (rewards - final).mean().item()
    if monitor is not None and rewards.numel():
        from inform_fast.detect.monitor import OverOptimizationMonitor

        extra = (monitor(mu, final, step=step) if isinstance(monitor, OverOptimizationMonitor) else monitor(mu, final)) or {}
        for key, value in extra.items():
            metrics[key if "/" in key else f"inform/{key}"] = float(value)
    return final, metrics


def make_openrlhf_reward_func(model, tokenizer, batch_size: int = 32, max_length: Optional[int] = None,
                              ibl_penalty: Optional[PenaltyFn] = None, monitor: Optional[MonitorFn] = None):
    """OpenRLHF's custom reward function convention (``--remote_rm_url reward_func.py``).

    Returns ``reward_func(queries, prompts=None, labels=None, **kw)`` where ``queries`` are the
    full texts (prompt + response, as OpenRLHF passes them). It returns
    ``{"rewards": [n] float32 tensor (after the IBL penalty), "scores": the same tensor,
    "extra_logs": {name: [n] tensor}}`` with the raw reward, the penalty and any monitor numbers
    (OpenRLHF averages extra_logs for logging). Tensors are on the CPU, as OpenRLHF's remote
    reward functions return them.
    """
    scorer = RewardScorer(model, tokenizer, batch_size=batch_size, max_length=max_length)

    def reward_func(queries, prompts=None, labels=None, **kwargs):
        if isinstance(queries, str):
            raise ValueError("queries: expected a list of strings, got one string")
        raw, mu = scorer.score(None, list(queries))
        final, metrics = apply_hooks(raw, mu, ibl_penalty, monitor)
        n = len(queries)
        extra_logs = {"inform_raw_reward": raw.cpu()}
        if ibl_penalty is not None:
            extra_logs["inform_ibl_penalty"] = (raw - final).cpu()
        for key, value in metrics.items():
            if key.startswith("inform/") and key[7:] in ("reward_raw_mean", "ibl_penalty_mean"):
                continue
            extra_logs[key.replace("/", "_")] = torch.full((n,), value)
        final = final.cpu()
        return {"rewards": final, "scores": final.clone(), "extra_logs": extra_logs}

    reward_func.__name__ = "inform_reward"
    reward_func.scorer = scorer
    return reward_func
