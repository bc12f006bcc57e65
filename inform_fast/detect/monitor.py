"""Online overoptimization monitor: ICDS and/or MOP of the policy's latents against the reference
(SFT) latents at chosen steps, an onset rule, a JSON history and a PNG of the curves.

Onset rule (the paper's relative jump): for the evaluated scores s_0, s_1, ... of a metric, the
jump at evaluation t is j_t = |s_t - s_{t-1}|; onset at t when

    j_t / max(mean(j_1 .. j_{t-1}), min_jump) > onset_threshold        (default 10)

* t = 0 has no jump and t = 1 has no earlier jumps, so the rule can first fire at the third
  evaluation; ``min_jumps`` (default 1) raises the number of earlier jumps required.
* ``min_jump`` (default 1e-12) floors the denominator: after an exactly flat stretch (all earlier
  jumps 0) any change gives a ratio of order j_t / 1e-12 and fires; set ``min_jump`` to the
  smallest change that matters for your score's scale to damp that.
* ``score_threshold`` (a float, or a dict metric -> float) is a plain rule: onset when the score
  exceeds it.
For ICDS the watched score is ``icds_normalized`` (ICDS / number of RLHF latents), so batch-size
changes between evaluations do not look like jumps; the raw ICDS is recorded too. With
``method="both"`` either metric can flag the onset. ``onset_step`` is the first flagged step;
``should_stop`` is true from then on when ``stop_on_onset``.

Transformers is never imported here at module import: ``trainer_callback`` builds the
``TrainerCallback`` in ``inform_fast.integrations.monitor_callback`` on demand.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Callable, Dict, List, Optional, Union

import torch

from inform_fast._io import atomic_path, write_text_atomic
from inform_fast.detect.inputs import as_latents
from inform_fast.validation import check_choice, check_positive_int

METHODS = ("icds", "mop", "both")
# below this participation ratio the reference latents have collapsed onto about one direction
COLLAPSED_RATIO = 1.5
WATCHED = {"icds": ("icds_normalized",), "mop": ("mop",), "both": ("icds_normalized", "mop")}


class OverOptimizationMonitor:
    """Track ICDS / MOP of RLHF latents during training and flag the overoptimization onset.

    Args:
        reference_latents: [m, L] reference (SFT-policy) latents, tensor or array.
        every: evaluate at steps that are multiples of ``every``.
        method: "icds", "mop" or "both".
        icds_kwargs: passed to ``inform_fast.detect.icds.icds`` (eps, min_samples, ...).
        mop_kwargs: ``alpha``, ``shrinkage``, ``eps`` for MOP (the reference fit is done once).
        onset_threshold: relative-jump threshold of the onset rule (> 0).
        score_threshold: plain threshold: a float for every watched metric or a dict.
        stop_on_onset: make ``should_stop`` true once the onset is flagged.
        min_jumps: earlier jumps needed before the relative rule may fire (>= 1).
        min_jump: floor of the mean earlier jump (see the module docstring).
        max_buffer: most latent rows kept by ``add`` between evaluations (oldest dropped).
    """

    def __init__(
        self,
        reference_latents,
        every: int = 100,
        method: str = "icds",
        icds_kwargs: Optional[dict] = None,
        mop_kwargs: Optional[dict] = None,
        onset_threshold: float = 10.0,
        score_threshold: Optional[Union[float, Dict[str, float]]] = None,
        stop_on_onset: bool = False,
        min_jumps: int = 1,
        min_jump: float = 1e-12,
        max_buffer: int = 1_000_000,
    ):
        self.method = check_choice("method", method, METHODS)
        self.every = check_positive_int("every", every)
        self.min_jumps = check_positive_int("min_jumps", min_jumps)
        self.max_buffer = check_positive_int("max_buffer", max_buffer)
        if isinstance(onset_threshold, bool) or not isinstance(onset_threshold, (int, float)) or not onset_threshold > 0:
            raise ValueError(f"onset_threshold: expected a float > 0, got {onset_threshold!r}")
        if not isinstance(min_jump, (int, float)) or not min_jump >= 0:
            raise ValueError(f"min_jump: expected a float >= 0, got {min_jump!r}")
        self.onset_threshold = float(onset_threshold)
        self.min_jump = float(min_jump)
        self.watched = WATCHED[self.method]
        if isinstance(score_threshold, dict):
            unknown = set(score_threshold) - set(self.watched)
            if unknown:
                raise ValueError(f"score_threshold: unknown metric(s) {sorted(unknown)}; watched: {self.watched}")
            self.score_threshold = {k: float(v) for k, v in score_threshold.items()}
        elif score_threshold is None:
            self.score_threshold = {}
        elif isinstance(score_threshold, (int, float)) and not isinstance(score_threshold, bool):
            self.score_threshold = {k: float(score_threshold) for k in self.watched}
        else:
            raise ValueError(f"score_threshold: expected None, a float or a dict metric -> float, got {score_threshold!r}")
        self.stop_on_onset = bool(stop_on_onset)
        self.reference = as_latents("reference_latents", reference_latents)
        self.icds_kwargs = dict(icds_kwargs or {})
        self.mop_kwargs = dict(mop_kwargs or {})
        unknown = set(self.mop_kwargs) - {"alpha", "shrinkage", "eps", "backend"}
        if unknown:
            raise ValueError(f"mop_kwargs: unknown key(s) {sorted(unknown)}; expected alpha, shrinkage, eps, backend")
        self.scorer = None
        if self.method in ("mop", "both"):
            from inform_fast.detect.mahalanobis import MahalanobisScorer
            from inform_fast.detect.mop import check_alpha

            check_alpha(self.mop_kwargs.get("alpha", 0.01))
            self.scorer = MahalanobisScorer(shrinkage=self.mop_kwargs.get("shrinkage"), eps=self.mop_kwargs.get("eps", 1e-6))
            self.scorer.fit(self.reference, name="reference_latents")
        self.reference_spectrum = None
        if self.scorer is not None:  # the fit's sums give the spectrum for free
            spectrum = self.scorer.spectrum()
            self.reference_spectrum = {k: spectrum[k] for k in ("participation_ratio", "top_share")}
            dim = self.reference.shape[1]
            if dim >= 4 and spectrum["participation_ratio"] < COLLAPSED_RATIO:
                warnings.warn(
                    f"reference_latents use about {spectrum['participation_ratio']:.1f} of their {dim} directions "
                    f"({spectrum['top_share']:.0%} of the variance on the top one): MOP then mixes noise from the squeezed "
                    "directions with how far responses go along that one (with InfoRM's linear decoder, the reward). "
                    "Consider mop_kwargs={'shrinkage': 0.1} and watching ICDS too; see docs/detection.md",
                    stacklevel=2,
                )
        self.history: List[dict] = []
        self.onset_step: Optional[int] = None
        self.onset_reason: Optional[str] = None
        self._buffer: List[torch.Tensor] = []
        self._buffered = 0
        self._calls = 0

    # ------------------------------------------------------------------ collecting
    def is_due(self, step: int) -> bool:
        return step % self.every == 0

    def add(self, latents) -> None:
        """Buffer a batch of RLHF latents [b, L] for the next evaluation (kept on their device)."""
        batch = as_latents("latents", latents, dim=self.reference.shape[1]).detach()
        self._buffer.append(batch)
        self._buffered += batch.shape[0]
        while self._buffered - self._buffer[0].shape[0] >= self.max_buffer:
            self._buffered -= self._buffer.pop(0).shape[0]

    def update(self, step: int, latents=None) -> Optional[dict]:
        """Evaluate at ``step`` if it is a multiple of ``every`` (else return None).

        ``latents`` [n, L]: this step's RLHF latents; buffered ones from ``add`` are included
        (and the buffer cleared). Returns the record appended to ``history``."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step: expected an integer >= 0, got {step!r}")
        if not self.is_due(step):
            if latents is not None:
                self.add(latents)
            return None
        parts = list(self._buffer)
        if latents is not None:
            parts.append(as_latents("latents", latents, dim=self.reference.shape[1]).detach())
        if not parts:
            raise ValueError("latents: none given at this step and none buffered with add()")
        device = parts[-1].device
        rlhf = torch.cat([p.to(device) for p in parts]) if len(parts) > 1 else parts[0]
        self._buffer, self._buffered = [], 0
        start = time.perf_counter()
        record: dict = {"step": step, "n_latents": int(rlhf.shape[0])}
        if self.method in ("icds", "both"):
            from inform_fast.detect.icds import icds

            result = icds(rlhf, self.reference, **self.icds_kwargs)
            record["icds"] = float(result.score)
            record["icds_normalized"] = float(result.normalized_score)
        if self.method in ("mop", "both"):
            from inform_fast.detect.mop import mop

            result = mop(rlhf, scorer=self.scorer, pvalues="chi2", alpha=self.mop_kwargs.get("alpha", 0.01), backend=self.mop_kwargs.get("backend"))
            record["mop"] = result.score
        record["seconds"] = time.perf_counter() - start
        self._check_onset(record)
        self.history.append(record)
        return record

    # ------------------------------------------------------------------ onset
    def jump_ratio(self, metric: str, value: float) -> Optional[float]:
        """Relative jump of ``value`` against the history of ``metric`` (None if too early)."""
        scores = [r[metric] for r in self.history if metric in r]
        if not scores:
            return None
        jumps = [abs(b - a) for a, b in zip(scores, scores[1:])]
        if len(jumps) < self.min_jumps:
            return None
        current = abs(value - scores[-1])
        denominator = max(sum(jumps) / len(jumps), self.min_jump)
        if denominator == 0.0:
            return math.inf if current > 0 else 0.0
        return current / denominator

    def _check_onset(self, record: dict) -> None:
        reasons = []
        for metric in self.watched:
            ratio = self.jump_ratio(metric, record[metric])
            record[f"{metric}_jump_ratio"] = ratio
            if ratio is not None and ratio > self.onset_threshold:
                reasons.append(f"{metric} jump ratio {ratio:.3g} > {self.onset_threshold:g}")
            limit = self.score_threshold.get(metric)
            if limit is not None and record[metric] > limit:
                reasons.append(f"{metric} {record[metric]:.4g} > threshold {limit:g}")
        record["onset"] = bool(reasons)
        record["onset_reason"] = "; ".join(reasons) or None
        if reasons and self.onset_step is None:
            self.onset_step = record["step"]
            self.onset_reason = record["onset_reason"]

    @property
    def should_stop(self) -> bool:
        return self.stop_on_onset and self.onset_step is not None

    # ------------------------------------------------------------------ logging and files
    def metrics(self, record: Optional[dict] = None, prefix: str = "inform/") -> Dict[str, float]:
        """The scalar metrics of a record (the last by default) with names for a logger."""
        record = record if record is not None else (self.history[-1] if self.history else {})
        names = [k for k in ("icds", "icds_normalized", "mop") if k in record]
        out = {prefix + k: float(record[k]) for k in names}
        if record:
            out[prefix + "onset"] = float(record.get("onset", False))
        return out

    def log_metrics(self, log_metric: Callable[[str, float], None], step: int, latents=None, prefix: str = "inform/") -> Optional[dict]:
        """TRL hook: ``update(step, latents)`` and, when evaluated, ``log_metric(name, value)`` for
        each score. In a GRPO/RLOO reward function: ``monitor.log_metrics(log_metric,
        trainer_state.global_step, latents)`` (both are keyword arguments TRL passes)."""
        record = self.update(step, latents)
        if record is not None:
            for name, value in self.metrics(record, prefix).items():
                log_metric(name, value)
        return record

    def __call__(self, latents, rewards=None, step: Optional[int] = None) -> Dict[str, float]:
        """The reward-function hook form (``make_trl_reward_func(..., monitor=monitor)``, the
        OpenRLHF-style ``make_openrlhf_reward_func``): ``update(step, latents)``, returning the
        scores (``icds``, ``icds_normalized``, ``mop``, ``onset``) when this call evaluated and {}
        otherwise. ``step`` is the trainer's global step when the caller knows it (TRL passes
        ``trainer_state``), else the number of earlier calls. A step that was already evaluated
        (several reward batches per optimiser step) only buffers its latents for the next one.
        ``rewards`` is accepted for the hook signature and not used."""
        if step is None:
            step = self._calls
        self._calls += 1
        if self.history and self.history[-1]["step"] == step:
            self.add(latents)
            return {}
        record = self.update(step, latents)
        return self.metrics(record, prefix="") if record is not None else {}

    def trainer_callback(self, latents_fn: Callable, trainer=None):
        """A ``transformers.TrainerCallback`` that evaluates ``latents_fn(step)`` at due steps,
        logs the scores and stops training on onset when ``stop_on_onset``."""
        from inform_fast.integrations.monitor_callback import OverOptimizationCallback

        return OverOptimizationCallback(self, latents_fn, trainer=trainer)

    def to_dict(self) -> dict:
        return {
            "config": {
                "method": self.method,
                "every": self.every,
                "onset_threshold": self.onset_threshold,
                "score_threshold": self.score_threshold,
                "min_jumps": self.min_jumps,
                "min_jump": self.min_jump,
                "icds_kwargs": {k: v for k, v in self.icds_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))},
                "mop_kwargs": self.mop_kwargs,
                "n_reference": int(self.reference.shape[0]),
                "latent_dim": int(self.reference.shape[1]),
                "reference_spectrum": self.reference_spectrum,
            },
            "watched": list(self.watched),
            "onset_step": self.onset_step,
            "onset_reason": self.onset_reason,
            "history": self.history,
        }

    def save(self, path: str) -> None:
        """Write the history (and config, onset) as JSON, atomically."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1, default=_json_default, allow_nan=True))

    def plot(self, path: str) -> None:
        """PNG of the watched scores over steps, the onset marked."""
        plot_history(self.to_dict(), path)


def _json_default(value):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_history(path: str) -> dict:
    """Read a monitor JSON written by ``OverOptimizationMonitor.save`` (checked)."""
    if not os.path.isfile(path):
        raise ValueError(f"history: file not found: {path}")
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"history: could not read {path}: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("history"), list):
        raise ValueError(f"history: {path} is not a monitor history (no 'history' list)")
    for index, record in enumerate(data["history"]):
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"history: record {index} of {path} has no 'step'")
    return data


def plot_history(data: dict, path: str) -> None:
    """Plot a monitor history dict (``to_dict`` / ``read_history``) to a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = data["history"]
    names = [k for k in ("icds", "icds_normalized", "mop") if any(k in r for r in history)]
    if not names:
        raise ValueError("history: no icds/mop scores to plot")
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.6 * len(names)), sharex=True, squeeze=False)
    labels = {"icds": "ICDS", "icds_normalized": "ICDS / n", "mop": "MOP (outlier fraction)"}
    onset = data.get("onset_step")
    for axis, name in zip(axes[:, 0], names):
        points = [(r["step"], r[name]) for r in history if name in r]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        axis.set_ylabel(labels[name])
        axis.grid(alpha=0.3)
        if onset is not None:
            axis.axvline(onset, color="red", linestyle="--", label=f"onset (step {onset})")
            axis.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle("Overoptimization monitor")
    fig.tight_layout()
    try:
        with atomic_path(path) as temp:
            fig.savefig(temp, format="png", dpi=110)
    finally:
        plt.close(fig)
