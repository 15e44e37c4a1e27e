"""What each column is for, and which task the target asks for.

:func:`infer_schema` looks at a DataFrame once and returns a frozen :class:`Schema`; the
schema is saved with a model and reused at evaluation and prediction, so the same column
roles and the same label order apply everywhere.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np
import pandas as pd

from tunesmith.errors import ArtifactError, ConfigError, DataError

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[str, ...] = get_args(Task)

ROW_COLUMN = "__row__"
"""Column that :func:`~tunesmith.data.validate.prepare_frame` adds: the 1-based data row."""

# An integer or whole-number float target with at most this many distinct values is a set of
# classes (ratings 1-5, 0/1 flags); more, or any fractional value, makes it regression.
MAX_CLASSES_FOR_NUMERIC_TARGET = 20

# A string column is text (not a category) when any of these holds.
TEXT_MIN_MEAN_TOKENS = 3.0
TEXT_MIN_MEAN_CHARS = 20.0
TEXT_MIN_UNIQUE_RATIO = 0.5

# Unique, space-free strings look like identifiers only with enough rows to tell; below this,
# a column qualifies only when its name says it is an id.
ID_MIN_ROWS = 20
_ID_NAME = re.compile(r"^(id|uuid|guid|key|idx|index|row|rowid|row_id)$|[_\-\s.](id|uuid|guid|key|idx)$", re.I)
_CAMEL_ID = re.compile(r"[a-z0-9]Id$")


@dataclass(frozen=True)
class Schema:
    """Column roles and task of a data set.

    ``labels`` holds the class labels as strings (see :func:`label_string`) in sorted order -
    numerically when every label is a number, else alphabetically - so that class index ``i``
    means the same label in every run; it is ``None`` for regression. ``ignored_columns``
    lists the columns that play no part (identifiers, dates, empty columns, ``ignore=``).
    """

    target: str
    task: Task
    text_columns: tuple[str, ...]
    numeric_columns: tuple[str, ...] = ()
    categorical_columns: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None
    ignored_columns: tuple[str, ...] = field(default=())

    @property
    def is_classification(self) -> bool:
        """True for binary and multiclass tasks."""
        return self.task != "regression"

    @property
    def label_to_index(self) -> dict[str, int]:
        """``{label: class index}``; empty for regression."""
        return {label: i for i, label in enumerate(self.labels or ())}

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """Every column the model reads: text first, then numeric, then categorical."""
        return (*self.text_columns, *self.numeric_columns, *self.categorical_columns)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_dict` turns it back into an equal schema."""
        return {
            "target": self.target,
            "task": self.task,
            "text_columns": list(self.text_columns),
            "numeric_columns": list(self.numeric_columns),
            "categorical_columns": list(self.categorical_columns),
            "labels": list(self.labels) if self.labels is not None else None,
            "ignored_columns": list(self.ignored_columns),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        """Rebuild a schema saved by :meth:`to_dict`; :class:`ArtifactError` when it is malformed."""
        try:
            task = data["task"]
            if task not in TASKS:
                raise ArtifactError(f"saved schema has unknown task {task!r}")
            labels = data.get("labels")
            return cls(
                target=str(data["target"]),
                task=cast(Task, task),
                text_columns=tuple(str(c) for c in data["text_columns"]),
                numeric_columns=tuple(str(c) for c in data.get("numeric_columns", ())),
                categorical_columns=tuple(str(c) for c in data.get("categorical_columns", ())),
                labels=tuple(str(x) for x in labels) if labels is not None else None,
                ignored_columns=tuple(str(c) for c in data.get("ignored_columns", ())),
            )
        except (KeyError, TypeError) as e:
            raise ArtifactError(
                f"saved schema is malformed ({type(e).__name__}: {e})",
                hint="The model folder may be from another version or damaged; retrain it",
            ) from e


def label_string(value: Any) -> str:
    """The label string of one target value.

    Strings are stripped; whole-number floats lose their ``.0`` (``1.0`` -> ``"1"``), so
    integer labels read back as floats (a CSV column with a gap) keep their names; everything
    else is ``str(value)`` (``True`` -> ``"True"``).
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def row_scores(predicted: Any, truth: Any, *, regression: bool) -> np.ndarray:
    """Per row, larger is better: 1/0 for a right/wrong label, or minus the absolute error.

    Labels are compared as training named them (:func:`label_string`: stripped strings,
    whole-number floats without their ``.0``), so ``1.0`` predicted for a target read as ``1``
    counts as right.
    """
    pred = np.asarray(predicted)
    if regression:
        return -np.abs(pred.astype(float) - np.asarray(truth, dtype=float))
    return np.array([label_string(a) == label_string(b) for a, b in zip(pred, truth, strict=True)], dtype=float)


def missing_mask(series: pd.Series) -> pd.Series:
    """True where a value is missing: None, NaN/NA, or a string that is empty or only spaces."""
    mask = series.isna()
    if pd.api.types.is_string_dtype(series.dtype) and not pd.api.types.is_object_dtype(series.dtype):
        blank = series.str.strip().eq("").fillna(False).astype(bool)
        return mask | blank
    if pd.api.types.is_object_dtype(series.dtype) or isinstance(series.dtype, pd.CategoricalDtype):
        blank = series.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)
        return mask | blank
    return mask


def sorted_labels(values: Iterable[Any]) -> tuple[str, ...]:
    """Distinct label strings, numerically ordered when all are numbers, else alphabetically."""
    labels = {label_string(v) for v in values}
    try:
        numbers = {label: float(label) for label in labels}
    except ValueError:
        return tuple(sorted(labels))
    if any(math.isnan(x) for x in numbers.values()):
        return tuple(sorted(labels))
    return tuple(sorted(labels, key=lambda label: (numbers[label], label)))


def did_you_mean(name: str, columns: Iterable[Any]) -> str:
    """A hint that lists the columns, led by the closest match to ``name`` when there is one."""
    names = [str(c) for c in columns if str(c) != ROW_COLUMN]
    # Compare ignoring case and outer spaces: "Label " should still find "label".
    lowered = {n.lower().strip(): n for n in names}
    key = name.lower().strip()
    if key in lowered:
        close = [lowered[key]]
    else:
        close = [lowered[m] for m in difflib.get_close_matches(key, list(lowered), n=1, cutoff=0.6)]
    shown = ", ".join(repr(n) for n in names[:30]) + (", ..." if len(names) > 30 else "")
    lead = f"Did you mean {close[0]!r}? " if close else ""
    return f"{lead}Columns present: {shown}"


def require_column(df: pd.DataFrame, column: str, what: str, file: str | Path | None) -> None:
    """:class:`DataError` ("{what} column 'x' not found", with the closest name) unless ``column`` is in ``df``."""
    if column not in df.columns:
        raise DataError(
            f"{what} column {column!r} not found",
            file=file,
            column=column,
            hint=did_you_mean(column, df.columns),
        )


def _numeric_values(series: pd.Series) -> np.ndarray | None:
    """Non-missing values as floats when the column holds numbers (not bools), else None."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return None
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.dropna().to_numpy(dtype=float)
    if pd.api.types.is_object_dtype(series.dtype):
        values = series.dropna()
        if len(values) and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in values
        ):
            return values.to_numpy(dtype=float)
    return None


