"""Cleaning a prepared frame: duplicates, conflicting labels, missing values, label errors.

Every function here works on a frame returned by :func:`~tunesmith.data.prepare_frame`
(it carries the original 1-based data row of each row in ``__row__``) and returns the
cleaned copy together with a :class:`CleanReport` that counts every row it dropped or
changed and names them. Nothing is dropped silently.

Which rows count as the same input: the model input string of each row
(:func:`~tunesmith.data.texts_of`: the text columns plus the tabular extras). Exact
duplicates compare it as is; conflicts compare it case- and whitespace-normalised, since a
label that flips with capitalisation is still a contradiction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tunesmith.data.balance import resample
from tunesmith.data.clean_report import (
    ADDING_ACTIONS,
    CHANGING_ACTIONS,
    MAX_REPORTED_ROWS,
    CleanAction,
    CleanReport,
)
from tunesmith.data.io import read_table
from tunesmith.data.label_issues import LabelIssues, find_label_issues
from tunesmith.data.schema import ROW_COLUMN, Schema, infer_schema, label_string, missing_mask
from tunesmith.data.validate import prepare_frame, row_numbers, texts_of
from tunesmith.errors import ConfigError, DataError

__all__ = [
    "ADDING_ACTIONS",
    "CHANGING_ACTIONS",
    "MAX_REPORTED_ROWS",
    "CleanAction",
    "CleanReport",
    "apply_label_issues",
    "check_policies",
    "check_policy",
    "clean_data",
    "clean_frame",
    "conflict_groups",
    "drop_duplicates",
    "duplicate_mask",
    "handle_missing",
    "normalise_text",
    "resolve_conflicts",
]

DuplicatePolicy = Literal["drop", "keep"]
ConflictPolicy = Literal["majority", "drop", "keep"]
MissingPolicy = Literal["keep", "drop", "impute"]
LabelErrorPolicy = Literal["keep", "drop", "relabel"]

POLICIES: dict[str, tuple[str, ...]] = {
    "duplicates": ("drop", "keep"),
    "conflicts": ("majority", "drop", "keep"),
    "missing": ("keep", "drop", "impute"),
    "label_errors": ("keep", "drop", "relabel"),
}
_SPACES = re.compile(r"\s+")


def check_policy(name: str, value: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a valid policy for ``name``."""
    allowed = POLICIES[name]
    if value not in allowed:
        raise ConfigError(f"must be one of {', '.join(allowed)}, got {value!r}", key=name)


def check_policies(**policies: str) -> None:
    """:func:`check_policy` for each ``name=value``."""
    for name, value in policies.items():
        check_policy(name, value)


def _rows(df: pd.DataFrame) -> np.ndarray:
    if ROW_COLUMN not in df.columns:
        raise DataError(
            f"the frame has no {ROW_COLUMN!r} column", hint="Pass it through tunesmith.data.prepare_frame first"
        )
    return df[ROW_COLUMN].to_numpy(dtype=np.int64)


def normalise_text(text: str) -> str:
    """Lower case with runs of white space collapsed: the key that finds conflicting labels."""
    return _SPACES.sub(" ", text).strip().lower()


def duplicate_mask(df: pd.DataFrame, schema: Schema, texts: Sequence[str] | None = None) -> np.ndarray:
    """True for each row whose model input and label equal an earlier row's (``texts``: its inputs, if known)."""
    inputs = list(texts) if texts is not None else texts_of(df, schema)
    key = pd.DataFrame({"input": inputs, "target": df[schema.target].astype(str).to_numpy()})
    return key.duplicated(keep="first").to_numpy()


def drop_duplicates(df: pd.DataFrame, schema: Schema) -> tuple[pd.DataFrame, CleanAction]:
    """Drop rows whose model input and target equal an earlier row's; keep the first."""
    rows = _rows(df)
    dup = duplicate_mask(df, schema)
    dropped = rows[dup].tolist()
    action = CleanAction(
        "drop_duplicates",
        len(dropped),
        dropped,
        f"dropped {len(dropped)} exact duplicate row(s) (same input and label as an earlier row)",
    )
    return df.loc[~dup].copy(), action


def conflict_groups(df: pd.DataFrame, schema: Schema) -> list[np.ndarray]:
    """Positions of rows that share a normalised input but disagree on the label, one array per input."""
    if not schema.is_classification or not len(df):
        return []
    key = pd.Series([normalise_text(t) for t in texts_of(df, schema)])
    labels = df[schema.target].astype(str).to_numpy()
    frame = pd.DataFrame({"key": key.to_numpy(), "label": labels, "pos": np.arange(len(df))})
    n_labels = frame.groupby("key", sort=False)["label"].nunique()
    bad = set(n_labels[n_labels > 1].index)
    if not bad:
        return []
    sub = frame[frame["key"].isin(bad)]
    return [g["pos"].to_numpy() for _, g in sub.groupby("key", sort=False)]


