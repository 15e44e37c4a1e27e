"""Inspection checks on the target: class balance and rare labels, single-column leakage, and
likely label errors (see :mod:`tunesmith.data.label_issues`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.inspect_report import MAX_EXAMPLES, Finding, example_rows, percent
from tunesmith.data.label_issues import LabelIssues
from tunesmith.data.schema import ROW_COLUMN, Schema, missing_mask

LEAKAGE_THRESHOLD = 0.95
IMBALANCE_WARNING = 3.0
RARE_LABEL_ROWS = 10


def check_balance(counts: dict[str, int], folds: int) -> list[Finding]:
    out = []
    present = {k: v for k, v in counts.items() if v > 0}
    if len(present) >= 2:
        ratio = max(present.values()) / min(present.values())
        ordered = sorted(present, key=lambda k: (-present[k], k))
        big, small = ordered[0], ordered[-1]
        out.append(
            Finding(
                "class_balance",
                "warning" if ratio >= IMBALANCE_WARNING else "info",
                f"imbalance ratio {ratio:.1f} ({big!r}: {present[big]} rows, {small!r}: {present[small]} rows)",
                len(present),
                "balance='oversample', 'undersample' or 'class_weight', and judge by per-class F1, not accuracy"
                if ratio >= IMBALANCE_WARNING
                else "no action needed",
                details={"counts": counts, "ratio": ratio},
            )
        )
    limit = max(RARE_LABEL_ROWS, folds)
    rare = {k: v for k, v in present.items() if v < limit}
    if rare:
        out.append(
            Finding(
                "rare_labels",
                "warning",
                f"{len(rare)} label(s) have fewer than {limit} rows: "
                + ", ".join(f"{k!r} ({v})" for k, v in list(rare.items())[:8]),
                len(rare),
                "collect more rows, merge them into a related label, or drop them; "
                "too few rows to learn from or to score",
                details={"labels": rare},
            )
        )
    return out


def _leakage_keys(s: pd.Series) -> np.ndarray:
    """Values to group a column by: quantile bins for many-valued numbers, else the values."""
    miss = missing_mask(s).to_numpy(dtype=bool)
    numeric = pd.to_numeric(s, errors="coerce")
    if numeric[~miss].notna().all() and numeric.nunique() > 20:
        try:
            bins = pd.qcut(numeric, q=20, duplicates="drop", labels=False)
        except (ValueError, IndexError):
            bins = numeric
        return np.asarray(["<missing>" if m else f"b{b}" for m, b in zip(miss, bins.tolist(), strict=True)])
    return np.asarray(["<missing>" if m else str(v) for m, v in zip(miss, s.tolist(), strict=True)], dtype=object)


def _single_column_score(keys: np.ndarray, y: np.ndarray, regression: bool, seed: int) -> float:
    """Out-of-fold score of predicting ``y`` from ``keys`` alone (balanced accuracy or R²)."""
    from sklearn.metrics import balanced_accuracy_score, r2_score
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    folds = 5 if n >= 50 else 2
    pred = np.empty(n, dtype=np.float64 if regression else object)
    if regression:
        splitter: Any = KFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(keys)
    else:
        _, counts = np.unique(y, return_counts=True)
        if counts.min() >= folds:
            splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(keys, y)
        else:
            splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(keys)
    for tr, te in splits:
        frame = pd.DataFrame({"k": keys[tr], "y": y[tr]})
        if regression:
            table = frame.groupby("k")["y"].mean()
            fallback: Any = float(np.mean(y[tr]))
        else:
            sizes = frame.groupby(["k", "y"], sort=True).size()
            # Most frequent label per value (ties: the label that sorts first).
            table = sizes.sort_values(ascending=False, kind="stable").groupby(level="k").head(1)
            table = table.reset_index().set_index("k")["y"]
            fallback = pd.Series(y[tr]).value_counts().index[0]
        mapped = pd.Series(keys[te]).map(table)
        pred[te] = mapped.where(mapped.notna(), fallback).to_numpy()
    if regression:
        return float(r2_score(y, pred.astype(np.float64)))
    return float(balanced_accuracy_score(y.astype(str), pred.astype(str)))


def check_leakage(df: pd.DataFrame, schema: Schema, skip: Sequence[str], seed: int) -> list[Finding]:
    regression = schema.task == "regression"
    y = df[schema.target].to_numpy(dtype=np.float64 if regression else object)
    out = []
    for col in df.columns:
        # Ignored columns (identifiers, dates) never reach the model; free text is the input itself.
        if col in (schema.target, ROW_COLUMN, *skip) or col not in (
            *schema.numeric_columns,
            *schema.categorical_columns,
        ):
            continue
        s = df[col]
        n_unique = s.nunique(dropna=True)
        if n_unique < 2 or (col in schema.categorical_columns and n_unique > 0.5 * len(s)):
            continue
        keys = _leakage_keys(s)
        try:
            score = _single_column_score(keys, y, regression, seed)
        except ValueError:
            continue
        if score >= LEAKAGE_THRESHOLD:
            what = "R²" if regression else "balanced accuracy"
            out.append(
                Finding(
                    "leakage",
                    "error",
                    f"column {col!r} alone predicts the target ({what} {score:.3f}, out of fold)",
                    1,
                    "check how it was made: if it is derived from the label (or recorded after it), drop it",
                    column=str(col),
                    details={"score": score, "metric": what},
                )
            )
    return out


def check_label_issues(issues: LabelIssues) -> list[Finding]:
    if not issues.n_issues:
        return []
    flagged = issues.issues
    return [
        Finding(
            "label_errors",
            "warning",
            f"{issues.n_issues} row(s) are likely mislabeled ({percent(issues.n_issues, len(issues.table))}, "
            f"{issues.mode} mode)",
            issues.n_issues,
            "review the worst first (report.md); label_errors='drop' or 'relabel' when cleaning",
            example_rows(flagged["row"].to_numpy()),
            details={
                "mode": issues.mode,
                "out_of_fold_accuracy": issues.oof_accuracy,
                "suggested": {
                    str(int(r)): str(s)
                    for r, s in zip(
                        flagged["row"][:MAX_EXAMPLES], flagged["suggested_label"][:MAX_EXAMPLES], strict=True
                    )
                },
            },
        )
    ]
