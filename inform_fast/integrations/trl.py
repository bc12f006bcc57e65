"""``InfoRMRewardTrainer``: TRL's ``RewardTrainer`` with the InfoRM loss (TRL is optional).

It keeps RewardTrainer's expectations: the training data may be raw preference data (TRL
tokenises it: prompt/chosen/rejected, implicit prompt, or conversational, EOS added, pairs over
``max_length`` dropped) or already tokenised ``chosen_ids`` / ``rejected_ids`` (e.g.
``inform_fast.data.to_hf_dataset(load_preference_data(...))``). What changes:

* loss = mean[-logsigmoid(r_w - r_l - margin)] + beta * mean[KL_w + KL_l] from one forward over
  chosen and rejected (``inform_fast.integrations.hf_trainer.inform_batch_loss``); ``beta``
  defaults to ``model.config.beta``; ``center_rewards_coefficient`` adds TRL's
  ``coef * mean((r_w + r_l)^2)`` on the same (raw) rewards;
* logged metrics (through RewardTrainer's ``self.log`` averaging), gathered across processes as
  TRL gathers its own: TRL's ``accuracy``, ``margin``, min/mean/max reward and ``num_tokens``,
  plus ``kl``, ``preference_loss``, ``reward_margin``, ``mu_norm`` (mean L2 norm of mu) and
  ``logvar_mean``;
* ``packing=True`` uses ``PackedPairCollator``: the batch's chosen and rejected sequences in one
  padding-free row with restarting position ids (``pad_to_multiple_of`` pads it with a filler
  sequence);
* ``peft_config``: passed through ``inform_peft_config`` (PEFT's default target modules of the
  backbone's family when none are given, the head trained in full and saved with the adapter);
* without ``processing_class`` the tokenizer is loaded from the model's or the backbone's path,
  and a clear error says to pass one when neither has it.

Every ``RewardConfig`` field acts as in TRL (``model_init_kwargs`` is ignored with a warning, as
TRL does for an instantiated model).
"""
from __future__ import annotations

import inspect
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
from inform_fast.integrations.hf_trainer import _unwrap, check_peft_head, inform_batch_loss, inform_peft_config
from inform_fast.integrations.monitor_callback import merge_pending_scores

__all__ = ["InfoRMRewardTrainer", "RewardConfig", "make_trl_reward_func"]

# RewardTrainer internals this trainer fills in to keep TRL's logging
_TRL_INTERNALS = ("_metrics", "_total_train_tokens")


def _load_tokenizer(core, trust_remote_code: bool):
    """The tokenizer saved with the model or its backbone, or a ValueError naming processing_class."""
    from transformers import AutoTokenizer

    paths = [getattr(core.config, "_name_or_path", ""), getattr(core.config.backbone_config, "_name_or_path", "")]
    tried = []
    for path in dict.fromkeys(p for p in paths if p):
        try:
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            tried.append(f"{path!r} ({type(error).__name__})")
    where = f"none found at {', '.join(tried)}" if tried else "the model records no path to load one from"
    raise ValueError(f"processing_class: required, the tokenizer of the model ({where}); "
                     "pass processing_class=AutoTokenizer.from_pretrained(<backbone path>)")


class InfoRMRewardTrainer(RewardTrainer):
    """TRL ``RewardTrainer`` for ``InfoRMForRewardModel``.

    Args: those of ``trl.RewardTrainer`` (``model`` must be an instantiated InfoRM model, or a
        PEFT model around one), plus
        packing: padding-free packed batches (ignored when ``data_collator`` is given).
        beta: KL weight; default ``model.config.beta``.
    """

    def __init__(self, model, args: Optional[RewardConfig] = None, data_collator=None, *rest,
                 packing: bool = False, beta: Optional[float] = None, **kwargs):
        from inform_fast.modeling import InfoRMForRewardModel

        if isinstance(model, str):
            raise ValueError(
                "model: pass an InfoRMForRewardModel instance (InfoRMForRewardModel.from_backbone(...) "
                "or .from_pretrained(...)), not a name"
            )
        core = _unwrap(model)
        if not isinstance(core, InfoRMForRewardModel):
            raise ValueError(
                f"model: InfoRMRewardTrainer trains an InfoRMForRewardModel, got {type(core).__name__}; use "
                "trl.RewardTrainer for a stock classifier, or InfoRMForRewardModel.from_backbone(model) for InfoRM"
            )
        bound = inspect.signature(RewardTrainer.__init__).bind(self, model, args, data_collator, *rest, **kwargs)
        call = dict(bound.arguments)
        call.pop("self")
        trust_remote_code = bool(getattr(args, "trust_remote_code", False))
        if call.get("processing_class") is None:
            call["processing_class"] = _load_tokenizer(core, trust_remote_code)
        if call.get("peft_config") is not None:
            call["peft_config"] = inform_peft_config(model, call["peft_config"])
        if packing and call.get("data_collator") is None:
            tokenizer = call["processing_class"]
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            multiple = getattr(args, "pad_to_multiple_of", None)
            call["data_collator"] = PackedPairCollator(pad_to_multiple_of=multiple if isinstance(multiple, int) else None,
                                                       pad_token_id=0 if pad is None else pad)
        super().__init__(**call)
        missing = [name for name in _TRL_INTERNALS if not hasattr(self, name)]
        if missing:
            import trl

            raise RuntimeError(f"InfoRMRewardTrainer: this TRL ({trl.__version__}) has no RewardTrainer.{', '.join(missing)}, "
                               "which it fills to keep TRL's logging; use the TRL version inform_fast is tested with")
        check_peft_head(self.model)
        self.packing = packing
        self.beta = beta

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        loss, metrics, output = inform_batch_loss(
            model, inputs, beta=self.beta, center_rewards_coefficient=self.args.center_rewards_coefficient,
            gather=self.accelerator.gather_for_metrics,
        )
        if mode == "train":
            if "attention_mask" in inputs and inputs["attention_mask"].dim() == 2:
                tokens = inputs["attention_mask"].sum()
            elif "chosen_attention_mask" in inputs:
                tokens = inputs["chosen_attention_mask"].sum() + inputs["rejected_attention_mask"].sum()
            elif "cu_seqlens" in inputs:  # packed: the real tokens, not a pad_to_multiple_of filler
                tokens = inputs["cu_seqlens"][-1].to(inputs["input_ids"].device)
            else:
                tokens = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            tp_size = getattr(self, "_tp_size", 1)
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item() // tp_size
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
