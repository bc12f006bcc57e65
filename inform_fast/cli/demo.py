"""``inform-fast demo``: the built-in overoptimization study (see docs/demo.md).

Trains a standard reward model and InfoRM on the same synthetic preference pairs, runs best-of-n
against each, measures the gold reward, and scores the selections with ICDS / MOP in InfoRM's
latent space. Writes report.md, report.json and the PNGs into ``--out``, each file whole; never deletes or
replaces a file it did not write (a folder holding other files needs ``--overwrite``).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="inform_fast_demo", help="output folder (default ./inform_fast_demo): new, empty, or a previous demo output")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="write into an --out folder that holds other files: only the demo's own files (report.md, report.json, "
             "the PNGs) are replaced, nothing else is touched",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same numbers (default 0)")
    parser.add_argument(
        "--preset", default="small", choices=["tiny", "small", "paper"],
        help="small: the default, CPU in about a minute; paper: bigger backbone, pool and training for a GPU; tiny: seconds, for tests",
    )
    parser.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"], help="override the preset's device")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    import os

    from inform_fast.demo import run_demo
    from inform_fast.demo.report import summary_table

    overrides = {} if args.device is None else {"device": args.device}
    results = run_demo(args.out, preset=args.preset, seed=args.seed, progress=not args.quiet,
                       overwrite=args.overwrite, **overrides)
    out = os.path.abspath(args.out)
    print(summary_table(results))
    from inform_fast.demo.report import verdict

    print("\n".join(line.replace("**", "") for line in verdict(results)))
    print(f"runtime {results['runtime_s']:.1f} s; report: {os.path.join(out, 'report.md')}")
    return 0
