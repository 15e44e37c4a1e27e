"""Callbacks: everything that is not the training loop's job.

Callbacks run in ascending ``order``. One that wants training to end raises
:class:`StopTraining` with a reason; the loop catches it, finishes cleanly and records
the reason. Hooks receive the :class:`TrainState`, which they may read and annotate.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class StopTraining(Exception):
    """Raised by a callback to end training after the current epoch."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class TrainState:
    """What the loop knows, shared with callbacks."""

    model: nn.Module
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


class Callback:
    """Base class: override the hooks you need."""

    order = 50

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState, loss: float) -> None: ...
    def on_validation_start(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None: ...
    def on_fit_end(self, state: TrainState) -> None: ...


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
    """A rich progress bar over all training steps, with ETA, loss and the last validation metric."""

    order = 80

    def __init__(self, description: str = "fine-tuning") -> None:
        self.description = description
        self._progress: Any = None
        self._task: Any = None
        self._last = ""
        self._start = 0.0

    def on_fit_start(self, state: TrainState) -> None:
        if not state.is_main_process:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=state.epochs * state.steps_per_epoch, info="")
        self._start = time.perf_counter()

    def on_step_end(self, state: TrainState, loss: float) -> None:
        if self._progress is not None:
            info = f"epoch {state.epoch + 1}/{state.epochs} loss {loss:.4f} {self._last}"
            self._progress.update(self._task, advance=1, info=info)

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        shown = [
            f"{k.removeprefix('valid_')} {v:.4f}"
            for k, v in metrics.items()
            if k.startswith("valid_") and isinstance(v, float)
        ][:2]
        self._last = "| valid " + ", ".join(shown) if shown else ""

    def on_fit_end(self, state: TrainState) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=state.step, completed=state.step)
            self._progress.stop()
            self._progress = None


def snapshot(model: nn.Module, only_trainable: bool = False) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state (all of it, or just what can train)."""
    if not only_trainable:
        return copy.deepcopy(model.state_dict())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}
