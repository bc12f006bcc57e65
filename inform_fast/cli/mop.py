"""``inform-fast mop``: Mahalanobis outlier probability of RLHF latents against reference latents."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--rlhf", required=True, help="RLHF-policy latents [n, L] (.npy / .safetensors / .pt)")
    parser.add_argument("--reference", required=True, help="reference (SFT-policy) latents [m, L]")
    parser.add_argument("--alpha", type=float, default=0.01, help="p-value level of an outlier (default 0.01)")
    parser.add_argument(
        "--pvalues", choices=["empirical", "chi2"], default="empirical",
        help="empirical (default): calibrated on a held-out part of --reference, false-alarm rate alpha whatever the "
             "latent distribution; chi2: the paper's Gaussian p-values (too many false alarms on non-Gaussian latents)",
    )
    parser.add_argument("--calibration-fraction", type=float, default=0.5,
                        help="share of --reference held out to calibrate empirical p-values (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit/calibration split (default 0)")
    parser.add_argument("--shrinkage", default=None, help="none (default), ledoit_wolf, or a float in [0, 1]")
    parser.add_argument("--eps", type=float, default=1e-6, help="added to the covariance diagonal (default 1e-6)")
    parser.add_argument("--key", default=None, help="tensor name inside .safetensors/.pt files, both inputs (default: mu, latents, or the only one)")
    parser.add_argument("--output", default=None, help="write the result as JSON here (atomically; numbers that are not finite as null)")
    parser.add_argument("--per-point", action="store_true", help="include per-point p-values and distances in the JSON")
    parser.add_argument("--device", default="cpu", help="torch device to compute on (default cpu)")


def run(args) -> int:
    from inform_fast.detect.mop import check_alpha, mop
    from inform_fast.detect.mahalanobis import _check_shrinkage

    check_alpha(args.alpha)
    shrinkage = _check_shrinkage(args.shrinkage)
    rlhf, reference = read_outlier_inputs(args)
    result = mop(rlhf, reference, alpha=args.alpha, shrinkage=shrinkage, eps=args.eps, pvalues=args.pvalues,
                 calibration_fraction=args.calibration_fraction, seed=args.seed)
    summary = {"rlhf": args.rlhf, "reference": args.reference, **result.summary()}
    calibration = ("chi-square p-values" if args.pvalues == "chi2" else
                   f"empirical p-values: fit on {summary['n_reference']}, calibrated on {summary['n_calibration']} reference latents; "
                   f"shift {result.shift:.4f} (z = {result.shift_z:.2f}; 0.5 = like the reference)")
    print(
        f"MOP = {summary['mop']:.4f}  ({summary['n_outliers']} of {summary['n_rlhf']} RLHF latents with p <= {args.alpha:g})\n"
        f"{calibration}\n"
        f"reference: {summary['n_reference']} latents, L = {summary['latent_dim']}, "
        f"shrinkage = {shrinkage!r} (used {summary['shrinkage_used']:.4g}), eps = {args.eps:g}\n"
        f"Mahalanobis distance: median {summary['distance_median']:.4g}, p90 {summary['distance_p90']:.4g}, "
        f"p99 {summary['distance_p99']:.4g}; smallest p-value {summary['min_pvalue']:.3g}"
    )
    write_outlier_result(args, summary, result)
    return 0


def read_outlier_inputs(args) -> tuple:
    """(rlhf, reference) latents of ``mop`` / ``kop`` on ``--device``, checked; ``--output``
    checked first, so that a bad path fails before any work."""
    from inform_fast._io import check_output_path
    from inform_fast.detect.inputs import container_key, load_latents

    if args.output:
        check_output_path(args.output, "--output")
    rlhf = load_latents(args.rlhf, key=container_key(args.rlhf, args.key), name="--rlhf").to(args.device)
    reference = load_latents(args.reference, key=container_key(args.reference, args.key), name="--reference").to(args.device)
    if rlhf.shape[1] != reference.shape[1]:
        raise ValueError(f"--rlhf: latent dimension {rlhf.shape[1]} does not match --reference's {reference.shape[1]}")
    return rlhf, reference


def write_outlier_result(args, summary: dict, result) -> None:
    """The ``--output`` JSON of ``mop`` / ``kop``: the summary, with per-point p-values and
    distances under ``--per-point``; nothing without ``--output``."""
    from inform_fast._io import write_json_atomic

    if not args.output:
        return
    if args.per_point:
        summary["pvalues"] = result.pvalues.cpu().tolist()
        summary["distances"] = result.distances.double().cpu().tolist()
    write_json_atomic(args.output, summary, name="--output")
    print(f"wrote {args.output}")
