"""Online overoptimization monitor: detection scores of the policy's latents against the reference
(SFT) latents at chosen steps, an onset rule, a JSON history and a PNG of the curves.

Methods. ``method`` names one entry of ``DETECTION_METHODS`` ("icds", "mop", "kop",
"excess_icds"), a group of ``METHOD_GROUPS`` ("calibrated", the default: KOP and excess ICDS;
"both": the papers' ICDS and MOP; "all"), or a sequence of names. Each entry is a small class: the keyword arguments it accepts (its
``<name>_kwargs`` is checked at construction, so a typo fails there naming the key), the numbers
it records, the one the onset rule watches, the fewest policy latents an evaluation needs and the
noise floor of the onset rule. Adding a score is one class and one line in the table.

Onset rule (the paper's relative jump; rises only). For the evaluated scores s_0, s_1, ... of a
watched metric, the rise at evaluation t is r_t = s_t - s_{t-1} and the earlier movement is
m_t = mean(|s_1 - s_0|, ..., |s_{t-1} - s_{t-2}|); onset at t when

    r_t / max(m_t, floor_t) > onset_threshold        (default 10)

* a fall (r_t <= 0) never fires; ``<metric>_jump_ratio`` records the signed ratio;
* t = 0 has no rise and t = 1 no earlier movement, so the rule can first fire at the third
  evaluation; ``min_jumps`` (default 1) raises the number of earlier moves required;
* floor_t is ``min_jump`` when given, else the metric's own noise floor, so that a flat or
  near-zero history does not turn noise into a huge ratio: for MOP (a fraction of n latents) its
  binomial standard error at the previous level, sqrt(p (1 - p) / n), and at least one latent
  (1 / n); for ICDS / n, 5% of the median distance from a reference latent to its nearest other
  reference latent (ICDS measures distances from cluster centroids to the nearest reference
  latent, so that is its unit). The floor used is recorded as ``<metric>_jump_floor``;
* ``score_threshold`` (a float, or a dict metric -> float) is a plain rule: onset when the score
  exceeds it.
For ICDS the watched score is ``icds_normalized`` (ICDS / number of policy latents), so batch-size
changes between evaluations do not look like jumps; the raw ICDS is recorded too. With several
methods any watched metric can flag the onset. ``onset_step`` is the first flagged step;
``should_stop`` is true from then on when ``stop_on_onset``.

Devices: the scores are computed on the policy latents' device; the reference latents are moved
there once and kept (MOP's fitted mean and whitening likewise).

Reward-function hook (``monitor(latents, rewards, step)``, what ``make_trl_reward_func`` and
``make_openrlhf_reward_func`` call): safe to call from several threads; it never fails because an
evaluation is not due or has too few latents yet, and it returns the same keys on every call
(``hook_keys``). Transformers is never imported here: in a ``transformers.Trainer`` the monitor
runs through ``inform_fast.integrations.monitor_callback.OverOptimizationCallback(monitor, latents_fn)``.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import threading
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from inform_fast._io import atomic_path, write_json_atomic
from inform_fast.detect.inputs import as_latents
from inform_fast.validation import check_positive_int, check_real

# below this participation ratio the reference latents have collapsed onto about one direction
COLLAPSED_RATIO = 1.5
# the ICDS / n noise floor, as a fraction of the reference's median nearest-neighbour distance
ICDS_FLOOR_FRACTION = 0.05
# reference latents sampled for that median (fixed seed)
_FLOOR_SAMPLE = 512


def _check_keys(name: str, kwargs, allowed: Sequence[str]) -> dict:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"{name}: expected a dict or None, got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - set(allowed), key=str)
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")
    return dict(kwargs)


def _checked_value(name: str, check: Callable, value):
    """``check(value)``, its error renamed to the monitor's argument (``icds_kwargs: eps: ...``)."""
    try:
        return check(value)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


