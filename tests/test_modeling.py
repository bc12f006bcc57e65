"""InfoRMForRewardModel on tiny random backbones (no downloads): Auto loading, save/load, padding and
packing invariance, gradients, checkpointing, bf16, PEFT, errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from inform_fast.modeling import InfoRMConfig, InfoRMForRewardModel, InfoRMRewardModelOutput  # noqa: E402
from inform_fast.packing import pack_sequences  # noqa: E402

VOCAB, PAD = 100, 0


def backbone_config(family: str, attn: str = "sdpa"):
    # initializer_range 0.2 makes rewards O(1), so the comparisons below have teeth.
    common = dict(vocab_size=VOCAB, pad_token_id=PAD, attn_implementation=attn, initializer_range=0.2)
    if family == "llama":
        return transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, **common)
    if family == "qwen2":
        return transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, **common)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **common)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2, **common)
    if family == "bert":
        return transformers.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, **common)
    raise KeyError(family)


FAMILIES = ["llama", "qwen2", "gpt_neox", "gpt2", "bert"]


def make_model(family="llama", attn="sdpa", latent_dim=8, seed=0, **kwargs) -> InfoRMForRewardModel:
    torch.manual_seed(seed)
    model = InfoRMForRewardModel(InfoRMConfig(backbone_config=backbone_config(family, attn), latent_dim=latent_dim, **kwargs))
    with torch.no_grad():  # a head with unit-scale weights so rewards vary by O(1) between inputs
        model.head.encoder.weight.normal_(0.0, 1.0)
        for layer in model.head.decoder.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0.0, 1.0)
    return model.eval()


def ragged(lengths=(5, 3, 7), seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=gen) for n in lengths]


def pad(seqs, side="right", value=PAD):
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), value, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, : len(s)], mask[i, : len(s)] = s, 1
        else:
            ids[i, length - len(s):], mask[i, length - len(s):] = s, 1
    return ids, mask


# ---------------------------------------------------------------------------------------------
# config, registration, save / load


def test_config_round_trip_keeps_backbone_type():
    config = InfoRMConfig(backbone_config=backbone_config("gpt_neox"), latent_dim=16, beta=0.3, kl="authors", reward_mean=1.5, reward_std=2.0)
    assert config.num_labels == 1 and config.hidden_size == 32
    data = config.to_dict()
    assert data["model_type"] == "inform" and data["backbone_config"]["model_type"] == "gpt_neox"
    again = InfoRMConfig.from_dict(data)
    assert isinstance(again.backbone_config, transformers.GPTNeoXConfig)
    assert (again.latent_dim, again.beta, again.kl, again.reward_mean, again.reward_std) == (16, 0.3, "authors", 1.5, 2.0)
    assert again.num_labels == 1
    # a plain dict with the backbone's model_type works too
    from_dict = InfoRMConfig(backbone_config=backbone_config("gpt2").to_dict())
    assert isinstance(from_dict.backbone_config, transformers.GPT2Config) and from_dict.hidden_size == 32


@pytest.mark.parametrize(
    "kwargs, name",
    [({"latent_dim": 0}, "latent_dim"), ({"decoder": "conv"}, "decoder"), ({"kl": "mean"}, "kl"), ({"beta": -1.0}, "beta"), ({"reward_std": 0.0}, "reward_std")],
)
def test_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        InfoRMConfig(backbone_config=backbone_config("llama"), **kwargs)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_save_load_round_trip_through_auto_classes(tmp_path, family):
    model = make_model(family, decoder="mlp" if family == "gpt2" else "linear", head_bias=True)
    model.set_reward_normalization(0.5, 2.0)
    ids, mask = pad(ragged())
    with torch.no_grad():
        expected = model(ids, attention_mask=mask)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert transformers.AutoConfig.from_pretrained(tmp_path).model_type == "inform"
    for auto in (transformers.AutoModelForSequenceClassification, transformers.AutoModel, InfoRMForRewardModel):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, InfoRMForRewardModel)
        assert loaded.config.reward_mean == 0.5 and loaded.config.reward_std == 2.0
        with torch.no_grad():
            got = loaded(ids, attention_mask=mask)
        torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
        torch.testing.assert_close(got.mu, expected.mu, rtol=0, atol=0)


def test_output_fields_and_normalisation():
    model = make_model("qwen2")
    ids, mask = pad(ragged())
    with torch.no_grad():
        raw = model(ids, attention_mask=mask)
    assert isinstance(raw, InfoRMRewardModelOutput) and raw.loss is None
    assert raw.logits.shape == (3, 1) and raw.logits.dtype == torch.float32
    assert raw.rewards.shape == (3,) and raw.mu.shape == (3, 8) and raw.logvar.shape == (3, 8) and raw.kl.shape == (3,)
    torch.testing.assert_close(raw.z, raw.mu)  # eval mode: z = mu
    assert raw.rewards.std() > 0.1  # inputs are actually told apart
    mean, std = model.fit_reward_normalization(raw.rewards)
    with torch.no_grad():
        normed = model(ids, attention_mask=mask).rewards
    torch.testing.assert_close(normed, (raw.rewards - mean) / std)
    torch.testing.assert_close(normed.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    rewards, mu = model.score(ids, mask)
    torch.testing.assert_close(rewards, normed)
    torch.testing.assert_close(model.latents(ids, mask), raw.mu)
    assert not model.latents(ids, mask).requires_grad
    with pytest.raises(ValueError, match="rewards"):
        model.fit_reward_normalization(torch.ones(4))
    with pytest.raises(ValueError, match="reward_std"):
        model.set_reward_normalization(0.0, -1.0)


# ---------------------------------------------------------------------------------------------
# pooling: padding sides, pad == eos, packing


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_left_right_packed_and_single_agree(family, attn):
    model = make_model(family, attn)
    seqs = ragged()
    right_ids, right_mask = pad(seqs, "right")
    left_ids, left_mask = pad(seqs, "left")
    packed = pack_sequences(seqs)
    with torch.no_grad():
        right = model(right_ids, attention_mask=right_mask).rewards
        left = model(left_ids, attention_mask=left_mask).rewards
        packed_out = model(packed["input_ids"], position_ids=packed["position_ids"]).rewards
        model.packed_fallback = "block_mask"  # one packed row, block-diagonal 4-D mask
        block = model(packed["input_ids"], position_ids=packed["position_ids"]).rewards
        single = torch.stack([model(s[None]).rewards[0] for s in seqs])
    torch.testing.assert_close(right, single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(left, single, rtol=1e-5, atol=1e-5)
    assert packed_out.shape == (3,)
    torch.testing.assert_close(packed_out, single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block, single, rtol=1e-5, atol=1e-5)


def test_pad_equal_to_eos_pools_the_final_eos():
    eos = 2
    model = make_model("gpt2")
    seqs = [torch.cat([s, torch.tensor([eos])]) for s in ragged()]
    ids, mask = pad(seqs, "right", value=eos)  # pad id == eos id: only the mask tells them apart
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).rewards
        single = torch.stack([model(s[None]).rewards[0] for s in seqs])
        without_eos = torch.stack([model(s[None, :-1]).rewards[0] for s in seqs])
    torch.testing.assert_close(padded, single, rtol=1e-5, atol=1e-5)
    assert (padded - without_eos).abs().max() > 1e-3  # the pooled token really is the trailing eos


@pytest.mark.parametrize("fallback", ["repad", "block_mask"])
def test_packed_pairwise_loss_matches_padded(fallback):
    model = make_model("llama")
    model.packed_fallback = fallback
    chosen, rejected = ragged((4, 6), seed=2), ragged((5, 2), seed=3)
    cw, mw = pad(chosen, "left")
    cl, ml = pad(rejected, "right")
    padded = model.pairwise_loss(cw, mw, cl, ml, beta=0.2)
    packed = pack_sequences(chosen + rejected, pad_to_multiple_of=8)
    assert packed["input_ids"].shape[1] % 8 == 0
    packed_loss = model.packed_pairwise_loss(packed["input_ids"], packed["position_ids"], num_pairs=2, beta=0.2)
    for field in ("loss", "preference_loss", "kl", "reward_margin", "reward_chosen", "reward_rejected"):
        torch.testing.assert_close(getattr(packed_loss, field), getattr(padded, field), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        direct = model(*pad(chosen, "right")[:1], attention_mask=pad(chosen, "right")[1]).rewards
    torch.testing.assert_close(padded.reward_chosen, direct, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="position_ids"):
        model.packed_pairwise_loss(packed["input_ids"], packed["position_ids"], num_pairs=3)


def test_forward_in_pair_mode_is_the_training_loss():
    # issue 14 item 1: one training path. forward(num_pairs=B) returns the head's pairwise loss on
    # the raw rewards (never the serving normalisation), the same as pairwise_loss and as the
    # head's op on the backbone's pooled rows
    model = make_model("llama")
    model.set_reward_normalization(0.5, 2.0)
    ids, mask = pad(ragged((4, 6, 3, 5), seed=4), "left")
    margin = torch.tensor([0.3, -0.1])
    out = model(ids, attention_mask=mask, num_pairs=2, margin=margin, beta=0.25, center_rewards_coefficient=0.05)
    assert out.loss.requires_grad and out.z is None and out.kl is None and out.mu.shape == (4, 8)
    same = model.pairwise_loss(ids[:2], mask[:2], ids[2:], mask[2:], margin=margin, beta=0.25, center_rewards_coefficient=0.05)
    with torch.no_grad():
        pooled = model.backbone(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state[:, -1]
        head = model.head.pairwise_loss(pooled[:2], pooled[2:], beta=0.25, margin=margin, center_rewards_coefficient=0.05)
    for name, value in (("loss", out.loss), ("preference_loss", out.preference_loss), ("kl", out.kl_loss),
                        ("accuracy", out.accuracy), ("reward_chosen", out.reward_chosen)):
        torch.testing.assert_close(value, getattr(same, name), rtol=1e-6, atol=1e-6, msg=name)
        torch.testing.assert_close(value, getattr(head, name), rtol=1e-5, atol=1e-5, msg=name)
    raw = torch.cat([out.reward_chosen, out.reward_rejected])
    torch.testing.assert_close(out.rewards, (raw - 0.5) / 2.0)  # served normalised, trained raw
    assert model.config.beta == 0.1 and model(ids, attention_mask=mask, num_pairs=2).loss is not None  # beta from the config
    with pytest.raises(ValueError, match="num_pairs"):
        model(ids, attention_mask=mask, num_pairs=3)


# ---------------------------------------------------------------------------------------------
# training features


@pytest.mark.parametrize("family", ["gpt_neox", "bert"])
def test_gradients_reach_backbone_and_head(family):
    model = make_model(family).train()
    cw, mw = pad(ragged((4, 6), seed=2))
    cl, ml = pad(ragged((5, 3), seed=3))
    out = model.pairwise_loss(cw, mw, cl, ml)
    assert out.loss.requires_grad and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.head.encoder.weight.grad is not None and model.head.encoder.weight.grad.abs().sum() > 0
    assert model.head.decoder.weight.grad.abs().sum() > 0
    emb = model.get_input_embeddings().weight.grad
    assert emb is not None and emb.abs().sum() > 0


def test_gradient_checkpointing_recomputes_and_gives_same_gradients():
    ids, mask = pad(ragged())
    grads, calls = [], []
    for checkpointing in (False, True):
        model = make_model("llama").train()
        if checkpointing:
            # transformers 5 renamed gradient_checkpointing_enable (deprecated) to activation_checkpointing_enable
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        count = [0]
        model.backbone.layers[0].self_attn.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        noise = torch.zeros(3, 8)
        model(ids, attention_mask=mask, noise=noise).rewards.sum().backward()
        grads.append(model.get_input_embeddings().weight.grad.clone())
        calls.append(count[0])
    assert calls == [1, 2]  # the checkpointed layer ran again during backward
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_bf16_forward_and_backward():
    model = make_model("llama").to(torch.bfloat16)
    ids, mask = pad(ragged())
    out = model(ids, attention_mask=mask)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    reference = make_model("llama")
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).rewards
    torch.testing.assert_close(out.rewards.detach(), expected, rtol=0.1, atol=0.15)
    model.train().pairwise_loss(ids[:1], mask[:1], ids[1:2], mask[1:2]).loss.backward()
    assert model.head.encoder.weight.grad.dtype == torch.bfloat16


def test_no_split_modules_come_from_backbone():
    model = make_model("llama")
    assert "LlamaDecoderLayer" in set(model._no_split_modules)


def test_peft_lora_trains_and_saves_the_head(tmp_path):
    peft = pytest.importorskip("peft", reason="peft is not installed")
    model = make_model("llama")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["head"])
    wrapped = peft.get_peft_model(model, lora)
    trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    assert any("head" in n and "encoder" in n for n in trainable), trainable
    assert any("lora_A" in n for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    ids, mask = pad(ragged())
    wrapped.train()
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.5)
    loss = wrapped.base_model.model.pairwise_loss(ids[:2], mask[:2], ids[1:], mask[1:]).loss
    loss.backward()
    optimizer.step()
    wrapped.eval()
    with torch.no_grad():
        expected = wrapped(input_ids=ids, attention_mask=mask).rewards
    wrapped.save_pretrained(tmp_path)
    fresh = make_model("llama")  # same seed: the same base weights, the untrained head
    with torch.no_grad():
        before = fresh(ids, attention_mask=mask).rewards
    assert (before - expected).abs().max() > 1e-4  # training changed the rewards
    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=mask).rewards
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_from_backbone_keeps_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    causal = transformers.LlamaForCausalLM(backbone_config("llama"))
    model = InfoRMForRewardModel.from_backbone(causal, latent_dim=4, beta=0.5)
    assert model.config.latent_dim == 4 and model.config.beta == 0.5
    assert model.backbone is causal.model
    torch.testing.assert_close(model.get_input_embeddings().weight, causal.model.embed_tokens.weight)
    causal.model.save_pretrained(tmp_path)
    from_path = InfoRMForRewardModel.from_backbone(str(tmp_path), latent_dim=4, attn_implementation="eager")
    assert from_path.backbone.config._attn_implementation == "eager"
    torch.testing.assert_close(from_path.get_input_embeddings().weight, causal.model.embed_tokens.weight)
    auto = InfoRMForRewardModel.from_backbone(str(tmp_path), dtype=torch.bfloat16)
    assert auto.backbone.config._attn_implementation == "sdpa"
    assert auto.head.encoder.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="name_or_path_or_model"):
        InfoRMForRewardModel.from_backbone(nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------
# errors


def test_bad_input_errors():
    model = make_model("llama")
    ids, mask = pad(ragged())
    mask_empty = mask.clone()
    mask_empty[1] = 0
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=mask_empty)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=mask[:, :-1])
    with pytest.raises(ValueError, match="input_ids"):
        model(ids[0])
    with pytest.raises(ValueError, match="input_ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="position_ids"):
        model(ids[:1], position_ids=torch.tensor([[0, 1, 3, 4, 5, 6, 7]]))
    with pytest.raises(ValueError, match="position_ids"):
        model(ids[:1], position_ids=torch.tensor([[1, 2, 3, 4, 5, 6, 7]]))
    with pytest.raises(ValueError, match="rejected_input_ids"):
        model.pairwise_loss(ids, mask, ids[:2], mask[:2])
    with pytest.raises(ValueError, match="chosen_attention_mask"):
        model.pairwise_loss(ids, mask[:, :3], ids, mask)
    model.packed_fallback = "dense"
    with pytest.raises(ValueError, match="packed_fallback"):
        model(ids[:1], position_ids=torch.arange(7)[None])
    with pytest.raises(ValueError, match="num_pairs"):
        model.packed_pairwise_loss(ids[:1], torch.arange(7)[None], num_pairs=0)


# ---------------------------------------------------------------------------------------------
# Auto classes in fresh processes (issue 12 item 4)

_AUTO_SCRIPTS = {
    # `import inform_fast` and nothing else: the Auto classes give the full reward model
    "import_inform_fast": """
