"""``inform-fast monitor``: the overoptimization monitor run offline over saved checkpoint latents.

Given the reference (SFT) latents and the policy's latents saved at several RL steps, evaluates
ICDS and/or MOP at every step with ``OverOptimizationMonitor`` (``every=1``), applies its onset
rule and writes the monitor's ``history.json`` and ``history.png`` into ``--out-dir``.

* ``--rlhf`` takes several files; a quoted glob pattern is expanded here (sorted). The rewards file
  ``inform-fast score --output X.npy`` writes beside the latents (``X.rewards.npy``) is left out
  when ``X.npy`` is among the files, so ``--rlhf latents/step_*.npy`` takes score's outputs as they are.
* Steps come from ``--steps`` (one per file, in the order the files are given) or else from the
  last integer in each file name (``step_0200.npy`` -> 200); files are evaluated in step order.
* ``--eps auto`` picks the DBSCAN radius once, on the reference set, and uses it at every step so
  that the steps are comparable.
* Every file's shape is checked from its header (.npy, .safetensors) before the first evaluation,
  and the results are written only at the end, both files atomically: an error leaves nothing in
  ``--out-dir`` (a folder this command created is removed again).
* A reference whose latents have collapsed onto about one direction gets a note suggesting
  ``--shrinkage`` (not when it is given).
"""
from __future__ import annotations

import glob
import os
import re
import sys
import warnings


_GLOB_CHARS = set("*?[")
_SCORE_REWARDS = ".rewards.npy"
_INTEGER = re.compile(r"\d+")


def add_arguments(parser) -> None:
    parser.add_argument("--reference", required=True, help="reference (SFT) latents [m, L] (.npy / .safetensors / .pt)")
    parser.add_argument("--rlhf", required=True, nargs="+",
                        help="policy latents [n, L] at each step: several files, or a quoted glob pattern (expanded, sorted)")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="the step of each --rlhf file, in the same order (default: the last integer in each file name)")
    parser.add_argument(
        "--method", choices=["calibrated", "both", "all", "icds", "mop", "kop", "excess_icds"], default="calibrated",
        help="score(s) to watch: calibrated (default: KOP with its rank shift, and excess ICDS), both (the papers' ICDS "
             "and MOP), all, or one of them (docs/detection.md)",
    )
    parser.add_argument("--eps", default="0.5",
                        help="ICDS DBSCAN radius (> 0) or 'auto' (chosen once on the reference set); default 0.5")
    parser.add_argument("--min-samples", type=int, default=5, help="ICDS DBSCAN min_samples (default 5)")
    parser.add_argument("--alpha", type=float, default=0.01, help="MOP / KOP p-value level of an outlier (default 0.01)")
    parser.add_argument("--pvalues", choices=["empirical", "chi2"], default="empirical",
                        help="MOP p-values: empirical (default, calibrated on half the reference) or chi2")
    parser.add_argument("--k", type=int, default=10, help="KOP: distance to the k-th nearest reference latent (default 10)")
    parser.add_argument("--shrinkage", default=None, help="MOP covariance shrinkage: none (default), ledoit_wolf, or a float in [0, 1]")
    parser.add_argument("--onset-threshold", type=float, default=10.0,
                        help="onset when a score's rise exceeds this many times the mean earlier jump (default 10; falls never fire)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="also flag the onset when a watched score (ICDS/n, MOP) exceeds this value")
    parser.add_argument("--min-jump", type=float, default=None,
                        help="floor of the mean earlier jump in the onset rule (default: each score's noise floor, "
                             "see docs/detection.md): the smallest change of the score that matters")
    parser.add_argument("--key", default=None, help="tensor name inside .safetensors/.pt files (default: mu, latents, or the only one)")
    parser.add_argument("--out-dir", required=True, help="folder for history.json and history.png (created if missing)")


def expand_files(patterns) -> list:
    """The --rlhf paths: existing files as given, glob patterns expanded (sorted)."""
    files = []
    for pattern in patterns:
        if os.path.exists(pattern) or not (_GLOB_CHARS & set(pattern)):
            files.append(pattern)
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ValueError(f"--rlhf: no file matches {pattern!r}")
        files.extend(matches)
    for path in files:
        if not os.path.isfile(path):
            raise ValueError(f"--rlhf: file not found: {path}")
    return without_score_rewards(files)


def without_score_rewards(files: list) -> list:
    """``files`` less each ``X.rewards.npy`` whose ``X.npy`` is there too: the rewards that
    ``inform-fast score --output X.npy`` writes beside the latents, which a shell glob such as
    ``step_*.npy`` also matches."""
    given = {os.path.abspath(path) for path in files}
    kept = []
    for path in files:
        if path.endswith(_SCORE_REWARDS) and os.path.abspath(path[: -len(_SCORE_REWARDS)] + ".npy") in given:
            continue
        kept.append(path)
    return kept


def step_from_name(path: str) -> int:
    """The last integer in the file name (its extension left out)."""
    numbers = _INTEGER.findall(os.path.splitext(os.path.basename(path))[0])
    if not numbers:
        raise ValueError(f"--rlhf: no step number in the file name {path!r}; name files like step_0200.npy or pass --steps")
    return int(numbers[-1])


def assign_steps(files, steps=None) -> list:
    """[(step, path)] in step order; steps from ``steps`` or the file names, checked unique."""
    if steps is not None:
        if len(steps) != len(files):
            raise ValueError(f"--steps: {len(steps)} steps given for {len(files)} --rlhf files; give one step per file")
        for step in steps:
            if step < 0:
                raise ValueError(f"--steps: expected integers >= 0, got {step}")
        pairs = list(zip(steps, files))
        source = "--steps"
    else:
        pairs = [(step_from_name(path), path) for path in files]
        source = "--rlhf"
    seen = {}
    for step, path in pairs:
        if step in seen:
            raise ValueError(f"{source}: step {step} given twice ({seen[step]} and {path})")
        seen[step] = path
    return sorted(pairs, key=lambda pair: pair[0])


def header_shape(path: str, key=None):
    """The array shape from the file's header without reading the data (.npy, .safetensors), or
    None where the format has no header to read (.pt: checked when it is loaded)."""
    from inform_fast.detect.inputs import LATENT_SUFFIXES, _pick

    suffix = os.path.splitext(path)[1].lower()
    if suffix not in LATENT_SUFFIXES:
        raise ValueError(f"--rlhf: unsupported file type {suffix!r} of {path} (expected one of {LATENT_SUFFIXES})")
    try:
        if suffix == ".npy":
            import numpy as np

            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)  # reads the header only
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt") as handle:
                names = list(handle.keys())
                chosen = _pick({name: name for name in names}, key, path, "--rlhf")
                return tuple(handle.get_slice(chosen).get_shape())
    except ValueError as error:
        if str(error).startswith("--rlhf"):
            raise
        raise ValueError(f"--rlhf: could not read {path}: {error}") from error
    except Exception as error:  # a corrupt header: name the file, keep the cause
        raise ValueError(f"--rlhf: could not read {path}: {type(error).__name__}: {error}") from error
    return None


