"""Tests of ``inform-fast demo``: the best-of-n / KL / AUROC math against brute force and
scikit-learn, the synthetic world against its gold oracle and its annotator's formula, the
across-seed intervals against scipy and a direct computation, the findings as numbers against
their named thresholds, and the tiny preset end to end (report structure, determinism per seed,
numbers that come from the trained models, an output folder never damaged)."""
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

from inform_fast.cli import main
from inform_fast.demo import aggregate, findings, study, world
from inform_fast.demo.config import preset
from inform_fast.demo.pipeline import run_study

RM = ("standard", "inform")
SERIES = ("kl", "gold", "proxy", "icds", "icds_normalized", "mop", "hacked_fraction", "filler")
TINY_SEEDS = [0, 1]

# ----------------------------------------------------------------------------------- math
def test_kl_formula():
    n = np.array([1, 2, 3, 10, 1000])
    expected = [0.0, math.log(2) - 0.5, math.log(3) - 2 / 3, math.log(10) - 0.9, math.log(1000) - 0.999]
    np.testing.assert_allclose(study.best_of_n_kl(n), expected, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="n"):
        study.best_of_n_kl([0])


@pytest.mark.parametrize("size,n", [(7, 1), (7, 3), (9, 9), (11, 4)])
def test_best_of_n_matches_exhaustive_enumeration(size, n):
    rng = np.random.default_rng(size * 10 + n)
    proxy = rng.standard_normal(size)
    gold = rng.standard_normal(size)
    # exact: average the gold of the proxy's argmax over every n-subset
    subsets = list(itertools.combinations(range(size), n))
    exact = np.mean([gold[max(s, key=lambda i: proxy[i])] for s in subsets])
    got = study.best_of_n_expectation(proxy, gold, [n])[0]
    assert got == pytest.approx(exact, rel=1e-10, abs=1e-12)
    weights = study.best_of_n_weights(size, n)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(weights[: n - 1] == 0)


def test_best_of_n_matches_monte_carlo_on_a_large_pool():
    rng = np.random.default_rng(3)
    size = 1500
    proxy = rng.standard_normal(size)
    gold = proxy + 2.0 * rng.standard_normal(size)
    ns = [1, 5, 50, 1000]
    analytic = study.best_of_n_expectation(proxy, gold, ns)
    for n, value in zip(ns, analytic):
        picks = study.sample_best_of_n(rng, [proxy], n, 4000)[0]
        # picks are draws from the best-of-n distribution: compare with a 5-sigma band
        sem = gold[picks].std() / math.sqrt(picks.size)
        assert abs(gold[picks].mean() - value) < 5 * sem + 1e-9, (n, gold[picks].mean(), value)
    # the proxy's own best-of-n curve never decreases
    own = study.best_of_n_expectation(proxy, proxy, range(1, size + 1, 37))
    assert np.all(np.diff(own) >= -1e-12)


def test_best_of_n_bad_input():
    with pytest.raises(ValueError, match="n"):
        study.best_of_n_weights(10, 11)
    with pytest.raises(ValueError, match="values"):
        study.best_of_n_expectation(np.zeros(5), np.zeros(4), [1])