def _looks_like_id_name(name: str) -> bool:
    return bool(_ID_NAME.search(name.strip()) or _CAMEL_ID.search(name.strip()))


def _is_id_like(series: pd.Series, name: str) -> bool:
    """Unique per row and shaped like a key: never useful as a feature, and a leak risk."""
    n = len(series)
    try:
        if n < 2 or series.isna().any() or series.nunique() != n:
            return False
    except TypeError:  # unhashable values (nested JSON lists or objects)
        return False
    if pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        # Consecutive integers (1..n in any order) are a row counter even without an "id" name.
        return _looks_like_id_name(name) or int(series.max()) - int(series.min()) == n - 1
    if pd.api.types.is_string_dtype(series.dtype):
        strings = series.astype(str)
        if strings.str.contains(r"\s", regex=True).any():
            return False
        return n >= ID_MIN_ROWS or _looks_like_id_name(name)
    return False


def _string_role(series: pd.Series) -> str:
    values = series[~missing_mask(series)].astype(str)
    if values.empty:
        return "ignore"
    mean_tokens = float(values.map(lambda v: len(v.split())).mean())
    mean_chars = float(values.str.len().mean())
    unique_ratio = values.nunique() / len(values)
    if mean_tokens >= TEXT_MIN_MEAN_TOKENS or mean_chars >= TEXT_MIN_MEAN_CHARS or unique_ratio > TEXT_MIN_UNIQUE_RATIO:
        return "text"
    return "categorical"