class ICDSMethod:
    """ICDS (``inform_fast.detect.icds.icds``): records ``icds`` and ``icds_normalized`` (watched)."""

    name = "icds"
    metrics = ("icds", "icds_normalized")
    labels = {"icds": "ICDS", "icds_normalized": "ICDS / n"}
    watched = ("icds_normalized",)

    def __init__(self, reference: torch.Tensor, kwargs: Optional[dict]):
        from inform_fast.detect.dbscan import check_eps
        from inform_fast.detect.icds import icds

        allowed = [p for p in inspect.signature(icds).parameters if p not in ("rlhf_latents", "reference_latents")]
        self.kwargs = _check_keys("icds_kwargs", kwargs, allowed)
        eps = self.kwargs.get("eps", 0.5)
        if not (isinstance(eps, str) and eps == "auto"):
            _checked_value("icds_kwargs", check_eps, eps)
        for key in ("min_samples", "block", "auto_sample_size"):
            if key in self.kwargs:
                _checked_value("icds_kwargs", lambda v, key=key: check_positive_int(key, v), self.kwargs[key])
        if not isinstance(self.kwargs.get("include_noise", False), bool):
            raise ValueError(f"icds_kwargs: include_noise: expected a bool, got {self.kwargs['include_noise']!r}")
        if self.kwargs.get("backend") is not None:
            from inform_fast import dispatch

            _checked_value("icds_kwargs", dispatch.requested_backend, self.kwargs["backend"])
        # fewer points than min_samples can form no cluster: ICDS would be 0 whatever they are
        self.min_latents = max(2, int(self.kwargs.get("min_samples", 5)))
        self._reference = reference
        self._unit: Optional[float] = None  # computed at the first need, where the latents are

    def evaluate(self, rlhf: torch.Tensor, reference: torch.Tensor) -> Dict[str, float]:
        from inform_fast.detect.icds import icds

        if self._unit is None:
            self._unit = _nearest_neighbour_scale(reference)
        result = icds(rlhf, reference, **self.kwargs)
        return {"icds": float(result.score), "icds_normalized": float(result.normalized_score)}

    def noise_floor(self, metric: str, previous: float, n_latents: int) -> float:
        if self._unit is None:
            self._unit = _nearest_neighbour_scale(self._reference)
        return ICDS_FLOOR_FRACTION * self._unit

    def config(self) -> dict:
        return {k: v for k, v in self.kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}


def _calibrated_fit(scorer, reference: torch.Tensor, kwargs: dict, name: str):
    """``CalibratedScorer.fit`` with the ``calibration_fraction`` / ``seed`` of ``kwargs``, errors
    renamed to the monitor's argument; refuses an alpha the calibration split cannot reach."""
    from inform_fast.detect.calibrated import DEFAULT_CALIBRATION_FRACTION, CalibratedScorer, check_calibration_fraction

    fraction = _checked_value(name, check_calibration_fraction, kwargs.get("calibration_fraction", DEFAULT_CALIBRATION_FRACTION))
    seed = kwargs.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{name}: seed: expected an integer, got {seed!r}")
    return _checked_value(name, lambda _: CalibratedScorer.fit(scorer, reference, fraction, seed), None)


def _fraction_floor(previous: float, n_latents: int) -> float:
    """Noise floor of a fraction of n latents: its binomial standard error at the previous level,
    and at least one latent (1 / n)."""
    p = min(max(previous, 0.0), 1.0)
    return max(math.sqrt(p * (1.0 - p) / n_latents), 1.0 / n_latents)


def _shift_floor(n_latents: int, calibration_size: int) -> float:
    """Null standard deviation of a rank shift of n scores against c calibration scores."""
    return math.sqrt((n_latents + calibration_size + 1) / (12.0 * n_latents * calibration_size))


