"""``inform-fast`` command line.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Only the chosen subcommand's module is imported, so ``inform-fast icds``
never imports transformers and ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# subcommand -> (module, one-line description shown by --help)
COMMANDS = {
    "demo": ("inform_fast.cli.demo", "run the built-in overoptimization study (best-of-n, InfoRM vs standard RM, ICDS/MOP)"),
    "train": ("inform_fast.cli.train", "train an InfoRM reward model on preference pairs"),
    "score": ("inform_fast.cli.score", "score responses: rewards and latents (mu) to .safetensors/.npy"),
    "export": ("inform_fast.cli.export", "fold a linear-decoder InfoRM model into a stock sequence-classification checkpoint"),
    "icds": ("inform_fast.cli.icds", "integrated cluster deviation score of RLHF latents against reference latents"),
    "mop": ("inform_fast.cli.mop", "Mahalanobis outlier probability of RLHF latents against reference latents"),
    "kop": ("inform_fast.cli.kop", "k-NN outlier proportion of RLHF latents (calibrated), its rank shift and the ICDS of the outliers"),
    "plot-latents": ("inform_fast.cli.plot_latents", "PNG map of reference vs RLHF latents, clusters and outliers marked"),
    "report": ("inform_fast.cli.report", "plot a monitor history (ICDS / MOP over steps) to PNG"),
    "monitor": ("inform_fast.cli.monitor", "run the overoptimization monitor over saved checkpoint latents: ICDS/MOP per step, onset, JSON + PNG"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<14}{description}" for name, (_, description) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="inform-fast",
        description="InfoRM reward models and reward-hacking detection.",
        epilog=f"commands:\n{lines}\n\nRun 'inform-fast COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


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
    parser = argparse.ArgumentParser(prog=f"inform-fast {name}", description=description)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # Bad input is reported as one line naming the problem, not as a traceback.
        print(f"inform-fast {name}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
