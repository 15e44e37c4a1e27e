"""What a text estimator accepts as data: a file, a DataFrame or texts (with labels ``y``)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.io import frame_sha256 as data_frame_sha256
from tunesmith.data.io import read_table
from tunesmith.data.quality import Preprocessing
from tunesmith.data.schema import Schema
from tunesmith.data.validate import texts_of
from tunesmith.errors import ConfigError, DataError

DataLike = Any  # a path, a DataFrame, or a sequence of texts

_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".gz", ".bz2", ".xz", ".txt")


def looks_like_text(value: str) -> bool:
    """A string that is not an existing path and not shaped like a data file name is one text."""
    if "\n" in value:
        return True
    if Path(value).exists():
        return False
    return not value.lower().endswith(_TABLE_SUFFIXES)


def read_frame(
    X: DataLike, y: Any = None, target: str | None = None, *, role: str = "data"
) -> tuple[pd.DataFrame, str | None, str | None]:
    """(frame, target column, file name) from a path, a DataFrame or texts + labels."""
    file: str | None = None
    if isinstance(X, str) and looks_like_text(X):
        X = [X]
    if isinstance(X, (str, os.PathLike)):
        file = str(X)
        df = read_table(X)
    elif isinstance(X, pd.DataFrame):
        df = X
    elif isinstance(X, pd.Series) or (isinstance(X, Sequence) and not isinstance(X, str)) or isinstance(X, np.ndarray):
        df = pd.DataFrame({"text": list(X)})
    else:
        raise DataError(f"{role} must be a file path, a pandas DataFrame or a list of texts, got {type(X).__name__}")
    if y is not None:
        if target is not None:
            raise ConfigError("give either y or target, not both", key="target")
        if len(y) != len(df):
            raise DataError(f"{role} has {len(df)} rows but y has {len(y)} values", file=file)
        df = df.copy()
        target = "target" if "target" not in df.columns else "__target__"
        df[target] = list(y)
    return df, target, file


def prediction_texts(X: DataLike, schema: Schema, preprocessing: Preprocessing) -> list[str]:
    """The model input texts of rows to predict, built as training built them.

    A bare list of texts fills the first text column; a missing text is predicted from an
    empty text and missing tabular extras are left out, each with a warning.
    """
    df, _, file = read_frame(X, None, None, role="data")
    if list(df.columns) == ["text"] and list(schema.text_columns) != ["text"]:
        df = df.rename(columns={"text": schema.text_columns[0]})
    missing = [c for c in schema.text_columns if c not in df.columns]
    if missing:
        raise DataError(
            f"column {missing[0]!r} used in training is missing",
            file=file,
            column=missing[0],
            hint=f"Columns present: {', '.join(map(str, df.columns))}",
        )
    blank = pd.Series(True, index=df.index)
    for col in schema.text_columns:
        blank &= df[col].isna() | df[col].astype(str).str.strip().eq("")
    if blank.any():
        rows = (np.flatnonzero(blank.to_numpy()) + 1)[:10].tolist()
        warnings.warn(
            f"{int(blank.sum())} row(s) have no text (rows {rows}); they are predicted from an empty text",
            stacklevel=3,
        )
    filled = df.copy()
    for col in schema.text_columns:
        filled[col] = filled[col].fillna("")
    absent = [c for c in (*schema.numeric_columns, *schema.categorical_columns) if c not in df.columns]
    if absent:
        warnings.warn(
            f"column(s) {', '.join(map(repr, absent))} used in training are missing; predicting without them",
            stacklevel=3,
        )
    for col in absent:
        filled[col] = np.nan
    return texts_of(preprocessing.apply(filled), schema)


def frame_sha256(df: pd.DataFrame) -> str:
    """A content hash of a DataFrame's rows (the row numbers left out), for data given in memory."""
    return data_frame_sha256(df.drop(columns=["__row__"], errors="ignore"))
