"""The demo study end to end: world -> pairs -> two reward models -> best-of-n -> detection ->
policy search (a policy that leaves the pool, see ``search``).

``run_study(config, seed)`` returns the JSON-ready results plus the arrays the figures need;
``inform_fast.demo.report`` writes them. Nothing here is a fixed number: every value comes from
the models trained in the call.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Dict, Optional, Sequence

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


def _tokenize(encoder: search.Encoder, responses: world.Responses, device) -> tuple:
    """Prompt + response + <eos>, right-padded: ids [N, T] int64 and mask [N, T] (the ids the
    demo's tokenizer gives the texts, straight from the words)."""
    return encoder(search.Population.from_responses(responses), device)


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


class Progress:
    """One tqdm bar over all stages and seeds (disabled when ``enabled`` is False). A stage starts
    with a clean postfix, so a training loss is never shown through the stages after it."""

    def __init__(self, total: int, enabled: bool, file=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not enabled, unit="step", dynamic_ncols=True, leave=True, file=file)
        self.prefix = ""

    def stage(self, text: str):
        self.bar.set_postfix_str("", refresh=False)
        self.bar.set_description(f"{self.prefix}{text}")

    def tick(self, count: int = 1, **postfix):
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(count)

    def close(self):
        self.bar.close()


def resolve_device(config: DemoConfig) -> torch.device:
    """The device a run of ``config`` uses: cuda when asked for, or with "auto" when available."""
    wants_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if wants_cuda else "cpu")


def work_units(config: DemoConfig) -> int:
    """Progress-bar steps of one seed's study: training steps, scoring batches, n values, search rounds."""
    pool_total = config.n_prompts * config.pool_per_prompt
    score_batches = -(-pool_total // config.score_batch) + -(-config.eval_pairs * 2 // config.score_batch)
    return 2 * config.steps + 2 * score_batches + len(study.log_grid(config.max_n)) + len(search.GUIDES) * config.search_rounds


def run_study(config: DemoConfig, seed: int = 0, progress: bool = True, bar: Optional[Progress] = None) -> dict:
    """Run the whole study for one seed. Returns {"results": JSON-ready dict, "arrays": data for the
    figures}. ``bar``: a shared progress bar (``run_seeds``); otherwise one is made when ``progress``."""
    config.check()
    started = time.perf_counter()
    device = resolve_device(config)
    rng = np.random.default_rng(seed)
    grid = study.log_grid(config.max_n)
    own_bar = bar is None
    bar = Progress(work_units(config), progress) if own_bar else bar
    try:
        with _deterministic(config.threads):
            return _run(config, seed, device, rng, grid, bar, started)
    finally:
        if own_bar:
            bar.close()


def default_jobs(config: DemoConfig, seeds: int) -> int:
    """Worker processes for ``seeds`` seeds: one per usable CPU core (at most one per seed) on a CPU
    run, where each seed runs single-threaded; one on a GPU run."""
    if resolve_device(config).type != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(seeds, cores))


def _seed_results(config: DemoConfig, seed: int) -> dict:
    """One seed's results in a worker process (its arrays hold closures and stay behind)."""
    return run_study(config, seed=seed, progress=False)["results"]


