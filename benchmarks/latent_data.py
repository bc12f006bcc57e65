"""Latent distributions for the clustering and nearest-neighbour benchmarks (seeded generators).

Five synthetic distributions that look like reward-model latents in the ways that matter to a
pair search (L = 128, float32), and latents of a trained InfoRM head:

* ``blobs``: 6 well-separated Gaussian blobs (centres ~ N(0, 10^2 I), spread 0.5 per axis), the
  old benchmark's case; eps = 12.
* ``anisotropic``: one Gaussian with eigenvalues 1/k (k = 1..128, the spectrum of real sentence
  embeddings), randomly rotated; eps: the k-distance knee (``auto_eps``).
* ``noise_clusters``: the hacking picture: 90% diffuse (as ``anisotropic``) and 10% in 8 small
  dense clusters (spread 0.02 per axis) at points of the diffuse cloud; eps = 0.5, between the
  clusters' diameter (~0.3) and the diffuse points' 5-NN distance (~2), so DBSCAN finds the 8
  clusters and calls the diffuse points noise.
* ``duplicates``: half the rows are exact copies of 200 distinct latents (a collapsed policy
  repeating responses), half diffuse (as ``anisotropic``); eps: ``auto_eps``.
* ``small_clusters``: n / 25 clusters of ~25 points (spread 0.05 per axis) around centres drawn
  as ``anisotropic`` x 3; eps: ``auto_eps``.
* ``inform``: latents (mu) of an InfoRM head (L = 128, beta = 0.1) trained on the demo's world
  (``inform_fast.demo``: the small preset's pairs and backbone) for the responses of random
  prompts of that world. Their participation ratio is printed by ``describe``. The trained model
  and the latents are cached under ``INFORM_FAST_BENCH_CACHE`` (default
  ``~/.cache/inform_fast/bench``), since scoring 10^6 responses takes minutes on a CPU.

``generate(name, n, seed)`` returns a float32 NumPy array [n, 128]; ``EPS[name]`` is the eps rule
(a number, or "auto").
"""
from __future__ import annotations

import os

import numpy as np

DIM = 128
EPS = {"blobs": 12.0, "anisotropic": "auto", "noise_clusters": 0.5, "duplicates": "auto", "small_clusters": "auto",
       "inform": "auto"}
NAMES = tuple(EPS)


def _rotation(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def anisotropic(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, DIM + 1))).astype(np.float32)
    out = np.empty((n, DIM), np.float32)
    rotation = _rotation(rng)
    for a in range(0, n, 1 << 17):  # chunks: bounded temporaries at n = 10^6
        b = min(n, a + (1 << 17))
        out[a:b] = (rng.standard_normal((b - a, DIM), dtype=np.float32) * scale) @ rotation
    return out


def blobs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, DIM)).astype(np.float32) * 10
    pick = rng.integers(0, 6, n)
    return centres[pick] + 0.5 * rng.standard_normal((n, DIM), dtype=np.float32)


