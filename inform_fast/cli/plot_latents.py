"""``inform-fast plot-latents``: a PNG map of reference vs RLHF latents.

Both sets are projected to 2-D with a PCA fitted on the reference latents (not scaled); the
RLHF latents are clustered with DBSCAN in the original latent space (as ``icds`` does without a
projection). Reference points are grey, RLHF points coloured by cluster, noise marked with x,
cluster centroids with black-edged stars. Written to a temporary file, then renamed.
"""
from __future__ import annotations


from inform_fast._io import atomic_path, check_output_path


MAX_POINTS = 200_000  # plotted per set (a fixed-seed subsample above this); clustering uses all


def add_arguments(parser) -> None:
    parser.add_argument("--rlhf", required=True, help="RLHF-policy latents [n, L] (.npy/.safetensors/.pt)")
    parser.add_argument("--reference", required=True, help="reference (SFT) latents [m, L]")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--eps", default="0.5", help="DBSCAN radius (> 0) or 'auto'; default 0.5")
    parser.add_argument("--min-samples", type=int, default=5, help="DBSCAN min_samples (default 5)")
    parser.add_argument("--key", default=None, help="tensor name inside .safetensors/.pt files")
    parser.add_argument("--title", default=None, help="plot title")


def run(args) -> int:
    import numpy as np
    import torch

    from inform_fast.cli.icds import parse_eps
    from inform_fast.detect.icds import icds
    from inform_fast.detect.inputs import load_latents
    from inform_fast.detect.projection import PCAProjection

    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out: expected a .png path, got {args.out!r}")
    check_output_path(args.out, "--out")
    eps = parse_eps(args.eps)
    rlhf = load_latents(args.rlhf, key=args.key, name="--rlhf")
    reference = load_latents(args.reference, key=args.key, name="--reference")
    if rlhf.shape[1] != reference.shape[1]:
        raise ValueError(f"--reference: latent dimension {reference.shape[1]} does not match --rlhf ({rlhf.shape[1]})")
    result = icds(rlhf, reference, eps=eps, min_samples=args.min_samples)
    if rlhf.shape[1] >= 2:
        pca = PCAProjection(n_components=2, normalize=False).fit(reference)
        ref2, rl2, cen2 = (pca.transform(t).numpy() for t in (reference, rlhf, result.centroids))
    else:  # one latent dimension: plot it against zero
        pad = lambda t: np.column_stack([t.float().numpy()[:, 0], np.zeros(t.shape[0])])  # noqa: E731
        ref2, rl2, cen2 = pad(reference), pad(rlhf), pad(result.centroids)
    labels = result.labels.numpy()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)

    def subsample(count):
        return np.arange(count) if count <= MAX_POINTS else np.sort(rng.choice(count, MAX_POINTS, replace=False))

    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    keep = subsample(len(ref2))
    ax.scatter(ref2[keep, 0], ref2[keep, 1], s=4, c="0.75", label=f"reference ({len(ref2)})", rasterized=True)
    keep = subsample(len(rl2))
    rl_kept, lab_kept = rl2[keep], labels[keep]
    clustered = lab_kept >= 0
    if clustered.any():
        cmap = plt.get_cmap("tab10" if result.n_clusters <= 10 else "tab20")
        colors = cmap(lab_kept[clustered] % cmap.N)
        ax.scatter(rl_kept[clustered, 0], rl_kept[clustered, 1], s=6, c=colors, label=f"RLHF, {result.n_clusters} clusters", rasterized=True)
    if (~clustered).any():
        ax.scatter(rl_kept[~clustered, 0], rl_kept[~clustered, 1], s=14, marker="x", c="crimson", linewidths=0.8, label=f"RLHF noise ({result.n_noise})")
    if len(cen2):
        ax.scatter(cen2[:, 0], cen2[:, 1], s=160, marker="*", c="gold", edgecolors="black", linewidths=0.8, label="cluster centroids", zorder=5)
    ax.set_xlabel("PC 1 (fitted on reference)")
    ax.set_ylabel("PC 2")
    ax.set_title(args.title or f"latent map: ICDS {result.score:.4g} (eps {result.eps:.3g}, min_samples {result.min_samples})")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(args.out, name="--out") as temp:
            fig.savefig(temp, format="png")
    finally:
        plt.close(fig)
    print(f"wrote {args.out} (ICDS {result.score:.6g}, {result.n_clusters} clusters, {result.n_noise} noise)")
    return 0