def run_seeds(config: DemoConfig, seeds: Sequence[int], progress: bool = True, jobs: int = 1) -> dict:
    """Run the study once per seed and return {"per_seed": [results of each seed, in ``seeds``'
    order], "arrays": the first seed's arrays (for the latent map)}.

    Each seed alone fixes its numbers (single-threaded, deterministic kernels), so a seed's results
    do not depend on the other seeds nor on ``jobs``: with ``jobs`` > 1 the first seed runs here,
    with the live progress bar, and the others in ``jobs - 1`` spawned worker processes (the bar
    advances by a seed's worth when one finishes).
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected one or more distinct seeds, got {seeds}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs: expected an integer >= 1, got {jobs!r}")
    bar = Progress(work_units(config) * len(seeds), progress)
    results: Dict[int, dict] = {}
    try:
        if jobs == 1 or len(seeds) == 1:
            arrays = None
            for i, seed in enumerate(seeds):
                bar.prefix = f"seed {seed} ({i + 1}/{len(seeds)}): "
                outcome = run_study(config, seed=seed, bar=bar)
                results[seed] = outcome["results"]
                arrays = outcome["arrays"] if arrays is None else arrays
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: a forked child would inherit this process's torch thread pools
            with ProcessPoolExecutor(max_workers=min(jobs, len(seeds)) - 1 or 1,
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_seed_results, config, seed): seed for seed in seeds[1:]}
                bar.prefix = f"seed {seeds[0]} (1/{len(seeds)}, {len(seeds) - 1} more in {min(jobs, len(seeds)) - 1} worker(s)): "
                outcome = run_study(config, seed=seeds[0], bar=bar)
                results[seeds[0]], arrays = outcome["results"], outcome["arrays"]
                for future, seed in futures.items():
                    results[seed] = future.result()
                    bar.tick(work_units(config))
    finally:
        bar.close()
    return {"per_seed": [results[seed] for seed in seeds], "arrays": arrays}


def draw_data(config: DemoConfig, rng: np.random.Generator, device) -> dict:
    """The world of one seed: training pairs (the configured annotator), held-out pairs (gold
    labels), the candidate pool (``pool_per_prompt`` responses per prompt, prompt after prompt) and
    their token ids on ``device``."""
    world_config = config.world()
    pairs = world.preference_pairs(
        rng, config.train_pairs, config.n_prompts, label_model=config.label_model, filler_bias=config.filler_bias,
        temperature=config.label_temperature, flip=config.label_flip, keep_otherwise=config.keep_less_filler,
        config=world_config,
    )
    heldout = world.preference_pairs(rng, config.eval_pairs, config.n_prompts, config=world_config)
    pool = world.generate(rng, np.repeat(np.arange(config.n_prompts), config.pool_per_prompt), world_config)
    tokenizer = world.build_tokenizer()
    encoder = search.Encoder(tokenizer)
    return {
        "pairs": pairs, "heldout": heldout, "pool": pool, "tokenizer": tokenizer,
        "chosen": _tokenize(encoder, pairs.chosen, device), "rejected": _tokenize(encoder, pairs.rejected, device),
        "pool_tokens": _tokenize(encoder, pool, device),
        "eval_tokens": _tokenize(encoder, world._concat(heldout.chosen, heldout.rejected), device),
    }


def train_and_score(config: DemoConfig, name: str, data: dict, seed: int, device, bar: Optional[Progress] = None) -> dict:
    """Train reward model ``name`` ("standard" or "inform") on ``data``'s pairs and score the pool
    and the held-out pairs: {"model", "history", "pool_reward" [pool] float64, "latents" ([pool, L]
    or None), "heldout_accuracy"}."""
    if bar is not None:
        bar.stage(f"train {name}")
    backbone = build_backbone(len(data["tokenizer"]), config.hidden_size, config.layers, config.heads, seed=seed)
    model = DemoRewardModel(backbone, name, latent_dim=config.latent_dim, seed=seed).to(device)

    def tick(entry):
        bar.tick(loss=f"{entry['loss']:.3f}", acc=f"{entry['accuracy']:.2f}")

    history = train_reward_model(
        model, *data["chosen"], *data["rejected"], steps=config.steps, batch_size=config.batch_size, lr=config.lr,
        beta=config.beta, seed=seed, progress=None if bar is None else tick,
    )
    if bar is not None:
        bar.stage(f"score {name}")
    step = None if bar is None else bar.tick
    pool_reward, latents = _score(model, *data["pool_tokens"], config.score_batch, step)
    eval_reward, _ = _score(model, *data["eval_tokens"], config.score_batch, step)
    half = config.eval_pairs
    accuracy = float(np.mean(eval_reward[:half] > eval_reward[half:]))
    return {"model": model, "history": history, "pool_reward": pool_reward, "latents": latents, "heldout_accuracy": accuracy}


def best_of_n_curve(config: DemoConfig, score: np.ndarray, values: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """[len(grid)] expected ``values`` of the best-of-n pick by ``score`` (both [pool]), averaged over
    the prompts (each prompt's own pool of ``pool_per_prompt`` candidates)."""
    size = config.pool_per_prompt
    return np.mean([study.best_of_n_expectation(score[k * size:(k + 1) * size], values[k * size:(k + 1) * size], grid)
                    for k in range(config.n_prompts)], axis=0)


def study_results(per_seed: Sequence[dict], preset_name: str, config: DemoConfig, runtime_s: Optional[float] = None) -> dict:
    """The JSON-ready report of a run: each seed's results, the findings per seed and across seeds,
    the preset and config, and the environment (the first seed's, with each seed's runtime).
    ``runtime_s``: the run's wall time (default: the sum of the seeds' runtimes, which seeds run in
    parallel processes overstate)."""
    from inform_fast.demo.findings import seed_findings, study_findings

    per_seed = list(per_seed)
    findings = [seed_findings(r) for r in per_seed]
    environment = dict(per_seed[0]["environment"])
    environment["seed_runtime_s"] = [r["runtime_s"] for r in per_seed]
    return {
        "preset": preset_name, "config": config.to_dict(), "seeds": [r["seed"] for r in per_seed],
        "findings": {"study": study_findings(findings), "per_seed": findings},
        "per_seed": per_seed, "environment": environment,
        "runtime_s": float(sum(r["runtime_s"] for r in per_seed)) if runtime_s is None else float(runtime_s),
    }


def _run(config, seed, device, rng, grid, bar, started) -> dict:
    # ---------------------------------------------------------------- world, pairs, pool
    bar.stage("world")
    data = draw_data(config, rng, device)
    pairs, pool, tokenizer = data["pairs"], data["pool"], data["tokenizer"]

    # ---------------------------------------------------------------- two reward models, scores of the pool
    models, histories, proxy, heldout_accuracy = {}, {}, {}, {}
    for name in RM_NAMES:
        trained = train_and_score(config, name, data, seed, device, bar)
        models[name], histories[name] = trained["model"], trained["history"]
        proxy[name], heldout_accuracy[name] = trained["pool_reward"], trained["heldout_accuracy"]
        if trained["latents"] is not None:
            latents = trained["latents"]  # [pool, L] InfoRM's bottleneck means: the detection space for both proxies

    # z-scores on the pool (the base policy, n = 1), so gold and the two proxies share one scale
    gold_z = (pool.gold - pool.gold.mean()) / pool.gold.std()
    proxy_z = {name: (p - p.mean()) / p.std() for name, p in proxy.items()}
    size = config.pool_per_prompt
    per_prompt = [slice(k * size, (k + 1) * size) for k in range(config.n_prompts)]

    def curve(score, values):
        return best_of_n_curve(config, score, values, grid)

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
    from inform_fast.detect.calibrated import CalibratedScorer, KNNScorer, kop
    from inform_fast.detect.icds import auto_eps, icds
    from inform_fast.detect.mahalanobis import MahalanobisScorer
    from inform_fast.detect.mop import mop

    reference_index = rng.choice(pool.gold.size, size=config.reference_size, replace=False)
    reference = latents[reference_index]
    gold_median = float(np.median(pool.gold[reference_index]))
    eps = auto_eps(reference, min_samples=config.icds_min_samples)  # fixed across n and proxies
    # the paper's MOP (chi-square p-values of a fit on the whole reference; also the IBL penalty's and
    # the monitor's fit) and the calibrated scores: each fitted on one part of the reference and
    # calibrated on the other (empirical p-values: a false-alarm rate of at most alpha at n = 1)
    scorer = MahalanobisScorer(shrinkage="ledoit_wolf").fit(reference)
    calibrated = {
        "mop_empirical": CalibratedScorer.fit(MahalanobisScorer(shrinkage="ledoit_wolf"), reference, config.calibration_fraction, seed),
        "kop": CalibratedScorer.fit(KNNScorer(k=config.knn_k), reference, config.calibration_fraction, seed),
    }
    detection = {name: {"icds": [], "icds_normalized": [], "icds_clusters": [], "mop": [], "mop_empirical": [], "kop": [],
                        "hacked_fraction": []} for name in RM_NAMES}
    # InfoRM's reward of a pick in reference standard deviations from the reference mean: where the
    # pick lies along the one direction the decoder reads (explains the detector's AUROC)
    reference_inform = proxy["inform"][reference_index]
    inform_reward_z = (proxy["inform"] - reference_inform.mean()) / reference_inform.std()
    pick_rewards = {name: [] for name in RM_NAMES}
    pick_knn = {name: [] for name in RM_NAMES}
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
            empirical = mop(selected, calibrated=calibrated["mop_empirical"], alpha=config.mop_alpha)
            neighbours = kop(selected, calibrated=calibrated["kop"], alpha=config.mop_alpha)
            hacked = pool.gold[picks[name]] < gold_median
            detection[name]["icds"].append(result.score)
            detection[name]["icds_normalized"].append(result.normalized_score)
            detection[name]["icds_clusters"].append(result.n_clusters)
            detection[name]["mop"].append(outliers.score)
            detection[name]["mop_empirical"].append(empirical.score)
            detection[name]["kop"].append(neighbours.score)
            detection[name]["hacked_fraction"].append(float(hacked.mean()))
            distances = outliers.distances.double().cpu().numpy()
            auroc_by_n[name].append(study.auroc(distances, hacked))
            if n > 1:
                auroc_scores[name].append(distances)
                auroc_labels[name].append(hacked)
                pick_rewards[name].append(inform_reward_z[picks[name]])
                pick_knn[name].append(neighbours.distances.double().cpu().numpy())
            if n == grid[-1]:
                selected_last[name] = {"index": picks[name], "hacked": hacked}
        bar.tick()
    for name in RM_NAMES:
        results[name].update(detection[name])
    detector_auroc, detector_auroc_knn, detector_picks = {}, {}, None
    if len(grid) > 1:
        def pooled(series, names):
            return np.concatenate([np.concatenate(series[m]) for m in names])

        for name in RM_NAMES + ("pooled",):
            names = RM_NAMES if name == "pooled" else (name,)
            labels = pooled(auroc_labels, names)
            detector_auroc[name] = study.auroc(pooled(auroc_scores, names), labels)
            detector_auroc_knn[name] = study.auroc(pooled(pick_knn, names), labels)
        detector_picks = study.pick_profile(pooled(auroc_scores, RM_NAMES), pooled(pick_rewards, RM_NAMES),
                                            pooled(auroc_labels, RM_NAMES), knn_distance=pooled(pick_knn, RM_NAMES))
    else:
        detector_auroc = detector_auroc_knn = {name: None for name in RM_NAMES + ("pooled",)}
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
        guides=search.GUIDES, tick=bar.tick, distance=distance_of, calibrated=calibrated,
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
        "mop_empirical": {name: detection[name]["mop_empirical"] for name in RM_NAMES},
        "kop": {name: detection[name]["kop"] for name in RM_NAMES},
        "icds_normalized": {name: detection[name]["icds_normalized"] for name in RM_NAMES},
        "mop": {name: detection[name]["mop"] for name in RM_NAMES},
        "detector_auroc": detector_auroc,  # per-response Mahalanobis distance, hacked vs other picks (n > 1)
        "detector_auroc_knn": detector_auroc_knn,  # the same for the k-NN distance
        "detector_auroc_by_n": auroc_by_n,
        "detector_picks": detector_picks,
        "latent_spectrum": spectrum,
        "reference": {
            "size": int(config.reference_size),
            "gold_median_raw": gold_median,
            "icds_eps": float(eps),
            "icds_min_samples": int(config.icds_min_samples),
            "mop_alpha": float(config.mop_alpha),
            "mop_shrinkage": "ledoit_wolf",
            "calibration_fraction": float(config.calibration_fraction),
            "calibration_size": int(calibrated["kop"].calibration.size),
            "knn_k": int(config.knn_k),
            "pool_gold_mean": float(pool.gold.mean()),
            "pool_gold_std": float(pool.gold.std()),
        },
        "data": {
            "train_pairs": int(config.train_pairs),
            "label_against_gold": float(pairs.against_gold.mean()),  # chosen has the lower gold: noise and bias
            "train_chosen_more_filler": float(np.mean(pairs.chosen.filler > pairs.rejected.filler)),
            "train_chosen_less_filler": float(np.mean(pairs.chosen.filler < pairs.rejected.filler)),
            "pool_corr_gold_filler": float(np.corrcoef(pool.gold, pool.filler)[0, 1]),
            "pool_filler_mean": float(pool.filler.mean()),
            "pool_half_filler_share": float(np.mean(2 * pool.filler >= pool.length)),  # at least half the words filler
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
