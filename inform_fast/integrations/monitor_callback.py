"""``transformers.TrainerCallback`` for ``inform_fast.detect.OverOptimizationMonitor``.

Kept apart from ``inform_fast.detect.monitor`` so that detection never imports transformers.
"""
from __future__ import annotations

from typing import Callable

from transformers import TrainerCallback


class OverOptimizationCallback(TrainerCallback):
    """At every step the monitor is due, call ``latents_fn(step)`` (returns [n, L] latents of
    the current policy's responses, or None to skip), update the monitor, log its scores and set
    ``control.should_training_stop`` when the monitor says to stop.

    Logging: with ``trainer`` given (or ``attach(trainer)``), the scores go through
    ``trainer.log`` and so reach every reporting integration; without it they are appended to
    ``state.log_history``.
    """

    def __init__(self, monitor, latents_fn: Callable, trainer=None, prefix: str = "inform/"):
        if not callable(latents_fn):
            raise ValueError("latents_fn: expected a callable step -> latents")
        self.monitor = monitor
        self.latents_fn = latents_fn
        self.trainer = trainer
        self.prefix = prefix

    def attach(self, trainer) -> "OverOptimizationCallback":
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def on_step_end(self, args, state, control, **kwargs):
        step = int(state.global_step)
        if not self.monitor.is_due(step):
            return control
        latents = self.latents_fn(step)
        if latents is None:
            return control
        record = self.monitor.update(step, latents)
        if record is None:
            return control
        metrics = self.monitor.metrics(record, self.prefix)
        if self.trainer is not None:
            self.trainer.log(metrics)
        else:
            state.log_history.append({**metrics, "step": step})
        if self.monitor.should_stop:
            control.should_training_stop = True
        return control
