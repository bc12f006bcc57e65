"""``InfoRMRewardTrainer``: TRL's ``RewardTrainer`` with the InfoRM loss (TRL is optional).

It keeps RewardTrainer's expectations: the training data may be raw preference data (TRL
tokenises it: prompt/chosen/rejected, implicit prompt, or conversational, EOS added, pairs over
``max_length`` dropped) or already tokenised ``chosen_ids`` / ``rejected_ids`` (e.g.
``inform_fast.data.to_hf_dataset(load_preference_data(...))``). What changes:

* loss = mean[-logsigmoid(r_w - r_l - margin)] + beta * mean[KL_w + KL_l] from one forward over
  chosen and rejected (``inform_fast.integrations.hf_trainer.inform_batch_loss``); ``beta``
  defaults to ``model.config.beta``;
* logged metrics (through RewardTrainer's ``self.log`` averaging): TRL's ``accuracy``, ``margin``,
  min/mean/max reward and ``num_tokens``, plus ``kl``, ``preference_loss``, ``reward_margin``,
  ``mu_norm`` (mean L2 norm of mu) and ``logvar_mean``;
* ``packing=True`` uses ``PackedPairCollator``: the batch's chosen and rejected sequences in one
  padding-free row with restarting position ids.
"""
from __future__ import annotations

from typing import Optional

import torch

try:
    from trl import RewardConfig, RewardTrainer
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "inform_fast.integrations.trl needs TRL: pip install 'inform-fast[trl]' "
        "(or use inform_fast.integrations.hf_trainer.InfoRMTrainer, which needs only transformers)"
    ) from error

from inform_fast.data import PackedPairCollator
from inform_fast.integrations.hf_trainer import inform_batch_loss
from inform_fast.integrations.monitor_callback import merge_pending_scores

__all__ = ["InfoRMRewardTrainer", "RewardConfig", "make_trl_reward_func"]


class InfoRMRewardTrainer(RewardTrainer):
    """TRL ``RewardTrainer`` for ``InfoRMForRewardModel``.

    Args: those of ``trl.RewardTrainer`` (``model`` must be an instantiated InfoRM model), plus
        packing: padding-free packed batches (ignored when ``data_collator`` is given).
        beta: KL weight; default ``model.config.beta``.
    """

    def __init__(self, model, args: Optional[RewardConfig] = None, data_collator=None, *rest,
                 packing: bool = False, beta: Optional[float] = None, **kwargs):
        if isinstance(model, str):
            raise ValueError(
                "model: pass an InfoRMForRewardModel instance (InfoRMForRewardModel.from_backbone(...) "
                "or .from_pretrained(...)), not a name"
            )
        if packing and data_collator is None:
            data_collator = PackedPairCollator()
        super().__init__(model, args, data_collator, *rest, **kwargs)
        self.packing = packing
        self.beta = beta

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        loss, metrics, output = inform_batch_loss(model, inputs, beta=self.beta)
        if mode == "train":
            if "attention_mask" in inputs and inputs["attention_mask"].dim() == 2:
                tokens = inputs["attention_mask"].sum()
            elif "chosen_attention_mask" in inputs:
                tokens = inputs["chosen_attention_mask"].sum() + inputs["rejected_attention_mask"].sum()
            else:
                tokens = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item() // self._tp_size
        store = self._metrics[mode]
        store["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            rewards = self.accelerator.gather(output.rewards.detach())
            store["min_reward"].append(rewards.min().item())
            store["mean_reward"].append(rewards.mean().item())
            store["max_reward"].append(rewards.max().item())
        store["margin"].append(metrics["reward_margin"])
        for key, value in metrics.items():
            store[key].append(value)
        return (loss, {"logits": output.logits}) if return_outputs else loss

    def log(self, logs, *args, **kwargs) -> None:
        # an OverOptimizationCallback's scores join this log before any reporting integration sees it
        super().log(merge_pending_scores(self, logs), *args, **kwargs)


def make_trl_reward_func(model, tokenizer, batch_size: int = 32, max_length: Optional[int] = None,
                         ibl_penalty=None, monitor=None, name: str = "inform_reward"):
    """A reward function for TRL's GRPO / RLOO trainers (``reward_funcs=[...]``).

    TRL calls it as ``f(prompts=..., completions=..., completion_ids=..., **reward_kwargs)`` where
    prompts and completions are strings or conversational message lists (rendered with the
    tokenizer's chat template) and ``reward_kwargs`` holds the dataset columns plus
    ``trainer_state``, ``log_extra`` and ``log_metric``. It returns one float per completion:
    the InfoRM reward of prompt + completion, after ``ibl_penalty(rewards [n], mu [n, L])`` when
    given. Through ``log_metric`` (when TRL passes it) it logs ``inform/reward_raw_mean``,
    ``inform/mu_norm``, ``inform/ibl_penalty_mean`` and whatever ``monitor(mu, rewards)`` returns.
    ``monitor`` may be an ``OverOptimizationMonitor`` itself: it is then updated at TRL's
    ``trainer_state.global_step`` and, at the calls where it evaluated, logs ``inform/icds``,
    ``inform/icds_normalized``, ``inform/mop``, ``inform/onset`` (TRL averages what a reward
    function logs over each logging step, so carried-over values are not logged again).
    Batched by ``batch_size`` on the model's device; ``__name__`` is ``name``.
    """
    from inform_fast.integrations.openrlhf import RewardScorer, apply_hooks

    scorer = RewardScorer(model, tokenizer, batch_size=batch_size, max_length=max_length)

    def reward_func(prompts=None, completions=None, completion_ids=None, **kwargs):
        if completions is None:
            raise ValueError("completions: required")
        raw, mu = scorer.score(prompts, list(completions))
        step = getattr(kwargs.get("trainer_state"), "global_step", None)
        hooked = apply_hooks(raw, mu, ibl_penalty, monitor, step=step)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for key, value in hooked.metrics.items():
                log_metric(key, value)
            if hooked.monitor_evaluated:  # TRL averages what is logged: only fresh evaluations
                for key, value in hooked.monitor.items():
                    if key != "inform/evaluated":
                        log_metric(key, value)
        return hooked.rewards.float().cpu().tolist()

    reward_func.__name__ = name
    reward_func.scorer = scorer
    return reward_func
