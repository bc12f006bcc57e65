"""Writing outputs so that nothing is ever half-written, and a failed write never costs old data.

Every writer in the package goes through this module:

* ``atomic_paths(paths, name)`` / ``atomic_path(path, name)`` yield temporary files beside the
  targets (same folder, so the final ``os.replace`` is atomic). When the block finishes, each
  temporary file is fsync'ed, given the permissions ``open()`` would have given, and renamed onto
  its target (several targets together: SIGINT/SIGTERM are held back during the renames), then the
  folder is fsync'ed. When the block raises, or SIGINT / SIGTERM / SIGHUP arrive, the temporary
  files are removed and the targets are untouched.
* ``atomic_directory(path, name)`` does the same for a folder (a checkpoint): a staging folder
  beside ``path`` becomes ``path`` at the end.
* A write that fails in the operating system (full disk, quota, read-only or not writable folder)
  raises ``WriteError``, an ``OSError`` whose message is one line naming the argument
  (``--output: cannot write /x/scores.npy: No space left on device; nothing was written ...``).
  Writers that wrap the error of the system in their own (safetensors' Rust writer does) are
  recognised from the chain of causes or the message.
* SIGTERM / SIGHUP with their default action would kill the process inside a write and leave the
  temporary file behind: while a writer is active in the main thread they raise ``Terminated``
  instead, and once the temporary files are gone the signal is delivered again with its default
  action, so the process still ends by that signal. A SIGKILL cannot be caught: it leaves a hidden
  ``.NAME.tmp-*`` file beside the target, never a changed target.

The process umask is read from /proc (``process_umask``), never set: ``os.umask`` can only be read
by setting it, which changes it for every thread for a moment.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from typing import Iterator, List, Optional, Sequence

# The operating system's reasons a write fails that are the user's environment, not a bug.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
# Wrapped errors (safetensors' Rust writer, some C extensions) keep only the text of the reason.
_REASON_TEXT = {
    "No space left on device": errno.ENOSPC,
    "StorageFull": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "File too large": errno.EFBIG,
    "Read-only file system": errno.EROFS,
    "ReadOnlyFilesystem": errno.EROFS,
    "Permission denied": errno.EACCES,
    "PermissionDenied": errno.EACCES,
}
_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "the folder is not writable",
    errno.EPERM: "the folder is not writable",
}
_CATCHABLE_STOPS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_HELD_BACK = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while a writer was active (a BaseException, like KeyboardInterrupt,
    so that ``except Exception`` blocks do not swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


class WriteError(OSError):
    """An output could not be written for a reason of the environment (full disk, read-only or
    not writable folder). Nothing was written and a previous file at the target is unchanged.
    ``argument`` is the name the caller gave (e.g. "--output"); ``str()`` is one line."""

    def __init__(self, argument: str, path: str, error_number: int, reason: str):
        super().__init__(error_number, reason, path)
        self.argument = argument

    def __str__(self) -> str:
        hint = _HINTS.get(self.errno)
        because = f" ({hint})" if hint else ""
        return (f"{self.argument}: cannot write {self.filename}: {self.strerror}{because}; nothing was written "
                f"and what was there before is unchanged")


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


def file_mode() -> int:
    """The permissions ``open(path, "w")`` gives a new file (mkstemp makes 0600 files)."""
    return 0o666 & ~process_umask()


def folder_mode() -> int:
    """The permissions ``os.mkdir`` gives a new folder (mkdtemp makes 0700 folders)."""
    return 0o777 & ~process_umask()


# --------------------------------------------------------------------------------- signals
def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Inside the block (main thread only), SIGTERM / SIGHUP whose action is the default raise
    ``Terminated``, so ``finally`` blocks run and temporary files are removed. When ``Terminated``
    leaves the block that installed the handlers, the handlers are restored and the signal is sent
    again: the process ends by it, as it would have without this block. Signals with a handler of
    their own (a trainer's, the user's) are left alone; nested blocks change nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = {}
    for signum in _CATCHABLE_STOPS:
        if signal.getsignal(signum) == signal.SIG_DFL:
            installed[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    except Terminated as stop:
        if stop.signum not in installed:
            raise
        for signum, previous in installed.items():
            signal.signal(signum, previous)
        installed = {}
        os.kill(os.getpid(), stop.signum)
        raise  # only reached if the default action did not end the process
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)


@contextlib.contextmanager
def signals_held_back() -> Iterator[None]:
    """Hold SIGINT / SIGTERM / SIGHUP back for the block (delivered when it ends), so that a
    sequence of renames is done whole."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_BACK)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --------------------------------------------------------------------------------- errors
