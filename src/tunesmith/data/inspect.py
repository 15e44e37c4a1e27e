"""What is wrong with a labeled data set, before anything is trained on it.

:func:`inspect_data` profiles every column and runs a fixed list of checks. Each problem it
finds is a :class:`Finding` with a severity, a count, example rows (1-based data rows,
header excluded) and a suggested action. The :class:`InspectionReport` prints a summary,
and :meth:`InspectionReport.write` saves ``report.md`` (with PNG plots) and
``report.json``.

Checks, in order: unusable rows, missing values, constant columns, mixed types, duplicate
rows, conflicting labels, near-duplicate texts (cosine similarity of the backbone's
embeddings), class balance, rare labels, single-column leakage, train/test overlap (when a
split column or a test file is given), numeric outliers, text length and truncation, and
likely label errors (cleanlab on out-of-fold probabilities; see
:mod:`tunesmith.data.label_issues`).

The backbone embeds each text once; the near-duplicate search and the fast label-error
search share those vectors.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from tunesmith.data.clean import conflict_groups, duplicate_mask, normalise_text
from tunesmith.data.schema import ROW_COLUMN, Schema, infer_schema, missing_mask
from tunesmith.data.split import SPLIT_VALUES
from tunesmith.data.validate import DropReport, prepare_frame, row_numbers, texts_of
from tunesmith.errors import ConfigError, DataError, TunesmithError

if TYPE_CHECKING:
    from tunesmith.data.label_issues import LabelIssues

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")
LabelErrorMode = Literal["fast", "thorough", "none"]

MAX_EXAMPLES = 20
NEAR_DUPLICATE_THRESHOLD = 0.95
LEAKAGE_THRESHOLD = 0.95
IMBALANCE_WARNING = 3.0
RARE_LABEL_ROWS = 10
OUTLIER_IQR = 3.0
NEAR_CONSTANT_SHARE = 0.995
_CHUNK = 1024
_MAX_PAIRS = 10_000


@dataclass
class Finding:
    """One problem found in the data.

    ``rows`` holds up to 20 example rows (1-based data rows); ``count`` is how many rows
    (or pairs, or columns, as ``title`` says) are affected in all.
    """

    check: str
    severity: Severity
    title: str
    count: int
    action: str
    rows: list[int] = field(default_factory=list)
    column: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "check": self.check,
            "severity": self.severity,
            "title": self.title,
            "count": self.count,
            "column": self.column,
            "rows": self.rows[:MAX_EXAMPLES],
            "action": self.action,
            "details": self.details,
        }


@dataclass
class InspectionReport:
    """The profile of a data set and everything found wrong with it."""

    target: str
    file: str | None
    n_rows: int
    schema: Schema | None
    columns: list[dict[str, Any]]
    findings: list[Finding]
    class_counts: dict[str, int] = field(default_factory=dict)
    text_lengths: dict[str, Any] = field(default_factory=dict)
    label_issues: LabelIssues | None = None
    near_duplicate_pairs: list[tuple[int, int, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    examples: dict[int, str] = field(default_factory=dict)
    _token_counts: np.ndarray | None = None

    @property
    def imbalance_ratio(self) -> float | None:
        """Rows of the largest class over rows of the smallest (None for regression)."""
        counts = [c for c in self.class_counts.values() if c > 0]
        return max(counts) / min(counts) if counts else None

    def by_severity(self, severity: str) -> list[Finding]:
        """Findings of one severity (``error``, ``warning`` or ``info``)."""
        return [f for f in self.findings if f.severity == severity]

    def finding(self, check: str) -> Finding | None:
        """The first finding of ``check``, or None when that check found nothing."""
        return next((f for f in self.findings if f.check == check), None)

    @property
    def has_errors(self) -> bool:
        """True when any finding is an error (e.g. test rows that also appear in train)."""
        return bool(self.by_severity("error"))

    def summary(self) -> str:
        """A few lines for the terminal: size, task, and one line per finding, worst first."""
        task = self.schema.task if self.schema else "?"
        lines = [f"{self.n_rows} rows, target {self.target!r} ({task})"]
        if self.class_counts:
            ratio = self.imbalance_ratio
            shown = ", ".join(f"{k}: {v}" for k, v in self.class_counts.items())
            lines.append(f"classes: {shown}" + (f" (imbalance ratio {ratio:.1f})" if ratio else ""))
        if not self.findings:
            lines.append("no problems found")
        for f in self.findings:
            lines.append(f"[{f.severity}] {f.title}: {f.action}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``report.json``)."""
        return {
            "file": self.file,
            "target": self.target,
            "n_rows": self.n_rows,
            "schema": self.schema.to_dict() if self.schema else None,
            "columns": self.columns,
            "class_counts": self.class_counts,
            "imbalance_ratio": self.imbalance_ratio,
            "text_lengths": self.text_lengths,
            "findings": [f.to_dict() for f in self.findings],
            "counts_by_severity": {s: len(self.by_severity(s)) for s in SEVERITIES},
            "label_issues": self.label_issues.to_dict() if self.label_issues is not None else None,
            "near_duplicate_pairs": [
                {"row_a": a, "row_b": b, "similarity": round(s, 4)} for a, b, s in self.near_duplicate_pairs[:200]
            ],
            "timings": self.timings,
            "settings": self.settings,
        }

    def write(self, out_dir: str | Path) -> Path:
        """Write ``report.md``, ``report.json`` and the plots under ``out_dir``; returns ``report.md``."""
        from tunesmith.data.inspect_report import write_report

        return write_report(self, Path(out_dir))


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started, 3)


