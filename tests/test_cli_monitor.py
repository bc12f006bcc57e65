"""``inform-fast monitor``: the overoptimization monitor over saved checkpoint latents."""
import json
import os

import numpy as np
import pytest
import torch

from inform_fast.cli import COMMANDS
from inform_fast.cli import main as cli_main

DIM = 8
STEPS = [0, 200, 400, 600, 800, 1000, 1200, 1400]
JUMP_STEP = 1000  # the policy's latents leave the reference here


def _reference(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(1000, DIM)).astype(np.float32)
    # a second tensor in the file: the default key picks "mu"
    save_file({"mu": reference, "rewards": rng.normal(size=1000).astype(np.float32)}, str(tmp_path / "ref.safetensors"))
    return reference


def _drift(step):
    """Slow drift away from N(0, I) and a jump at JUMP_STEP."""
    i = STEPS.index(step)
    return 0.12 * i + (2.0 if step >= JUMP_STEP else 0.0)


def _write_steps(tmp_path, name="step_{:04d}.npy"):
    folder = tmp_path / "latents"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(2)
    paths = []
    for step in STEPS:
        path = folder / name.format(step)
        np.save(path, (rng.normal(size=(500, DIM)) + _drift(step)).astype(np.float32))
        paths.append(str(path))
    return paths


def _read(out_dir):
    with open(os.path.join(out_dir, "history.json")) as handle:
        return json.load(handle)


def test_registered():
    assert "monitor" in COMMANDS and COMMANDS["monitor"][0] == "inform_fast.cli.monitor"