def write_errno(error: BaseException) -> Optional[int]:
    """The errno of the environment behind a failed write (full disk, read-only folder, ...),
    found in ``error``, its causes, or their messages; None if the failure is something else."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
            return error.errno
        text = str(error)
        for reason, number in _REASON_TEXT.items():
            if reason in text:
                return number
        error = error.__cause__ or error.__context__
    return None


def _as_write_error(error: BaseException, name: str, path: str, temps: Sequence[str] = ()) -> Optional[WriteError]:
    """``error`` as a WriteError naming ``name`` and ``path``, or None if it is not a failed write.
    A WriteError of a writer nested in the block (its target one of ``temps``) is named anew."""
    if isinstance(error, WriteError):
        if error.filename in temps:
            return WriteError(name, path, error.errno, error.strerror)
        return None
    if not isinstance(error, Exception):
        return None
    number = write_errno(error)
    if number is None:
        return None
    if number in (errno.EACCES, errno.EPERM, errno.EIO) and isinstance(error, OSError) and error.filename:
        # a permission error on some other file (an input read inside the block) is not ours
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.abspath(os.fsdecode(error.filename)).startswith(folder):
            return None
    return WriteError(name, path, number, os.strerror(number))


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync(path: str) -> None:
    """Flush a file's or a folder's data to the disk (a folder: its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(path: str) -> None:
    try:
        _fsync(path)
    except OSError:  # some file systems cannot fsync a folder; the rename is done either way
        pass


def check_output_path(path: str | os.PathLike, name: str = "path", create_folders: bool = False) -> str:
    """The absolute path of an output file, checked before any work: not a folder, and its folder
    exists (or, with ``create_folders``, can be made: no file on the way). ValueError naming ``name``."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path} is a folder; give a file path")
    if not os.path.isdir(folder):
        if not create_folders:
            raise ValueError(f"{name}: folder does not exist: {folder}")
        existing = folder
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise ValueError(f"{name}: {existing} is a file, so the folder {folder} cannot be made")
    return path



@contextlib.contextmanager
def new_folders(folder: str | os.PathLike, name: str = "path") -> Iterator[None]:
    """Make ``folder`` and its missing parents; if the block fails, remove the ones made here
    again (when still empty)."""
    folder = os.path.abspath(os.fspath(folder))
    missing = []
    probe = folder
    while not os.path.exists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    try:
        for path in reversed(missing):
            os.mkdir(path)
    except OSError as error:
        for path in missing:
            try:
                os.rmdir(path)
            except OSError:
                pass
        wrapped = _as_write_error(error, name, folder)
        if wrapped is not None:
            raise wrapped from error
        raise
    try:
        yield
    except BaseException:
        for path in missing:  # deepest first
            try:
                os.rmdir(path)
            except OSError:
                pass
        raise


# --------------------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike], name: str = "path") -> Iterator[List[str]]:
    """Yield one temporary path per target; they replace the targets, all of them, only if the
    block succeeds (see the module docstring). Temporary names keep the target's extension
    (writers such as ``np.save`` and ``savefig`` look at it). ``name`` is the argument named in
    errors (a missing folder, a target that is a folder, a full disk, a read-only folder)."""
    targets = [check_output_path(path, name) for path in paths]
    temps: List[str] = []
    with signals_as_exceptions():
        try:
            for target in targets:
                base = os.path.basename(target)
                fd, temp = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=os.path.splitext(base)[1],
                                            dir=os.path.dirname(target))
                os.close(fd)
                temps.append(temp)
            yield list(temps)
            mode = file_mode()
            for temp in temps:
                _fsync(temp)
                os.chmod(temp, mode)
            with signals_held_back():
                while temps:
                    os.replace(temps[0], targets[len(targets) - len(temps)])
                    temps.pop(0)
            for folder in sorted({os.path.dirname(target) for target in targets}):
                _fsync_folder(folder)
        except BaseException as error:
            for temp in temps:
                _remove(temp)
            wrapped = _as_write_error(error, name, targets[0] if len(targets) == 1 else ", ".join(targets), temps)
            if wrapped is not None:
                raise wrapped from error
            raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, name: str = "path") -> Iterator[str]:
    """``atomic_paths`` for one target: yield a temporary path that replaces ``path`` only if the
    block succeeds."""
    with atomic_paths([path], name) as (temp,):
        yield temp


def write_text_atomic(path: str | os.PathLike, text: str, name: str = "path") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path, name) as temp:
        with open(temp, "w") as handle:
            handle.write(text)


def json_safe(value):
    """``value`` ready for strict JSON: NumPy scalars and one-element arrays / tensors become Python
    numbers, and every NaN / Inf (also inside lists and dicts) becomes None: JSON has no such
    numbers, and ``json.dumps`` would write ``NaN`` / ``Infinity``, which JSON readers refuse."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    shape = getattr(value, "shape", None)
    if hasattr(value, "item") and shape is not None and math.prod(shape) == 1:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def json_text(payload, indent: int = 1, default=str) -> str:
    """``payload`` as strict JSON text (see ``json_safe``); ``default`` for anything else."""
    return json.dumps(json_safe(payload), indent=indent, allow_nan=False, default=default)


def write_json_atomic(path: str | os.PathLike, payload, name: str = "path", indent: int = 1) -> None:
    """Write ``payload`` as strict JSON (``json_text``) atomically."""
    write_text_atomic(path, json_text(payload, indent), name)


# --------------------------------------------------------------------------------- folders
def _fsync_tree(root: str) -> None:
    for folder, _, files in os.walk(root):
        for file in files:
            _fsync(os.path.join(folder, file))
        _fsync_folder(folder)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, name: str = "path", replace: bool = False) -> Iterator[str]:
    """Yield a new, empty staging folder beside ``path``; it becomes ``path`` only if the block
    succeeds (every file in it fsync'ed first). ``path`` must not exist, unless ``replace``: then
    an existing folder at ``path`` is moved aside, the new one renamed in, and the old one removed
    (deciding that the old folder may go is the caller's business). On any error, SIGINT or
    SIGTERM the staging folder is removed and ``path`` is as it was."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name}: {path} exists and is a file, not a folder")
    if os.path.exists(path) and not replace:
        raise ValueError(f"{name}: {path} already exists; choose a new folder")
    if not os.path.isdir(parent):
        raise ValueError(f"{name}: folder does not exist: {parent}")
    base = os.path.basename(path)
    staging = None
    aside = None
    with signals_as_exceptions():
        try:
            staging = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
            yield staging
            _fsync_tree(staging)
            os.chmod(staging, folder_mode())
            with signals_held_back():
                if os.path.exists(path):
                    aside = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
                    os.replace(path, aside)  # an empty folder is replaced by a rename
                os.replace(staging, path)
                staging = None
            _fsync_folder(parent)
            if aside is not None:
                _remove(aside)
        except BaseException as error:
            if aside is not None and not os.path.exists(path):
                os.replace(aside, path)  # the new folder did not arrive: put the old one back
            if staging is not None:
                _remove(staging)
            wrapped = _as_write_error(error, name, path)
            if wrapped is not None:
                raise wrapped from error
            raise