def _examples(rows: np.ndarray | Sequence[int]) -> list[int]:
    return [int(r) for r in list(rows)[:MAX_EXAMPLES]]


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "0%"


# --- column profile -----------------------------------------------------------------------


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


# --- checks -------------------------------------------------------------------------------


def _check_dropped(drops: DropReport, target: str) -> list[Finding]:
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


def _check_missing(raw: pd.DataFrame, rows: np.ndarray, target: str, text_columns: Sequence[str]) -> list[Finding]:
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
                f"column {col!r}: {k} missing value(s) ({_pct(k, n)})",
                k,
                action,
                _examples(rows[miss]),
                column=str(col),
                details={"fraction": share},
            )
        )
    return out


def _check_constant(raw: pd.DataFrame, target: str) -> list[Finding]:
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
                    f"column {col!r} is near-constant ({_pct(int(counts.iloc[0]), n)} {str(counts.index[0])[:40]!r})",
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


def _check_mixed_types(raw: pd.DataFrame, rows: np.ndarray, target: str) -> list[Finding]:
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
                    f"column {col!r} is {_pct(int(is_num.sum()), len(values))} numbers but "
                    f"{int(bad.sum())} value(s) are not (e.g. {', '.join(map(repr, examples))})",
                    int(bad.sum()),
                    "fix or blank those values; until then the column is read as text categories"
                    if col != target
                    else "fix those labels; a numeric target with strays is read as classes",
                    _examples(rows[keep][bad]),
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


def _check_duplicates(df: pd.DataFrame, schema: Schema, texts: list[str], raw: pd.DataFrame) -> list[Finding]:
    rows = df[ROW_COLUMN].to_numpy(dtype=np.int64)
    dup = duplicate_mask(df, schema, texts)
    body = raw.drop(columns=[c for c in raw.columns if c == ROW_COLUMN])
    try:
        identical = int(body.astype(str).duplicated().sum())
    except (TypeError, ValueError):
        identical = 0
    if not dup.any():
        return []
    return [
        Finding(
            "duplicate_rows",
            "warning",
            f"{int(dup.sum())} row(s) repeat an earlier row's input and label ({_pct(int(dup.sum()), len(df))})",
            int(dup.sum()),
            "drop them before splitting (duplicates='drop'), or copies land in train and test and inflate scores",
            _examples(rows[dup]),
            details={"identical_in_every_column": identical},
        )
    ]


