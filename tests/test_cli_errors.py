"""The command line under mistakes and faults (issue 13): every error a user can cause is one line
on stderr naming the option, exit status 2, no traceback; a full disk, a read-only folder, SIGTERM
or SIGKILL never leave a half-written output or change the previous one; files the commands write
work with each other.

The case tables (``BAD_INPUTS``, ``WRITERS``, ...) are what ``docs/errors.md`` counts; a test
below checks that its counts match them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from inform_fast.cli import main
from inform_fast.tiny import save_tiny_backbone

pytest.importorskip("inform_fast.modeling", reason="inform_fast.modeling is not available")

REPO = Path(__file__).resolve().parents[1]
DIM = 8
PAIRS = [
    {"prompt": "hello question", "chosen": " good answer", "rejected": " bad answer"},
    {"prompt": "please help", "chosen": " yes great thanks", "rejected": " no"},
] * 4
TRAIN = ["--latent-dim", str(DIM), "--max-steps", "2", "--batch-size", "4", "--max-length", "16"]
PROGRESS = re.compile(r"\d+%\||it/s\]|s/it\]|\d+/\d+ \[")  # tqdm bars (transformers' "Loading weights", ...)


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    backbone = save_tiny_backbone(root / "backbone")
    pairs = write_jsonl(root / "pairs.jsonl", PAIRS)
    responses = write_jsonl(root / "responses.jsonl", [{"prompt": p["prompt"], "response": p["chosen"]} for p in PAIRS])
    assert main(["train", "--model", backbone, "--data", pairs, "--output-dir", str(root / "rm"), *TRAIN]) == 0
    corrupt = root / "rm_corrupt"
    shutil.copytree(root / "rm", corrupt)
    (corrupt / "model.safetensors").write_bytes((root / "rm" / "model.safetensors").read_bytes()[:1000])
    rng = np.random.default_rng(0)
    np.save(root / "ref.npy", rng.normal(size=(300, DIM)).astype(np.float32))
    np.save(root / "rl.npy", rng.normal(size=(100, DIM)).astype(np.float32))
    np.save(root / "complex.npy", rng.normal(size=(100, DIM)).astype(np.complex64) + 1j)
    np.save(root / "duplicates.npy", np.repeat(rng.normal(size=(1, DIM)), 50, axis=0).astype(np.float32))
    assert main(["monitor", "--reference", str(root / "ref.npy"), "--rlhf", str(root / "rl.npy"), "--steps", "1",
                 "--method", "mop", "--out-dir", str(root / "mon")]) == 0
    (root / "folder.npy").mkdir()
    (root / "folder.png").mkdir()
    (root / "folder.json").mkdir()
    (root / "a_file").write_text("not a folder")
    (root / "binary.json").write_bytes(b"\xff\xfe\x00{")
    return SimpleNamespace(root=root, backbone=backbone, pairs=pairs, responses=responses, rm=str(root / "rm"),
                           corrupt=str(corrupt), ref=str(root / "ref.npy"), rl=str(root / "rl.npy"),
                           history=str(root / "mon" / "history.json"), png=str(root / "mon" / "history.png"))


def error_line(err: str, command: str) -> str:
    """The one line of stderr (progress bars aside), checked to be the command's error line."""
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS.search(line)]
    assert len(lines) == 1 and lines[0].startswith(f"inform-fast {command}: error: "), err
    return lines[0]


