"""Write the demo's report: report.json, report.md and four PNGs, each file whole or not at all.

The report covers every seed of a run: ``results`` holds ``per_seed`` (each seed's numbers from
``pipeline.run_study``) and ``findings`` (``findings.seed_findings`` per seed and
``findings.study_findings`` across them); the figures show each seed as a thin line and the mean
with its 95% band. The judgements are made in ``findings``; this module only renders them.

The files are written into a hidden temporary folder first and moved into ``out_dir`` only when
every one is complete. The demo never deletes or replaces a file it did not write: ``out_dir`` may
be new, empty, or a previous demo output (recognised by the ``.inform-fast-demo`` marker that lists
the files a run wrote, and nothing else in the folder); a folder holding anything else is refused
unless ``overwrite=True`` (``--overwrite``), and even then only the demo's own file names are
replaced and every other file is left as it was.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from typing import Optional

import numpy as np

from inform_fast._io import process_umask
from inform_fast.demo.aggregate import CONFIDENCE, curve_interval, format_interval
from inform_fast.demo.findings import COLLAPSED_DIRECTIONS

RM_LABELS = {"standard": "standard RM", "inform": "InfoRM"}
THE = {"standard": "the standard RM", "inform": "InfoRM"}
COLORS = {"standard": "tab:blue", "inform": "tab:orange"}
FIGURES = ("gold_vs_proxy.png", "detection.png", "latent_map.png", "policy_search.png")
GUIDE_LABELS = {"standard": "standard RM", "inform": "InfoRM", "inform_ibl": "InfoRM + IBL penalty", "gold": "gold reward (control)"}
GUIDE_COLORS = {"standard": "tab:blue", "inform": "tab:orange", "inform_ibl": "tab:purple", "gold": "tab:green"}
MARKER = ".inform-fast-demo"  # JSON listing the files a demo run wrote into its folder
OWN_FILES = FIGURES + ("report.json", "report.md")


def _previous_output_files(out_dir: str) -> Optional[set]:
    """The files a previous demo run wrote into ``out_dir``, or None if its marker is missing or
    unreadable (then the folder is not known to be a demo output)."""
    try:
        with open(os.path.join(out_dir, MARKER)) as stream:
            listed = json.load(stream)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(listed, list):
        return None
    return {name for name in listed if name in OWN_FILES}


def foreign_entries(out_dir: str) -> list:
    """Entries of an existing ``out_dir`` that no demo run wrote (sorted); [] for a folder that is
    empty or holds only a previous demo output."""
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return []
    previous = _previous_output_files(out_dir)
    if previous is None:
        return entries
    return [name for name in entries if name != MARKER and name not in previous]


def check_out_dir(out_dir: str, overwrite: bool = False) -> str:
    """The absolute output folder; ValueError (naming --out) if it cannot be written, or if it
    holds files the demo did not write and ``overwrite`` is False."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out: exists and is not a folder: {out_dir}")
    if os.path.isdir(out_dir):
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise ValueError(f"--out: folder is not writable: {out_dir}")
        foreign = foreign_entries(out_dir)
        if foreign and not overwrite:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ValueError(
                f"--out: {out_dir} holds files the demo did not write ({shown}); choose a new or empty folder, "
                f"or pass --overwrite to write the demo's files into it (only {', '.join(OWN_FILES)} are replaced, "
                f"nothing else is touched)"
            )
        return out_dir
    if not os.path.isdir(parent):
        raise ValueError(f"--out: parent folder does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out: parent folder is not writable: {parent}")
    return out_dir


def _fsync_file(path: str) -> None:
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


