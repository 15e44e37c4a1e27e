"""Class imbalance: random over- and undersampling of a training frame, seeded.

Class weights, the third remedy, act in the loss instead (``class_weight='balanced'``, or
``balance='class_weight'`` on :class:`~tunesmith.FineTuner`). Resampling only ever touches
the training split: a resampled validation or test split would misreport the metrics.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from tunesmith.data.clean_report import CleanAction
from tunesmith.data.schema import ROW_COLUMN
from tunesmith.errors import ConfigError, DataError

BalanceMethod = Literal["none", "oversample", "undersample", "class_weight"]
BALANCE_METHODS: tuple[str, ...] = ("none", "oversample", "undersample", "class_weight")


def resample(
    df: pd.DataFrame, target: str, method: Literal["oversample", "undersample"], *, seed: int = 0
) -> tuple[pd.DataFrame, CleanAction]:
    """Resample ``df`` so every class has as many rows as the largest (``oversample``) or
    the smallest (``undersample``) class.

    Oversampling keeps every original row and adds copies drawn at random with
    replacement; undersampling keeps a random subset of each larger class. The result is
    shuffled (seeded); the action reports the class counts before and after and, for
    undersampling, the dropped rows.
    """
    if method not in ("oversample", "undersample"):
        raise ConfigError(f"must be oversample or undersample, got {method!r}", key="balance")
    if target not in df.columns:
        raise DataError(f"target column {target!r} is missing", column=target)
    rng = np.random.default_rng(seed)
    labels = df[target].astype(str).to_numpy()
    names, counts = np.unique(labels, return_counts=True)
    if len(names) < 2:
        raise DataError("balancing needs at least two classes", column=target)
    before = {str(k): int(v) for k, v in zip(names, counts, strict=True)}
    goal = int(counts.max() if method == "oversample" else counts.min())
    picks: list[np.ndarray] = []
    for name in names:
        pos = np.flatnonzero(labels == name)
        if method == "oversample":
            extra = rng.choice(pos, size=goal - len(pos), replace=True) if len(pos) < goal else pos[:0]
            picks.append(np.concatenate([pos, extra]))
        else:
            picks.append(np.sort(rng.choice(pos, size=goal, replace=False)))
    chosen = np.concatenate(picks)
    chosen = chosen[rng.permutation(len(chosen))]
    out = df.iloc[chosen].copy()
    after = {
        str(k): int(v) for k, v in zip(*np.unique(out[target].astype(str).to_numpy(), return_counts=True), strict=True)
    }
    if method == "oversample":
        added = len(out) - len(df)
        action = CleanAction(
            "oversample",
            added,
            [],
            f"added {added} copies of minority-class rows (random oversampling to {goal} rows per class)",
            {"before": before, "after": after},
        )
    else:
        kept = np.zeros(len(df), dtype=bool)
        kept[chosen] = True
        rows = df[ROW_COLUMN].to_numpy()[~kept].tolist() if ROW_COLUMN in df.columns else np.flatnonzero(~kept).tolist()
        action = CleanAction(
            "drop_undersample",
            int((~kept).sum()),
            [int(r) for r in rows],
            f"dropped {int((~kept).sum())} majority-class rows (random undersampling to {goal} rows per class)",
            {"before": before, "after": after},
        )
    return out, action
