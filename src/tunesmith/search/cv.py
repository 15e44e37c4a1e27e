"""K-fold cross-validation of any kind of estimator, through the one contract.

:func:`cross_validate` cuts the data into ``k`` folds (:func:`tunesmith.evaluate.folds.cv_folds`:
stratified, grouped or by time), fits a :func:`sklearn.base.clone` of the estimator on each
fold's training rows with its validation rows as ``eval_set``, and scores each fold on its
held-out rows. Text, image, tabular and recommender models all go through the same steps.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from tunesmith.data.io import read_table
from tunesmith.data.schema import ROW_COLUMN, _infer_task, require_column
from tunesmith.data.validate import row_numbers
from tunesmith.errors import ConfigError, DataError, TunesmithError
from tunesmith.estimators.base import NotSupportedError
from tunesmith.estimators.text import FineTuner
from tunesmith.evaluate.folds import STRATEGIES, Fold, check_fold_args, cv_folds, time_values
from tunesmith.runs.artifacts import json_safe
from tunesmith.train.callbacks import Callback

# Settings a fold or a trial turns off where the kind has them: folds are compared on
# validation only, so baselines, a run folder per fold and progress bars are waste.
QUIET_SETTINGS: dict[str, Any] = {"baselines": False, "runs_dir": None}


@dataclass
class CVResult:
    """What :func:`cross_validate` measured.

    ``metric`` is the validation metric (``"valid_f1_macro"``; for kinds scored by their
    ``score`` method, the name of the metric ``score`` returns, ``"valid_score"`` when it
    cannot be told) and ``mode`` which way it improves (``"max"``/``"min"``). ``scores`` holds
    each fold's value (a text fit's ``best_score_``); ``mean`` is their mean and ``std`` their
    *population* standard deviation (``ddof=0``, as ``numpy.std``). ``fold_metrics`` holds,
    per fold, every validation metric (at the best epoch where the kind keeps a history:
    ``valid_*`` keys, plus ``epoch``); ``best_epochs`` the 1-based best epoch and
    ``epochs_run`` the epochs trained per fold (``None``/0 where a kind has no epochs);
    ``fold_sizes`` the ``{"train": n, "valid": n}`` rows per fold; ``fold_seconds`` each
    fold's wall time and ``seconds`` the whole run's; ``kind`` the kind of model.
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
    kind: str = "text"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        return dict(json_safe(asdict(self)))

    def summary(self) -> str:
        """One line, e.g. ``valid_f1_macro 0.8123 ± 0.0210 over 5 folds (stratified)``."""
        return f"{self.metric} {self.mean:.4f} ± {self.std:.4f} over {len(self.scores)} folds ({self.strategy})"


@dataclass
class Validation:
    """How one fitted estimator did on validation: what :func:`validation_score` measured."""

    metric: str
    mode: str
    value: float
    best_epoch: int | None = None
    epochs_run: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def _best_row(history: Sequence[Mapping[str, Any]], best_epoch: int | None) -> dict[str, Any]:
    if best_epoch is None or not 1 <= best_epoch <= len(history):
        return {}
    row = history[best_epoch - 1]
    out: dict[str, Any] = {"epoch": best_epoch}
    out.update({k: v for k, v in row.items() if k.startswith("valid_")})
    return out


def _metric_named(score: float, metrics: Mapping[str, Any]) -> str:
    """The name of the metric ``score`` returned, found among ``evaluate``'s metrics by its value."""
    for name, value in metrics.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
        if number and math.isclose(float(value), score, rel_tol=1e-9, abs_tol=1e-12):
            return f"valid_{name}"
    return "valid_score"