class MOPMethod:
    """MOP (``inform_fast.detect.mop.mop``, the reference fitted once): records ``mop`` (watched)
    and, with empirical p-values (the default), ``mop_shift`` and ``mop_shift_z``."""

    name = "mop"
    labels = {"mop": "MOP (outlier fraction)", "mop_shift": "MOP rank shift (0.5 = like the reference)",
              "mop_shift_z": "MOP rank shift z"}
    min_latents = 1

    def __init__(self, reference: torch.Tensor, kwargs: Optional[dict]):
        from inform_fast.detect.calibrated import PVALUE_METHODS
        from inform_fast.detect.mahalanobis import MahalanobisScorer
        from inform_fast.detect.mop import check_alpha

        self.kwargs = _check_keys("mop_kwargs", kwargs, ("alpha", "shrinkage", "eps", "backend", "pvalues",
                                                         "calibration_fraction", "seed"))
        self.alpha = _checked_value("mop_kwargs", check_alpha, self.kwargs.get("alpha", 0.01))
        self.pvalues = self.kwargs.get("pvalues", "empirical")
        if self.pvalues not in PVALUE_METHODS:
            raise ValueError(f"mop_kwargs: pvalues: expected one of {PVALUE_METHODS}, got {self.pvalues!r}")
        self.backend = self.kwargs.get("backend")
        if self.backend is not None:
            from inform_fast import dispatch

            _checked_value("mop_kwargs", dispatch.requested_backend, self.backend)
        scorer = _checked_value(
            "mop_kwargs", lambda _: MahalanobisScorer(shrinkage=self.kwargs.get("shrinkage"), eps=self.kwargs.get("eps", 1e-6)), None
        )
        if self.pvalues == "empirical":
            self.calibrated = _calibrated_fit(scorer, reference, self.kwargs, "mop_kwargs")
            _checked_value("mop_kwargs", lambda a: self.calibrated.calibration.check_alpha(a, alternative="or pvalues='chi2'"), self.alpha)
            self.scorer = self.calibrated.scorer
            self.metrics, self.watched = ("mop", "mop_shift", "mop_shift_z"), ("mop",)
        else:
            self.calibrated = None
            self.scorer = scorer.fit(reference, name="reference_latents")
            self.metrics, self.watched = ("mop",), ("mop",)
        spectrum = self.scorer.spectrum()  # the fit's sums give it for free
        self.spectrum = {k: spectrum[k] for k in ("participation_ratio", "top_share")}

    def evaluate(self, rlhf: torch.Tensor, reference: torch.Tensor) -> Dict[str, float]:
        from inform_fast.detect.mop import mop

        if self.calibrated is None:
            return {"mop": mop(rlhf, scorer=self.scorer, alpha=self.alpha, backend=self.backend, pvalues="chi2").score}
        result = mop(rlhf, alpha=self.alpha, backend=self.backend, calibrated=self.calibrated)
        return {"mop": result.score, "mop_shift": result.shift, "mop_shift_z": result.shift_z}

    def noise_floor(self, metric: str, previous: float, n_latents: int) -> float:
        if metric == "mop_shift":
            return _shift_floor(n_latents, self.calibrated.calibration.size)
        return _fraction_floor(previous, n_latents)

    def config(self) -> dict:
        return dict(self.kwargs)


