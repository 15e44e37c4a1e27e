"""Callbacks: everything that is not the training loop's job.

Callbacks run in ascending ``order``. One that wants training to end raises
:class:`StopTraining` with a reason; the loop lets the remaining callbacks see that epoch
too, then finishes cleanly and records the reason. Any other exception (``optuna.TrialPruned``
from a pruning callback) ends the fit and reaches the caller. Hooks receive the
:class:`TrainState`, which they may read and annotate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tunesmith.progress import Progress, progress


class StopTraining(Exception):
    """Raised by a callback to end training after the current epoch."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class TrainState:
    """What the loop knows, shared with callbacks.

    ``model`` is the network being trained (a LightGBM booster when a tabular fit reports its
    boosting rounds: ``epoch`` then counts steps of ``steps_per_epoch`` rounds).
    """

    model: Any
    epochs: int
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0
    examples_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    stop_reason: str | None = None
    is_main_process: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def end_epoch(callbacks: Sequence[Callback], state: TrainState, metrics: dict[str, Any]) -> bool:
    """Run every callback's ``on_epoch_end`` in order; True when one asked to stop.

    A :class:`StopTraining` from one callback does not skip the later ones (progress, the run
    record still see the epoch that stops); the first reason is kept in ``state.stop_reason``.
    """
    stop: StopTraining | None = None
    for cb in callbacks:
        try:
            cb.on_epoch_end(state, metrics)
        except StopTraining as raised:
            stop = stop or raised
    if stop is not None:
        state.stop_reason = stop.reason
    return stop is not None


class Callback:
    """Base class: override the hooks you need."""

    order = 50

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState, loss: float) -> None: ...
    def on_validation_start(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None: ...
    def on_fit_end(self, state: TrainState) -> None: ...

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """What this callback must keep for a resumed fit to continue exactly: tensors and JSON.

        None (the default) for a callback without state of its own across epochs.
        """
        return None

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Take back what :meth:`checkpoint_state` returned (called once, after ``on_fit_start``)."""


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; keep the best weights.

    The best weights are kept in memory (a copy of the trainable state) and put back at
    the end when ``restore_best`` is set, so the model returned is the best one seen on
    validation, not the last.
    """

    order = 20

    def __init__(
        self,
        monitor: str,
        mode: str,
        *,
        patience: int,
        min_delta: float = 0.0,
        restore_best: bool = True,
        stop: bool = True,
        state_fn: Callable[[], dict[str, torch.Tensor]] | None = None,
        load_fn: Callable[[dict[str, torch.Tensor]], None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.stop = stop
        self.state_fn = state_fn
        self.load_fn = load_fn
        self.best: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.wait = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        key = f"valid_{self.monitor}"
        value = metrics.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        if self._improved(float(value)):
            self.best = float(value)
            self.wait = 0
            state.best_epoch = state.epoch + 1  # 1-based, as people count epochs
            state.best_value = self.best
            metrics["best"] = True
            if self.restore_best and self.state_fn is not None:
                self.best_state = {k: v.detach().clone() for k, v in self.state_fn().items()}
            return
        self.wait += 1
        if self.stop and self.wait >= self.patience:
            raise StopTraining(
                f"{key} did not improve for {self.patience} epoch(s); best {self.best:.4f} at epoch {state.best_epoch}"
            )

    def on_fit_end(self, state: TrainState) -> None:
        if self.restore_best and self.best_state is not None and self.load_fn is not None:
            self.load_fn(self.best_state)

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return dict(self.best_state or {}), {"best": self.best, "wait": self.wait, "has_state": bool(self.best_state)}

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.best = meta["best"]
        self.wait = int(meta["wait"])
        self.best_state = dict(tensors) if meta.get("has_state") else None


class EpochHook(Callback):
    """Run a function at each epoch start (used for gradual unfreezing)."""

    order = 10

    def __init__(self, fn: Callable[[TrainState], None]) -> None:
        self.fn = fn

    def on_epoch_start(self, state: TrainState) -> None:
        self.fn(state)


class HistoryLogger(Callback):
    """Hands each epoch's metrics to ``sink`` (the run record's JSONL), on the main process."""

    order = 90

    def __init__(self, sink: Callable[[dict[str, Any]], None]) -> None:
        self.sink = sink

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.is_main_process:
            self.sink(dict(metrics))


class ProgressBar(Callback):
    """Progress over all training steps, and one line per epoch with its metrics.

    On a terminal this is a bar with an ETA; where output goes to a log (``nohup``, CI, a
    scheduler) it prints plain lines instead (see :func:`tunesmith.progress.progress`): the
    start, at least one a minute with steps done and an ETA, each epoch's metrics, the end.
    """

    order = 80

    def __init__(self, description: str = "fine-tuning") -> None:
        self.description = description
        self._bar: Progress | None = None

    def on_fit_start(self, state: TrainState) -> None:
        if not state.is_main_process:
            return
        self._bar = progress(self.description, state.epochs * state.steps_per_epoch, unit="steps")
        self._bar.__enter__()

    def on_step_end(self, state: TrainState, loss: float) -> None:
        if self._bar is not None:
            self._bar.advance(1, info=f"epoch {state.epoch + 1}/{state.epochs} loss {loss:.4f}")

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.note(epoch_line(metrics, state.epochs))

    def on_fit_end(self, state: TrainState) -> None:
        if self._bar is not None:
            self._bar.set_total(state.step)
            self._bar.__exit__(None, None, None)
            self._bar = None


def epoch_line(metrics: dict[str, Any], epochs: int | None = None) -> str:
    """``epoch 3/10: train_loss 0.4123, valid_loss 0.3810, valid_accuracy 0.9000`` (losses and valid_*)."""
    epoch = metrics.get("epoch")
    head = f"epoch {epoch}" + (f"/{epochs}" if epochs else "")
    shown = [
        f"{k} {float(v):.4f}"
        for k, v in metrics.items()
        if (k == "train_loss" or k.startswith("valid_"))
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and v is not None
    ]
    return head + (": " + ", ".join(shown) if shown else "") + (" (best so far)" if metrics.get("best") else "")


def snapshot(model: nn.Module, only_trainable: bool = False) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state (all of it, or just what can train)."""
    if not only_trainable:
        return copy.deepcopy(model.state_dict())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}
