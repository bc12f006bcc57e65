"""CLI end to end: train on tiny data, then score; clean errors and no output for bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from inform_fast.cli import main
from inform_fast.tiny import save_tiny_backbone

pytest.importorskip("inform_fast.modeling", reason="inform_fast.modeling is not available")

PAIRS = [
    {"prompt": "hello question", "chosen": " good answer", "rejected": " bad answer"},
    {"prompt": "please help", "chosen": " yes great thanks", "rejected": " no"},
    {"chosen": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "good"}],
     "rejected": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "bad"}]},
] * 3


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("backbone"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, backbone):
    root = tmp_path_factory.mktemp("train")
    data = write_jsonl(root / "pairs.jsonl", PAIRS)
    out = root / "rm"
    code = main(["train", "--model", backbone, "--data", data, "--output-dir", str(out), "--latent-dim", "8",
                 "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3", "--max-length", "16", "--logging-steps", "1"])
    assert code == 0
    return out


def test_train_writes_a_loadable_checkpoint(trained):
    from inform_fast.modeling import InfoRMForRewardModel

    model = InfoRMForRewardModel.from_pretrained(str(trained))
    assert model.config.latent_dim == 8
    assert (trained / "tokenizer_config.json").exists()
    log = json.loads((trained / "training_log.json").read_text())["log_history"]
    assert any("kl" in entry for entry in log)
    assert not [p for p in trained.parent.iterdir() if ".tmp-" in p.name]


def test_train_builds_the_head_the_options_name(tmp_path, backbone, trained, capsys):
    from inform_fast.modeling import InfoRMForRewardModel

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "mlp"
    assert main(["train", "--model", backbone, "--data", data, "--output-dir", str(out), "--latent-dim", "8",
                 "--decoder", "mlp", "--decoder-activation", "gelu", "--kl", "authors", "--max-steps", "1",
                 "--batch-size", "4", "--max-length", "16"]) == 0
    config = InfoRMForRewardModel.from_pretrained(str(out)).config
    assert (config.decoder, config.decoder_activation, config.kl) == ("mlp", "gelu", "authors")
    capsys.readouterr()  # the training run's progress bars
    # refused with one line naming the option: an activation without the mlp decoder, an unknown
    # activation, and head options on a checkpoint whose head exists
    for extra, message in ((["--decoder-activation", "gelu"], "--decoder-activation: applies to the mlp decoder only"),
                           (["--decoder", "mlp", "--decoder-activation", "bogus"], "--decoder-activation: "),
                           (["--kl", "authors"], None)):
        model = str(trained) if message is None else backbone
        assert main(["train", "--model", model, "--data", data, "--output-dir", str(tmp_path / "x"), "--max-steps", "1"] + extra) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1
        assert (message or "--kl: ") in error and "Traceback" not in error
    assert not (tmp_path / "x").exists()


def test_train_continues_an_inform_checkpoint_with_packing(tmp_path, trained):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "rm2"
    assert main(["train", "--model", str(trained), "--data", data, "--output-dir", str(out), "--max-steps", "2",
                 "--batch-size", "3", "--packing", "--beta", "0.05"]) == 0
    from inform_fast.modeling import InfoRMForRewardModel

    model = InfoRMForRewardModel.from_pretrained(str(out))
    assert model.config.latent_dim == 8 and model.config.beta == 0.05


@pytest.mark.parametrize("checkpointing", [False, True])
def test_train_with_trl(tmp_path, backbone, monkeypatch, checkpointing):
    # TRL's RewardConfig turns activation checkpointing on by default; the CLI must follow its own
    # --gradient-checkpointing flag instead (off unless given)
    pytest.importorskip("trl")
    from inform_fast.integrations import trl as integration

    seen = {}
    train = integration.InfoRMRewardTrainer.train

    def recording_train(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        backbone_model = self.model.backbone
        seen["on"] = getattr(backbone_model, "is_activation_checkpointing", None)
        if seen["on"] is None:  # transformers before the rename
            seen["on"] = backbone_model.is_gradient_checkpointing
        return result

    monkeypatch.setattr(integration.InfoRMRewardTrainer, "train", recording_train)
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "rm"
    flag = ["--gradient-checkpointing"] if checkpointing else []
    assert main(["train", "--model", backbone, "--data", data, "--output-dir", str(out), "--latent-dim", "4",
                 "--max-steps", "2", "--batch-size", "3", "--trainer", "trl", *flag]) == 0
    assert (out / "config.json").exists()
    assert seen["on"] is checkpointing


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_score_writes_rewards_and_mu_in_row_order(tmp_path, trained, suffix):
    import torch
    from transformers import AutoTokenizer

    from inform_fast import data as data_mod
    from inform_fast.modeling import InfoRMForRewardModel

    words = ["good", "bad", "the cat", "a dog is red", "one two three four five"]
    rows = [{"prompt": "hello", "response": " " + " ".join([words[i % 5]] * (1 + i % 3))} for i in range(37)]
    rows[5] = {"response": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "good"}]}
    data = write_jsonl(tmp_path / "responses.jsonl", rows)
    out = tmp_path / f"scores{suffix}"
    assert main(["score", "--model", str(trained), "--data", data, "--output", str(out), "--batch-size", "4",
                 "--window", "2", "--max-length", "12"]) == 0
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        loaded = load_file(str(out))
        rewards, mu = loaded["rewards"], loaded["mu"]
    else:
        mu = np.load(out)
        rewards = np.load(tmp_path / "scores.rewards.npy")
    assert rewards.shape == (37,) and mu.shape == (37, 8)
    # same numbers as scoring rows one by one, in file order
    model = InfoRMForRewardModel.from_pretrained(str(trained)).eval()
    tok = AutoTokenizer.from_pretrained(str(trained))
    for index, ids in list(data_mod.stream_tokenized(data, tok, max_length=12))[::7]:
        r, m = model.score(torch.tensor([ids]))
        np.testing.assert_allclose(rewards[index], r.numpy()[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(mu[index], m.numpy()[0], rtol=1e-4, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_score_field_chosen(tmp_path, trained):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "chosen.safetensors"
    assert main(["score", "--model", str(trained), "--data", data, "--output", str(out), "--field", "chosen"]) == 0
    from safetensors.numpy import load_file

    assert load_file(str(out))["rewards"].shape == (len(PAIRS),)


def test_bad_rows_give_clean_errors_and_no_output(tmp_path, backbone, trained, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", PAIRS[:2] + [{"prompt": "x", "chosen": "good"}])
    out = tmp_path / "rm"
    assert main(["train", "--model", backbone, "--data", bad, "--output-dir", str(out), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: row 3: missing column 'rejected'" in err and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    rows = [{"response": "good"}] * 9 + [{"response": ""}]
    scores = tmp_path / "s.npy"
    assert main(["score", "--model", str(trained), "--data", write_jsonl(tmp_path / "r.jsonl", rows),
                 "--output", str(scores), "--batch-size", "2", "--window", "1"]) == 2
    assert "r.jsonl: row 10: column 'response' is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "r.jsonl"]

    assert main(["score", "--model", str(trained), "--data", bad, "--output", str(tmp_path / "x.csv")]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["train", "--model", backbone, "--data", bad, "--output-dir", str(trained)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_train_sweeps_latent_dim_and_beta(tmp_path, backbone):
    from inform_fast.modeling import InfoRMForRewardModel

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    held_out = write_jsonl(tmp_path / "eval.jsonl", PAIRS[:3])
    out = tmp_path / "sweep"
    assert main(["train", "--model", backbone, "--data", data, "--eval-data", held_out, "--output-dir", str(out),
                 "--latent-dim", "4", "8", "--beta", "0", "0.5", "--max-steps", "2", "--batch-size", "3"]) == 0
    summary = json.loads((out / "sweep.json").read_text())["runs"]
    assert [(r["latent_dim"], r["beta"]) for r in summary] == [(4, 0.0), (4, 0.5), (8, 0.0), (8, 0.5)]
    for run in summary:
        model = InfoRMForRewardModel.from_pretrained(str(out / run["name"]))
        assert model.config.latent_dim == run["latent_dim"] and model.config.beta == run["beta"]
        assert 0.0 <= run["eval_accuracy"] <= 1.0 and "eval_kl" in run and "kl" in run
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_sweep_rejects_a_bad_value_before_training(tmp_path, backbone):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "sweep"
    assert main(["train", "--model", backbone, "--data", data, "--output-dir", str(out), "--beta", "0.1", "-1"]) == 2
    assert not out.exists()
