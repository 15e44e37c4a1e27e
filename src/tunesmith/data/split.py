"""Train / validation / test splits: stratified, grouped or given by a column.

All splits are deterministic for a given ``seed``. Rows keep their original order inside
each split. Row numbers in errors are 1-based data rows (header excluded), taken from the
``__row__`` column when the frame went through
:func:`~tunesmith.data.validate.prepare_frame`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tunesmith.data.schema import TASKS, did_you_mean, label_string, missing_mask, require_column
from tunesmith.data.validate import require_values, row_numbers
from tunesmith.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "valid", "test")
SPLIT_VALUES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
}
# Grouped splits try this many seeded shuffles of the groups and keep the one whose sizes and
# class mix come closest to the request: one shuffle alone is often lopsided with few groups.
GROUP_ATTEMPTS = 32


@dataclass
class SplitResult:
    """The three parts of a split, how they were made, and anything worth telling the user.

    ``strategy`` is ``"stratified"``, ``"random"``, ``"grouped"`` or ``"column"``; ``notes``
    holds one sentence per noteworthy event (such as falling back from stratification).
    ``valid`` or ``test`` is empty (with the same columns) when its size is 0.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    strategy: str
    notes: list[str] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        """``{"train": n, "valid": n, "test": n}``."""
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}

    def frames(self) -> dict[str, pd.DataFrame]:
        """``{"train": ..., "valid": ..., "test": ...}``."""
        return {"train": self.train, "valid": self.valid, "test": self.test}


def _check_args(
    valid_size: float, test_size: float, task: str, group_column: str | None, split_column: str | None
) -> None:
    for key, size in (("valid_size", valid_size), ("test_size", test_size)):
        if not 0.0 <= size < 1.0:
            raise ConfigError(f"{key} must be at least 0 and below 1, got {size}", key=key)
    if valid_size + test_size >= 1.0:
        raise ConfigError(
            f"valid_size + test_size must be below 1 (got {valid_size} + {test_size})",
            key="valid_size",
            hint="Leave some rows to train on",
        )
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}", key="task", hint=f"Use one of: {', '.join(TASKS)}")
    if group_column and split_column:
        raise ConfigError(
            "group_column conflicts with split_column",
            key="split_column",
            hint="Give one way to split, not both",
        )


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _counts(n: int, valid_size: float, test_size: float, file: str | Path | None) -> tuple[int, int]:
    """Rows for (valid, test): the fractions of ``n``, at least one row when a fraction is > 0."""
    n_test = max(1, _round(test_size * n)) if test_size > 0 else 0
    n_valid = max(1, _round(valid_size * n)) if valid_size > 0 else 0
    if n - n_test - n_valid < 1:
        raise DataError(
            f"too few rows ({n}) to hold out {n_valid} for validation and {n_test} for test",
            file=file,
            hint="Give more data or lower valid_size/test_size",
        )
    return n_valid, n_test


