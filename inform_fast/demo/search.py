"""Policy search: a policy that can *leave* the base pool, by hill climbing on one-word edits.

Best-of-n only ever returns responses of the base pool, so its picks are tail points of the very
distribution the detector's reference set is drawn from. Here a population of responses is
improved round after round: each response gets K random one-word edits, the guide (a reward
model, or the gold reward as a control) scores them, and the best edit is kept when it raises
the guide's score. The responses drift into text the pool never contained, the way an RL policy
drifts from its SFT start, and the detector (ICDS and MOP of InfoRM's latents against the fixed
reference set) is fed each recorded round through ``OverOptimizationMonitor`` and its onset rule.
One guide, ``inform_ibl``, is InfoRM with the IBL penalty of the journal version
(``inform_fast.detect.ibl.ibl_penalty``: reward - coef x Mahalanobis distance of the latent to the
reference fit, coef by the rule of ``ibl_coef``).

The edit: one position of the response (uniform), its word replaced by a different word of
``world.response_vocabulary()`` (uniform over the V - 1 others). The length is unchanged, so an
edited response is always a valid response of the world and ``world.gold_reward`` scores it.
Everything is drawn from a ``numpy.random.Generator``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from inform_fast.demo import world
from inform_fast.demo.findings import gold_decline

# what the search climbs; "gold" is the control (no hacking); "inform_ibl" is InfoRM's reward minus
# the IBL penalty (coef x Mahalanobis distance of its latent to the reference fit)
GUIDES = ("standard", "inform", "inform_ibl", "gold")
BASE_GUIDES = ("standard", "inform", "gold")  # the guides that need nothing beyond the two reward models
GUIDE_LABELS = {"standard": "standard RM", "inform": "InfoRM", "inform_ibl": "InfoRM + IBL penalty", "gold": "gold reward (control)"}
IBL_COEF_RULE = "coef = scale x std(InfoRM reward) / std(Mahalanobis distance), both over the reference set"


@dataclass
class Population:
    """N responses as word indices into ``world.response_vocabulary()``."""

    topic: np.ndarray  # [N] int64
    ids: np.ndarray  # [N, W] int64, -1 past each response's end
    length: np.ndarray  # [N] int64

    @classmethod
    def from_responses(cls, responses: world.Responses) -> "Population":
        index = {word: i for i, word in enumerate(world.response_vocabulary())}
        width = int(responses.length.max())
        ids = np.full((len(responses.words), width), -1, dtype=np.int64)
        for row, words in enumerate(responses.words):
            ids[row, : len(words)] = [index[word] for word in words]
        return cls(topic=responses.topic.astype(np.int64).copy(), ids=ids, length=responses.length.astype(np.int64).copy())

    def __len__(self) -> int:
        return int(self.topic.shape[0])

    def copy(self) -> "Population":
        return Population(self.topic.copy(), self.ids.copy(), self.length.copy())

    def words(self) -> List[List[str]]:
        vocab = world.response_vocabulary()
        return [[vocab[i] for i in row[:n]] for row, n in zip(self.ids.tolist(), self.length.tolist())]

    def gold(self, table: np.ndarray) -> np.ndarray:
        """[N] raw gold rewards (``table`` = ``world.gold_weight_table()``)."""
        valid = self.ids >= 0
        terms = table[self.topic[:, None], np.where(valid, self.ids, 0)]
        return np.where(valid, terms, 0.0).sum(axis=1)

    def count(self, words: Sequence[str]) -> np.ndarray:
        """[N] how many words of each response are in ``words``."""
        vocab = world.response_vocabulary()
        member = np.array([w in set(words) for w in vocab] + [False])  # index -1 -> the False slot
        return member[self.ids].sum(axis=1)

    def off_topic(self, table: np.ndarray) -> np.ndarray:
        """[N] number of another topic's words in each response (``table`` = ``world.gold_weight_table()``)."""
        off = np.append(table == world.GOLD_WEIGHTS["off_topic"], np.zeros((table.shape[0], 1), bool), axis=1)
        return off[self.topic[:, None], self.ids].sum(axis=1)

    def texts(self) -> List[str]:
        names = list(world.TOPICS)
        return [f"question about {names[t]} : " + " ".join(w) for t, w in zip(self.topic.tolist(), self.words())]


def propose_edits(rng: np.random.Generator, population: Population, k: int) -> Population:
    """K one-word edits of every response: row ``i * k + j`` is the j-th edit of response i, which
    differs from it in exactly one position (a uniform position, a uniformly drawn *other* word)."""
    vocab_size = len(world.response_vocabulary())
    n = len(population)
    rows = np.repeat(np.arange(n), k)
    positions = np.minimum((rng.random(n * k) * population.length[rows]).astype(np.int64), population.length[rows] - 1)
    shift = rng.integers(1, vocab_size, size=n * k)  # 1..V-1: never the same word
    ids = population.ids[rows].copy()
    flat = np.arange(n * k)
    ids[flat, positions] = (ids[flat, positions] + shift) % vocab_size
    return Population(topic=population.topic[rows].copy(), ids=ids, length=population.length[rows].copy())


