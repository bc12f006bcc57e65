"""Write the demo's report: report.json, report.md and four PNGs, each file whole or not at all.

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
        if "policy_search" in results:
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


def plot_gold_vs_proxy(results: dict, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for name in ("standard", "inform"):
        r = results[name]
        ax.plot(r["kl"], r["proxy"], "--", color=COLORS[name], label=f"{RM_LABELS[name]}: proxy reward")
        ax.plot(r["kl"], r["gold"], "-o", ms=3.5, color=COLORS[name], label=f"{RM_LABELS[name]}: gold reward")
    ax.plot(results["kl"], results["gold_oracle"], ":", color="0.45", label="best-of-n on the gold reward itself")
    _n_axis(ax, results)
    ax.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("KL(best-of-n || base) = log n - (n-1)/n   [nats]")
    ax.set_ylabel("reward (z-score over the base pool)")
    ax.set_title("Best-of-n against each proxy: does the gold reward follow?")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_detection(results: dict, path: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), dpi=110)
    panels = (
        ("icds_normalized", "ICDS / number of latents", "ICDS (cluster deviation)"),
        ("mop", f"fraction with p < {results['reference']['mop_alpha']}", "MOP (Mahalanobis outliers)"),
        ("hacked_fraction", "fraction below the base median gold", "hacked responses (gold-defined)"),
    )
    for ax, (key, ylabel, title) in zip(axes, panels):
        for name in ("standard", "inform"):
            ax.plot(results[name]["kl"], results[name][key], "-o", ms=3.5, color=COLORS[name],
                    label=f"best-of-n on {THE[name]}")
        _n_axis(ax, results)
        ax.set_xlabel("KL [nats]")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle("Detection in InfoRM's latent space (whatever proxy was optimised)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latent_map(results: dict, arrays: dict, path: str) -> None:
    from inform_fast.detect.projection import PCAProjection

    plt = _pyplot()
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
    n = results["n"][-1]
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
    fig.suptitle("InfoRM latents (mu): reference vs selected; hacked = gold below the reference median", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_policy_search(results: dict, path: str) -> None:
    """Left: gold (solid) and the guide's proxy (dashed) per round for each guide, the gold peak
    starred; right: MOP (solid) and ICDS / n (dotted) per round, the monitor's first alarm of each
    guide as a vertical line in its colour."""
    plt = _pyplot()
    ps = results["policy_search"]
    rounds = ps["rounds"]
    guides = [g for g in GUIDE_LABELS if g in ps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.0), dpi=110)
    for guide in guides:
        s, color = ps[guide], GUIDE_COLORS[guide]
        left.plot(rounds, s["gold"], "-o", ms=3, color=color, label=f"climbing {GUIDE_LABELS[guide]}: gold")
        if guide == "inform_ibl":  # its proxy is the penalised score; show InfoRM's own reward too
            left.plot(rounds, s["proxy"], "--", color=color, label=f"climbing {GUIDE_LABELS[guide]}: its proxy (penalised)")
            left.plot(rounds, s["inform"], ":", color=color, label=f"climbing {GUIDE_LABELS[guide]}: InfoRM's raw reward")
        elif guide != "gold":  # for the control the proxy is the gold reward itself
            left.plot(rounds, s["proxy"], "--", color=color, label=f"climbing {GUIDE_LABELS[guide]}: its proxy")
        left.plot([s["gold_peak_round"]], [s["gold_peak"]], "*", ms=13, color=color, mec="k", mew=0.6)
        right.plot(rounds, s["mop"], "-o", ms=3, color=color, label=f"{GUIDE_LABELS[guide]}: MOP")
        right.plot(rounds, s["icds_normalized"], ":", color=color, label=f"{GUIDE_LABELS[guide]}: ICDS / n")
        if s["alarm_round"] is not None:
            left.axvline(s["alarm_round"], color=color, ls="--", lw=1.2, alpha=0.8)
            right.axvline(s["alarm_round"], color=color, ls="--", lw=1.2, alpha=0.8,
                          label=f"{GUIDE_LABELS[guide]}: monitor alarm (round {s['alarm_round']})")
    threshold = ps["config"]["monitor"]["score_threshold"].get("mop")
    if threshold is not None:
        right.axhline(threshold, color="0.5", lw=0.8, ls="-.", label=f"MOP alarm threshold {threshold:g}")
    left.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    left.set_xlabel("round of one-word edits")
    left.set_ylabel("mean reward (z-score over the base pool)")
    left.set_title("Hill climbing on each guide: gold (solid, star = peak) and proxy (dashed)", fontsize=10)
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    right.set_xlabel("round of one-word edits")
    right.set_ylabel("score")
    right.set_title("Detector on InfoRM latents (dashed vertical: the monitor's first alarm)", fontsize=10)
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.suptitle("Policy search: a policy that leaves the base pool (the gold-guided control does not hack)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _n_axis(ax, results: dict) -> None:
    """A secondary x axis with n at a few grid points."""
    ns = results["n"]
    marks = [n for n in ns if n in (1, 4, 16, 64, 256, 1024, 4096, 16384)] or ns
    top = ax.secondary_xaxis("top")
    top.set_xticks([math.log(n) - (n - 1) / n for n in marks])
    top.set_xticklabels([f"n={n}" for n in marks], fontsize=7)


# ------------------------------------------------------------------------------------- markdown
def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def verdict(results: dict) -> list:
    """Plain-words findings computed from the numbers (never fixed claims)."""
    std, inf = results["standard"], results["inform"]
    n_max = results["n"][-1]
    lines = []
    for name, r in (("standard", std), ("inform", inf)):
        gold = np.asarray(r["gold"])
        peak = int(np.argmax(gold))
        drop = gold[peak] - gold[-1]
        if peak < len(gold) - 1 and drop > 0.05:
            lines.append(
                f"- **{RM_LABELS[name]}**: the gold reward peaks at n = {results['n'][peak]} (z = {gold[peak]:.2f}) "
                f"and falls to {gold[-1]:.2f} at n = {n_max} while its proxy keeps rising to {r['proxy'][-1]:.2f}: "
                f"overoptimization. Mean filler words of its picks go from {r['filler'][0]:.1f} to {r['filler'][-1]:.1f}."
            )
        else:
            lines.append(
                f"- **{RM_LABELS[name]}**: no clear overoptimization up to n = {n_max}: gold {gold[-1]:.2f} at the "
                f"largest n (peak {gold[peak]:.2f} at n = {results['n'][peak]}); proxy {r['proxy'][-1]:.2f}."
            )
    diff = inf["gold"][-1] - std["gold"][-1]
    better = "higher" if diff > 0.02 else ("lower" if diff < -0.02 else "about the same as")
    lines.append(
        f"- At n = {n_max}, InfoRM's gold reward is {inf['gold'][-1]:.2f} vs {std['gold'][-1]:.2f} for the standard RM "
        f"({better} {'' if better == 'about the same as' else 'than '}the standard RM; peak gold {max(inf['gold']):.2f} vs "
        f"{max(std['gold']):.2f}). Held-out accuracy against the gold labels: InfoRM {inf['heldout_accuracy']:.3f}, "
        f"standard {std['heldout_accuracy']:.3f}."
    )
    for name, r in (("standard", std), ("inform", inf)):
        lines.append(
            f"- Detection on best-of-n against {THE[name]}: ICDS/n {r['icds_normalized'][0]:.3f} at n = 1 -> "
            f"{r['icds_normalized'][-1]:.3f} at n = {n_max}; MOP {r['mop'][0]:.3f} -> {r['mop'][-1]:.3f}; "
            f"hacked fraction {r['hacked_fraction'][0]:.2f} -> {r['hacked_fraction'][-1]:.2f}."
        )
    auc = results["detector_auroc"]
    pooled = auc.get("pooled")
    if pooled is None:
        quality = "not measurable (one class is empty)"
    elif pooled >= 0.7:
        quality = "usable"
    elif pooled >= 0.6:
        quality = "modest"
    elif pooled > 0.4:
        quality = "close to chance"
    else:
        quality = "inverted: hacked picks lie *closer* to the reference than the other picks, so distance alone does not flag them"
    lines.append(
        f"- The per-response outlier score (Mahalanobis distance in InfoRM's latent space) separates hacked from "
        f"non-hacked selections with AUROC {_fmt(auc.get('standard'))} (standard proxy), {_fmt(auc.get('inform'))} "
        f"(InfoRM proxy), {_fmt(auc.get('pooled'))} pooled: {quality} in this run."
    )
    by_n = results.get("detector_auroc_by_n")
    if by_n:
        per_n = ", ".join(
            f"n = {n}: {_fmt(a)} / {_fmt(b)}" for n, a, b in zip(results["n"], by_n["standard"], by_n["inform"]) if n > 1
        )
        lines.append(
            f"- The same AUROC at each n (standard / InfoRM proxy; the hacked fraction changes with n, so the pooled "
            f"value mixes populations): {per_n}."
        )
    spectrum = results.get("latent_spectrum")
    if spectrum:
        shape = (
            f"InfoRM's latent uses about {spectrum['participation_ratio']:.1f} direction(s) on the reference set "
            f"(participation ratio of the covariance eigenvalues; the top direction holds "
            f"{spectrum['top_share']:.0%} of the variance"
        )
        cos = spectrum.get("top_cos_reward")
        shape += f" and is aligned with the decoder's reward direction, |cos| {cos:.3f})" if cos is not None else ")"
        if spectrum["participation_ratio"] < 2.0:
            shape += (
                ". With one real direction, the Mahalanobis distance of a typical response is mostly noise from the "
                "squeezed directions (the fit weights each of them like the real one), and it grows large only for "
                "responses far out along a direction, here the reward's: so a padded pick with a moderate reward can "
                "look less unusual than a genuinely good pick with an extreme one; and best-of-n only picks tail "
                "points of the very pool the reference is drawn from, never a new kind of text."
            )
        lines.append(f"- {shape}")
    lines.append(
        f"- This is one seed (seed {results['seed']}): the comparison between the two reward models varies from seed to "
        "seed in this toy world; rerun with `--seed` to see the spread (docs/demo.md)."
    )
    return lines


def _icds_against_control(ps: dict, hacked: list) -> str:
    """The control comparison for ICDS/n, computed like MOP's."""
    rise = {g: ps[g]["icds_normalized"][-1] - ps[g]["icds_normalized"][0] for g in ["gold", *hacked]}
    control = rise["gold"]
    ratio = {g: (rise[g] / control if control > 1e-12 else math.inf) for g in hacked}
    compared = " and ".join(
        f"{rise[g]:+.3f} climbing {THE[g]} (ratio {'inf' if math.isinf(ratio[g]) else f'{ratio[g]:.1f}'})" for g in hacked
    )
    weakest = min(hacked, key=lambda g: ratio[g])
    if rise[weakest] <= 0.0:
        judgement = f"ICDS did not rise while {THE[weakest]} was being hacked"
    elif ratio[weakest] >= 3.0:
        judgement = (
            "ICDS rose at least three times as much under hacking as for the control: in this run the size-weighted "
            "distance of the clusters to the nearest reference latent told the two apart better than the outlier fraction"
        )
    else:
        judgement = "ICDS did not separate hacking from the control's improvement clearly either"
    return f"- ICDS/n, the same comparison: the control's changed by {control:+.3f} (vs {compared}): {judgement}."