class KOPMethod:
    """KOP (``inform_fast.detect.calibrated.kop``, fitted and calibrated once): records ``kop``
    (watched), ``kop_shift`` and ``kop_shift_z`` (a threshold on the z, e.g.
    ``score_threshold={"kop_shift_z": 3.0}``, is a one-sided test of the shift at about 0.1%)."""

    name = "kop"
    metrics = ("kop", "kop_shift", "kop_shift_z")
    labels = {"kop": "KOP (k-NN outlier fraction)", "kop_shift": "k-NN rank shift (0.5 = like the reference)",
              "kop_shift_z": "k-NN rank shift z"}
    watched = ("kop",)
    min_latents = 1

    def __init__(self, reference: torch.Tensor, kwargs: Optional[dict]):
        from inform_fast.detect.calibrated import KNNScorer, check_alpha

        self.kwargs = _check_keys("kop_kwargs", kwargs, ("alpha", "k", "normalize", "calibration_fraction", "seed", "backend"))
        self.alpha = _checked_value("kop_kwargs", check_alpha, self.kwargs.get("alpha", 0.01))
        if self.kwargs.get("backend") is not None:
            from inform_fast import dispatch

            _checked_value("kop_kwargs", dispatch.requested_backend, self.kwargs["backend"])
        scorer = _checked_value("kop_kwargs", lambda _: KNNScorer(k=self.kwargs.get("k", 10), normalize=self.kwargs.get("normalize"),
                                                                  backend=self.kwargs.get("backend")), None)
        self.calibrated = _calibrated_fit(scorer, reference, self.kwargs, "kop_kwargs")
        _checked_value("kop_kwargs", self.calibrated.calibration.check_alpha, self.alpha)

    def evaluate(self, rlhf: torch.Tensor, reference: torch.Tensor) -> Dict[str, float]:
        from inform_fast.detect.calibrated import kop

        result = kop(rlhf, alpha=self.alpha, calibrated=self.calibrated)
        return {"kop": result.score, "kop_shift": result.shift, "kop_shift_z": result.shift_z}

    def noise_floor(self, metric: str, previous: float, n_latents: int) -> float:
        if metric == "kop_shift":
            return _shift_floor(n_latents, self.calibrated.calibration.size)
        return _fraction_floor(previous, n_latents)

    def config(self) -> dict:
        return dict(self.kwargs)


class ExcessICDSMethod:
    """Excess ICDS (``inform_fast.detect.excess.excess_icds``): records ``excess_icds``,
    ``excess_icds_normalized`` and ``excess_fraction`` (watched: the share of responses in
    over-represented clusters; the distance weighting of ICDS would hide a concentration inside
    the reference's support, whose centroid sits on reference latents)."""

    name = "excess_icds"
    metrics = ("excess_icds", "excess_icds_normalized", "excess_fraction")
    labels = {"excess_icds": "excess ICDS", "excess_icds_normalized": "excess ICDS / n",
              "excess_fraction": "share in over-represented clusters"}
    watched = ("excess_fraction",)

    def __init__(self, reference: torch.Tensor, kwargs: Optional[dict]):
        from inform_fast.detect.dbscan import check_eps
        from inform_fast.detect.excess import excess_icds

        allowed = [p for p in inspect.signature(excess_icds).parameters if p not in ("rlhf_latents", "reference_latents")]
        self.kwargs = _check_keys("excess_icds_kwargs", kwargs, allowed)
        for key in ("k", "min_samples"):
            if key in self.kwargs:
                _checked_value("excess_icds_kwargs", lambda v, key=key: check_positive_int(key, v), self.kwargs[key])
        eps = self.kwargs.get("eps", "auto")
        if not (isinstance(eps, str) and eps == "auto"):
            _checked_value("excess_icds_kwargs", check_eps, eps)
        level = self.kwargs.get("level", 1e-3)
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
            raise ValueError(f"excess_icds_kwargs: level: expected a float in (0, 1), got {level!r}")
        self.min_latents = max(2, int(self.kwargs.get("min_samples", 5)))

    def evaluate(self, rlhf: torch.Tensor, reference: torch.Tensor) -> Dict[str, float]:
        from inform_fast.detect.excess import excess_icds

        result = excess_icds(rlhf, reference, **self.kwargs)
        return {"excess_icds": result.score, "excess_icds_normalized": result.normalized_score,
                "excess_fraction": result.excess_fraction}

    def noise_floor(self, metric: str, previous: float, n_latents: int) -> float:
        return _fraction_floor(previous, n_latents)

    def config(self) -> dict:
        return {k: v for k, v in self.kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}