def resolve_conflicts(
    df: pd.DataFrame, schema: Schema, policy: ConflictPolicy = "majority"
) -> tuple[pd.DataFrame, CleanAction]:
    """Resolve rows with the same input and different labels.

    ``majority`` keeps the rows that carry the input's most frequent label and drops the
    others (a tie drops the whole group, since no label wins); ``drop`` drops every row of a
    conflicting group; ``keep`` only reports them.
    """
    check_policy("conflicts", policy)
    rows = _rows(df)
    groups = conflict_groups(df, schema)
    labels = df[schema.target].astype(str).to_numpy()
    drop = np.zeros(len(df), dtype=bool)
    ties = 0
    for pos in groups:
        if policy == "drop":
            drop[pos] = True
        elif policy == "majority":
            values, counts = np.unique(labels[pos], return_counts=True)
            if (counts == counts.max()).sum() > 1:
                ties += 1
                drop[pos] = True
            else:
                winner = values[int(np.argmax(counts))]
                drop[pos[labels[pos] != winner]] = True
    involved = int(sum(len(p) for p in groups))
    if policy == "keep":
        flagged = sorted(int(r) for p in groups for r in rows[p])
        action = CleanAction(
            "report_conflicts",
            0,
            flagged,
            f"kept {involved} row(s) in {len(groups)} group(s) with the same input and different labels",
            {"groups": len(groups), "rows_involved": involved},
        )
        return df.copy(), action
    dropped = rows[drop].tolist()
    how = "kept each input's majority label" if policy == "majority" else "dropped every conflicting row"
    tie_note = f", {ties} tied group(s) dropped whole" if policy == "majority" and ties else ""
    action = CleanAction(
        "drop_conflicts",
        len(dropped),
        dropped,
        f"dropped {len(dropped)} row(s) whose input appears with another label ({how}{tie_note})",
        {"policy": policy, "groups": len(groups), "rows_involved": involved, "tied_groups": ties},
    )
    return df.loc[~drop].copy(), action


def handle_missing(
    df: pd.DataFrame,
    schema: Schema,
    policy: MissingPolicy = "keep",
    *,
    fill_values: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, CleanAction, dict[str, Any]]:
    """Missing values in the numeric and categorical feature columns.

    Rows missing their target or all their text never get here (:func:`prepare_frame`
    dropped and counted them). ``keep`` leaves gaps (the model input simply omits the
    field); ``drop`` removes rows with any gap; ``impute`` fills numeric columns with the
    median and categorical ones with the most frequent value - computed on ``df`` unless
    ``fill_values`` (from a training split) are given. Returns the fill values used.
    """
    check_policy("missing", policy)
    rows = _rows(df)
    columns = [c for c in (*schema.numeric_columns, *schema.categorical_columns) if c in df.columns]
    masks = {c: missing_mask(df[c]).to_numpy(dtype=bool) for c in columns}
    fills: dict[str, Any] = dict(fill_values or {})
    if policy == "impute":
        # Fill values for every feature column, gaps or not: later inputs may have gaps here.
        for c, m in masks.items():
            if c not in fills and (~m).any():
                present = df.loc[~m, c]
                if c in schema.numeric_columns:
                    fills[c] = float(pd.to_numeric(present, errors="coerce").median())
                else:
                    fills[c] = present.astype(str).value_counts().index[0]
    any_missing = np.zeros(len(df), dtype=bool)
    for m in masks.values():
        any_missing |= m
    per_column = {c: int(m.sum()) for c, m in masks.items() if m.any()}
    affected = rows[any_missing].tolist()
    if policy == "keep" or not affected:
        return (
            df.copy(),
            CleanAction(
                "report_missing",
                0,
                affected,
                f"kept {len(affected)} row(s) with missing feature values",
                {"per_column": per_column},
            ),
            fills if policy == "impute" else {},
        )
    if policy == "drop":
        action = CleanAction(
            "drop_missing",
            len(affected),
            affected,
            f"dropped {len(affected)} row(s) with a missing feature value",
            {"per_column": per_column},
        )
        return df.loc[~any_missing].copy(), action, {}
    out = df.copy()
    for c, m in masks.items():
        if not m.any():
            continue
        if c not in fills:
            raise DataError(
                "every value is missing; nothing to impute from",
                column=c,
                hint="Drop the column or use missing='keep'",
            )
        col = out[c].astype(object)
        col[m] = fills[c]
        out[c] = col
    action = CleanAction(
        "impute_missing",
        len(affected),
        affected,
        f"imputed missing feature values in {len(affected)} row(s) (median / most frequent value)",
        {"per_column": per_column, "fill_values": {k: _json_value(v) for k, v in fills.items()}},
    )
    return out, action, fills


