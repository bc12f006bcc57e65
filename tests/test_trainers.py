"""Training paths: collators agree with the model, HF Trainer learns, TRL trainer logs the KL."""
from __future__ import annotations

import math
import random

import pytest
import torch

from inform_fast import data
from inform_fast.testing import requires_triton_interpreter
from inform_fast.tiny import tiny_llama, tiny_tokenizer

modeling = pytest.importorskip("inform_fast.modeling", reason="inform_fast.modeling is not available")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def make_model(tok, beta=0.1, latent_dim=8, seed=0):
    backbone = tiny_llama(len(tok), seed=seed)
    return modeling.InfoRMForRewardModel.from_backbone(backbone, latent_dim=latent_dim, beta=beta)


def synthetic_pairs(tok, n=48, seed=0):
    """Learnable: the chosen answer ends with 'good', the rejected with 'bad'; lengths vary."""
    rng = random.Random(seed)
    fillers = ["the", "a", "cat", "dog", "red", "blue", "one", "two"]
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(fillers) for _ in range(rng.randint(1, 5)))
        body = " ".join(rng.choice(fillers) for _ in range(rng.randint(0, 3)))
        rows.append({
            "chosen_ids": data.encode(tok, f"{prompt} {body} good"),
            "rejected_ids": data.encode(tok, f"{prompt} {body} bad".strip() + " bad" * rng.randint(0, 2)),
        })
    return rows


def test_padded_and_packed_batches_give_the_same_loss(tok):
    pytest.importorskip("inform_fast.packing")
    from inform_fast.integrations.hf_trainer import inform_batch_loss

    model = make_model(tok).eval()  # eval: z = mu, no sampling noise
    examples = synthetic_pairs(tok, n=5, seed=1)
    examples[0]["margin"] = 0.3
    for e in examples[1:]:
        e["margin"] = 0.0
    padded = data.PairCollator(pad_token_id=tok.pad_token_id)(examples)
    left = data.PairCollator(pad_token_id=tok.pad_token_id, padding_side="left")(examples)
    packed = data.PackedPairCollator()(examples)
    with torch.no_grad():
        loss_a, metrics_a, _ = inform_batch_loss(model, padded)
        loss_b, metrics_b, _ = inform_batch_loss(model, left)
        loss_c, metrics_c, _ = inform_batch_loss(model, packed)
        reference = model.pairwise_loss(
            padded["chosen_input_ids"], padded["chosen_attention_mask"],
            padded["rejected_input_ids"], padded["rejected_attention_mask"], margin=padded["margin"],
        )
        reference_packed = model.packed_pairwise_loss(packed["input_ids"], packed["position_ids"], packed["num_pairs"], margin=packed["margin"])
    for loss in (loss_b, loss_c, reference.loss, reference_packed.loss):
        torch.testing.assert_close(loss, loss_a, atol=1e-5, rtol=1e-5)
    assert metrics_a["kl"] == pytest.approx(metrics_c["kl"], rel=1e-4)
    assert metrics_a["mu_norm"] == pytest.approx(metrics_b["mu_norm"], rel=1e-4)


def test_bad_batch_is_rejected(tok):
    from inform_fast.integrations.hf_trainer import inform_batch_loss

    with pytest.raises(ValueError, match="inputs"):
        inform_batch_loss(make_model(tok), {"foo": torch.zeros(2)})


@pytest.mark.parametrize("packing", [False, True])
def test_hf_trainer_loss_falls(tmp_path, tok, packing):
    from transformers import TrainingArguments

    from inform_fast.integrations.hf_trainer import InfoRMTrainer

    torch.manual_seed(0)
    model = make_model(tok, beta=0.01)
    pairs = synthetic_pairs(tok, n=64)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=16, learning_rate=3e-3,
        logging_steps=5, report_to=[], save_strategy="no", disable_tqdm=True, seed=0, use_cpu=True,
    )
    trainer = InfoRMTrainer(model=model, args=args, train_dataset=data.PreferenceDataset(pairs),
                            eval_dataset=data.PreferenceDataset(synthetic_pairs(tok, n=16, seed=5)),
                            processing_class=tok, packing=packing)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"] and after["eval_accuracy"] > 0.9
    assert "eval_kl" in after and "eval_mu_norm" in after
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) >= 4
    for key in ("kl", "accuracy", "reward_margin", "mu_norm", "logvar_mean", "preference_loss"):
        assert key in logs[0], key
    assert logs[-1]["loss"] < 0.7 * logs[0]["loss"], [entry["loss"] for entry in logs]
    assert logs[-1]["accuracy"] > 0.9


def test_trl_reward_trainer_logs_kl(tmp_path, tok):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    from inform_fast.integrations.trl import InfoRMRewardTrainer, RewardConfig

    model = make_model(tok)
    dataset = data.to_hf_dataset(synthetic_pairs(tok, n=16))
    args = RewardConfig(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=2, report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True,
        dataset_num_proc=None,
    )
    for packing in (False, True):
        trainer = InfoRMRewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, packing=packing)
        trainer.train()
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        assert logs and all("kl" in entry and entry["kl"] > 0 for entry in logs)
        for key in ("accuracy", "reward_margin", "mu_norm", "logvar_mean", "num_tokens"):
            assert key in logs[-1], key