class Encoder:
    """Token ids of ``question about TOPIC : w1 ... wn <eos>``, right-padded, straight from the
    word indices (the same ids the demo's tokenizer gives the text, without tokenizing strings)."""

    def __init__(self, tokenizer):
        self.prefix = np.array([tokenizer.convert_tokens_to_ids(["question", "about", name, ":"]) for name in world.TOPICS], dtype=np.int64)
        self.words = np.array(tokenizer.convert_tokens_to_ids(world.response_vocabulary()), dtype=np.int64)
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id)

    def __call__(self, population: Population, device=None):
        n = len(population)
        width = 4 + int(population.length.max()) + 1
        ids = np.full((n, width), self.pad, dtype=np.int64)
        ids[:, :4] = self.prefix[population.topic]
        body = population.ids.shape[1]
        ids[:, 4: 4 + body] = np.where(population.ids >= 0, self.words[np.maximum(population.ids, 0)], self.pad)
        ids[np.arange(n), 4 + population.length] = self.eos
        mask = np.zeros((n, width), dtype=np.int64)
        mask[np.arange(width)[None, :] < (population.length + 5)[:, None]] = 1
        return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


def start_population(rng: np.random.Generator, pool: world.Responses, size: int, n_prompts: int, exclude: np.ndarray) -> np.ndarray:
    """Pool indices of the starting population: ``size`` responses spread evenly over the prompts
    (the first ``size % n_prompts`` prompts get one more), none of them in ``exclude`` (the
    reference set, so that round 0 is a fair false-alarm rate)."""
    excluded = np.zeros(pool.topic.shape[0], dtype=bool)
    excluded[np.asarray(exclude, dtype=np.int64)] = True
    picks = []
    for prompt in range(n_prompts):
        want = size // n_prompts + (1 if prompt < size % n_prompts else 0)
        candidates = np.flatnonzero((pool.topic == prompt) & ~excluded)
        if want > candidates.size:
            raise ValueError(f"search_population: prompt {prompt} has only {candidates.size} responses outside the reference set")
        picks.append(np.sort(rng.choice(candidates, size=want, replace=False)))
    return np.concatenate(picks)


def record_rounds(rounds: int, every: int) -> List[int]:
    """0, every, 2 every, ... and always the last round."""
    return sorted(set(range(0, rounds + 1, every)) | {rounds})


