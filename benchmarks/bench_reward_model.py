"""Reward-model training step and scoring throughput: padded vs packed, our head vs the authors' style.

One training step = forward + backward of the InfoRM pairwise loss over B preference pairs with
ragged lengths. Variants:

* ``ours_padded``: ``model.pairwise_loss`` — one backbone forward over chosen + rejected, the head
  only on the pooled last token of each row.
* ``ours_packed``: ``model.packed_pairwise_loss`` — the same pairs packed padding-free into one row
  (flash-attn varlen where installed; without it the row is re-padded internally, "repad").
* ``ours_packed_block_mask``: the packed row with SDPA and a block-diagonal T x T mask (what
  Transformers itself does for packed SDPA batches); without flash-attn only.
* ``authors_padded``: the authors' style (OpenRLHF value-head pattern): the head (encoder,
  reparameterisation, decoder) runs on all T hidden states of every row, then the last token's
  reward is gathered.

Scoring: rewards + latents under ``torch.no_grad`` for padded batches (``model.score``).
Tokens/s counts real (non-padding) tokens. Peak memory is the CUDA allocator's peak (not measured
on CPU). Default: a tiny Llama on CPU in float32; ``--gpu-sizes``: a ~1.1B Llama-shaped random
model (TinyLlama shape) in bf16 on the GPU.

    python -m pytest benchmarks/bench_reward_model.py --benchmark-only -q -p no:cacheprovider
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from inform_fast.modeling import InfoRMConfig, InfoRMForRewardModel, default_attn_implementation  # noqa: E402
from inform_fast.packing import pack_sequences  # noqa: E402


def _sizes(gpu_sizes: bool) -> dict:
    if gpu_sizes:
        # TinyLlama-1.1B shape
        return dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000,
                    pairs=8, min_len=256, max_len=1024, latent=128, dtype=torch.bfloat16, rounds=5)
    return dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=1000,
                pairs=8, min_len=16, max_len=128, latent=32, dtype=torch.float32, rounds=15)


_CACHE: dict = {}


def _setup(gpu_sizes: bool, device: str):
    key = (gpu_sizes, device)
    if key in _CACHE:
        return _CACHE[key]
    s = _sizes(gpu_sizes)
    torch.manual_seed(0)
    backbone = transformers.LlamaConfig(
        hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], vocab_size=s["vocab"],
        max_position_embeddings=4096, pad_token_id=0, attn_implementation=default_attn_implementation(device),
    )
    with torch.device(device):
        model = InfoRMForRewardModel(InfoRMConfig(backbone_config=backbone, latent_dim=s["latent"]))
    model.to(dtype=s["dtype"]).train()
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(s["min_len"], s["max_len"] + 1, (2 * s["pairs"],), generator=gen).tolist()
    seqs = [torch.randint(1, s["vocab"], (n,), generator=gen) for n in lengths]
    chosen, rejected = seqs[: s["pairs"]], seqs[s["pairs"]:]

    def padded(group):
        length = max(len(x) for x in group)
        ids = torch.zeros(len(group), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, x in enumerate(group):
            ids[i, : len(x)], mask[i, : len(x)] = x, 1
        return ids.to(device), mask.to(device)

    cw, mw = padded(chosen)
    cl, ml = padded(rejected)
    packed = pack_sequences(chosen + rejected)
    data = dict(cw=cw, mw=mw, cl=cl, ml=ml, packed_ids=packed["input_ids"].to(device),
                packed_pos=packed["position_ids"].to(device), tokens=sum(lengths),
                padded_tokens=2 * s["pairs"] * max(cw.shape[1], cl.shape[1]))
    _CACHE[key] = (model, data, s)
    return _CACHE[key]


def _authors_style_loss(model: InfoRMForRewardModel, cw, mw, cl, ml, beta=0.1):
    """Head over all T hidden states, then gather the last token (the authors' value-head pattern)."""
    pairs, length = cw.shape[0], max(cw.shape[1], cl.shape[1])
    ids = torch.cat([F.pad(cw, (0, length - cw.shape[1])), F.pad(cl, (0, length - cl.shape[1]))])
    mask = torch.cat([F.pad(mw, (0, length - mw.shape[1])), F.pad(ml, (0, length - ml.shape[1]))])
    hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # [2B, T, H]
    stats = model.head.encoder(hidden).float()  # [2B, T, 2L]
    mu, logvar = stats.chunk(2, dim=-1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    values = model.head.decoder(z.to(model.head.decoder.weight.dtype)).squeeze(-1).float()  # [2B, T]
    last = mask.sum(-1) - 1
    rows = torch.arange(2 * pairs, device=ids.device)
    reward = values[rows, last]
    kl = 0.5 * (mu[rows, last].square() + logvar[rows, last].exp() - 1 - logvar[rows, last]).sum(-1)
    r_w, r_l = reward.chunk(2)
    k_w, k_l = kl.chunk(2)
    return -F.logsigmoid(r_w - r_l).mean() + beta * (k_w + k_l).mean()


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, device, rounds, fn, tokens, extra):
    def step():
        fn()
        _sync(device)

    step()  # warm-up (allocations, kernel selection)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
    stats = benchmark.stats.stats
    # min is the least disturbed by other processes on a shared machine; mean is reported too
    extra.update(tokens=tokens, tokens_per_s=round(tokens / stats.mean, 1), tokens_per_s_best=round(tokens / stats.min, 1),
                 peak_memory_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None)
    benchmark.extra_info.update(extra)


@pytest.mark.parametrize("variant", ["ours_padded", "ours_packed", "ours_packed_block_mask", "authors_padded"])
def test_training_step(benchmark, gpu_sizes, device, variant):
    model, d, s = _setup(gpu_sizes, device)
    benchmark.group = "reward-model training step (fwd+bwd)"

    def step():
        model.zero_grad(set_to_none=True)
        if variant == "ours_padded":
            loss = model.pairwise_loss(d["cw"], d["mw"], d["cl"], d["ml"]).loss
        elif variant.startswith("ours_packed"):
            model.packed_fallback = "block_mask" if variant.endswith("block_mask") else "repad"
            loss = model.packed_pairwise_loss(d["packed_ids"], d["packed_pos"], num_pairs=s["pairs"]).loss
            model.packed_fallback = "repad"
        else:
            loss = _authors_style_loss(model, d["cw"], d["mw"], d["cl"], d["ml"])
        loss.backward()

    extra = dict(variant=variant, device=device, dtype=str(s["dtype"]), pairs=s["pairs"], layers=s["layers"],
                 hidden=s["hidden"], padded_tokens=d["padded_tokens"],
                 attn=model.backbone.config._attn_implementation)
    _run(benchmark, device, s["rounds"], step, d["tokens"], extra)


@pytest.mark.parametrize("variant", ["ours_score", "authors_all_tokens"])
def test_scoring(benchmark, gpu_sizes, device, variant):
    model, d, s = _setup(gpu_sizes, device)
    benchmark.group = "reward-model scoring (no_grad)"
    ids = torch.cat([d["cw"], F.pad(d["cl"], (0, d["cw"].shape[1] - d["cl"].shape[1]))]) if d["cw"].shape[1] >= d["cl"].shape[1] else torch.cat([F.pad(d["cw"], (0, d["cl"].shape[1] - d["cw"].shape[1])), d["cl"]])
    mask = (ids != 0).long()
    model.eval()

    @torch.no_grad()
    def step():
        if variant == "ours_score":
            model.score(ids, mask)
        else:  # head on every token, then gather
            hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            mu = model.head.encoder(hidden).float()[..., : s["latent"]]
            values = model.head.decoder(mu.to(model.head.decoder.weight.dtype)).squeeze(-1)
            values[torch.arange(ids.shape[0], device=ids.device), mask.sum(-1) - 1]

    extra = dict(variant=variant, device=device, dtype=str(s["dtype"]), rows=ids.shape[0], layers=s["layers"], hidden=s["hidden"])
    try:
        _run(benchmark, device, s["rounds"], step, d["tokens"], extra)
    finally:
        model.train()
