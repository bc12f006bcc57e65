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
    out = model.export_sequence_classifier(tmp_path / "stock")
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
