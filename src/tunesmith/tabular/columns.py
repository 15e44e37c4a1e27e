"""A table's rows and columns: reading it, which columns are features of which role, the target, the task.

Resolved once per fit, from the settings' column lists and what the data holds; a fit that
continues an earlier model (``init_model``) checks the new data against that model's schema.
"""

from __future__ import annotations

import os
from typing import Any, cast

import numpy as np
import pandas as pd

from tunesmith.data.io import read_table
from tunesmith.data.schema import (
    ROW_COLUMN,
    Schema,
    Task,
    _infer_task,
    column_role,
    missing_mask,
    require_column,
    sorted_labels,
)
from tunesmith.data.validate import ROW_INDEX, row_numbers
from tunesmith.errors import ArtifactError, DataError
from tunesmith.tabular.settings import TabularConfig

__all__ = ["check_compatible", "infer_schema", "labeled_frame", "read_frame", "with_rows"]


def infer_schema(
    settings: TabularConfig, df: pd.DataFrame, target: str, file: str | None, *, task: str | None = None
) -> Schema:
    """Roles of the columns and the task (``task`` overrides the setting); explicit column lists win.

    Columns not named in ``settings``' column lists get the role
    :func:`~tunesmith.data.schema.column_role` infers (ID-like, date and empty columns are
    ignored). A target with fewer than two classes is a :class:`DataError` naming it.
    """
    for col in settings.ignore_columns:
        require_column(df, col, "ignored", file)
    given = {
        "numeric": settings.numeric_columns,
        "categorical": settings.categorical_columns,
        "text": settings.text_columns,
    }
    roles: dict[str, list[str]] = {k: [str(c) for c in v] if v is not None else [] for k, v in given.items()}
    claimed = {c for cols in roles.values() for c in cols}
    for col in claimed:
        require_column(df, col, "feature", file)
        if col == target:
            raise DataError("the target column cannot also be a feature", file=file, column=col)
    skip = {target, ROW_COLUMN, *map(str, settings.ignore_columns), *claimed}
    ignored = [str(c) for c in settings.ignore_columns]
    for col in df.columns:
        name = str(col)
        if name in skip:
            continue
        role = column_role(df[col], name)
        if role == "ignore" or given[role] is not None:
            ignored.append(name)
        else:
            roles[role].append(name)
    if not any(roles.values()):
        raise DataError("no feature columns found", file=file, hint="Name them with numeric_columns=... etc.")

    y = df[target]
    present = y[~missing_mask(y)]
    wanted = task if task is not None else settings.task
    resolved = cast(Task, wanted) if wanted != "auto" else _infer_task(y)
    labels: tuple[str, ...] | None = None
    if resolved != "regression":
        labels = sorted_labels(present.tolist())
        if len(labels) < 2 or (resolved == "binary" and len(labels) != 2):
            raise DataError(
                f"target column {target!r} has {len(labels)} class(es); task {resolved!r} needs "
                + ("exactly 2" if resolved == "binary" else "2 or more"),
                file=file,
                column=target,
            )
    return Schema(
        target=target,
        task=resolved,
        text_columns=tuple(roles["text"]),
        numeric_columns=tuple(roles["numeric"]),
        categorical_columns=tuple(roles["categorical"]),
        labels=labels,
        ignored_columns=tuple(ignored),
    )


def check_compatible(settings: TabularConfig, schema: Schema, df: pd.DataFrame, file: str | None) -> Schema:
    """The earlier model's ``schema``, after checking that the new data fits it (``init_model``)."""
    where = str(settings.init_model)
    missing = [c for c in (schema.target, *schema.feature_columns) if c not in df.columns]
    if missing:
        raise ArtifactError(
            f"the new data lacks column(s) {', '.join(map(repr, missing))} of the earlier model",
            path=where,
            hint="Continue training only on data with the same columns",
        )
    if settings.task != "auto" and settings.task != schema.task:
        raise ArtifactError(
            f"task {settings.task!r} differs from the earlier model's {schema.task!r}",
            path=where,
            hint="Leave task on auto to continue the earlier model's task",
        )
    # the earlier task, not one inferred afresh: a small new sample can look like another task;
    # binary is read as multiclass here so that a third label is reported as an unknown label
    fresh = infer_schema(
        settings, df, schema.target, file, task="multiclass" if schema.task == "binary" else schema.task
    )
    for role in ("text_columns", "numeric_columns", "categorical_columns"):
        mine, theirs = set(getattr(fresh, role)), set(getattr(schema, role))
        # inference on a small new sample may see roles differently; only new columns matter
        extra = mine - set(schema.feature_columns) - set(schema.ignored_columns)
        if (settings.text_columns, settings.numeric_columns, settings.categorical_columns) != (None, None, None):
            extra |= mine ^ theirs
        if extra:
            raise ArtifactError(
                f"column(s) {', '.join(map(repr, sorted(extra)))} differ from the earlier model's "
                f"{role.replace('_', ' ')}",
                path=where,
                hint="Continue training only on data with the same columns, or drop the extras (ignore_columns)",
            )
    if schema.labels is not None:
        new = set(fresh.labels or ())
        unknown = sorted(new - set(schema.labels))
        if unknown:
            raise ArtifactError(
                f"the new data has label(s) {', '.join(map(repr, unknown))} the earlier model never saw",
                path=where,
                hint="Continuing training cannot add classes; train a new model",
            )
    return schema


def read_frame(X: Any, role: str) -> tuple[pd.DataFrame, str | None]:
    """A DataFrame of ``X`` (a file path, a DataFrame, or a 2-D array whose columns become x0, x1, ...)."""
    if isinstance(X, (str, os.PathLike)):
        return read_table(X), str(X)
    if isinstance(X, pd.DataFrame):
        return X, None
    if isinstance(X, np.ndarray) or (isinstance(X, (list, tuple)) and X and isinstance(X[0], (list, tuple))):
        array = np.asarray(X)
        if array.ndim != 2:
            raise DataError(f"{role} must be a 2-D array (rows by features), got {array.ndim} dimension(s)")
        return pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])]), None
    raise DataError(f"{role} must be a file path, a pandas DataFrame or a 2-D array, got {type(X).__name__}")


def labeled_frame(X: Any, y: Any, target: str, role: str) -> tuple[pd.DataFrame, str | None]:
    """``X`` as a frame holding the target column (``y`` added as ``target`` when given)."""
    if isinstance(X, tuple) and len(X) == 2 and y is None:
        X, y = X
    df, file = read_frame(X, role)
    if y is None:
        return df, file
    values = np.asarray(y)
    if values.ndim != 1 or len(values) != len(df):
        raise DataError(f"{role} has {len(df)} rows but y holds {values.shape} values; y must be 1-D, one per row")
    if target in df.columns:
        raise DataError(f"{role} already has a column named {target!r}", column=target, hint="Pass target=...")
    out = df.copy()
    out[target] = values
    return out, file


def with_rows(df: pd.DataFrame) -> pd.DataFrame:
    """A copy carrying 1-based data rows, so errors name the user's row after any filtering."""
    out = df.copy()
    rows = row_numbers(out)
    out[ROW_COLUMN] = rows
    out.index = pd.Index(rows, name=ROW_INDEX)
    return out
