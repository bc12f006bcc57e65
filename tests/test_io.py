"""Atomic output (inform_fast._io): a failed or interrupted write leaves the old file untouched and
no temporary file behind; the process umask is never changed; kill signals are tested on real
subprocesses."""
import json
import math
import os
import pathlib
import signal
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from inform_fast import _io
from inform_fast._io import (
    WriteError,
    atomic_directory,
    atomic_path,
    atomic_paths,
    json_safe,
    process_umask,
    write_json_atomic,
    write_text_atomic,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_success_replaces_with_usual_permissions(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~process_umask()


def test_failure_keeps_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.png"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            assert temp.endswith(".png") and os.path.dirname(temp) == str(tmp_path)
            open(temp, "w").write("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.png"]


def test_missing_folder_and_folder_target_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="--output: folder does not exist"):
        write_text_atomic(tmp_path / "no" / "x.json", "{}", name="--output")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="--output: .* is a folder"):
        write_text_atomic(tmp_path / "d", "{}", name="--output")
    assert os.listdir(tmp_path / "d") == []


def test_the_temporary_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.fspath(a))), real_replace(a, b))[1])
    write_text_atomic(tmp_path / "x.json", "{}")
    (kind_1, temp), (kind_2, renamed) = events[:2]
    assert (kind_1, kind_2) == ("fsync", "replace") and temp == renamed and ".x.json.tmp-" in temp
    assert ("fsync", str(tmp_path)) in events[2:]  # the folder entry too


def test_several_targets_are_replaced_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    a.write_text("old a")
    with pytest.raises(KeyError):
        with atomic_paths([a, b], "--output") as (temp_a, temp_b):
            open(temp_a, "w").write("new a")
            raise KeyError("second writer failed")
    assert a.read_text() == "old a" and not b.exists() and sorted(os.listdir(tmp_path)) == ["a.npy"]
    with atomic_paths([a, b], "--output") as (temp_a, temp_b):
        open(temp_a, "w").write("new a")
        open(temp_b, "w").write("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")


def test_json_is_strict(tmp_path):
    payload = {"a": math.nan, "b": [1.5, math.inf, -math.inf], "c": {"d": 2}}
    assert json_safe(payload) == {"a": None, "b": [1.5, None, None], "c": {"d": 2}}
    write_json_atomic(tmp_path / "x.json", payload)
    text = (tmp_path / "x.json").read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON")) == json_safe(payload)


def test_disk_full_inside_a_wrapped_writer_is_a_write_error(tmp_path):
    # safetensors' Rust writer reports ENOSPC as its own exception type with the reason in the text
    class SafetensorError(Exception):
        pass

    target = tmp_path / "x.safetensors"
    target.write_text("old")
    with pytest.raises(WriteError, match=r"^--output: cannot write .*x\.safetensors: No space left on device") as caught:
        with atomic_path(target, "--output"):
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")
    assert isinstance(caught.value, OSError) and caught.value.errno == 28 and caught.value.argument == "--output"
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.safetensors"]


def test_a_permission_error_on_another_file_is_not_a_write_error(tmp_path):
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "x.json", "--output"):
            raise PermissionError(13, "Permission denied", "/somewhere/else/input.jsonl")


