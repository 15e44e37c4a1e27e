"""Folds for cross-validation: stratified by the target, grouped, or ordered in time.

:func:`cv_folds` cuts a table into ``k`` (train, validation) folds without fitting anything;
:func:`tunesmith.search.cv.cross_validate` fits an estimator on each of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.schema import _infer_task, label_string, missing_mask, require_column
from tunesmith.data.split import group_codes
from tunesmith.data.validate import require_values, row_numbers
from tunesmith.errors import ConfigError, DataError

STRATEGIES = ("stratified", "group", "time")

Fold = tuple[np.ndarray, np.ndarray]


def check_fold_args(k: Any, strategy: str, group_column: str | None, time_column: str | None) -> None:
    """Refuse a fold count below 2, an unknown strategy, or a strategy without the column it needs."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"k must be a whole number of folds, at least 2, got {k!r}", key="k")
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown cross-validation strategy {strategy!r}",
            key="strategy",
            hint=f"Use one of: {', '.join(STRATEGIES)}",
        )
    if strategy == "group" and not group_column:
        raise ConfigError(
            "strategy 'group' needs a group column",
            key="group_column",
            hint="Name the column whose rows must stay in one fold (CLI: --group-column COL)",
        )
    if strategy == "time" and not time_column:
        raise ConfigError(
            "strategy 'time' needs a time column",
            key="time_column",
            hint="Name the column that orders the rows in time (CLI: --time-column COL)",
        )


def _resolve_task(df: pd.DataFrame, target: str | None, task: str | None) -> str | None:
    if task not in (None, "auto"):
        return task
    if target is None:
        return None
    return _infer_task(df[target])


def _class_labels(df: pd.DataFrame, target: str) -> np.ndarray:
    """Label strings of the raw target; missing targets form a class of their own."""
    y = df[target]
    missing = missing_mask(y).to_numpy(dtype=bool)
    return np.array(["\x00missing" if m else label_string(v) for v, m in zip(y.tolist(), missing, strict=True)])


def _sorted(folds: Sequence[tuple[Any, Any]]) -> list[Fold]:
    return [(np.sort(np.asarray(tr, dtype=np.int64)), np.sort(np.asarray(va, dtype=np.int64))) for tr, va in folds]


def _split(splitter: Any, n: int, y: np.ndarray | None, groups: np.ndarray | None, file: str | Path | None) -> Any:
    """``splitter.split`` with its refusals (a class or group too small for k folds) as DataError."""
    try:
        with warnings.catch_warnings():
            # "The least populated class has only 2 members": stratification is then as good as it gets.
            warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
            return list(splitter.split(np.zeros((n, 1)), y, groups))
    except ValueError as exc:
        raise DataError(f"cannot cut {splitter.get_n_splits()} folds: {exc}", file=file) from None


def _stratified(df: pd.DataFrame, k: int, target: str | None, task: str | None, seed: int, file: Any) -> list[Fold]:
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(df)
    if task is None or task == "regression":
        return _sorted(_split(KFold(n_splits=k, shuffle=True, random_state=seed), n, None, None, file))
    assert target is not None
    labels = _class_labels(df, target)
    _, counts = np.unique(labels, return_counts=True)
    if counts.max() < k:
        raise DataError(
            f"no class of {target!r} has {k} rows, so {k} stratified folds cannot each hold one",
            file=file,
            column=target,
            hint="Lower k or give more data",
        )
    return _sorted(_split(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed), n, labels, None, file))


def _grouped(
    df: pd.DataFrame, k: int, target: str | None, task: str | None, column: str, seed: int, file: Any
) -> list[Fold]:
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    require_column(df, column, "group", file)
    groups, uniques = group_codes(df, column, file)
    if len(uniques) < k:
        raise DataError(
            f"group column {column!r} has {len(uniques)} group(s), fewer than the {k} folds",
            file=file,
            column=column,
            hint="Lower k or use a column with more groups",
        )
    n = len(df)
    if task is None or task == "regression":
        try:
            splitter: Any = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        except TypeError:  # pragma: no cover - scikit-learn < 1.6: no shuffle; renumber groups by seed
            splitter = GroupKFold(n_splits=k)
            groups = np.random.default_rng(seed).permutation(len(uniques))[groups]
        return _sorted(_split(splitter, n, None, groups, file))
    assert target is not None
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return _sorted(_split(splitter, n, _class_labels(df, target), groups, file))


