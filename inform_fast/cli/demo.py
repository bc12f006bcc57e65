"""``inform-fast demo``: the built-in overoptimization study over several seeds (see docs/demo.md).

Per seed: trains a standard reward model and InfoRM on the same synthetic preference pairs, runs
best-of-n and a policy search against each, measures the gold reward, and scores the selections
with ICDS / MOP in InfoRM's latent space. The report gives each seed and the mean over seeds with
its 95% interval. Writes report.md, report.json and the PNGs into ``--out``, each file whole; never
deletes or replaces a file it did not write (a folder holding other files needs ``--overwrite``).
"""
from __future__ import annotations

import sys

from inform_fast.demo.config import DEFAULT_SEEDS


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="inform_fast_demo", help="output folder (default ./inform_fast_demo): new, empty, or a previous demo output")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="write into an --out folder that holds other files: only the demo's own files (report.md, report.json, "
             "the PNGs) are replaced, nothing else is touched",
    )
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"how many seeds to run: the report gives each and their mean with a 95%% interval (default {DEFAULT_SEEDS})")
    parser.add_argument("--seed", type=int, default=0,
                        help="first seed (default 0): seeds SEED .. SEED+SEEDS-1; the same seed gives the same numbers")
    parser.add_argument(
        "--preset", default="small", choices=["tiny", "small", "paper"],
        help="small: the default, a CPU study (docs/demo.md gives its time per seed); paper: bigger backbone, pool and "
             "training, sized for a GPU; tiny: seconds, for tests",
    )
    parser.add_argument("--jobs", type=int, default=None,
                        help="seeds run at once in separate processes (default: one per CPU core, one on a GPU); the numbers do not depend on it")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"], help="override the preset's device")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cost_warning(preset_name: str, device) -> str:
    """A line for stderr when the paper preset is about to run on a CPU, else ''."""
    if preset_name != "paper" or device.type != "cpu":
        return ""
    from inform_fast.demo.config import preset
    from inform_fast.demo.pipeline import work_units

    paper, small = preset("paper"), preset("small")
    return (
        f"inform-fast demo: warning: --preset paper is sized for a GPU and runs on the CPU here: per seed it trains two "
        f"hidden-{paper.hidden_size}, {paper.layers}-layer backbones for {paper.steps} steps of {paper.batch_size} pairs and "
        f"scores {paper.n_prompts * paper.pool_per_prompt:,} pool responses twice ({work_units(paper) / work_units(small):.0f} "
        f"times the progress steps of --preset small, each step far larger): expect many hours per seed (docs/demo.md has "
        f"a CPU measurement; the progress bar's estimate after the first steps tells how long here). --preset small is the "
        f"CPU study."
    )


def run(args) -> int:
    import os

    from inform_fast.demo import run_demo, seed_list
    from inform_fast.demo.config import preset
    from inform_fast.demo.pipeline import resolve_device
    from inform_fast.demo.report import summary_text

    overrides = {} if args.device is None else {"device": args.device}
    seeds = seed_list(args.seed, args.seeds)
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs: expected an integer >= 1, got {args.jobs}")
    warning = cost_warning(args.preset, resolve_device(preset(args.preset, **overrides)))
    if warning:
        print(warning, file=sys.stderr)
    results = run_demo(args.out, preset=args.preset, seed=args.seed, seeds=args.seeds, progress=not args.quiet,
                       overwrite=args.overwrite, jobs=args.jobs, **overrides)
    out = os.path.abspath(args.out)
    print(summary_text(results))
    print(f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}), preset {args.preset}; "
          f"runtime {results['runtime_s']:.1f} s; report: {os.path.join(out, 'report.md')}")
    return 0
