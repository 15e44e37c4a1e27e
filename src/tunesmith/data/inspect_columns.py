"""Inspection checks on columns and values: the column profile, unusable rows, missing values,
constant and mixed-type columns, numeric outliers, text lengths and truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.inspect_report import Finding, example_rows, percent
from tunesmith.data.schema import ROW_COLUMN, Schema, missing_mask
from tunesmith.data.validate import DropReport

OUTLIER_IQR = 3.0
NEAR_CONSTANT_SHARE = 0.995


def _role_of(column: str, schema: Schema | None, target: str) -> str:
    if column == target:
        return "target"
    if schema is None:
        return "?"
    for role, cols in (
        ("text", schema.text_columns),
        ("numeric", schema.numeric_columns),
        ("categorical", schema.categorical_columns),
    ):
        if column in cols:
            return role
    return "ignored"


def profile_columns(df: pd.DataFrame, schema: Schema | None, target: str) -> list[dict[str, Any]]:
    """One entry per column: role, dtype, missing, distinct values, most frequent value."""
    out = []
    n = len(df)
    for col in df.columns:
        if col == ROW_COLUMN:
            continue
        s = df[col]
        miss = missing_mask(s)
        present = s[~miss]
        top, top_count = None, 0
        try:
            counts = present.astype(str).value_counts()
        except (TypeError, ValueError):
            counts = pd.Series(dtype=int)
        if len(counts):
            top, top_count = str(counts.index[0]), int(counts.iloc[0])
        entry: dict[str, Any] = {
            "column": str(col),
            "role": _role_of(str(col), schema, target),
            "dtype": str(s.dtype),
            "missing": int(miss.sum()),
            "missing_fraction": float(miss.mean()) if n else 0.0,
            "unique": len(counts),
            "top": top if top is None or len(top) <= 60 else top[:57] + "...",
            "top_fraction": top_count / max(1, len(present)),
        }
        numeric = pd.to_numeric(present, errors="coerce") if entry["role"] in ("numeric", "target") else None
        if numeric is not None and numeric.notna().all() and len(numeric):
            entry.update(
                {
                    "min": float(numeric.min()),
                    "median": float(numeric.median()),
                    "max": float(numeric.max()),
                    "mean": float(numeric.mean()),
                }
            )
        out.append(entry)
    return out


def check_dropped(drops: DropReport, target: str) -> list[Finding]:
    out = []
    if drops.missing_target:
        out.append(
            Finding(
                "missing_target",
                "warning",
                f"{drops.missing_target} row(s) have no target",
                drops.missing_target,
                "label them or leave them out; fitting drops (and counts) them",
                drops.example_rows.get("missing_target", []),
                column=target,
            )
        )
    if drops.missing_text:
        out.append(
            Finding(
                "missing_text",
                "warning",
                f"{drops.missing_text} row(s) have no text",
                drops.missing_text,
                "fill in the text or leave them out; fitting drops (and counts) them",
                drops.example_rows.get("missing_text", []),
            )
        )
    return out


def check_missing(raw: pd.DataFrame, rows: np.ndarray, target: str, text_columns: Sequence[str]) -> list[Finding]:
    out = []
    n = len(raw)
    for col in raw.columns:
        if col in (target, ROW_COLUMN):
            continue
        miss = missing_mask(raw[col]).to_numpy(dtype=bool)
        k = int(miss.sum())
        if not k or k == n:
            continue
        share = k / n
        is_text = col in text_columns
        action = (
            "rows with no text at all are dropped; others use their remaining text"
            if is_text
            else "missing='impute' (median / most frequent) or missing='drop' when cleaning; "
            "by default the model input leaves the field out"
        )
        out.append(
            Finding(
                "missing_values",
                "warning" if share > 0.2 else "info",
                f"column {col!r}: {k} missing value(s) ({percent(k, n)})",
                k,
                action,
                example_rows(rows[miss]),
                column=str(col),
                details={"fraction": share},
            )
        )
    return out


def check_constant(raw: pd.DataFrame, target: str) -> list[Finding]:
    out = []
    n = len(raw)
    for col in raw.columns:
        if col in (target, ROW_COLUMN):
            continue
        s = raw[col]
        present = s[~missing_mask(s)]
        try:
            counts = present.astype(str).value_counts()
        except (TypeError, ValueError):
            continue
        if len(counts) <= 1:
            what = "is empty" if not len(counts) else f"holds one value ({str(counts.index[0])[:40]!r})"
            out.append(
                Finding(
                    "constant_column",
                    "warning",
                    f"column {col!r} {what}",
                    1,
                    "drop it: it carries no information",
                    column=str(col),
                )
            )
        elif n >= 200 and counts.iloc[0] / n >= NEAR_CONSTANT_SHARE:
            out.append(
                Finding(
                    "near_constant_column",
                    "info",
                    f"column {col!r} is near-constant "
                    f"({percent(int(counts.iloc[0]), n)} {str(counts.index[0])[:40]!r})",
                    int(n - counts.iloc[0]),
                    "consider dropping it: it rarely varies",
                    column=str(col),
                )
            )
    return out


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float, np.integer, np.floating)):
        return True
    if isinstance(v, str):
        try:
            float(v.replace(",", "")) if v.strip() else None
        except ValueError:
            return False
        return bool(v.strip())
    return False


def check_mixed_types(raw: pd.DataFrame, rows: np.ndarray, target: str) -> list[Finding]:
    """Columns that are mostly numbers with a few stray strings (or the reverse in JSONL)."""
    out = []
    for col in raw.columns:
        dtype = raw[col].dtype
        if col == ROW_COLUMN or not (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)):
            continue
        s = raw[col]
        keep = ~missing_mask(s).to_numpy(dtype=bool)
        values = s.to_numpy(dtype=object)[keep]
        if not len(values):
            continue
        is_num = np.fromiter((_is_number(v) for v in values), dtype=bool, count=len(values))
        kinds = {type(v).__name__ for v in values}
        share = float(is_num.mean())
        if 0.8 <= share < 1.0:
            bad = ~is_num
            examples = sorted({str(v)[:20] for v in values[bad]})[:5]
            out.append(
                Finding(
                    "mixed_types",
                    "warning",
                    f"column {col!r} is {percent(int(is_num.sum()), len(values))} numbers but "
                    f"{int(bad.sum())} value(s) are not (e.g. {', '.join(map(repr, examples))})",
                    int(bad.sum()),
                    "fix or blank those values; until then the column is read as text categories"
                    if col != target
                    else "fix those labels; a numeric target with strays is read as classes",
                    example_rows(rows[keep][bad]),
                    column=str(col),
                    details={"numeric_fraction": share, "python_types": sorted(kinds)},
                )
            )
        elif len(kinds - {"str"}) and "str" in kinds and share < 0.8:
            out.append(
                Finding(
                    "mixed_types",
                    "info",
                    f"column {col!r} mixes value types ({', '.join(sorted(kinds))})",
                    len(values),
                    "store one type per column",
                    column=str(col),
                    details={"python_types": sorted(kinds)},
                )
            )
    return out


def check_outliers(df: pd.DataFrame, schema: Schema) -> list[Finding]:
    out = []
    rows = df[ROW_COLUMN].to_numpy(dtype=np.int64)
    numeric_cols = list(schema.numeric_columns)
    if schema.task == "regression":
        numeric_cols.append(schema.target)
    for col in numeric_cols:
        x = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(x)
        if ok.sum() < 20:
            continue
        q1, q3 = np.percentile(x[ok], [25, 75])
        iqr = q3 - q1
        if iqr <= 0:
            continue
        low, high = q1 - OUTLIER_IQR * iqr, q3 + OUTLIER_IQR * iqr
        far = ok & ((x < low) | (x > high))
        if far.any():
            order = np.argsort(-np.abs(x[far] - np.median(x[ok])))
            out.append(
                Finding(
                    "numeric_outliers",
                    "info",
                    f"column {col!r}: {int(far.sum())} value(s) far outside the middle half "
                    f"(beyond {low:.4g} .. {high:.4g})",
                    int(far.sum()),
                    "check them for unit or entry errors; numeric_scaling='robust' lessens their pull",
                    example_rows(rows[far][order]),
                    column=str(col),
                    details={"low": low, "high": high, "q1": q1, "q3": q3},
                )
            )
    return out


def length_stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    p = np.percentile(values, [50, 90, 99])
    return {
        "min": float(values.min()),
        "median": float(p[0]),
        "p90": float(p[1]),
        "p99": float(p[2]),
        "max": float(values.max()),
        "mean": float(values.mean()),
    }


def check_lengths(tokens: np.ndarray, chars: np.ndarray, rows: np.ndarray, max_length: int) -> list[Finding]:
    out = []
    n = len(tokens)
    over = tokens > max_length
    if over.any():
        share = float(over.mean())
        p99 = int(np.percentile(tokens, 99))
        out.append(
            Finding(
                "truncation",
                "warning" if share > 0.01 else "info",
                f"{int(over.sum())} text(s) are longer than max_length={max_length} tokens "
                f"({percent(int(over.sum()), n)})"
                " and will be cut",
                int(over.sum()),
                f"raise max_length (99% of texts fit in {p99} tokens) if their ends matter",
                example_rows(rows[over]),
                details={"fraction": share, "p99_tokens": p99},
            )
        )
    short = chars < 3
    if short.any():
        out.append(
            Finding(
                "very_short_texts",
                "info",
                f"{int(short.sum())} text(s) are shorter than 3 characters",
                int(short.sum()),
                "check them: they give the model almost nothing to go on",
                example_rows(rows[short]),
            )
        )
    return out
