"""``inform-fast icds``: ICDS of RLHF latents against reference latents, printed and saved as JSON.

Reads .npy / .safetensors / .pt (``--key`` picks a tensor, default "mu" / "latents" / the only
one). The JSON is written to a temporary file in the target folder and renamed
(``inform_fast._io``), so a failure never leaves a half-written result; numbers that are not
finite are written as null (strict JSON).
"""
from __future__ import annotations

import os

from inform_fast._io import check_output_path, write_json_atomic


def add_arguments(parser) -> None:
    parser.add_argument("--rlhf", required=True, help="RLHF-policy latents [n, L] (.npy/.safetensors/.pt)")
    parser.add_argument("--reference", required=True, help="reference (SFT) latents [m, L]")
    parser.add_argument(
        "--variant", choices=["paper", "excess"], default="paper",
        help="paper: DBSCAN over all RLHF latents (the paper's ICDS); excess: over the RLHF latents in regions where they "
             "are over-represented relative to the reference (inform_fast.detect.excess; flat-free on clean data)",
    )
    parser.add_argument("--eps", default=None, help="DBSCAN radius (> 0) or 'auto'; default 0.5 for paper, auto for excess")
    parser.add_argument("--k", type=int, default=20, help="excess: neighbours in the local test (default 20)")
    parser.add_argument("--level", type=float, default=1e-3, help="excess: p-value level of an over-represented latent (default 1e-3)")
    parser.add_argument("--min-samples", type=int, default=5, help="DBSCAN min_samples, the point itself included (default 5)")
    parser.add_argument("--include-noise", action="store_true", help="count the noise points as one more group")
    parser.add_argument("--projection", choices=["none", "pca"], default="none", help="project before clustering (pca: 2-D, fitted on the reference, [0, 1] scaled)")
    parser.add_argument("--key", default=None, help="tensor name inside .safetensors/.pt files")
    parser.add_argument("--backend", default=None, choices=["auto", "reference", "cpp", "triton"], help="force a backend")
    parser.add_argument("--labels", action="store_true", help="also store the per-point labels in the JSON")
    parser.add_argument("--output", default=None, help="write the result as JSON here")


def parse_eps(text: str):
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--eps: expected a number > 0 or 'auto', got {text!r}") from None


def run(args) -> int:
    from inform_fast.detect.icds import icds
    from inform_fast.detect.inputs import load_latents

    eps = parse_eps(args.eps if args.eps is not None else ("0.5" if args.variant == "paper" else "auto"))
    if args.output:
        check_output_path(args.output, "--output")
    rlhf = load_latents(args.rlhf, key=args.key, name="--rlhf")
    reference = load_latents(args.reference, key=args.key, name="--reference")
    if rlhf.shape[1] != reference.shape[1]:
        raise ValueError(f"--reference: latent dimension {reference.shape[1]} does not match --rlhf ({rlhf.shape[1]})")
    if args.variant == "excess":
        return _run_excess(args, rlhf, reference, eps)
    result = icds(
        rlhf,
        reference,
        eps=eps,
        min_samples=args.min_samples,
        include_noise=args.include_noise,
        projection=None if args.projection == "none" else args.projection,
        backend=args.backend,
    )
    payload = result.to_dict(include_labels=args.labels)
    payload["rlhf"] = os.path.abspath(args.rlhf)
    payload["reference"] = os.path.abspath(args.reference)
    payload["n_reference"] = int(reference.shape[0])
    print(
        f"ICDS {result.score:.6g} (normalized {result.normalized_score:.6g}); {result.n_clusters} clusters, "
        f"{result.n_noise} noise of {rlhf.shape[0]} points; eps {result.eps:.6g}, min_samples {result.min_samples}"
    )
    for k, (size, deviation) in enumerate(zip(result.cluster_sizes.tolist(), result.deviations.tolist())):
        name = "noise" if (result.include_noise and k == result.n_clusters) else f"cluster {k}"
        print(f"  {name:<12} size {size:>8}  deviation {deviation:.6g}")
    if args.output:
        write_json_atomic(args.output, payload, name="--output", indent=2)
        print(f"wrote {args.output}")
    return 0


def _run_excess(args, rlhf, reference, eps) -> int:
    from inform_fast.detect.excess import excess_icds

    if args.include_noise or args.projection != "none":
        raise ValueError("--variant: excess takes neither --include-noise nor --projection")
    result = excess_icds(rlhf, reference, k=args.k, level=args.level, min_samples=args.min_samples, eps=eps,
                         backend=args.backend)
    payload = {"variant": "excess", **result.summary(), "rlhf": os.path.abspath(args.rlhf),
               "reference": os.path.abspath(args.reference), "n_reference": int(reference.shape[0])}
    if args.labels:
        payload["labels"] = [int(v) for v in result.labels.tolist()]
    print(
        f"excess ICDS {result.score:.6g} (normalized {result.normalized_score:.6g}); {result.n_excess} of {rlhf.shape[0]} "
        f"RLHF latents over-represented (p <= {result.level:g}, k = {result.k}), {result.excess_fraction:.2%} in "
        f"{result.n_clusters} clusters; eps {result.eps:.6g}, min_samples {result.min_samples}"
    )
    for k, (size, deviation) in enumerate(zip(result.cluster_sizes.tolist(), result.deviations.tolist())):
        print(f"  cluster {k:<4} size {size:>8}  deviation {deviation:.6g}")
    if args.output:
        write_json_atomic(args.output, payload, name="--output", indent=2)
        print(f"wrote {args.output}")
    return 0
