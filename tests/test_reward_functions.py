"""Reward functions for RL loops: TRL GRPO/RLOO callable and OpenRLHF-style reward_func."""
from __future__ import annotations

import pytest
import torch

from inform_fast import data
from inform_fast.tiny import tiny_llama, tiny_tokenizer

modeling = pytest.importorskip("inform_fast.modeling", reason="inform_fast.modeling is not available")

PROMPTS = ["hello question", "please help", "the cat", "one two", "hello"]
COMPLETIONS = [" good answer", " no", " is red", " three four five", " yes great thanks"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return modeling.InfoRMForRewardModel.from_backbone(tiny_llama(len(tok), seed=3), latent_dim=6).eval()


def one_by_one(model, tok, texts):
    out = []
    for text in texts:
        r, m = model.score(torch.tensor([data.encode(tok, text)]))
        out.append((r[0], m[0]))
    return out


def test_trl_reward_func_matches_single_scoring_and_logs(tok, model):
    pytest.importorskip("trl")
    from inform_fast.integrations.trl import make_trl_reward_func

    logged = {}
    func = make_trl_reward_func(model, tok, batch_size=2)
    assert func.__name__ == "inform_reward"
    rewards = func(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=None, trainer_state=None,
                   log_metric=lambda k, v: logged.setdefault(k, v), extra_column=[0] * 5)
    assert isinstance(rewards, list) and len(rewards) == 5 and all(isinstance(r, float) for r in rewards)
    expected = one_by_one(model, tok, [p + c for p, c in zip(PROMPTS, COMPLETIONS)])
    torch.testing.assert_close(torch.tensor(rewards), torch.stack([r for r, _ in expected]), atol=1e-5, rtol=1e-4)
    assert "inform/reward_raw_mean" in logged and "inform/mu_norm" in logged


def test_trl_reward_func_conversational_and_penalty(tok, model):
    pytest.importorskip("trl")
    from inform_fast.integrations.trl import make_trl_reward_func

    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c.strip()}] for c in COMPLETIONS]
    seen = {}

    def penalty(rewards, latents):
        seen["shapes"] = (tuple(rewards.shape), tuple(latents.shape))
        return rewards - 0.5 * latents.norm(dim=-1)

    def monitor(latents, rewards):
        return {"fake_mop": 0.25}

    logged = {}
    plain = make_trl_reward_func(model, tok, batch_size=3)(prompts=prompts, completions=completions)
    penalised = make_trl_reward_func(model, tok, batch_size=3, ibl_penalty=penalty, monitor=monitor, name="rm")(
        prompts=prompts, completions=completions, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert seen["shapes"] == ((5,), (5, 6))
    texts = [tok.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions)]
    expected = one_by_one(model, tok, texts)
    for i, (r, m) in enumerate(expected):
        assert plain[i] == pytest.approx(r.item(), abs=1e-5)
        assert penalised[i] == pytest.approx(r.item() - 0.5 * m.norm().item(), abs=1e-5)
    assert logged["inform/fake_mop"] == 0.25 and logged["inform/ibl_penalty_mean"] > 0


def test_openrlhf_reward_func(tok, model):
    from inform_fast.integrations.openrlhf import make_openrlhf_reward_func

    queries = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    func = make_openrlhf_reward_func(model, tok, batch_size=2, ibl_penalty=lambda r, z: r - 1.0)
    out = func(queries, PROMPTS, None)
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert out["rewards"].shape == (5,) and out["rewards"].dtype == torch.float32
    expected = torch.stack([r for r, _ in one_by_one(model, tok, queries)])
    torch.testing.assert_close(out["extra_logs"]["inform_raw_reward"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["rewards"], expected - 1.0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["extra_logs"]["inform_ibl_penalty"], torch.ones(5))
    with pytest.raises(ValueError, match="queries"):
        func("one string", None, None)


def test_penalty_with_wrong_shape_and_truncation(tok, model):
    from inform_fast.integrations.openrlhf import RewardScorer, make_openrlhf_reward_func

    func = make_openrlhf_reward_func(model, tok, ibl_penalty=lambda r, z: r[:2])
    with pytest.raises(ValueError, match="ibl_penalty"):
        func(["hello good", "hello bad", "a"], None, None)
    scorer = RewardScorer(model, tok, max_length=4)
    ids = scorer.encode("one two three four five", " good answer")
    assert len(ids) == 4 and ids[-1] == tok.eos_token_id
    with pytest.raises(ValueError, match="batch_size"):
        RewardScorer(model, tok, batch_size=0)


def test_with_the_detection_ibl_penalty(tok, model):
    ibl = pytest.importorskip("inform_fast.detect.ibl", reason="inform_fast.detect.ibl is not available")
    from functools import partial

    from inform_fast.detect.mahalanobis import MahalanobisScorer
    from inform_fast.integrations.openrlhf import make_openrlhf_reward_func

    torch.manual_seed(0)
    scorer = MahalanobisScorer(precision="ieee").fit(torch.randn(200, 6))
    queries = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    func = make_openrlhf_reward_func(model, tok, ibl_penalty=partial(ibl.ibl_penalty, scorer_or_scorers_by_class=scorer, coef=0.5))
    out = func(queries, PROMPTS, None)
    raw = out["extra_logs"]["inform_raw_reward"]
    mu = torch.stack([m for _, m in one_by_one(model, tok, queries)])
    torch.testing.assert_close(out["rewards"], raw - 0.5 * scorer.distance(mu), atol=1e-4, rtol=1e-4)


def test_overoptimization_monitor_as_the_reward_function_hook(tok, model):
    # the monitor object itself is the hook: TRL's global step decides when it evaluates, a step
    # already evaluated only buffers, and its scores reach log_metric
    pytest.importorskip("trl")
    from types import SimpleNamespace

    from inform_fast.detect.monitor import OverOptimizationMonitor
    from inform_fast.integrations.openrlhf import make_openrlhf_reward_func
    from inform_fast.integrations.trl import make_trl_reward_func

    torch.manual_seed(0)
    monitor = OverOptimizationMonitor(torch.randn(300, 6), every=2, method="mop")
    func = make_trl_reward_func(model, tok, batch_size=4, monitor=monitor)
    logs = []
    for step in (0, 0, 1, 2):
        logged = {}
        func(prompts=PROMPTS, completions=COMPLETIONS, trainer_state=SimpleNamespace(global_step=step),
             log_metric=logged.__setitem__)
        logs.append(logged)
    assert [r["step"] for r in monitor.history] == [0, 2]
    assert "inform/mop" in logs[0] and "inform/onset" in logs[0]
    assert "inform/mop" not in logs[1] and "inform/mop" not in logs[2] and "inform/mop" in logs[3]
    # step 0's second batch and step 1's batch were buffered into the step-2 evaluation
    assert monitor.history[0]["n_latents"] == 5 and monitor.history[1]["n_latents"] == 15
    assert logs[3]["inform/mop"] == monitor.history[1]["mop"]

    # OpenRLHF passes no step: the count of reward batches is the step
    counted = OverOptimizationMonitor(torch.randn(300, 6), every=2, method="mop")
    openrlhf = make_openrlhf_reward_func(model, tok, monitor=counted)
    outs = [openrlhf([p + c for p, c in zip(PROMPTS, COMPLETIONS)]) for _ in range(3)]
    assert [r["step"] for r in counted.history] == [0, 2]
    assert "inform_mop" in outs[0]["extra_logs"] and "inform_mop" not in outs[1]["extra_logs"]
