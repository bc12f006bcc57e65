"""Reward functions for RL loops: OpenRLHF-style ``reward_func(queries, prompts, labels, **kw)``
and the shared batched scorer that the TRL reward function (``inform_fast.integrations.trl``)
uses too. No TRL / OpenRLHF import is needed here.

Hooks shared by both reward functions:

* ``ibl_penalty(rewards [n], latents [n, L]) -> rewards [n]``: applied before returning, e.g.
  ``functools.partial(inform_fast.detect.ibl.ibl_penalty, scorer=fitted, coef=0.1)``;
* ``monitor(latents [n, L], rewards [n]) -> dict[str, float] | None``: called on every batch;
  the numbers it returns are logged. An ``inform_fast.detect.OverOptimizationMonitor`` can be
  passed as it is: it evaluates its scores once per ``every`` steps (TRL's global step; here,
  without a step, the count of calls, which OpenRLHF makes once per sample), never fails because
  an evaluation is not due or lacks latents, is safe to call from several threads, and returns
  the same keys on every call (``monitor.hook_keys``).

Scoring happens under ``torch.inference_mode`` on the model's device, in batches sorted by length;
the model is put in eval mode (z = mu, so rewards are deterministic).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
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
        self._tokenizer_lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompt, response) -> List[int]:
        """Token ids of prompt + response (strings, or message lists rendered with the chat
        template): ``inform_fast.data.tokenize_example``, the tokenisation of training."""
        with self._tokenizer_lock:  # a fast tokenizer's state must not be shared by threads mid-call
            return data.tokenize_example(self.tokenizer, prompt, response, self.max_length, where="reward input")

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


@dataclass
class HookResult:
    """What ``apply_hooks`` returns for one batch of n responses."""

    rewards: torch.Tensor  # [n] float32, after the penalty
    metrics: Dict[str, float]  # "inform/reward_raw_mean", "inform/mu_norm", "inform/ibl_penalty_mean"
    monitor: Dict[str, float]  # the monitor's numbers, "inform/<name>" (an OverOptimizationMonitor: the same keys every call)
    monitor_evaluated: bool  # whether the monitor evaluated at this call


def apply_hooks(rewards: torch.Tensor, mu: torch.Tensor, ibl_penalty: Optional[PenaltyFn], monitor: Optional[MonitorFn],
                step: Optional[int] = None) -> HookResult:
    """Run the optional penalty and monitor on a batch (rewards [n], mu [n, L]).
    ``step`` (the trainer's global step, when known) goes to an ``OverOptimizationMonitor``."""
    from inform_fast.detect.monitor import OverOptimizationMonitor

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
    numbers: Dict[str, float] = {}
    evaluated = False
    if isinstance(monitor, OverOptimizationMonitor):
        if rewards.numel():
            numbers = monitor(mu, final, step=step)
        else:  # nothing to buffer: the keys, with the latest values, all the same
            numbers = monitor.hook_values()
        evaluated = bool(numbers.pop("evaluated"))
        numbers["evaluated"] = float(evaluated)
    elif monitor is not None and rewards.numel():
        numbers = dict(monitor(mu, final) or {})
        evaluated = bool(numbers)
    named = {key if "/" in key else f"inform/{key}": float(value) for key, value in numbers.items()}
    return HookResult(rewards=final, metrics=metrics, monitor=named, monitor_evaluated=evaluated)


def make_openrlhf_reward_func(model, tokenizer, batch_size: int = 32, max_length: Optional[int] = None,
                              ibl_penalty: Optional[PenaltyFn] = None, monitor: Optional[MonitorFn] = None):
    """OpenRLHF's custom reward function convention (``--remote_rm_url reward_func.py``).

    Returns ``reward_func(queries, prompts=None, labels=None, **kw)`` where ``queries`` are the
    full texts (prompt + response, as OpenRLHF passes them). It returns
    ``{"rewards": [n] float32 tensor (after the IBL penalty), "scores": the same tensor,
    "extra_logs": {name: [n] tensor}}`` with the raw reward, the penalty and the monitor's numbers.
    Tensors are on the CPU, as OpenRLHF's remote reward functions return them.

    OpenRLHF calls it once per sample (``queries`` of length 1) from worker threads, turns an
    exception into a missing reward, and batches ``extra_logs`` across samples, which needs the
    same keys on every call: so the keys never depend on whether the monitor evaluated. With an
    ``OverOptimizationMonitor`` they are ``inform_raw_reward``, ``inform_ibl_penalty`` (with a
    penalty) and ``inform_<metric>`` for each of ``monitor.hook_keys`` (the latest evaluation's
    values, NaN before the first; ``inform_evaluated`` is 1 on the sample whose call evaluated).
    A custom monitor callable must return the same keys on every call; keys it has returned before
    and omits later are filled with NaN. Safe to call from several threads.
    """
    scorer = RewardScorer(model, tokenizer, batch_size=batch_size, max_length=max_length)
    seen_monitor_keys: Dict[str, None] = {}  # insertion-ordered set of keys a custom monitor returned
    lock = threading.Lock()

    def reward_func(queries, prompts=None, labels=None, **kwargs):
        if isinstance(queries, str):
            raise ValueError("queries: expected a list of strings, got one string")
        raw, mu = scorer.score(None, list(queries))
        hooked = apply_hooks(raw, mu, ibl_penalty, monitor)
        n = len(queries)
        extra_logs = {"inform_raw_reward": raw.cpu()}
        if ibl_penalty is not None:
            extra_logs["inform_ibl_penalty"] = (raw - hooked.rewards).cpu()
        with lock:
            seen_monitor_keys.update(dict.fromkeys(hooked.monitor))
            monitor_keys = list(seen_monitor_keys)
        for key in monitor_keys:
            extra_logs[key.replace("/", "_")] = torch.full((n,), hooked.monitor.get(key, math.nan))
        final = hooked.rewards.cpu()
        return {"rewards": final, "scores": final.clone(), "extra_logs": extra_logs}

    reward_func.__name__ = "inform_reward"
    reward_func.scorer = scorer
    return reward_func