def run_cli(argv, capsys) -> tuple:
    """(exit status, stderr) of ``inform-fast argv`` in this process; argparse's exit is a status too."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# bad input: one line naming the option, exit 2, nothing written
#
# (id, argv with {placeholders} from the assets and {out} a fresh path, text the line must hold)
BAD_INPUTS = [
    # item 4: the environment
    ("icds --output is a folder", "icds --rlhf {rl} --reference {ref} --output {root}/folder.json", "--output: "),
    ("mop --output is a folder", "mop --rlhf {rl} --reference {ref} --output {root}/folder.json", "--output: "),
    ("score --output is a folder", "score --model {rm} --data {responses} --output {root}/folder.npy", "--output: "),
    ("plot-latents --out is a folder", "plot-latents --rlhf {rl} --reference {ref} --out {root}/folder.png", "--out: "),
    ("report --out is a folder", "report --history {history} --out {root}/folder.png", "--out: "),
    ("monitor --out-dir is a file", "monitor --reference {ref} --rlhf {rl} --steps 1 --out-dir {root}/a_file", "--out-dir: "),
    ("score --device cuda on a CPU build", "score --model {rm} --data {responses} --output {out}.npy --device cuda", "--device: cuda"),
    ("score --device bogus", "score --model {rm} --data {responses} --output {out}.npy --device bogus", "--device: 'bogus'"),
    ("mop --device cuda on a CPU build", "mop --rlhf {rl} --reference {ref} --device cuda", "--device: cuda"),
    ("mop --device bogus", "mop --rlhf {rl} --reference {ref} --device bogus", "--device: 'bogus'"),
    ("demo --device cuda on a CPU build", "demo --device cuda --out {out}", "--device: cuda"),
    ("icds --backend triton on CPU", "icds --rlhf {rl} --reference {ref} --backend triton", "--backend: 'triton'"),
    ("score: a damaged model.safetensors", "score --model {corrupt} --data {responses} --output {out}.npy", "--model: cannot load"),
    ("export: a damaged model.safetensors", "export --model {corrupt} --output {out}", "--model: cannot load"),
    ("train: a damaged model.safetensors", "train --model {corrupt} --data {pairs} --output-dir {out}", "--model: cannot load"),
    ("score: a backbone as --model", "score --model {backbone} --data {responses} --output {out}.npy", "not an InfoRM reward model"),
    ("export: a backbone as --model", "export --model {backbone} --output {out}", "not an InfoRM reward model"),
    ("export --overwrite onto a file", "export --model {rm} --output {root}/a_file --overwrite", "--output: "),
    ("report --history is a PNG", "report --history {png} --out {out}.png", "--history: "),
    ("report --history is not UTF-8", "report --history {root}/binary.json --out {out}.png", "--history: "),
    # item 5: a mistyped --model
    ("train --model ./nodir", "train --model ./nodir --data {pairs} --output-dir {out}", "--model: folder not found"),
    ("score --model nodir", "score --model nodir --data {responses} --output {out}.npy", "--model: folder not found"),
    ("export --model nodir", "export --model nodir --output {out}", "--model: folder not found"),
    ("train --model with spaces", "train --model 'not a model' --data {pairs} --output-dir {out}", "--model: "),
    # item 8: inputs that were accepted
    ("train --lr inf", "train --model {backbone} --data {pairs} --output-dir {out} --lr inf", "--lr: "),
    ("train --lr nan", "train --model {backbone} --data {pairs} --output-dir {out} --lr nan", "--lr: "),
    ("monitor --score-threshold nan", "monitor --reference {ref} --rlhf {rl} --steps 1 --out-dir {out} --score-threshold nan",
     "--score-threshold: "),
    ("mop --alpha nan", "mop --rlhf {rl} --reference {ref} --alpha nan", "--alpha: "),
    ("mop --eps inf", "mop --rlhf {rl} --reference {ref} --eps inf", "--eps: "),
    ("mop: complex latents", "mop --rlhf {root}/complex.npy --reference {ref}", "--rlhf ("),
    ("kop: complex latents", "kop --rlhf {root}/complex.npy --reference {ref}", "--rlhf ("),
    ("kop --device cuda on a CPU build", "kop --rlhf {rl} --reference {ref} --device cuda", "--device: cuda"),
    ("kop --output is a folder", "kop --rlhf {rl} --reference {ref} --output {root}/folder.json", "--output: "),
    ("mop --calibration-fraction 1.5", "mop --rlhf {rl} --reference {ref} --calibration-fraction 1.5", "--calibration-fraction: "),
    ("icds --variant excess --level 2", "icds --rlhf {rl} --reference {ref} --variant excess --level 2", "--level: "),
    ("icds: complex latents", "icds --rlhf {root}/complex.npy --reference {ref}", "--rlhf ("),
    ("monitor: complex latents", "monitor --reference {ref} --rlhf {root}/complex.npy --steps 1 --out-dir {out}", "--rlhf"),
    # (eps auto on identical latents is no longer an error: every copy is core at any eps, and
    # auto_eps says so, rule "identical"; tests/test_icds.py checks the cluster it gives)
    # library argument names in the command's terms
    ("mop: singular reference names --shrinkage", "mop --rlhf {rl} --reference {root}/duplicates.npy",
     "--shrinkage ledoit_wolf"),
    ("icds --eps 0", "icds --rlhf {rl} --reference {ref} --eps 0", "--eps: "),
    ("export onto a non-empty folder names --overwrite", "export --model {rm} --output {root}", "--overwrite"),
    ("export --overwrite onto a foreign folder", "export --model {rm} --output {root} --overwrite", "no earlier export wrote"),
    # the parser: one line, not the usage block
    ("a missing required option", "icds --rlhf {rl}", "--reference"),
    ("a bad choice", "icds --rlhf {rl} --reference {ref} --projection tsne", "--projection"),
    ("an unknown option", "mop --rlhf {rl} --reference {ref} --alpah 0.1", "--alpah"),
    ("a number that is not one", "train --model {backbone} --data {pairs} --output-dir {out} --beta big", "--beta"),
]


@pytest.mark.parametrize("case, argv, expected", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_option(assets, tmp_path, capsys, monkeypatch, case, argv, expected):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the suite's interpreter would let Triton run on CPU
    before = sorted(os.listdir(assets.root))
    out = str(tmp_path / "out")
    words = [word.format(out=out, **vars(assets)) for word in re.findall(r"'[^']*'|\S+", argv)]
    words = [word[1:-1] if word.startswith("'") else word for word in words]
    code, err = run_cli(words, capsys)
    assert code == 2, err
    line = error_line(err, words[0])
    assert expected in line, line
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == [] and sorted(os.listdir(assets.root)) == before  # nothing written


def test_errors_are_one_line_from_the_console_script(assets, tmp_path):
    """The installed entry point, in a process of its own: no warning or traceback around the line."""
    script = shutil.which("inform-fast") or pytest.skip("the inform-fast console script is not on PATH")
    for argv, expected in [(["mop", "--rlhf", str(assets.root / "complex.npy"), "--reference", assets.ref], "--rlhf"),
                           (["icds", "--rlhf", assets.rl], "--reference")]:
        run = subprocess.run([script, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert run.returncode == 2 and expected in error_line(run.stderr, argv[0]), run.stderr


# --------------------------------------------------------------------------------------------
# item 5: no network, no 50 s of retries
def _unreachable_hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_a_hub_id_without_network_fails_at_once(assets, tmp_path, capsys, monkeypatch):
    _unreachable_hub(monkeypatch, tmp_path)
    started = time.perf_counter()
    code, err = run_cli(["train", "--model", "nodir", "--data", assets.pairs, "--output-dir", str(tmp_path / "out")], capsys)
    elapsed = time.perf_counter() - started
    assert code == 2 and elapsed < 10, (elapsed, err)
    line = error_line(err, "train")
    assert "--model: 'nodir'" in line and "cannot be reached" in line and "README" in line


def test_a_cached_hub_id_trains_without_network(assets, tmp_path, capsys, monkeypatch):
    _unreachable_hub(monkeypatch, tmp_path)
    snapshot = tmp_path / "hub-cache" / "models--someone--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(assets.backbone, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code, err = run_cli(["train", "--model", "someone/tiny", "--data", assets.pairs, "--output-dir", str(tmp_path / "rm"),
                         *TRAIN], capsys)
    assert code == 0, err
    assert (tmp_path / "rm" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------
# item 6: what the base install advertises works after it, or names the extra
MISSING_PACKAGES = [
    ("--data x.parquet without pyarrow", ("pyarrow", "pyarrow.parquet"), "parquet", "inform-fast[data]"),
    ("--data a datasets folder without datasets", ("datasets",), "datasets", "inform-fast[data]"),
    ("--trainer trl without trl", ("trl",), "trl", "inform-fast[trl]"),
    ("train without accelerate", ("accelerate",), "jsonl", "pip install accelerate"),
]


@pytest.mark.parametrize("case, blocked, data, expected", MISSING_PACKAGES, ids=[case[0] for case in MISSING_PACKAGES])
def test_a_missing_optional_package_names_the_extra(assets, tmp_path, capsys, monkeypatch, case, blocked, data, expected):
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as when not installed
    path = {"parquet": tmp_path / "pairs.parquet", "datasets": tmp_path / "pairs_folder", "trl": assets.pairs,
            "jsonl": assets.pairs}[data]
    if data == "parquet":
        Path(path).write_bytes(b"PAR1")
    elif data == "datasets":
        Path(path).mkdir()
    argv = ["train", "--model", assets.backbone, "--data", str(path), "--output-dir", str(tmp_path / "rm")]
    code, err = run_cli(argv + (["--trainer", "trl"] if data == "trl" else []), capsys)
    assert code == 2 and expected in error_line(err, "train"), err
    assert not (tmp_path / "rm").exists()


def test_the_base_install_has_what_train_needs_and_no_triton():
    tomllib = pytest.importorskip("tomllib")
    from transformers.dependency_versions_table import deps

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=;\[ ]", requirement)[0]: requirement for requirement in project["dependencies"]}
    floor = deps["accelerate"].split(">=")[1]  # what transformers.Trainer checks at start
    assert "accelerate" in base and base["accelerate"].split(">=")[1] in (floor, floor.rsplit(".", 1)[0])
    assert "triton" not in base  # a CUDA torch brings its own; a CPU machine runs no Triton kernel
    extras = project["optional-dependencies"]
    assert any(r.startswith("triton") for r in extras["test"]) and {"pyarrow", "datasets"} <= {r.split(">")[0] for r in extras["data"]}
    readme = (REPO / "README.md").read_text()
    assert "does not pull Triton" in readme and "[data]" in readme


def test_the_package_and_its_cpu_commands_work_without_triton(assets, tmp_path):
    code = (f"import sys; sys.modules['triton'] = None\n"
            f"from inform_fast.cli import main\n"
            f"sys.exit(main(['icds', '--rlhf', {assets.rl!r}, '--reference', {assets.ref!r}, '--output', {str(tmp_path / 'i.json')!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "i.json").read_text())["n_clusters"] >= 0


# --------------------------------------------------------------------------------------------
# item 7: files the commands write work with each other, and every reader splits lines the same
def test_monitor_takes_score_outputs_as_they_are(assets, tmp_path, capsys):
    folder = tmp_path / "latents"
    for step in (0, 10, 20):
        assert main(["score", "--model", assets.rm, "--data", assets.responses, "--output", str(folder / f"step_{step}.npy")]) == 0
    assert sorted(os.listdir(folder)) == ["step_0.npy", "step_0.rewards.npy", "step_10.npy", "step_10.rewards.npy",
                                          "step_20.npy", "step_20.rewards.npy"]
    capsys.readouterr()
    # the README's command, as a shell expands the glob: the rewards files are matched too
    files = sorted(str(path) for path in folder.glob("step_*.npy"))
    code = main(["monitor", "--reference", str(folder / "step_0.npy"), "--rlhf", *files, "--method", "mop",
                 "--pvalues", "chi2", "--shrinkage", "0.5", "--out-dir", str(tmp_path / "mon")])
    assert code == 0, capsys.readouterr().err
    history = json.loads((tmp_path / "mon" / "history.json").read_text())["history"]
    assert [record["step"] for record in history] == [0, 10, 20]
    assert main(["monitor", "--reference", str(folder / "step_0.npy"), "--rlhf", str(folder / "step_*.npy"),
                 "--method", "mop", "--pvalues", "chi2", "--shrinkage", "0.5", "--out-dir", str(tmp_path / "mon2")]) == 0


LINE_ENDINGS = [
    ("bare \\r line ends", "\r", ""),
    ("\\r\\n line ends", "\r\n", ""),
    ("a line holding only \\x1c", "\n", "\x1c\n"),
    ("a line holding only a no-break space", "\n", "\u00a0\n"),
    ("a byte order mark", "\n", ""),
]


@pytest.mark.parametrize("case, newline, extra_line", LINE_ENDINGS, ids=[case[0] for case in LINE_ENDINGS])
def test_score_reads_every_jsonl_file_train_reads(assets, tmp_path, capsys, case, newline, extra_line):
    from transformers import AutoTokenizer

    from inform_fast import data

    rows = [json.dumps({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"], "response": p["chosen"]})
            for p in PAIRS[:3]]
    text = rows[0] + newline + extra_line + newline.join(rows[1:]) + newline
    path = tmp_path / "rows.jsonl"
    path.write_bytes(("\ufeff" if "order mark" in case else "").encode() + text.encode("utf-8"))
    assert data.count_records(path) == len(list(data.iter_records(path))) == 3
    assert main(["score", "--model", assets.rm, "--data", str(path), "--output", str(tmp_path / "s.npy")]) == 0, capsys.readouterr().err
    assert np.load(tmp_path / "s.npy").shape == (3, DIM)
    # what train reads (its reader, without the training)
    assert len(data.load_preference_data(path, AutoTokenizer.from_pretrained(assets.rm))) == 3


def test_big_endian_npy_files_are_read(assets, tmp_path, capsys):
    reference = np.load(assets.ref)
    np.save(tmp_path / "ref_be.npy", reference.astype(">f4"))
    np.save(tmp_path / "ref_be64.npy", reference.astype(">f8"))
    results = []
    for path in (assets.ref, tmp_path / "ref_be.npy", tmp_path / "ref_be64.npy"):
        assert main(["mop", "--rlhf", assets.rl, "--reference", str(path), "--output", str(tmp_path / "m.json")]) == 0
        results.append(json.loads((tmp_path / "m.json").read_text())["mop"])
        assert main(["icds", "--rlhf", str(path), "--reference", assets.ref, "--eps", "2"]) == 0
    assert results[0] == results[1] == pytest.approx(results[2])


def test_mop_output_is_strict_json_when_distances_overflow(assets, tmp_path):
    np.save(tmp_path / "huge.npy", np.full((10, DIM), 1e30, dtype=np.float32))
    assert main(["mop", "--rlhf", str(tmp_path / "huge.npy"), "--reference", assets.ref, "--output", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert result["mop"] == 1.0 and result["distance_median"] is None


def test_monitor_history_is_strict_json_with_an_infinite_jump(tmp_path, capsys):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "ref.npy", rng.normal(size=(300, DIM)).astype(np.float32))
    files = []
    for step, shift in enumerate([0, 0, 3, 3]):  # MOP 0, 0 (a flat stretch), then a jump: ratio inf with --min-jump 0
        files.append(str(tmp_path / f"step_{step}.npy"))
        np.save(files[-1], (rng.normal(size=(50, DIM)) + shift).astype(np.float32))
    assert main(["monitor", "--reference", str(tmp_path / "ref.npy"), "--rlhf", *files, "--method", "mop", "--min-jump", "0",
                 "--pvalues", "chi2", "--alpha", "1e-6", "--out-dir", str(tmp_path / "mon")]) == 0
    history = json.loads((tmp_path / "mon" / "history.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert history["onset_step"] == 2 and history["history"][2]["mop_jump_ratio"] is None
    assert main(["report", "--history", str(tmp_path / "mon" / "history.json"), "--out", str(tmp_path / "r.png")]) == 0


def test_ctrl_c_is_one_line_exit_130(capsys):
    import argparse

    from inform_fast.cli import run_command

    def interrupted(args):
        raise KeyboardInterrupt

    assert run_command("score", interrupted, argparse.Namespace(), argparse.ArgumentParser()) == 130
    assert error_line(capsys.readouterr().err, "score") == "inform-fast score: error: interrupted; nothing was written"


# --------------------------------------------------------------------------------------------
# item 8: training that diverges saves nothing
def test_training_that_diverges_stops_and_saves_nothing(assets, tmp_path, capsys):
    code, err = run_cli(["train", "--model", assets.backbone, "--data", assets.pairs, "--output-dir", str(tmp_path / "rm"),
                         *TRAIN[:2], "--max-steps", "3", "--batch-size", "4", "--lr", "1e30"], capsys)
    assert code == 2
    line = error_line(err, "train")
    assert "--lr: training" in line and "nothing was saved" in line
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# item 9: what users see
def test_a_single_training_run_prints_its_held_out_result(assets, tmp_path, capsys):
    assert main(["train", "--model", assets.backbone, "--data", assets.pairs, "--eval-data", assets.pairs,
                 "--output-dir", str(tmp_path / "rm"), *TRAIN]) == 0
    out = capsys.readouterr().out
    assert re.search(r"held-out eval_accuracy [0-9.]+, eval_loss [0-9.]+", out), out


def test_the_collapse_note_names_the_option_and_only_without_shrinkage(tmp_path, capsys):
    rng = np.random.default_rng(1)
    collapsed = (np.outer(rng.normal(size=400), rng.normal(size=DIM)) + 1e-3 * rng.normal(size=(400, DIM))).astype(np.float32)
    np.save(tmp_path / "ref.npy", collapsed)
    np.save(tmp_path / "rl.npy", collapsed[:50])
    base = ["monitor", "--reference", str(tmp_path / "ref.npy"), "--rlhf", str(tmp_path / "rl.npy"), "--steps", "1", "--method", "mop"]
    with _no_warning():
        assert main(base + ["--out-dir", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "--shrinkage 0.1" in err and "mop_kwargs" not in err
    with _no_warning():
        assert main(base + ["--out-dir", str(tmp_path / "b"), "--shrinkage", "0.1"]) == 0
    assert "directions" not in capsys.readouterr().err


class _no_warning:
    """No warning may leave the block (the monitor's Python-keyword warning must not reach a user)."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        texts = [str(record.message) for record in self._records if "pin_memory" not in str(record.message)]
        assert not any("directions" in text for text in texts), texts


# --------------------------------------------------------------------------------------------
# faults: a full disk and a read-only folder for every writer of the command line
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test, or a skip saying why it cannot be."""
    if not sys.platform.startswith("linux"):
        pytest.skip("tmpfs is Linux's")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> None:
    """Take every free block of ``disk``."""
    free = os.statvfs(disk)
    fd = os.open(disk / "filler", os.O_CREAT | os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, free.f_bavail * free.f_frsize)
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0


def make_read_only(disk: Path) -> None:
    remount = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {remount.stderr.strip()}")


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
            and path.name != "filler"}


# (id, argv with {d} the disk, {first} whether the argv is run once before the fault to leave a previous output)
WRITERS = [
    ("score .npy", "score --model {rm} --data {responses} --output {d}/s.npy", True),
    ("score .safetensors", "score --model {rm} --data {responses} --output {d}/s.safetensors", True),
    ("icds --output", "icds --rlhf {rl} --reference {ref} --output {d}/i.json", True),
    ("mop --output", "mop --rlhf {rl} --reference {ref} --output {d}/m.json --per-point", True),
    ("plot-latents --out", "plot-latents --rlhf {rl} --reference {ref} --out {d}/p.png", True),
    ("report --out", "report --history {history} --out {d}/r.png", True),
    ("monitor --out-dir", "monitor --reference {ref} --rlhf {rl} --steps 1 --method mop --out-dir {d}/mon", True),
    ("export --overwrite", "export --model {rm} --output {d}/stock --drop-bias --overwrite", True),
    ("train --output-dir", "train --model {backbone} --data {pairs} --output-dir {d}/rm " + " ".join(TRAIN), False),
]


@pytest.mark.parametrize("fault", ["full", "read-only"])
@pytest.mark.parametrize("case, argv, first", WRITERS, ids=[case[0] for case in WRITERS])
def test_a_full_disk_or_read_only_folder_is_one_line_and_keeps_the_previous_output(
        assets, small_disk, capsys, case, argv, first, fault):
    words = argv.format(d=small_disk, **vars(assets)).split()
    if first:
        assert main(words) == 0
    before = snapshot(small_disk)
    capsys.readouterr()
    fill(small_disk) if fault == "full" else make_read_only(small_disk)
    code, err = run_cli(words, capsys)
    assert code == 2
    line = error_line(err, words[0])
    option = next(word for word in words if word in ("--output", "--out", "--out-dir", "--output-dir"))
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    assert line.startswith(f"inform-fast {words[0]}: error: {option}: cannot write") and reason in line, line
    assert snapshot(small_disk) == before  # the previous output untouched, no temporary file left
    assert sorted(p.name for p in small_disk.iterdir() if p.name != "filler") == sorted(
        {name.split(os.sep)[0] for name in before})


def test_score_on_a_nearly_full_disk_fails_before_scoring(assets, small_disk, tmp_path):
    """Room for the headers but not the data: the memory map used to die with SIGBUS (exit 135)
    half-way, leaving a hidden file that looked valid; now the space is reserved first. A process
    of its own, so that a SIGBUS would fail this test rather than end the test run."""
    rows = tmp_path / "many.jsonl"
    write_jsonl(rows, [{"response": " good answer yes"}] * 20_000)  # 720 KB of output
    (small_disk / "s.safetensors").write_bytes(b"previous")
    free = os.statvfs(small_disk)
    fd = os.open(small_disk / "filler", os.O_CREAT | os.O_WRONLY)
    os.posix_fallocate(fd, 0, free.f_bavail * free.f_frsize - 64 * 1024)  # leave 64 KB
    os.close(fd)
    run = subprocess.run([sys.executable, "-m", "inform_fast", "score", "--model", assets.rm, "--data", str(rows),
                          "--output", str(small_disk / "s.safetensors"), "--batch-size", "256"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "--output: cannot write" in error_line(run.stderr, "score") and "scoring" not in run.stderr
    assert sorted(os.listdir(small_disk)) == ["filler", "s.safetensors"]
    assert (small_disk / "s.safetensors").read_bytes() == b"previous"


def test_library_writers_on_a_full_disk_raise_a_write_error(small_disk):
    import torch

    from inform_fast._io import WriteError
    from inform_fast.detect.mahalanobis import MahalanobisScorer
    from inform_fast.detect.monitor import OverOptimizationMonitor

    reference = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    scorer = MahalanobisScorer().fit(reference)
    monitor = OverOptimizationMonitor(reference, every=1, method="mop", mop_kwargs={"pvalues": "chi2"})
    monitor.update(0, reference[:16])
    scorer.save(str(small_disk / "scorer.safetensors"))
    monitor.save(str(small_disk / "history.json"))
    before = snapshot(small_disk)
    fill(small_disk)
    for write in (lambda: scorer.save(str(small_disk / "scorer.safetensors")),
                  lambda: monitor.save(str(small_disk / "history.json")),
                  lambda: monitor.plot(str(small_disk / "history.png"))):
        with pytest.raises(WriteError, match="No space left on device"):
            write()
    assert snapshot(small_disk) == before


# --------------------------------------------------------------------------------------------
# faults: SIGTERM in the middle of `inform-fast score`, SIGKILL in the middle of its writes
def test_score_terminated_mid_write_keeps_the_previous_output(assets, tmp_path):
    rows = tmp_path / "many.jsonl"
    write_jsonl(rows, [{"response": " good answer yes great thanks"}] * 20_000)
    output = tmp_path / "out" / "scores.npy"
    output.parent.mkdir()
    assert main(["score", "--model", assets.rm, "--data", assets.responses, "--output", str(output)]) == 0
    before = snapshot(output.parent)
    child = subprocess.Popen([sys.executable, "-m", "inform_fast", "score", "--model", assets.rm, "--data", str(rows),
                              "--output", str(output), "--batch-size", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not any(".tmp-" in name for name in os.listdir(output.parent)):  # scoring has begun
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGTERM, err  # ended by the signal, after the cleanup
    assert "inform-fast score: stopped by SIGTERM; nothing was written" in err
    assert snapshot(output.parent) == before  # the previous output unchanged, no temporary file left


KILLED_WRITER = """
import sys, time
from inform_fast._io import atomic_paths
from inform_fast.cli.score import open_outputs, output_paths
with atomic_paths(output_paths(sys.argv[1]), "--output") as temps:
    files, rewards, mu = open_outputs(temps, 1000, 8)
    rewards[:500], mu[:500] = 1.0, 1.0
    print("writing", flush=True)
    time.sleep(60)
"""
KILLS = [".npy", ".safetensors"]


@pytest.mark.parametrize("suffix", KILLS)
def test_score_output_killed_mid_write_is_no_loadable_file(tmp_path, suffix):
    """SIGKILL cannot be caught: the temporary files stay, hidden, and are not loadable (their
    headers are written last), and the previous output is unchanged."""
    from safetensors.numpy import load_file

    output = tmp_path / f"scores{suffix}"
    output.write_bytes(b"previous")
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(output)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout.readline().strip() == "writing", child.stderr.read()
    child.kill()
    child.wait(timeout=60)
    assert output.read_bytes() == b"previous"
    left = sorted(set(os.listdir(tmp_path)) - {output.name})
    assert len(left) == (2 if suffix == ".npy" else 1) and all(name.startswith(".scores.") and ".tmp-" in name for name in left)
    for name in left:
        with pytest.raises(Exception):
            np.load(tmp_path / name) if suffix == ".npy" else load_file(str(tmp_path / name))


# --------------------------------------------------------------------------------------------
def test_docs_errors_counts_match_the_tests():
    """docs/errors.md's table counts what this file (and tests/test_io.py) try."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("io_tests", REPO / "tests" / "test_io.py")
    io_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(io_tests)
    expected = {
        "bad inputs and environment errors (one line, exit 2)": len(BAD_INPUTS),
        "missing optional packages (the message names the extra)": len(MISSING_PACKAGES),
        "JSONL line endings and blank lines (score reads what train reads)": len(LINE_ENDINGS),
        "full disk, per writer (tmpfs)": len(WRITERS),
        "read-only folder, per writer (tmpfs)": len(WRITERS),
        "SIGTERM during `inform-fast score` (real process)": 1,
        "SIGKILL during score's writes, .npy and .safetensors (real process)": len(KILLS),
        "signals during a file or folder write (real process)": _cases(io_tests.test_a_signal_mid_write_leaves_the_previous_output),
        "library writers on a full disk (tmpfs)": 3,
        "`score` on a nearly full disk (real process; it died with SIGBUS)": 1,
    }
    table = dict(re.findall(r"^\| ([^|]+?) \| (\d+) \|", (REPO / "docs" / "errors.md").read_text(), flags=re.M))
    assert {key: int(value) for key, value in table.items() if key in expected} == expected


def _cases(test) -> int:
    """How many cases the parametrize marks of ``test`` make."""
    count = 1
    for mark in getattr(test, "pytestmark", []):
        if mark.name == "parametrize":
            count *= len(mark.args[1])
    return count