def noise_clusters(n: int, seed: int = 0, share: float = 0.1, clusters: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    x = anisotropic(n, seed)
    m = int(n * share)
    centres = anisotropic(clusters, seed + 1)
    x[:m] = centres[rng.integers(0, clusters, m)] + 0.02 * rng.standard_normal((m, DIM), dtype=np.float32)
    return x[rng.permutation(n)]


def duplicates(n: int, seed: int = 0, share: float = 0.5, distinct: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed + 200)
    x = anisotropic(n, seed)
    m = int(n * share)
    x[:m] = anisotropic(distinct, seed + 1)[rng.integers(0, distinct, m)]
    return x[rng.permutation(n)]


def small_clusters(n: int, seed: int = 0, size: int = 25) -> np.ndarray:
    rng = np.random.default_rng(seed + 300)
    centres = anisotropic(max(1, n // size), seed + 1) * 3
    return centres[rng.integers(0, centres.shape[0], n)] + 0.05 * rng.standard_normal((n, DIM), dtype=np.float32)


def cache_dir() -> str:
    return os.environ.get("INFORM_FAST_BENCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "inform_fast", "bench"))


def _inform_model(seed: int = 0):
    """The demo's InfoRM reward model (small preset's world, pairs and backbone, L = 128,
    beta = 0.1), trained once through the demo's own code and cached."""
    import torch

    from inform_fast.demo import world
    from inform_fast.demo.config import preset
    from inform_fast.demo.pipeline import draw_data, train_and_score
    from inform_fast.demo.train import DemoRewardModel, build_backbone

    config = preset("small", latent_dim=DIM)
    path = os.path.join(cache_dir(), f"inform-{WORLD}-L{DIM}-seed{seed}.pt")
    if os.path.exists(path):  # only the tokenizer is needed: no pairs drawn, nothing tokenised
        tokenizer = world.build_tokenizer()
        backbone = build_backbone(len(tokenizer), config.hidden_size, config.layers, config.heads, seed=seed)
        model = DemoRewardModel(backbone, "inform", latent_dim=DIM, seed=seed)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        return model, tokenizer, config
    data = draw_data(config, np.random.default_rng(seed), "cpu")
    model = train_and_score(config, "inform", data, seed, "cpu")["model"]
    model.eval()
    os.makedirs(cache_dir(), exist_ok=True)
    temp = path + f".tmp{os.getpid()}"
    torch.save(model.state_dict(), temp)
    os.replace(temp, path)
    return model, data["tokenizer"], config


CHUNK = 1 << 14  # responses per generation step: latents for n are a prefix of those for more
# the demo world's version: cached latents of an older world are not reused
WORLD = "world2"


def inform(n: int, seed: int = 0) -> np.ndarray:
    """mu of the trained InfoRM head for the first n of a fixed stream of responses to random
    prompts of the demo's world (cached: the largest cached stream covering n is reused)."""
    import glob

    prefix = os.path.join(cache_dir(), f"inform-{WORLD}-L{DIM}-seed{seed}-chunks")
    for path in sorted(glob.glob(prefix + "*.npy"), key=lambda p: int(p[len(prefix):-4])):
        if int(path[len(prefix):-4]) * CHUNK >= n:
            return np.load(path, mmap_mode="r")[:n].copy()
    import torch

    from inform_fast.demo import search, world
    from inform_fast.demo.pipeline import _tokenize

    model, tokenizer, config = _inform_model(seed)
    encoder = search.Encoder(tokenizer)
    world_config = config.world()
    chunks = -(-n // CHUNK)
    rng = np.random.default_rng(seed + 1)
    out = np.empty((chunks * CHUNK, DIM), np.float32)
    with torch.no_grad():
        for c in range(chunks):
            responses = world.generate(rng, rng.integers(0, config.n_prompts, CHUNK), world_config)
            ids, mask = _tokenize(encoder, responses, "cpu")
            for a in range(0, CHUNK, 2048):
                out[c * CHUNK + a : c * CHUNK + a + 2048] = model.score(ids[a : a + 2048], mask[a : a + 2048])[1].numpy()
    os.makedirs(cache_dir(), exist_ok=True)
    temp = f"{prefix}{chunks}.tmp{os.getpid()}.npy"
    np.save(temp, out)
    os.replace(temp, f"{prefix}{chunks}.npy")
    return out[:n].copy()


GENERATORS = {"blobs": blobs, "anisotropic": anisotropic, "noise_clusters": noise_clusters, "duplicates": duplicates,
              "small_clusters": small_clusters, "inform": inform}


def generate(name: str, n: int, seed: int = 0) -> np.ndarray:
    """[n, 128] float32 latents of the named distribution."""
    return GENERATORS[name](n, seed)


def participation_ratio(x: np.ndarray, rows: int = 1 << 16) -> float:
    """(sum of covariance eigenvalues)^2 / sum of their squares, from up to ``rows`` rows."""
    sample = x[:: max(1, x.shape[0] // rows)].astype(np.float64)
    sample -= sample.mean(0)
    eigenvalues = np.linalg.eigvalsh(sample.T @ sample / sample.shape[0])
    return float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())
