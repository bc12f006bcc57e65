"""The demo study end to end: world -> pairs -> two reward models -> best-of-n -> detection ->
policy search (a policy that leaves the pool, see ``search``).

``run_study(config, seed)`` returns the JSON-ready results plus the arrays the figures need;
``inform_fast.demo.report`` writes them. Nothing here is a fixed number: every value comes from
the models trained in the call.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from inform_fast.demo import search, study, world
from inform_fast.demo.config import DemoConfig
from inform_fast.demo.train import DemoRewardModel, build_backbone, train_reward_model

RM_NAMES = ("standard", "inform")


@contextlib.contextmanager
def _deterministic(threads_wanted: int):
    """Deterministic kernels for the duration of the run (the previous setting is restored)."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(max(1, min(threads, threads_wanted)))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
        torch.set_num_threads(threads)


def _tokenize(tokenizer, responses: world.Responses, device) -> tuple:
    """Prompt + response + <eos>, right-padded: ids [N, T] int64 and mask [N, T]."""
    texts = [text + " <eos>" for text in responses.texts()]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)


def _score(model: DemoRewardModel, ids, mask, batch: int, tick=None):
    rewards, latents = [], []
    for start in range(0, ids.shape[0], batch):
        reward, mu = model.score(ids[start: start + batch], mask[start: start + batch])
        rewards.append(reward.cpu())
        if mu is not None:
            latents.append(mu.cpu())
        if tick is not None:
            tick()
    reward = torch.cat(rewards).double().numpy()
    return reward, (torch.cat(latents) if latents else None)