def _flat_metrics(metrics: Any) -> dict[str, Any]:
    """``evaluate``'s scalar metrics, one level of nesting flattened (``overall.ndcg@10`` -> ``ndcg@10``)."""
    out: dict[str, Any] = {}
    if not isinstance(metrics, Mapping):
        return out
    for name, value in metrics.items():
        if isinstance(value, Mapping) and name in ("overall", "metrics"):
            out.update({str(k): v for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(name)] = value
    return out


def validation_score(est: Any, data: Any = None, y: Any = None, *, target: str | None = None) -> Validation:
    """The validation value of a fitted estimator, the same way for every kind.

    An estimator that monitored a validation metric while training (``monitor_`` and
    ``best_score_``, as the text kind does) is judged by its best value, in the metric's own
    direction. Any other is scored with its contract's ``score`` on ``data`` (higher is
    better); ``evaluate`` adds the other metrics where the kind offers it.

    Raises:
        ConfigError: nothing to score: no monitored metric and no validation data.
    """
    history = list(getattr(est, "history_", None) or [])
    best_epoch = getattr(est, "best_epoch_", None)
    monitor = getattr(est, "monitor_", None)
    best = getattr(est, "best_score_", None)
    if monitor:
        # None: the metric could not be computed on these rows (one class only, say); NaN says so.
        value = math.nan if best is None else float(best)
        mode = str(getattr(est, "monitor_mode_", None) or "max")
        return Validation(str(monitor), mode, value, best_epoch, len(history), _best_row(history, best_epoch))
    if data is None:
        raise ConfigError(
            f"{type(est).__name__} kept no validation score, and no validation rows were given",
            key="eval_set",
            hint="Pass eval_set, or use cross-validation",
        )
    kwargs: dict[str, Any] = {"target": target} if target is not None else {}
    value = float(est.score(data, y, **kwargs) if y is not None else est.score(data, **kwargs))
    metrics: dict[str, Any] = {}
    evaluate = getattr(est, "evaluate", None)
    if callable(evaluate):
        try:
            metrics = _flat_metrics(evaluate(data, y, **kwargs) if y is not None else evaluate(data, **kwargs))
        except (TunesmithError, TypeError, NotImplementedError):  # a kind without evaluate(): score alone
            metrics = {}
    fold = {f"valid_{k}": v for k, v in metrics.items()}
    if best_epoch is not None:
        fold["epoch"] = best_epoch
    return Validation(_metric_named(value, metrics), "max", value, best_epoch, len(history), fold)


def _settings(est: Any) -> dict[str, Any]:
    try:
        return dict(est.get_params())
    except TypeError:  # pragma: no cover - an estimator whose get_params takes no ``deep``
        return dict(est.get_params(deep=False))


def quiet_clone(estimator: Any, overrides: Mapping[str, Any] | None = None, *, progress: bool = False) -> Any:
    """A clone of ``estimator`` with ``overrides`` set and, where the kind has them and they were not
    given explicitly, baselines, run records and progress bars turned off."""
    est = clone(estimator)
    settings = _settings(est)
    given = getattr(estimator, "_params", settings)
    quiet = {**QUIET_SETTINGS, "progress": progress}
    changes = {k: v for k, v in quiet.items() if k in settings and k not in given}
    changes.update({k: v for k, v in (overrides or {}).items()})
    if changes:
        est.set_params(**changes)
    return est


def as_estimator(estimator: Any, *, progress: bool = False) -> Any:
    """``estimator`` itself, or a text :class:`FineTuner` built from a mapping of its settings.

    A mapping is the older call form (``cross_validate(params, data, target=...)``); fold
    defaults (no baselines, no run folder, ``progress``) apply unless the mapping sets them.
    """
    if isinstance(estimator, Mapping):
        return FineTuner(**{**QUIET_SETTINGS, "progress": progress, **estimator})
    if not callable(getattr(estimator, "fit", None)) or not callable(getattr(estimator, "get_params", None)):
        raise ConfigError(
            f"cross-validation needs an estimator or a mapping of settings, got {type(estimator).__name__}",
            key="estimator",
            hint="Pass e.g. TabularFineTuner(...) or {'backbone': 'minilm-l6', 'epochs': 3}",
        )
    return estimator


@dataclass
class Table:
    """The data as cross-validation sees it: a frame (or arrays with ``y``), its target and file."""

    frame: pd.DataFrame | None
    arrays: Any
    y: Any
    target: str | None
    file: str | None

    def __len__(self) -> int:
        return len(self.frame) if self.frame is not None else len(self.y)

    def rows(self, idx: np.ndarray) -> tuple[Any, Any]:
        """(data, y) of the rows ``idx``: a frame and ``None``, or arrays and their labels."""
        if self.frame is not None:
            return self.frame.iloc[idx], None
        return self.arrays[idx], np.asarray(self.y)[idx]

    def as_eval_set(self, idx: np.ndarray) -> Any:
        """The rows ``idx`` as an ``eval_set``: a frame, or an ``(X, y)`` pair of arrays."""
        data, y = self.rows(idx)
        return data if y is None else (data, y)


def read_data(data: Any, y: Any = None, target: str | None = None) -> Table:
    """``data`` as a :class:`Table`: a file is read, a DataFrame taken, arrays need ``y``."""
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        raise DataError(
            "cross-validation and search read a table, not a folder of images",
            file=str(data),
            hint="List the images in a table with a path column and a label column",
        )
    if isinstance(data, (str, Path)):
        return Table(read_table(data), None, None, target, str(data))
    if isinstance(data, pd.DataFrame):
        if y is not None:
            frame = data.copy()
            target = target or ("target" if "target" not in frame.columns else "__target__")
            frame[target] = list(y)
            return Table(frame, None, None, target, None)
        return Table(data, None, None, target, None)
    if y is None:
        raise DataError(f"data of type {type(data).__name__} needs y (its labels)", hint="Pass y=labels")
    arrays = np.asarray(data) if not isinstance(data, np.ndarray) else data
    if len(arrays) != len(y):
        raise DataError(f"data has {len(arrays)} rows but y has {len(y)} values")
    return Table(None, arrays, y, target, None)


def _fold_plan(table: Table, k: int, strategy: str, group: str | None, when: str | None, task: Any, seed: int) -> Any:
    if table.frame is not None:
        return cv_folds(
            table.frame, k=k, strategy=strategy, target=table.target, task=task,
            group_column=group, time_column=when, seed=seed, file=table.file,
        )  # fmt: skip
    labels = pd.DataFrame({"__y__": list(np.asarray(table.y))})
    if strategy != "stratified":
        raise ConfigError(
            f"strategy {strategy!r} needs a table with the {strategy} column, not arrays",
            key="strategy",
            hint="Pass a DataFrame, or use strategy='stratified'",
        )
    return cv_folds(labels, k=k, strategy=strategy, target="__y__", task=task, seed=seed)


def prepare(
    estimator: Any,
    data: Any,
    y: Any,
    *,
    target: str | None,
    text_column: Any,
    strategy: str,
    group_column: str | None,
    time_column: str | None,
    progress: bool,
) -> tuple[Any, Table, str | None]:
    """(the estimator every fold clones, the data, the resolved group column) ready for folds.

    The estimator's settings decide what is a feature: a group or time column it names as a
    setting (``group_column``, ``time_column``, ``user_column``, ...) stays in the data; one it does
    not name only cuts the folds and is left out of the model's inputs.
    """
    est = as_estimator(estimator, progress=progress)
    settings = _settings(est)
    if strategy == "group" and not group_column:
        group_column = settings.get("group_column") or None
    changes: dict[str, Any] = {}
    if text_column is not None and "text_column" in settings:
        changes["text_column"] = text_column
    if strategy == "group" and "group_column" in settings:
        # Passed on so that each fit leaves it out of the model's inputs, as a split column.
        changes["group_column"] = group_column
        if settings.get("split_column") is not None:
            changes["split_column"] = None
    table = read_data(data, y, target if target is not None else settings.get("target"))
    frame = table.frame
    if frame is not None:
        if table.target is not None:
            require_column(frame, table.target, "target", table.file)
        if ROW_COLUMN not in frame.columns:
            # Row numbers of the whole table, so an error inside a fold names the row the user sees.
            frame = frame.copy()
            frame[ROW_COLUMN] = row_numbers(frame)
        table.frame = frame
        if settings.get("task") == "auto" and table.target is not None:
            # One task for every fold, read from the whole target (a fold alone could read otherwise).
            changes["task"] = _infer_task(frame[table.target])
    if changes:
        est = clone(est).set_params(**changes)
    return est, table, group_column


def fit_with_eval(
    est: Any, data: Any, y: Any, *, target: str | None, eval_set: Any, callbacks: Sequence[Callback] | None
) -> Any:
    """``est.fit(data, y, target=..., eval_set=..., callbacks=...)``; for a kind that holds out its
    own validation rows (a recommender: each user's last positives) and so refuses ``eval_set``,
    the fit runs without it and the held-out rows only score it afterwards."""
    try:
        return est.fit(data, y, target=target, eval_set=eval_set, callbacks=callbacks)
    except NotSupportedError:
        if eval_set is None:
            raise
    return est.fit(data, y, target=target, callbacks=callbacks)


def holdout(table: Table, strategy: str, group_column: str | None, time_column: str | None, seed: int) -> Fold:
    """One (train, validation) cut of ``table`` holding out a fifth of the rows, for a search's trials.

    It is the last of five folds cut like cross-validation's (``strategy``), so with
    ``"time"`` the validation rows are the latest and the training rows everything before.
    """
    check_fold_args(5, strategy, group_column, time_column)
    last: Fold = _fold_plan(table, 5, strategy, group_column, time_column, None, seed)[-1]
    return last


def _model_frame(est: Any, table: Table, strategy: str, group: str | None, when: str | None, texts: Any) -> Table:
    """The table without the columns that only cut folds (see :func:`prepare`)."""
    if table.frame is None:
        return table
    if getattr(est, "kind", None) == "recommender":
        # Its fit reads the user, item and time columns by name (fit's own keywords): keep them all.
        return table
    named = {v for v in _settings(est).values() if isinstance(v, str)}
    named.update([table.target or "", *([texts] if isinstance(texts, str) else list(texts or []))])
    drop = [c for c, used in ((when, strategy == "time"), (group, strategy == "group")) if c and used]
    drop = [c for c in drop if c not in named and c in table.frame.columns]
    if not drop:
        return table
    return Table(table.frame.drop(columns=drop), None, None, table.target, table.file)


def cross_validate(
    estimator: Any,
    data: Any,
    y: Any = None,
    *,
    target: str | None = None,
    text_column: str | list[str] | None = None,
    k: int = 5,
    strategy: str = "stratified",
    group_column: str | None = None,
    time_column: str | None = None,
    seed: int = 0,
    fold_callbacks: Callable[[int], Sequence[Callback]] | None = None,
    progress: bool = True,
) -> CVResult:
    """Fit a clone of ``estimator`` on each of ``k`` folds of ``data``; score each on its held-out fold.

    ``estimator`` is any tunesmith estimator (text, image, tabular, recommender), or a mapping
    of text :class:`FineTuner` settings (the older form). ``data`` is a file or a DataFrame
    holding ``target`` (or arrays with ``y``); it is read once and cut by
    :func:`~tunesmith.evaluate.folds.cv_folds` (``strategy``, ``group_column``,
    ``time_column`` and ``seed`` as there; stratification uses the raw target labels).
    Fold ``i`` fits ``clone(estimator)`` with ``fit(train rows, target=..., eval_set=valid
    rows)`` and is scored by :func:`validation_score`: the best monitored validation value
    where the kind monitors one (text: ``best_score_``), else ``score`` on the held-out rows.

    Unless the estimator's settings say otherwise, folds score no baselines, write no run
    records and show progress bars as ``progress`` says. With ``strategy="group"`` and no
    ``group_column``, the estimator's ``group_column`` setting is used; a group or time
    column is never fed to the model unless the estimator names it in a setting. ``seed``
    cuts the folds; the fits use the estimator's own seed.

    ``fold_callbacks(i)`` (``i`` from 0) gives extra training callbacks for fold ``i`` (a
    search's pruner); an exception they raise propagates unchanged and ends the run.

    Raises:
        ConfigError: bad ``k``/``strategy``, or a strategy without its column.
        DataError: a missing column, too few rows or groups, or a fold that cannot be scored.
    """
    started = time.perf_counter()
    base, table, group_column = prepare(
        estimator, data, y, target=target, text_column=text_column, strategy=strategy,
        group_column=group_column, time_column=time_column, progress=progress,
    )  # fmt: skip
    check_fold_args(k, strategy, group_column, time_column)
    task = _settings(base).get("task")
    folds = _fold_plan(table, int(k), strategy, group_column, time_column, None if task == "auto" else task, seed)
    model_table = _model_frame(base, table, strategy, group_column, time_column, text_column)
    kind = str(getattr(base, "kind", "") or "text")

    results: list[Validation] = []
    fold_sizes: list[dict[str, int]] = []
    fold_seconds: list[float] = []
    for i, (train_idx, valid_idx) in enumerate(folds):
        fold_started = time.perf_counter()
        extra = list(fold_callbacks(i)) if fold_callbacks is not None else None
        train, train_y = model_table.rows(train_idx)
        valid, valid_y = model_table.rows(valid_idx)
        try:
            est = clone(base)
            fit_with_eval(
                est, train, train_y, target=model_table.target, eval_set=model_table.as_eval_set(valid_idx),
                callbacks=extra,
            )  # fmt: skip
            result = validation_score(est, valid, valid_y, target=model_table.target)
        except TunesmithError as exc:
            exc.add_note(f"in cross-validation fold {i + 1} of {len(folds)}")
            raise
        if not math.isfinite(result.value):
            raise DataError(
                f"fold {i + 1} of {len(folds)}: {result.metric} could not be computed on its validation rows",
                file=table.file,
                hint="Choose another monitor, or a strategy whose folds hold every class",
            )
        results.append(result)
        fold_sizes.append({"train": len(train_idx), "valid": len(valid_idx)})
        fold_seconds.append(time.perf_counter() - fold_started)
        if progress:
            print(
                f"fold {i + 1}/{len(folds)}: {result.metric} {result.value:.4f} "
                f"(best epoch {result.best_epoch}, {fold_seconds[-1]:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    values = np.asarray([r.value for r in results], dtype=np.float64)
    return CVResult(
        metric=results[-1].metric,
        mode=results[-1].mode,
        scores=[r.value for r in results],
        mean=float(values.mean()),
        std=float(values.std(ddof=0)),
        fold_metrics=[r.metrics for r in results],
        best_epochs=[r.best_epoch for r in results],
        seconds=time.perf_counter() - started,
        epochs_run=[r.epochs_run for r in results],
        fold_sizes=fold_sizes,
        fold_seconds=fold_seconds,
        strategy=strategy,
        k=len(folds),
        kind=kind,
    )


__all__ = [
    "STRATEGIES",
    "CVResult",
    "Validation",
    "cross_validate",
    "cv_folds",
    "fit_with_eval",
    "holdout",
    "quiet_clone",
    "read_data",
    "time_values",
    "validation_score",
]