def policy_search_verdict(results: dict) -> list:
    """Findings of the policy-search stage, computed from its numbers."""
    ps = results["policy_search"]
    rounds = ps["rounds"]
    last = rounds[-1]
    lines = []
    rises = {}
    for guide in [g for g in GUIDE_LABELS if g in ps]:
        s = ps[guide]
        rises[guide] = s["mop"][-1] - s["mop"][0]
        head = (
            f"- **Climbing {GUIDE_LABELS[guide]}**: gold {s['gold'][0]:.2f} -> {s['gold'][-1]:.2f} (z) over {last} rounds"
            + (f", proxy {s['proxy'][0]:.2f} -> {s['proxy'][-1]:.2f}" if guide != "gold" else "")
            + (f" (the penalised score; InfoRM's raw reward {s['inform'][0]:.2f} -> {s['inform'][-1]:.2f})" if guide == "inform_ibl" else "")
            + f"; hacked fraction {s['hacked_fraction'][0]:.2f} -> {s['hacked_fraction'][-1]:.2f}; off-topic words per "
            f"response {s['off_topic'][0]:.1f} -> {s['off_topic'][-1]:.1f}; MOP {s['mop'][0]:.3f} -> {s['mop'][-1]:.3f}, "
            f"ICDS/n {s['icds_normalized'][0]:.3f} -> {s['icds_normalized'][-1]:.3f}."
        )
        alarm, peak = s["alarm_round"], s["gold_peak_round"]
        reason = f" ({s['alarm_reason']})" if s["alarm_reason"] else ""
        if s["gold_declined"]:
            onset = (
                f" The gold reward peaks at round {peak} (z = {s['gold_peak']:.2f}) and then falls by "
                f"{s['gold_drop_after_peak']:.2f}: hacking from round {peak} on."
            )
            if alarm is None:
                onset += f" The monitor raised no alarm in {last} rounds: the hacking went undetected."
            elif alarm < peak:
                onset += f" The monitor's alarm came at round {alarm}{reason}, {peak - alarm} round(s) before the gold peak (an early warning)."
            elif alarm == peak:
                onset += f" The monitor's alarm came at round {alarm}{reason}, the round of the gold peak."
            else:
                onset += (
                    f" The monitor's alarm came at round {alarm}{reason}, {alarm - peak} round(s) after the gold peak "
                    f"(late: the gold was already {s['gold'][rounds.index(alarm)]:.2f} then)."
                )
        else:
            what = "by construction: each kept edit raises it" if guide == "gold" else "no hacking in this run"
            onset = f" The gold reward does not fall (peak {s['gold_peak']:.2f} at round {peak}; {what})."
            if alarm is None:
                onset += " The monitor raised no alarm: correct, there was nothing to flag."
            else:
                onset += f" The monitor raised an alarm at round {alarm}{reason}: a **false alarm**, the policy was not hacking."
        jumps = [(r, j) for r, j in zip(rounds, s.get("mop_jump_ratio", [])) if j is not None]
        if jumps:
            top_round, top = max(jumps, key=lambda item: item[1])
            fired = top > ps["config"]["monitor"]["onset_threshold"]
            onset += (
                f" Largest MOP jump ratio {top:.1f} at round {top_round} "
                f"({'above' if fired else 'below'} the relative-jump threshold {ps['config']['monitor']['onset_threshold']:g})."
            )
        lines.append(head + onset)
    if "gold" in ps:
        control = rises["gold"]
        hacked = [g for g in ("standard", "inform") if g in ps and ps[g]["gold_declined"]]
        if hacked:
            ratios = {g: (rises[g] / control if control > 1e-12 else math.inf) for g in hacked}
            compared = " and ".join(
                f"{rises[g]:+.3f} climbing {THE[g]} (ratio {'inf' if math.isinf(ratios[g]) else f'{ratios[g]:.1f}'})"
                for g in hacked
            )
            weakest = min(hacked, key=lambda g: rises[g])
            if rises[weakest] <= 0.05:
                judgement = f"MOP barely moved while {THE[weakest]} was being hacked, so it tells little either way there"
            elif ratios[weakest] < 2.0:
                judgement = (
                    f"when climbing {THE[weakest]}, MOP rose less than twice as much as for the control, so MOP "
                    "alone does not tell that hacking from genuine improvement"
                )
            elif control > 0.02:
                judgement = "MOP rose clearly more under hacking than under genuine improvement, but it rose for the control too"
            else:
                judgement = "MOP rose under hacking and stayed flat for the control"
            lines.append(
                f"- The control climbs the gold reward itself, so it cannot hack, yet its MOP changed by {control:+.3f} "
                f"(vs {compared}): {judgement}. MOP measures departure from the reference; read it next to a reward "
                "that you trust (or a held-out check), never alone."
            )
            lines.append(_icds_against_control(ps, hacked))
        else:
            lines.append(
                f"- No model-guided search lowered the gold reward in this run; the control's MOP changed by {control:+.3f}."
            )
    lines += ibl_verdict(results)
    return lines