def _take(
    positions: np.ndarray, k: int, labels: np.ndarray | None, seed: int, part: str, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Split ``k`` of ``positions`` off: (rest, taken, stratified)."""
    from sklearn.model_selection import train_test_split

    if k == 0:
        return positions, positions[:0], True
    stratify = None
    if labels is not None:
        sub = labels[positions]
        classes, counts = np.unique(sub, return_counts=True)
        if counts.min() < 2:
            small = ", ".join(repr(str(c)) for c in classes[counts < 2][:5])
            notes.append(f"{part} split is not stratified: class {small} has fewer than 2 rows")
        elif k < len(classes) or len(positions) - k < len(classes):
            notes.append(
                f"{part} split is not stratified: {min(k, len(positions) - k)} rows cannot hold "
                f"all {len(classes)} classes"
            )
        else:
            stratify = sub
    try:
        rest, taken = train_test_split(positions, test_size=k, random_state=seed, shuffle=True, stratify=stratify)
    except ValueError as e:
        if stratify is None:
            raise
        notes.append(f"{part} split is not stratified: {e}")
        rest, taken = train_test_split(positions, test_size=k, random_state=seed, shuffle=True)
        stratify = None
    return np.sort(rest), np.sort(taken), stratify is not None


def _labels(df: pd.DataFrame, target: str | None, task: str, stratify: bool) -> np.ndarray | None:
    if not stratify or task == "regression" or target is None:
        return None
    if target not in df.columns:
        return None
    y = df[target]
    missing = missing_mask(y).to_numpy(dtype=bool)
    # Missing targets get a class of their own so they spread across splits like the rest.
    return np.array(["\x00missing" if m else label_string(v) for v, m in zip(y.tolist(), missing, strict=True)])


def _by_column(df: pd.DataFrame, column: str, file: str | Path | None) -> SplitResult:
    require_column(df, column, "split", file)
    raw = df[column]
    rows = row_numbers(df)
    hint = "Use train (or training), valid (validation, val, dev) or test"
    require_values(df, column, "split", hint=hint, file=file)
    names = [SPLIT_VALUES.get(str(v).strip().lower()) for v in raw.tolist()]
    for i, name in enumerate(names):
        if name is None:
            raise DataError(
                f"unknown split value {raw.iloc[i]!r}", file=file, row=int(rows[i]), column=column, hint=hint
            )
    where = np.array(names)
    parts = {name: df.iloc[np.flatnonzero(where == name)] for name in SPLIT_NAMES}
    if len(parts["train"]) == 0:
        raise DataError(
            f"split column {column!r} has no train rows",
            file=file,
            column=column,
            hint="Mark the rows to train on as 'train'",
        )
    notes = [f"splits follow column {column!r}"]
    notes += [f"column {column!r} marks no {name} rows" for name in ("valid", "test") if len(parts[name]) == 0]
    return SplitResult(parts["train"], parts["valid"], parts["test"], "column", notes)


def _cut(sizes: np.ndarray, wanted: float) -> int:
    """How many leading groups to take so their rows come closest to ``wanted`` (at least 1)."""
    cumulative = np.cumsum(sizes)
    return int(np.argmin(np.abs(cumulative - wanted))) + 1


def group_codes(df: pd.DataFrame, column: str, file: str | Path | None = None) -> tuple[np.ndarray, pd.Index]:
    """(group code per row, sorted group names); a missing group is a :class:`DataError` naming its row."""
    require_values(df, column, "group", hint="Fill in every row's group, or drop the rows without one", file=file)
    codes, uniques = pd.factorize(df[column].map(label_string), sort=True)
    return np.asarray(codes), pd.Index(uniques)


def _grouped(
    df: pd.DataFrame,
    column: str,
    labels: np.ndarray | None,
    valid_size: float,
    test_size: float,
    seed: int,
    file: str | Path | None,
) -> SplitResult:
    if column not in df.columns:
        raise DataError(
            f"group column {column!r} not found",
            file=file,
            column=column,
            hint=did_you_mean(column, df.columns),
        )
    codes, uniques = group_codes(df, column, file)
    n, n_groups = len(df), len(uniques)
    parts_needed = 1 + (valid_size > 0) + (test_size > 0)
    if n_groups < parts_needed:
        raise DataError(
            f"group column {column!r} has {n_groups} group(s); {parts_needed} are needed so that "
            "train, validation and test each get one",
            file=file,
            column=column,
            hint="Use a column with more groups, or set valid_size/test_size to 0",
        )
    group_sizes = np.bincount(codes, minlength=n_groups)
    if labels is not None:
        class_codes, classes = pd.factorize(labels, sort=True)
        per_group = np.zeros((n_groups, len(classes)))
        np.add.at(per_group, (codes, class_codes), 1)
        overall = per_group.sum(axis=0) / n
    best: tuple[float, np.ndarray] | None = None
    for attempt in range(GROUP_ATTEMPTS):
        order = np.random.default_rng([seed, attempt]).permutation(n_groups)
        k_test = _cut(group_sizes[order], test_size * n) if test_size > 0 else 0
        rest = order[k_test:]
        k_valid = _cut(group_sizes[rest], valid_size * n) if valid_size > 0 else 0
        # Keep at least one group for training.
        k_valid = min(k_valid, len(rest) - 1)
        assign = np.zeros(n_groups, dtype=np.int8)  # 0 train, 1 valid, 2 test
        assign[order[:k_test]] = 2
        assign[rest[:k_valid]] = 1
        rows_in = np.array([group_sizes[assign == s].sum() for s in range(3)])
        score = abs(rows_in[2] - test_size * n) / n + abs(rows_in[1] - valid_size * n) / n
        if labels is not None:
            for s in range(3):
                if rows_in[s]:
                    mix = per_group[assign == s].sum(axis=0) / rows_in[s]
                    score += 0.5 * float(np.abs(mix - overall).sum())
            score += 10.0 * int((per_group[assign == 0].sum(axis=0) == 0).sum())
        if best is None or score < best[0]:
            best = (score, assign)
    assert best is not None
    row_part = best[1][codes]
    train, valid, test = (df.iloc[np.flatnonzero(row_part == s)] for s in range(3))
    notes = [f"kept each of the {n_groups} groups in {column!r} inside one split"]
    if labels is not None:
        absent = set(np.unique(labels)) - set(np.unique(labels[row_part == 0]))
        if absent:
            notes.append(f"the train split has no rows of class(es) {', '.join(map(repr, sorted(absent)))}")
    return SplitResult(train, valid, test, "grouped", notes)


def split_frame(
    df: pd.DataFrame,
    *,
    target: str | None,
    task: str,
    valid_size: float = 0.1,
    test_size: float = 0.1,
    seed: int = 0,
    group_column: str | None = None,
    split_column: str | None = None,
    stratify: bool = True,
    file: str | Path | None = None,
) -> SplitResult:
    """Split ``df`` into train, validation and test parts.

    - ``split_column``: follow a column whose values are ``train``/``training``,
      ``valid``/``validation``/``val``/``dev`` or ``test`` (any case, spaces stripped); the
      column is kept. Any other or a missing value is a :class:`DataError` naming the row; so is
      a column without train rows. ``valid_size``/``test_size`` are then ignored.
    - ``group_column``: rows sharing a value stay in one split; whole groups move, so sizes are
      approximate. Of 32 seeded shuffles of the groups, the one closest to the requested sizes
      and (for classification) the overall class mix is kept.
    - Otherwise: ``test_size`` of all rows goes to test first, then ``valid_size`` of all rows
      (not of the remainder) to validation, stratified by ``target`` for classification when
      ``stratify``. When a class is too small to stratify, that part is split at random and a
      note says so.

    The same ``seed`` gives the same split. Raises :class:`ConfigError` for bad sizes, an unknown
    task or both ``group_column`` and ``split_column``; :class:`DataError` for a missing group or
    split column (named) and for too few rows or groups.
    """
    _check_args(valid_size, test_size, task, group_column, split_column)
    if split_column:
        return _by_column(df, split_column, file)
    labels = _labels(df, target, task, stratify)
    if group_column:
        return _grouped(df, group_column, labels, valid_size, test_size, seed, file)

    n_valid, n_test = _counts(len(df), valid_size, test_size, file)
    notes: list[str] = []
    positions = np.arange(len(df))
    rest, test_pos, strat_test = _take(positions, n_test, labels, seed, "test", notes)
    train_pos, valid_pos, strat_valid = _take(rest, n_valid, labels, seed, "validation", notes)
    stratified = labels is not None and strat_test and strat_valid
    return SplitResult(
        train=df.iloc[train_pos],
        valid=df.iloc[valid_pos],
        test=df.iloc[test_pos],
        strategy="stratified" if stratified else "random",
        notes=notes,
    )
