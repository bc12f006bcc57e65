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
    assert monitor.jump_ratio("mop", 0.50) == pytest.approx(0.40 / 0.02)
    monitor.history = monitor.history[:2]
    assert monitor.jump_ratio("mop", 0.50) is None  # one earlier jump < min_jumps
    # exactly flat history: the floor min_jump makes any change an onset, no change none
    monitor.history = [{"step": i, "mop": 0.0} for i in range(3)]
    assert monitor.jump_ratio("mop", 0.0) == 0.0
    assert monitor.jump_ratio("mop", 0.01) > 1e9
    damped = OverOptimizationMonitor(reference, every=1, method="mop", min_jump=0.01)
    damped.history = monitor.history
    assert damped.jump_ratio("mop", 0.05) == pytest.approx(5.0)


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
        OverOptimizationMonitor(reference[:3], method="mop")
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
    assert dict(logged) == {"inform/mop": record["mop"], "inform/onset": 0.0}


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_trainer_callback_logs_and_stops(reference):
    from transformers import TrainerControl, TrainerState

    monitor = OverOptimizationMonitor(reference, every=1, method="mop", stop_on_onset=True)
    shifts = [0.0] * 6 + [4.0]
    callback = monitor.trainer_callback(lambda step: _latents(300, shift=shifts[step - 1], seed=step))
    state, control = TrainerState(), TrainerControl()
    for step in range(1, 8):
        state.global_step = step
        control = callback.on_step_end(None, state, control)
        if control.should_training_stop:
            break
    assert step == 7 and monitor.onset_step == 7
    assert [entry["step"] for entry in state.log_history] == list(range(1, 8))
    assert "inform/mop" in state.log_history[-1]

    class FakeTrainer:
        def __init__(self):
            self.logged, self.callbacks = [], []

        def log(self, logs):
            self.logged.append(logs)

        def add_callback(self, cb):
            self.callbacks.append(cb)

    trainer = FakeTrainer()
    other = OverOptimizationMonitor(reference, every=1, method="mop").trainer_callback(lambda step: _latents(100)).attach(trainer)
    state = TrainerState()
    state.global_step = 1
    other.on_step_end(None, state, TrainerControl())
    assert trainer.callbacks == [other] and "inform/mop" in trainer.logged[0]


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
