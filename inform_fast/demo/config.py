"""Presets of the demo study."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

DEFAULT_SEEDS = 3  # seeds of a plain `inform-fast demo`: the report's intervals need more than one, and
# the default run must stay under 3 minutes on a 2-core CPU (docs/demo.md has the timings)


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo study depends on (with the seed, it fixes every number of the report)."""

    # world and data (the response generator's fields are world.WorldConfig's)
    n_prompts: int = 8  # prompts (one per topic, at most 8); each has its own candidate pool
    train_pairs: int = 4000  # labelled training pairs
    eval_pairs: int = 1000  # held-out pairs labelled by the gold reward itself: no bias, no noise
    min_words: int = 12  # response length, uniform in [min_words, max_words]: a fixed budget by default,
    max_words: int = 12  # so each filler word takes the place of a content word
    quality_mean: float = 1.0  # competence ~ N(quality_mean, 1): > 0 makes the average content word worth gold
    filler_a: float = 0.5  # filler fraction of an ordinary response ~ filler_max * Beta(filler_a, filler_b)
    filler_b: float = 8.0
    filler_max: float = 0.25
    padded_share: float = 0.01  # share of padded responses (filler fraction ~ Uniform(padded_low, padded_high)):
    padded_low: float = 0.6  # the tail best-of-n finds at large n
    padded_high: float = 0.9
    # labels (world.preference_pairs): a biased Bradley-Terry annotator by default
    label_model: str = "bradley_terry"  # or "selected", the previous world (label_flip, keep_less_filler)
    filler_bias: float = 1.0  # the annotator's utility per filler word, in gold units (an on-topic word is 1)
    label_temperature: float = 2.0  # its Bradley-Terry temperature in gold units: the label noise
    label_flip: float = 0.25  # "selected" only: share of labels flipped
    keep_less_filler: float = 0.25  # "selected" only: a pair whose chosen response has no more filler is kept with
    # this probability (1 when it has more)
    pool_per_prompt: int = 2000  # candidate responses per prompt (the best-of-n pool)
    # backbone (a tiny Llama built from scratch; the same init for both reward models)
    hidden_size: int = 32
    layers: int = 1
    heads: int = 2
    # training (identical for both reward models)
    steps: int = 400  # 6.4 epochs of the small preset's pairs
    batch_size: int = 64
    lr: float = 2e-3
    # InfoRM head
    latent_dim: int = 16
    beta: float = 0.1
    # best-of-n and detection
    max_n: int = 1024  # n grid: 1, 2, 4, ..., max_n
    draws: int = 300  # Monte-Carlo best-of-n selections per n and proxy (detection latents)
    reference_size: int = 2000  # reference latents (random pool responses, i.e. n = 1)
    icds_min_samples: int = 5
    mop_alpha: float = 0.01  # alpha of MOP (chi-square and empirical p-values) and of KOP
    calibration_fraction: float = 0.5  # share of the reference set held out to calibrate the empirical p-values
    knn_k: int = 10  # the k-NN score: distance to the k-th nearest reference latent (of the fit part)
    score_batch: int = 1024
    # policy search: hill climbing on one-word edits, a policy that can leave the pool (search.py)
    search_population: int = 128  # responses climbed (spread over the prompts; the same start per guide)
    search_rounds: int = 40  # rounds of edits
    search_edits: int = 8  # random one-word edits tried per response per round (the best is kept if it helps)
    search_every: int = 2  # record gold, proxies, ICDS and MOP every this many rounds (and at the last)
    search_onset_threshold: float = 10.0  # the monitor's relative-jump rule (its default)
    search_min_jump: Optional[float] = None  # floor of the mean earlier jump; None: 1 / search_population
    search_mop_threshold: Optional[float] = 0.1  # the monitor's plain rule: MOP above 10 x the test's alpha
    # the "InfoRM + IBL penalty" guide: reward - coef x Mahalanobis distance of mu to the reference fit, with
    # coef = search_ibl_coef_scale x std(InfoRM reward) / std(distance) over the reference set (fixed in advance:
    # at 1.0 the penalty and the reward have the same spread on the reference; 0 gives plain InfoRM)
    search_ibl_coef_scale: float = 1.0
    device: str = "cpu"  # "cpu", "cuda" or "auto" (cuda when available)
    threads: int = 1  # CPU threads for torch during the run: the model is so small that thread
    # synchronisation costs more than it saves (measured: 1 thread ~6x faster than 2 on a busy
    # 2-core machine), and a fixed count keeps the float reductions identical run to run

    def to_dict(self) -> dict:
        return asdict(self)

    def world(self):
        """The response generator's parameters (``world.WorldConfig``)."""
        from inform_fast.demo.world import WorldConfig

        return WorldConfig(min_words=self.min_words, max_words=self.max_words, quality_mean=self.quality_mean,
                           filler_a=self.filler_a, filler_b=self.filler_b, filler_max=self.filler_max,
                           padded_share=self.padded_share, padded_low=self.padded_low, padded_high=self.padded_high)

    def check(self) -> "DemoConfig":
        if not 1 <= self.n_prompts <= 8:
            raise ValueError(f"n_prompts: expected 1..8 (the world has 8 topics), got {self.n_prompts}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"min_words / max_words: expected 1 <= min_words <= max_words, got {self.min_words} / {self.max_words}")
        if self.label_model not in ("bradley_terry", "selected"):
            raise ValueError(f"label_model: expected 'bradley_terry' or 'selected', got {self.label_model!r}")
        for name in ("padded_share", "label_flip", "keep_less_filler"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
        if not 0.0 <= self.padded_low <= self.padded_high <= 1.0 or not 0.0 <= self.filler_max <= 1.0:
            raise ValueError("padded_low / padded_high / filler_max: expected fractions with padded_low <= padded_high")
        if not self.label_temperature >= 0.0:
            raise ValueError(f"label_temperature: expected a number >= 0, got {self.label_temperature!r}")
        if self.max_n > self.pool_per_prompt:
            raise ValueError(f"max_n: {self.max_n} exceeds pool_per_prompt {self.pool_per_prompt}")
        if self.reference_size > self.n_prompts * self.pool_per_prompt:
            raise ValueError("reference_size: larger than the candidate pool")
        for name in ("search_population", "search_rounds", "search_edits", "search_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.search_population < self.n_prompts:
            raise ValueError(f"search_population: expected at least one response per prompt ({self.n_prompts}), got {self.search_population}")
        if self.search_population > self.n_prompts * self.pool_per_prompt - self.reference_size:
            raise ValueError("search_population: larger than the pool outside the reference set")
        scale = self.search_ibl_coef_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0 or scale == float("inf"):
            raise ValueError(f"search_ibl_coef_scale: expected a finite float >= 0, got {scale!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device: expected cpu, cuda or auto, got {self.device!r}")
        return self


PRESETS = {
    # seconds: for tests and CI
    "tiny": DemoConfig(
        n_prompts=4, train_pairs=256, eval_pairs=128, pool_per_prompt=160, hidden_size=32, layers=1,
        heads=2, steps=40, batch_size=32, latent_dim=8, max_n=128, draws=60, reference_size=320,
        score_batch=512, search_population=32, search_rounds=8, search_edits=4, search_every=1,
    ),
    # the default: a laptop CPU in well under 3 minutes
    "small": DemoConfig(),
    # the same study scaled up for a GPU
    "paper": DemoConfig(
        train_pairs=40000, eval_pairs=4000, pool_per_prompt=20000, hidden_size=256, layers=4, heads=8,
        steps=3000, batch_size=128, lr=1e-3, latent_dim=64, max_n=16384, draws=1000,
        reference_size=20000, score_batch=4096, device="auto", threads=16,
        search_population=1024, search_rounds=200, search_edits=16, search_every=5,
    ),
}


def preset(name: str, **overrides) -> DemoConfig:
    if name not in PRESETS:
        raise ValueError(f"--preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return replace(PRESETS[name], **overrides).check()