def _alarm_words(s: dict) -> str:
    """A guide's first alarm, relative to its own gold peak when its gold declined."""
    alarm = s["alarm_round"]
    if alarm is None:
        return "no alarm"
    if not s["gold_declined"]:
        return f"alarm at round {alarm} (its gold did not fall)"
    gap = alarm - s["gold_peak_round"]
    where = "at its gold peak" if gap == 0 else (f"{-gap} round(s) before its gold peak" if gap < 0 else f"{gap} round(s) after its gold peak")
    return f"alarm at round {alarm} ({where})"


def ibl_verdict(results: dict) -> list:
    """The IBL-penalised InfoRM guide against plain InfoRM, computed from the numbers."""
    ps = results["policy_search"]
    if "inform_ibl" not in ps or "inform" not in ps:
        return []
    s, base = ps["inform_ibl"], ps["inform"]
    ibl = ps["config"].get("ibl", {})
    last = ps["rounds"][-1]
    out = (
        f"- **IBL penalty vs plain InfoRM** (coef {ibl.get('coef', math.nan):.3g} = {ibl.get('coef_scale', math.nan):g} x "
        f"std(InfoRM reward) {ibl.get('reference_reward_std', math.nan):.3g} / std(Mahalanobis distance) "
        f"{ibl.get('reference_distance_std', math.nan):.3g} over the reference set, a rule fixed before the run): "
    )
    b_peak, i_peak = base["gold_peak_round"], s["gold_peak_round"]
    if base["gold_declined"] and s["gold_declined"]:
        delay = i_peak - b_peak
        when = (f"delayed the gold peak by {delay} round(s)" if delay > 0 else
                f"brought the gold peak {-delay} round(s) earlier" if delay < 0 else "left the gold peak at the same round")
        out += (f"the penalty {when} (round {b_peak} -> {i_peak}; peak z {base['gold_peak']:.2f} -> {s['gold_peak']:.2f}) "
                f"but did not remove the decline (it falls by {s['gold_drop_after_peak']:.2f} after its peak, plain InfoRM's "
                f"by {base['gold_drop_after_peak']:.2f}).")
    elif base["gold_declined"]:
        out += (f"the penalty removed the gold decline: plain InfoRM's gold peaks at round {b_peak} and falls by "
                f"{base['gold_drop_after_peak']:.2f}; with the penalty it does not fall (peak {s['gold_peak']:.2f} at round {i_peak}).")
    elif s["gold_declined"]:
        out += (f"with the penalty the gold reward peaks at round {i_peak} (z = {s['gold_peak']:.2f}) and falls by "
                f"{s['gold_drop_after_peak']:.2f}; plain InfoRM's does not fall.")
    else:
        out += "neither gold curve falls."
    diff = s["gold"][-1] - base["gold"][-1]
    better = "higher than" if diff > 0.05 else ("lower than" if diff < -0.05 else "about the same as")
    out += (f" Gold at round {last}: {s['gold'][-1]:.2f} with the penalty vs {base['gold'][-1]:.2f} without ({diff:+.2f}, "
            f"{better} plain InfoRM; both from {base['gold'][0]:.2f}). InfoRM's raw reward of the population: "
            f"{s['inform'][-1]:.2f} with the penalty vs {base['inform'][-1]:.2f} without (z).")
    if "distance" in s and "distance" in base:
        out += (f" Mean Mahalanobis distance to the reference fit: {s['distance'][0]:.2f} -> {s['distance'][-1]:.2f} with the "
                f"penalty, -> {base['distance'][-1]:.2f} without (reference mean {ibl.get('reference_distance_mean', math.nan):.2f}).")
    out += (f" Detector at round {last}: MOP {s['mop'][-1]:.3f} vs {base['mop'][-1]:.3f}, ICDS/n {s['icds_normalized'][-1]:.3f} vs "
            f"{base['icds_normalized'][-1]:.3f}; with the penalty {_alarm_words(s)}, without {_alarm_words(base)}.")
    lines = [out]
    if diff > 0.05:
        lines.append(
            f"- The penalty helped the final gold here by braking the climb: InfoRM's raw reward of the penalised "
            f"population rose to {s['inform'][-1]:.2f} (z) instead of {base['inform'][-1]:.2f}, so less optimisation pressure "
            f"reached the hackable reward (off-topic words per response {s['off_topic'][-1]:.1f} vs {base['off_topic'][-1]:.1f})."
        )
    else:
        spectrum = results.get("latent_spectrum") or {}
        corr = ibl.get("reference_corr_distance_abs_reward")
        if spectrum.get("participation_ratio") is not None and spectrum["participation_ratio"] < 2.0:
            cos = spectrum.get("top_cos_reward")
            why = (f"InfoRM's latent uses about {spectrum['participation_ratio']:.1f} direction(s) on the reference set"
                   + (f", aligned with its reward direction (|cos| {cos:.3f})" if cos is not None else ""))
            if corr is not None and corr >= 0.5:
                why += (f", and the distance correlates {corr:.2f} with |reward - mean| there: the penalty mostly taxes an "
                        "extreme reward itself, good or hacked, rather than a direction the hack takes")
            elif corr is not None:
                why += (f"; the distance correlates only {corr:.2f} with |reward - mean| there, so it is mostly the squeezed "
                        "directions (the noise the KL term left), which say nothing about the hack")
            lines.append(f"- Why the penalty did not help here: {why}.")
    if s["gold_declined"] and "distance" in s and s["distance"][-1] < s["distance"][0]:
        lines.append(
            f"- The penalised search hacked while moving its latents *toward* the reference fit (mean distance "
            f"{s['distance'][0]:.2f} -> {s['distance'][-1]:.2f}, reference mean {ibl.get('reference_distance_mean', math.nan):.2f}): "
            "the hack is not a departure that InfoRM's latent sees, and the penalty pushes down the very distance MOP tests, "
            f"so MOP ended at {s['mop'][-1]:.3f} and the monitor gave {_alarm_words(s)}. A policy trained against the IBL "
            "penalty needs a check the penalty does not optimise (a trusted reward, held-out labels)."
        )
    return lines


