"""Cleaning a frame against its schema, encoding targets and building model input texts.

A fit resolves its data once: :func:`resolve_data` infers the schema and validates the frame
against it in one step and hands on a :class:`PreparedData`; each split is then encoded once
by :func:`encode_split` (targets and input texts together), so later stages never go back
to the schema to re-check what was already checked.

Row numbers here are 1-based data rows (header excluded): the rows of the file or frame as
it was read, before anything was dropped. :func:`prepare_frame` stores them in the
``__row__`` column and in the index (named ``__row_number__``), so every later stage, down
to :func:`encode_target` on a single column, can name the row a problem came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tunesmith.data.schema import (
    ROW_COLUMN,
    Schema,
    did_you_mean,
    infer_schema,
    label_string,
    label_values,
    missing_mask,
)
from tunesmith.errors import ConfigError, DataError

ROW_INDEX = "__row_number__"
"""Name of the index of a prepared frame: the same 1-based row numbers as ``__row__``."""

MAX_EXAMPLE_ROWS = 20
REASONS = ("missing_target", "missing_text")
_REASON_TEXT = {"missing_target": "missing target", "missing_text": "missing text"}
_SUMMARY_ROWS = 5
TEXT_JOIN = ". "
EXTRA_JOIN = " | "


@dataclass
class DropReport:
    """Which rows :func:`prepare_frame` dropped, and why.

    ``missing_target``/``missing_text`` count the rows per reason (a row missing both counts
    as missing target); ``example_rows`` keeps the first 20 1-based row numbers per reason.
    The report is falsy when nothing was dropped.
    """

    total_rows_in: int = 0
    rows_out: int = 0
    missing_target: int = 0
    missing_text: int = 0
    example_rows: dict[str, list[int]] = field(default_factory=lambda: {r: [] for r in REASONS})

    @property
    def dropped_total(self) -> int:
        """Rows dropped for any reason."""
        return self.missing_target + self.missing_text

    @property
    def dropped_rows(self) -> list[int]:
        """Example row numbers across reasons, sorted (at most 20 per reason)."""
        return sorted({r for rows in self.example_rows.values() for r in rows})

    def __bool__(self) -> bool:
        return self.dropped_total > 0

    def summary(self) -> str:
        """One line, e.g. ``dropped 3 of 120 rows: 2 missing target (rows 4, 9), 1 missing text (row 17)``."""
        head = f"dropped {self.dropped_total} of {self.total_rows_in} rows"
        parts = []
        for reason in REASONS:
            count = getattr(self, reason)
            if not count:
                continue
            rows = self.example_rows.get(reason, [])
            shown = ", ".join(str(r) for r in rows[:_SUMMARY_ROWS])
            if count > _SUMMARY_ROWS:
                shown += ", ..."
            word = "row" if count == 1 else "rows"
            parts.append(f"{count} {_REASON_TEXT[reason]} ({word} {shown})")
        return f"{head}: {', '.join(parts)}" if parts else head

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with counts, example rows, ``dropped_total`` and the ``summary`` line."""
        return {
            "total_rows_in": self.total_rows_in,
            "rows_out": self.rows_out,
            "dropped_total": self.dropped_total,
            "missing_target": self.missing_target,
            "missing_text": self.missing_text,
            "example_rows": {r: list(self.example_rows.get(r, [])) for r in REASONS},
            "summary": self.summary(),
        }


def row_numbers(df: pd.DataFrame) -> np.ndarray:
    """The 1-based data row of each row of ``df``: ``__row__`` when present, else position + 1."""
    if ROW_COLUMN in df.columns:
        return df[ROW_COLUMN].to_numpy(dtype=np.int64)
    return np.arange(1, len(df) + 1, dtype=np.int64)


def require_values(df: pd.DataFrame, column: str, what: str, *, hint: str, file: str | Path | None = None) -> None:
    """:class:`DataError` naming the first row whose ``column`` is missing (``"{what} value is missing"``)."""
    missing = missing_mask(df[column]).to_numpy(dtype=bool)
    if missing.any():
        raise DataError(
            f"{what} value is missing",
            file=file,
            row=int(row_numbers(df)[np.flatnonzero(missing)[0]]),
            column=column,
            hint=hint,
        )


def _series_rows(series: pd.Series) -> np.ndarray:
    if series.index.name == ROW_INDEX:
        return series.index.to_numpy(dtype=np.int64)
    return np.arange(1, len(series) + 1, dtype=np.int64)


