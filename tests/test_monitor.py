"""OverOptimizationMonitor (onset rule, history, plot), its Trainer callback and TRL hook, and the
``inform-fast mop`` / ``inform-fast report`` commands."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from inform_fast.cli import main as cli_main
from inform_fast.detect import OverOptimizationMonitor, mop
from inform_fast.detect.monitor import read_history


def _latents(n, d=6, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


@pytest.fixture(scope="module")
def reference():
    return _latents(2000, seed=1)


def _run(monitor, shifts, n=400):
    for i, shift in enumerate(shifts):
        monitor.update(i * monitor.every, _latents(n, shift=shift, seed=100 + i))
    return monitor


def test_onset_on_a_drifting_stream(reference):
    # flat (same distribution as the reference) for 8 evaluations, then a jump
    monitor = OverOptimizationMonitor(reference, every=5, method="mop", stop_on_onset=True)
    assert monitor.update(3, _latents(10)) is None  # not due: buffered, no record
    _run(monitor, [0.0] * 8 + [3.0, 3.0])
    assert len(monitor.history) == 10
    assert monitor.onset_step == 40 and monitor.should_stop
    assert "mop jump ratio" in monitor.onset_reason
    flagged = [r["step"] for r in monitor.history if r["onset"]]
    assert flagged[0] == 40
    first = monitor.history[0]
    assert first["mop_jump_ratio"] is None and first["n_latents"] == 410  # the buffered 10 included
    assert monitor.history[1]["mop_jump_ratio"] is None  # no earlier jump yet
    assert 0.0 <= first["mop"] <= 0.05


def test_no_onset_on_a_stationary_stream(reference):
    monitor = OverOptimizationMonitor(reference, every=1, method="mop")
    _run(monitor, [0.0] * 12)
    assert monitor.onset_step is None and not monitor.should_stop
    assert all(not r["onset"] for r in monitor.history)


def test_jump_ratio_rule_by_hand(reference):
    monitor = OverOptimizationMonitor(reference, every=1, method="mop", min_jumps=2)
    monitor.history = [{"step": 0, "mop": 0.10}, {"step": 1, "mop": 0.12}, {"step": 2, "mop": 0.10}]
    # mean earlier move 0.02 is above MOP's noise floor at n = 10,000 (sqrt(0.1 * 0.9 / 1e4) = 0.003)
    assert monitor.jump_ratio("mop", 0.50, n_latents=10_000) == pytest.approx(0.40 / 0.02)
    assert monitor.jump_ratio("mop", 0.06, n_latents=10_000) == pytest.approx(-0.04 / 0.02)  # a fall: negative
    monitor.history = monitor.history[:2]
    assert monitor.jump_ratio("mop", 0.50) is None  # one earlier jump < min_jumps
    # exactly flat history: the default floor is MOP's noise at that level (here one latent, 1 / n)
    monitor.history = [{"step": i, "mop": 0.0, "n_latents": 400} for i in range(3)]
    assert monitor.jump_ratio("mop", 0.0) == 0.0
    assert monitor.jump_ratio("mop", 0.01) == pytest.approx(0.01 / (1 / 400))
    damped = OverOptimizationMonitor(reference, every=1, method="mop", min_jump=0.01)
    damped.history = monitor.history
    assert damped.jump_ratio("mop", 0.05) == pytest.approx(5.0)
    undamped = OverOptimizationMonitor(reference, every=1, method="mop", min_jump=0.0)
    undamped.history = monitor.history
    assert undamped.jump_ratio("mop", 0.01) == float("inf") and undamped.jump_ratio("mop", 0.0) == 0.0


def _with_outliers(n, outliers, d=6):
    """n latents of which ``outliers`` sit far out: MOP is exactly outliers / n."""
    latents = torch.zeros(n, d)
    latents[:outliers] = 50.0
    return latents


def test_onset_rule_fires_on_rises_only(reference):
    # the GRPO run of issue 12: MOP of 16 completions held at 2/16, then fell to 1/16; the old rule
    # divided that fall by min_jump = 1e-12 (a jump ratio of 6.25e10) and would have stopped training
    monitor = OverOptimizationMonitor(reference, every=1, method="mop", stop_on_onset=True)
    for step, outliers in enumerate([2, 2, 2, 1]):
        record = monitor.update(step, _with_outliers(16, outliers))
    assert [r["mop"] for r in monitor.history] == [0.125, 0.125, 0.125, 0.0625]
    assert record["mop_jump_ratio"] < 0 and not record["onset"]
    assert monitor.onset_step is None and not monitor.should_stop
    # the same size of rise does fire once it stands out from the earlier movement
    rising = OverOptimizationMonitor(reference, every=1, method="mop", min_jump=0.001)
    for step, outliers in enumerate([2, 2, 2, 1, 16]):
        rising.update(step, _with_outliers(16, outliers))
    assert rising.onset_step == 4 and "mop jump ratio" in rising.onset_reason


def test_default_floor_keeps_near_zero_baselines_from_exploding(reference):
    # 400 latents with no outlier three times, then one: a single latent's worth (1/400) is noise;
    # eighty of them is an onset
    for outliers, fires in ((1, False), (3, False), (80, True)):
        monitor = OverOptimizationMonitor(reference, every=1, method="mop")
        for step, k in enumerate([0, 0, 0, outliers]):
            record = monitor.update(step, _with_outliers(400, k))
        assert record["mop_jump_floor"] == pytest.approx(1 / 400)
        assert record["mop_jump_ratio"] == pytest.approx(outliers)
        assert record["onset"] is fires, (outliers, record)
    # MOP's floor is its binomial standard error at the previous level
    monitor = OverOptimizationMonitor(reference, every=1, method="mop")
    monitor.history = [{"step": 0, "mop": 0.2, "n_latents": 100}]
    assert monitor.jump_floor("mop", 100) == pytest.approx((0.2 * 0.8 / 100) ** 0.5)
    # ICDS / n: 5% of the reference's median nearest-neighbour distance (all 300 rows sampled here)
    small = reference[:300]
    icds_monitor = OverOptimizationMonitor(small, every=1, method="icds", icds_kwargs={"eps": 0.3})
    nearest = torch.cdist(small.double(), small.double()).fill_diagonal_(float("inf")).min(dim=1).values
    assert icds_monitor.jump_floor("icds_normalized", 100) == pytest.approx(0.05 * float(nearest.median()), rel=1e-5)
    icds_monitor.history = [{"step": i, "icds_normalized": 0.0, "n_latents": 100} for i in range(3)]
    floor = icds_monitor.jump_floor("icds_normalized", 100)
    assert icds_monitor.jump_ratio("icds_normalized", 0.5 * floor) == pytest.approx(0.5)


def test_monitor_arguments_checked_at_construction(reference):
    # issue 13 item 8: typos and NaN fail at construction, naming what is wrong
    with pytest.raises(ValueError, match=r"icds_kwargs: unknown key\(s\) \['epz'\]"):
        OverOptimizationMonitor(reference, method="icds", icds_kwargs={"epz": 0.5})
    with pytest.raises(ValueError, match="icds_kwargs: eps"):
        OverOptimizationMonitor(reference, method="icds", icds_kwargs={"eps": -1.0})
    with pytest.raises(ValueError, match="icds_kwargs: min_samples"):
        OverOptimizationMonitor(reference, method="both", icds_kwargs={"min_samples": 0})
    with pytest.raises(ValueError, match=r"mop_kwargs: unknown key\(s\) \['shrinkge'\]"):
        OverOptimizationMonitor(reference, method="both", mop_kwargs={"shrinkge": 0.1})
    with pytest.raises(ValueError, match="icds_kwargs: given but method 'mop'"):
        OverOptimizationMonitor(reference, method="mop", icds_kwargs={"eps": 0.5})
    with pytest.raises(ValueError, match="score_threshold"):
        OverOptimizationMonitor(reference, method="mop", score_threshold=float("nan"))
    with pytest.raises(ValueError, match="score_threshold"):
        OverOptimizationMonitor(reference, method="mop", score_threshold={"mop": float("nan")})
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="min_jump"):
            OverOptimizationMonitor(reference, method="mop", min_jump=bad)
    with pytest.raises(ValueError, match="method"):
        OverOptimizationMonitor(reference, method=["mop", "knn"])
    assert list(OverOptimizationMonitor(reference, method=["mop"]).methods) == ["mop"]


def test_max_buffer_keeps_at_most_that_many_rows(reference):
    monitor = OverOptimizationMonitor(reference, every=10, method="mop", max_buffer=10)
    batches = [_latents(4, seed=s) for s in range(3)]
    for step, batch in enumerate(batches, start=1):
        monitor.add(batch)
        assert monitor._buffered == sum(b.shape[0] for b in monitor._buffer) <= 10
    kept = torch.cat(monitor._buffer)
    torch.testing.assert_close(kept, torch.cat(batches)[-10:])  # the newest rows
    record = monitor.update(10)
    assert record["n_latents"] == 10


def test_score_threshold(reference):
    monitor = OverOptimizationMonitor(reference, every=1, method="mop", score_threshold=0.5, onset_threshold=1e9)
    _run(monitor, [0.0, 0.0, 5.0])
    assert monitor.onset_step == 2 and "threshold" in monitor.onset_reason
    assert not monitor.should_stop  # stop_on_onset is off


def test_save_plot_and_report(reference, tmp_path):
    monitor = _run(OverOptimizationMonitor(reference, every=2, method="mop"), [0.0] * 5 + [4.0])
    path = str(tmp_path / "monitor.json")
    monitor.save(path)
    data = read_history(path)
    assert data["onset_step"] == monitor.onset_step == 10
    assert [r["step"] for r in data["history"]] == [0, 2, 4, 6, 8, 10]
    assert data["config"]["method"] == "mop" and data["config"]["latent_dim"] == 6
    png = str(tmp_path / "curves.png")
    monitor.plot(png)
    with open(png, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    out = str(tmp_path / "report.png")
    assert cli_main(["report", "--history", path, "--out", out]) == 0
    assert os.path.getsize(out) > 1000
    # a bad history: clean error, nothing written
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    missing = str(tmp_path / "never.png")
    assert cli_main(["report", "--history", str(bad), "--out", missing]) == 2
    assert not os.path.exists(missing)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []


def test_monitor_bad_input(reference):
    with pytest.raises(ValueError, match="method"):
        OverOptimizationMonitor(reference, method="tsne")
    with pytest.raises(ValueError, match="every"):
        OverOptimizationMonitor(reference, every=0)
    with pytest.raises(ValueError, match="onset_threshold"):
        OverOptimizationMonitor(reference, method="mop", onset_threshold=0)
    with pytest.raises(ValueError, match="mop_kwargs"):
        OverOptimizationMonitor(reference, method="mop", mop_kwargs={"alhpa": 0.1})
    with pytest.raises(ValueError, match="alpha"):
        OverOptimizationMonitor(reference, method="mop", mop_kwargs={"alpha": 1.5})
    with pytest.raises(ValueError, match="reference_latents.*shrinkage"):
        OverOptimizationMonitor(reference[:3], method="mop", mop_kwargs={"pvalues": "chi2"})
    with pytest.raises(ValueError, match="mop_kwargs: reference_latents.*empirical p-values fit on 1 of the 3"):
        OverOptimizationMonitor(reference[:3], method="mop")
    with pytest.raises(ValueError, match=r"kop_kwargs: alpha: 0.01 is below the smallest empirical p-value 1/\(1 \+ 50\)"):
        OverOptimizationMonitor(reference[:100], method="kop")
    with pytest.raises(ValueError, match="mop_kwargs: pvalues"):
        OverOptimizationMonitor(reference, method="mop", mop_kwargs={"pvalues": "gauss"})
    with pytest.raises(ValueError, match=r"kop_kwargs: unknown key\(s\) \['kk'\]"):
        OverOptimizationMonitor(reference, method="kop", kop_kwargs={"kk": 3})
    with pytest.raises(ValueError, match="excess_icds_kwargs: level"):
        OverOptimizationMonitor(reference, method="excess_icds", excess_icds_kwargs={"level": 2.0})
    monitor = OverOptimizationMonitor(reference, method="mop", every=1)
    with pytest.raises(ValueError, match="latents: latent dimension"):
        monitor.update(0, torch.zeros(5, 7))
    with pytest.raises(ValueError, match="latents: none given"):
        monitor.update(1)
    with pytest.raises(ValueError, match="step"):
        monitor.update(-1, reference)


def test_trl_log_metric_hook(reference):
    logged = []
    monitor = OverOptimizationMonitor(reference, every=2, method="mop")
    assert monitor.log_metrics(lambda name, value: logged.append((name, value)), 1, _latents(50)) is None
    record = monitor.log_metrics(lambda name, value: logged.append((name, value)), 2, _latents(50))
    assert dict(logged) == {"inform/mop": record["mop"], "inform/mop_shift": record["mop_shift"],
                            "inform/mop_shift_z": record["mop_shift_z"], "inform/onset": 0.0}


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_trainer_callback_logs_and_stops(reference):
    from transformers import TrainerControl, TrainerState

    monitor = OverOptimizationMonitor(reference, every=1, method="mop", stop_on_onset=True)
    shifts = [0.0] * 6 + [4.0]
    from inform_fast.integrations.monitor_callback import OverOptimizationCallback

    callback = OverOptimizationCallback(monitor, lambda step: _latents(300, shift=shifts[step - 1], seed=step))
    state, control = TrainerState(), TrainerControl()
    for step in range(1, 8):  # what a Trainer does at each step: on_step_end, then its log if asked
        state.global_step = step
        control = callback.on_step_end(None, state, control)
        assert control.should_log
        logs = {"loss": 1.0 / step}
        state.log_history.append({**logs, "step": step})
        callback.on_log(None, state, control, logs=logs)
        assert "inform/mop" in logs and "inform/mop" in state.log_history[-1]
        if control.should_training_stop:
            break
    assert step == 7 and monitor.onset_step == 7
    assert [entry["step"] for entry in state.log_history] == list(range(1, 8))
    assert all("loss" in entry for entry in state.log_history)


@pytest.mark.skipif(importlib.util.find_spec("inform_fast.detect.icds") is None, reason="inform_fast.detect.icds not written yet")
def test_icds_and_both(reference):
    monitor = OverOptimizationMonitor(reference, every=1, method="both", icds_kwargs={"eps": 1.5, "min_samples": 5})
    record = monitor.update(0, _latents(300, seed=3))
    assert {"icds", "icds_normalized", "mop"} <= set(record)
    from inform_fast.detect.icds import icds

    expected = icds(_latents(300, seed=3), reference, eps=1.5, min_samples=5)
    assert record["icds"] == pytest.approx(expected.score)
    assert record["icds_normalized"] == pytest.approx(expected.normalized_score)


def _write_latents(tmp_path):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(500, 5)).astype(np.float32)
    rlhf = np.concatenate([rng.normal(size=(80, 5)), rng.normal(size=(20, 5)) + 5]).astype(np.float32)
    np.save(tmp_path / "ref.npy", reference)
    from safetensors.numpy import save_file

    save_file({"mu": rlhf, "other": rlhf[:, :2].copy()}, str(tmp_path / "rlhf.safetensors"))
    torch.save({"latents": torch.from_numpy(rlhf)}, tmp_path / "rlhf.pt")
    return reference, rlhf


def test_cli_mop_end_to_end(tmp_path, capsys):
    reference, rlhf = _write_latents(tmp_path)
    out = str(tmp_path / "result.json")
    code = cli_main(["mop", "--rlhf", str(tmp_path / "rlhf.safetensors"), "--reference", str(tmp_path / "ref.npy"),
                     "--alpha", "0.05", "--shrinkage", "ledoit_wolf", "--output", out, "--per-point"])
    assert code == 0
    assert "MOP =" in capsys.readouterr().out
    with open(out) as handle:
        result = json.load(handle)
    expected = mop(rlhf, reference, alpha=0.05, shrinkage="ledoit_wolf")
    assert result["mop"] == pytest.approx(expected.score) and result["n_rlhf"] == 100
    assert len(result["pvalues"]) == 100
    np.testing.assert_allclose(result["pvalues"], expected.pvalues.numpy(), rtol=1e-6)
    # .pt with its "latents" key works the same
    assert cli_main(["mop", "--rlhf", str(tmp_path / "rlhf.pt"), "--reference", str(tmp_path / "ref.npy"), "--alpha", "0.05",
                     "--shrinkage", "ledoit_wolf"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rlhf", "{tmp}/missing.npy"], "--rlhf: file not found"),
        (["--rlhf", "{tmp}/garbage.npy"], "inform-fast mop: error:"),
        (["--rlhf", "{tmp}/rlhf.safetensors", "--key", "nope"], "key 'nope'"),
        (["--rlhf", "{tmp}/rlhf.safetensors", "--key", "other"], "dimension"),
        (["--rlhf", "{tmp}/rlhf.safetensors", "--alpha", "0"], "alpha"),
        (["--rlhf", "{tmp}/rlhf.safetensors", "--shrinkage", "oas"], "shrinkage"),
        (["--rlhf", "{tmp}/rlhf.safetensors", "--reference", "{tmp}/tiny.npy"], "empirical p-values fit on 1 of the 3 reference latents"),
    ],
)
def test_cli_mop_bad_input_writes_nothing(tmp_path, capsys, extra, message):
    _write_latents(tmp_path)
    (tmp_path / "garbage.npy").write_bytes(b"not an array")
    np.save(tmp_path / "tiny.npy", np.ones((3, 5), np.float32))
    args = {"--reference": str(tmp_path / "ref.npy")}
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    out = str(tmp_path / "result.json")
    argv = ["mop", "--output", out] + [x for kv in args.items() for x in kv]
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(out)


def test_collapsed_reference_latent_is_reported():
    from inform_fast.detect import MahalanobisScorer

    generator = torch.Generator().manual_seed(5)
    direction = torch.randn(12, generator=generator)
    direction /= direction.norm()
    collapsed = torch.randn(3000, 1, generator=generator) * 2.0 * direction + 1e-3 * torch.randn(3000, 12, generator=generator)
    spectrum = MahalanobisScorer(shrinkage="ledoit_wolf").fit(collapsed).spectrum()
    expected = np.sort(np.linalg.eigvalsh(np.cov(collapsed.double().numpy().T, bias=True)))[::-1]
    np.testing.assert_allclose(spectrum["eigenvalues"].numpy(), expected, rtol=1e-7, atol=1e-12)
    assert spectrum["participation_ratio"] == pytest.approx(1.0, abs=1e-3) and spectrum["top_share"] > 0.99
    with pytest.warns(UserWarning, match="about 1.0 of their 12 directions"):
        monitor = OverOptimizationMonitor(collapsed, method="mop")
    assert monitor.to_dict()["config"]["reference_spectrum"]["participation_ratio"] == pytest.approx(1.0, abs=1e-3)

    spread = torch.randn(3000, 12, generator=generator)
    assert MahalanobisScorer().fit(spread).spectrum()["participation_ratio"] == pytest.approx(12, rel=0.05)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy latent: no warning
        assert OverOptimizationMonitor(spread, method="both").reference_spectrum["participation_ratio"] > 11
    assert OverOptimizationMonitor(spread, method="icds").reference_spectrum is None  # no fit, no spectrum
    with pytest.raises(ValueError, match="no reference latents"):
        MahalanobisScorer().spectrum()


def test_calibrated_methods_stationary_then_a_repeated_hack(reference):
    # the default methods: KOP (with its rank shift) and excess ICDS
    monitor = OverOptimizationMonitor(reference, every=1, score_threshold={"kop_shift_z": 3.0})
    assert list(monitor.methods) == ["kop", "excess_icds"] and monitor.watched == ("kop", "excess_fraction")
    assert set(monitor.hook_keys) >= {"kop", "kop_shift", "kop_shift_z", "excess_icds", "excess_icds_normalized", "excess_fraction"}
    for step in range(6):
        monitor.update(step, _latents(400, seed=200 + step))
    clean = monitor.history
    assert monitor.onset_step is None
    assert all(r["excess_icds"] == 0.0 and abs(r["kop_shift"] - 0.5) < 0.06 and r["kop"] <= 0.03 for r in clean)
    # a fifth of the responses go to one ordinary place: no outliers, but over-represented
    hacked = _latents(400, seed=300)
    hacked[:80] = reference[5] + 0.01 * _latents(80, seed=301)
    record = monitor.update(6, hacked)
    assert record["excess_fraction"] >= 0.15 and record["excess_icds_normalized"] > 0
    assert monitor.onset_step == 6 and "excess_fraction jump ratio" in monitor.onset_reason
    # a shift of everything: the rank shift's z crosses its threshold
    shifted = OverOptimizationMonitor(reference, every=1, method="kop", score_threshold={"kop_shift_z": 3.0})
    shifted.update(0, _latents(400, seed=400))
    record = shifted.update(1, _latents(400, shift=0.4, seed=401))
    assert record["kop_shift"] > 0.54 and record["kop_shift_z"] > 3 and shifted.onset_step == 1 and "kop_shift_z" in shifted.onset_reason


def test_saved_history_is_strict_json(reference, tmp_path):
    # min_jump=0 after a flat history gives an infinite jump ratio; the file must still be JSON
    monitor = OverOptimizationMonitor(reference, every=1, method="mop", min_jump=0.0, mop_kwargs={"pvalues": "chi2"})
    for step in range(3):
        monitor.update(step, _latents(50, seed=7))  # the same latents: flat, then still flat
    monitor.update(3, _latents(50, shift=5.0, seed=8))
    path = tmp_path / "history.json"
    monitor.save(str(path))
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert read_history(str(path))["history"][-1]["mop_jump_ratio"] is None