def _json_value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def apply_label_issues(
    df: pd.DataFrame,
    schema: Schema,
    issues: LabelIssues,
    policy: LabelErrorPolicy = "drop",
    *,
    fraction: float = 1.0,
) -> tuple[pd.DataFrame, CleanAction]:
    """Drop or relabel the rows ``issues`` flags (matched on ``__row__``); ``keep`` only reports.

    ``fraction`` < 1 acts on only the worst-ranked part of the flagged rows (lowest label
    quality first): the top of the ranking is far more often truly mislabeled than its tail.
    """
    check_policy("label_errors", policy)
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"must be in (0, 1], got {fraction!r}", key="label_error_fraction")
    rows = _rows(df)
    flagged = issues.issues
    if fraction < 1.0:
        flagged = flagged.head(round(fraction * len(flagged)))
    present = set(rows.tolist())
    unknown = [int(r) for r in flagged["row"] if int(r) not in present]
    if unknown:
        raise DataError(
            f"label issues name row(s) {unknown[:5]} that are not in the data",
            hint="Compute the label issues on this same frame",
        )
    flagged_rows = [int(r) for r in flagged["row"]]
    if policy == "keep":
        return df.copy(), CleanAction(
            "report_label_errors",
            0,
            flagged_rows,
            f"kept {len(flagged_rows)} row(s) flagged as likely label errors",
            {"mode": issues.mode},
        )
    mask = np.isin(rows, flagged_rows)
    if policy == "drop":
        action = CleanAction(
            "drop_label_errors",
            int(mask.sum()),
            rows[mask].tolist(),
            f"dropped {int(mask.sum())} row(s) flagged as likely label errors ({issues.mode} mode)",
            {"mode": issues.mode, "folds": issues.folds, "flagged": issues.n_issues, "fraction": fraction},
        )
        return df.loc[~mask].copy(), action
    suggested = dict(zip(flagged["row"].astype(int), flagged["suggested_label"].astype(str), strict=True))
    out = df.copy()
    new = [suggested[int(r)] if m else v for r, m, v in zip(rows, mask, out[schema.target].tolist(), strict=True)]
    out[schema.target] = pd.Series(new, index=out.index, dtype=object)
    changes: dict[str, int] = {}
    for r in rows[mask]:
        old = str(df.loc[df[ROW_COLUMN] == r, schema.target].iloc[0])
        key = f"{old} -> {suggested[int(r)]}"
        changes[key] = changes.get(key, 0) + 1
    action = CleanAction(
        "relabel_label_errors",
        int(mask.sum()),
        rows[mask].tolist(),
        f"relabelled {int(mask.sum())} row(s) flagged as likely label errors to the suggested label",
        {
            "mode": issues.mode,
            "folds": issues.folds,
            "changes": changes,
            "flagged": issues.n_issues,
            "fraction": fraction,
        },
    )
    return out, action


def clean_frame(
    df: pd.DataFrame,
    schema: Schema,
    *,
    duplicates: DuplicatePolicy = "drop",
    conflicts: ConflictPolicy = "majority",
    missing: MissingPolicy = "keep",
    label_errors: LabelErrorPolicy = "keep",
    label_issues: LabelIssues | None = None,
    label_error_fraction: float = 1.0,
    steps: Iterable[str] = ("conflicts", "duplicates", "missing", "label_errors"),
) -> tuple[pd.DataFrame, CleanReport]:
    """Run the cleaning steps in order and report each.

    Conflicts go before duplicates, so that the rows a majority vote keeps are then
    de-duplicated. ``label_errors`` other than ``keep`` needs ``label_issues`` (see
    :func:`~tunesmith.data.label_issues.find_label_issues`) computed on this frame.
    """
    check_policies(duplicates=duplicates, conflicts=conflicts, missing=missing, label_errors=label_errors)
    if label_errors != "keep" and label_issues is None:
        raise ConfigError(
            f"label_errors={label_errors!r} needs label issues",
            key="label_errors",
            hint="Compute them with tunesmith.data.find_label_issues, or use label_errors='keep'",
        )
    report = CleanReport(rows_in=len(df))
    out = df
    for step in steps:
        if step == "conflicts":
            out, action = resolve_conflicts(out, schema, conflicts)
        elif step == "duplicates":
            if duplicates == "keep":
                continue
            out, action = drop_duplicates(out, schema)
        elif step == "missing":
            out, action, _ = handle_missing(out, schema, missing)
        elif step == "label_errors":
            if label_issues is None:
                continue
            out, action = apply_label_issues(out, schema, label_issues, label_errors, fraction=label_error_fraction)
        else:
            raise ConfigError(f"unknown cleaning step {step!r}", key="steps")
        report.actions.append(action)
    report.rows_out = len(out)
    if report.rows_out == 0:
        raise DataError(f"cleaning dropped every row: {report.summary()}", hint="Loosen the cleaning options")
    return out, report


