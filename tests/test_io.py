"""Atomic output: a failed write leaves the old file untouched and no temporary behind."""
import os
import stat

import pytest

from inform_fast._io import atomic_path, write_text_atomic


def test_success_replaces_with_usual_permissions(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


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


def test_missing_folder_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="--output: folder does not exist"):
        write_text_atomic(tmp_path / "no" / "x.json", "{}", name="--output")
