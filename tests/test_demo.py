"""Tests of ``inform-fast demo``: the best-of-n / KL / AUROC math against brute force and
scikit-learn, the synthetic world against its gold oracle, and the tiny preset end to end
(report structure, determinism, numbers that come from the trained models)."""
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

from inform_fast.cli import main
from inform_fast.demo import study, world
from inform_fast.demo.config import preset
from inform_fast.demo.pipeline import run_study

RM = ("standard", "inform")
SERIES = ("kl", "gold", "proxy", "icds", "icds_normalized", "mop", "hacked_fraction", "filler")


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
def test_world_gold_and_pairs():
    rng = np.random.default_rng(1)
    responses = world.generate(rng, rng.integers(8, size=500))
    for topic, words, gold in zip(responses.topic, responses.words, responses.gold):
        assert gold == pytest.approx(world.gold_reward(int(topic), words))
    assert all(len(w) == n for w, n in zip(responses.words, responses.length))
    filler = set(world.FILLER)
    assert [sum(w in filler for w in ws) for ws in responses.words] == responses.filler.tolist()

    pairs = world.preference_pairs(rng, 3000, 8, flip=0.25)
    agree = pairs.chosen.gold >= pairs.rejected.gold
    decided = pairs.chosen.gold != pairs.rejected.gold
    # labels follow the gold reward except for the flipped ones
    assert np.all(agree[decided & ~pairs.flipped])
    assert np.all(~agree[decided & pairs.flipped])
    assert 0.2 < pairs.flipped.mean() < 0.3
    # the spurious feature: the chosen response has more filler far more often than less
    more = np.mean(pairs.chosen.filler > pairs.rejected.filler)
    less = np.mean(pairs.chosen.filler < pairs.rejected.filler)
    assert more > 2 * less
    tokenizer = world.build_tokenizer()
    ids = tokenizer(responses.texts()[:20])["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)


# ----------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    code = main(["demo", "--preset", "tiny", "--seed", "0", "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_report_structure(tiny_report):
    files = sorted(os.listdir(tiny_report))
    assert files == [".inform-fast-demo", "detection.png", "gold_vs_proxy.png", "latent_map.png", "policy_search.png", "report.json", "report.md"]
    for name in ("detection.png", "gold_vs_proxy.png", "latent_map.png"):
        with open(tiny_report / name, "rb") as stream:
            assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
    results = json.loads((tiny_report / "report.json").read_text())
    grid = results["n"]
    assert grid[0] == 1 and grid[-1] == preset("tiny").max_n
    for name in RM:
        for key in SERIES:
            assert len(results[name][key]) == len(grid), (name, key)
            assert all(math.isfinite(v) for v in results[name][key])
        assert len(results["icds"][name]) == len(results["mop"][name]) == len(grid)
        # n = 1 is the base pool: z-scored rewards average to 0 there
        assert results[name]["gold"][0] == pytest.approx(0.0, abs=1e-9)
        assert results[name]["proxy"][0] == pytest.approx(0.0, abs=1e-9)
        assert np.all(np.diff(results[name]["proxy"]) >= -1e-9)  # best-of-n on its own proxy
        np.testing.assert_allclose(results[name]["kl"], study.best_of_n_kl(grid))
    assert set(results["detector_auroc"]) == {"standard", "inform", "pooled"}
    for name in RM:
        assert len(results["detector_auroc_by_n"][name]) == len(grid)
    spectrum = results["latent_spectrum"]
    assert len(spectrum["eigenvalues"]) == preset("tiny").latent_dim
    assert 1.0 <= spectrum["participation_ratio"] <= preset("tiny").latent_dim
    assert 0.0 <= spectrum["top_cos_reward"] <= 1.0 + 1e-12
    assert results["seed"] == 0 and results["preset"] == "tiny"
    assert results["config"]["max_n"] == preset("tiny").max_n
    assert results["runtime_s"] > 0
    text = (tiny_report / "report.md").read_text()
    for name in ("gold_vs_proxy.png", "detection.png", "latent_map.png"):
        assert f"]({name})" in text
    # the verdict quotes the measured numbers, not a fixed claim
    assert f"{results['inform']['gold'][-1]:.2f} vs {results['standard']['gold'][-1]:.2f}" in text


def _strip(results):
    return {k: v for k, v in results.items() if k not in ("runtime_s", "environment")}


@pytest.fixture(scope="module")
def tiny_outcome():
    """run_study of the tiny preset, seed 0, in this process (the arrays, scorer and search scorer kept)."""
    return run_study(preset("tiny"), seed=0, progress=False)


def test_deterministic_and_model_dependent(tiny_report, tiny_outcome):
    first = json.loads((tiny_report / "report.json").read_text())
    again = json.loads(json.dumps(tiny_outcome["results"]))
    for key in ("n", "kl", "gold_oracle", "icds", "mop", "detector_auroc", "detector_auroc_by_n", "latent_spectrum", "standard", "inform", "policy_search"):
        assert again[key] == first[key], key

    # a different seed changes the data and the models, hence every curve
    other = run_study(preset("tiny"), seed=1, progress=False)["results"]
    for name in RM:
        assert other[name]["proxy"] != first[name]["proxy"]
        assert other[name]["gold"] != first[name]["gold"]
    # same data, different training: the proxy curves follow the trained models
    short = run_study(preset("tiny", steps=3), seed=0, progress=False)["results"]
    for name in RM:
        assert short[name]["gold"] != first[name]["gold"]
        assert short[name]["heldout_accuracy"] != first[name]["heldout_accuracy"]
    # the oracle curve depends on the pool only, not on the reward models
    np.testing.assert_allclose(short["gold_oracle"], first["gold_oracle"])


def test_cli_errors(tmp_path, capsys):
    code = main(["demo", "--preset", "tiny", "--out", str(tmp_path / "missing" / "out"), "--quiet"])
    assert code == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    with pytest.raises(ValueError, match="max_n"):
        preset("tiny", max_n=10_000)


def test_presets_are_consistent():
    for name in ("tiny", "small", "paper"):
        config = preset(name)
        assert config.max_n <= config.pool_per_prompt
        assert study.log_grid(config.max_n)[-1] == config.max_n
    assert preset("small").max_n >= 1000 and preset("paper").max_n >= preset("small").max_n


@pytest.fixture(scope="module")
def short_outcome():
    outcome = run_study(preset("tiny", steps=2), seed=0, progress=False)
    outcome["results"].update(preset="tiny", config=preset("tiny", steps=2).to_dict())
    return outcome


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
    results = dict(short_outcome["results"])
    results.pop("policy_search", None)
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
    from inform_fast.demo import search

    rng = np.random.default_rng(seed)
    return rng, search.Population.from_responses(world.generate(rng, rng.integers(8, size=size)))


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
        assert world.is_valid_response(new), new
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
    from inform_fast.demo.pipeline import _tokenize

    _, population = _population(size=25)
    tokenizer = world.build_tokenizer()
    ids, mask = search.Encoder(tokenizer)(population)
    responses = world.Responses(topic=population.topic, words=population.words(), gold=np.zeros(25),
                                filler=np.zeros(25, int), length=population.length)
    want_ids, want_mask = _tokenize(tokenizer, responses, "cpu")
    assert ids.tolist() == want_ids.tolist() and mask.tolist() == want_mask.tolist()


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
    ps = results["policy_search"]
    config = preset("tiny")
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
        z = (np.asarray(s["gold_raw"]) - results["reference"]["pool_gold_mean"]) / results["reference"]["pool_gold_std"]
        np.testing.assert_allclose(s["gold"], z, rtol=1e-9, atol=1e-9)
    assert np.all(np.diff(ps["gold"]["gold"]) >= -1e-12)
    assert ps["gold"]["mop"][0] == ps["standard"]["mop"][0] == ps["inform"]["mop"][0] == ps["inform_ibl"]["mop"][0]
    assert ps["inform_ibl"]["distance"][0] == ps["inform"]["distance"][0]  # the same start
    # round 0: the start's MOP with the scorer and alpha of the best-of-n stage
    start = set(ps["config"]["start_index"])
    assert len(start) == config.search_population
    text = (tiny_report / "report.md").read_text()
    assert "](policy_search.png)" in text
    for guide in GUIDES:
        s = ps[guide]
        assert f"gold {s['gold'][0]:.2f} -> {s['gold'][-1]:.2f}" in text
        assert f"MOP {s['mop'][0]:.3f} -> {s['mop'][-1]:.3f}" in text
        if s["alarm_round"] is not None:
            assert f"round {s['alarm_round']}" in text
    with open(tiny_report / "policy_search.png", "rb") as stream:
        assert stream.read(8) == b"\x89PNG\r\n\x1a\n"


def test_policy_search_verdict_follows_the_numbers():
    from inform_fast.demo.report import policy_search_verdict

    def guide(gold, mop, alarm):
        peak = int(np.argmax(gold))
        return {"gold": gold, "proxy": [0.0] * len(gold), "mop": mop, "icds_normalized": [0.0] * len(gold),
                "hacked_fraction": [0.5] * len(gold), "off_topic": [1.0] * len(gold), "gold_peak_round": peak * 2,
                "gold_peak": gold[peak], "gold_drop_after_peak": gold[peak] - gold[-1],
                "gold_declined": peak < len(gold) - 1 and gold[peak] - gold[-1] > 0.05, "alarm_round": alarm,
                "alarm_reason": "mop 0.2 > threshold 0.1" if alarm is not None else None}

    results = {"policy_search": {
        "rounds": [0, 2, 4, 6], "config": {},
        "standard": guide([0.1, 0.4, 0.0, -0.5], [0.02, 0.05, 0.2, 0.4], 4),
        "inform": guide([0.1, 0.3, 0.2, -0.3], [0.02, 0.3, 0.5, 0.6], 2),
        "gold": guide([0.1, 0.5, 0.9, 1.2], [0.02, 0.05, 0.12, 0.2], 4),
    }}
    text = "\n".join(policy_search_verdict(results))
    assert "peaks at round 2 (z = 0.40)" in text and "2 round(s) after the gold peak" in text
    assert "at round 2 (mop 0.2 > threshold 0.1), the round of the gold peak" in text
    assert "**false alarm**" in text
    assert "changed by +0.180 (vs +0.380 climbing the standard RM (ratio 2.1) and +0.580 climbing InfoRM (ratio 3.2))" in text
    assert "rose for the control too" in text
    assert "Largest MOP jump ratio" not in text  # no jump ratios given
    results["policy_search"]["config"] = {"monitor": {"onset_threshold": 10.0}}
    results["policy_search"]["standard"]["mop_jump_ratio"] = [None, None, 12.5, 3.0]
    text = "\n".join(policy_search_verdict(results))
    assert "Largest MOP jump ratio 12.5 at round 4 (above the relative-jump threshold 10)" in text
    results["policy_search"]["gold"]["alarm_round"] = None
    results["policy_search"]["standard"]["alarm_round"] = None
    text = "\n".join(policy_search_verdict(results))
    assert "false alarm" not in text and "went undetected" in text


def test_icds_control_comparison_is_computed():
    from inform_fast.demo.report import _icds_against_control

    def guide(start, end):
        return {"icds_normalized": [start, end]}

    apart = _icds_against_control({"gold": guide(0.01, 0.012), "standard": guide(0.01, 0.03)}, ["standard"])
    assert "+0.002" in apart and "+0.020" in apart and "ratio 10.0" in apart and "told the two apart" in apart
    close = _icds_against_control({"gold": guide(0.01, 0.02), "standard": guide(0.01, 0.025)}, ["standard"])
    assert "ratio 1.5" in close and "did not separate" in close
    flat = _icds_against_control({"gold": guide(0.01, 0.02), "standard": guide(0.01, 0.01)}, ["standard"])
    assert "did not rise" in flat


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
    ps = results["policy_search"]
    assert results["config"]["search_ibl_coef_scale"] == 1.0
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
    text = (tiny_report / "report.md").read_text()
    last = ps["rounds"][-1]
    assert f"coef {ibl['coef']:.3g} = 1 x std(InfoRM reward) {ibl['reference_reward_std']:.3g}" in text
    assert f"Gold at round {last}: {s['gold'][-1]:.2f} with the penalty vs {base['gold'][-1]:.2f} without" in text
    assert f"MOP {s['mop'][-1]:.3f} vs {base['mop'][-1]:.3f}" in text
    assert f"InfoRM's raw reward {s['inform'][0]:.2f} -> {s['inform'][-1]:.2f}" in text
    assert "climbing InfoRM + IBL penalty" in text


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


def test_ibl_verdict_follows_the_numbers():
    from inform_fast.demo.report import ibl_verdict

    def guide(gold, alarm=None, distance=(2.0, 2.5), mop=(0.01, 0.3)):
        peak = int(np.argmax(gold))
        return {"gold": gold, "inform": [0.0, 1.0, 2.0, 3.0], "proxy": [0.0] * 4, "mop": list(mop), "icds_normalized": [0.0, 0.1],
                "gold_peak_round": 2 * peak, "gold_peak": gold[peak], "gold_drop_after_peak": gold[peak] - gold[-1],
                "gold_declined": peak < len(gold) - 1 and gold[peak] - gold[-1] > 0.05, "alarm_round": alarm,
                "distance": list(distance), "off_topic": [1.0, 2.0]}

    ibl = {"coef": 0.25, "coef_scale": 1.0, "reference_reward_std": 0.5, "reference_distance_std": 2.0,
           "reference_distance_mean": 1.9, "reference_corr_distance_abs_reward": 0.8}
    results = {"latent_spectrum": {"participation_ratio": 1.0, "top_cos_reward": 0.999},
               "policy_search": {"rounds": [0, 2, 4, 6], "config": {"ibl": ibl},
                                 "inform": guide([0.1, 0.4, 0.0, -0.5], alarm=4),
                                 "inform_ibl": guide([0.1, 0.2, 0.5, 0.1], alarm=2, distance=(2.0, 1.0))}}
    text = "\n".join(ibl_verdict(results))
    assert "coef 0.25 = 1 x std(InfoRM reward) 0.5 / std(Mahalanobis distance) 2" in text
    assert "delayed the gold peak by 2 round(s) (round 2 -> 4; peak z 0.40 -> 0.50)" in text
    assert "Gold at round 6: 0.10 with the penalty vs -0.50 without (+0.60, higher than plain InfoRM" in text
    assert "alarm at round 2 (2 round(s) before its gold peak)" in text and "alarm at round 4 (2 round(s) after its gold peak)" in text
    assert "Why the penalty" not in text and "braking the climb" in text and "rose to 3.00 (z) instead of 3.00" in text
    results["policy_search"]["inform_ibl"] = guide([0.1, 0.05, -0.3, -0.9], distance=(2.0, 1.0))
    text = "\n".join(ibl_verdict(results))
    assert "brought the gold peak 2 round(s) earlier" in text and "with the penalty no alarm" in text
    assert "(-0.40, lower than plain InfoRM" in text
    assert "Why the penalty did not help here" in text and "correlates 0.80 with |reward - mean|" in text
    assert "toward* the reference fit (mean distance 2.00 -> 1.00, reference mean 1.90)" in text
    assert "MOP ended at 0.300 and the monitor gave no alarm" in text
    ibl["reference_corr_distance_abs_reward"] = 0.06
    assert "correlates only 0.06 with |reward - mean|" in "\n".join(ibl_verdict(results))
    results["policy_search"]["inform_ibl"] = guide([0.1, 0.2, 0.3, 0.4])
    assert "the penalty removed the gold decline" in "\n".join(ibl_verdict(results))
    del results["policy_search"]["inform_ibl"]
    assert ibl_verdict(results) == []
