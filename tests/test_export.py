"""Folding the linear InfoRM head into stock sequence classifiers: identical rewards."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed")
import transformers  # noqa: E402

from inform_fast.cli import main as cli_main  # noqa: E402
from inform_fast.export import export_sequence_classifier, fold_linear_head  # noqa: E402

_spec = importlib.util.spec_from_file_location("_modeling_tests", Path(__file__).with_name("test_modeling.py"))
_helpers = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("_modeling_tests", _helpers)
_spec.loader.exec_module(_helpers)
make_model, pad, ragged = _helpers.make_model, _helpers.pad, _helpers.ragged


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox", "gpt2"])
def test_stock_classifier_gives_identical_rewards(tmp_path, family):
    model = make_model(family)
    model.set_reward_normalization(0.0, 1.7)  # std folds into the weight; mean 0 needs no bias
    ids, mask = pad(ragged(), "right")
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
    out = export_sequence_classifier(model, tmp_path / "stock")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == model.config.backbone_config.model_type and config["pad_token_id"] == 0
    assert (out / "model.safetensors").is_file()
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(stock).__name__.endswith("ForSequenceClassification") and stock.config.num_labels == 1
    with torch.no_grad():
        got = stock(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fold_includes_bias_and_mean():
    model = make_model("llama", head_bias=True)
    with torch.no_grad():
        model.head.encoder.bias.normal_()
        model.head.decoder.bias.fill_(0.3)
    model.set_reward_normalization(1.2, 0.5)
    ids, mask = pad(ragged(), "right")
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).rewards.double()
        hidden = model.backbone(ids, attention_mask=mask).last_hidden_state
        pooled = hidden[torch.arange(3), mask.sum(1) - 1].double()
    weight, bias = fold_linear_head(model)
    torch.testing.assert_close(pooled @ weight[0] + bias, expected, rtol=1e-5, atol=1e-5)


def test_export_errors(tmp_path):
    with pytest.raises(ValueError, match="decoder"):
        export_sequence_classifier(make_model("llama", decoder="mlp"), tmp_path / "a")
    with pytest.raises(ValueError, match="bert"):
        export_sequence_classifier(make_model("bert"), tmp_path / "b")
    shifted = make_model("llama")
    shifted.set_reward_normalization(2.0, 1.0)
    with pytest.raises(ValueError, match="drop_bias"):
        export_sequence_classifier(shifted, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    out = export_sequence_classifier(shifted, tmp_path / "c", drop_bias=True)
    ids, mask = pad(ragged(), "right")
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert stock.config.inform_reward_offset == pytest.approx(-2.0)
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=ids).logits[:, 0] - 2.0, shifted(ids, attention_mask=mask).rewards, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="output_dir"):
        export_sequence_classifier(shifted, out, drop_bias=True)
    with pytest.raises(ValueError, match="model"):
        export_sequence_classifier(torch.nn.Linear(2, 2), tmp_path / "d")


def test_export_cli(tmp_path, capsys):
    model = make_model("gpt_neox")
    model.save_pretrained(tmp_path / "inform")
    assert cli_main(["export", "--model", str(tmp_path / "inform"), "--output", str(tmp_path / "stock")]) == 0
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "stock").eval()
    ids, mask = pad(ragged(), "right")
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=ids).logits, model(ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-5)
    assert cli_main(["export", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "x")]) == 2
    assert "--model: folder not found" in capsys.readouterr().err


# --- the loaders of RL frameworks, in our words ------------------------------------------------
# verl (volcengine/verl, commit b178a3c, 2026-01): verl/workers/fsdp_workers.py,
# RewardModelWorker._build_model loads the reward model with AutoConfig.from_pretrained (then
# num_labels = 1, classifier_dropout = 0.0) and AutoModelForTokenClassification.from_pretrained(
# path, config=...); _forward_micro_batch runs it on right-padded input_ids / attention_mask /
# position_ids (verl's compute_position_id_with_mask: cumsum of the mask - 1, clipped at 0) and
# takes the logit of the last real token, argmax(position_ids * attention_mask).
# OpenRLHF (OpenRLHF/OpenRLHF, commit 3c3be62, 2026-08): openrlhf/models/model.py,
# get_llm_for_sequence_regression(path, "reward") builds a subclass of the backbone's
# PreTrainedModel class (AutoModel's mapping, .__base__) holding the base model under its
# base_model_prefix and a bias-free nn.Linear(hidden, 1) named value_head_prefix ("score"), loads
# it with from_pretrained, and its forward (_get_reward_model) uses position ids cumsum - 1
# (padding filled with 1) and reads the value at the last 1 of the attention mask.


def verl_rewards(path, ids, mask):
    config = transformers.AutoConfig.from_pretrained(path)
    config.num_labels = 1
    config.classifier_dropout = 0.0
    model, info = transformers.AutoModelForTokenClassification.from_pretrained(path, config=config, output_loading_info=True)
    model.eval()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        scores = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits.squeeze(-1)
    last = torch.argmax(positions * mask, dim=-1)
    return scores[torch.arange(ids.shape[0]), last], info


def openrlhf_rewards(path, ids, mask, value_head_prefix="score"):
    config = transformers.AutoConfig.from_pretrained(path)
    base_class = transformers.AutoModel._model_mapping[type(config)]

    class RewardModel(base_class.__base__):
        def __init__(self, config):
            super().__init__(config)
            setattr(self, self.base_model_prefix, base_class(config))
            setattr(self, value_head_prefix, torch.nn.Linear(config.hidden_size, 1, bias=False))
            self.post_init()

        def forward(self, input_ids, attention_mask):
            last = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
            positions = attention_mask.long().cumsum(-1) - 1
            positions.masked_fill_(attention_mask == 0, 1)
            hidden = getattr(self, self.base_model_prefix)(input_ids, attention_mask=attention_mask, position_ids=positions)["last_hidden_state"]
            values = getattr(self, value_head_prefix)(hidden).squeeze(-1)
            return values.gather(dim=1, index=last).squeeze(1)

    model, info = RewardModel.from_pretrained(path, config=config, output_loading_info=True)
    with torch.no_grad():
        return model.eval()(ids, mask), info


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox", "gpt2"])
def test_export_loads_in_verl_and_openrlhf_with_the_same_rewards(tmp_path, family):
    # issue 12 item 3: verl's token classifier of GPT-2 and GPT-NeoX names its layer `classifier`,
    # the sequence classifier `score`: the export loaded there with a random head
    model = make_model(family)
    model.set_reward_normalization(0.0, 1.3)
    ids, mask = pad(ragged((6, 2, 9, 4)), "right")
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).rewards
    out = export_sequence_classifier(model, tmp_path / "stock")
    got, info = verl_rewards(out, ids, mask)
    assert not info["missing_keys"] or set(info["missing_keys"]) <= {"score.bias"}, info  # zero-initialised
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got, info = openrlhf_rewards(out, ids, mask)
    assert not info["missing_keys"], info
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=ids, attention_mask=mask).logits[:, 0], expected, rtol=1e-5, atol=1e-5)