def clean_data(
    data: str | Path | pd.DataFrame,
    target: str,
    *,
    text_column: str | Sequence[str] | None = None,
    task: str | None = None,
    duplicates: DuplicatePolicy = "drop",
    conflicts: ConflictPolicy = "majority",
    missing: MissingPolicy = "keep",
    label_errors: LabelErrorPolicy = "keep",
    label_error_mode: Literal["fast", "thorough"] = "fast",
    label_error_fraction: float = 1.0,
    folds: int = 5,
    balance: Literal["none", "oversample", "undersample"] = "none",
    backbone: str = "minilm-l6",
    seed: int = 0,
    fit_params: dict[str, Any] | None = None,
    progress: bool = True,
    fold_model: Callable[..., Any] | None = None,
) -> tuple[pd.DataFrame, CleanReport]:
    """Read, check and clean a whole data set; the frame keeps the input's own columns.

    The counterpart of ``tunesmith clean``: rows without a target or text are dropped
    (counted as ``drop_unusable``), then :func:`clean_frame` runs, label errors being
    searched first when ``label_errors`` is not ``keep``, and ``balance`` resamples last.
    Unlike a fit, this cleans every row (there is no split yet): clean a file before
    you split it yourself, or let ``FineTuner`` clean only its training split.

    ``label_error_mode="thorough"`` fine-tunes ``fold_model`` per fold (see
    :func:`~tunesmith.data.label_issues.find_label_issues`);
    :func:`tunesmith.quality.clean_data` passes the text :class:`~tunesmith.FineTuner`.
    """
    if balance not in ("none", "oversample", "undersample"):
        raise ConfigError(f"must be none, oversample or undersample, got {balance!r}", key="balance")
    file = str(data) if isinstance(data, (str, Path)) else None
    raw = read_table(data) if isinstance(data, (str, Path)) else data
    had_row_column = ROW_COLUMN in raw.columns
    if had_row_column:
        given = raw[ROW_COLUMN]
        if not pd.api.types.is_integer_dtype(given.dtype) or given.duplicated().any():
            raise DataError(
                f"column {ROW_COLUMN!r} is reserved for row numbers, but here it is not unique whole numbers",
                file=file,
                column=ROW_COLUMN,
                hint="Rename that column",
            )
    schema = infer_schema(raw, target, text_column=text_column, task=task, file=file)
    prepared, drops = prepare_frame(raw, schema, file=file)
    unusable = CleanAction(
        "drop_unusable",
        drops.dropped_total,
        drops.dropped_rows,
        f"dropped {drops.dropped_total} row(s) without a target or text",
        drops.to_dict(),
    )
    # Label errors are searched on what the other steps keep, as a fit does.
    cleaned, report = clean_frame(prepared, schema, duplicates=duplicates, conflicts=conflicts, missing=missing)
    report.rows_in = len(raw)
    report.actions.insert(0, unusable)
    if label_errors != "keep" and schema.is_classification:
        issues = find_label_issues(
            texts_of(cleaned, schema),
            cleaned[schema.target].tolist(),
            mode=label_error_mode,
            folds=folds,
            seed=seed,
            backbone=backbone,
            rows=cleaned[ROW_COLUMN].to_numpy(),
            classes=schema.labels,
            fit_params=fit_params,
            progress=progress,
            fold_model=fold_model,
        )
        cleaned, action = apply_label_issues(cleaned, schema, issues, label_errors, fraction=label_error_fraction)
        report.actions.append(action)
    if balance != "none" and schema.is_classification:
        cleaned, action = resample(cleaned, schema.target, balance, seed=seed)
        report.actions.append(action)
    report.rows_out = len(cleaned)
    if report.rows_out == 0:
        raise DataError(
            f"cleaning dropped every row: {report.summary()}", file=file, hint="Loosen the cleaning options"
        )
    index_of = {int(r): i for i, r in enumerate(row_numbers(raw))}
    positions = [index_of[int(r)] for r in cleaned[ROW_COLUMN]]
    result = raw.iloc[positions].reset_index(drop=True)
    if report.count("relabel_label_errors"):
        # Back to the user's own label values (prepare_frame made them strings).
        own = {label_string(v): v for v in raw[schema.target].dropna().tolist()}
        result[schema.target] = [own.get(v, v) for v in cleaned[schema.target].tolist()]
    if report.count("impute_missing"):
        imputed = next(a for a in report.actions if a.action == "impute_missing")
        for col in imputed.details.get("per_column", {}):
            result[col] = cleaned[col].to_numpy()
    if ROW_COLUMN in result.columns and not had_row_column:
        result = result.drop(columns=[ROW_COLUMN])
    return result, report