def test_latent_spectrum_counts_directions():
    rng = np.random.default_rng(3)
    direction = rng.normal(size=7)
    direction /= np.linalg.norm(direction)
    # one real direction plus tiny noise: participation ratio ~1, top share ~1, aligned with it
    flat = rng.normal(size=(4000, 1)) * 3.0 * direction + rng.normal(size=(4000, 7)) * 1e-3
    one = study.latent_spectrum(flat, reward_direction=-2.5 * direction)
    assert one["participation_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert one["top_share"] == pytest.approx(1.0, abs=1e-3)
    assert one["top_cos_reward"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(one["eigenvalues"], np.sort(np.linalg.eigvalsh(np.cov(flat.T)))[::-1], rtol=1e-9, atol=1e-12)
    # isotropic: every direction counts, and an arbitrary reward direction is not singled out
    round_ = study.latent_spectrum(rng.normal(size=(20000, 7)), reward_direction=None)
    assert round_["participation_ratio"] == pytest.approx(7.0, rel=0.02)
    assert round_["top_cos_reward"] is None
    with pytest.raises(ValueError, match="reference"):
        study.latent_spectrum(np.zeros((1, 3)))


def test_auroc_matches_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the oracle for the AUROC")
    rng = np.random.default_rng(0)
    for trial in range(5):
        labels = rng.random(301) < 0.3
        scores = np.round(rng.standard_normal(301) + labels, 1)  # rounding makes many ties
        assert study.auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert study.auroc(np.array([1.0, 2.0]), np.array([True, True])) is None
    assert study.auroc(np.array([0.0, 1.0, 2.0]), np.array([False, False, True])) == 1.0


def test_log_grid():
    assert study.log_grid(1024) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert study.log_grid(100) == [1, 2, 4, 8, 16, 32, 64, 100]



# ----------------------------------------------------------------------------------- world
def test_world_gold_filler_and_kinds_match_the_words():
    rng = np.random.default_rng(1)
    config = world.WorldConfig(min_words=5, max_words=17, padded_share=0.2)
    responses = world.generate(rng, rng.integers(8, size=700), config)
    for topic, words, gold in zip(responses.topic, responses.words, responses.gold):
        assert gold == pytest.approx(world.gold_reward(int(topic), words))
        assert world.is_valid_response(words, config)
    assert all(len(w) == n for w, n in zip(responses.words, responses.length))
    assert set(responses.length.tolist()) == set(range(5, 18))
    filler = set(world.FILLER)
    assert [sum(w in filler for w in ws) for ws in responses.words] == responses.filler.tolist()
    counts = world.kind_counts(responses)
    names = list(world.TOPICS)
    own = [sum(w in world.TOPICS[names[t]].split() for w in ws) for t, ws in zip(responses.topic, responses.words)]
    np.testing.assert_array_equal(counts[:, world.KINDS.index("on_topic")], own)
    np.testing.assert_array_equal(counts[:, world.KINDS.index("filler")], responses.filler)
    np.testing.assert_array_equal(counts.sum(axis=1), responses.length)
    weights = np.array([world.GOLD_WEIGHTS.get(kind, 0.0) for kind in world.KINDS])
    np.testing.assert_allclose(counts @ weights, responses.gold)
    # every response word is reachable, and a padded share of 0.2 shows as responses mostly filler
    assert set(w for ws in responses.words for w in ws) == set(world.response_vocabulary())
    assert 0.1 < np.mean(2 * responses.filler >= responses.length) < 0.3
    tokenizer = world.build_tokenizer()
    ids = tokenizer(responses.texts()[:20])["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)


def test_annotator_follows_the_bradley_terry_formula():
    rng = np.random.default_rng(2)
    bias, temperature = 1.5, 2.0
    pairs = world.preference_pairs(rng, 20000, 8, filler_bias=bias, temperature=temperature)
    assert len(pairs.chosen.words) == len(pairs.rejected.words) == 20000
    assert np.array_equal(pairs.chosen.topic, pairs.rejected.topic)
    gap = (pairs.chosen.gold + bias * pairs.chosen.filler) - (pairs.rejected.gold + bias * pairs.rejected.filler)
    # A beats B with probability sigmoid((u_A - u_B) / T): among pairs whose utilities differ by |gap|,
    # the share in which the chosen one has the higher utility is sigmoid(|gap| / T) on average
    magnitude = np.abs(gap)
    agree = gap > 0
    for low, high in ((0.25, 1.0), (1.0, 2.5), (2.5, 6.0)):
        rows = (magnitude >= low) & (magnitude < high)
        expected = np.mean(1.0 / (1.0 + np.exp(-magnitude[rows] / temperature)))
        sem = math.sqrt(expected * (1 - expected) / rows.sum())
        assert abs(agree[rows].mean() - expected) < 5 * sem, (low, high, agree[rows].mean(), expected)
    np.testing.assert_array_equal(pairs.against_gold, pairs.chosen.gold < pairs.rejected.gold)
    # the bias shows: the chosen response has more filler clearly more often than less (0.17 vs 0.10 here)
    more, less = np.mean(pairs.chosen.filler > pairs.rejected.filler), np.mean(pairs.chosen.filler < pairs.rejected.filler)
    assert more > 1.5 * less
    # no bias and no temperature: the gold comparison itself (the held-out pairs)
    gold = world.preference_pairs(rng, 3000, 8)
    assert not gold.against_gold.any()
    with pytest.raises(ValueError, match="label_model"):
        world.preference_pairs(rng, 10, 8, label_model="votes")


def test_previous_world_labels_select_and_flip():
    rng = np.random.default_rng(1)
    config = world.WorldConfig(min_words=8, max_words=20, quality_mean=0.0, filler_b=3.0, filler_max=0.9, padded_share=0.0)
    pairs = world.preference_pairs(rng, 3000, 8, label_model="selected", flip=0.25, keep_otherwise=0.25, config=config)
    decided = pairs.chosen.gold != pairs.rejected.gold
    # about a quarter of the decided labels disagree with the gold reward (the flips)
    assert 0.18 < pairs.against_gold[decided].mean() < 0.32
    more = np.mean(pairs.chosen.filler > pairs.rejected.filler)
    less = np.mean(pairs.chosen.filler < pairs.rejected.filler)
    assert more > 2 * less


def test_config_world_and_bad_fields():
    config = preset("small")
    made = config.world()
    assert (made.min_words, made.max_words, made.padded_share, made.quality_mean) == (
        config.min_words, config.max_words, config.padded_share, config.quality_mean)
    for field, value, name in (("label_model", "votes", "label_model"), ("padded_share", 1.5, "padded_share"),
                               ("min_words", 0, "min_words"), ("label_temperature", -1.0, "label_temperature"),
                               ("padded_low", 0.95, "padded_low")):
        with pytest.raises(ValueError, match=name):
            preset("tiny", **{field: value})


# ----------------------------------------------------------------------------------- across seeds
@pytest.mark.parametrize("size", [2, 3, 7, 10])
def test_mean_interval_matches_scipy_and_the_formula(size):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(size)
    values = rng.normal(loc=rng.normal(), scale=rng.uniform(0.1, 3.0), size=size)
    got = aggregate.mean_interval(values.tolist())
    mean = values.mean()
    sem = values.std(ddof=1) / math.sqrt(size)
    low, high = stats.t.interval(0.95, size - 1, loc=mean, scale=sem)
    assert got["mean"] == pytest.approx(mean, rel=1e-12)
    assert got["low"] == pytest.approx(low, rel=1e-10, abs=1e-12)
    assert got["high"] == pytest.approx(high, rel=1e-10, abs=1e-12)
    assert got["sd"] == pytest.approx(values.std(ddof=1), rel=1e-12) and got["n"] == size
    # by hand in float64: the t quantile of N - 1 degrees of freedom times the standard error
    half = stats.t.ppf(0.975, size - 1) * sem
    assert (got["high"] - got["low"]) / 2 == pytest.approx(half, rel=1e-10)
    narrow = aggregate.mean_interval(values, confidence=0.5)
    assert got["low"] < narrow["low"] < narrow["high"] < got["high"]


def test_mean_interval_edge_cases_and_bad_input():
    one = aggregate.mean_interval([0.7])
    assert one == {"mean": 0.7, "low": None, "high": None, "sd": None, "n": 1}
    same = aggregate.mean_interval([0.25, 0.25, 0.25])
    assert same["low"] == same["high"] == 0.25
    for bad, match in (([], "non-empty"), ([1.0, float("nan")], "finite"), ([[1.0, 2.0]], "1-D"), ([1.0, float("inf")], "finite")):
        with pytest.raises(ValueError, match=match):
            aggregate.mean_interval(bad)
    with pytest.raises(ValueError, match="confidence"):
        aggregate.mean_interval([1.0, 2.0], confidence=1.0)


def test_curve_interval_direction_and_count():
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(5, 9))
    band = aggregate.curve_interval(rows)
    for k in range(9):
        column = aggregate.mean_interval(rows[:, k])
        assert (band["mean"][k], band["low"][k], band["high"][k]) == (column["mean"], column["low"], column["high"])
    assert aggregate.curve_interval(rows[:1])["low"] is None
    assert aggregate.direction({"low": 0.1, "high": 0.4}) == "above zero"
    assert aggregate.direction({"low": -0.4, "high": -0.01}) == "below zero"
    assert aggregate.direction({"low": -0.1, "high": 0.4}) == "includes zero"
    assert aggregate.direction({"low": None, "high": None}) is None
    assert aggregate.count([True, False, True]) == {"count": 2, "seeds": 3, "holds": "some"}
    assert aggregate.count([True] * 4)["holds"] == "all" and aggregate.count([False])["holds"] == "none"
    with pytest.raises(ValueError, match="flags"):
        aggregate.count([])


# ----------------------------------------------------------------------------------- findings as numbers
def test_gold_decline_and_the_comparison_thresholds():
    tol = findings.DECLINE_TOLERANCE
    rising = findings.gold_decline([0.0, 0.3, 0.5])
    assert rising == {"index": 2, "value": 0.5, "final": 0.5, "drop": 0.0, "declined": False}
    peaked = findings.gold_decline([0.0, 0.8, 0.8 - 2 * tol])
    assert peaked["index"] == 1 and peaked["drop"] == pytest.approx(2 * tol) and peaked["declined"]
    assert not findings.gold_decline([0.0, 0.8, 0.8 - tol / 2])["declined"]  # inside the tolerance
    with pytest.raises(ValueError, match="gold"):
        findings.gold_decline([0.0, float("nan")])
    same = findings.SAME_GOLD_TOLERANCE
    assert findings.compare(0.5 + 2 * same, 0.5, same) == "higher"
    assert findings.compare(0.5 - 2 * same, 0.5, same) == "lower"
    assert findings.compare(0.5 + same / 2, 0.5, same) == "same"
    bands = [(findings.AUROC_USABLE, "usable"), (findings.AUROC_USABLE - 0.01, "modest"), (findings.AUROC_MODEST, "modest"),
             (0.5, "chance"), (findings.AUROC_INVERTED, "inverted"), (0.1, "inverted"), (None, "undefined")]
    for value, band in bands:
        assert findings.auroc_quality(value) == band, value


def _guide(gold, mop, alarm, icds=None, every=2):
    peak = int(np.argmax(gold))
    decline = findings.gold_decline(gold)
    return {"gold": list(gold), "proxy": [0.0] * len(gold), "mop": list(mop), "icds_normalized": list(icds or [0.0] * len(gold)),
            "hacked_fraction": [0.5] * len(gold), "off_topic": [1.0] * len(gold), "filler": [0.5] * len(gold),
            "inform": [0.0, 1.0, 2.0, 3.0][: len(gold)], "gold_peak_round": peak * every, "gold_peak": gold[peak],
            "gold_drop_after_peak": decline["drop"], "gold_declined": decline["declined"], "alarm_round": alarm,
            "alarm_reason": "mop 0.2 > threshold 0.1" if alarm is not None else None}


def test_alarm_timing_classes():
    def timing(gold, alarm):
        return findings.alarm_timing(_guide(gold, [0.0] * len(gold), alarm))

    hacked = [0.1, 0.4, 0.0, -0.5]  # peak at round 2
    assert timing(hacked, 0)["timing"] == "early" and timing(hacked, 0)["lag"] == -2
    assert timing(hacked, 2)["timing"] == "at_peak" and timing(hacked, 2)["lag"] == 0
    assert timing(hacked, 6)["timing"] == "late" and timing(hacked, 6)["lag"] == 4
    assert timing(hacked, None)["timing"] == "undetected" and timing(hacked, None)["lag"] is None
    honest = [0.1, 0.5, 0.9, 1.2]
    assert timing(honest, 4)["timing"] == "false_alarm"
    assert timing(honest, None)["timing"] == "quiet"


def test_detector_against_the_control_labels():
    def search(control_mop, hacked_mop, control_icds=(0.01, 0.012), hacked_icds=(0.01, 0.03)):
        return {"gold": _guide([0.1, 0.5, 0.9, 1.2], [control_mop[0], 0, 0, control_mop[1]], None, [control_icds[0], 0, 0, control_icds[1]]),
                "standard": _guide([0.1, 0.4, 0.0, -0.5], [hacked_mop[0], 0, 0, hacked_mop[1]], 4, [hacked_icds[0], 0, 0, hacked_icds[1]])}

    mop = findings.score_against_control(search((0.02, 0.2), (0.02, 0.4)), "mop", ["standard"])
    assert mop["control_rise"] == pytest.approx(0.18) and mop["rise"]["standard"] == pytest.approx(0.38)
    assert mop["ratio"]["standard"] == pytest.approx(0.38 / 0.18) and mop["label"] == "separated_control_rose"
    assert findings.score_against_control(search((0.02, 0.03), (0.02, 0.4)), "mop", ["standard"])["label"] == "separated"
    assert findings.score_against_control(search((0.02, 0.2), (0.02, 0.3)), "mop", ["standard"])["label"] == "not_separated"
    assert findings.score_against_control(search((0.02, 0.2), (0.02, 0.06)), "mop", ["standard"])["label"] == "barely_moved"
    icds = findings.score_against_control(search((0, 0), (0, 0)), "icds_normalized", ["standard"])
    assert icds["rise"]["standard"] == pytest.approx(0.02) and icds["ratio"]["standard"] == pytest.approx(10.0)
    assert icds["label"] == "separated"
    close = findings.score_against_control(search((0, 0), (0, 0), (0.01, 0.02), (0.01, 0.025)), "icds_normalized", ["standard"])
    assert close["ratio"]["standard"] == pytest.approx(1.5) and close["label"] == "not_separated"
    flat = findings.score_against_control(search((0, 0), (0, 0), (0.01, 0.02), (0.01, 0.01)), "icds_normalized", ["standard"])
    assert flat["label"] == "no_rise"


def test_ibl_findings_numbers():
    ibl = {"coef": 0.25, "coef_scale": 1.0, "reference_reward_std": 0.5, "reference_distance_std": 2.0,
           "reference_distance_mean": 1.9, "reference_corr_distance_abs_reward": 0.8}

    def results(penalised):
        plain = _guide([0.1, 0.4, 0.0, -0.5], [0.01, 0.1, 0.2, 0.3], 4)
        plain["distance"] = [2.0, 2.5]
        return {"policy_search": {"rounds": [0, 2, 4, 6], "config": {"ibl": ibl}, "inform": plain, "inform_ibl": penalised}}

    delayed = _guide([0.1, 0.2, 0.5, 0.1], [0.01, 0.0, 0.0, 0.0], 2)
    delayed["distance"] = [2.0, 1.0]
    f = findings.ibl_findings(results(delayed))
    assert f["decline"] == "both_declined" and f["peak_delay"] == 2
    assert f["gold_difference_final"] == pytest.approx(0.6) and f["gold_final_verdict"] == "higher"
    assert f["hacked_toward_reference"] and f["distance_tracks_reward"]
    assert f["alarm"]["inform_ibl"]["timing"] == "early" and f["alarm"]["inform_ibl"]["lag"] == -2
    assert f["alarm"]["inform"]["timing"] == "late" and f["peak_round"] == {"inform": 2, "inform_ibl": 4}
    removed = _guide([0.1, 0.2, 0.3, 0.4], [0.0] * 4, None)
    removed["distance"] = [2.0, 1.5]
    f = findings.ibl_findings(results(removed))
    assert f["decline"] == "removed" and not f["hacked_toward_reference"]
    ibl["reference_corr_distance_abs_reward"] = 0.06
    assert findings.ibl_findings(results(removed))["distance_tracks_reward"] is False
    assert findings.ibl_findings({"policy_search": {"inform": removed, "rounds": [0], "config": {}}}) is None


def _fake_seed(seed, standard_gold, inform_gold, accuracy=(0.8, 0.79), auroc=0.6):
    ns = [1, 2, 4, 8]
    return {"seed": seed, "best_of_n": findings.best_of_n_findings({
        "n": ns,
        "standard": {"gold": standard_gold, "proxy": [0, 1, 2, 3], "filler": [0.5, 1, 2, 4], "heldout_accuracy": accuracy[0]},
        "inform": {"gold": inform_gold, "proxy": [0, 1, 2, 3], "filler": [0.5, 1, 1, 2], "heldout_accuracy": accuracy[1]},
    }), "detection": {"auroc": {"standard": auroc, "inform": auroc, "pooled": auroc},
                      "mop": {name: {"n1": 0.01, "max_n": 0.2} for name in RM},
                      "icds_normalized": {name: {"n1": 0.0, "max_n": 0.1} for name in RM}}}


def test_study_findings_count_and_interval_the_seeds():
    rng = np.random.default_rng(7)
    per_seed = []
    for seed in range(6):
        peak = rng.uniform(0.5, 1.0)
        standard = [0.0, peak, peak - 0.3, peak - rng.uniform(0.2, 1.0)] if seed != 3 else [0.0, 0.3, 0.6, 0.9]
        inform = [0.0, peak, peak - 0.1, standard[-1] + rng.normal(0.2, 0.1)]
        per_seed.append(_fake_seed(seed, standard, inform, accuracy=(0.8 + 0.01 * seed, 0.79), auroc=0.4 + 0.05 * seed))
    f = findings.study_findings(per_seed)
    best = f["best_of_n"]
    assert f["seeds"] == list(range(6)) and f["n_seeds"] == 6
    assert best["standard"]["overoptimized"] == {"count": 5, "seeds": 6, "holds": "some"}
    drops = [s["best_of_n"]["standard"]["drop"] for s in per_seed]
    assert best["standard"]["drop"] == aggregate.mean_interval(drops)
    differences = [s["best_of_n"]["inform"]["final"] - s["best_of_n"]["standard"]["final"] for s in per_seed]
    got = best["gold_difference_at_max_n"]
    assert got["mean"] == pytest.approx(np.mean(differences))
    assert got["direction"] == aggregate.direction(aggregate.mean_interval(differences))
    assert got["inform_higher"]["count"] == sum(d > findings.SAME_GOLD_TOLERANCE for d in differences)
    accuracy = best["heldout_accuracy_difference"]
    assert accuracy["mean"] == pytest.approx(np.mean([0.79 - 0.8 - 0.01 * s for s in range(6)]))
    assert accuracy["direction"] == "below zero"
    band = best["gold_difference"]
    assert band["n"] == [1, 2, 4, 8] and band["mean"][0] == 0.0
    assert best["inform_higher_at_n"] == [n for n, low in zip(band["n"], band["low"]) if low > 0]
    det = f["detection"]
    assert det["auroc_below_half"]["pooled"]["count"] == 2  # 0.40 and 0.45
    assert det["auroc"]["pooled"]["mean"] == pytest.approx(np.mean([0.4 + 0.05 * s for s in range(6)]))
    with pytest.raises(ValueError, match="per_seed"):
        findings.study_findings([])


@pytest.mark.parametrize("auroc,hacked_distance,reading", [
    (0.3, 2.0, "inverted_hacked_closer"), (0.3, 5.0, "inverted_hacked_farther"),
    (0.8, 5.0, "hacked_farther"), (0.8, 2.0, "hacked_closer"),
])
def test_the_auroc_is_read_from_what_the_picks_look_like(auroc, hacked_distance, reading):
    per_seed = []
    for seed in range(3):
        fake = _fake_seed(seed, [0.0, 0.5, 0.4, 0.1], [0.0, 0.5, 0.45, 0.2], auroc=auroc + 0.01 * seed)
        fake["detection"]["picks"] = {"hacked_share": 0.3, "hacked_distance": hacked_distance + 0.1 * seed,
                                      "other_distance": 3.0, "hacked_reward_z": 1.0, "other_reward_z": 2.0,
                                      "corr_distance_abs_reward_z": 0.8}
        per_seed.append(fake)
    detection = findings.study_findings(per_seed)["detection"]
    assert detection["auroc_reading"] == reading
    assert detection["auroc_quality"] == findings.auroc_quality(auroc + 0.01)
    assert detection["picks"]["hacked_distance"]["mean"] == pytest.approx(hacked_distance + 0.1)

# ----------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    # --jobs 2: seed 0 runs here, seed 1 in a spawned worker process (compared with seed 1 run here below)
    code = main(["demo", "--preset", "tiny", "--seeds", str(len(TINY_SEEDS)), "--seed", str(TINY_SEEDS[0]), "--jobs", "2",
                 "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_report_structure(tiny_report):
    files = sorted(os.listdir(tiny_report))
    assert files == [".inform-fast-demo", "detection.png", "gold_vs_proxy.png", "latent_map.png", "policy_search.png", "report.json", "report.md"]
    for name in ("detection.png", "gold_vs_proxy.png", "latent_map.png", "policy_search.png"):
        with open(tiny_report / name, "rb") as stream:
            assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
    results = json.loads((tiny_report / "report.json").read_text())
    assert results["seeds"] == TINY_SEEDS and results["preset"] == "tiny"
    assert [r["seed"] for r in results["per_seed"]] == TINY_SEEDS
    assert results["config"]["max_n"] == preset("tiny").max_n
    assert results["runtime_s"] > 0 and len(results["environment"]["seed_runtime_s"]) == len(TINY_SEEDS)
    for run in results["per_seed"]:
        grid = run["n"]
        assert grid[0] == 1 and grid[-1] == preset("tiny").max_n
        for name in RM:
            for key in SERIES:
                assert len(run[name][key]) == len(grid), (name, key)
                assert all(math.isfinite(v) for v in run[name][key])
            # n = 1 is the base pool: z-scored rewards average to 0 there
            assert run[name]["gold"][0] == pytest.approx(0.0, abs=1e-9)
            assert run[name]["proxy"][0] == pytest.approx(0.0, abs=1e-9)
            assert np.all(np.diff(run[name]["proxy"]) >= -1e-9)  # best-of-n on its own proxy
            np.testing.assert_allclose(run[name]["kl"], study.best_of_n_kl(grid))
        assert set(run["detector_auroc"]) == {"standard", "inform", "pooled"}
        spectrum = run["latent_spectrum"]
        assert len(spectrum["eigenvalues"]) == preset("tiny").latent_dim
        assert 1.0 <= spectrum["participation_ratio"] <= preset("tiny").latent_dim
        picks = run["detector_picks"]
        assert 0.0 < picks["hacked_share"] < 1.0 and picks["hacked_distance"] > 0 and picks["other_distance"] > 0
        assert 0.0 <= run["data"]["label_against_gold"] <= 0.5
    text = (tiny_report / "report.md").read_text()
    for name in ("gold_vs_proxy.png", "detection.png", "latent_map.png", "policy_search.png"):
        assert f"]({name})" in text
    assert f"**{len(TINY_SEEDS)} seeds** ({', '.join(map(str, TINY_SEEDS))})" in text


def test_multi_seed_aggregates_equal_a_direct_computation(tiny_report):
    """The report's across-seed numbers, recomputed from its own per-seed series with scipy."""
    stats = pytest.importorskip("scipy.stats")
    results = json.loads((tiny_report / "report.json").read_text())
    runs, study_f = results["per_seed"], results["findings"]["study"]

    def interval(values):
        values = np.asarray(values, dtype=np.float64)
        low, high = stats.t.interval(0.95, values.size - 1, loc=values.mean(), scale=values.std(ddof=1) / math.sqrt(values.size))
        return values.mean(), low, high

    for name in RM:
        drops = [max(r[name]["gold"]) - r[name]["gold"][-1] for r in runs]
        declined = [int(np.argmax(r[name]["gold"])) < len(r[name]["gold"]) - 1 and d > findings.DECLINE_TOLERANCE
                    for r, d in zip(runs, drops)]
        got = study_f["best_of_n"][name]
        assert got["overoptimized"]["count"] == sum(declined)
        np.testing.assert_allclose([got["drop"]["mean"], got["drop"]["low"], got["drop"]["high"]], interval(drops), rtol=1e-9, atol=1e-12)
        accuracy = [r[name]["heldout_accuracy"] for r in runs]
        np.testing.assert_allclose([got["heldout_accuracy"][k] for k in ("mean", "low", "high")], interval(accuracy), rtol=1e-9)
    differences = [r["inform"]["gold"][-1] - r["standard"]["gold"][-1] for r in runs]
    got = study_f["best_of_n"]["gold_difference_at_max_n"]
    np.testing.assert_allclose([got["mean"], got["low"], got["high"]], interval(differences), rtol=1e-9, atol=1e-12)
    pooled = [r["detector_auroc"]["pooled"] for r in runs]
    got = study_f["detection"]["auroc"]["pooled"]
    np.testing.assert_allclose([got["mean"], got["low"], got["high"]], interval(pooled), rtol=1e-9)
    # the per-n band of the difference, point by point
    band = study_f["best_of_n"]["gold_difference"]
    for k in range(len(band["mean"])):
        column = [r["inform"]["gold"][k] - r["standard"]["gold"][k] for r in runs]
        if np.ptp(column) > 0:
            np.testing.assert_allclose([band["mean"][k], band["low"][k], band["high"][k]], interval(column), rtol=1e-9, atol=1e-12)
    # the renderer prints the study's numbers, not numbers of its own
    text = (tiny_report / "report.md").read_text()
    drop = study_f["best_of_n"]["standard"]["drop"]
    assert f"{drop['mean']:.2f} [{drop['low']:.2f}, {drop['high']:.2f}]" in text
    assert f"{got['mean']:.2f} [{got['low']:.2f}, {got['high']:.2f}]" in text


@pytest.fixture(scope="module")
def tiny_outcome():
    """run_study of the tiny preset, seed 1 alone, in this process (the arrays, scorer and search scorer kept)."""
    return run_study(preset("tiny"), seed=TINY_SEEDS[1], progress=False)


def test_each_seed_is_deterministic_on_its_own(tiny_report, tiny_outcome):
    """A seed's numbers in a multi-seed run (computed there in a worker process, --jobs 2) are the
    numbers of that seed run alone in this process."""
    first = json.loads((tiny_report / "report.json").read_text())["per_seed"][1]
    again = json.loads(json.dumps(tiny_outcome["results"]))
    assert again["seed"] == first["seed"] == TINY_SEEDS[1]
    for key in ("n", "kl", "gold_oracle", "icds", "mop", "detector_auroc", "detector_auroc_by_n", "detector_picks",
                "latent_spectrum", "standard", "inform", "policy_search", "data"):
        assert again[key] == first[key], key


def test_calibrated_scores_are_the_library_calls(tiny_outcome):
    """The demo's MOP (empirical p-values) and KOP at the largest n are inform_fast.detect's own
    functions on the picks' latents, with the reference split seeded by the run's seed."""
    from inform_fast.detect.calibrated import kop
    from inform_fast.detect.mop import mop

    results, arrays = tiny_outcome["results"], tiny_outcome["arrays"]
    config, seed = preset("tiny"), results["seed"]
    reference = torch.from_numpy(arrays["reference"])
    for name in RM:
        picks = torch.from_numpy(arrays["selected"][name])
        empirical = mop(picks, reference, alpha=config.mop_alpha, shrinkage="ledoit_wolf", pvalues="empirical",
                        calibration_fraction=config.calibration_fraction, seed=seed)
        neighbours = kop(picks, reference, alpha=config.mop_alpha, k=config.knn_k, calibration_fraction=config.calibration_fraction, seed=seed)
        assert results[name]["mop_empirical"][-1] == empirical.score
        assert results[name]["kop"][-1] == neighbours.score
        for key in ("mop_empirical", "kop"):
            assert len(results[name][key]) == len(results["n"]) and all(0.0 <= v <= 1.0 for v in results[name][key])
    assert results["reference"]["calibration_size"] == round(config.reference_size * config.calibration_fraction)
    for guide in ("standard", "inform", "inform_ibl", "gold"):
        series = results["policy_search"][guide]
        assert len(series["kop"]) == len(series["mop_empirical"]) == len(results["policy_search"]["rounds"])


def test_jobs_and_seeds_are_checked():
    from inform_fast.demo.pipeline import default_jobs, run_seeds

    config = preset("tiny")
    assert 1 <= default_jobs(config, 3) <= 3 and default_jobs(config, 1) == 1
    assert default_jobs(preset("tiny", device="cuda"), 3) == 1
    with pytest.raises(ValueError, match="--jobs"):
        run_seeds(config, [0], progress=False, jobs=0)
    with pytest.raises(ValueError, match="--seeds"):
        run_seeds(config, [1, 1], progress=False)


def test_numbers_follow_the_seed_and_the_models(tiny_report):
    runs = json.loads((tiny_report / "report.json").read_text())["per_seed"]
    # a different seed changes the data and the models, hence every curve
    for name in RM:
        assert runs[0][name]["proxy"] != runs[1][name]["proxy"]
        assert runs[0][name]["gold"] != runs[1][name]["gold"]
    # same data, different training: the curves follow the trained models
    short = run_study(preset("tiny", steps=3), seed=TINY_SEEDS[0], progress=False)["results"]
    for name in RM:
        assert short[name]["gold"] != runs[0][name]["gold"]
        assert short[name]["heldout_accuracy"] != runs[0][name]["heldout_accuracy"]
    # the oracle curve depends on the pool only, not on the reward models
    np.testing.assert_allclose(short["gold_oracle"], runs[0]["gold_oracle"])


def test_cli_states_the_seed_count_and_rejects_bad_seeds(tmp_path, capsys):
    code = main(["demo", "--preset", "tiny", "--out", str(tmp_path / "missing" / "out"), "--quiet"])
    assert code == 2
    assert "--out" in capsys.readouterr().err
    for argv, name in ((["--seeds", "0"], "--seeds"), (["--seeds", "-2"], "--seeds"), (["--seed", "-1"], "--seed"),
                       (["--jobs", "0"], "--jobs")):
        assert main(["demo", "--preset", "tiny", "--out", str(tmp_path / "o"), "--quiet", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err
    assert not os.path.exists(tmp_path / "o")
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    with pytest.raises(ValueError, match="max_n"):
        preset("tiny", max_n=10_000)


def test_cli_prints_the_seed_count(tiny_report, tmp_path, capsys, monkeypatch):
    import inform_fast.demo as demo

    seen = {}
    results = json.loads((tiny_report / "report.json").read_text())

    def finished_run(out, **kwargs):  # the tiny run's results, without running it again
        seen.update(kwargs)
        return results

    monkeypatch.setattr(demo, "run_demo", finished_run)
    assert main(["demo", "--preset", "tiny", "--seeds", "2", "--seed", "0", "--out", str(tmp_path / "x"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert seen["seeds"] == 2 and seen["seed"] == 0
    assert "2 seeds (0, 1), preset tiny" in out
    drop = results["findings"]["study"]["best_of_n"]["standard"]["drop"]
    assert f"{drop['mean']:.2f} [{drop['low']:.2f}, {drop['high']:.2f}]" in out


def test_paper_preset_on_a_cpu_warns_before_it_runs(tmp_path, capsys, monkeypatch):
    import inform_fast.demo as demo
    from inform_fast.cli.demo import cost_warning

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    line = cost_warning("paper", cpu)
    assert "--preset paper" in line and "GPU" in line and "\n" not in line
    assert str(preset("paper").steps) in line and f"{8 * preset('paper').pool_per_prompt:,}" in line
    assert cost_warning("small", cpu) == "" and cost_warning("paper", cuda) == ""

    def stop(out, **kwargs):
        raise ValueError("--out: stopped by the test")

    monkeypatch.setattr(demo, "run_demo", stop)
    assert main(["demo", "--preset", "paper", "--device", "cpu", "--out", str(tmp_path / "p"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.index("warning: --preset paper") < err.index("stopped by the test")
    assert main(["demo", "--preset", "small", "--device", "cpu", "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert "warning" not in capsys.readouterr().err


def test_progress_bar_starts_each_stage_without_the_last_loss():
    import io

    from inform_fast.demo.pipeline import Progress

    stream = io.StringIO()
    bar = Progress(total=10, enabled=True, file=stream)
    bar.prefix = "seed 3 (2/5): "
    bar.stage("train standard")
    bar.tick(loss="0.693", acc="0.50")
    assert "loss=0.693" in bar.bar.postfix
    bar.stage("score standard")
    bar.tick()
    assert not bar.bar.postfix  # the training loss is not shown through scoring
    assert bar.bar.desc.startswith("seed 3 (2/5): score standard")
    bar.close()


def test_presets_are_consistent():
    for name in ("tiny", "small", "paper"):
        config = preset(name)
        assert config.max_n <= config.pool_per_prompt
        assert study.log_grid(config.max_n)[-1] == config.max_n
    assert preset("small").max_n >= 1000 and preset("paper").max_n >= preset("small").max_n


def test_backbone_is_the_tiny_llama_recipe():
    from inform_fast.demo.train import build_backbone
    from inform_fast.tiny import tiny_llama

    demo_backbone = build_backbone(90, 32, 1, 2, seed=5)
    config = demo_backbone.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.use_cache) == (2, 2, False)
    same = tiny_llama(90, hidden_size=32, layers=1, seed=5, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=64, use_cache=False)
    for (name, a), (_, b) in zip(demo_backbone.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def short_outcome():
    from inform_fast.demo.pipeline import run_seeds, study_results

    config = preset("tiny", steps=2)
    outcome = run_seeds(config, [0], progress=False)
    return {"results": study_results(outcome["per_seed"], "tiny", config), "arrays": outcome["arrays"]}


def _previous_output(out, files=("report.json",)):
    """A folder as a previous demo run leaves it: its files and the marker that lists them."""
    from inform_fast.demo import report

    out.mkdir()
    for name in files:
        (out / name).write_text("old " + name)
    (out / report.MARKER).write_text(json.dumps({"generator": "inform-fast demo", "files": list(files)}))


def test_report_is_all_or_nothing(tmp_path, monkeypatch, short_outcome):
    from inform_fast.demo import report

    out = tmp_path / "out"
    _previous_output(out)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "plot_detection", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        report.write_report(str(out), short_outcome)
    # the previous report is untouched and no temporary folder is left behind
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(out)) == [report.MARKER, "report.json"]
    assert (out / "report.json").read_text() == "old report.json"
    monkeypatch.undo()
    report.write_report(str(out), short_outcome)
    assert "report.md" in os.listdir(out) and sorted(os.listdir(tmp_path)) == ["out"]
    assert json.loads((out / "report.json").read_text())["preset"] == "tiny"


def _tree(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}


def test_demo_out_refuses_a_folder_with_other_files(tmp_path, capsys):
    # the data loss of issue 13: --out precious removed precious/notes.txt
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "notes.txt").write_text("mine")
    (precious / "sub" / "data.csv").write_text("1,2")
    before = _tree(precious)
    code = main(["demo", "--preset", "tiny", "--out", str(precious), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--out" in err and "notes.txt" in err and "--overwrite" in err
    assert _tree(precious) == before and sorted(os.listdir(tmp_path)) == ["precious"]


def test_demo_out_dot_in_a_project_touches_nothing(tmp_path, monkeypatch, capsys):
    # `--out .` inside a project wiped its sources and then failed because the cwd was gone
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hi')")
    (project / "README.md").write_text("# mine")
    before = _tree(project)
    monkeypatch.chdir(project)
    assert main(["demo", "--preset", "tiny", "--out", ".", "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    assert _tree(project) == before and os.getcwd() == str(project)


def test_demo_overwrite_replaces_only_its_own_files(tmp_path, monkeypatch, short_outcome):
    from inform_fast.demo import report

    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    (project / "report.md").write_text("the user's own report.md")
    monkeypatch.chdir(project)
    with pytest.raises(ValueError, match="--out"):
        report.write_report(".", short_outcome)
    assert sorted(os.listdir(project)) == ["notes.txt", "report.md"]
    report.write_report(".", short_outcome, overwrite=True)
    files = sorted(os.listdir(project))
    assert "notes.txt" in files and (project / "notes.txt").read_text() == "mine"
    assert set(report.OWN_FILES) - {"policy_search.png"} <= set(files)
    assert not [name for name in files if name.startswith(".inform_fast_demo-tmp")]
    assert os.getcwd() == str(project)
    # the folder still holds a file the demo did not write, so a later run needs --overwrite again
    with pytest.raises(ValueError, match="notes.txt"):
        report.check_out_dir(".")


def test_demo_reruns_into_its_previous_output(tmp_path, short_outcome):
    from inform_fast.demo import report

    out = tmp_path / "out"
    # an earlier run wrote a figure this run does not: it is the demo's own, so it goes
    _previous_output(out, files=("report.json", "report.md", "latent_map.png", "policy_search.png"))
    from inform_fast.demo.pipeline import study_results

    runs = [{k: v for k, v in run.items() if k != "policy_search"} for run in short_outcome["results"]["per_seed"]]
    results = study_results(runs, "tiny", preset("tiny", steps=2))
    report.write_report(str(out), {"results": results, "arrays": short_outcome["arrays"]})
    files = set(os.listdir(out))
    assert "policy_search.png" not in files and {"report.md", "report.json", "latent_map.png", report.MARKER} <= files
    listed = json.loads((out / report.MARKER).read_text())["files"]
    assert set(listed) == files - {report.MARKER}
    # a user's file added to a demo output makes it foreign again; a marker alone proves nothing
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        report.check_out_dir(str(out))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.check_out_dir(str(empty)) == str(empty)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / report.MARKER).write_text("not json")
    (fake / "report.md").write_text("mine")
    with pytest.raises(ValueError, match="report.md"):
        report.check_out_dir(str(fake))


# ----------------------------------------------------------------------------------- policy search
GUIDES = ("standard", "inform", "inform_ibl", "gold")
SEARCH_SERIES = ("gold", "gold_raw", "proxy", "standard", "inform", "mop", "icds", "icds_normalized", "hacked_fraction",
                 "filler", "off_topic", "improved", "distance")


def _population(seed=0, size=60):
    """Responses of mixed lengths (the demo's default is a fixed budget; padding must work too)."""
    from inform_fast.demo import search

    rng = np.random.default_rng(seed)
    config = world.WorldConfig(min_words=6, max_words=16, padded_share=0.1)
    return rng, search.Population.from_responses(world.generate(rng, rng.integers(8, size=size), config))


def test_edit_operator_keeps_responses_valid_and_changes_one_word():
    from inform_fast.demo import search

    rng, population = _population()
    table = world.gold_weight_table()
    words = population.words()
    np.testing.assert_allclose(population.gold(table), [world.gold_reward(int(t), w) for t, w in zip(population.topic, words)])
    k = 7
    edits = search.propose_edits(rng, population, k)
    assert len(edits) == len(population) * k
    edited = edits.words()
    gold = edits.gold(table)
    for row, new in enumerate(edited):
        old = words[row // k]
        assert world.is_valid_response(new, world.WorldConfig(min_words=6, max_words=16)), new
        assert len(new) == len(old)
        assert sum(a != b for a, b in zip(old, new)) == 1, (old, new)
        assert gold[row] == pytest.approx(world.gold_reward(int(edits.topic[row]), new))
    # every position and every word can be drawn
    many = search.propose_edits(rng, population, 400)
    changed = many.ids != population.ids[np.repeat(np.arange(len(population)), 400)]
    assert np.all(changed.sum(axis=1) == 1)
    assert set(np.unique(many.ids[changed])) == set(range(len(world.response_vocabulary())))
    positions = changed.argmax(axis=1).reshape(len(population), 400)
    assert all(set(p.tolist()) == set(range(n)) for p, n in zip(positions, population.length))
    assert population.count(world.FILLER).tolist() == [sum(w in world.FILLER for w in ws) for ws in words]
    names = list(world.TOPICS)
    others = [{w for n in names if n != names[t] for w in world.TOPICS[n].split()} for t in population.topic]
    assert population.off_topic(table).tolist() == [sum(w in o for w in ws) for o, ws in zip(others, words)]


def test_encoder_matches_the_tokenizer():
    from inform_fast.demo import search

    _, population = _population(size=25)
    tokenizer = world.build_tokenizer()
    ids, mask = search.Encoder(tokenizer)(population)
    responses = world.Responses(topic=population.topic, words=population.words(), gold=np.zeros(25),
                                filler=np.zeros(25, int), length=population.length)
    # the tokenizer on the texts themselves (prompt + response + <eos>, right-padded)
    encoded = tokenizer([text + " <eos>" for text in responses.texts()], padding=True, return_tensors="pt")
    assert ids.tolist() == encoded["input_ids"].tolist() and mask.tolist() == encoded["attention_mask"].tolist()
    assert tokenizer.unk_token_id not in ids.tolist()


def test_gold_guided_search_never_lowers_gold_and_is_deterministic():
    from inform_fast.demo import search

    rng, population = _population(size=40)
    reference = np.random.default_rng(5).normal(size=(300, 4))
    latent_of = np.random.default_rng(6).normal(size=(len(world.response_vocabulary()), 4))

    def score(name, pop):  # a stand-in "model": its reward and latent are word-count features
        counts = np.stack([np.bincount(row[row >= 0], minlength=latent_of.shape[0]) for row in pop.ids])
        latents = counts @ latent_of / 10.0
        return latents[:, 0], torch.from_numpy(latents).float()

    def run(seed):
        return search.run_policy_search(
            np.random.default_rng(seed), population, score, world.gold_weight_table(), torch.from_numpy(reference).float(),
            {"gold": (0.0, 1.0), "standard": (0.0, 1.0), "inform": (0.0, 1.0)}, 0.0, rounds=12, edits=3, every=2,
            icds_eps=0.5, icds_min_samples=5, mop_alpha=0.01, mop_eps=1e-6, onset_threshold=10.0, min_jump=1 / 40,
            mop_threshold=0.1,
        )

    first = run(0)
    assert first["rounds"] == [0, 2, 4, 6, 8, 10, 12]
    assert np.all(np.diff(first["gold"]["gold"]) >= -1e-12)  # monotone by construction
    assert first["gold"]["gold"][-1] > first["gold"]["gold"][0]
    assert first["gold"]["proxy"] == first["gold"]["gold"]
    assert np.all(np.diff(first["standard"]["proxy"]) >= -1e-12)  # each guide climbs its own score
    assert first["gold"]["gold_peak_round"] == first["rounds"][int(np.argmax(first["gold"]["gold"]))]
    assert np.array_equal(population.ids, _population(size=40)[1].ids)  # the start is not modified
    assert json.loads(json.dumps(run(0))) == json.loads(json.dumps(first))
    assert run(1)["gold"]["gold"] != first["gold"]["gold"]



def test_policy_search_report(tiny_report):
    results = json.loads((tiny_report / "report.json").read_text())
    config = preset("tiny")
    for run in results["per_seed"]:
        ps = run["policy_search"]
        assert ps["config"]["population"] == config.search_population
        assert ps["config"]["rounds"] == config.search_rounds and ps["config"]["edits"] == config.search_edits
        assert ps["rounds"] == list(range(0, config.search_rounds + 1, config.search_every))
        for guide in GUIDES:
            s = ps[guide]
            for key in SEARCH_SERIES:
                assert len(s[key]) == len(ps["rounds"]), (guide, key)
                assert all(math.isfinite(v) for v in s[key]), (guide, key)
            assert all(0.0 <= v <= 1.0 for v in s["mop"] + s["hacked_fraction"])
            assert s["gold_peak_round"] in ps["rounds"]
            assert s["alarm_round"] is None or s["alarm_round"] in ps["rounds"]
            assert s["gold_raw"][0] == pytest.approx(ps["gold"]["gold_raw"][0])  # one start for every guide
            z = (np.asarray(s["gold_raw"]) - run["reference"]["pool_gold_mean"]) / run["reference"]["pool_gold_std"]
            np.testing.assert_allclose(s["gold"], z, rtol=1e-9, atol=1e-9)
        assert np.all(np.diff(ps["gold"]["gold"]) >= -1e-12)
        assert ps["gold"]["mop"][0] == ps["standard"]["mop"][0] == ps["inform"]["mop"][0] == ps["inform_ibl"]["mop"][0]
        assert ps["inform_ibl"]["distance"][0] == ps["inform"]["distance"][0]  # the same start
        assert len(set(ps["config"]["start_index"])) == config.search_population
    # the findings of each seed's search are its series, judged (counted across seeds)
    per_seed = results["findings"]["per_seed"]
    summary = results["findings"]["study"]["policy_search"]["guides"]
    for guide in GUIDES:
        rows = [f["policy_search"]["guides"][guide] for f in per_seed]
        for row, run in zip(rows, results["per_seed"]):
            s = run["policy_search"][guide]
            assert (row["gold_start"], row["gold_final"], row["mop_final"]) == (s["gold"][0], s["gold"][-1], s["mop"][-1])
            assert row["timing"] == findings.alarm_timing(s)["timing"]
        assert summary[guide]["declined"]["count"] == sum(r["declined"] for r in rows)
        assert sum(summary[guide]["timing"].values()) == len(rows)
        assert summary[guide]["gold_final"] == aggregate.mean_interval([r["gold_final"] for r in rows])


# ----------------------------------------------------------------------------------- IBL guide
def _mahalanobis_by_hand(x, mean, covariance):
    centred = np.asarray(x, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    solved = np.linalg.solve(np.asarray(covariance, dtype=np.float64), centred.T).T
    return np.sqrt(np.einsum("ij,ij->i", centred, solved))


def test_ibl_guide_scores_ibl_penalty_of_inform(tiny_outcome):
    from inform_fast.demo import search
    from inform_fast.detect.ibl import ibl_penalty

    ibl = tiny_outcome["arrays"]["ibl"]
    coef = tiny_outcome["results"]["policy_search"]["config"]["ibl"]["coef"]
    assert coef > 0
    scorer, score = ibl["scorer"], ibl["score"]
    _, population = _population(seed=3, size=9)
    population.topic %= preset("tiny").n_prompts
    reward, mu = score("inform", population)
    guided, mu_again = score("inform_ibl", population)
    assert torch.equal(mu, mu_again)
    # the library function on InfoRM's outputs, and the formula by hand with the fitted scorer
    np.testing.assert_array_equal(guided, ibl_penalty(torch.from_numpy(reward), mu, scorer, coef).numpy())
    distance = _mahalanobis_by_hand(mu.numpy(), scorer.mean_.cpu().numpy(), scorer.covariance_.cpu().numpy())
    np.testing.assert_allclose(guided, reward - coef * distance, rtol=1e-5, atol=1e-5)
    assert np.all(guided < reward)  # a penalty: every distance is > 0
    # the scorer is the detector's: fitted on the reference set with Ledoit-Wolf
    np.testing.assert_allclose(scorer.mean_.cpu().numpy(), tiny_outcome["arrays"]["reference"].mean(0), rtol=1e-5, atol=1e-6)
    assert scorer.shrinkage == "ledoit_wolf" and scorer.n_samples_ == preset("tiny").reference_size


def test_ibl_coef_rule_recomputed_from_the_reference(tiny_outcome):
    from inform_fast.demo import search

    results, arrays = tiny_outcome["results"], tiny_outcome["arrays"]
    reference, reward = arrays["reference"], np.asarray(arrays["ibl"]["reference_reward"])
    assert reward.shape == (reference.shape[0],)
    # the rewards belong to these latents: InfoRM's decoder is linear in mu
    design = np.hstack([reference.astype(np.float64), np.ones((reference.shape[0], 1))])
    fit, *_ = np.linalg.lstsq(design, reward, rcond=None)
    assert np.abs(design @ fit - reward).max() < 1e-4 * max(1.0, np.abs(reward).max())
    # the distance from an independent Ledoit-Wolf fit when scikit-learn is there, else from the scorer's fit
    try:
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf().fit(reference.astype(np.float64))
        mean, covariance = lw.location_, lw.covariance_
    except ImportError:
        scorer = arrays["ibl"]["scorer"]
        mean, covariance = scorer.mean_.cpu().numpy(), scorer.covariance_.cpu().numpy()
    distance = _mahalanobis_by_hand(reference, mean, covariance)
    ibl = results["policy_search"]["config"]["ibl"]
    assert ibl["coef_scale"] == 1.0 == preset("tiny").search_ibl_coef_scale
    assert ibl["coef"] == pytest.approx(reward.std() / distance.std(), rel=1e-3)
    assert ibl["reference_reward_std"] == pytest.approx(reward.std(), rel=1e-9)
    assert ibl["reference_distance_std"] == pytest.approx(distance.std(), rel=1e-3)
    # the rule itself: a multiplier, checked input
    assert search.ibl_coef(reward, distance, 2.5) == pytest.approx(2.5 * reward.std() / distance.std(), rel=1e-12)
    assert search.ibl_coef(reward, distance, 0.0) == 0.0
    with pytest.raises(ValueError, match="constant|same Mahalanobis"):
        search.ibl_coef(reward, np.ones_like(distance))
    with pytest.raises(ValueError, match="search_ibl_coef_scale"):
        search.ibl_coef(reward, distance, -1.0)
    with pytest.raises(ValueError, match="search_ibl_coef_scale"):
        preset("tiny", search_ibl_coef_scale=float("nan"))



def test_ibl_guide_in_the_report(tiny_report):
    results = json.loads((tiny_report / "report.json").read_text())
    assert results["config"]["search_ibl_coef_scale"] == 1.0
    for run, f in zip(results["per_seed"], results["findings"]["per_seed"]):
        ps = run["policy_search"]
        ibl = ps["config"]["ibl"]
        for key in ("coef", "coef_scale", "rule", "reference_reward_std", "reference_distance_std", "reference_distance_mean",
                    "reference_corr_distance_abs_reward", "pool_penalised_mean", "pool_penalised_std", "pool_reward_mean",
                    "pool_reward_std", "shrinkage"):
            assert key in ibl, key
        assert ibl["coef"] == pytest.approx(ibl["coef_scale"] * ibl["reference_reward_std"] / ibl["reference_distance_std"])
        s, base = ps["inform_ibl"], ps["inform"]
        assert len(s["distance"]) == len(s["proxy"]) == len(ps["rounds"])
        # the penalised proxy (z on the pool) is InfoRM's reward minus coef x distance, averaged over the population
        penalised = np.asarray(s["proxy"]) * ibl["pool_penalised_std"] + ibl["pool_penalised_mean"]
        reward = np.asarray(s["inform"]) * ibl["pool_reward_std"] + ibl["pool_reward_mean"]
        np.testing.assert_allclose(penalised, reward - ibl["coef"] * np.asarray(s["distance"]), rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(s["proxy"]) >= -1e-12)  # it climbs its own (penalised) score
        found = f["policy_search"]["ibl"]
        assert found["gold_difference_final"] == pytest.approx(s["gold"][-1] - base["gold"][-1])
        assert found["coef"] == ibl["coef"] and found["mop_final"]["inform_ibl"] == s["mop"][-1]
    differences = [f["policy_search"]["ibl"]["gold_difference_final"] for f in results["findings"]["per_seed"]]
    summary = results["findings"]["study"]["policy_search"]["ibl"]["gold_difference_final"]
    assert summary["mean"] == pytest.approx(np.mean(differences))


def test_ibl_guide_leaves_the_other_guides_unchanged():
    from inform_fast.demo import search

    rng, population = _population(size=24)
    reference = np.random.default_rng(5).normal(size=(300, 4))
    latent_of = np.random.default_rng(6).normal(size=(len(world.response_vocabulary()), 4))

    def score(name, pop):
        counts = np.stack([np.bincount(row[row >= 0], minlength=latent_of.shape[0]) for row in pop.ids])
        latents = counts @ latent_of / 10.0
        reward = latents[:, 0] - (0.3 * np.abs(latents[:, 1]) if name == "inform_ibl" else 0.0)
        return reward, torch.from_numpy(latents).float()

    def run(guides):
        return search.run_policy_search(
            np.random.default_rng(2), population, score, world.gold_weight_table(), torch.from_numpy(reference).float(),
            {g: (0.0, 1.0) for g in search.GUIDES}, 0.0, rounds=6, edits=3, every=2, icds_eps=0.5, icds_min_samples=5,
            mop_alpha=0.01, mop_eps=1e-6, onset_threshold=10.0, min_jump=1 / 24, mop_threshold=0.1, guides=guides,
        )

    three, four = run(search.BASE_GUIDES), run(search.GUIDES)
    assert "inform_ibl" in four and "inform_ibl" not in three and "distance" not in three["inform"]
    for guide in search.BASE_GUIDES:
        assert json.loads(json.dumps(four[guide])) == json.loads(json.dumps(three[guide])), guide
    assert four["inform_ibl"]["gold"][0] == four["inform"]["gold"][0]  # the same start
    assert four["inform_ibl"]["gold"] != four["inform"]["gold"]  # a different score climbed




# ----------------------------------------------------------------------------------- the world sweep
def test_sweep_recovers_weights_and_judges_each_seed():
    from inform_fast.demo import sweep

    rng = np.random.default_rng(11)
    counts = rng.integers(0, 6, size=(3000, 6)).astype(np.float64)
    topics = rng.integers(4, size=3000)
    truth = np.array([0.3, 0.1, -0.8, 0.25, -0.05, 0.45])
    reward = counts @ truth + np.array([0.5, -1.0, 0.2, 2.0])[topics]
    fit = sweep.proxy_weights(reward, counts, topics)
    np.testing.assert_allclose([fit["weights"][k] for k in world.KINDS], truth, atol=1e-9)
    assert fit["r2"] == pytest.approx(1.0)

    row = sweep.run_seed(preset("tiny"), seed=2)
    gold = np.asarray(row["gold"])
    assert row["n"][-1] == preset("tiny").max_n and row["gold"][0] == pytest.approx(0.0, abs=1e-9)
    for n, declined in row["declined_by_n"].items():
        assert declined == findings.gold_decline(gold[: row["n"].index(int(n)) + 1])["declined"], n
    assert row["drop"] == pytest.approx(gold.max() - gold[-1])
    assert row["filler_per_on_topic"] == pytest.approx(row["weights"]["filler"] / row["weights"]["on_topic"])
    summary = sweep.summarize([row, dict(row, drop=0.0, declined_by_n={k: False for k in row["declined_by_n"]})])
    assert all(c["count"] == int(row["declined_by_n"][n]) for n, c in summary["declined_by_n"].items())
    assert summary["drop"]["mean"] == pytest.approx(row["drop"] / 2)
    assert sweep.main(["--variants", "nonsense", "--seeds", "1"]) == 2