def _to_float(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        if "_" in value:  # float() takes "1_000"; a data file meaning a number would not
            return None
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _regression_values(series: pd.Series, rows: np.ndarray, column: str, file: str | Path | None) -> np.ndarray:
    out = np.empty(len(series), dtype=np.float64)
    for i, value in enumerate(series.tolist()):
        number = _to_float(value)
        if number is None:
            raise DataError(
                f"target value {value!r} is not a number",
                file=file,
                row=int(rows[i]),
                column=column,
                hint="A regression target must be numeric: fix or remove the row, or set task='multiclass'",
            )
        if math.isnan(number):
            raise DataError(
                "target value is missing",
                file=file,
                row=int(rows[i]),
                column=column,
                hint="Fill it in or remove the row",
            )
        if math.isinf(number):
            raise DataError(
                f"target value {value!r} is infinite",
                file=file,
                row=int(rows[i]),
                column=column,
                hint="Replace it with a finite number or remove the row",
            )
        out[i] = number
    return out


def prepare_frame(
    df: pd.DataFrame,
    schema: Schema,
    *,
    file: str | Path | None = None,
    on_missing_target: Literal["drop", "error"] = "drop",
) -> tuple[pd.DataFrame, DropReport]:
    """Check ``df`` against ``schema``, drop unusable rows and normalize the target and texts.

    Drops rows whose target is missing (None, NaN, empty or only spaces) and rows whose every
    text column is missing or blank, counting each in the :class:`DropReport`. With
    ``on_missing_target="error"`` a missing target raises :class:`DataError` naming the first
    such row instead (rows without text are still dropped).

    The result is a copy with all columns kept, plus ``__row__``: the original 1-based data
    row (kept from ``df`` when it already has one). Its index holds the same numbers (named
    ``__row_number__``). Classification targets become their label strings; regression
    targets become float64, and a value that is not a number or is infinite raises
    :class:`DataError` naming its row. Text columns become ``str``.

    Raises :class:`DataError` when the target or a text column is absent, or when every row
    would be dropped.
    """
    if on_missing_target not in ("drop", "error"):
        raise ConfigError(
            f"on_missing_target must be 'drop' or 'error', got {on_missing_target!r}", key="on_missing_target"
        )
    target = schema.target
    for col, what in [(target, "target"), *((c, "text") for c in schema.text_columns)]:
        if col not in df.columns:
            raise DataError(
                f"{what} column {col!r} is missing", file=file, column=col, hint=did_you_mean(col, df.columns)
            )

    out = df.copy()
    rows = row_numbers(out)
    out[ROW_COLUMN] = rows

    no_target = missing_mask(out[target]).to_numpy(dtype=bool)
    no_text = np.ones(len(out), dtype=bool)
    for col in schema.text_columns:
        no_text &= missing_mask(out[col]).to_numpy(dtype=bool)
    no_text &= ~no_target

    if on_missing_target == "error" and no_target.any():
        first = int(rows[np.flatnonzero(no_target)[0]])
        raise DataError(
            f"target is missing ({int(no_target.sum())} row(s) in all)",
            file=file,
            row=first,
            column=target,
            hint="Fill in the target or remove those rows",
        )

    report = DropReport(
        total_rows_in=len(out),
        missing_target=int(no_target.sum()),
        missing_text=int(no_text.sum()),
        example_rows={
            "missing_target": rows[no_target][:MAX_EXAMPLE_ROWS].tolist(),
            "missing_text": rows[no_text][:MAX_EXAMPLE_ROWS].tolist(),
        },
    )
    keep = ~(no_target | no_text)
    out = out.loc[keep].copy()
    report.rows_out = len(out)
    if len(out) == 0:
        raise DataError(
            f"no usable rows: {report.summary()}",
            file=file,
            hint=f"Check that {target!r} is the target and the text is in {', '.join(map(repr, schema.text_columns))}",
        )
    kept_rows = out[ROW_COLUMN].to_numpy(dtype=np.int64)
    out.index = pd.Index(kept_rows, name=ROW_INDEX)

    if schema.task == "regression":
        out[target] = _regression_values(out[target], kept_rows, target, file)
    else:
        out[target] = pd.Series([label_string(v) for v in out[target].tolist()], index=out.index, dtype=object)
    for col in schema.text_columns:
        out[col] = out[col].map(lambda v: "" if _is_missing_value(v) else str(v)).astype(str)
    return out, report


def _is_missing_value(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def encode_target(series: pd.Series | pd.DataFrame, schema: Schema, *, file: str | Path | None = None) -> np.ndarray:
    """Targets as model outputs: int64 class indices (classification) or float32 (regression).

    ``series`` is the target column, ideally of a frame from :func:`prepare_frame`, whose
    index gives the 1-based data rows for errors (a whole prepared frame works too). A label
    missing from ``schema.labels`` - one that training never saw - raises :class:`DataError`
    naming its row and the known labels; so do missing, non-numeric or infinite values.
    """
    if isinstance(series, pd.DataFrame):
        if schema.target not in series.columns:
            raise DataError(
                f"target column {schema.target!r} is missing",
                file=file,
                column=schema.target,
                hint=did_you_mean(schema.target, series.columns),
            )
        rows = row_numbers(series)
        series = series[schema.target]
    else:
        rows = _series_rows(series)
    column = schema.target
    if schema.task == "regression":
        return _regression_values(series, rows, column, file).astype(np.float32)

    index = schema.label_to_index
    values = series.tolist()
    missing = missing_mask(series).to_numpy(dtype=bool)
    if missing.any():
        raise DataError(
            "target value is missing",
            file=file,
            row=int(rows[np.flatnonzero(missing)[0]]),
            column=column,
            hint="Fill it in or remove the row (prepare_frame drops such rows)",
        )
    out = np.empty(len(values), dtype=np.int64)
    unseen: dict[str, int] = {}
    first_row: int | None = None
    for i, value in enumerate(values):
        label = label_string(value)
        code = index.get(label)
        if code is None:
            unseen[label] = unseen.get(label, 0) + 1
            if first_row is None:
                first_row = int(rows[i])
            continue
        out[i] = code
    if unseen:
        first = next(iter(unseen))
        known = ", ".join(repr(x) for x in (schema.labels or ())[:20])
        others = ""
        n_unseen = sum(unseen.values())
        if n_unseen > 1:
            others = f" ({n_unseen} rows hold unseen labels: {', '.join(map(repr, list(unseen)[:10]))})"
        raise DataError(
            f"label {first!r} was not seen in training; known labels: {known}{others}",
            file=file,
            row=first_row,
            column=column,
            hint="Retrain with rows of that label, or remove those rows",
        )
    return out


def format_value(value: Any) -> str | None:
    """``value`` as it appears in the model's input text, or None when missing."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        # Whole numbers without ".0"; otherwise Python's shortest round-trip form.
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    return text or None


def _join_texts(parts: list[str]) -> str:
    out = ""
    for part in parts:
        if not out:
            out = part
        elif out[-1] in ".!?;:":
            out = f"{out} {part}"
        else:
            out = f"{out}{TEXT_JOIN}{part}"
    return out


def texts_of(df: pd.DataFrame, schema: Schema) -> list[str]:
    """One input string per row: the text columns, then the tabular extras.

    Several text columns are joined with ``". "`` (just a space after a text that already
    ends in ``.!?;:``); missing or blank ones are skipped. Each numeric and categorical
    column then adds ``" | column: value"`` - this is how tabular extras reach a text
    encoder - skipping missing values and columns absent from ``df``. Whole-number floats
    print without ``.0``. For example ``"great film | year: 1999 | genre: drama"``.
    """
    n = len(df)
    text_cols = [df[c].tolist() for c in schema.text_columns if c in df.columns]
    extras = [(c, df[c].tolist()) for c in (*schema.numeric_columns, *schema.categorical_columns) if c in df.columns]
    out: list[str] = []
    for i in range(n):
        parts = [s for s in (format_value(col[i]) for col in text_cols) if s]
        text = _join_texts(parts)
        for name, values in extras:
            shown = format_value(values[i])
            if shown is not None:
                text = f"{text}{EXTRA_JOIN}{name}: {shown}" if text else f"{name}: {shown}"
        out.append(text)
    return out


@dataclass
class PreparedData:
    """A frame validated against the schema inferred from it, ready to clean and split.

    ``frame`` is :func:`prepare_frame`'s output (``__row__`` kept, labels as strings, texts as
    ``str``), ``drops`` what that dropped, ``label_values`` the user's own value of each label
    (empty for regression) and ``file`` the file it came from, for error messages.
    """

    frame: pd.DataFrame
    schema: Schema
    drops: DropReport
    label_values: list[Any]
    file: str | None = None


def resolve_data(
    df: pd.DataFrame,
    target: str,
    *,
    text_column: str | Sequence[str] | None = None,
    task: str | None = None,
    ignore: Sequence[str] = (),
    file: str | Path | None = None,
) -> PreparedData:
    """Infer the schema of ``df`` once and validate ``df`` against it (see :func:`infer_schema`).

    The target's own values (ints, booleans) are read before labels become strings, so
    predictions can be given back in the user's type.
    """
    schema = infer_schema(df, target, text_column=text_column, task=task, ignore=ignore, file=file)
    values = label_values(schema.labels or (), df[target]) if schema.is_classification else []
    frame, drops = prepare_frame(df, schema, file=file)
    return PreparedData(frame, schema, drops, values, str(file) if file is not None else None)


@dataclass
class EncodedSplit:
    """One split of a prepared frame with its targets encoded and its input texts built, once."""

    frame: pd.DataFrame
    y: np.ndarray | None
    texts: list[str]
    file: str | None = None

    def __len__(self) -> int:
        return len(self.frame)


def encode_split(frame: pd.DataFrame, schema: Schema, *, file: str | Path | None = None) -> EncodedSplit:
    """Targets (:func:`encode_target`) and input texts (:func:`texts_of`) of one prepared split.

    An empty split has ``y`` ``None`` and no texts.
    """
    if not len(frame):
        return EncodedSplit(frame, None, [], str(file) if file is not None else None)
    y = encode_target(frame[schema.target], schema, file=file)
    return EncodedSplit(frame, y, texts_of(frame, schema), str(file) if file is not None else None)