class _Progress:
    """One tqdm bar over all stages (disabled when ``enabled`` is False)."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not enabled, unit="step", dynamic_ncols=True, leave=True)

    def stage(self, text: str):
        self.bar.set_description(text)

    def tick(self, count: int = 1, **postfix):
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(count)

    def close(self):
        self.bar.close()


def run_study(config: DemoConfig, seed: int = 0, progress: bool = True) -> dict:
    """Run the whole study. Returns {"results": JSON-ready dict, "arrays": data for the figures}."""
    config.check()
    started = time.perf_counter()
    device = torch.device("cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu")
    rng = np.random.default_rng(seed)
    pool_total = config.n_prompts * config.pool_per_prompt
    score_batches = -(-pool_total // config.score_batch) + -(-config.eval_pairs * 2 // config.score_batch)
    grid = study.log_grid(config.max_n)
    bar = _Progress(2 * config.steps + 2 * score_batches + len(grid) + len(search.GUIDES) * config.search_rounds, progress)
    try:
        with _deterministic(config.threads):
            return _run(config, seed, device, rng, grid, bar, started)
    finally:
        bar.close()


def _run(config, seed, device, rng, grid, bar, started) -> dict:
    # ---------------------------------------------------------------- world, pairs, pool
    bar.stage("world")
    pairs = world.preference_pairs(rng, config.train_pairs, config.n_prompts, flip=config.label_flip, keep_otherwise=config.keep_less_filler)
    heldout = world.preference_pairs(rng, config.eval_pairs, config.n_prompts, flip=0.0, keep_if_more_filler=1.0, keep_otherwise=1.0)
    topics = np.repeat(np.arange(config.n_prompts), config.pool_per_prompt)
    pool = world.generate(rng, topics)
    tokenizer = world.build_tokenizer()
    chosen_ids, chosen_mask = _tokenize(tokenizer, pairs.chosen, device)
    rejected_ids, rejected_mask = _tokenize(tokenizer, pairs.rejected, device)
    pool_ids, pool_mask = _tokenize(tokenizer, pool, device)
    eval_ids, eval_mask = _tokenize(tokenizer, world._concat(heldout.chosen, heldout.rejected), device)

    # ---------------------------------------------------------------- two reward models
    models, histories = {}, {}
    for name in RM_NAMES:
        bar.stage(f"train {name}")
        backbone = build_backbone(len(tokenizer), config.hidden_size, config.layers, config.heads, seed=seed)
        model = DemoRewardModel(backbone, name, latent_dim=config.latent_dim, seed=seed).to(device)

        def tick(entry):
            bar.tick(loss=f"{entry['loss']:.3f}", acc=f"{entry['accuracy']:.2f}")

        histories[name] = train_reward_model(
            model, chosen_ids, chosen_mask, rejected_ids, rejected_mask, steps=config.steps,
            batch_size=config.batch_size, lr=config.lr, beta=config.beta, seed=seed, progress=tick,
        )
        models[name] = model

    # ---------------------------------------------------------------- scores of the pool
    proxy, heldout_accuracy, latents = {}, {}, None
    for name in RM_NAMES:
        bar.stage(f"score {name}")
        proxy[name], mu = _score(models[name], pool_ids, pool_mask, config.score_batch, bar.tick)
        eval_reward, _ = _score(models[name], eval_ids, eval_mask, config.score_batch, bar.tick)
        half = config.eval_pairs
        heldout_accuracy[name] = float(np.mean(eval_reward[:half] > eval_reward[half:]))
        if mu is not None:
            latents = mu  # [pool, L] InfoRM's bottleneck means: the detection space for both proxies

    # z-scores on the pool (the base policy, n = 1), so gold and the two proxies share one scale
    gold_z = (pool.gold - pool.gold.mean()) / pool.gold.std()
    proxy_z = {name: (p - p.mean()) / p.std() for name, p in proxy.items()}
    size = config.pool_per_prompt
    per_prompt = [slice(k * size, (k + 1) * size) for k in range(config.n_prompts)]

    def curve(score, values):
        return np.mean([study.best_of_n_expectation(score[s], values[s], grid) for s in per_prompt], axis=0)

    kl = study.best_of_n_kl(grid)
    results = {name: {"kl": kl.tolist(), "n": grid} for name in RM_NAMES}
    for name in RM_NAMES:
        results[name]["gold"] = curve(proxy_z[name], gold_z).tolist()
        results[name]["proxy"] = curve(proxy_z[name], proxy_z[name]).tolist()
        results[name]["gold_raw"] = curve(proxy_z[name], pool.gold).tolist()
        results[name]["filler"] = curve(proxy_z[name], pool.filler.astype(np.float64)).tolist()
        results[name]["heldout_accuracy"] = heldout_accuracy[name]
        last = histories[name][-max(1, config.steps // 10):]
        results[name]["train_loss_final"] = float(np.mean([h["loss"] for h in last]))
        results[name]["train_accuracy_final"] = float(np.mean([h["accuracy"] for h in last]))
        results[name]["train_kl_final"] = float(np.mean([h["kl"] for h in last]))
    oracle = curve(gold_z, gold_z)

    # ---------------------------------------------------------------- detection
    from inform_fast.detect.icds import auto_eps, icds
    from inform_fast.detect.mahalanobis import MahalanobisScorer
    from inform_fast.detect.mop import mop

    reference_index = rng.choice(pool.gold.size, size=config.reference_size, replace=False)
    reference = latents[reference_index]
    gold_median = float(np.median(pool.gold[reference_index]))
    eps = auto_eps(reference, min_samples=config.icds_min_samples)  # fixed across n and proxies
    scorer = MahalanobisScorer(shrinkage="ledoit_wolf").fit(reference)
    detection = {name: {"icds": [], "icds_normalized": [], "icds_clusters": [], "mop": [], "hacked_fraction": []} for name in RM_NAMES}
    auroc_scores = {name: [] for name in RM_NAMES}
    auroc_labels = {name: [] for name in RM_NAMES}
    auroc_by_n = {name: [] for name in RM_NAMES}  # per n: the hacked fraction changes with n
    selected_last = {}
    for n in grid:
        bar.stage(f"detect n={n}")
        # the same prompts and the same n-subsets for both proxies
        prompt_of_draw = rng.integers(config.n_prompts, size=config.draws)
        picks = {name: np.empty(config.draws, dtype=np.int64) for name in RM_NAMES}
        for k in range(config.n_prompts):
            rows = np.flatnonzero(prompt_of_draw == k)
            if rows.size == 0:
                continue
            s = per_prompt[k]
            chosen = study.sample_best_of_n(rng, [proxy[name][s] for name in RM_NAMES], n, rows.size)
            for j, name in enumerate(RM_NAMES):
                picks[name][rows] = chosen[j] + s.start
        for name in RM_NAMES:
            selected = latents[picks[name]]
            result = icds(selected, reference, eps=eps, min_samples=config.icds_min_samples)
            outliers = mop(selected, scorer=scorer, pvalues="chi2", alpha=config.mop_alpha)
            hacked = pool.gold[picks[name]] < gold_median
            detection[name]["icds"].append(result.score)
            detection[name]["icds_normalized"].append(result.normalized_score)
            detection[name]["icds_clusters"].append(result.n_clusters)
            detection[name]["mop"].append(outliers.score)
            detection[name]["hacked_fraction"].append(float(hacked.mean()))
            distances = outliers.distances.double().cpu().numpy()
            auroc_by_n[name].append(study.auroc(distances, hacked))
            if n > 1:
                auroc_scores[name].append(distances)
                auroc_labels[name].append(hacked)
            if n == grid[-1]:
                selected_last[name] = {"index": picks[name], "hacked": hacked}
        bar.tick()
    for name in RM_NAMES:
        results[name].update(detection[name])
    detector_auroc = {}
    for name in RM_NAMES + ("pooled",):
        names = RM_NAMES if name == "pooled" else (name,)
        scores = np.concatenate([np.concatenate(auroc_scores[m]) for m in names]) if len(grid) > 1 else np.zeros(0)
        labels = np.concatenate([np.concatenate(auroc_labels[m]) for m in names]) if len(grid) > 1 else np.zeros(0, bool)
        detector_auroc[name] = study.auroc(scores, labels) if scores.size else None
    # ---------------------------------------------------------------- policy search (leaves the pool)
    bar.stage("policy search")
    search_started = time.perf_counter()
    start_index = search.start_population(rng, pool, config.search_population, config.n_prompts, reference_index)
    encoder = search.Encoder(tokenizer)

    # the IBL guide: InfoRM's reward minus coef x the Mahalanobis distance of its latent to the
    # detector's reference fit (the same Ledoit-Wolf scorer); coef by a rule fixed in advance
    reference_reward = proxy["inform"][reference_index]
    reference_distance = scorer.distance(reference).double().numpy()
    ibl_coef = search.ibl_coef(reference_reward, reference_distance, config.search_ibl_coef_scale)

    def score_population(name, population):
        ids, mask = encoder(population, device)
        if name == "inform_ibl":
            reward, mu = _score(models["inform"], ids, mask, config.score_batch)
            return search.ibl_score(reward, mu, scorer, ibl_coef), mu
        return _score(models[name], ids, mask, config.score_batch)

    def distance_of(mu):
        return scorer.distance(mu).double().numpy()

    norms = {"gold": (float(pool.gold.mean()), float(pool.gold.std()))}
    norms.update({name: (float(p.mean()), float(p.std())) for name, p in proxy.items()})
    pool_ibl = search.ibl_score(proxy["inform"], latents, scorer, ibl_coef)
    norms["inform_ibl"] = (float(pool_ibl.mean()), float(pool_ibl.std()))
    min_jump = config.search_min_jump if config.search_min_jump is not None else 1.0 / config.search_population
    policy_search = search.run_policy_search(
        rng, search.Population.from_responses(pool.subset(start_index)), score_population, world.gold_weight_table(),
        reference, norms, gold_median, rounds=config.search_rounds, edits=config.search_edits, every=config.search_every,
        icds_eps=float(eps), icds_min_samples=config.icds_min_samples, mop_alpha=config.mop_alpha, mop_eps=scorer.eps,
        onset_threshold=config.search_onset_threshold, min_jump=min_jump, mop_threshold=config.search_mop_threshold,
        guides=search.GUIDES, tick=bar.tick, distance=distance_of,
    )
    policy_search["config"] = {
        "population": int(config.search_population), "rounds": int(config.search_rounds),
        "edits": int(config.search_edits), "record_every": int(config.search_every),
        "monitor": {"method": "both", "onset_threshold": float(config.search_onset_threshold), "min_jump": float(min_jump),
                    "score_threshold": {"mop": config.search_mop_threshold} if config.search_mop_threshold is not None else {}},
        "start_index": start_index.tolist(),
        "ibl": {
            "coef": ibl_coef, "coef_scale": float(config.search_ibl_coef_scale), "rule": search.IBL_COEF_RULE,
            "reference_reward_std": float(reference_reward.std()), "reference_distance_std": float(reference_distance.std()),
            "reference_distance_mean": float(reference_distance.mean()),
            # how much the distance is a measure of how extreme the reward is, on the reference set
            "reference_corr_distance_abs_reward": float(np.corrcoef(reference_distance, np.abs(reference_reward - reference_reward.mean()))[0, 1]),
            "pool_reward_mean": norms["inform"][0], "pool_reward_std": norms["inform"][1],
            "pool_penalised_mean": norms["inform_ibl"][0], "pool_penalised_std": norms["inform_ibl"][1],
            "scorer": "the detector's reference set, Ledoit-Wolf", "shrinkage": float(scorer.shrinkage_),
        },
    }
    search_seconds = time.perf_counter() - search_started

    decoder = models["inform"].head.decoder
    reward_direction = decoder.weight.detach().double().cpu().numpy()[0] if isinstance(decoder, torch.nn.Linear) else None
    spectrum = study.latent_spectrum(reference.numpy(), reward_direction)

    results.update({
        "seed": int(seed),
        "n": grid,
        "kl": kl.tolist(),
        "gold_oracle": oracle.tolist(),
        "icds": {name: detection[name]["icds"] for name in RM_NAMES},
        "icds_normalized": {name: detection[name]["icds_normalized"] for name in RM_NAMES},
        "mop": {name: detection[name]["mop"] for name in RM_NAMES},
        "detector_auroc": detector_auroc,
        "detector_auroc_by_n": auroc_by_n,
        "latent_spectrum": spectrum,
        "reference": {
            "size": int(config.reference_size),
            "gold_median_raw": gold_median,
            "icds_eps": float(eps),
            "icds_min_samples": int(config.icds_min_samples),
            "mop_alpha": float(config.mop_alpha),
            "mop_shrinkage": "ledoit_wolf",
            "pool_gold_mean": float(pool.gold.mean()),
            "pool_gold_std": float(pool.gold.std()),
        },
        "data": {
            "train_pairs": int(config.train_pairs),
            "label_flip_observed": float(pairs.flipped.mean()),
            "train_chosen_more_filler": float(np.mean(pairs.chosen.filler > pairs.rejected.filler)),
            "train_chosen_less_filler": float(np.mean(pairs.chosen.filler < pairs.rejected.filler)),
            "pool_corr_gold_filler": float(np.corrcoef(pool.gold, pool.filler)[0, 1]),
        },
        "policy_search": policy_search,
        "environment": {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(), "numpy": np.__version__,
                        "policy_search_s": search_seconds},
    })
    results["runtime_s"] = time.perf_counter() - started
    examples = {}
    for name in RM_NAMES:
        top = int(np.argmax(proxy[name]))
        examples[name] = {"text": _text(pool, top), "gold_raw": float(pool.gold[top]), "filler": int(pool.filler[top])}
    results["top_proxy_response"] = examples
    arrays = {
        "reference": reference.numpy(),
        "selected": {name: latents[selected_last[name]["index"]].numpy() for name in RM_NAMES},
        "hacked": {name: selected_last[name]["hacked"] for name in RM_NAMES},
        # for checks of the IBL guide: its scorer, InfoRM's reward on the reference, the search's scorer
        "ibl": {"scorer": scorer, "reference_reward": reference_reward, "score": score_population},
    }
    return {"results": results, "arrays": arrays}


def _text(pool: world.Responses, index: int) -> str:
    return pool.subset(np.array([index])).texts()[0]