def write_report(out_dir: str, outcome: dict, started: Optional[float] = None, overwrite: bool = False) -> str:
    """Write report.json, report.md and the PNGs of ``outcome`` (``run_study``'s return) into
    ``out_dir``; returns its absolute path. With ``started`` (a ``time.perf_counter()`` value),
    ``runtime_s`` is updated to include the figures. See the module docstring for what may be
    replaced; on any error the temporary folder is removed and ``out_dir`` is as it was."""
    out_dir = check_out_dir(out_dir, overwrite=overwrite)
    results, arrays = outcome["results"], outcome["arrays"]
    exists = os.path.isdir(out_dir)
    # beside out_dir when it is new (one rename places the whole folder), inside it otherwise
    temp = tempfile.mkdtemp(prefix=".inform_fast_demo-tmp-", dir=out_dir if exists else os.path.dirname(out_dir))
    try:
        plot_gold_vs_proxy(results, os.path.join(temp, "gold_vs_proxy.png"))
        plot_detection(results, os.path.join(temp, "detection.png"))
        plot_latent_map(results, arrays, os.path.join(temp, "latent_map.png"))
        if all("policy_search" in r for r in results["per_seed"]):
            plot_policy_search(results, os.path.join(temp, "policy_search.png"))
        if started is not None:
            results["runtime_s"] = time.perf_counter() - started
        with open(os.path.join(temp, "report.json"), "w") as stream:
            json.dump(results, stream, indent=2)
        with open(os.path.join(temp, "report.md"), "w") as stream:
            stream.write(markdown(results))
        written = sorted(name for name in os.listdir(temp) if name in OWN_FILES)
        with open(os.path.join(temp, MARKER), "w") as stream:
            json.dump({"generator": "inform-fast demo", "files": written}, stream)
        for name in os.listdir(temp):
            _fsync_file(os.path.join(temp, name))
        if not exists:
            os.chmod(temp, 0o777 & ~process_umask())
            os.rename(temp, out_dir)
            return out_dir
        previous = _previous_output_files(out_dir) or set()
        for name in written:
            os.replace(os.path.join(temp, name), os.path.join(out_dir, name))
        for name in sorted(previous - set(written)):  # a file an earlier demo run wrote and this one did not
            if os.path.isfile(os.path.join(out_dir, name)):
                os.unlink(os.path.join(out_dir, name))
        os.replace(os.path.join(temp, MARKER), os.path.join(out_dir, MARKER))
    finally:
        if os.path.isdir(temp):
            shutil.rmtree(temp, ignore_errors=True)
    return out_dir


# ------------------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _spread(ax, x, rows, color, label, style="-", mean_marker="o"):
    """One thin line per seed, the mean over seeds, and its 95% band (no band with one seed). The
    y range follows the lines, not the band: with two or three seeds the t interval is so wide
    that it would flatten every line."""
    rows = np.asarray(rows, dtype=np.float64)
    for row in rows:
        ax.plot(x, row, style, color=color, lw=0.7, alpha=0.3)
    band = curve_interval(rows)
    ax.plot(x, band["mean"], style, marker=mean_marker, ms=3.5, lw=1.8, color=color, label=label)
    low, high = float(rows.min()), float(rows.max())
    seen = getattr(ax, "_line_range", None)
    ax._line_range = (low, high) if seen is None else (min(seen[0], low), max(seen[1], high))
    if band["low"] is not None:
        ax.fill_between(x, band["low"], band["high"], color=color, alpha=0.15, lw=0)
    low, high = ax._line_range
    pad = 0.08 * (high - low) + 1e-3
    ax.set_ylim(low - pad, high + pad)


