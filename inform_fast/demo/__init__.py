"""``inform-fast demo``: a self-contained reward-overoptimization study on a synthetic text world.

A gold reward, noisy preference pairs whose labels correlate with a spurious feature (filler
words), a standard reward model and InfoRM trained the same way, best-of-n against each, and
InfoRM's latent space as the detector (ICDS, MOP, AUROC); then a policy search that leaves the
pool (hill climbing on one-word edits guided by each RM, by InfoRM with the IBL penalty, and by the
gold reward as a control) with
the detector fed through ``OverOptimizationMonitor``. See docs/demo.md.

``run_demo(out_dir, preset="small", seed=0)`` runs it and writes the report; the pieces live in
``world`` (text world and gold reward), ``train`` (reward models), ``study`` (best-of-n and AUROC
math), ``search`` (the policy search), ``pipeline`` (the study) and ``report`` (report.md / report.json / PNGs).
"""
from __future__ import annotations


def run_demo(out_dir: str, preset: str = "small", seed: int = 0, progress: bool = True, overwrite: bool = False,
             **overrides) -> dict:
    """Run the study with a preset (``tiny``, ``small``, ``paper``) and write the report into
    ``out_dir``: a new or empty folder, or a previous demo output. A folder holding other files is
    refused (ValueError naming --out) unless ``overwrite``; even then only the demo's own files are
    replaced. Returns the report.json content."""
    from inform_fast.demo.config import preset as get_preset
    from inform_fast.demo.pipeline import run_study
    from inform_fast.demo.report import check_out_dir, write_report

    import time

    started = time.perf_counter()
    config = get_preset(preset, **overrides)
    check_out_dir(out_dir, overwrite=overwrite)  # fail before the study, not after it
    outcome = run_study(config, seed=seed, progress=progress)
    outcome["results"]["preset"] = preset
    outcome["results"]["config"] = config.to_dict()
    write_report(out_dir, outcome, started=started, overwrite=overwrite)
    return outcome["results"]
