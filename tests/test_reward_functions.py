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
    """(reward, mu) of each text (or token list), one forward each."""
    out = []
    for text in texts:
        r, m = model.score(torch.tensor([text if isinstance(text, list) else data.encode(tok, text)]))
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
    conversations = [data.encode_conversation(tok, p + c) for p, c in zip(prompts, completions)]
    expected = one_by_one(model, tok, conversations)
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

    # OpenRLHF passes no step: the count of reward batches is the step; the keys never change
    counted = OverOptimizationMonitor(torch.randn(300, 6), every=2, method="mop")
    openrlhf = make_openrlhf_reward_func(model, tok, monitor=counted)
    outs = [openrlhf([p + c for p, c in zip(PROMPTS, COMPLETIONS)]) for _ in range(3)]
    assert [r["step"] for r in counted.history] == [0, 2]
    assert all(set(o["extra_logs"]) == set(outs[0]["extra_logs"]) for o in outs)
    assert [float(o["extra_logs"]["inform_evaluated"][0]) for o in outs] == [1.0, 0.0, 1.0]
    assert float(outs[1]["extra_logs"]["inform_mop"][0]) == counted.history[0]["mop"]  # the latest value, carried


# --- OpenRLHF's contract, in our words -------------------------------------------------------
# OpenRLHF/OpenRLHF (commit 3c3be62, 2026-08): openrlhf/utils/agent.py,
# SingleTurnAgentExecutor.execute and _fetch_rewards_via_func: every sample's reward comes from
# its own coroutine, which calls reward_func([query], [prompt], [label]) through
# asyncio.to_thread (so from worker threads, concurrently) and turns any exception into a
# missing reward (logged at info level). openrlhf/trainer/ppo_utils/samples_generator.py,
# _process_response_into_experience: each extra_logs value becomes info[key] =
# tensor([value.flatten()[0].item()]). openrlhf/trainer/ppo_utils/experience.py,
# Experience._merge_item / concat_experiences merge the samples' info dicts key by key, and
# split_experience_batch then requires len(info[key]) == batch size for every key ("Size of
# info[k] (2) does not match batch_size (8)").


def _openrlhf_rollout(reward_func, queries, prompts):
    import asyncio

    async def one_sample(query, prompt):
        output = {"reward": None, "extra_logs": {}}
        try:
            (info,) = await asyncio.gather(asyncio.to_thread(reward_func, [query], [prompt], [None]))
            output.update(reward=info.get("rewards"), extra_logs=info.get("extra_logs") or {})
        except Exception as error:  # OpenRLHF logs it and goes on without a reward
            output["error"] = repr(error)
        return output

    async def all_samples():
        return await asyncio.gather(*(one_sample(q, p) for q, p in zip(queries, prompts)))

    return asyncio.run(all_samples())


def _openrlhf_batch_info(outputs):
    per_sample = []
    for output in outputs:
        info = {}
        for key, value in output["extra_logs"].items():
            if isinstance(value, torch.Tensor):
                value = value.flatten()[0].item()
            info[key] = torch.tensor([value])
        per_sample.append(info)
    merged = {}
    for info in per_sample:  # Experience._merge_item on a list of dicts
        for key, value in info.items():
            merged.setdefault(key, []).append(value)
    merged = {key: torch.cat(values) for key, values in merged.items()}
    for key, value in merged.items():  # split_experience_batch's check
        if len(value) != len(outputs):
            raise ValueError(f"Size of info[{key}] ({len(value)}) does not match batch_size ({len(outputs)})")
    return merged


@pytest.mark.parametrize("every", [1, 4])
def test_openrlhf_threaded_per_sample_calls_with_the_monitor(tok, model, every):
    # the monitor as docs/detection.md configures it, fed one sample per call from threads
    from inform_fast.detect.monitor import OverOptimizationMonitor
    from inform_fast.integrations.openrlhf import make_openrlhf_reward_func

    torch.manual_seed(every)
    reference = model.latents(torch.randint(4, len(tok), (300, 6))) + 0.05 * torch.randn(300, 6)
    monitor = OverOptimizationMonitor(reference, every=every, method="both", icds_kwargs={"eps": "auto"})
    func = make_openrlhf_reward_func(model, tok, monitor=monitor, ibl_penalty=lambda r, z: r - 0.1)
    words = ["good", "answer", "no", "yes", "great", "thanks", "red", "three", "the", "cat"]
    prompts = [PROMPTS[i % 5] for i in range(25)]
    queries = [p + " " + " ".join(words[(3 * i + k) % 10] for k in range(1 + i % 4)) for i, p in enumerate(prompts)]
    outputs = _openrlhf_rollout(func, queries, prompts)
    assert [o.get("error") for o in outputs] == [None] * 25
    expected = torch.stack([r for r, _ in one_by_one(model, tok, queries)])
    got = torch.stack([o["reward"][0] for o in outputs])
    torch.testing.assert_close(got, expected - 0.1, atol=1e-5, rtol=1e-4)
    info = _openrlhf_batch_info(outputs)
    assert {"inform_raw_reward", "inform_ibl_penalty", "inform_icds", "inform_icds_normalized", "inform_mop",
            "inform_onset", "inform_evaluated"} <= set(info)
    # every latent was either evaluated or is still buffered: none lost or counted twice by the threads
    assert monitor.history and sum(r["n_latents"] for r in monitor.history) + monitor._buffered == 25
    assert int(info["inform_evaluated"].sum()) == len(monitor.history)
    # the first evaluation waits for min_samples (5) latents: the 4 calls before it report NaN
    assert monitor.min_latents == 5 and int(torch.isnan(info["inform_mop"]).sum()) == 4