def _include(ax, values) -> None:
    """Widen the y range to show ``values`` too (lines drawn without ``_spread``)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = ax.get_ylim()
    pad = 0.05 * (high - low)
    ax.set_ylim(min(low, float(values.min()) - pad), max(high, float(values.max()) + pad))


def _seeds_text(results: dict) -> str:
    seeds = results["seeds"]
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"


def plot_gold_vs_proxy(results: dict, path: str) -> None:
    """Left: gold (solid, mean with its band, a thin line per seed) and proxy (dashed, mean) of
    best-of-n against each RM, and best-of-n on the gold reward itself (dotted); right: InfoRM's
    gold minus the standard RM's, per seed and mean with its band."""
    plt = _pyplot()
    runs = results["per_seed"]
    kl = runs[0]["kl"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=120, gridspec_kw={"width_ratios": [1.5, 1]})
    for name in ("standard", "inform"):
        _spread(left, kl, [r[name]["gold"] for r in runs], COLORS[name], f"{RM_LABELS[name]}: gold reward")
        left.plot(kl, np.mean([r[name]["proxy"] for r in runs], axis=0), "--", color=COLORS[name], label=f"{RM_LABELS[name]}: proxy reward (mean)")
    oracle = np.mean([r["gold_oracle"] for r in runs], axis=0)
    left.plot(kl, oracle, ":", color="0.45", label="best-of-n on the gold reward itself (mean)")
    _include(left, np.concatenate([oracle] + [np.mean([r[name]["proxy"] for r in runs], axis=0) for name in ("standard", "inform")]))
    left.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    left.set_ylabel("reward (z-score over the base pool)")
    left.set_title("Best-of-n against each proxy: does the gold reward follow?", fontsize=10)
    left.legend(fontsize=7.5, loc="upper left")
    difference = [np.asarray(r["inform"]["gold"]) - np.asarray(r["standard"]["gold"]) for r in runs]
    _spread(right, kl, difference, "tab:purple", "InfoRM - standard RM, gold")
    _include(right, [0.0])
    right.axhline(0.0, color="0.5", lw=0.8)
    right.set_ylabel("gold difference (z)")
    right.set_title("InfoRM minus the standard RM (above 0: InfoRM's picks are better)", fontsize=10)
    right.legend(fontsize=7.5, loc="lower left")
    for ax in (left, right):
        _n_axis(ax, runs[0])
        ax.set_xlabel("KL(best-of-n || base) = log n - (n-1)/n   [nats]")
    fig.suptitle(f"{_seeds_text(results)}: thin lines are single seeds, thick lines the mean, bands its {CONFIDENCE:.0%} interval", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_detection(results: dict, path: str) -> None:
    """ICDS/n, MOP (empirical and chi-square p-values), KOP and the hacked fraction against KL, for
    best-of-n on each proxy: mean with its band and a thin line per seed."""
    plt = _pyplot()
    runs = results["per_seed"]
    alpha = runs[0]["reference"]["mop_alpha"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.2), dpi=110)
    panels = (
        (("icds_normalized",), "ICDS / number of latents", "ICDS (cluster deviation)"),
        (("mop_empirical", "mop"), f"fraction with p <= {alpha}", "MOP: empirical p-values (solid), chi-square (dotted, mean)"),
        (("kop",), f"fraction with p <= {alpha}", "KOP: k-NN distance, empirical p-values"),
        (("hacked_fraction",), "fraction below the base median gold", "hacked responses (gold-defined)"),
    )
    for ax, (keys, ylabel, title) in zip(axes.ravel(), panels):
        for name in ("standard", "inform"):
            _spread(ax, runs[0]["kl"], [r[name][keys[0]] for r in runs], COLORS[name], f"best-of-n on {THE[name]}")
            for key in keys[1:]:
                values = np.mean([r[name][key] for r in runs], axis=0)
                ax.plot(runs[0]["kl"], values, ":", color=COLORS[name], lw=1.5)
                _include(ax, values)
        _n_axis(ax, runs[0])
        ax.set_xlabel("KL [nats]")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Detection in InfoRM's latent space (whatever proxy was optimised), {_seeds_text(results)}: "
                 f"mean, {CONFIDENCE:.0%} band, thin line per seed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latent_map(results: dict, arrays: dict, path: str) -> None:
    """The first seed's reference latents and best-of-n picks at the largest n (one seed: a map of
    points has no mean)."""
    from inform_fast.detect.projection import PCAProjection

    plt = _pyplot()
    first = results["per_seed"][0]
    projection = PCAProjection(n_components=2, normalize=False).fit(arrays["reference"])
    ref = projection.transform(arrays["reference"]).numpy()
    # each axis in units of the reference's spread along it (PC 2 is often tiny next to PC 1),
    # and limits from the reference's 0.5-99.5% range plus every selected point, so that one
    # stray reference latent does not squash the picture
    scale = ref.std(axis=0)
    scale[scale == 0] = 1.0
    ref = ref / scale
    selected = {name: projection.transform(arrays["selected"][name]).numpy() / scale for name in ("standard", "inform")}
    shown = np.concatenate([np.percentile(ref, [0.5, 99.5], axis=0)] + list(selected.values()))
    low, high = shown.min(axis=0), shown.max(axis=0)
    pad = 0.05 * (high - low + 1e-12)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=110, sharex=True, sharey=True)
    n = first["n"][-1]
    for ax, name in zip(axes, ("standard", "inform")):
        sel = selected[name]
        hacked = np.asarray(arrays["hacked"][name], dtype=bool)
        ax.scatter(ref[:, 0], ref[:, 1], s=4, color="0.75", label="reference (n = 1)", rasterized=True)
        ax.scatter(sel[~hacked, 0], sel[~hacked, 1], s=14, color=COLORS[name], alpha=0.7, label=f"best-of-{n}, not hacked")
        ax.scatter(sel[hacked, 0], sel[hacked, 1], s=26, marker="x", color="tab:red", label=f"best-of-{n}, hacked ({hacked.mean():.0%})")
        ax.set_title(f"best-of-{n} on {THE[name]}", fontsize=10)
        ax.set_xlabel("PC 1 of the reference latents (reference std units)")
        ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
        ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("PC 2 (reference std units)")
    fig.suptitle(f"Seed {first['seed']}: InfoRM latents (mu), reference vs selected; hacked = gold below the reference median", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_policy_search(results: dict, path: str) -> None:
    """Left: each guide's gold per round (mean with its band, a thin line per seed); right: MOP per
    round (mean with its band) and each seed's first monitor alarm as a tick in the guide's colour."""
    plt = _pyplot()
    searches = [r["policy_search"] for r in results["per_seed"]]
    rounds = searches[0]["rounds"]
    guides = [g for g in GUIDE_LABELS if all(g in ps for ps in searches)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.6), dpi=110)
    for k, guide in enumerate(guides):
        color = GUIDE_COLORS[guide]
        _spread(left, rounds, [ps[guide]["gold"] for ps in searches], color, f"climbing {GUIDE_LABELS[guide]}: gold")
        _spread(right, rounds, [ps[guide]["mop"] for ps in searches], color, f"climbing {GUIDE_LABELS[guide]}: MOP")
        if all("kop" in ps[guide] for ps in searches):
            right.plot(rounds, np.mean([ps[guide]["kop"] for ps in searches], axis=0), "--", color=color, lw=1.2,
                       label=f"climbing {GUIDE_LABELS[guide]}: KOP (mean)")
        alarms = [ps[guide]["alarm_round"] for ps in searches if ps[guide]["alarm_round"] is not None]
        if alarms:
            right.plot(alarms, [1.06 + 0.03 * k] * len(alarms), "|", ms=9, mew=1.5, color=color, clip_on=False,
                       label=f"{GUIDE_LABELS[guide]}: first alarm of a seed ({len(alarms)} of {len(searches)} seeds)")
    threshold = searches[0]["config"]["monitor"]["score_threshold"].get("mop")
    if threshold is not None:
        right.axhline(threshold, color="0.5", lw=0.8, ls="-.", label=f"MOP alarm threshold {threshold:g}")
    left.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    left.set_xlabel("round of one-word edits")
    left.set_ylabel("mean gold reward of the population (z-score over the base pool)")
    left.set_title("Hill climbing on each guide: gold per round", fontsize=10)
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    right.set_xlabel("round of one-word edits")
    right.set_ylabel("fraction of the population flagged")
    right.set_ylim(-0.02, 1.2)
    right.set_title("MOP (solid, the monitor's chi-square test), KOP (dashed); ticks: first alarms", fontsize=10)
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.suptitle(f"Policy search, {_seeds_text(results)} (the gold-guided control cannot hack)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _n_axis(ax, run: dict) -> None:
    """A secondary x axis with n at a few grid points."""
    ns = run["n"]
    marks = [n for n in ns if n in (1, 4, 16, 64, 256, 1024, 4096, 16384)] or ns
    top = ax.secondary_xaxis("top")
    top.set_xticks([math.log(n) - (n - 1) / n for n in marks])
    top.set_xticklabels([f"n={n}" for n in marks], fontsize=7)


# ------------------------------------------------------------------------------------- rendering
def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


_iv = format_interval


def _k(counted: dict) -> str:
    return f"{counted['count']} of {counted['seeds']}"


def _held(counted: dict) -> str:
    k, n = counted["count"], counted["seeds"]
    return {"all": f"in every seed ({k} of {n})", "none": f"in no seed (0 of {n})",
            "some": f"in {k} of {n} seeds (seed-dependent)"}[counted["holds"]]


DIRECTION_WORDS = {
    "above zero": "InfoRM higher (the interval lies above zero)",
    "below zero": "InfoRM lower (the interval lies below zero)",
    "includes zero": "no difference resolved (the interval includes zero)",
    None: "one seed: no interval",
}
IBL_DIRECTION_WORDS = {
    "above zero": "the penalty kept more gold (the interval lies above zero)",
    "below zero": "the penalty kept less gold (the interval lies below zero)",
    "includes zero": "no difference resolved (the interval includes zero)",
    None: "one seed: no interval",
}
TIMING_WORDS = {"early": "before the gold peak", "at_peak": "at the gold peak", "late": "after the gold peak",
                "undetected": "no alarm while the gold fell", "false_alarm": "false alarm (gold did not fall)",
                "quiet": "no alarm, nothing to flag"}
MOP_LABELS = {"barely_moved": "MOP barely moved under hacking", "not_separated": "MOP rose less than twice the control's rise",
              "separated_control_rose": "MOP rose clearly more under hacking, but rose for the control too",
              "separated": "MOP rose under hacking and stayed flat for the control"}
ICDS_LABELS = {"no_rise": "ICDS/n did not rise under hacking", "not_separated": "ICDS/n did not separate hacking from the control",
               "separated": "ICDS/n rose at least three times the control's rise"}
AUROC_WORDS = {"usable": "usable", "modest": "modest", "chance": "close to chance", "inverted": "inverted: hacked picks look *less* unusual",
               "undefined": "undefined"}


def study_lines(results: dict) -> list:
    """The across-seed findings as markdown bullets (``findings.study_findings``, rendered)."""
    f = results["findings"]["study"]
    best, det = f["best_of_n"], f["detection"]
    n_max, seeds = best["n_max"], f"{f['n_seeds']} seed{'s' if f['n_seeds'] != 1 else ''}"
    lines = []
    for name in ("standard", "inform"):
        b = best[name]
        lines.append(
            f"- **{RM_LABELS[name]} overoptimizes {_held(b['overoptimized'])}**: best-of-n gold peaks at z {_iv(b['peak_gold'])} "
            f"(peak n per seed: {', '.join(map(str, b['peak_n']))}) and ends at {_iv(b['gold_at_max_n'])} at n = {n_max}, "
            f"a drop of {_iv(b['drop'])}; its picks at n = {n_max} hold {_iv(b['filler_final'], 1)} filler words."
        )
    d = best["gold_difference_at_max_n"]
    lines.append(
        f"- **InfoRM minus standard RM, gold at n = {n_max}**: {_iv(d)} ({seeds}): {DIRECTION_WORDS[d['direction']]}; "
        f"InfoRM higher in {_k(d['inform_higher'])} seeds, lower in {_k(d['inform_lower'])}."
    )
    if f["n_seeds"] > 1:
        lower, higher = best["inform_lower_at_n"], best["inform_higher_at_n"]
        lines.append(
            "- Across n (95% intervals of the per-seed differences): InfoRM's gold is "
            + (f"below the standard RM's at n = {', '.join(map(str, lower))}" if lower else "never resolved below the standard RM's")
            + "; " + (f"above it at n = {', '.join(map(str, higher))}." if higher else "never resolved above it.")
        )
    acc = best["heldout_accuracy_difference"]
    lines.append(
        f"- **Held-out accuracy** (noise-free gold pairs): standard RM {_iv(best['standard']['heldout_accuracy'], 3)}, "
        f"InfoRM {_iv(best['inform']['heldout_accuracy'], 3)}; InfoRM minus standard {_iv(acc, 3)}: "
        f"{DIRECTION_WORDS[acc['direction']].replace('InfoRM higher', 'InfoRM more accurate').replace('InfoRM lower', 'InfoRM less accurate')}."
    )
    auroc, knn = det["auroc"], det.get("auroc_knn", {})
    alpha = results["per_seed"][0]["reference"]["mop_alpha"]
    if "pooled" in auroc:
        lines.append(
            f"- **Detector, per response** (hacked vs other best-of-n picks, n > 1; AUROC, 0.5 = chance): the Mahalanobis "
            f"distance in InfoRM's latent {_iv(auroc['pooled'])} ({AUROC_WORDS[det['auroc_quality']]} on average; below 0.5 in "
            f"{_k(det['auroc_below_half']['pooled'])} seeds)"
            + (f", the k-NN distance {_iv(knn['pooled'])} (below 0.5 in {_k(det['auroc_knn_below_half']['pooled'])})" if "pooled" in knn else "")
            + "."
        )
    rates = []
    for key, label in (("mop", "MOP, chi-square p-values (the paper's)"), ("mop_empirical", "MOP, empirical p-values"), ("kop", "KOP")):
        if key + "_n1" in det:
            rates.append(f"{label} {_iv(det[key + '_n1'], 3)} at n = 1 -> {_iv(det[key + '_max_n']['standard'], 3)} / "
                         f"{_iv(det[key + '_max_n']['inform'], 3)} at n = {n_max}")
    if rates:
        lines.append(
            f"- **Detector, outlier fractions** at alpha {alpha} (at n = 1 the picks are the base policy itself, so the value "
            f"there is the false-alarm rate; at n = {n_max}: best-of-n on the standard RM / on InfoRM): " + "; ".join(rates)
            + f"; ICDS/n {_iv(det['icds_normalized_max_n']['standard'], 3)} / {_iv(det['icds_normalized_max_n']['inform'], 3)} at n = {n_max}."
        )
    picks = det.get("picks")
    if picks and "hacked_distance" in picks and "other_distance" in picks:
        lines.append(
            f"- What the picks look like in the latent: hacked picks lie at Mahalanobis distance {_iv(picks['hacked_distance'])} "
            f"from the reference fit, the other picks at {_iv(picks['other_distance'])}; InfoRM's reward of the hacked picks is "
            f"{_iv(picks['hacked_reward_z'])} reference standard deviations above the reference mean, of the others "
            f"{_iv(picks['other_reward_z'])}; over the picks the distance correlates {_iv(picks['corr_distance_abs_reward_z'])} "
            f"with |reward z|"
            + (f"; k-NN distance {_iv(picks['hacked_knn_distance'])} (hacked) vs {_iv(picks['other_knn_distance'])} (other)"
               if "hacked_knn_distance" in picks and "other_knn_distance" in picks else "")
            + ". " + AUROC_READINGS.get(det.get("auroc_reading"), "")
        )
    latent = det.get("latent")
    if latent:
        lines.append(
            f"- InfoRM's latent uses {_iv(latent['participation_ratio'], 1)} direction(s) on the reference set (participation "
            f"ratio), under {COLLAPSED_DIRECTIONS:g} in {_k(latent['collapsed'])} seeds"
            + (f"; its top direction's |cos| with the decoder's reward direction: {_iv(latent['top_cos_reward'], 3)}." if "top_cos_reward" in latent else ".")
        )
    if "policy_search" in f and all("policy_search" in r for r in results["per_seed"]):
        lines += _search_study_lines(f["policy_search"], results)
    return lines


AUROC_READINGS = {
    "inverted_hacked_closer": "The AUROC is below 0.5 because the hacked picks are the *less* unusual ones: they lie closer to "
                              "the reference fit than the other picks, whose more extreme reward the distance tracks.",
    "inverted_hacked_farther": "The AUROC is below 0.5 although the hacked picks are farther out on average: a minority of very "
                               "distant other picks sets the ranking.",
    "hacked_farther": "The distance ranks hacked picks as more unusual: they lie farther from the reference fit than the other picks.",
    "hacked_closer": "The hacked picks are not farther out on average; the ranking comes from a minority of far hacked picks.",
}


def _search_study_lines(ps: dict, results: dict) -> list:
    config = results["per_seed"][0]["policy_search"]["config"]
    rounds = results["per_seed"][0]["policy_search"]["rounds"][-1]
    lines = []
    for guide, g in ps["guides"].items():
        timing = "; ".join(f"{TIMING_WORDS[t]} in {c}" for t, c in g["timing"].items() if c)
        declined = g["declined"]
        what = ("its gold fell after a peak " + _held(declined)) if guide != "gold" else (
            "the control; its gold never falls" if declined["count"] == 0 else f"the control; its gold fell in {_k(declined)} seeds")
        lines.append(
            f"- **Policy search, climbing {GUIDE_LABELS[guide]}** ({rounds} rounds): {what}; gold {_iv(g['gold_start'])} -> peak "
            f"{_iv(g['gold_peak'])} -> {_iv(g['gold_final'])} at the last round; filler words per response {_iv(g['filler_final'], 1)}, "
            f"off-topic {_iv(g['off_topic_final'], 1)}; MOP {_iv(g['mop_final'], 3)}"
            + (f", KOP {_iv(g['kop_final'], 3)}" if g.get("kop_final") else "")
            + f" at the last round. The monitor's first alarm, per seed: {timing}."
        )
    for key, labels in (("mop_against_control", MOP_LABELS), ("icds_against_control", ICDS_LABELS)):
        if ps.get(key):
            spread = "; ".join(f"{labels[label]} in {c}" for label, c in ps[key].items())
            lines.append(f"- Against the control ({'MOP' if key.startswith('mop') else 'ICDS/n'}; the control's rise "
                         f"{_iv(ps.get(key + '_control_rise'), 3)}): {spread} of the seeds where a model-guided search was hacked.")
    ibl = ps.get("ibl")
    if ibl:
        d = ibl["gold_difference_final"]
        decline = ", ".join(f"{label.replace('_', ' ')} {c}" for label, c in ibl["decline"].items() if c)
        lines.append(
            f"- **IBL penalty vs plain InfoRM** (coef rule: {config['ibl']['rule']}, scale {config['ibl']['coef_scale']:g}): gold at "
            f"the last round, penalised minus plain, {_iv(d)}: {IBL_DIRECTION_WORDS[d['direction']]}; "
            f"gold decline per seed: {decline}; the penalised search hacked while moving toward the reference fit in "
            f"{_k(ibl['hacked_toward_reference'])} seeds; MOP at the last round {_iv(ibl['mop_final']['inform_ibl'], 3)} with the "
            f"penalty vs {_iv(ibl['mop_final']['inform'], 3)} without."
        )
    return lines


def seed_table(results: dict) -> list:
    """One row per seed: the numbers the across-seed findings are made of."""
    rows = [
        "| seed | standard RM: peak gold (n) -> at n max | drop | InfoRM: peak gold (n) -> at n max | drop | InfoRM - standard at n max "
        "| held-out acc std / InfoRM | AUROC std / InfoRM / pooled | MOP at n max std / InfoRM |",
        "|---:|---|---:|---|---:|---:|---|---|---|",
    ]
    for f in results["findings"]["per_seed"]:
        b, d = f["best_of_n"], f["detection"]
        s, i = b["standard"], b["inform"]
        rows.append(
            f"| {f['seed']} | {s['value']:.2f} ({s['peak_n']}) -> {s['final']:.2f} | {s['drop']:.2f} | {i['value']:.2f} ({i['peak_n']}) -> "
            f"{i['final']:.2f} | {i['drop']:.2f} | {b['gold_difference_at_max_n']:+.2f} | {s['heldout_accuracy']:.3f} / "
            f"{i['heldout_accuracy']:.3f} | {_fmt(d['auroc'].get('standard'), 2)} / {_fmt(d['auroc'].get('inform'), 2)} / "
            f"{_fmt(d['auroc'].get('pooled'), 2)} | {d['mop']['standard']['max_n']:.3f} / {d['mop']['inform']['max_n']:.3f} |"
        )
    return rows


def curve_table(results: dict) -> list:
    """Per n: the mean over seeds with its 95% interval of both gold curves and their difference."""
    runs = results["per_seed"]
    bands = {name: curve_interval([r[name]["gold"] for r in runs]) for name in ("standard", "inform")}
    bands["difference"] = curve_interval([np.asarray(r["inform"]["gold"]) - np.asarray(r["standard"]["gold"]) for r in runs])
    proxies = {name: np.mean([r[name]["proxy"] for r in runs], axis=0) for name in ("standard", "inform")}
    oracle = np.mean([r["gold_oracle"] for r in runs], axis=0)

    def cell(band, i):
        if band["low"] is None:
            return f"{band['mean'][i]:.2f}"
        return f"{band['mean'][i]:.2f} [{band['low'][i]:.2f}, {band['high'][i]:.2f}]"

    rows = ["| n | KL | gold standard RM | gold InfoRM | InfoRM - standard | proxy standard | proxy InfoRM | gold oracle |",
            "|---:|---:|---|---|---|---:|---:|---:|"]
    for i, n in enumerate(runs[0]["n"]):
        rows.append(f"| {n} | {runs[0]['kl'][i]:.2f} | {cell(bands['standard'], i)} | {cell(bands['inform'], i)} | "
                    f"{cell(bands['difference'], i)} | {proxies['standard'][i]:.2f} | {proxies['inform'][i]:.2f} | {oracle[i]:.2f} |")
    return rows


def search_table(results: dict) -> list:
    """One row per seed of the policy search: each guide's gold start -> peak (round) -> end and its first alarm."""
    searches = [r["policy_search"] for r in results["per_seed"]]
    guides = [g for g in GUIDE_LABELS if all(g in ps for ps in searches)]
    rows = ["| seed | " + " | ".join(f"{GUIDE_LABELS[g]}: gold start -> peak (round) -> end; alarm" for g in guides) + " |",
            "|---:|" + "---|" * len(guides)]
    for run, f in zip(results["per_seed"], results["findings"]["per_seed"]):
        cells = []
        for g in guides:
            s = f["policy_search"]["guides"][g]
            alarm = "none" if s["alarm_round"] is None else f"round {s['alarm_round']} ({TIMING_WORDS[s['timing']]})"
            cells.append(f"{s['gold_start']:.2f} -> {s['gold_peak']:.2f} ({s['peak_round']}) -> {s['gold_final']:.2f}; {alarm}")
        rows.append(f"| {run['seed']} | " + " | ".join(cells) + " |")
    return rows


def markdown(results: dict) -> str:
    cfg = results["config"]
    runs = results["per_seed"]
    first = runs[0]
    f = results["findings"]["study"]
    seeds = results["seeds"]
    data = {key: float(np.mean([r["data"][key] for r in runs])) for key in runs[0]["data"]}
    out = [
        "# inform-fast demo: reward overoptimization, InfoRM and its detector",
        "",
        f"Preset `{results.get('preset', '?')}`, **{len(seeds)} seed{'s' if len(seeds) != 1 else ''}** ({', '.join(map(str, seeds))}), "
        f"device {results['environment']['device']}, runtime {results['runtime_s']:.1f} s. Every number below is the mean over the "
        f"seeds with its {CONFIDENCE:.0%} interval (Student t) in brackets, or a count of seeds. How to read this report: docs/demo.md.",
        "",
        "## What was run (per seed)",
        "",
        f"- A synthetic text world ({cfg['n_prompts']} prompts, one per topic; responses of {cfg['min_words']}"
        + (f"-{cfg['max_words']}" if cfg['max_words'] != cfg['min_words'] else "") + " words). The gold reward counts content words: "
        "on-topic +1, helpful +0.5, error -1.5, off-topic -0.5; filler words (`very really basically ...`) score 0 and take "
        f"the place of content words. {data['pool_half_filler_share']:.1%} of the pool's responses are at least half filler "
        f"(padded); the pool's correlation of gold with the filler count is {data['pool_corr_gold_filler']:.2f}.",
        (f"- {cfg['train_pairs']} training pairs from a biased Bradley-Terry annotator: utility gold + {cfg['filler_bias']:g} x filler "
         f"words, temperature {cfg['label_temperature']:g}; {data['label_against_gold']:.1%} of the labels prefer the response with "
         f"the lower gold; the chosen response has more filler in {data['train_chosen_more_filler']:.0%} of pairs, less in "
         f"{data['train_chosen_less_filler']:.0%}." if cfg["label_model"] == "bradley_terry" else
         f"- {cfg['train_pairs']} training pairs labelled by the gold reward with {cfg['label_flip']:.0%} of labels flipped, selected so "
         f"that the chosen response has more filler in {data['train_chosen_more_filler']:.0%} of them (the previous world)."),
        f"- Two reward models on a word-level tokenizer and a tiny Llama built from scratch (hidden {cfg['hidden_size']}, "
        f"{cfg['layers']} layer(s), {cfg['heads']} heads; the same initial weights for both in a seed), {cfg['steps']} AdamW steps of "
        f"{cfg['batch_size']} pairs, lr {cfg['lr']}: a **standard RM** (linear head, Bradley-Terry loss) and **InfoRM** "
        f"(InfoRMHead, latent {cfg['latent_dim']}, beta {cfg['beta']}).",
        f"- Best-of-n against each proxy over {cfg['pool_per_prompt']} candidates per prompt, n = 1 ... {first['n'][-1]}, exact "
        "(unbiased) best-of-n expectations; KL = log n - (n-1)/n. Rewards are z-scores over the pool.",
        f"- Detection: {cfg['draws']} sampled best-of-n picks per n and proxy, their InfoRM latents (mu) against "
        f"{first['reference']['size']} reference latents (random pool responses, n = 1): ICDS (DBSCAN eps from the reference set's "
        f"k-distance curve, min_samples {first['reference']['icds_min_samples']}) and MOP (alpha {first['reference']['mop_alpha']}, "
        "Ledoit-Wolf). A pick is *hacked* when its gold reward is below the reference median.",
        "",
        f"## Across seeds ({CONFIDENCE:.0%} intervals over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}; computed from the numbers below)",
        "",
        *study_lines(results),
        "",
        "## Per seed",
        "",
        *seed_table(results),
        "",
        f"## Best-of-n, mean over seeds [{CONFIDENCE:.0%} interval]",
        "",
        *curve_table(results),
        "",
        "## Figures",
        "",
        "![gold and proxy reward against KL, every seed](gold_vs_proxy.png)",
        "",
        "![ICDS, MOP and hacked fraction against KL](detection.png)",
        "",
        f"![latent map, seed {first['seed']}](latent_map.png)",
        "",
    ]
    if all("policy_search" in r for r in runs):
        ps = first["policy_search"]["config"]
        monitor = ps["monitor"]
        threshold = monitor["score_threshold"].get("mop")
        out += [
            "## Policy search: a policy that leaves the pool",
            "",
            f"{ps['population']} pool responses (spread over the prompts, none from the reference set; the same start for every "
            f"guide) are improved for {ps['rounds']} rounds: each round every response gets {ps['edits']} random one-word edits, "
            "and the edit its guide scores highest is kept if it raises that guide's score. Guides: the standard RM, InfoRM, "
            "InfoRM + IBL penalty, and the gold reward itself (the control: it cannot hack). Every "
            f"{ps['record_every']} round(s) the population's InfoRM latents go to an `OverOptimizationMonitor` (ICDS and MOP, the "
            f"same reference set; relative-jump onset threshold {monitor['onset_threshold']:g}, min_jump {monitor['min_jump']:.4g}"
            + (f", plain MOP threshold {threshold:g}" if threshold is not None else "") + "). The gold peak round is the true onset "
            "of hacking; an alarm for the control is a false alarm. The across-seed findings are in the list above.",
            "",
            *search_table(results),
            "",
            "![policy search: gold and MOP per round, every seed](policy_search.png)",
            "",
            f"Responses at the last round, seed {first['seed']} (one per guide):",
            "",
        ]
        for guide in [g for g in GUIDE_LABELS if g in first["policy_search"]]:
            out.append(f"- climbing {GUIDE_LABELS[guide]}: `{first['policy_search'][guide]['examples'][0]}`")
        out.append("")
    out += [f"Highest-proxy response of the whole pool, seed {first['seed']}:", ""]
    for name in ("standard", "inform"):
        top = first["top_proxy_response"][name]
        out.append(f"- {RM_LABELS[name]}: `{top['text']}` (gold {top['gold_raw']:.1f}, {top['filler']} filler words)")
    out.append("")
    return "\n".join(out)


def summary_text(results: dict) -> str:
    """What the command line prints: one row per seed, then the across-seed findings (plain text)."""
    n_max = results["findings"]["study"]["best_of_n"]["n_max"]
    rows = [f"{'seed':>5} | {'std gold peak -> n=' + str(n_max):>24} | {'InfoRM gold peak -> n=' + str(n_max):>27} | "
            f"{'held-out acc std/InfoRM':>23} | {'AUROC':>5}"]
    for f in results["findings"]["per_seed"]:
        b, d = f["best_of_n"], f["detection"]
        s, i = b["standard"], b["inform"]
        rows.append(f"{f['seed']:>5} | {s['value']:>9.2f} (n={s['peak_n']:<4}) -> {s['final']:>5.2f} | "
                    f"{i['value']:>12.2f} (n={i['peak_n']:<4}) -> {i['final']:>5.2f} | "
                    f"{s['heldout_accuracy']:>11.3f} / {i['heldout_accuracy']:.3f} | {_fmt(d['auroc'].get('pooled'), 2):>5}")
    rows.append("")
    rows += [line.replace("**", "") for line in study_lines(results)]
    return "\n".join(rows)
