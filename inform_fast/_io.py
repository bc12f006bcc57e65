"""Atomic file output: nothing is ever left half-written.

``atomic_path(path)`` yields a temporary file beside ``path`` (same folder, so the final
``os.replace`` is atomic); when the block finishes, the file takes ``path``'s place with the usual
permissions, and when it raises, the temporary file is removed and ``path`` is untouched.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def process_umask() -> int:
    """The process umask, read from /proc without changing it: ``os.umask`` can only be read by
    setting it, which for a moment changes it for every thread (files another thread creates in
    that moment would get the wrong permissions). 0o022 where /proc does not say."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _default_mode() -> int:
    return 0o666 & ~process_umask()  # mkstemp makes 0600 files; give what open() would have given


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, name: str = "path") -> Iterator[str]:
    """Yield a temporary path to write; it replaces ``path`` only if the block succeeds.

    The temporary name keeps ``path``'s extension (writers such as ``np.save`` look at it).
    ``name`` is the argument named in the error when the folder does not exist.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{name}: folder does not exist: {directory}")
    base = os.path.basename(path)
    fd, temp = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=os.path.splitext(base)[1], dir=directory)
    os.close(fd)
    try:
        yield temp
        os.chmod(temp, _default_mode())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def write_text_atomic(path: str | os.PathLike, text: str, name: str = "path") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path, name) as temp:
        with open(temp, "w") as handle:
            handle.write(text)
