"""Inspection checks on repeated inputs: exact duplicates, conflicting labels, near-duplicate
texts (cosine similarity of embeddings) and overlap between train and valid/test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.clean import conflict_groups, duplicate_mask
from tunesmith.data.inspect_report import MAX_EXAMPLES, Finding, example_rows, percent
from tunesmith.data.schema import ROW_COLUMN, Schema
from tunesmith.data.split import SPLIT_VALUES

NEAR_DUPLICATE_THRESHOLD = 0.95
_CHUNK = 1024
_MAX_PAIRS = 10_000


def check_duplicates(df: pd.DataFrame, schema: Schema, texts: list[str], raw: pd.DataFrame) -> list[Finding]:
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
            f"{int(dup.sum())} row(s) repeat an earlier row's input and label ({percent(int(dup.sum()), len(df))})",
            int(dup.sum()),
            "drop them before splitting (duplicates='drop'), or copies land in train and test and inflate scores",
            example_rows(rows[dup]),
            details={"identical_in_every_column": identical},
        )
    ]


def check_conflicts(df: pd.DataFrame, schema: Schema) -> list[Finding]:
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
            example_rows(sorted(rows[involved].tolist())),
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


def check_near_duplicates(
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
            example_rows([r for a, b, _ in as_rows[:10] for r in (a, b)]),
            details={"rows_involved": len(involved), "threshold": threshold},
        )
    ], as_rows


def split_names(raw: pd.DataFrame, column: str) -> np.ndarray:
    return np.asarray([SPLIT_VALUES.get(str(v).strip().lower(), "other") for v in raw[column].tolist()], dtype=object)


def check_overlap(
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
                f"{int(dup.sum())} {what} row(s) repeat a training input ({percent(int(dup.sum()), len(test_keys))})",
                int(dup.sum()),
                "remove them from the test side or de-duplicate before splitting: their scores are memory, "
                "not generalisation",
                example_rows(test_rows[dup]),
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
                    example_rows(test_rows[in_shared]),
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