def _check_conflicts(df: pd.DataFrame, schema: Schema) -> list[Finding]:
    groups = conflict_groups(df, schema)
    if not groups:
        return []
    rows = df[ROW_COLUMN].to_numpy(dtype=np.int64)
    involved = np.concatenate(groups)
    labels = df[schema.target].astype(str).to_numpy()
    examples = [
        {"rows": [int(r) for r in rows[g][:10]], "labels": sorted(set(labels[g].tolist()))} for g in groups[:20]
    ]
    return [
        Finding(
            "conflicting_labels",
            "warning",
            f"{len(groups)} input(s) appear with different labels ({len(involved)} rows)",
            len(involved),
            "resolve them: conflicts='majority' keeps each input's most frequent label, 'drop' drops them all",
            _examples(sorted(rows[involved].tolist())),
            details={"groups": len(groups), "examples": examples},
        )
    ]


def near_duplicate_pairs(
    embeddings: np.ndarray,
    keys: Sequence[str],
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    *,
    sides: np.ndarray | None = None,
) -> tuple[list[tuple[int, int, float]], int, int]:
    """Pairs of positions ``(i, j, cosine)`` with ``i < j`` and cosine >= ``threshold``.

    Pairs whose normalised texts (``keys``) are identical are exact duplicates and are
    left out. Rows are compared in chunks against the rows after them, so memory stays at
    ``chunk x n`` and each pair is scored once. Returns the (at most 10,000) most similar
    pairs, the number of pairs in all, and how many of them join rows of different
    ``sides`` (e.g. 0 = train, 1 = test; -1 takes no part).
    """
    n = len(embeddings)
    if n < 2:
        return [], 0, 0
    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    codes = pd.factorize(pd.Series(list(keys), dtype=object))[0]
    best_i: list[np.ndarray] = []
    best_j: list[np.ndarray] = []
    best_s: list[np.ndarray] = []
    total = crossing = 0
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        block = x[start:stop] @ x[start:].T
        ii, jj = np.nonzero(block >= threshold)
        jj = jj + start
        ii = ii + start
        keep = (jj > ii) & (codes[ii] != codes[jj])
        ii, jj = ii[keep], jj[keep]
        if not len(ii):
            continue
        sims = block[ii - start, jj - start]
        total += len(ii)
        if sides is not None:
            a, b = sides[ii], sides[jj]
            crossing += int(((a != b) & (a >= 0) & (b >= 0)).sum())
        if len(ii) > _MAX_PAIRS:
            top = np.argpartition(-sims, _MAX_PAIRS)[:_MAX_PAIRS]
            ii, jj, sims = ii[top], jj[top], sims[top]
        best_i.append(ii)
        best_j.append(jj)
        best_s.append(sims)
    if not best_i:
        return [], 0, 0
    ii, jj, sims = np.concatenate(best_i), np.concatenate(best_j), np.concatenate(best_s)
    order = np.lexsort((jj, ii, -sims))[:_MAX_PAIRS]
    pairs = list(zip(ii[order].tolist(), jj[order].tolist(), sims[order].astype(float).tolist(), strict=True))
    return pairs, total, crossing


def _check_near_duplicates(
    pairs: list[tuple[int, int, float]], total: int, rows: np.ndarray, threshold: float
) -> tuple[list[Finding], list[tuple[int, int, float]]]:
    if not total:
        return [], []
    as_rows = [(int(rows[i]), int(rows[j]), s) for i, j, s in pairs]
    involved = sorted({r for a, b, _ in as_rows for r in (a, b)})
    return [
        Finding(
            "near_duplicates",
            "info",
            f"{total} pair(s) of different texts are near-duplicates (cosine >= {threshold:g})",
            total,
            "review them (report.json lists the pairs); keep near-copies in one split with group_column",
            _examples([r for a, b, _ in as_rows[:10] for r in (a, b)]),
            details={"rows_involved": len(involved), "threshold": threshold},
        )
    ], as_rows


def _check_balance(counts: dict[str, int], folds: int) -> list[Finding]:
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


def _check_leakage(df: pd.DataFrame, schema: Schema, skip: Sequence[str], seed: int) -> list[Finding]:
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


def _split_names(raw: pd.DataFrame, column: str) -> np.ndarray:
    return np.asarray([SPLIT_VALUES.get(str(v).strip().lower(), "other") for v in raw[column].tolist()], dtype=object)


