"""Fold a linear-decoder InfoRM reward model into a stock ``*ForSequenceClassification`` checkpoint.

In evaluation mode the linear InfoRM head is affine in the pooled hidden state h:

    mu     = W_mu h + b_mu                  (W_mu = first L rows of the encoder)
    reward = (w_dec . mu + b_dec - reward_mean) / reward_std
           = w h + b,   w = (w_dec W_mu) / reward_std,   b = (w_dec . b_mu + b_dec - reward_mean) / reward_std

so a stock sequence classifier of the backbone's family with ``num_labels=1`` and score layer ``w``
gives the same reward, and vLLM, verl, OpenRLHF or TGI can serve it without our code. verl loads
reward models as ``*ForTokenClassification`` and reads the last token's logit: for families whose
token classifier names its layer differently (GPT-2 and GPT-NeoX: ``classifier``), the checkpoint
holds that layer too, so every loader gets the same rewards.

Limits, checked with clear errors:
* only decoder="linear" folds (the gated-MLP decoder is not affine);
* the family's classifier must be one linear layer applied to the last token's hidden state
  (Llama, Mistral, Qwen2, GPT-NeoX/Pythia, GPT-2, ... name it ``score``). BERT-like encoders pool the
  FIRST token through a pooler and cannot hold the fold;
* their ``score`` layer has no bias: a non-zero constant b (from ``head_bias`` or ``reward_mean``)
  cannot be stored. Pass ``drop_bias=True`` to export anyway; rewards are then shifted by the
  constant -b (rankings and pairwise differences unchanged), recorded as ``inform_reward_offset`` in
  the exported config.

Stock classifiers pool the rightmost token that is not ``pad_token_id`` and use arange position ids:
give them right-padded batches, and use a pad token different from EOS (with pad == eos they
drop the trailing EOS). Rewards match ours to float32 rounding in float32; in bf16 the stock
model applies the score layer in bf16 where we accumulate in float32.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

__all__ = ["fold_linear_head", "export_sequence_classifier", "export_from_directory"]

# Written into every export: the files it holds. ``overwrite=True`` replaces a folder only if this
# marker says that every file in it came from an earlier export.
MARKER = ".inform_fast_export.json"


def _foreign_entries(folder: Path) -> list:
    """Entries of an existing ``folder`` that no earlier export wrote (all of them without a marker)."""
    entries = sorted(entry.name for entry in folder.iterdir())
    try:
        with open(folder / MARKER) as stream:
            own = set(json.load(stream)["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        return entries
    return [name for name in entries if name not in own or not (folder / name).is_file()]


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir: {str(output_dir)!r} is a file, not a folder; give a folder path")
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if not overwrite:
        raise ValueError(f"output_dir: {str(output_dir)!r} exists and is not empty (pass overwrite=True to replace "
                         "a previous export)")
    foreign = _foreign_entries(output_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ValueError(f"output_dir: {str(output_dir)!r} holds files that no earlier export wrote ({shown}); "
                         "overwrite=True replaces only a previous export: choose another folder")


@torch.no_grad()
def fold_linear_head(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode linear head + normalisation as (weight [1, H], bias [1]), float64."""
    config = model.config
    if config.decoder != "linear":
        raise ValueError(
            f"model: decoder={config.decoder!r} cannot be folded into a linear score layer; only decoder='linear' exports"
        )
    head = model.head
    latent = config.latent_dim
    w_mu = head.encoder.weight[:latent].double()  # [L, H]
    b_mu = head.encoder.bias[:latent].double() if head.encoder.bias is not None else torch.zeros(latent, dtype=torch.float64, device=w_mu.device)
    w_dec = head.decoder.weight.double().reshape(1, latent)  # [1, L]
    b_dec = head.decoder.bias.double().reshape(1) if head.decoder.bias is not None else torch.zeros(1, dtype=torch.float64, device=w_mu.device)
    weight = (w_dec @ w_mu) / config.reward_std  # [1, H]
    bias = (w_dec @ b_mu + b_dec - config.reward_mean) / config.reward_std  # [1]
    return weight, bias


def _score_layer(stock: nn.Module, family: str) -> nn.Linear:
    score = getattr(stock, "score", None)
    if not isinstance(score, nn.Linear) or score.out_features != 1:
        raise ValueError(
            f"model: the {family!r} family's sequence classifier is not a single linear 'score' layer on the "
            f"last token ({type(stock).__name__}); the InfoRM head cannot be folded into it"
        )
    return score


def _token_classifier_layer(config, score: nn.Linear):
    """(name, a fresh nn.Linear like it) of the family's token-classification output layer when
    its name is not ``score``; None when it is, or when the family has no token classifier."""
    from transformers import AutoModelForTokenClassification

    try:
        with torch.device("meta"):
            token_model = AutoModelForTokenClassification.from_config(config)
    except (ValueError, KeyError):
        return None
    prefix = token_model.base_model_prefix
    for name, module in token_model.named_children():
        if name != prefix and isinstance(module, nn.Linear) and module.out_features == 1 and name != "score":
            return name, nn.Linear(score.in_features, 1, bias=module.bias is not None, device=score.weight.device, dtype=score.weight.dtype)
    return None


