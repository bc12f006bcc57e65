"""Presets of the demo study."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo study depends on (with the seed, it fixes every number of the report)."""

    # world and data
    n_prompts: int = 8  # prompts (one per topic, at most 8); each has its own candidate pool
    train_pairs: int = 4000  # labelled training pairs (25% label noise, filler-biased selection)
    eval_pairs: int = 1000  # held-out pairs labelled by the gold reward, no noise, no selection
    label_flip: float = 0.25  # fraction of training labels flipped
    keep_less_filler: float = 0.25  # a drawn pair whose chosen response has no more filler than the
    # rejected one is kept with this probability (1 when it has more): the spurious correlation
    pool_per_prompt: int = 2000  # candidate responses per prompt (the best-of-n pool)
    # backbone (a Llama built from scratch; the same init for both reward models)
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    # training (identical for both reward models)
    steps: int = 500  # ~8 epochs of the small preset's pairs (300 left both models undertrained on held-out accuracy)
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
    mop_alpha: float = 0.01
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

    def check(self) -> "DemoConfig":
        if not 1 <= self.n_prompts <= 8:
            raise ValueError(f"n_prompts: expected 1..8 (the world has 8 topics), got {self.n_prompts}")
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
