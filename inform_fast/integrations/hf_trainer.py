"""InfoRM training with a plain ``transformers.Trainer`` (no TRL needed).

``InfoRMTrainer`` takes tokenised pairs (``inform_fast.data.load_preference_data`` output, or any
dataset of dicts with ``chosen_ids`` / ``rejected_ids`` [/ ``margin``]) and trains with
``loss = mean[-logsigmoid(r_w - r_l - margin)] + beta * mean[KL_w + KL_l]``. With ``packing=True``
the chosen and rejected sequences of a batch go padding-free into one row.

The loss is the model's own: ONE forward over chosen and rejected together in pair mode
(``model(..., num_pairs=B)``) returns it in ``outputs.loss``, computed by the head's fused pairwise
op (the Triton kernel on CUDA), with its terms and the latent statistics beside it:
``kl``, ``preference_loss``, ``accuracy``, ``reward_margin``, ``mu_norm`` (mean L2 norm of mu),
``logvar_mean`` are logged through ``self.log`` with the Trainer's ``loss``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, Optional

import torch
import transformers

from inform_fast.data import PackedPairCollator, PairCollator
from inform_fast.head import InfoRMHead
from inform_fast.integrations.monitor_callback import merge_pending_scores

METRIC_NAMES = ("preference_loss", "kl", "accuracy", "reward_margin", "reward_chosen", "reward_rejected", "mu_norm", "logvar_mean")


def _unwrap(model):
    # DDP / accelerate wrappers keep the model in .module; PEFT in .base_model.model
    while hasattr(model, "module"):
        model = model.module
    if not hasattr(model, "head") and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def pair_batch(inputs: Dict[str, Any]) -> tuple[Dict[str, Any], int]:
    """(the model's keyword arguments, the number of pairs) of a collated preference batch, its
    rows or sequences laid out as the model's pair mode reads them: the chosen ones, then the
    rejected ones.

    ``inputs``: a ``PairCollator`` batch (``chosen_input_ids``/``chosen_attention_mask``/
    ``rejected_*`` [B, T]), a ``PackedPairCollator`` batch (``input_ids``/``position_ids`` [1, T],
    ``num_pairs``), or TRL's ``DataCollatorForPreference`` batch (``input_ids``/``attention_mask``
    [2B, T], chosen first).
    """
    if "chosen_input_ids" in inputs:
        if inputs["chosen_input_ids"].shape[1] != inputs["rejected_input_ids"].shape[1]:
            raise ValueError("rejected_input_ids: chosen and rejected must be padded to one length (use PairCollator)")
        return {"input_ids": torch.cat([inputs["chosen_input_ids"], inputs["rejected_input_ids"]]),
                "attention_mask": torch.cat([inputs["chosen_attention_mask"], inputs["rejected_attention_mask"]])}, \
            inputs["chosen_input_ids"].shape[0]
    if "num_pairs" in inputs:
        return {"input_ids": inputs["input_ids"], "position_ids": inputs["position_ids"]}, int(inputs["num_pairs"])
    if "input_ids" in inputs and "attention_mask" in inputs:
        rows = inputs["input_ids"].shape[0]
        if rows % 2:
            raise ValueError(f"input_ids: expected chosen then rejected rows (an even count), got {rows}")
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}, rows // 2
    raise ValueError(f"inputs: not a preference batch (keys {sorted(inputs)})")


def inform_batch_loss(model, inputs: Dict[str, Any], beta: Optional[float] = None,
                      center_rewards_coefficient: Optional[float] = None, gather: Optional[Callable] = None):
    """InfoRM loss and metrics for one collated batch (see ``pair_batch``; optional ``margin`` [B]):
    ``outputs.loss`` of the model's pair-mode forward.

    beta: the KL weight (default ``model.config.beta``).
    center_rewards_coefficient: TRL's option: adds ``coef * mean((r_w + r_l)^2)`` (raw rewards).
    gather: e.g. ``accelerator.gather_for_metrics``: the metrics ([1, k] per process) are averaged
        over what it returns, so every process logs the mean over all of them.

    Returns ``(loss [] float32, metrics dict of python floats, model output)``.
    """
    model_inputs, pairs = pair_batch(inputs)
    output = model(**model_inputs, num_pairs=pairs, margin=inputs.get("margin"), beta=beta,
                   center_rewards_coefficient=center_rewards_coefficient)
    with torch.no_grad():
        values = {
            "preference_loss": output.preference_loss,
            "kl": output.kl_loss,
            "accuracy": output.accuracy,
            "reward_margin": output.reward_margin,
            "reward_chosen": output.reward_chosen.mean(),
            "reward_rejected": output.reward_rejected.mean(),
            "mu_norm": output.mu.float().norm(dim=-1).mean(),
            "logvar_mean": output.logvar.float().mean(),
        }
        stacked = torch.stack([v.detach().float() for v in values.values()])  # [k]
        if gather is not None:
            stacked = gather(stacked[None]).reshape(-1, stacked.numel()).mean(dim=0)
        # one device-to-host copy for all the metrics, not one synchronisation each
        metrics = dict(zip(values, stacked.tolist()))
    return output.loss, metrics, output


def inform_peft_config(model, peft_config):
    """A copy of ``peft_config`` (PEFT) that trains an InfoRM model as intended.

    * ``target_modules=None`` (PEFT's default, e.g. TRL's ``LoraConfig()``): PEFT's default for the
      backbone's family (Llama / Qwen2: q_proj, v_proj; GPT-2: c_attn; ...), which PEFT cannot
      find itself because the model's own type is "inform";
    * ``"all-linear"``: every linear layer of the backbone (not the head's);
    * ``"head"`` is added to ``modules_to_save``: the head is trained in full and saved with the
      adapter (left out, PEFT would freeze it at its random initialisation). PEFT puts no adapter
      inside a module it saves whole, so targets that also match the head's layers (an MLP
      decoder's gate_proj, say) adapt only the backbone; ``check_peft_head`` refuses a model where
      the head's layers were wrapped anyway (the head reads their weights directly).
    """
    import copy

    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    core = _unwrap(model)
    if not hasattr(core, "head") or not hasattr(core.config, "backbone_config"):
        raise ValueError(f"model: expected an InfoRMForRewardModel, got {type(core).__name__}")
    config = copy.deepcopy(peft_config)
    if hasattr(config, "target_modules"):
        family = core.config.backbone_config.model_type
        if config.target_modules is None:
            defaults = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(family)
            if defaults is None:
                raise ValueError(f"peft_config.target_modules: PEFT has no default for the {family!r} backbone; "
                                 "name the backbone's layers to adapt (e.g. ['q_proj', 'v_proj'])")
            config.target_modules = set(defaults)
        elif isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
            names = sorted({name.rsplit(".", 1)[-1] for name, module in core.backbone.named_modules()
                            if isinstance(module, torch.nn.Linear)})
            config.target_modules = r"backbone\..*\.(?:" + "|".join(names) + ")"
    saved = list(config.modules_to_save or [])
    if "head" not in saved:
        config.modules_to_save = saved + ["head"]
    return config


def check_peft_head(model) -> None:
    """Refuse a PEFT model whose InfoRM head would not train: wrapped layers (see
    ``InfoRMHead.check_layers``) or no trainable head parameter (``modules_to_save`` without "head")."""
    if not hasattr(model, "peft_config"):
        return
    heads = [module for module in model.modules() if isinstance(module, InfoRMHead)]
    for head in heads:
        head.check_layers()
    if heads and not any(p.requires_grad for head in heads for p in head.parameters()):
        raise ValueError("model: PEFT froze the InfoRM head at its initialisation; add modules_to_save=['head'] to the "
                         "PEFT config (or build it with inform_fast.integrations.hf_trainer.inform_peft_config)")


def default_collator(tokenizer_or_pad_id, packing: bool = False, padding_side: Optional[str] = None):
    if packing:
        return PackedPairCollator()
    if isinstance(tokenizer_or_pad_id, int):
        return PairCollator(pad_token_id=tokenizer_or_pad_id, padding_side=padding_side or "right")
    tok = tokenizer_or_pad_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError("processing_class: the tokenizer has neither a pad token nor an EOS token")
    return PairCollator(pad_token_id=pad, padding_side=padding_side or getattr(tok, "padding_side", "right") or "right")


class _MetricsMixin:
    """Collects per-step InfoRM metrics and merges their averages into each ``self.log`` call."""

    def _record(self, metrics: Dict[str, float]) -> None:
        mode = "train" if self.model.training else "eval"
        store = self._inform_metrics[mode]
        for key, value in metrics.items():
            store[key].append(value)

    def _merged_logs(self, logs: Dict[str, float]) -> Dict[str, float]:
        mode = "train" if self.model.training else "eval"
        store = self._inform_metrics[mode]
        prefix = "eval_" if mode == "eval" else ""
        for key, values in store.items():
            if values:
                logs[f"{prefix}{key}"] = sum(values) / len(values)
        store.clear()
        return merge_pending_scores(self, logs)


class InfoRMTrainer(_MetricsMixin, transformers.Trainer):
    """``transformers.Trainer`` for InfoRM reward models.

    Args (besides the Trainer's):
        processing_class: the tokenizer (used for the pad id of the default collator and saved with checkpoints).
        packing: use ``PackedPairCollator`` (padding-free) instead of ``PairCollator``.
        beta: KL weight; default ``model.config.beta``.

    ``train_dataset`` holds dicts with ``chosen_ids`` / ``rejected_ids`` (lists of ints) and an
    optional ``margin``. ``remove_unused_columns`` is forced off (the columns are not forward() args).
    """

    # compute_loss returns a mean over pairs; the Trainer divides it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, packing: bool = False, beta: Optional[float] = None, **kwargs):
        if args is None:
            raise ValueError("args: pass a transformers.TrainingArguments")
        args.remove_unused_columns = False
        if data_collator is None:
            if processing_class is None and not packing:
                raise ValueError("processing_class: needed for the default collator's pad token (or pass data_collator)")
            data_collator = default_collator(processing_class, packing=packing)
        check_peft_head(model)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        self.packing = packing
        self.beta = beta
        self._inform_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        # evaluation calls compute_loss only when the trainer can return a loss without labels
        self.can_return_loss = True
        self.label_names = []
        self.model_accepts_loss_kwargs = False  # same meaning for transformers < 5.19

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics, output = inform_batch_loss(model, inputs, beta=self.beta, gather=self.accelerator.gather_for_metrics)
        self._record(metrics)
        return (loss, {"logits": output.logits}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, metrics, _ = inform_batch_loss(model, inputs, beta=self.beta, gather=self.accelerator.gather_for_metrics)
        self._record(metrics)
        return loss.detach(), None, None

    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        super().log(self._merged_logs(logs), *args, **kwargs)
