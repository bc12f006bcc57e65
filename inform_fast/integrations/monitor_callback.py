"""``transformers.TrainerCallback`` for ``inform_fast.detect.OverOptimizationMonitor``.

Kept apart from ``inform_fast.detect.monitor`` so that detection never imports transformers.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

from transformers import TrainerCallback


class OverOptimizationCallback(TrainerCallback):
    """At every step the monitor is due, call ``latents_fn(step)`` (returns [n, L] latents of
    the current policy's responses, or None to skip), update the monitor, and set
    ``control.should_training_stop`` when the monitor says to stop.

    Logging: the scores join the Trainer's own log of that step (its ``loss``, ``grad_norm``,
    ``learning_rate``), which the callback asks for with ``control.should_log``. The callback
    never calls ``trainer.log`` itself: a log call from inside a step event resets the Trainer's
    ``should_log`` and its own log of the step would be lost. ``InfoRMTrainer`` and
    ``InfoRMRewardTrainer`` merge the scores before their log reaches any reporting integration;
    with another Trainer, ``attach(trainer)`` puts the callback first so that the integrations
    (called after it) see the scores, and they are added to ``state.log_history`` in any case.
    """

    def __init__(self, monitor, latents_fn: Callable, trainer=None, prefix: str = "inform/"):
        if not callable(latents_fn):
            raise ValueError("latents_fn: expected a callable step -> latents")
        self.monitor = monitor
        self.latents_fn = latents_fn
        self.trainer = trainer
        self.prefix = prefix
        self._pending: Optional[Dict[str, float]] = None

    def attach(self, trainer) -> "OverOptimizationCallback":
        """Register with ``trainer``, first in its callback list (see the class docstring)."""
        self.trainer = trainer
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def take_pending(self) -> Dict[str, float]:
        """The scores of the last evaluation not logged yet (and forget them)."""
        pending, self._pending = self._pending or {}, None
        return pending

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
        self._pending = self.monitor.metrics(record, self.prefix)
        control.should_log = True  # the Trainer logs this step, with our scores merged in
        if self.monitor.should_stop:
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        pending = self.take_pending()
        if pending:
            if logs is not None:
                logs.update(pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(pending)
            else:
                state.log_history.append({**pending, "step": state.global_step})
        return control


def merge_pending_scores(trainer, logs: Dict[str, float]) -> Dict[str, float]:
    """Add the scores that the trainer's ``OverOptimizationCallback`` instances have not logged yet
    to ``logs`` (a Trainer's ``log`` calls this before its reporting integrations see ``logs``)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, OverOptimizationCallback):
            logs.update(callback.take_pending())
    return logs