def column_role(series: pd.Series, name: str) -> str:
    """``"text"``, ``"numeric"``, ``"categorical"`` or ``"ignore"`` for one feature column.

    Booleans and categoricals are categorical; numbers are numeric (also small sets of
    integers); strings are text when their mean token count is at least 3, their mean length
    at least 20 characters or more than half of them are distinct (or the column is named
    ``text``), else categorical. Ignored:
    identifiers (unique per row: consecutive or id-named integers, space-free strings),
    dates/times, and columns with no values.
    """
    if missing_mask(series).all():
        return "ignore"
    if pd.api.types.is_object_dtype(series.dtype) and series.map(lambda v: isinstance(v, (list, dict, set))).any():
        # Nested JSON values (lists, objects) are no feature a text encoder can read as is.
        return "ignore"
    stringy = pd.api.types.is_string_dtype(series.dtype) or pd.api.types.is_object_dtype(series.dtype)
    if stringy and _numeric_values(series) is None and name.strip().lower() == "text":
        # A column called "text" is text whatever its shape: fit(texts, labels) names it so,
        # and short, repetitive or one-word texts must not become a category or an id.
        return "text"
    if _is_id_like(series, name):
        return "ignore"
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return "ignore"
    if _numeric_values(series) is not None:
        return "numeric"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        return _string_role(series)
    return "ignore"


def _infer_task(target: pd.Series) -> Task:
    values = target[~missing_mask(target)]
    numbers = _numeric_values(values)
    if numbers is None:
        return "binary" if values.map(label_string).nunique() == 2 else "multiclass"
    distinct = np.unique(numbers)
    whole = bool(np.all(np.isfinite(distinct)) and np.all(distinct == np.round(distinct)))
    if not whole or len(distinct) > MAX_CLASSES_FOR_NUMERIC_TARGET:
        return "regression"
    return "binary" if len(distinct) == 2 else "multiclass"


def _check_task_name(task: str | None) -> str | None:
    if task is None or task == "auto":
        return None
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}", key="task", hint=f"Use one of: auto, {', '.join(TASKS)}")
    return task


