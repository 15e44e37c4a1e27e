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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tunesmith.data.clean import normalise_text
from tunesmith.data.inspect_columns import (
    NEAR_CONSTANT_SHARE,
    OUTLIER_IQR,
    check_constant,
    check_dropped,
    check_lengths,
    check_missing,
    check_mixed_types,
    check_outliers,
    length_stats,
    profile_columns,
)
from tunesmith.data.inspect_duplicates import (
    NEAR_DUPLICATE_THRESHOLD,
    check_conflicts,
    check_duplicates,
    check_near_duplicates,
    check_overlap,
    near_duplicate_pairs,
    split_names,
)
from tunesmith.data.inspect_labels import (
    IMBALANCE_WARNING,
    LEAKAGE_THRESHOLD,
    RARE_LABEL_ROWS,
    check_balance,
    check_label_issues,
    check_leakage,
)
from tunesmith.data.inspect_report import MAX_EXAMPLES, SEVERITIES, Finding, InspectionReport, Severity
from tunesmith.data.io import read_table
from tunesmith.data.label_issues import LabelIssues, find_label_issues
from tunesmith.data.schema import ROW_COLUMN, infer_schema
from tunesmith.data.validate import prepare_frame, row_numbers, texts_of
from tunesmith.errors import ConfigError, DataError, TunesmithError

__all__ = [
    "IMBALANCE_WARNING",
    "LEAKAGE_THRESHOLD",
    "MAX_EXAMPLES",
    "NEAR_CONSTANT_SHARE",
    "NEAR_DUPLICATE_THRESHOLD",
    "OUTLIER_IQR",
    "RARE_LABEL_ROWS",
    "SEVERITIES",
    "Finding",
    "InspectionReport",
    "LabelErrorMode",
    "Severity",
    "inspect_data",
    "near_duplicate_pairs",
    "profile_columns",
]

LabelErrorMode = Literal["fast", "thorough", "none"]


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started, 3)


def _embed(
    backbone: Any, texts: list[str], max_length: int, batch_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, untruncated token counts): tokenised once, counted in full, embedded truncated."""
    # Imported here so that reading data does not load torch.
    from tunesmith.backbones.embed import run_batches

    ids = backbone.tokenize(texts, backbone.max_positions)
    counts = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
    limit = min(max_length, backbone.max_positions)
    # Keep the closing special token, as the tokenizer's own truncation does.
    cut = [i if len(i) <= limit else [*i[: limit - 1], i[-1]] for i in ids]
    emb = run_batches(backbone, cut, batch_size, backbone.pad_id, progress=progress, description="embedding")
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
    fold_model: Callable[..., Any] | None = None,
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
        ``fast`` (default), ``thorough`` (k-fold fine-tuning of ``fold_model`` with
        ``fit_params``; :func:`tunesmith.quality.inspect_data` passes the text
        :class:`~tunesmith.FineTuner`) or ``none``.
    near_duplicate_threshold:
        Cosine similarity from which two different texts count as near-duplicates.
    max_rows:
        Read only the first ``max_rows`` rows of a file (a sample of a file too large to
        read whole).
    """

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
        findings += check_dropped(drops, target)
        findings += check_missing(raw, raw_rows, target, schema.text_columns)
        findings += check_constant(raw, target)
        findings += check_mixed_types(raw, raw_rows, target)
    with _timed(timings, "duplicates"):
        findings += check_duplicates(df, schema, texts, raw)
        findings += check_conflicts(df, schema)

    class_counts: dict[str, int] = {}
    if schema.labels is not None:
        counts = df[schema.target].astype(str).value_counts()
        class_counts = {label: int(counts.get(label, 0)) for label in schema.labels}
        findings += check_balance(class_counts, folds)
    with _timed(timings, "leakage"):
        findings += check_leakage(df, schema, ignore, seed)

    need_embeddings = near_duplicates or label_errors == "fast"
    embeddings: np.ndarray | None = None
    # Imported here so that reading data does not load torch.
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
    findings += check_lengths(tokens, chars, rows, max_length)
    findings += check_outliers(df, schema)

    pairs_rows: list[tuple[int, int, float]] = []
    pair_positions: list[tuple[int, int, float]] = []
    crossing = 0
    names = split_names(df, split_column) if split_column else None
    if near_duplicates and embeddings is not None:
        sides = None if names is None else np.where(names == "train", 0, np.where(names == "other", -1, 1))
        with _timed(timings, "near_duplicates"):
            pair_positions, total, crossing = near_duplicate_pairs(
                embeddings, keys, near_duplicate_threshold, sides=sides
            )
            found, pairs_rows = check_near_duplicates(pair_positions, total, rows, near_duplicate_threshold)
            findings += found

    with _timed(timings, "overlap"):
        if names is not None:
            tr, te = names == "train", names != "train"
            te &= names != "other"
            groups = df[group_column].tolist() if group_column else None
            findings += check_overlap(
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
            findings += check_overlap(
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
                        fold_model=fold_model,
                    )
                    findings += check_label_issues(issues)
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
        text_lengths={"characters": length_stats(chars), "tokens": length_stats(tokens), "max_length": max_length},
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