def _check_overlap(
    train_keys: Sequence[str],
    test_keys: Sequence[str],
    test_rows: np.ndarray,
    *,
    what: str,
    train_groups: Sequence[Any] | None = None,
    test_groups: Sequence[Any] | None = None,
    group_column: str | None = None,
    near_pairs: int = 0,
) -> list[Finding]:
    out = []
    seen = set(train_keys)
    dup = np.fromiter((k in seen for k in test_keys), dtype=bool, count=len(test_keys))
    if dup.any():
        out.append(
            Finding(
                "train_test_overlap",
                "error",
                f"{int(dup.sum())} {what} row(s) repeat a training input ({_pct(int(dup.sum()), len(test_keys))})",
                int(dup.sum()),
                "remove them from the test side or de-duplicate before splitting: their scores are memory, "
                "not generalisation",
                _examples(test_rows[dup]),
            )
        )
    if train_groups is not None and test_groups is not None:
        shared = set(map(str, train_groups)) & set(map(str, test_groups))
        if shared:
            in_shared = np.fromiter((str(g) in shared for g in test_groups), dtype=bool, count=len(test_groups))
            out.append(
                Finding(
                    "group_overlap",
                    "error",
                    f"{len(shared)} group(s) of {group_column!r} appear in train and {what} "
                    f"({int(in_shared.sum())} {what} rows)",
                    int(in_shared.sum()),
                    f"split by group (group_column={group_column!r}) so no group spans both",
                    _examples(test_rows[in_shared]),
                    column=group_column,
                    details={"groups": sorted(shared)[:MAX_EXAMPLES]},
                )
            )
    if near_pairs:
        out.append(
            Finding(
                "near_duplicate_overlap",
                "warning",
                f"{near_pairs} near-duplicate pair(s) cross train and {what}",
                near_pairs,
                "review them; near-copies across the split inflate test scores",
            )
        )
    return out


def _check_outliers(df: pd.DataFrame, schema: Schema) -> list[Finding]:
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
                    _examples(rows[far][order]),
                    column=str(col),
                    details={"low": low, "high": high, "q1": q1, "q3": q3},
                )
            )
    return out


def _length_stats(values: np.ndarray) -> dict[str, float]:
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


def _check_lengths(tokens: np.ndarray, chars: np.ndarray, rows: np.ndarray, max_length: int) -> list[Finding]:
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
                f"{int(over.sum())} text(s) are longer than max_length={max_length} tokens ({_pct(int(over.sum()), n)})"
                " and will be cut",
                int(over.sum()),
                f"raise max_length (99% of texts fit in {p99} tokens) if their ends matter",
                _examples(rows[over]),
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
                _examples(rows[short]),
            )
        )
    return out