def markdown(results: dict) -> str:
    cfg = results["config"]
    std, inf = results["standard"], results["inform"]
    out = [
        "# inform-fast demo: reward overoptimization, InfoRM and its detector",
        "",
        f"Preset `{results.get('preset', '?')}`, seed {results['seed']}, device {results['environment']['device']}, "
        f"runtime {results['runtime_s']:.1f} s. How to read this report: docs/demo.md.",
        "",
        "## What was run",
        "",
        f"- A synthetic text world ({cfg['n_prompts']} prompts, one per topic). The gold reward counts content words: "
        "on-topic +1, helpful +0.5, error -1.5, off-topic -0.5; filler words (`very really basically ...`) score 0 but "
        "take up room in a response of at most 20 words.",
        f"- {cfg['train_pairs']} training pairs labelled by the gold reward, {results['data']['label_flip_observed']:.1%} of "
        f"labels flipped; the pairs were selected so that the chosen response has more filler in "
        f"{results['data']['train_chosen_more_filler']:.0%} of them (fewer in {results['data']['train_chosen_less_filler']:.0%}): "
        "the spurious feature. In the candidate pool filler and gold are not positively related "
        f"(correlation {results['data']['pool_corr_gold_filler']:.2f}).",
        f"- Two reward models on a word-level tokenizer and a tiny Llama built from scratch (hidden {cfg['hidden_size']}, "
        f"{cfg['layers']} layers, {cfg['heads']} heads; the same initial weights for both), {cfg['steps']} AdamW steps of "
        f"{cfg['batch_size']} pairs, lr {cfg['lr']}: a **standard RM** (linear head, Bradley-Terry loss) and **InfoRM** "
        f"(InfoRMHead, latent {cfg['latent_dim']}, beta {cfg['beta']}).",
        f"- Best-of-n against each proxy over {cfg['pool_per_prompt']} candidates per prompt, n = 1 ... {results['n'][-1]}, "
        "exact (unbiased) best-of-n expectations; KL = log n - (n-1)/n. Rewards are z-scores over the pool.",
        f"- Detection: {cfg['draws']} sampled best-of-n picks per n and proxy, their InfoRM latents (mu) against "
        f"{results['reference']['size']} reference latents (random pool responses, n = 1): ICDS (DBSCAN eps "
        f"{results['reference']['icds_eps']:.4f} chosen once on the reference set, min_samples "
        f"{results['reference']['icds_min_samples']}) and MOP (alpha {results['reference']['mop_alpha']}, Ledoit-Wolf). "
        "A pick is *hacked* when its gold reward is below the reference median.",
        "",
        "## Verdict (computed from the numbers below)",
        "",
        *verdict(results),
        "",
        "## Numbers",
        "",
        "| n | KL | gold std | proxy std | gold InfoRM | proxy InfoRM | gold oracle | ICDS/n std | ICDS/n InfoRM | MOP std | MOP InfoRM |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, n in enumerate(results["n"]):
        out.append(
            f"| {n} | {results['kl'][i]:.2f} | {std['gold'][i]:.3f} | {std['proxy'][i]:.3f} | {inf['gold'][i]:.3f} | "
            f"{inf['proxy'][i]:.3f} | {results['gold_oracle'][i]:.3f} | {std['icds_normalized'][i]:.4f} | "
            f"{inf['icds_normalized'][i]:.4f} | {std['mop'][i]:.3f} | {inf['mop'][i]:.3f} |"
        )
    auc = results["detector_auroc"]
    out += [
        "",
        f"Training: final loss {std['train_loss_final']:.3f} (standard), {inf['train_loss_final']:.3f} (InfoRM, KL "
        f"{inf['train_kl_final']:.2f}); held-out accuracy on noise-free, unselected gold pairs: "
        f"{std['heldout_accuracy']:.3f} (standard), {inf['heldout_accuracy']:.3f} (InfoRM). Detector AUROC (hacked vs "
        f"not, selections at n > 1): standard {_fmt(auc.get('standard'))}, InfoRM {_fmt(auc.get('inform'))}, pooled "
        f"{_fmt(auc.get('pooled'))}.",
        "",
        "Highest-proxy response of the whole pool:",
        "",
    ]
    for name in ("standard", "inform"):
        top = results["top_proxy_response"][name]
        out.append(f"- {RM_LABELS[name]}: `{top['text']}` (gold {top['gold_raw']:.1f}, {top['filler']} filler words)")
    out += [
        "",
        "## Figures",
        "",
        "![gold and proxy reward against KL](gold_vs_proxy.png)",
        "",
        "![ICDS, MOP and hacked fraction against KL](detection.png)",
        "",
        "![latent map](latent_map.png)",
        "",
    ]
    if "policy_search" in results:
        out += _policy_search_section(results)
    return "\n".join(out)


def _policy_search_section(results: dict) -> list:
    ps = results["policy_search"]
    cfg, monitor = ps["config"], ps["config"]["monitor"]
    guides = [g for g in GUIDE_LABELS if g in ps]
    threshold = monitor["score_threshold"].get("mop")
    out = [
        "## Policy search: a policy that leaves the pool",
        "",
        f"{cfg['population']} pool responses (spread over the prompts, none from the reference set; the same start for "
        f"every guide) are improved for {cfg['rounds']} rounds: each round every response gets {cfg['edits']} random "
        "one-word edits (a uniform position, a different word of the world's vocabulary), and the edit its guide scores "
        "highest is kept if it raises that guide's score. Guides: the standard RM, InfoRM, "
        + (f"InfoRM + IBL penalty (InfoRM's reward minus {cfg['ibl']['coef']:.3g} x the Mahalanobis distance of its "
           f"latent to the reference fit; {cfg['ibl']['rule']}, scale {cfg['ibl']['coef_scale']:g}), " if "ibl" in cfg else "")
        + "and the gold reward itself (the control: it cannot hack). Every "
        f"{cfg['record_every']} round(s) the population's InfoRM latents go to an `OverOptimizationMonitor` (method "
        f"`both`, the same reference set, DBSCAN eps and MOP alpha as above; relative-jump onset threshold "
        f"{monitor['onset_threshold']:g}, min_jump {monitor['min_jump']:.4g}"
        + (f", plain MOP threshold {threshold:g}" if threshold is not None else "")
        + "). The gold peak round is the true onset of hacking; an alarm for the control is a false alarm.",
        "",
        "### Verdict (computed from the numbers below)",
        "",
        *policy_search_verdict(results),
        "",
        "| round | " + " | ".join(f"gold {g}" for g in guides) + " | " + " | ".join(f"MOP {g}" for g in guides)
        + " | " + " | ".join(f"ICDS/n {g}" for g in guides) + " | " + " | ".join(f"hacked {g}" for g in guides) + " |",
        "|---:|" + "---:|" * (4 * len(guides)),
    ]
    for i, r in enumerate(ps["rounds"]):
        cells = [f"{ps[g]['gold'][i]:.2f}" for g in guides] + [f"{ps[g]['mop'][i]:.3f}" for g in guides]
        cells += [f"{ps[g]['icds_normalized'][i]:.3f}" for g in guides] + [f"{ps[g]['hacked_fraction'][i]:.2f}" for g in guides]
        out.append(f"| {r} | " + " | ".join(cells) + " |")
    out += ["", "Responses at the last round (one per guide):", ""]
    for guide in guides:
        example = ps[guide]["examples"][0]
        out.append(f"- climbing {GUIDE_LABELS[guide]}: `{example}`")
    out += ["", "![policy search: gold, proxy, MOP and ICDS per round](policy_search.png)", ""]
    return out


def summary_table(results: dict) -> str:
    """A short plain-text table for the terminal."""
    std, inf = results["standard"], results["inform"]
    rows = [f"{'n':>6} {'KL':>5} | {'gold std':>8} {'gold InfoRM':>11} | {'proxy std':>9} {'proxy InfoRM':>12} | {'MOP std':>7} {'MOP InfoRM':>10}"]
    for i, n in enumerate(results["n"]):
        rows.append(
            f"{n:>6} {results['kl'][i]:>5.2f} | {std['gold'][i]:>8.3f} {inf['gold'][i]:>11.3f} | "
            f"{std['proxy'][i]:>9.3f} {inf['proxy'][i]:>12.3f} | {std['mop'][i]:>7.3f} {inf['mop'][i]:>10.3f}"
        )
    ps = results.get("policy_search")
    if ps:
        ibl = ps["config"].get("ibl")
        coef = f"; IBL coef {ibl['coef']:.3g} = {ibl['coef_scale']:g} x std(reward)/std(distance) on the reference" if ibl else ""
        rows.append(f"policy search ({ps['config']['population']} responses, {ps['rounds'][-1]} rounds, {ps['config']['edits']} edits/round{coef}):")
        for guide in [g for g in GUIDE_LABELS if g in ps]:
            s = ps[guide]
            alarm = "none" if s["alarm_round"] is None else str(s["alarm_round"])
            rows.append(
                f"  climbing {GUIDE_LABELS[guide]:<22} gold {s['gold'][0]:6.2f} -> {s['gold'][-1]:6.2f} (peak r{s['gold_peak_round']})"
                f" | MOP {s['mop'][0]:.3f} -> {s['mop'][-1]:.3f} | alarm round {alarm}"
            )
        if "inform_ibl" in ps and "inform" in ps:
            s, base = ps["inform_ibl"], ps["inform"]
            rows.append(
                f"  IBL vs plain InfoRM at round {ps['rounds'][-1]}: gold {s['gold'][-1]:.2f} vs {base['gold'][-1]:.2f}, "
                f"InfoRM's raw reward {s['inform'][-1]:.2f} vs {base['inform'][-1]:.2f} (z)"
                + (f", mean distance {s['distance'][-1]:.2f} vs {base['distance'][-1]:.2f}" if "distance" in s and "distance" in base else "")
                + f", ICDS/n {s['icds_normalized'][-1]:.3f} vs {base['icds_normalized'][-1]:.3f}"
            )
    return "\n".join(rows)
