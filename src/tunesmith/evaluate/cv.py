"""K-fold cross-validation of a fine-tuning configuration.

:func:`cv_folds` cuts a table into ``k`` (train, validation) folds: stratified by the
target, grouped (no group in two folds) or by time (each fold validates on rows later than
every row it trains on). :func:`cross_validate` fits one :class:`~tunesmith.estimator.FineTuner`
per fold and scores each by its best validation value of the monitored metric.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tunesmith.data.schema import ROW_COLUMN, _infer_task, label_string, missing_mask, require_column
from tunesmith.data.split import group_codes
from tunesmith.data.validate import require_values, row_numbers
from tunesmith.errors import ConfigError, DataError, TunesmithError

if TYPE_CHECKING:
    from tunesmith.train.callbacks import Callback

STRATEGIES = ("stratified", "group", "time")

Fold = tuple[np.ndarray, np.ndarray]


# --- folds -----------------------------------------------------------------------------------


def _check_fold_args(k: Any, strategy: str, group_column: str | None, time_column: str | None) -> None:
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
    _check_fold_args(k, strategy, group_column, time_column)
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


# --- cross-validation ---------------------------------------------------------------------------


@dataclass
class CVResult:
    """What :func:`cross_validate` measured.

    ``metric`` is the monitored validation metric (``"valid_f1_macro"``) and ``mode`` which
    way it improves (``"max"``/``"min"``). ``scores`` holds each fold's best validation value
    (its ``best_score_``); ``mean`` is their mean and ``std`` their *population* standard
    deviation (``ddof=0``, as ``numpy.std``). ``fold_metrics`` holds, per fold, every
    validation metric at its best epoch (``valid_*`` keys, plus ``epoch``); ``best_epochs``
    the 1-based best epoch and ``epochs_run`` the epochs trained per fold; ``fold_sizes`` the
    ``{"train": n, "valid": n}`` rows per fold; ``fold_seconds`` each fold's wall time and
    ``seconds`` the whole run's.
    """

    metric: str
    mode: str
    scores: list[float]
    mean: float
    std: float
    fold_metrics: list[dict[str, Any]]
    best_epochs: list[int | None]
    seconds: float
    epochs_run: list[int] = field(default_factory=list)
    fold_sizes: list[dict[str, int]] = field(default_factory=list)
    fold_seconds: list[float] = field(default_factory=list)
    strategy: str = "stratified"
    k: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        from tunesmith.runs.artifacts import json_safe

        return dict(json_safe(asdict(self)))

    def summary(self) -> str:
        """One line, e.g. ``valid_f1_macro 0.8123 ± 0.0210 over 5 folds (stratified)``."""
        return f"{self.metric} {self.mean:.4f} ± {self.std:.4f} over {len(self.scores)} folds ({self.strategy})"


def _best_row(history: Sequence[Mapping[str, Any]], best_epoch: int | None) -> dict[str, Any]:
    if best_epoch is None or not 1 <= best_epoch <= len(history):
        return {}
    row = history[best_epoch - 1]
    out: dict[str, Any] = {"epoch": best_epoch}
    out.update({k: v for k, v in row.items() if k.startswith("valid_")})
    return out


def cross_validate(
    params: Mapping[str, Any],
    data: Any,
    *,
    target: str,
    text_column: str | list[str] | None = None,
    k: int = 5,
    strategy: str = "stratified",
    group_column: str | None = None,
    time_column: str | None = None,
    seed: int = 0,
    fold_callbacks: Callable[[int], Sequence[Callback]] | None = None,
    progress: bool = True,
) -> CVResult:
    """Fit ``FineTuner(**params)`` on each of ``k`` folds of ``data``; score each on its held-out fold.

    ``data`` is a file or a DataFrame holding ``target``; it is read once and cut by
    :func:`cv_folds` (``strategy``, ``group_column``, ``time_column`` and ``seed`` as there;
    stratification uses the raw target labels). Fold ``i`` trains on its training rows with
    its validation rows as ``eval_set`` and scores ``best_score_``: the best validation value
    of the monitored metric (``monitor``), with early stopping as configured.

    Settings come from ``params``; unless they say otherwise, folds score no baselines
    (``baselines=False``), write no run records (``runs_dir=None``) and show progress bars
    as ``progress`` says. ``valid_size``/``test_size`` do not apply (the fold is the
    validation set; there is no test split). With ``strategy="group"`` and no
    ``group_column``, ``params["group_column"]`` is used; the group column is never fed to
    the model. With ``strategy="time"`` the time column only orders the rows and is dropped
    before fitting. ``seed`` cuts the folds; the fits use ``params["seed"]``.

    ``fold_callbacks(i)`` (``i`` from 0) gives extra training-loop callbacks for fold ``i``
    (a search's pruner); an exception they raise propagates unchanged and ends the run.

    Rows are cleaned (``duplicates``, ``conflicts``, ...) inside each fold's training part,
    after the folds are cut.
    """
    from tunesmith.config import make_config
    from tunesmith.estimator import FineTuner

    started = time.perf_counter()
    if strategy == "group" and not group_column:
        group_column = params.get("group_column") or None
    _check_fold_args(k, strategy, group_column, time_column)
    fold_params: dict[str, Any] = {"baselines": False, "runs_dir": None, "progress": progress, **params}
    if strategy == "group":
        # Passed on so that each fit leaves it out of the model's inputs, as a split column.
        fold_params["group_column"] = group_column
        fold_params.pop("split_column", None)
    cfg = make_config(fold_params)  # refuse bad settings before any fold trains

    df, target_col, file = FineTuner._frame(data, None, target)
    assert target_col is not None
    require_column(df, target_col, "target", file)
    if ROW_COLUMN not in df.columns:
        # Row numbers of the whole table, so an error inside a fold names the row the user sees.
        df = df.copy()
        df[ROW_COLUMN] = row_numbers(df)
    folds = cv_folds(
        df,
        k=k,
        strategy=strategy,
        target=target_col,
        task=None if cfg.task == "auto" else cfg.task,
        group_column=group_column,
        time_column=time_column,
        seed=seed,
        file=file,
    )
    model_df = df
    texts = [text_column] if isinstance(text_column, str) else list(text_column or [])
    if strategy == "time" and time_column and time_column not in (target_col, *texts):
        model_df = df.drop(columns=[time_column])
    if cfg.task == "auto":
        # One task for every fold, read from the whole target (a fold alone could read otherwise).
        fold_params["task"] = _infer_task(df[target_col])

    scores: list[float] = []
    fold_metrics: list[dict[str, Any]] = []
    best_epochs: list[int | None] = []
    epochs_run: list[int] = []
    fold_sizes: list[dict[str, int]] = []
    fold_seconds: list[float] = []
    metric, mode = "", ""
    for i, (train_idx, valid_idx) in enumerate(folds):
        fold_started = time.perf_counter()
        extra = list(fold_callbacks(i)) if fold_callbacks is not None else None
        try:
            ft = FineTuner(**fold_params).fit(
                model_df.iloc[train_idx],
                target=target_col,
                text_column=text_column,
                eval_set=model_df.iloc[valid_idx],
                callbacks=extra,
            )
        except TunesmithError as exc:
            if hasattr(exc, "add_note"):  # Python 3.11+: shown under the traceback
                exc.add_note(f"in cross-validation fold {i + 1} of {len(folds)}")
            raise
        metric, mode = str(ft.monitor_), str(ft.monitor_mode_)
        if ft.best_score_ is None:
            raise DataError(
                f"fold {i + 1} of {len(folds)}: {metric} could not be computed on its validation rows",
                file=file,
                hint="Choose another monitor, or a strategy whose folds hold every class",
            )
        scores.append(float(ft.best_score_))
        best_epochs.append(ft.best_epoch_)
        epochs_run.append(len(ft.history_))
        fold_metrics.append(_best_row(ft.history_, ft.best_epoch_))
        fold_sizes.append({"train": len(train_idx), "valid": len(valid_idx)})
        fold_seconds.append(time.perf_counter() - fold_started)
        if progress:
            print(
                f"fold {i + 1}/{len(folds)}: {metric} {scores[-1]:.4f} "
                f"(best epoch {ft.best_epoch_}, {fold_seconds[-1]:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    values = np.asarray(scores, dtype=np.float64)
    return CVResult(
        metric=metric,
        mode=mode,
        scores=scores,
        mean=float(values.mean()),
        std=float(values.std(ddof=0)),
        fold_metrics=fold_metrics,
        best_epochs=best_epochs,
        seconds=time.perf_counter() - started,
        epochs_run=epochs_run,
        fold_sizes=fold_sizes,
        fold_seconds=fold_seconds,
        strategy=strategy,
        k=len(folds),
    )


__all__ = ["STRATEGIES", "CVResult", "cross_validate", "cv_folds", "time_values"]
