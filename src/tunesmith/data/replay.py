"""New labeled data for a model that already serves: checks against what it learned, and replay.

Refitting continues from a fitted model, so the new rows must speak its language: the same
input columns and, for a classifier, only labels it knows (its head has one output per
class). :func:`check_new_data` says exactly what does not match and what to do.
:func:`replay_sample` draws the sample of old rows that is trained on beside the new ones,
stratified by label so the old class balance survives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from tunesmith.data.schema import label_string, missing_mask
from tunesmith.errors import DataError


def check_new_data(
    frame: pd.DataFrame,
    *,
    columns: Sequence[str],
    target: str | None,
    labels: Sequence[str] | None,
    file: str | Path | None = None,
    what: str = "new data",
) -> None:
    """Refuse new data the model cannot continue on, naming the column, label and rows.

    Args:
        frame: the new rows, as read.
        columns: input columns the model reads (each must be present).
        target: the label column (must be present; ``None`` for unlabeled kinds).
        labels: the classes the model knows (``None`` for regression): a label outside them
            is an error that says how to add a class.
        file: the file the rows came from, for the message.
        what: how the message names the data (``"new data"``, ``"replay data"``).

    Raises:
        DataError: no rows, a missing column, or a label the model never saw.
    """
    if len(frame) == 0:
        raise DataError(
            f"the {what} has no rows", file=file, hint="Refit needs labeled rows of the new period; check the export"
        )
    wanted = list(columns) + ([target] if target else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(
            f"the {what} lacks column(s) {', '.join(map(repr, missing))} the model was trained on "
            f"(it has {', '.join(map(repr, list(frame.columns)[:12]))})",
            file=file,
            column=missing[0],
            hint="Rename the columns to the model's names; a model with other inputs is a new model (tunesmith fit)",
        )
    if target is None or labels is None:
        return
    values = frame[target]
    known = set(labels)
    present = ~missing_mask(values).to_numpy(dtype=bool)
    names = np.array([label_string(v) if ok else "" for v, ok in zip(values, present, strict=True)], dtype=object)
    unknown = present & ~np.isin(names, list(known))
    if unknown.any():
        new_labels = sorted({str(n) for n in names[unknown]})
        rows = (np.flatnonzero(unknown) + 1)[:5].tolist()
        raise DataError(
            f"the {what} holds label(s) {', '.join(map(repr, new_labels))} the model never saw "
            f"({int(unknown.sum())} rows, first rows {rows}); it knows {', '.join(map(repr, sorted(known)))}",
            file=file,
            column=target,
            row=rows[0],
            hint=(
                "Refit keeps the model's classes (its head has one output per class). To add a class, "
                "fit a new model on the old and new data together (tunesmith fit), or drop those rows"
            ),
        )


def replay_sample(
    old: pd.DataFrame, n: int, *, stratify: str | None = None, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``n`` old rows to train on beside the new ones (all of them when there are fewer).

    With ``stratify`` (the label column) each label keeps its share of the old rows, so a
    rare old class is replayed too (at least one row of each while ``n`` allows). Returns the
    rows, in a shuffled order fixed by ``seed``, and a note of what was drawn.
    """
    n = max(0, min(int(n), len(old)))
    rng = np.random.default_rng(seed)
    if n == len(old):
        picked = rng.permutation(len(old))
    elif stratify is None or stratify not in old.columns:
        picked = rng.choice(len(old), size=n, replace=False)
    else:
        keys = np.array([label_string(v) for v in old[stratify]], dtype=object)
        groups = {k: np.flatnonzero(keys == k) for k in sorted(set(keys.tolist()))}
        shares = {k: n * len(v) / len(old) for k, v in groups.items()}
        take = {k: min(len(groups[k]), max(1 if n >= len(groups) else 0, int(np.floor(s)))) for k, s in shares.items()}
        left = n - sum(take.values())
        # one row of each rare label can overshoot n: the largest labels give the extra rows back
        while left < 0:
            biggest = max(take, key=lambda k: take[k])
            take[biggest] -= 1
            left += 1
        # the rows floor() left over go to the labels with the largest remainders
        for k in sorted(groups, key=lambda k: shares[k] - np.floor(shares[k]), reverse=True):
            if left <= 0:
                break
            if take[k] < len(groups[k]):
                take[k] += 1
                left -= 1
        parts = [rng.choice(groups[k], size=take[k], replace=False) for k in groups if take[k]]
        picked = rng.permutation(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    out = old.iloc[picked].reset_index(drop=True)
    return out, {"old_rows": len(old), "replayed": len(out), "stratified_by": stratify}


def hold_out(
    frame: pd.DataFrame, share: float, *, stratify: str | None = None, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``frame`` split into the rows kept for training and ``share`` of them held out.

    Stratified by ``stratify`` (the label column) when every label has at least two rows;
    at least one row is held out and one kept (a frame of one row is all kept).
    """
    if len(frame) < 2:
        return frame.reset_index(drop=True), frame.iloc[:0].reset_index(drop=True)
    n_held = min(len(frame) - 1, max(1, round(len(frame) * share)))
    strata = None
    if stratify is not None and stratify in frame.columns:
        keys = pd.Series([label_string(v) for v in frame[stratify]], index=frame.index)
        counts = keys.value_counts()
        if counts.min() >= 2 and n_held >= len(counts) and len(frame) - n_held >= len(counts):
            strata = keys
    keep, held = train_test_split(frame, test_size=n_held, random_state=seed, stratify=strata)
    return keep.reset_index(drop=True), held.reset_index(drop=True)


class RefitData:
    """The rows of a refit: what trains (new + replayed old), and the held-out rows of each period.

    ``new_valid`` (early stopping, WiSE-FT's choice) comes from the new rows unless
    ``eval_set`` was given; ``old_valid`` is a second draw from the replay data, disjoint from
    the replayed rows, the same size as ``new_valid`` (empty without replay data).
    """

    def __init__(
        self,
        new: pd.DataFrame,
        replay: pd.DataFrame | None,
        *,
        target: str | None,
        stratify: bool,
        replay_ratio: float,
        use_replay: bool,
        valid_size: float,
        seed: int,
        eval_set: pd.DataFrame | None = None,
    ) -> None:
        key = target if stratify else None
        if eval_set is None:
            self.new_train, self.new_valid = hold_out(new, valid_size, stratify=key, seed=seed)
        else:
            self.new_train, self.new_valid = new.reset_index(drop=True), eval_set.reset_index(drop=True)
        self.replayed = new.iloc[:0]
        self.old_valid = new.iloc[:0]
        self.replay_note: dict[str, Any] = {"old_rows": 0, "replayed": 0}
        if replay is not None and len(replay):
            # the held-out old rows are drawn first, so the replayed ones never include them
            rest, held = hold_out(replay, min(0.5, len(self.new_valid) / max(1, len(replay))), stratify=key, seed=seed)
            self.old_valid = held
            if use_replay:
                self.replayed, self.replay_note = replay_sample(
                    rest, round(replay_ratio * len(self.new_train)), stratify=key, seed=seed
                )
        self.train = pd.concat([self.new_train, self.replayed], ignore_index=True)
        if len(self.replayed):
            order = np.random.default_rng(seed + 1).permutation(len(self.train))
            self.train = self.train.iloc[order].reset_index(drop=True)

    def rows(self) -> dict[str, int]:
        """How many rows each part holds (for the refit's record)."""
        return {
            "new_train": len(self.new_train),
            "new_valid": len(self.new_valid),
            "replay_train": len(self.replayed),
            "old_valid": len(self.old_valid),
            "train": len(self.train),
        }