# name -> class; each takes (reference [m, L], its kwargs dict or None) and has: ``metrics`` (the
# numbers it records, with ``labels`` for plots), ``watched`` (those the onset rule watches),
# ``min_latents``, ``evaluate(rlhf, reference) -> {metric: float}``, ``noise_floor(metric,
# previous, n_latents)`` and ``config()``. A new method also gets its ``<name>_kwargs`` argument.
DETECTION_METHODS = {"icds": ICDSMethod, "mop": MOPMethod, "kop": KOPMethod, "excess_icds": ExcessICDSMethod}
# "calibrated" (the default): the scores whose behaviour on clean data is known (KOP's false-alarm
# rate is alpha, the rank shift is 0.5, excess ICDS is 0; docs/detection.md); "both": the papers'.
METHOD_GROUPS = {"calibrated": ("kop", "excess_icds"), "both": ("icds", "mop"), "all": tuple(DETECTION_METHODS)}


def _method_names(method) -> Tuple[str, ...]:
    if isinstance(method, str):
        names = METHOD_GROUPS.get(method, (method,))
    elif isinstance(method, (list, tuple)) and method and all(isinstance(m, str) for m in method):
        names = tuple(dict.fromkeys(method))
    else:
        names = ()
    unknown = [n for n in names if n not in DETECTION_METHODS]
    if not names or unknown:
        choices = tuple(DETECTION_METHODS) + tuple(METHOD_GROUPS)
        raise ValueError(f"method: expected one of {choices} or a list of {tuple(DETECTION_METHODS)}, got {method!r}")
    return names


def _nearest_neighbour_scale(reference: torch.Tensor) -> float:
    """Median distance from a sample of reference rows to their nearest other reference row."""
    from inform_fast.detect.icds import _kth_neighbor_distance

    m = reference.shape[0]
    if m < 2:
        return 0.0
    generator = torch.Generator().manual_seed(0)
    pick = torch.randperm(m, generator=generator)[:_FLOOR_SAMPLE].to(reference.device)
    distances = _kth_neighbor_distance(reference.index_select(0, pick), reference, k=2)
    positive = distances[distances > 0]
    return float(positive.median()) if positive.numel() else 0.0