def _check_label_issues(issues: LabelIssues) -> list[Finding]:
    if not issues.n_issues:
        return []
    flagged = issues.issues
    return [
        Finding(
            "label_errors",
            "warning",
            f"{issues.n_issues} row(s) are likely mislabeled ({_pct(issues.n_issues, len(issues.table))}, "
            f"{issues.mode} mode)",
            issues.n_issues,
            "review the worst first (report.md); label_errors='drop' or 'relabel' when cleaning",
            _examples(flagged["row"].to_numpy()),
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


# --- the whole inspection -----------------------------------------------------------------


def _embed(
    backbone: Any, texts: list[str], max_length: int, batch_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, untruncated token counts): tokenised once, counted in full, embedded truncated."""
    from tunesmith.estimator import FineTuner

    ids = backbone.tokenize(texts, backbone.max_positions)
    counts = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
    limit = min(max_length, backbone.max_positions)
    # Keep the closing special token, as the tokenizer's own truncation does.
    cut = [i if len(i) <= limit else [*i[: limit - 1], i[-1]] for i in ids]
    emb = FineTuner._run_batches(backbone, cut, batch_size, backbone.pad_id, progress=progress, description="embedding")
    return np.asarray(emb, dtype=np.float32), counts


def inspect_data(
    data: str | Path | pd.DataFrame,
    target: str,
    *,
    text_column: str | Sequence[str] | None = None,
    task: str | None = None,
    test: str | Path | pd.DataFrame | None = None,
    split_column: str | None = None,
    group_column: str | None = None,
    backbone: str = "minilm-l6",
    label_errors: LabelErrorMode = "fast",
    folds: int = 5,
    near_duplicates: bool = True,
    near_duplicate_threshold: float = NEAR_DUPLICATE_THRESHOLD,
    max_length: int = 128,
    batch_size: int = 128,
    seed: int = 0,
    fit_params: dict[str, Any] | None = None,
    max_rows: int | None = None,
    progress: bool = True,
) -> InspectionReport:
    """Profile ``data`` and find what is wrong with it (see the module docstring for the checks).

    Parameters
    ----------
    data:
        A file (CSV, TSV, Parquet, JSONL) or a DataFrame with the ``target`` column.
    test:
        A second file or frame to check against ``data`` for overlap (it is profiled only
        for that). ``split_column`` does the same within ``data``.
    group_column:
        Rows of one group belong together (same user, same product): overlap of groups
        across train and test is reported.
    backbone:
        Embeds the texts for near-duplicates and the fast label-error search.
    label_errors:
        ``fast`` (default), ``thorough`` (k-fold fine-tuning with ``fit_params``) or ``none``.
    near_duplicate_threshold:
        Cosine similarity from which two different texts count as near-duplicates.
    max_rows:
        Read only the first ``max_rows`` rows of a file (a sample of a file too large to
        read whole).
    """
    from tunesmith.data.io import read_table

    if label_errors not in ("fast", "thorough", "none"):
        raise ConfigError(f"must be fast, thorough or none, got {label_errors!r}", key="label_errors")
    if not 0.0 < near_duplicate_threshold <= 1.0:
        raise ConfigError(f"must be in (0, 1], got {near_duplicate_threshold!r}", key="near_duplicate_threshold")
    if split_column and test is not None:
        raise ConfigError("give a split column or a test file, not both", key="split_column")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    file = str(data) if isinstance(data, (str, Path)) else None
    with _timed(timings, "read"):
        raw = read_table(data, max_rows=max_rows) if isinstance(data, (str, Path)) else data.copy()
    if ROW_COLUMN not in raw.columns:
        raw[ROW_COLUMN] = row_numbers(raw)
    raw_rows = raw[ROW_COLUMN].to_numpy(dtype=np.int64)
    ignore = [c for c in (split_column, group_column) if c]
    with _timed(timings, "schema"):
        schema = infer_schema(raw, target, text_column=text_column, task=task, ignore=ignore, file=file)
        df, drops = prepare_frame(raw, schema, file=file)
    texts = texts_of(df, schema)
    rows = df[ROW_COLUMN].to_numpy(dtype=np.int64)
    keys = [normalise_text(t) for t in texts]
    findings: list[Finding] = []
    with _timed(timings, "profile"):
        columns = profile_columns(raw, schema, target)
        findings += _check_dropped(drops, target)
        findings += _check_missing(raw, raw_rows, target, schema.text_columns)
        findings += _check_constant(raw, target)
        findings += _check_mixed_types(raw, raw_rows, target)
    with _timed(timings, "duplicates"):
        findings += _check_duplicates(df, schema, texts, raw)
        findings += _check_conflicts(df, schema)

    class_counts: dict[str, int] = {}
    if schema.labels is not None:
        counts = df[schema.target].astype(str).value_counts()
        class_counts = {label: int(counts.get(label, 0)) for label in schema.labels}
        findings += _check_balance(class_counts, folds)
    with _timed(timings, "leakage"):
        findings += _check_leakage(df, schema, ignore, seed)

    need_embeddings = near_duplicates or label_errors == "fast"
    embeddings: np.ndarray | None = None
    from tunesmith.backbones import create_backbone

    with _timed(timings, "load_backbone"):
        model = create_backbone(backbone)
    with _timed(timings, "embed" if need_embeddings else "tokenize"):
        if need_embeddings:
            embeddings, tokens = _embed(model, texts, max_length, batch_size, progress)
        else:
            ids = model.tokenize(texts, model.max_positions)
            tokens = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
    chars = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    findings += _check_lengths(tokens, chars, rows, max_length)
    findings += _check_outliers(df, schema)

    pairs_rows: list[tuple[int, int, float]] = []
    pair_positions: list[tuple[int, int, float]] = []
    crossing = 0
    names = _split_names(df, split_column) if split_column else None
    if near_duplicates and embeddings is not None:
        sides = None if names is None else np.where(names == "train", 0, np.where(names == "other", -1, 1))
        with _timed(timings, "near_duplicates"):
            pair_positions, total, crossing = near_duplicate_pairs(
                embeddings, keys, near_duplicate_threshold, sides=sides
            )
            found, pairs_rows = _check_near_duplicates(pair_positions, total, rows, near_duplicate_threshold)
            findings += found

    with _timed(timings, "overlap"):
        if names is not None:
            tr, te = names == "train", names != "train"
            te &= names != "other"
            groups = df[group_column].tolist() if group_column else None
            findings += _check_overlap(
                [k for k, m in zip(keys, tr, strict=True) if m],
                [k for k, m in zip(keys, te, strict=True) if m],
                rows[te],
                what="valid/test",
                train_groups=[g for g, m in zip(groups, tr, strict=True) if m] if groups else None,
                test_groups=[g for g, m in zip(groups, te, strict=True) if m] if groups else None,
                group_column=group_column,
                near_pairs=crossing,
            )
        elif test is not None:
            tfile = str(test) if isinstance(test, (str, Path)) else None
            traw = read_table(test) if isinstance(test, (str, Path)) else test.copy()
            tdf, _ = prepare_frame(traw, schema, file=tfile)
            tkeys = [normalise_text(t) for t in texts_of(tdf, schema)]
            trows = tdf[ROW_COLUMN].to_numpy(dtype=np.int64)
            missing_group = group_column and group_column not in tdf.columns
            if missing_group:
                raise DataError(
                    f"group column {group_column!r} is not in the test data", file=tfile, column=group_column
                )
            findings += _check_overlap(
                keys,
                tkeys,
                trows,
                what="test",
                train_groups=df[group_column].tolist() if group_column else None,
                test_groups=tdf[group_column].tolist() if group_column else None,
                group_column=group_column,
            )

    issues: LabelIssues | None = None
    if label_errors != "none":
        if schema.task == "regression":
            findings.append(
                Finding(
                    "label_errors",
                    "info",
                    "label errors not searched: the target is numeric (regression)",
                    0,
                    "check numeric_outliers on the target instead",
                )
            )
        else:
            from tunesmith.data.label_issues import find_label_issues

            with _timed(timings, "label_errors"):
                try:
                    issues = find_label_issues(
                        texts,
                        df[schema.target].tolist(),
                        mode=label_errors,
                        folds=folds,
                        seed=seed,
                        backbone=backbone,
                        rows=rows,
                        classes=schema.labels,
                        groups=df[group_column].tolist() if group_column else None,
                        embeddings=embeddings if label_errors == "fast" else None,
                        fit_params=fit_params,
                        max_length=max_length,
                        progress=progress,
                    )
                    findings += _check_label_issues(issues)
                except TunesmithError as exc:
                    findings.append(
                        Finding(
                            "label_errors",
                            "info",
                            f"label errors not searched: {exc}",
                            0,
                            "give every class at least as many rows as folds, or lower folds",
                        )
                    )
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: rank[f.severity])
    timings["total"] = round(time.perf_counter() - started, 3)
    wanted = set()
    for f in findings:
        wanted.update(f.rows[:5])
    if issues is not None:
        wanted.update(issues.flagged_rows()[:25])
    for a, b, _ in pairs_rows[:10]:
        wanted.update((a, b))
    by_row = dict(zip(rows.tolist(), texts, strict=True))
    examples = {r: by_row[r] for r in sorted(wanted) if r in by_row}
    return InspectionReport(
        target=target,
        file=file,
        n_rows=len(raw),
        schema=schema,
        columns=columns,
        findings=findings,
        class_counts=class_counts,
        text_lengths={"characters": _length_stats(chars), "tokens": _length_stats(tokens), "max_length": max_length},
        label_issues=issues,
        near_duplicate_pairs=pairs_rows,
        timings=timings,
        settings={
            "backbone": backbone,
            "label_errors": label_errors,
            "folds": folds,
            "near_duplicate_threshold": near_duplicate_threshold,
            "max_length": max_length,
            "seed": seed,
            "split_column": split_column,
            "group_column": group_column,
            "test": str(test) if isinstance(test, (str, Path)) else None,
            "max_rows": max_rows,
        },
        examples=examples,
        _token_counts=tokens,
    )