def test_drift_onset_json_and_png(tmp_path, capsys):
    _reference(tmp_path)
    paths = _write_steps(tmp_path)
    out = tmp_path / "out"
    shuffled = paths[3:] + paths[:3]  # processed in step order whatever the order given
    code = cli_main(["monitor", "--reference", str(tmp_path / "ref.safetensors"), "--rlhf", *shuffled,
                     "--method", "both", "--eps", "2.0", "--out-dir", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    data = _read(out)
    history = data["history"]
    assert [r["step"] for r in history] == STEPS
    assert [os.path.basename(r["file"]) for r in history] == [os.path.basename(p) for p in paths]
    assert all({"icds", "icds_normalized", "mop", "onset"} <= set(r) for r in history)
    assert data["onset_step"] == JUMP_STEP
    assert [r["step"] for r in history if r["onset"]] == [JUMP_STEP]
    assert data["config"]["every"] == 1 and data["config"]["icds_kwargs"]["eps"] == 2.0
    assert data["config"]["latent_dim"] == DIM and data["config"]["n_reference"] == 1000
    with open(out / "history.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    lines = [line for line in stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == len(STEPS)
    assert "ONSET" in lines[STEPS.index(JUMP_STEP)] and "ONSET" not in lines[0]
    assert f"onset: step {JUMP_STEP}" in stdout
    assert sorted(os.listdir(out)) == ["history.json", "history.png"]  # no temporary files left


def test_quoted_glob_and_no_onset(tmp_path, capsys):
    _reference(tmp_path)
    _write_steps(tmp_path)
    out = tmp_path / "out"
    pattern = str(tmp_path / "latents" / "step_*.npy")
    assert cli_main(["monitor", "--reference", str(tmp_path / "ref.safetensors"), "--rlhf", pattern,
                     "--method", "mop", "--out-dir", str(out)]) == 0
    assert [r["step"] for r in _read(out)["history"]] == STEPS
    assert "mop" in _read(out)["history"][0] and "icds" not in _read(out)["history"][0]
    # a score threshold above every MOP value and an onset threshold no jump reaches: no onset
    out2 = tmp_path / "out2"
    assert cli_main(["monitor", "--reference", str(tmp_path / "ref.safetensors"), "--rlhf", pattern, "--method", "mop",
                     "--onset-threshold", "1e6", "--score-threshold", "2", "--out-dir", str(out2)]) == 0
    assert _read(out2)["onset_step"] is None
    assert "no onset" in capsys.readouterr().out


def test_steps_from_the_command_line(tmp_path):
    _reference(tmp_path)
    paths = _write_steps(tmp_path, name="ckpt_{}.npy")
    named = []
    for k, path in enumerate(paths):  # names without numbers: the steps must come from --steps
        target = os.path.join(os.path.dirname(path), f"policy_{'abcdefgh'[k]}.npy")
        os.rename(path, target)
        named.append(target)
    out = tmp_path / "out"
    given = list(reversed(named))
    steps = [str(10 * (len(named) - k)) for k in range(len(named))]  # 80 70 ... 10, paired in order
    assert cli_main(["monitor", "--reference", str(tmp_path / "ref.safetensors"), "--rlhf", *given, "--steps", *steps,
                     "--method", "mop", "--min-jump", "0.001", "--out-dir", str(out)]) == 0
    assert _read(out)["config"]["min_jump"] == 0.001
    history = _read(out)["history"]
    assert [r["step"] for r in history] == [10 * k for k in range(1, len(named) + 1)]
    assert [os.path.basename(r["file"]) for r in history] == [os.path.basename(p) for p in named]
    assert _read(out)["onset_step"] == 10 * (STEPS.index(JUMP_STEP) + 1)


def test_eps_auto_chosen_once_on_the_reference(tmp_path, capsys):
    from inform_fast.detect.icds import auto_eps

    reference = _reference(tmp_path)
    _write_steps(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["monitor", "--reference", str(tmp_path / "ref.safetensors"), "--rlhf",
                     str(tmp_path / "latents" / "*.npy"), "--method", "icds", "--eps", "auto", "--min-samples", "5",
                     "--out-dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    expected = auto_eps(torch.from_numpy(reference), min_samples=5)
    eps_lines = [line for line in stdout.splitlines() if line.startswith("eps auto:")]
    assert len(eps_lines) == 1 and f"{expected:.6g}" in eps_lines[0]
    data = _read(out)
    assert data["config"]["icds_kwargs"]["eps"] == pytest.approx(expected)
    assert "mop" not in data["history"][0]


def _case(tmp_path, case):
    """argv pieces (after --reference) for one bad input, and the text the error must hold."""
    paths = _write_steps(tmp_path)
    folder = tmp_path / "latents"
    if case == "dimension":
        np.save(paths[4], np.zeros((50, DIM - 2), np.float32))
        return ["--rlhf", *paths], [os.path.basename(paths[4]), "--rlhf", "dimension"]
    if case == "dimension_pt":  # .pt has no header to read: checked at load, still nothing written
        torch.save({"mu": torch.zeros(50, DIM - 2)}, folder / "step_1600.pt")
        return ["--rlhf", *paths, str(folder / "step_1600.pt")], ["step_1600.pt", "--rlhf", "dimension"]
    if case == "no_step":
        os.rename(paths[2], folder / "latest.npy")
        return ["--rlhf", *paths[:2], str(folder / "latest.npy"), *paths[3:]], ["--rlhf", "latest.npy", "--steps"]
    if case == "duplicate":
        np.save(folder / "run2_step_200.npy", np.zeros((50, DIM), np.float32))
        return ["--rlhf", *paths, str(folder / "run2_step_200.npy")], ["step 200 given twice", "run2_step_200.npy"]
    if case == "duplicate_steps":
        return ["--rlhf", *paths[:3], "--steps", "0", "5", "5"], ["--steps", "step 5 given twice"]
    if case == "steps_count":
        return ["--rlhf", *paths, "--steps", "0", "1"], ["--steps", f"2 steps given for {len(paths)}"]
    if case == "nan":  # the last step's file: found only after the earlier steps were evaluated
        bad = np.load(paths[-1])
        bad[7, 3] = np.nan
        np.save(paths[-1], bad)
        return ["--rlhf", *paths], ["--rlhf", os.path.basename(paths[-1]), "NaN"]
    if case == "no_match":
        return ["--rlhf", str(folder / "nothing_*.npy")], ["--rlhf", "no file matches"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["dimension", "dimension_pt", "no_step", "duplicate", "duplicate_steps", "steps_count",
                                  "nan", "no_match"])
@pytest.mark.parametrize("existing", [False, True])
def test_bad_input_is_one_error_and_writes_nothing(tmp_path, capsys, case, existing):
    _reference(tmp_path)
    extra, messages = _case(tmp_path, case)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    code = cli_main(["monitor", "--reference", str(tmp_path / "ref.safetensors"), *extra, "--method", "mop",
                     "--out-dir", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("inform-fast monitor: error:") and len(err.strip().splitlines()) == 1, err
    for message in messages:
        assert message in err, (message, err)
    if existing:
        assert os.listdir(out) == []
    else:
        assert not out.exists()


def test_bad_options_name_the_flag(tmp_path, capsys):
    _reference(tmp_path)
    paths = _write_steps(tmp_path)
    base = ["monitor", "--reference", str(tmp_path / "ref.safetensors"), "--rlhf", *paths, "--out-dir", str(tmp_path / "out"), "--method", "both"]
    for extra, message in [(["--eps", "-1"], "--eps"), (["--eps", "big"], "--eps"), (["--alpha", "2"], "--alpha"),
                           (["--shrinkage", "oas"], "--shrinkage"), (["--onset-threshold", "0"], "--onset-threshold"),
                           (["--min-samples", "0"], "--min-samples"), (["--min-jump", "-1"], "--min-jump")]:
        assert cli_main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