def test_trl_reward_trainer_takes_raw_text(tmp_path, tok):
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from inform_fast.integrations.trl import InfoRMRewardTrainer, RewardConfig

    raw = datasets.Dataset.from_list([{"prompt": "hello", "chosen": " good", "rejected": " bad"}] * 8)
    args = RewardConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                        save_strategy="no", disable_tqdm=True, use_cpu=True, logging_steps=1)
    trainer = InfoRMRewardTrainer(model=make_model(tok), args=args, train_dataset=raw, processing_class=tok)
    trainer.train()
    assert "kl" in trainer.state.log_history[0]
    with pytest.raises(ValueError, match="model"):
        InfoRMRewardTrainer(model="some/name", args=args, train_dataset=raw, processing_class=tok)


@pytest.mark.parametrize("trainer_kind", ["hf", "trl"])
def test_monitor_callback_keeps_the_trainers_own_logs(tmp_path, tok, trainer_kind):
    # issue 12 item 2: the monitor's scores used to be logged from inside on_step_end, which
    # reset the Trainer's should_log: its loss / grad_norm / learning_rate of that step were lost
    from transformers import TrainerCallback, TrainingArguments

    from inform_fast.detect.monitor import OverOptimizationMonitor
    from inform_fast.integrations.monitor_callback import OverOptimizationCallback

    class ReportingIntegration(TrainerCallback):  # stands for wandb / tensorboard: sees `logs` in on_log
        def __init__(self):
            self.seen = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs))

    reporter = ReportingIntegration()
    model = make_model(tok, latent_dim=6)
    common = dict(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, logging_steps=3, report_to=[],
                  save_strategy="no", disable_tqdm=True, use_cpu=True)
    if trainer_kind == "hf":
        from inform_fast.integrations.hf_trainer import InfoRMTrainer

        trainer = InfoRMTrainer(model=model, args=TrainingArguments(**common), train_dataset=data.PreferenceDataset(synthetic_pairs(tok, n=24)),
                                processing_class=tok, callbacks=[reporter])
    else:
        pytest.importorskip("trl")
        from inform_fast.integrations.trl import InfoRMRewardTrainer, RewardConfig

        trainer = InfoRMRewardTrainer(model=model, args=RewardConfig(**common, dataset_num_proc=None),
                                      train_dataset=data.to_hf_dataset(synthetic_pairs(tok, n=24)), processing_class=tok,
                                      callbacks=[reporter])
    torch.manual_seed(0)
    monitor = OverOptimizationMonitor(torch.randn(300, 6), every=2, method="mop")
    OverOptimizationCallback(monitor, lambda step: torch.randn(40, 6)).attach(trainer)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "train_runtime" not in entry]
    assert [entry["step"] for entry in logs] == [2, 3, 4, 6]  # logging steps 3, 6 and the monitor's 2, 4, 6
    for entry in logs:
        assert {"loss", "grad_norm", "learning_rate", "kl"} <= set(entry), entry
        assert ("inform/mop" in entry) == (entry["step"] % 2 == 0), entry
    assert [r["step"] for r in monitor.history] == [2, 4, 6]
    seen = [entry for entry in reporter.seen if "train_runtime" not in entry]
    assert [("inform/mop" in entry, "loss" in entry) for entry in seen] == [(True, True), (False, True), (True, True), (True, True)]


@requires_triton_interpreter()
@pytest.mark.parametrize("trainer_kind", ["hf", "trl"])
def test_trainer_step_runs_the_fused_loss_kernel(tmp_path, tok, monkeypatch, trainer_kind):
    # issue 14 item 1: the trainers' loss is the model's outputs.loss, computed by the head's fused
    # pairwise op; on CUDA that is the Triton kernel, here forced and interpreted on the CPU
    from transformers import TrainingArguments

    from inform_fast import dispatch

    monkeypatch.setenv("INFORM_FAST_BACKEND", "triton")
    model = make_model(tok, latent_dim=4)
    common = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=3, learning_rate=1e-3, logging_steps=1,
                  report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True)
    pairs = synthetic_pairs(tok, n=6)
    if trainer_kind == "hf":
        from inform_fast.integrations.hf_trainer import InfoRMTrainer

        trainer = InfoRMTrainer(model=model, args=TrainingArguments(**common), train_dataset=data.PreferenceDataset(pairs),
                                processing_class=tok)
    else:
        pytest.importorskip("trl")
        from inform_fast.integrations.trl import InfoRMRewardTrainer, RewardConfig

        trainer = InfoRMRewardTrainer(model=model, args=RewardConfig(**common, dataset_num_proc=None, center_rewards_coefficient=0.1),
                                      train_dataset=data.to_hf_dataset(pairs), processing_class=tok)
    before = model.head.encoder.weight.detach().clone()
    with dispatch.recording() as calls:
        trainer.train()
    ops = [op for op, _ in calls]
    assert ops.count("linear_pairwise_loss") == 2 and ops.count("linear_pairwise_loss_backward") == 2, calls
    assert "vib_encode" not in ops  # the loss never takes the unfused encoder path
    assert {backend for _, backend in calls} == {"triton"}
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) and entry["kl"] > 0 for entry in logs)
    assert not torch.equal(model.head.encoder.weight.detach(), before)  # the kernel's gradients trained the head