class OverOptimizationMonitor:
    """Track detection scores of RLHF latents during training and flag the overoptimization onset.

    Args:
        reference_latents: [m, L] reference (SFT-policy) latents, tensor or array.
        every: evaluate once per ``every`` steps (``update``: at multiples of ``every``).
        method: "calibrated" (default: KOP and excess ICDS), "both" (the papers' ICDS and MOP),
            "all", one name of ``DETECTION_METHODS`` ("icds", "mop", "kop", "excess_icds") or a list.
        icds_kwargs: passed to ``inform_fast.detect.icds.icds`` (eps, min_samples, ...).
        mop_kwargs: ``alpha``, ``shrinkage``, ``eps``, ``backend``, ``pvalues`` ("empirical",
            the default, or "chi2"), ``calibration_fraction``, ``seed`` for MOP (fitted once).
        kop_kwargs: ``alpha``, ``k``, ``normalize``, ``calibration_fraction``, ``seed``,
            ``backend`` for KOP (fitted and calibrated once).
        excess_icds_kwargs: passed to ``inform_fast.detect.excess.excess_icds`` (k, level, ...).
        onset_threshold: relative-rise threshold of the onset rule (> 0).
        score_threshold: plain threshold: a float for every watched metric, or a dict over any
            recorded metric (e.g. ``{"kop_shift_z": 3.0}``).
        stop_on_onset: make ``should_stop`` true once the onset is flagged.
        min_jumps: earlier moves needed before the relative rule may fire (>= 1).
        min_jump: floor of the mean earlier move (a finite float >= 0); None (default): each
            metric's noise floor (see the module docstring).
        max_buffer: most latent rows kept by ``add`` between evaluations (the newest are kept).
        min_latents: fewest latents an evaluation of the reward-function hook waits for; None
            (default): what the methods need (ICDS: max(2, min_samples); MOP: 1).
    """

    def __init__(
        self,
        reference_latents,
        every: int = 100,
        method: Union[str, Sequence[str]] = "calibrated",
        icds_kwargs: Optional[dict] = None,
        mop_kwargs: Optional[dict] = None,
        kop_kwargs: Optional[dict] = None,
        excess_icds_kwargs: Optional[dict] = None,
        onset_threshold: float = 10.0,
        score_threshold: Optional[Union[float, Dict[str, float]]] = None,
        stop_on_onset: bool = False,
        min_jumps: int = 1,
        min_jump: Optional[float] = None,
        max_buffer: int = 1_000_000,
        min_latents: Optional[int] = None,
    ):
        names = _method_names(method)
        self.method = method if isinstance(method, str) else list(names)
        self.every = check_positive_int("every", every)
        self.min_jumps = check_positive_int("min_jumps", min_jumps)
        self.max_buffer = check_positive_int("max_buffer", max_buffer)
        self.onset_threshold = check_real("onset_threshold", onset_threshold, minimum=0, open_minimum=True)
        self.min_jump = None if min_jump is None else check_real("min_jump", min_jump, minimum=0)
        self.stop_on_onset = bool(stop_on_onset)
        self.reference = as_latents("reference_latents", reference_latents)
        kwargs_by_method = {"icds": icds_kwargs, "mop": mop_kwargs, "kop": kop_kwargs, "excess_icds": excess_icds_kwargs}
        self.methods = {name: DETECTION_METHODS[name](self.reference, kwargs_by_method.get(name)) for name in names}
        for name, kwargs in kwargs_by_method.items():
            if name not in self.methods and kwargs:
                raise ValueError(f"{name}_kwargs: given but method {self.method!r} does not compute {name}")
        self.watched = tuple(metric for m in self.methods.values() for metric in m.watched)
        self.score_threshold = self._checked_thresholds(score_threshold)
        needed = max(m.min_latents for m in self.methods.values())
        self.min_latents = needed if min_latents is None else check_positive_int("min_latents", min_latents)
        self.reference_spectrum = getattr(self.methods.get("mop"), "spectrum", None)
        if self.reference_spectrum is not None:
            dim = self.reference.shape[1]
            ratio = self.reference_spectrum["participation_ratio"]
            if dim >= 4 and ratio < COLLAPSED_RATIO:
                warnings.warn(
                    f"reference_latents use about {ratio:.1f} of their {dim} directions "
                    f"({self.reference_spectrum['top_share']:.0%} of the variance on the top one): MOP then mixes noise from the squeezed "
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
        self._window = -1  # the last window of ``every`` steps in which the hook became due
        self._hook_due = False
        self._reference_by_device: Dict[str, torch.Tensor] = {str(self.reference.device): self.reference}
        self._lock = threading.RLock()

    def _checked_thresholds(self, score_threshold) -> Dict[str, float]:
        if score_threshold is None:
            return {}
        if isinstance(score_threshold, dict):
            unknown = set(score_threshold) - set(self.recorded_metrics())
            if unknown:
                raise ValueError(f"score_threshold: unknown metric(s) {sorted(unknown)}; recorded: {self.recorded_metrics()}")
            return {k: check_real(f"score_threshold[{k!r}]", v) for k, v in score_threshold.items()}
        if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
            raise ValueError(f"score_threshold: expected None, a float or a dict metric -> float, got {score_threshold!r}")
        value = check_real("score_threshold", score_threshold)
        return {k: value for k in self.watched}

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ collecting
    def is_due(self, step: int) -> bool:
        return step % self.every == 0

    def add(self, latents) -> None:
        """Buffer a batch of RLHF latents [b, L] for the next evaluation (kept on their device).
        At most ``max_buffer`` rows are kept, the newest."""
        batch = as_latents("latents", latents, dim=self.reference.shape[1]).detach()
        with self._lock:
            self._buffer.append(batch)
            self._buffered += batch.shape[0]
            while self._buffered - self._buffer[0].shape[0] >= self.max_buffer:
                self._buffered -= self._buffer.pop(0).shape[0]
            if self._buffered > self.max_buffer:  # drop the oldest rows of the oldest batch
                extra = self._buffered - self.max_buffer
                self._buffer[0] = self._buffer[0][extra:]
                self._buffered -= extra

    def _take_buffer(self, latents=None) -> List[torch.Tensor]:
        parts = list(self._buffer)
        if latents is not None:
            parts.append(as_latents("latents", latents, dim=self.reference.shape[1]).detach())
        self._buffer, self._buffered = [], 0
        return parts

    def update(self, step: int, latents=None) -> Optional[dict]:
        """Evaluate at ``step`` if it is a multiple of ``every`` (else buffer ``latents`` and return None).

        ``latents`` [n, L]: this step's RLHF latents; buffered ones from ``add`` are included
        (and the buffer cleared). Returns the record appended to ``history``."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step: expected an integer >= 0, got {step!r}")
        with self._lock:
            if not self.is_due(step):
                if latents is not None:
                    self.add(latents)
                return None
            if latents is None and not self._buffer:
                raise ValueError("latents: none given at this step and none buffered with add()")
            return self._evaluate(step, self._take_buffer(latents))

    def reference_on(self, device: torch.device) -> torch.Tensor:
        """The reference latents on ``device``, moved there once and kept."""
        key = str(device)
        with self._lock:
            moved = self._reference_by_device.get(key)
            if moved is None:
                moved = self.reference.to(device)
                self._reference_by_device[key] = moved
            return moved

    def _evaluate(self, step: int, parts: List[torch.Tensor]) -> dict:
        device = parts[-1].device  # the newest policy latents decide where the scores run
        rlhf = torch.cat([p.to(device) for p in parts]) if len(parts) > 1 else parts[0]
        reference = self.reference_on(device)
        start = time.perf_counter()
        record: dict = {"step": step, "n_latents": int(rlhf.shape[0])}
        for method in self.methods.values():
            record.update(method.evaluate(rlhf, reference))
        record["seconds"] = time.perf_counter() - start
        self._check_onset(record)
        self.history.append(record)
        return record

    # ------------------------------------------------------------------ onset
    def _method_of(self, metric: str):
        for method in self.methods.values():
            if metric in method.metrics:
                return method
        raise ValueError(f"metric: {metric!r} is not recorded by this monitor (methods {list(self.methods)})")

    def jump_floor(self, metric: str, n_latents: int) -> float:
        """Floor of the onset rule's denominator for ``metric`` at an evaluation of ``n_latents``."""
        if self.min_jump is not None:
            return self.min_jump
        scores = [r[metric] for r in self.history if metric in r]
        previous = scores[-1] if scores else 0.0
        return self._method_of(metric).noise_floor(metric, previous, max(int(n_latents), 1))

    def jump_ratio(self, metric: str, value: float, n_latents: Optional[int] = None) -> Optional[float]:
        """Signed relative rise of ``value`` against the history of ``metric`` (None if too early).
        ``n_latents``: the evaluation's size, for the noise floor (default: the last record's)."""
        scores = [r[metric] for r in self.history if metric in r]
        if not scores:
            return None
        jumps = [abs(b - a) for a, b in zip(scores, scores[1:])]
        if len(jumps) < self.min_jumps:
            return None
        if n_latents is None:
            n_latents = self.history[-1].get("n_latents", 1)
        rise = value - scores[-1]
        denominator = max(sum(jumps) / len(jumps), self.jump_floor(metric, n_latents))
        if denominator == 0.0:  # only with min_jump=0 after an exactly flat history
            return math.copysign(math.inf, rise) if rise else 0.0
        return rise / denominator

    def _check_onset(self, record: dict) -> None:
        reasons = []
        for metric in self.watched:
            ratio = self.jump_ratio(metric, record[metric], record["n_latents"])
            record[f"{metric}_jump_ratio"] = ratio
            record[f"{metric}_jump_floor"] = self.jump_floor(metric, record["n_latents"])
            if ratio is not None and ratio > self.onset_threshold:
                reasons.append(f"{metric} jump ratio {ratio:.3g} > {self.onset_threshold:g}")
        for metric, limit in self.score_threshold.items():
            if record[metric] > limit:
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
    def recorded_metrics(self) -> Tuple[str, ...]:
        """Names of the numbers each evaluation records, in method order."""
        return tuple(metric for m in self.methods.values() for metric in m.metrics)

    def metrics(self, record: Optional[dict] = None, prefix: str = "inform/") -> Dict[str, float]:
        """The scalar metrics of a record (the last by default) with names for a logger."""
        record = record if record is not None else (self.history[-1] if self.history else {})
        out = {prefix + k: float(record[k]) for k in self.recorded_metrics() if k in record}
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

    @property
    def hook_keys(self) -> Tuple[str, ...]:
        """The keys of every ``__call__`` result: the recorded metrics, "onset", "evaluated"."""
        return self.recorded_metrics() + ("onset", "evaluated")

    def __call__(self, latents, rewards=None, step: Optional[int] = None) -> Dict[str, float]:
        """The reward-function hook (``make_trl_reward_func(..., monitor=monitor)``,
        ``make_openrlhf_reward_func``): buffers ``latents`` [n, L] and evaluates once per window of
        ``every`` steps, at the first call of the window or, when fewer than ``min_latents``
        latents are buffered then, at the first later call that brings enough.

        ``step`` is the trainer's global step when the caller knows it (TRL passes
        ``trainer_state``), else the number of earlier calls (OpenRLHF calls once per sample, so
        ``every`` then counts samples). Thread-safe. Returns ``hook_keys``: each recorded metric
        (the latest evaluation's value, NaN before the first), "onset" (1.0 when the latest
        evaluation flagged it) and "evaluated" (1.0 when this call evaluated). A detection error
        (e.g. auto eps on latents that all coincide) is reported as a warning and the call
        returns the previous values: a reward function must keep its rewards. ``rewards`` is
        accepted for the hook signature and not used."""
        with self._lock:
            if step is None:
                step = self._calls
            elif isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(f"step: expected an integer >= 0 or None, got {step!r}")
            self._calls += 1
            self.add(latents)
            window = step // self.every
            if window > self._window:
                self._window, self._hook_due = window, True
            evaluated = False
            if self._hook_due and self._buffered >= self.min_latents:
                self._hook_due = False
                parts = self._take_buffer()
                try:
                    self._evaluate(step, parts)
                    evaluated = True
                except ValueError as error:
                    warnings.warn(f"OverOptimizationMonitor: evaluation at step {step} failed ({error}); "
                                  f"{sum(p.shape[0] for p in parts)} latents dropped, rewards unaffected", stacklevel=2)
            return self.hook_values(evaluated)

    def hook_values(self, evaluated: bool = False) -> Dict[str, float]:
        """The ``hook_keys`` values of the latest evaluation (NaN before the first), ``evaluated`` as given."""
        last = self.history[-1] if self.history else {}
        values = {k: float(last[k]) if k in last else math.nan for k in self.recorded_metrics()}
        values["onset"] = float(bool(last.get("onset", False)))
        values["evaluated"] = float(evaluated)
        return values

    def to_dict(self) -> dict:
        return {
            "config": {
                "method": self.method,
                "methods": list(self.methods),
                "every": self.every,
                "onset_threshold": self.onset_threshold,
                "score_threshold": self.score_threshold,
                "min_jumps": self.min_jumps,
                "min_jump": self.min_jump,
                "min_latents": self.min_latents,
                **{f"{name}_kwargs": method.config() for name, method in self.methods.items()},
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
        """Write the history (and config, onset) as strict JSON (NaN / Inf as null), atomically."""
        write_json_atomic(path, self.to_dict())

    def plot(self, path: str) -> None:
        """PNG of the watched scores over steps, the onset marked."""
        plot_history(self.to_dict(), path)


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
    labels = {metric: label for method in DETECTION_METHODS.values() for metric, label in method.labels.items()}
    names = [k for k in labels if any(k in r for r in history)]
    if not names:
        raise ValueError(f"history: no scores to plot ({', '.join(labels)})")
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.6 * len(names)), sharex=True, squeeze=False)
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
