"""``inform-fast`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; its one-line description is in ``COMMANDS`` below. Only the chosen
subcommand's module is imported, so ``inform-fast icds`` never imports transformers and
``--help`` is instant.

Errors a user can cause (a bad option, a bad file, a full disk, a missing optional package) are
reported here, in one place, as one line on stderr naming the option, with exit status 2; the
library's own argument names in those messages (``eps:``, ``reference_latents:``,
``overwrite=True``) are turned into the command's options (``--eps:``, ``--reference:``,
``--overwrite``). Ctrl-C exits with 130 and SIGTERM / SIGHUP end the process by that signal, in
both cases after one line and with no output half-written (``inform_fast._io``).
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
from typing import Dict, Optional, Sequence

# subcommand -> (module, one-line description shown by --help)
COMMANDS = {
    "demo": ("inform_fast.cli.demo", "run the built-in overoptimization study (best-of-n, InfoRM vs standard RM, ICDS/MOP) over several seeds"),
    "train": ("inform_fast.cli.train", "train an InfoRM reward model on preference pairs"),
    "score": ("inform_fast.cli.score", "score responses: rewards and latents (mu) to .safetensors/.npy"),
    "export": ("inform_fast.cli.export", "fold a linear-decoder InfoRM model into a stock sequence-classification checkpoint"),
    "icds": ("inform_fast.cli.icds", "integrated cluster deviation score of RLHF latents against reference latents"),
    "mop": ("inform_fast.cli.mop", "Mahalanobis outlier probability of RLHF latents against reference latents"),
    "kop": ("inform_fast.cli.kop", "k-NN outlier proportion of RLHF latents (calibrated p-values) and its rank shift"),
    "plot-latents": ("inform_fast.cli.plot_latents", "PNG map of reference vs RLHF latents, clusters and outliers marked"),
    "report": ("inform_fast.cli.report", "plot a monitor history (ICDS / MOP over steps) to PNG"),
    "monitor": ("inform_fast.cli.monitor", "run the overoptimization monitor over saved checkpoint latents: ICDS/MOP per step, onset, JSON + PNG"),
}

# The library's names of what a command passes on from an option of another name: library name
# -> the options it may come from (the first one the command has).
LIBRARY_NAMES = {
    "rlhf_latents": ("rlhf",),
    "reference_latents": ("reference",),
    "output_dir": ("output",),
    "model_dir": ("model",),
    "path": ("output", "out"),
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the usage is in ``--help``), exit status 2,
    and whose ``type=float`` options refuse NaN and Inf."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("type", float, finite_float)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<14}{description}" for name, (_, description) in COMMANDS.items())
    parser = OneLineParser(
        prog="inform-fast",
        description="InfoRM reward models and reward-hacking detection.",
        epilog=f"commands:\n{lines}\n\nRun 'inform-fast COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def _options(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """dest -> action of every long option."""
    return {action.dest: action for action in parser._actions if action.option_strings and action.dest != "help"}


def _action_of(name: str, options: Dict[str, argparse.Action]) -> Optional[argparse.Action]:
    """The option a library argument ``name`` stands for in this command, if any."""
    dest = name.replace("-", "_")
    if dest in options:
        return options[dest]
    for candidate in LIBRARY_NAMES.get(dest, ()):
        if candidate in options:
            return options[candidate]
    return None


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


def user_message(error: BaseException, parser: argparse.ArgumentParser, args=None) -> str:
    """One line for ``error`` in the command's terms: a leading library argument name becomes the
    option (``eps: ...`` -> ``--eps: ...``), Python keywords become options (``shrinkage='x'`` ->
    ``--shrinkage x``, ``overwrite=True`` -> ``--overwrite``); an OSError names the option whose
    path it is about."""
    from inform_fast._io import WriteError, write_errno

    options = _options(parser)
    if isinstance(error, OSError) and not isinstance(error, WriteError) and error.strerror:
        if error.filename is not None:
            text = f"{error.filename}: {error.strerror}"
            option = _path_option(os.fsdecode(error.filename), options, args)
        else:  # a failed write that does not say where (a C library's): the command's output
            text = error.strerror
            option = _output_option(options) if write_errno(error) is not None else None
        if option:
            text = f"{option}: {text}"
    else:
        text = str(error) or type(error).__name__
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())

    # the leading name, or the innermost of a chain of them (``mop_kwargs: alpha: ...``), that is an option
    chain = re.match(r"(?:[A-Za-z_][A-Za-z0-9_]*: )*[A-Za-z_][A-Za-z0-9_]*(?=( \(|:))", text)
    if chain:
        names = chain.group(0).split(": ")
        for index in range(len(names) - 1, -1, -1):
            action = _action_of(names[index], options)
            if action is not None:
                text = _flag(action) + text[chain.end():] if index == len(names) - 1 else \
                    _flag(action) + ": " + ": ".join(names[index + 1:]) + text[chain.end():]
                break

    def keyword(found: re.Match) -> str:
        action = _action_of(found.group(1), options)
        if action is None:
            return found.group(0)
        if isinstance(action, argparse._StoreTrueAction):
            return _flag(action)
        return f"{_flag(action)} {found.group(3)}"

    return re.sub(r"\b([a-z_][a-z0-9_]*)=(['\"]?)([^'\"\s,;)]+)\2", keyword, text)


def _path_option(filename: str, options: Dict[str, argparse.Action], args) -> Optional[str]:
    """The option whose path ``filename`` is, is inside, or is beside (a temporary file)."""
    if args is None:
        return None
    target = os.path.abspath(filename)
    paths = []
    for dest, action in options.items():
        values = getattr(args, dest, None)
        paths += [(os.path.abspath(v), action) for v in (values if isinstance(values, list) else [values])
                  if isinstance(v, str) and v]
    for path, action in paths:  # the path itself or a file inside it first, a file beside it second
        if target == path or target.startswith(path + os.sep):
            return _flag(action)
    for path, action in paths:
        if os.path.dirname(target) == os.path.dirname(path):
            return _flag(action)
    return None


def _output_option(options: Dict[str, argparse.Action]) -> Optional[str]:
    for dest in ("output", "out", "out_dir", "output_dir"):
        if dest in options:
            return _flag(options[dest])
    return None


def check_common_options(args) -> None:
    """Options several commands share, checked before any work: ``--device`` must exist here."""
    device = getattr(args, "device", None)
    if isinstance(device, str) and device != "auto":
        check_device(device)


def check_device(text: str, option: str = "--device") -> None:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{option}: {text!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "has no CUDA" if torch.version.cuda is None else "finds no CUDA device"
            raise ValueError(f"{option}: {text} asked for, but this torch ({torch.__version__}) {build}; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{option}: {text} asked for, but there are {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{option}: mps asked for, but it is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{option}: {text!r} is not supported; use cpu, cuda, cuda:N or mps")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        args = _top_parser().parse_args(argv)
        if args.version:
            from inform_fast import __version__

            print(f"inform-fast {__version__}")
            return 0
        _top_parser().print_help()
        return 0 if not argv else 2
    name = argv[0]
    module_name, description = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = OneLineParser(prog=f"inform-fast {name}", description=description)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return run_command(name, module.run, args, parser)


def _close_progress_bars() -> None:
    """Close the progress bars an error left open (the Trainer's), so that the error line starts
    a line of its own instead of following a half-drawn bar."""
    tqdm_std = sys.modules.get("tqdm.std")
    if tqdm_std is not None:
        for bar in list(getattr(tqdm_std.tqdm, "_instances", ())):
            try:
                bar.close()
            except Exception:  # a bar that cannot redraw must not hide the error
                pass


def run_command(name: str, run, args, parser: argparse.ArgumentParser) -> int:
    """Run one parsed command, turning the errors a user can cause into one line and exit 2."""
    from inform_fast._io import Terminated, signals_as_exceptions
    from inform_fast.validation import MissingDependencyError

    def fail(message: str, status: int) -> int:
        _close_progress_bars()
        print(f"inform-fast {name}: error: {message}", file=sys.stderr)
        return status

    try:
        with signals_as_exceptions():
            try:
                check_common_options(args)
                return int(run(args) or 0)
            except Terminated as stop:
                # one line, then signals_as_exceptions ends the process by the same signal
                _close_progress_bars()
                print(f"inform-fast {name}: stopped by {stop}; nothing was written", file=sys.stderr)
                raise
    except KeyboardInterrupt:
        return fail("interrupted; nothing was written", 130)
    except (ValueError, OSError, MissingDependencyError) as error:
        return fail(user_message(error, parser, args), 2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