def time_values(df: pd.DataFrame, column: str, file: str | Path | None = None) -> np.ndarray:
    """The time column as sortable numbers: numbers as they are, dates and times as nanoseconds.

    Raises :class:`DataError` naming the column and the 1-based row of the first missing or
    unreadable value.
    """
    require_column(df, column, "time", file)
    raw = df[column]
    rows = row_numbers(df)
    require_values(df, column, "time", hint="Fill in every row's time, or drop the rows without one", file=file)
    if pd.api.types.is_bool_dtype(raw.dtype):
        raise DataError("a time column must hold dates, times or numbers, not true/false", file=file, column=column)
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return raw.to_numpy(dtype=np.float64)
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        return pd.to_datetime(raw, utc=True).to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
    as_numbers = pd.to_numeric(raw, errors="coerce")
    if not as_numbers.isna().any():
        return as_numbers.to_numpy(dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = pd.to_datetime(raw.astype(str).str.strip(), errors="coerce", utc=True, format="mixed")
        except (ValueError, TypeError, OverflowError):  # pragma: no cover - errors="coerce" turns these into NaT
            parsed = pd.Series(pd.NaT, index=raw.index)
    bad = parsed.isna().to_numpy(dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"cannot read {raw.iloc[i]!r} as a date, time or number",
            file=file,
            row=int(rows[i]),
            column=column,
            hint="Use ISO dates such as 2024-05-31 or 2024-05-31T12:00:00, or plain numbers",
        )
    return parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)


def _by_time(df: pd.DataFrame, k: int, column: str, file: Any) -> list[Fold]:
    times = time_values(df, column, file)
    n = len(df)
    block = n // (k + 1)
    if block < 1:
        raise DataError(
            f"too few rows ({n}) for {k} time-ordered folds: {k + 1} blocks are needed",
            file=file,
            column=column,
            hint="Lower k or give more data",
        )
    order = np.argsort(times, kind="stable")
    ordered = times[order]
    # As scikit-learn's TimeSeriesSplit: k validation blocks of n // (k + 1) rows at the end,
    # each trained on everything before it. A boundary inside a run of equal times moves to
    # the run's start, so a validation block never shares a time with its training rows.
    bounds = [n - (k - i) * block for i in range(k)] + [n]
    for i in range(k):
        b = bounds[i]
        while b > 0 and ordered[b - 1] == ordered[b]:
            b -= 1
        bounds[i] = b
    if bounds[0] == 0 or any(bounds[i] >= bounds[i + 1] for i in range(k)):
        raise DataError(
            f"time column {column!r} has too few distinct times for {k} time-ordered folds",
            file=file,
            column=column,
            hint="Lower k, or use a finer time column",
        )
    return _sorted([(order[: bounds[i]], order[bounds[i] : bounds[i + 1]]) for i in range(k)])


def cv_folds(
    df: pd.DataFrame,
    *,
    k: int = 5,
    strategy: str = "stratified",
    target: str | None = None,
    task: str | None = None,
    group_column: str | None = None,
    time_column: str | None = None,
    seed: int = 0,
    file: str | Path | None = None,
) -> list[Fold]:
    """``k`` folds of ``df`` as (train positions, validation positions), each sorted.

    - ``"stratified"``: every row validates once; for classification each fold keeps the
      class proportions of ``target`` (missing targets count as a class of their own), for
      regression or without ``target`` the folds are a shuffled k-fold.
    - ``"group"``: rows sharing a ``group_column`` value stay in one fold; for classification
      the folds are also stratified as far as the groups allow. Needs at least ``k`` groups.
    - ``"time"``: rows are ordered by ``time_column`` (numbers, or dates and times parsed from
      text, time zones converted to UTC) and cut like scikit-learn's ``TimeSeriesSplit``: fold
      ``i`` validates on the ``i``-th of ``k`` blocks of ``n // (k + 1)`` rows at the end and
      trains on all rows before it (an expanding window), so every validation row is
      strictly later than every training row. The first rows only ever train.

    ``task`` (``binary``, ``multiclass``, ``regression``) is inferred from ``target`` when
    ``None`` or ``"auto"``. The same ``seed`` gives the same folds (``"time"`` does not use it).

    Raises:
        ConfigError: ``k`` below 2, an unknown ``strategy``, ``"group"`` without
            ``group_column`` or ``"time"`` without ``time_column``.
        DataError: a missing column, a missing group or time value, an unreadable time (the
            column and 1-based row are named), fewer groups than ``k``, too few rows.
    """
    check_fold_args(k, strategy, group_column, time_column)
    k = int(k)
    if target is not None:
        require_column(df, target, "target", file)
    if len(df) < k:
        raise DataError(f"too few rows ({len(df)}) for {k} folds", file=file, hint="Lower k or give more data")
    resolved = _resolve_task(df, target, task)
    if strategy == "group":
        assert group_column is not None
        return _grouped(df, k, target, resolved, group_column, seed, file)
    if strategy == "time":
        assert time_column is not None
        return _by_time(df, k, time_column, file)
    return _stratified(df, k, target, resolved, seed, file)


__all__ = ["STRATEGIES", "Fold", "check_fold_args", "cv_folds", "time_values"]
