"""``inform-fast demo``: a self-contained reward-overoptimization study on a synthetic text world.

A gold reward, preference pairs from an annotator biased toward a spurious feature (filler
words), a standard reward model and InfoRM trained the same way, best-of-n against each, and
InfoRM's latent space as the detector (ICDS, MOP, AUROC); then a policy search that leaves the
pool (hill climbing on one-word edits guided by each RM, by InfoRM with the IBL penalty, and by the
gold reward as a control) with
the detector fed through ``OverOptimizationMonitor``. See docs/demo.md.

``run_demo(out_dir, preset="small", seed=0, seeds=DEFAULT_SEEDS)`` runs it once per seed (seed, seed + 1,
...) and writes one report over all of them; the pieces live in ``world`` (text world and gold
reward), ``train`` (reward models), ``study`` (best-of-n and AUROC math), ``search`` (the policy
search), ``pipeline`` (the study of one seed, and the seeds), ``aggregate`` (means and 95%
intervals across seeds), ``findings`` (what the numbers say, against named thresholds), ``report``
(report.md / report.json / PNGs) and ``sweep`` (the world's design, measured).
"""
from __future__ import annotations

from typing import Optional

from inform_fast.demo.config import DEFAULT_SEEDS


def seed_list(first: int, count: int) -> list:
    """``count`` consecutive seeds from ``first``; ValueError naming --seeds / --seed otherwise."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"--seeds: expected an integer >= 1, got {count!r}")
    if isinstance(first, bool) or not isinstance(first, int) or first < 0:
        raise ValueError(f"--seed: expected an integer >= 0, got {first!r}")
    return list(range(first, first + count))


def run_demo(out_dir: str, preset: str = "small", seed: int = 0, seeds: int = DEFAULT_SEEDS, progress: bool = True,
             overwrite: bool = False, jobs: Optional[int] = None, **overrides) -> dict:
    """Run the study with a preset (``tiny``, ``small``, ``paper``) for ``seeds`` seeds starting at
    ``seed`` and write the report into ``out_dir``: a new or empty folder, or a previous demo output.
    A folder holding other files is refused (ValueError naming --out) unless ``overwrite``; even
    then only the demo's own files are replaced. ``jobs``: processes running seeds at once (None:
    one per CPU core, see ``pipeline.default_jobs``); the numbers do not depend on it. Returns the
    report.json content."""
    import time

    from inform_fast.demo.config import preset as get_preset
    from inform_fast.demo.pipeline import default_jobs, run_seeds, study_results
    from inform_fast.demo.report import check_out_dir, write_report

    started = time.perf_counter()
    config = get_preset(preset, **overrides)
    chosen = seed_list(seed, seeds)
    check_out_dir(out_dir, overwrite=overwrite)  # fail before the study, not after it
    outcome = run_seeds(config, chosen, progress=progress, jobs=default_jobs(config, len(chosen)) if jobs is None else jobs)
    results = study_results(outcome["per_seed"], preset, config, runtime_s=time.perf_counter() - started)
    write_report(out_dir, {"results": results, "arrays": outcome["arrays"]}, started=started, overwrite=overwrite)
    return results
