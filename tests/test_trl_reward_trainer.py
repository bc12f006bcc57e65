"""TRL's own RewardTrainer test cases, adapted to tiny offline models, each run for TRL's
``RewardTrainer`` on a stock sequence classifier ("trl") and for ``InfoRMRewardTrainer`` on an
InfoRM model ("inform"): what works for TRL's users must work the same for ours, and an option we
cannot honour must be refused by name (issue 12 items 5 and 6).

The cases follow huggingface/trl tests/test_reward_trainer.py (commit f2cd577, 2026-07), written
in our words; the hub models and datasets there are replaced by a tiny Qwen2 and a few rows of
the tiny tokenizer's words.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
peft = pytest.importorskip("peft")

import transformers  # noqa: E402

from inform_fast import data  # noqa: E402
from inform_fast.integrations.trl import InfoRMRewardTrainer, RewardConfig  # noqa: E402
from inform_fast.modeling import InfoRMForRewardModel  # noqa: E402
from inform_fast.tiny import tiny_tokenizer  # noqa: E402
from trl import RewardTrainer  # noqa: E402

KINDS = ["trl", "inform"]
WORDS = ["good", "great", "fine", "yes", "thanks", "bad", "awful", "poor", "no"]


def qwen2_config(tok):
    return transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, num_labels=1)


def make_model(kind, tok, seed=0):
    torch.manual_seed(seed)
    if kind == "trl":
        return transformers.Qwen2ForSequenceClassification(qwen2_config(tok))
    return InfoRMForRewardModel.from_backbone(transformers.Qwen2Model(qwen2_config(tok)), latent_dim=8)


def implicit_prompt_rows(n=16):
    rows = []
    for i in range(n):
        prompt = " ".join(["hello", "question", "the", "cat"][: 1 + i % 4])
        rows.append({"chosen": f"{prompt} {WORDS[i % 5]} answer", "rejected": f"{prompt} {WORDS[5 + i % 4]}"})
    return rows


def explicit_prompt_rows(n=16):
    return [{"prompt": "please help", "chosen": r["chosen"][len("hello"):], "rejected": r["rejected"][len("hello"):]}
            for r in implicit_prompt_rows(n)]


def conversational_rows(n=16):
    return [{"prompt": [{"role": "user", "content": "please help"}],
             "chosen": [{"role": "assistant", "content": f"{WORDS[i % 5]} answer"}],
             "rejected": [{"role": "assistant", "content": WORDS[5 + i % 4]}]} for i in range(n)]


def make_trainer(kind, tok, tmp_path, rows=None, model=None, trainer_kwargs=None, **config):
    options = dict(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                   report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, logging_steps=1)
    options.update(config)
    cls = RewardTrainer if kind == "trl" else InfoRMRewardTrainer
    dataset = datasets.Dataset.from_list(rows if rows is not None else implicit_prompt_rows())
    return cls(model=model if model is not None else make_model(kind, tok), args=RewardConfig(**options),
               train_dataset=dataset, processing_class=tok, **(trainer_kwargs or {}))


def snapshot(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def changed(before, trainer, name):
    return not torch.equal(before[name], trainer.model.get_parameter(name))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [implicit_prompt_rows, explicit_prompt_rows, conversational_rows])
def test_train(kind, rows, tok, tmp_path):
    trainer = make_trainer(kind, tok, tmp_path, rows=rows())
    before = snapshot(trainer)
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(changed(before, trainer, n) for n in trainable if "embed" not in n)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_train_with_peft_config(kind, gradient_checkpointing, tok, tmp_path):
    # TRL's default LoraConfig(): no target_modules (issue 12 item 5: "Please specify target_modules")
    model = make_model(kind, tok)
    base_names = {f"base_model.model.{n}" for n, _ in model.named_parameters()}
    trainer = make_trainer(kind, tok, tmp_path, model=model, gradient_checkpointing=gradient_checkpointing,
                           trainer_kwargs={"peft_config": peft.LoraConfig()})
    before = snapshot(trainer)
    trainer.train()
    names = list(before)
    assert all(not changed(before, trainer, n) for n in names if n in base_names)  # the base stays
    lora = [n for n in names if "lora_" in n]
    assert lora and all(changed(before, trainer, n) for n in lora)
    if kind == "inform":  # and the head is trained in full, next to the adapters
        head = [n for n in names if ".head.modules_to_save." in n]
        assert head and all(changed(before, trainer, n) for n in head)
        trainer.save_model(str(tmp_path / "adapter"))
        fresh = peft.PeftModel.from_pretrained(make_model(kind, tok), str(tmp_path / "adapter")).eval()
        ids = torch.tensor([data.encode(tok, "hello good answer"), data.encode(tok, "hello bad answer")])
        trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()  # no bf16 autocast
        with torch.no_grad():
            torch.testing.assert_close(fresh(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_peft_targets_never_wrap_the_head(tok, tmp_path):
    # "all-linear", and targets that also name the head's layers: adapters on the backbone only,
    # the head trained in full (PEFT puts no adapter inside a module it saves whole)
    for targets in ("all-linear", ["q_proj", "encoder"]):
        trainer = make_trainer("inform", tok, tmp_path, max_steps=1, trainer_kwargs={"peft_config": peft.LoraConfig(target_modules=targets)})
        wrapped = {n for n, m in trainer.model.named_modules() if hasattr(m, "lora_A")}
        assert wrapped and not any(".head." in n for n in wrapped)
        assert targets != "all-linear" or any("mlp.down_proj" in n for n in wrapped)
        before = snapshot(trainer)
        trainer.train()
        assert all(changed(before, trainer, n) for n in before if ".head.modules_to_save." in n)
    # an adapter that does sit on a head layer would be bypassed (the head reads its weights
    # directly): the head refuses to run, naming the layer, and the trainers refuse the model
    model = make_model("inform", tok)
    model.config.decoder = "mlp"
    wrapped = peft.get_peft_model(InfoRMForRewardModel(model.config), peft.LoraConfig(target_modules=["q_proj", "gate_proj"]))
    with pytest.raises(ValueError, match=r"head\.decoder\.gate_proj: is a Linear"):
        wrapped(input_ids=torch.tensor([data.encode(tok, "hello good")]))
    from inform_fast.integrations.hf_trainer import InfoRMTrainer

    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match=r"head\.decoder\.gate_proj"):
        InfoRMTrainer(model=wrapped, args=args, train_dataset=data.PreferenceDataset([]), processing_class=tok)
    # a PEFT model whose head PEFT froze (no modules_to_save): refused, naming the fix
    frozen = peft.get_peft_model(make_model("inform", tok), peft.LoraConfig(target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ValueError, match="modules_to_save"):
        InfoRMTrainer(model=frozen, args=args, train_dataset=data.PreferenceDataset([]), processing_class=tok)


@pytest.mark.parametrize("kind", KINDS)
def test_train_with_pretokenized_data_and_margin(kind, tok, tmp_path):
    rows = [{"chosen_ids": data.encode(tok, r["chosen"]), "rejected_ids": data.encode(tok, r["rejected"]), "margin": 0.5}
            for r in implicit_prompt_rows()]
    trainer = make_trainer(kind, tok, tmp_path, rows=rows)
    before = snapshot(trainer)
    trainer.train()
    assert any(changed(before, trainer, n) for n in before)


@pytest.mark.parametrize("kind", KINDS)
def test_center_rewards_coefficient(kind, tok, tmp_path):
    # issue 12 item 6: the option did nothing (loss identical at 0 and 100)
    losses = {}
    for coefficient in (None, 0.0, 100.0):
        trainer = make_trainer(kind, tok, tmp_path, center_rewards_coefficient=coefficient)
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
        with torch.no_grad():
            losses[coefficient] = float(trainer.compute_loss(trainer.model, dict(batch)))
    assert losses[None] == pytest.approx(losses[0.0])
    assert losses[100.0] > losses[0.0] + 1e-3
    trainer = make_trainer(kind, tok, tmp_path, center_rewards_coefficient=0.01)
    before = snapshot(trainer)
    trainer.train()
    assert any(changed(before, trainer, n) for n in before)


@pytest.mark.parametrize("kind", KINDS)
def test_train_with_eval_and_token_options(kind, tok, tmp_path):
    trainer = make_trainer(kind, tok, tmp_path, eval_strategy="steps", eval_steps=2, eos_token="<eos>", pad_token="<pad>",
                           max_length=6, trainer_kwargs={"eval_dataset": datasets.Dataset.from_list(implicit_prompt_rows(8))})
    lengths = [len(r["chosen_ids"]) for r in trainer.train_dataset] + [len(r["rejected_ids"]) for r in trainer.train_dataset]
    assert trainer.train_dataset.num_rows < 16 and max(lengths) <= 6  # pairs over max_length dropped, as TRL does
    trainer.train()
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evals and "eval_accuracy" in evals[-1]


@pytest.mark.parametrize("kind", KINDS)
def test_train_with_chat_template_from_path(kind, tok, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} ! {% endfor %}")
    trainer = make_trainer(kind, tok, tmp_path, rows=conversational_rows(), chat_template_path=str(template))
    assert trainer.processing_class.chat_template == template.read_text()
    trainer.train()


def test_num_labels_and_model_kind_checked(tok, tmp_path):
    config = qwen2_config(tok)
    config.num_labels = 2
    with pytest.raises(ValueError, match="num_labels"):
        make_trainer("trl", tok, tmp_path, model=transformers.Qwen2ForSequenceClassification(config))
    # a stock classifier given to the InfoRM trainer: one line naming the model, not an AttributeError on 'beta'
    with pytest.raises(ValueError, match="model: InfoRMRewardTrainer trains an InfoRMForRewardModel, got Qwen2ForSequenceClassification"):
        make_trainer("inform", tok, tmp_path, model=make_model("trl", tok))


def test_missing_processing_class(tok, tmp_path):
    # loaded from the backbone's folder when it has one; a clear error naming processing_class otherwise
    backbone = transformers.Qwen2Model(qwen2_config(tok))
    backbone.save_pretrained(tmp_path / "backbone")
    tok.save_pretrained(tmp_path / "backbone")
    args = RewardConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to="none", use_cpu=True)
    rows = datasets.Dataset.from_list(implicit_prompt_rows())
    model = InfoRMForRewardModel.from_backbone(str(tmp_path / "backbone"), latent_dim=8)
    trainer = InfoRMRewardTrainer(model=model, args=args, train_dataset=rows)
    assert trainer.processing_class.eos_token == "<eos>"
    trainer.train()
    with pytest.raises(ValueError, match="processing_class: required"):
        InfoRMRewardTrainer(model=make_model("inform", tok), args=args, train_dataset=rows)


def test_packing_with_pad_to_multiple_of(tok, tmp_path):
    trainer = make_trainer("inform", tok, tmp_path, pad_to_multiple_of=16, max_steps=4, trainer_kwargs={"packing": True})
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[1] % 16 == 0 and int(batch["cu_seqlens"][-1]) < batch["input_ids"].shape[1]
    trainer.train()  # one epoch: the 16 pairs
    tokens = sum(len(row[k]) for row in trainer.train_dataset for k in ("chosen_ids", "rejected_ids"))
    assert trainer.state.log_history[-2]["num_tokens"] == tokens  # real tokens, not the filler


def test_metrics_are_gathered_across_processes(tok, tmp_path, monkeypatch):
    # TRL averages accuracy and margin over all processes (accelerator.gather_for_metrics); a second
    # process that saw accuracy 0 and KL 10 is simulated by the gather
    trainer = make_trainer("inform", tok, tmp_path, max_steps=1)
    real = trainer.accelerator.gather_for_metrics
    seen = []

    def gather_two_processes(tensor):
        seen.append(tensor.shape)
        if tensor.dim() == 2 and tensor.shape[0] == 1:  # the [1, k] InfoRM metrics
            other = torch.zeros_like(tensor)
            other[0, 1] = 10.0  # kl
            return torch.cat([tensor, other])
        return real(tensor)

    monkeypatch.setattr(trainer.accelerator, "gather_for_metrics", gather_two_processes)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    from inform_fast.integrations.hf_trainer import inform_batch_loss

    trainer.model.eval()  # z = mu: the two forwards below see the same rewards
    with torch.no_grad():
        _, local, _ = inform_batch_loss(trainer.model, dict(batch))
        trainer.compute_loss(trainer.model, dict(batch))
    logged = {key: values[-1] for key, values in trainer._metrics["eval"].items()}
    assert logged["accuracy"] == pytest.approx(local["accuracy"] / 2)
    assert logged["kl"] == pytest.approx((local["kl"] + 10.0) / 2)
    assert logged["margin"] == pytest.approx(local["reward_margin"] / 2, abs=1e-6)