@torch.no_grad()
def export_sequence_classifier(
    model,
    output_dir: Union[str, os.PathLike],
    tokenizer=None,
    pad_token_id: Optional[int] = None,
    drop_bias: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a stock ``AutoModelForSequenceClassification`` checkpoint (safetensors) to ``output_dir``.

    Args:
        model: an ``InfoRMForRewardModel`` with decoder="linear".
        tokenizer: saved alongside when given (its pad token id is used if the configs have none).
        pad_token_id: written to the exported config (default: backbone's, then the tokenizer's).
        drop_bias: export even though a non-zero constant cannot be stored (see module docstring).
        overwrite: replace an existing non-empty ``output_dir`` that a previous export wrote (a
            folder holding anything else is refused: nothing the export did not write is deleted).
    Returns the output path. The checkpoint is written to a temporary folder first and moved in
    place at the end (``inform_fast._io.atomic_directory``), so a failure, a full disk or SIGTERM
    leaves nothing half-written and a previous export as it was.
    """
    from inform_fast.modeling import InfoRMForRewardModel

    if not isinstance(model, InfoRMForRewardModel):
        raise ValueError(f"model: expected an InfoRMForRewardModel, got {type(model).__name__}")
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, overwrite)
    weight, bias = fold_linear_head(model)
    family = model.config.backbone_config.model_type

    stock_config = copy.deepcopy(model.config.backbone_config)
    stock_config.num_labels = 1
    stock_config.problem_type = "regression"
    if pad_token_id is None:
        pad_token_id = getattr(stock_config, "pad_token_id", None)
    if pad_token_id is None and tokenizer is not None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None)
    stock_config.pad_token_id = pad_token_id

    backbone = model.backbone
    param = next(backbone.parameters())
    stock = AutoModelForSequenceClassification.from_config(stock_config, dtype=param.dtype)
    score = _score_layer(stock, family)
    offset = float(bias.item())
    if score.bias is None and offset != 0.0:
        if not drop_bias:
            raise ValueError(
                f"model: the folded head has a constant term {offset:.6g} (from head_bias or reward_mean) but the "
                f"{family!r} score layer has no bias; pass drop_bias=True to export rewards shifted by that constant"
            )
        stock.config.inform_reward_offset = offset
    base = stock.base_model
    # strict: the stock base model must have exactly the backbone's parameters.
    base.load_state_dict({k: v.detach().cpu() for k, v in backbone.state_dict().items()}, strict=True)
    score.weight.copy_(weight.to(score.weight.dtype).reshape(score.weight.shape))
    if score.bias is not None:
        score.bias.copy_(bias.to(score.bias.dtype).reshape(score.bias.shape))
    token_layer = _token_classifier_layer(stock_config, score)
    if token_layer is not None:
        # verl loads reward models as *ForTokenClassification; where its layer has another name
        # (GPT-2, GPT-NeoX: `classifier`), the checkpoint carries it too, or verl would start
        # from a random head. The sequence classifier ignores it (an unused-weights note on load).
        name, layer = token_layer
        layer.weight.copy_(score.weight)
        if layer.bias is not None:
            layer.bias.copy_(score.bias if score.bias is not None else torch.zeros_like(layer.bias))
        stock.add_module(name, layer)
    stock.config.architectures = [type(stock).__name__]

    from inform_fast._io import atomic_directory, new_folders

    with new_folders(output_dir.parent, "output_dir"), \
            atomic_directory(output_dir, "output_dir", replace=True) as staging:
        stock.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        files = sorted(os.listdir(staging))
        with open(os.path.join(staging, MARKER), "w") as stream:
            json.dump({"generator": "inform-fast export", "files": files}, stream)
    return output_dir


def export_from_directory(
    model_dir: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    pad_token_id: Optional[int] = None,
    drop_bias: bool = False,
    overwrite: bool = False,
) -> Path:
    """Load a saved InfoRM checkpoint (and its tokenizer, if saved with it) and export it."""
    from inform_fast.loading import check_inform_checkpoint, load_tokenizer, load_weights
    from inform_fast.modeling import InfoRMForRewardModel

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model_dir: folder not found: {str(model_dir)!r}")
    _check_output_dir(Path(output_dir), overwrite)  # before the model is loaded
    check_inform_checkpoint(str(model_dir), "model_dir")
    model = load_weights(lambda: InfoRMForRewardModel.from_pretrained(model_dir).eval(), str(model_dir), "model_dir")
    tokenizer = None
    if any((model_dir / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")):
        tokenizer = load_tokenizer(str(model_dir), "model_dir")
    return export_sequence_classifier(
        model, output_dir, tokenizer=tokenizer, pad_token_id=pad_token_id, drop_bias=drop_bias, overwrite=overwrite
    )
