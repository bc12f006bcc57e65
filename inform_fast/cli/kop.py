"""``inform-fast kop``: the k-NN outlier proportion of RLHF latents, calibrated on the reference,
with its rank shift (``inform_fast.detect.calibrated``)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--rlhf", required=True, help="RLHF-policy latents [n, L] (.npy / .safetensors / .pt)")
    parser.add_argument("--reference", required=True, help="reference (SFT-policy) latents [m, L]")
    parser.add_argument("--alpha", type=float, default=0.01, help="p-value level of an outlier (default 0.01)")
    parser.add_argument("--k", type=int, default=10, help="the score is the distance to the k-th nearest reference latent (default 10)")
    parser.add_argument("--normalize", choices=["none", "l2", "standardize"], default="none",
                        help="scale latents before the distance (default none)")
    parser.add_argument("--calibration-fraction", type=float, default=0.5,
                        help="share of --reference held out to calibrate the p-values (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit/calibration split (default 0)")
    parser.add_argument("--key", default=None, help="tensor name inside .safetensors/.pt files, both inputs (default: mu, latents, or the only one)")
    parser.add_argument("--output", default=None, help="write the result as JSON here (atomically)")
    parser.add_argument("--per-point", action="store_true", help="include per-point p-values and k-NN distances in the JSON")
    parser.add_argument("--device", default="cpu", help="torch device to compute on (default cpu)")


def run(args) -> int:
    from inform_fast.cli.mop import read_outlier_inputs, write_outlier_result
    from inform_fast.detect.calibrated import check_alpha, kop

    check_alpha(args.alpha, name="--alpha")
    rlhf, reference = read_outlier_inputs(args)
    normalize = None if args.normalize == "none" else args.normalize
    result = kop(rlhf, reference, alpha=args.alpha, k=args.k, normalize=normalize,
                 calibration_fraction=args.calibration_fraction, seed=args.seed)
    summary = {"rlhf": args.rlhf, "reference": args.reference, **result.summary()}
    print(
        f"KOP = {result.score:.4f}  ({result.n_outliers} of {rlhf.shape[0]} RLHF latents with p <= {result.alpha:g}; "
        f"k = {result.k}, calibrated on {summary['n_calibration']} reference latents)\n"
        f"shift {result.shift:.4f} (z = {result.shift_z:.2f}; 0.5 = like the reference)"
    )
    write_outlier_result(args, summary, result)
    return 0