def infer_schema(
    df: pd.DataFrame,
    target: str,
    *,
    text_column: str | Sequence[str] | None = None,
    task: str | None = None,
    ignore: Sequence[str] = (),
    file: str | Path | None = None,
) -> Schema:
    """Infer column roles and the task from ``df``.

    - ``target`` must be a column. For classification it needs two classes or more (missing
      values aside); labels are their :func:`label_string` forms, sorted (see :class:`Schema`).
    - ``task``: ``None``/``"auto"`` infers it: strings, booleans and categoricals give
      ``binary`` (two classes) or ``multiclass``; numbers give ``regression`` when any value is
      fractional or there are more than 20 distinct values, else classification. An explicit
      ``"binary"`` needs exactly two classes.
    - ``text_column`` names the text column(s); other text-like columns are then ignored.
      Without it, every column is classified by :func:`column_role`; ID-like columns
      (unique per row) are put in ``ignored_columns``, in neither feature list.
    - ``ignore`` lists columns to leave out (e.g. a group or split column).

    Raises :class:`DataError` (naming ``file`` and the column) for a missing target or text
    column, no text column at all, or a target with fewer than two classes;
    :class:`ConfigError` (key ``"task"``) for an unknown task.
    """
    task_name = _check_task_name(task)
    require_column(df, target, "target", file)
    for col in ignore:
        require_column(df, col, "ignored", file)

    given: list[str] | None = None
    if text_column is not None:
        given = [text_column] if isinstance(text_column, str) else list(text_column)
        if not given:
            raise ConfigError("text_column is an empty list", key="text_column", hint="Name one column or more")
        for col in given:
            require_column(df, col, "text", file)
            if col == target:
                raise DataError(
                    "the target column cannot also be the text column",
                    file=file,
                    column=col,
                    hint="Pass a different --text-column or --target",
                )

    skip = {target, ROW_COLUMN, *ignore}
    text: list[str] = list(given or [])
    numeric: list[str] = []
    categorical: list[str] = []
    ignored: list[str] = [str(c) for c in df.columns if c in ignore]
    id_like: list[str] = []
    for col in df.columns:
        name = str(col)
        if col in skip or (given is not None and name in given):
            continue
        role = column_role(df[col], name)
        if role == "text" and given is not None:
            role = "ignore"
        {"text": text, "numeric": numeric, "categorical": categorical, "ignore": ignored}[role].append(name)
        if role == "ignore" and _is_id_like(df[col], name):
            id_like.append(name)

    if not text:
        extra = f"; {', '.join(map(repr, id_like))} look(s) like an ID (unique per row, no spaces)" if id_like else ""
        raise DataError(
            f"no text column found{extra}",
            file=file,
            hint="Pass --text-column COL (text_column='COL') naming the column that holds the text; "
            + did_you_mean("", [c for c in df.columns if c != target]),
        )

    y = df[target]
    present = y[~missing_mask(y)]
    resolved = cast(Task, task_name) if task_name is not None else _infer_task(y)
    labels: tuple[str, ...] | None = None
    if resolved != "regression":
        labels = sorted_labels(present.tolist())
        if len(labels) < 2:
            what = f"only one class ({labels[0]!r})" if labels else "no values"
            raise DataError(
                f"target column {target!r} has {what}",
                file=file,
                column=target,
                hint="A classifier needs two classes or more: check any filtering upstream, or choose another target",
            )
        if resolved == "binary" and len(labels) != 2:
            raise DataError(
                f"task 'binary' needs exactly 2 classes but target column {target!r} has {len(labels)}",
                file=file,
                column=target,
                hint="Use task='multiclass' (or leave task on auto)",
            )
    return Schema(
        target=target,
        task=resolved,
        text_columns=tuple(text),
        numeric_columns=tuple(numeric),
        categorical_columns=tuple(categorical),
        labels=labels,
        ignored_columns=tuple(ignored),
    )


def label_values(labels: Sequence[str], original: pd.Series | None) -> list[Any]:
    """The user's own value of each label string (``"1"`` -> ``1``, ``"True"`` -> ``True``).

    ``original`` is the target column as the user gave it, before labels became strings;
    a label whose value cannot be found keeps its string. Empty for regression (``None``).
    """
    if original is None:
        return []
    by_label: dict[str, Any] = {}
    for value in original.dropna().unique():
        key = str(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            key, value = str(int(value)), int(value)
        by_label.setdefault(key, value.item() if isinstance(value, np.generic) else value)
    return [by_label.get(lbl, lbl) for lbl in labels]


def restore_label_values(labels: Sequence[str], values: Sequence[Any]) -> np.ndarray:
    """Labels back in the user's type: ints stay ints, booleans stay booleans, else strings."""
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        return np.asarray([lbl.lower() == "true" for lbl in labels])
    if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray([int(lbl) for lbl in labels])
    return np.asarray(list(labels), dtype=object)
