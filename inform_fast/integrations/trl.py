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

__all__ = ["InfoRMRewardTrainer", "RewardConfig"]


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