def _check_shape(path: str, shape, dim: int) -> None:
    if len(shape) != 2:
        raise ValueError(f"--rlhf: {path}: expected a 2-D [n, L] latent matrix, got shape {tuple(shape)}")
    if shape[0] == 0:
        raise ValueError(f"--rlhf: {path}: is empty (0 latents)")
    if shape[1] != dim:
        raise ValueError(f"--rlhf: {path}: latent dimension {shape[1]} does not match --reference's {dim}")


def _format_ratio(value) -> str:
    return "-" if value is None else f"{value:.3g}"


SHORT_LABELS = {"icds_normalized": "ICDS/n", "mop": "MOP", "mop_shift": "MOP shift", "kop": "KOP",
                "kop_shift": "KOP shift", "excess_icds_normalized": "excess ICDS/n", "excess_fraction": "excess share"}


def step_line(record: dict, watched) -> str:
    parts = [f"step {record['step']:>8}", f"n {record['n_latents']:>7}"]
    for metric in watched:
        parts.append(f"{SHORT_LABELS.get(metric, metric)} {record[metric]:.4g}")
    for metric in watched:
        label = "jump" if len(watched) == 1 else f"jump {SHORT_LABELS.get(metric, metric)}"
        parts.append(f"{label} {_format_ratio(record.get(f'{metric}_jump_ratio'))}")
    parts.append("ONSET" if record["onset"] else "-")
    return "  ".join(parts)


def write_outputs(monitor, out_dir: str) -> tuple:
    """history.json and history.png in ``out_dir``, both or neither; a folder made here is removed on
    error. The JSON is ``monitor.save``'s content as strict JSON (an infinite jump ratio, after a
    flat stretch with ``--min-jump 0``, is null instead of ``Infinity``)."""
    from inform_fast._io import atomic_paths, json_text, new_folders

    json_path, png_path = os.path.join(out_dir, "history.json"), os.path.join(out_dir, "history.png")
    with new_folders(out_dir, "--out-dir"), atomic_paths([json_path, png_path], "--out-dir") as (json_temp, png_temp):
        with open(json_temp, "w") as handle:
            handle.write(json_text(monitor.to_dict()))
        monitor.plot(png_temp)
    return json_path, png_path


