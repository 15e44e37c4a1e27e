"""Checks on a classification target before any model is trained on it.

A column with (nearly) one class per row is an identifier, a free-text field or a number,
not a label: scikit-learn would fail deep inside a stratified split or a baseline with a
message about "the least populated class", and a network would train on nothing it can
generalise. :func:`check_target_classes` says so up front, naming the column.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import DataError

__all__ = ["MIN_ROWS_PER_CLASS", "check_target_classes"]

MIN_ROWS_PER_CLASS = 2.0
"""Fewer rows per class than this on average (from 10 rows on) is refused: no class can be learned."""

# below this many rows a small table with mostly distinct labels is a toy, not a mistake,
# unless every row is its own class
_SMALL = 10


def check_target_classes(
    y: Sequence[Any] | np.ndarray | pd.Series,
    *,
    column: str | None = None,
    file: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse a classification target with as many classes as rows, or nearly.

    Missing values are ignored (they are dropped elsewhere, with a reason). The target is
    refused when every class occurs exactly once (two rows or more), or, from 10 rows on,
    when there are fewer than :data:`MIN_ROWS_PER_CLASS` rows per class on average.

    Args:
        y: the target values, one per row.
        column: the target column's name, for the message.
        file: the data file, for the message.

    Raises:
        DataError: naming the column and the file, saying how many classes and rows there
            are, and what to do (pick the label column, or train a regression for a numeric
            target).
    """
    values = pd.Series(np.asarray(y, dtype=object).ravel() if not isinstance(y, pd.Series) else y)
    values = values[values.notna()]
    n = len(values)
    if n < 2:
        return
    counts = values.astype(str).value_counts()
    k = len(counts)
    every_once = k == n
    too_many = n >= _SMALL and k > n / MIN_ROWS_PER_CLASS
    if not (every_once or too_many):
        return
    what = f"column {column!r}" if column else "the target"
    detail = "every value occurs once" if every_once else f"{int((counts == 1).sum())} classes occur only once"
    numeric = pd.to_numeric(values, errors="coerce").notna().all()
    hint = (
        "Its values are numbers: for a numeric target train a regression (task='regression'); "
        "if it is a label, each class needs at least a few rows."
        if numeric
        else "It looks like an identifier or free text, not a label. Pick the column that holds "
        "the labels (target=...), or gather at least a few rows per class."
    )
    raise DataError(
        f"{what} has {k} distinct classes in {n} rows ({detail}): too few rows per class to learn or test a classifier",
        file=os.fspath(file) if file is not None else None,
        column=column,
        hint=hint,
    )