def test_atomic_directory(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_directory(target, "--output-dir") as staging:
            (pathlib.Path(staging) / "weights").write_text("half")
            raise RuntimeError("save failed")
    assert os.listdir(tmp_path) == []
    with atomic_directory(target, "--output-dir") as staging:
        (pathlib.Path(staging) / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~process_umask()
    with pytest.raises(ValueError, match="--output-dir: .* already exists"):
        with atomic_directory(target, "--output-dir"):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(target, "--output-dir", replace=True) as staging:
            (pathlib.Path(staging) / "weights").write_text("v2")
            raise RuntimeError("save failed")
    assert os.listdir(tmp_path) == ["ckpt"] and (target / "weights").read_text() == "v1"
    with atomic_directory(target, "--output-dir", replace=True) as staging:
        (pathlib.Path(staging) / "weights").write_text("v2")
    assert os.listdir(tmp_path) == ["ckpt"] and (target / "weights").read_text() == "v2"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        with atomic_directory(tmp_path / "file", "--output-dir", replace=True):
            pass


# ------------------------------------------------------------------------------------- umask
def _all_writers(folder: pathlib.Path, round_: int) -> None:
    """One write through each writer of the package that does not need a model (the slower ones
    in the first round only)."""
    import torch

    from inform_fast.detect.mahalanobis import MahalanobisScorer
    from inform_fast.detect.monitor import OverOptimizationMonitor

    write_text_atomic(folder / "a.txt", str(round_))
    write_json_atomic(folder / "b.json", {"round": round_})
    if round_ == 0:
        with atomic_directory(folder / "dir") as staging:
            (pathlib.Path(staging) / "x").write_text("x")
        reference = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        MahalanobisScorer().fit(reference).save(str(folder / "scorer.safetensors"))
        monitor = OverOptimizationMonitor(reference, every=1, method="mop", mop_kwargs={"pvalues": "chi2"})
        monitor.update(0, reference[:16])
        monitor.save(str(folder / "history.json"))
        monitor.plot(str(folder / "history.png"))


def test_no_writer_touches_the_process_umask(tmp_path, monkeypatch):
    def forbidden(*args):
        raise AssertionError("os.umask called: it changes the umask of every thread for a moment")

    monkeypatch.setattr(os, "umask", forbidden)
    _all_writers(tmp_path, 0)
    offenders = [str(path.relative_to(REPO)) for folder in ("inform_fast", "kernels")
                 for path in (REPO / folder).rglob("*.py") if "os.umask(" in path.read_text()]
    assert offenders == []


ROUNDS = 400


def test_files_another_thread_creates_during_writes_keep_the_umask(tmp_path):
    """The race of issue 13: while one thread writes outputs, another creates files with open();
    none may come out with permissions the umask forbids (world-writable under umask 022).

    The race needs the other thread inside open() on another core at the moment of a umask flip:
    on the code that flipped it, the loop below found 0 to 2 bad files of about 10,000 on a busy
    2-core machine (the issue's report: 522 of 57,246), so this test shows the guarantee under
    threads rather than catching the flip every time; ``test_no_writer_touches_the_process_umask``
    catches any ``os.umask`` call deterministically."""
    umask = process_umask()
    if not umask & 0o002:
        pytest.skip(f"the process umask {umask:03o} allows world-writable files: nothing to detect")
    outputs, created = tmp_path / "outputs", tmp_path / "created"
    outputs.mkdir()
    created.mkdir()
    stop = threading.Event()
    modes = []

    def create_files():
        count = 0
        while not stop.is_set():
            path = created / f"f{count}"
            with open(path, "w"):
                pass
            modes.append(stat.S_IMODE(path.stat().st_mode))
            path.unlink()
            count += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race needs a switch mid-write
    worker = threading.Thread(target=create_files)
    worker.start()
    try:
        for round_ in range(ROUNDS):
            _all_writers(outputs, round_)
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)
    wrong = [mode for mode in modes if mode != 0o666 & ~umask]
    assert len(modes) > 100 and not wrong, f"{len(wrong)} of {len(modes)} files got modes {sorted(set(map(oct, wrong)))}"


# ------------------------------------------------------------------------------ signals, kill
CHILD = textwrap.dedent("""
    import os, sys, time
    from inform_fast._io import atomic_directory, atomic_path
    kind, target = sys.argv[1], sys.argv[2]
    if kind == "file":
        with atomic_path(target, "--output") as temp:
            with open(temp, "w") as handle:
                handle.write("half of the new")
                handle.flush()
                print("writing", flush=True)
                time.sleep(60)
    else:
        with atomic_directory(target, "--output-dir", replace=True) as staging:
            open(os.path.join(staging, "weights"), "w").write("half of the new")
            print("writing", flush=True)
            time.sleep(60)
""")


def _start_child(kind: str, target: pathlib.Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(target)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout.readline().strip() == "writing", child.stderr.read()
    return child


@pytest.mark.parametrize("kind", ["file", "folder"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_mid_write_leaves_the_previous_output(tmp_path, kind, signum):
    target = tmp_path / ("out.json" if kind == "file" else "ckpt")
    if kind == "file":
        target.write_text("previous")
    else:
        target.mkdir()
        (target / "weights").write_text("previous")
    child = _start_child(kind, target)
    child.send_signal(signum)
    child.wait(timeout=60)
    previous = target.read_text() if kind == "file" else (target / "weights").read_text()
    assert previous == "previous"
    left = sorted(set(os.listdir(tmp_path)) - {target.name})
    if signum == signal.SIGKILL:
        assert child.returncode == -signal.SIGKILL and len(left) == 1 and ".tmp-" in left[0]  # cannot be caught
    elif signum == signal.SIGINT:
        assert child.returncode == -signal.SIGINT and "KeyboardInterrupt" in child.stderr.read() and left == []
    else:  # the default action still ends the process, after the cleanup
        assert child.returncode == -signum and left == []
