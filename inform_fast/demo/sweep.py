"""Why does the standard RM overoptimize in some seeds and not others? A sweep of the world.

``python -m inform_fast.demo.sweep --seeds 10 --out sweep.json`` trains only the proxy (the
standard RM) of the demo, seed after seed, for each variant of the world below (overrides of the
``small`` preset), and measures over seeds what docs/demo.md argues the default world from: in how
many seeds the best-of-n gold curve declines (by n = 64, 256 and the largest n), by how much, and
what the proxy learned: its reward regressed on the six word-kind counts of a response (per-prompt
intercepts), so that ``filler / on_topic`` is how many on-topic words one filler word is worth to
it. Every seed uses the demo's own code path (``pipeline.draw_data``, ``train_and_score``,
``best_of_n_curve``), so the numbers are the demo's numbers with the rest of the study left out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from inform_fast.demo import study, world
from inform_fast.demo.aggregate import count, format_interval, mean_interval
from inform_fast.demo.config import DemoConfig, preset
from inform_fast.demo.findings import gold_decline

# the previous default world (before issue 16): variable length, no competence offset, a heavy filler
# tail, labels by selection of pairs and 25% flips, a hidden-64 2-layer proxy trained 500 steps
PREVIOUS_WORLD = dict(min_words=8, max_words=20, quality_mean=0.0, filler_a=0.5, filler_b=3.0, filler_max=0.9,
                      padded_share=0.0, label_model="selected", label_flip=0.25, keep_less_filler=0.25)
PREVIOUS_PROXY = dict(hidden_size=64, layers=2, heads=4, steps=500)

VARIANTS: Dict[str, dict] = {
    "default": {},
    "previous world and proxy": {**PREVIOUS_WORLD, **PREVIOUS_PROXY},
    "previous world": dict(PREVIOUS_WORLD),
    "selected labels": dict(label_model="selected", label_flip=0.25, keep_less_filler=0.25),
    "filler_bias 0.5": dict(filler_bias=0.5),
    "filler_bias 0": dict(filler_bias=0.0),
    "label_temperature 4": dict(label_temperature=4.0),
    "train_pairs 1000": dict(train_pairs=1000),
    "proxy hidden 64, 2 layers": dict(hidden_size=64, layers=2, heads=4),
    "padded_share 0": dict(padded_share=0.0),
    "quality_mean 0": dict(quality_mean=0.0),
}
DECLINE_BY = (64, 256)  # also judge the decline of the curve cut at these n (and at the largest n)


def proxy_weights(reward: np.ndarray, counts: np.ndarray, topics: np.ndarray) -> dict:
    """Least-squares fit of ``reward`` [N] on the word-kind counts [N, 6] plus one intercept per
    prompt: the per-word weight of each kind (``world.KINDS``) and the R^2 of the fit."""
    prompts = int(topics.max()) + 1
    design = np.hstack([counts, np.eye(prompts)[topics]])
    coef, *_ = np.linalg.lstsq(design, reward, rcond=None)
    residual = reward - design @ coef
    weights = {kind: float(w) for kind, w in zip(world.KINDS, coef[: len(world.KINDS)])}
    return {"weights": weights, "r2": float(1.0 - residual.var() / reward.var())}


def run_seed(config: DemoConfig, seed: int) -> dict:
    """The proxy-only study of one seed: data, standard RM, best-of-n gold curve, learned weights."""
    import torch

    from inform_fast.demo.pipeline import _deterministic, best_of_n_curve, draw_data, train_and_score

    started = time.process_time()
    with _deterministic(config.threads):
        rng = np.random.default_rng(seed)
        data = draw_data(config, rng, torch.device("cpu"))
        trained = train_and_score(config, "standard", data, seed, torch.device("cpu"))
    pool, reward = data["pool"], trained["pool_reward"]
    grid = study.log_grid(config.max_n)
    gold_z = (pool.gold - pool.gold.mean()) / pool.gold.std()
    gold = best_of_n_curve(config, (reward - reward.mean()) / reward.std(), gold_z, grid)
    fit = proxy_weights(reward, world.kind_counts(pool), pool.topic)
    declines = {str(n): gold_decline(gold[: grid.index(n) + 1])["declined"] for n in DECLINE_BY if n in grid}
    decline = gold_decline(gold)
    declines[str(grid[-1])] = decline["declined"]
    on_topic = fit["weights"]["on_topic"]
    # what sits at the top of the proxy: the share of padded responses (at least half filler) among each
    # prompt's top 1% by the proxy, against their share of the whole pool
    padded = 2 * pool.filler >= pool.length
    size, top = config.pool_per_prompt, max(1, config.pool_per_prompt // 100)
    top_rows = np.concatenate([k * size + np.argsort(-reward[k * size:(k + 1) * size], kind="stable")[:top]
                               for k in range(config.n_prompts)])
    return {
        "seed": int(seed), "gold": gold.tolist(), "n": grid, "peak_n": grid[decline["index"]], "drop": decline["drop"],
        "declined_by_n": declines, "gold_at_max_n": decline["final"], "heldout_accuracy": trained["heldout_accuracy"],
        "label_against_gold": float(data["pairs"].against_gold.mean()),
        "pool_corr_gold_filler": float(np.corrcoef(pool.gold, pool.filler)[0, 1]),
        "weights": fit["weights"], "r2": fit["r2"],
        "pool_padded_share": float(padded.mean()), "top_padded_share": float(padded[top_rows].mean()),
        "filler_per_on_topic": fit["weights"]["filler"] / on_topic if abs(on_topic) > 1e-12 else None,
        "cpu_s": time.process_time() - started,
    }


def summarize(rows: Sequence[dict]) -> dict:
    """Across seeds: decline counts (by each n), drop, held-out accuracy and the learned filler weight."""
    keys = rows[0]["declined_by_n"].keys()
    ratios = [r["filler_per_on_topic"] for r in rows if r["filler_per_on_topic"] is not None]
    return {
        "declined_by_n": {n: count([r["declined_by_n"][n] for r in rows]) for n in keys},
        "drop": mean_interval([r["drop"] for r in rows]),
        "gold_at_max_n": mean_interval([r["gold_at_max_n"] for r in rows]),
        "peak_n": [r["peak_n"] for r in rows],
        "heldout_accuracy": mean_interval([r["heldout_accuracy"] for r in rows]),
        "label_against_gold": mean_interval([r["label_against_gold"] for r in rows]),
        "pool_corr_gold_filler": mean_interval([r["pool_corr_gold_filler"] for r in rows]),
        "filler_per_on_topic": mean_interval(ratios) if ratios else None,
        "r2": mean_interval([r["r2"] for r in rows]),
        "pool_padded_share": mean_interval([r["pool_padded_share"] for r in rows]),
        "top_padded_share": mean_interval([r["top_padded_share"] for r in rows]),
    }


def table(summaries: Dict[str, dict]) -> str:
    """Markdown table of the variants' summaries."""
    first = next(iter(summaries.values()))
    ns = list(first["declined_by_n"].keys())
    head = ("| variant | " + " | ".join(f"declines by n = {n}" for n in ns)
            + " | drop (z) | held-out acc | filler / on-topic weight | R^2 | padded: pool -> proxy's top 1% | corr(gold, filler) |")
    lines = [head, "|---|" + "---:|" * (len(ns) + 6)]
    for name, s in summaries.items():
        counts = " | ".join(f"{s['declined_by_n'][n]['count']}/{s['declined_by_n'][n]['seeds']}" for n in ns)
        lines.append(f"| {name} | {counts} | {format_interval(s['drop'])} | {format_interval(s['heldout_accuracy'], 3)} | "
                     f"{format_interval(s['filler_per_on_topic'])} | {format_interval(s['r2'])} | "
                     f"{format_interval(s['pool_padded_share'], 3)} -> {format_interval(s['top_padded_share'], 2)} | "
                     f"{format_interval(s['pool_corr_gold_filler'])} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inform_fast.demo.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0 .. N-1 per variant (default 10)")
    parser.add_argument("--variants", default="all", help="comma-separated variant names, or 'all': " + "; ".join(VARIANTS))
    parser.add_argument("--out", default=None, help="JSON file for every seed's numbers and the summaries")
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or args.seeds < 1:
        print(f"sweep: error: {'--variants: unknown ' + ', '.join(unknown) if unknown else '--seeds: expected >= 1'}", file=sys.stderr)
        return 2
    results, summaries = {}, {}
    for name in names:
        config = preset("small", **VARIANTS[name])
        rows = []
        for seed in range(args.seeds):
            rows.append(run_seed(config, seed))
            r = rows[-1]
            print(f"{name} seed {seed}: peak n {r['peak_n']}, drop {r['drop']:.2f}, held-out {r['heldout_accuracy']:.3f}, "
                  f"filler/on-topic {r['filler_per_on_topic']:.2f}, {r['cpu_s']:.0f} s CPU", file=sys.stderr, flush=True)
        results[name] = {"overrides": VARIANTS[name], "seeds": rows}
        summaries[name] = summarize(rows)
    print(table(summaries))
    if args.out:
        from inform_fast._io import write_text_atomic

        write_text_atomic(args.out, json.dumps({"variants": results, "summaries": summaries}, indent=1), name="--out")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