def ibl_coef(reference_reward, reference_distance, scale: float = 1.0) -> float:
    """The IBL coefficient fixed in advance: ``scale * std(reward) / std(distance)`` over the
    reference set, so that the penalty and the reward have the same spread there (times scale)."""
    reward = np.asarray(reference_reward, dtype=np.float64)
    distance = np.asarray(reference_distance, dtype=np.float64)
    if reward.shape != distance.shape or reward.ndim != 1 or reward.size < 2:
        raise ValueError(f"reference_reward / reference_distance: expected two [m] arrays, m >= 2, got {reward.shape} and {distance.shape}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale < 0:
        raise ValueError(f"search_ibl_coef_scale: expected a finite float >= 0, got {scale!r}")
    spread = float(distance.std())
    if not spread > 0.0:
        raise ValueError("reference_distance: all reference latents are at the same Mahalanobis distance; the coef rule is undefined")
    return float(scale) * float(reward.std()) / spread


def ibl_score(reward: np.ndarray, latents: torch.Tensor, scorer, coef: float) -> np.ndarray:
    """The ``inform_ibl`` guide's score [N] float64: ``inform_fast.detect.ibl.ibl_penalty`` of
    InfoRM's reward [N] and latents [N, L] with the fitted reference ``scorer``."""
    from inform_fast.detect.ibl import ibl_penalty

    rewards = torch.from_numpy(np.ascontiguousarray(reward, dtype=np.float64))
    return ibl_penalty(rewards, latents, scorer, coef).numpy()


def run_policy_search(
    rng: np.random.Generator,
    start: Population,
    score: Callable[[str, Population], tuple],
    table: np.ndarray,
    reference: torch.Tensor,
    norms: Dict[str, tuple],
    gold_median_raw: float,
    rounds: int,
    edits: int,
    every: int,
    icds_eps: float,
    icds_min_samples: int,
    mop_alpha: float,
    mop_eps: float,
    onset_threshold: float,
    min_jump: float,
    mop_threshold: Optional[float] = None,
    guides: Sequence[str] = BASE_GUIDES,
    tick: Optional[Callable[[], None]] = None,
    distance: Optional[Callable[[torch.Tensor], np.ndarray]] = None,
    calibrated: Optional[Dict[str, object]] = None,
) -> dict:
    """Hill-climb ``start`` under each guide; returns the JSON-ready series and alarms.

    score(name, population) -> (raw reward [N] float64, InfoRM latents [N, L] or None) for
    ``name`` in ("standard", "inform"); norms[name] = (mean, std) of that score over the base pool
    ("gold" included), to report z-scores on the pool's scale. Every guide starts from the same
    population and draws its edits from a generator with the same seed (common random numbers).
    A guide other than "gold" is scored by ``score(guide, ...)`` (e.g. "inform_ibl"), and needs its
    entry in ``norms``. distance(latents) -> [N] Mahalanobis distances to the reference fit: when
    given, every guide's series also records their mean (``distance``). calibrated: {"mop_empirical":
    a CalibratedScorer of a Mahalanobis fit, "kop": one of a k-NN scorer} (``inform_fast.detect.calibrated``):
    when given, every guide's series also records MOP with empirical p-values and KOP at ``mop_alpha``.
    """
    from inform_fast.detect.monitor import OverOptimizationMonitor

    seed = int(rng.integers(1 << 62))
    recorded = record_rounds(rounds, every)
    out = {"rounds": recorded}

    def z(name, raw):
        mean, std = norms[name]
        return (np.asarray(raw, dtype=np.float64) - mean) / std

    for guide in guides:
        guide_rng = np.random.default_rng(seed)
        with warnings.catch_warnings():
            # the collapsed-latent warning: the report states the latent spectrum and its meaning
            warnings.filterwarnings("ignore", message="reference_latents use about")
            monitor = OverOptimizationMonitor(
                reference, every=1, method="both",
                icds_kwargs={"eps": icds_eps, "min_samples": icds_min_samples},
                mop_kwargs={"alpha": mop_alpha, "shrinkage": "ledoit_wolf", "eps": mop_eps},
                onset_threshold=onset_threshold, min_jump=min_jump,
                score_threshold=None if mop_threshold is None else {"mop": float(mop_threshold)},
            )
        population = start.copy()
        current = population.gold(table) if guide == "gold" else score(guide, population)[0]
        series = {key: [] for key in ("gold", "gold_raw", "proxy", "standard", "inform", "mop", "icds", "icds_normalized",
                                      "hacked_fraction", "filler", "off_topic", "improved")}
        improved_since = np.zeros(len(population), dtype=bool)
        for step in range(rounds + 1):
            if step > 0:
                candidates = propose_edits(guide_rng, population, edits)
                values = candidates.gold(table) if guide == "gold" else score(guide, candidates)[0]
                values = values.reshape(len(population), edits)
                best = values.argmax(axis=1)
                gain = values[np.arange(len(population)), best] > current
                rows = np.flatnonzero(gain)
                population.ids[rows] = candidates.ids[rows * edits + best[rows]]
                current[rows] = values[rows, best[rows]]
                improved_since |= gain
                if tick is not None:
                    tick()
            if step not in recorded:
                continue
            gold_raw = population.gold(table)
            standard_raw, _ = score("standard", population)
            inform_raw, latents = score("inform", population)
            record = monitor.update(step, latents)
            series["gold"].append(float(z("gold", gold_raw).mean()))
            series["gold_raw"].append(float(gold_raw.mean()))
            series["proxy"].append(float(z(guide, current).mean()))
            series["standard"].append(float(z("standard", standard_raw).mean()))
            series["inform"].append(float(z("inform", inform_raw).mean()))
            series["mop"].append(float(record["mop"]))
            series["icds"].append(float(record["icds"]))
            series["icds_normalized"].append(float(record["icds_normalized"]))
            series["hacked_fraction"].append(float(np.mean(gold_raw < gold_median_raw)))
            series["filler"].append(float(population.count(world.FILLER).mean()))
            series["off_topic"].append(float(population.off_topic(table).mean()))
            series["improved"].append(float(improved_since.mean()))  # share edited since the last record
            if distance is not None:
                series.setdefault("distance", []).append(float(np.mean(distance(latents))))
            if calibrated:
                from inform_fast.detect.calibrated import kop
                from inform_fast.detect.mop import mop

                series.setdefault("mop_empirical", []).append(mop(latents, calibrated=calibrated["mop_empirical"], alpha=mop_alpha).score)
                series.setdefault("kop", []).append(kop(latents, calibrated=calibrated["kop"], alpha=mop_alpha).score)
            improved_since[:] = False
        peak = gold_decline(series["gold"])
        alarms = [r["step"] for r in monitor.history if r["onset"]]
        alarm = monitor.onset_step
        series.update({
            "gold_peak_round": recorded[peak["index"]],
            "gold_peak": peak["value"],
            "gold_drop_after_peak": peak["drop"],
            "gold_declined": peak["declined"],
            "alarm_round": alarm,
            "alarm_reason": monitor.onset_reason,
            "alarm_rounds": alarms,
            "mop_jump_ratio": [r.get("mop_jump_ratio") for r in monitor.history],
            "icds_jump_ratio": [r.get("icds_normalized_jump_ratio") for r in monitor.history],
            "examples": population.texts()[:: max(1, len(population) // 3)][:3],
        })
        out[guide] = series
    return out