import inform_fast
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
config = AutoConfig.from_pretrained(PATH)
assert type(config).__module__ == "inform_fast.configuration", type(config)
for auto in (AutoModel, AutoModelForSequenceClassification):
    model = auto.from_pretrained(PATH).eval()
    assert type(model).__name__ == "InfoRMForRewardModel" and type(model).__module__ == "inform_fast.modeling", type(model)
    check(model)
""",
    # Transformers imported first, its Auto classes touched before inform_fast is imported
    "transformers_first": """
from transformers import AutoModelForSequenceClassification
assert AutoModelForSequenceClassification.__name__
import inform_fast
model = AutoModelForSequenceClassification.from_pretrained(PATH).eval()
check(model)
""",
    # never imported: Transformers asks for trust_remote_code (not to upgrade itself), and with it
    # loads the very class of the installed package; saving again keeps the folder loadable
    "no_import": """
from transformers import AutoModel
try:
    AutoModel.from_pretrained(PATH)
    raise SystemExit("loaded without trust_remote_code")
except ValueError as error:
    assert "trust_remote_code" in str(error) and "upgrade" not in str(error), str(error)
model = AutoModel.from_pretrained(PATH, trust_remote_code=True).eval()
import inform_fast.modeling
assert type(model) is inform_fast.modeling.InfoRMForRewardModel, type(model)
check(model)
model.save_pretrained(PATH + "-again")
import json, os
assert sorted(os.listdir(PATH + "-again")) == ["config.json", "inform_fast_auto.py", "model.safetensors"], os.listdir(PATH + "-again")
assert json.load(open(PATH + "-again/config.json"))["auto_map"]["AutoModel"] == "inform_fast_auto.InfoRMForRewardModel"
check(AutoModel.from_pretrained(PATH + "-again", trust_remote_code=True).eval())
""",
}


def test_auto_classes_in_fresh_processes(tmp_path):
    import json
    import os
    import subprocess
    import sys

    model = make_model("qwen2", latent_dim=6)
    model.save_pretrained(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["auto_map"]["AutoConfig"] == "inform_fast_auto.InfoRMConfig"
    ids, mask = pad(ragged())
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
    torch.save({"ids": ids, "mask": mask, "expected": expected}, tmp_path / "batch.pt")
    prelude = (
        "import torch\n"
        f"PATH = {str(tmp_path / 'rm')!r}\n"
        f"BATCH = torch.load({str(tmp_path / 'batch.pt')!r})\n"
        "def check(model):\n"
        "    with torch.no_grad():\n"
        "        got = model(BATCH['ids'], attention_mask=BATCH['mask']).logits\n"
        "    torch.testing.assert_close(got, BATCH['expected'], rtol=1e-5, atol=1e-5)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")  # where trust_remote_code copies inform_fast_auto.py
    env["HF_HUB_OFFLINE"] = "1"
    runs = {}
    for name, body in _AUTO_SCRIPTS.items():  # in parallel: each pays the imports of torch and transformers
        runs[name] = subprocess.Popen([sys.executable, "-c", prelude + body], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, run in runs.items():
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, f"{name}:\n{stderr[-3000:]}"