def collapse_note(monitor, shrinkage) -> str:
    """A note when the reference latents use about one direction and MOP runs without shrinkage
    (the monitor's own warning names its Python keyword; this names the option), else ''."""
    from inform_fast.detect.monitor import COLLAPSED_RATIO

    spectrum = monitor.reference_spectrum
    dim = monitor.reference.shape[1]
    if spectrum is None or shrinkage is not None or dim < 4 or not spectrum["participation_ratio"] < COLLAPSED_RATIO:
        return ""
    return (f"note: the reference latents use about {spectrum['participation_ratio']:.1f} of their {dim} directions "
            f"({spectrum['top_share']:.0%} of the variance on the top one): MOP then mixes noise from the squeezed "
            "directions with how far responses go along that one; consider --shrinkage 0.1 and --method both "
            "(docs/detection.md)")


def run(args) -> int:
    from tqdm.auto import tqdm

    from inform_fast.cli.icds import parse_eps
    from inform_fast.detect.dbscan import check_eps
    from inform_fast.detect.inputs import container_key, load_latents
    from inform_fast.detect.mahalanobis import _check_shrinkage
    from inform_fast.detect.monitor import OverOptimizationMonitor
    from inform_fast.detect.mop import check_alpha
    from inform_fast.validation import check_positive_int, check_real

    # ---- arguments, before any file is read
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise ValueError(f"--out-dir: {args.out_dir} exists and is not a folder")
    from inform_fast.detect.monitor import METHOD_GROUPS

    methods = METHOD_GROUPS.get(args.method, (args.method,))
    uses_icds, uses_mop, uses_kop = "icds" in methods, "mop" in methods, "kop" in methods
    # the library's checks, run before any file is read; their errors name eps:, alpha:, ...,
    # which inform_fast.cli reports as --eps:, --alpha:, ...
    eps = parse_eps(args.eps)
    if uses_icds and eps != "auto":
        check_eps(eps)
    check_positive_int("min_samples", args.min_samples)
    check_real("onset_threshold", args.onset_threshold, minimum=0, open_minimum=True)
    if args.min_jump is not None:
        check_real("min_jump", args.min_jump, minimum=0)
    check_alpha(args.alpha)
    shrinkage = _check_shrinkage(args.shrinkage)
    pairs = assign_steps(expand_files(args.rlhf), args.steps)

    # ---- inputs: the reference, then every file's header
    reference = load_latents(args.reference, key=container_key(args.reference, args.key), name="--reference")
    dim = int(reference.shape[1])
    for _, path in pairs:
        shape = header_shape(path, container_key(path, args.key))
        if shape is not None:
            _check_shape(path, shape, dim)

    icds_kwargs = {}
    if uses_icds:
        if eps == "auto":
            from inform_fast.detect.icds import auto_eps

            eps = auto_eps(reference, min_samples=args.min_samples, name="--reference")
            print(f"eps auto: {eps:.6g} (chosen once on the {reference.shape[0]} reference latents, used at every step)")
        icds_kwargs = {"eps": float(eps), "min_samples": args.min_samples}
    with warnings.catch_warnings():
        # the library's collapse warning names its keyword (mop_kwargs=...): collapse_note names the option
        warnings.filterwarnings("ignore", message="reference_latents use about")
        monitor = OverOptimizationMonitor(
            reference,
            every=1,
            method=args.method,
            icds_kwargs=icds_kwargs,
            mop_kwargs={"alpha": args.alpha, "shrinkage": shrinkage, "pvalues": args.pvalues} if uses_mop else {},
            kop_kwargs={"alpha": args.alpha, "k": args.k} if uses_kop else {},
            onset_threshold=args.onset_threshold,
            score_threshold=args.score_threshold,
            min_jump=args.min_jump,
        )
    note = collapse_note(monitor, shrinkage)
    if note:
        print(note, file=sys.stderr)

    # ---- evaluation, in memory; nothing is written until every step is done
    with tqdm(total=len(pairs), desc="monitor", unit="step", disable=None, leave=False, file=sys.stderr) as bar:
        for step, path in pairs:
            latents = load_latents(path, key=container_key(path, args.key), name="--rlhf")
            _check_shape(path, tuple(latents.shape), dim)
            record = monitor.update(step, latents)
            record["file"] = os.path.abspath(path)
            bar.write(step_line(record, monitor.watched), file=sys.stdout)
            bar.update(1)

    json_path, png_path = write_outputs(monitor, args.out_dir)
    if monitor.onset_step is not None:
        print(f"onset: step {monitor.onset_step} ({monitor.onset_reason})")
    else:
        print(f"no onset in {len(pairs)} steps")
    print(f"wrote {json_path} and {png_path}")
    return 0
