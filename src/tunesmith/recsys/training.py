"""Helpers of a recommender fit: item texts, per-user flags, and the epoch reporter.

:class:`EpochReporter` turns the inner training loops' per-epoch rows (SASRec's and
BPR-MF's; they keep their own loops because they train on sampled sequences and numpy
triples that the shared :mod:`tunesmith.train.loop` does not take) into the contract's
callback calls, progress lines and run-record lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import ConfigError, DataError
from tunesmith.progress import Progress, progress
from tunesmith.recsys.data import Interactions
from tunesmith.runs.record import RunRecord
from tunesmith.train.callbacks import TrainState

VALID_KEY = "valid_ndcg@10"
"""The validation metric every recommender epoch reports (higher is better); search prunes on it."""


def item_texts(features: pd.DataFrame, columns: Sequence[str] | None, file: Any = None) -> pd.Series:
    """One text per item id: the chosen columns' values joined, missing values left out."""
    cols = list(columns) if columns is not None else [c for c in features.columns if c != "__row__"]
    for c in cols:
        if c not in features.columns:
            raise DataError(
                f"item text column {c!r} not found",
                file=file,
                column=c,
                hint=f"The item table has: {', '.join(map(str, features.columns))}",
            )
    if not cols:
        raise ConfigError("the item table has no column to build item texts from", key="item_text")
    parts = features[cols].astype(object).where(features[cols].notna(), "").astype(str)
    texts = [". ".join(v for v in row if v.strip()) for row in parts.itertuples(index=False)]
    return pd.Series(texts, index=features.index, dtype=object)


def flags_by_user(inter: Interactions, mask: np.ndarray) -> list[np.ndarray]:
    """Per user code, ``mask`` (one value per row of ``inter.frame``) cut into the user's rows."""
    bounds = np.searchsorted(inter.frame["user"].to_numpy(), np.arange(inter.n_users + 1))
    return [mask[bounds[u] : bounds[u + 1]] for u in range(inter.n_users)]


class EpochReporter:
    """Hands each training epoch to the callbacks, the progress display and the run record.

    Use it as a context manager around training; :meth:`start` once the epoch count is
    known, then pass :meth:`phase` as the loop's per-epoch hook. Epochs are counted across
    phases (pre-training, fine-tuning), so a pruner sees one rising step count.
    """

    def __init__(self, callbacks: Sequence[Any], *, record: RunRecord | None, enabled: bool) -> None:
        self.callbacks = sorted(callbacks, key=lambda c: getattr(c, "order", 50))
        self.record = record
        self.enabled = enabled
        self.history: list[dict[str, Any]] = []
        self.state: TrainState | None = None
        self._bar: Progress | None = None

    def __enter__(self) -> EpochReporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
            self._bar = None
        if exc_type is None and self.state is not None:
            for cb in self.callbacks:
                cb.on_fit_end(self.state)

    def start(self, model: Any, epochs: int) -> None:
        """Training of ``model`` begins, for at most ``epochs`` epochs in all."""
        self.state = TrainState(model=model, epochs=epochs, steps_per_epoch=0)
        self._bar = progress("recommender training", epochs, unit="epochs", enabled=self.enabled)
        self._bar.__enter__()
        for cb in self.callbacks:
            cb.on_fit_start(self.state)

    def phase(self, name: str) -> Callable[[dict[str, Any]], None]:
        """The per-epoch hook of one training phase: ``row`` holds ``loss`` and, when validated, ``valid``."""

        def hook(row: dict[str, Any]) -> None:
            state = self.state
            assert state is not None, "start() comes first"
            metrics: dict[str, Any] = {"epoch": state.epoch + 1, "phase": name}
            if row.get("loss") is not None:
                metrics["train_loss"] = float(row["loss"])
            if row.get("valid") is not None:
                metrics[VALID_KEY] = float(row["valid"])
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            if self._bar is not None:
                self._bar.advance(1, info=shown)
                self._bar.note(f"{name} epoch {metrics['epoch']}: {shown}")
            try:
                for cb in self.callbacks:
                    cb.on_epoch_end(state, metrics)
            finally:
                self.history.append(metrics)
                state.history.append(metrics)
                if self.record is not None:
                    self.record.log_epoch(metrics)
                state.epoch += 1

        return hook


__all__ = ["VALID_KEY", "EpochReporter", "flags_by_user", "item_texts"]
