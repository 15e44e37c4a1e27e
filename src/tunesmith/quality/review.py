"""Label review: a person checks the likeliest label errors first, and their answers fix the data.

::

    from tunesmith.quality.review import apply_review, review_queue

    issues = find_label_issues(texts, labels, mode="fast")          # out-of-fold probabilities
    queue = review_queue(train, target="label", pred_probs=issues.pred_probs, budget=0.10)
    answers = ask_a_person(queue)        # {row id: label, or None when unsure}
    fixed, report = apply_review(train, answers, target="label")    # relabel (default) or drop
    print(report.summary())

:func:`review_queue` orders the rows of a frame worst first by the ranking of
:mod:`tunesmith.data.label_issues` (per-class adjusted self-confidence of out-of-fold
probabilities), so that a review budget of a few percent of the rows is spent where errors
are. :func:`apply_review` applies the answers: ``relabel`` (the default) writes the
reviewer's label into every row they corrected and keeps the row; ``drop`` removes the
corrected rows instead. Rows are named by the frame's index throughout; every answer is
counted in a :class:`ReviewReport`, and nothing changes that the report does not name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from tunesmith.data.label_issues import RANK_BY, RankBy, issues_from_pred_probs
from tunesmith.data.schema import label_string, sorted_labels
from tunesmith.errors import ConfigError, DataError

__all__ = ["QUEUE_COLUMNS", "REVIEW_POLICIES", "ReviewReport", "apply_review", "review_queue"]

ReviewPolicy = Literal["relabel", "drop"]
REVIEW_POLICIES: tuple[str, ...] = ("relabel", "drop")
# Added to the data's own columns by review_queue; a frame that already has one is refused.
QUEUE_COLUMNS: tuple[str, ...] = ("review_rank", "label_quality", "p_label_wrong", "suggested_label", "flagged")
# Tolerance on "each row of pred_probs sums to one": float32 softmax outputs are off by ~1e-7.
_SUM_TOLERANCE = 1e-3


def _check_frame(data: Any, target: str) -> pd.DataFrame:
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if target not in data.columns:
        raise DataError(
            f"the target column {target!r} is not in the data (columns: {list(map(str, data.columns))[:10]})",
            column=target,
            hint="Pass target= the name of the label column",
        )
    if not data.index.is_unique:
        raise DataError(
            "the data's index repeats row ids, so an answer could not name one row",
            hint="Give each row its own id, e.g. data.reset_index(drop=True)",
        )
    missing = data[target].isna().to_numpy()
    if missing.any():
        first = data.index[int(np.argmax(missing))]
        raise DataError(
            f"{int(missing.sum())} row(s) have no label (first: row id {first!r}); only labeled rows can be reviewed",
            column=target,
            hint="Drop the unlabeled rows first, or label them",
        )
    return data


def _check_probs(pred_probs: Any, n_rows: int, n_classes: int) -> np.ndarray:
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (n_rows, n_classes):
        raise DataError(
            f"pred_probs has shape {probs.shape}, expected ({n_rows}, {n_classes}): one row per data row, "
            "one column per class",
            hint="Pass out-of-fold probabilities (e.g. find_label_issues(...).pred_probs) in the data's row order",
        )
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise DataError("pred_probs holds negative, infinite or missing values", hint="Pass probabilities, not logits")
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOLERANCE)
    if len(bad):
        raise DataError(
            f"{len(bad)} row(s) of pred_probs do not sum to 1 (first: position {int(bad[0])}, sum {sums[bad[0]]:.4f})",
            hint="Pass probabilities (softmax of the logits), one column per class",
        )
    return probs


def _budget_rows(budget: int | float | None, n_rows: int) -> int:
    if budget is None:
        return n_rows
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise ConfigError(f"must be a number of rows or a fraction, got {budget!r}", key="budget")
    if isinstance(budget, (int, np.integer)):
        if budget < 0:
            raise ConfigError(f"must be at least 0 rows, got {budget}", key="budget")
        return min(int(budget), n_rows)
    if not 0.0 < float(budget) <= 1.0:
        raise ConfigError(
            f"a fraction of the rows must be in (0, 1], got {budget!r}",
            key="budget",
            hint="Give a whole number for a number of rows",
        )
    return min(n_rows, round(float(budget) * n_rows))


def review_queue(
    data: pd.DataFrame,
    *,
    target: str,
    pred_probs: np.ndarray | Sequence[Sequence[float]],
    classes: Sequence[Any] | None = None,
    rank_by: RankBy = "adjusted",
    budget: int | float | None = None,
    exclude: Iterable[Any] | None = None,
) -> pd.DataFrame:
    """The rows of ``data`` ordered for review, likeliest label error first.

    Parameters
    ----------
    data:
        The labeled rows; its index names each row (answers to :func:`apply_review` use it).
    target:
        The label column.
    pred_probs:
        Out-of-fold class probabilities, one row per row of ``data`` (same order), one column
        per class of ``classes``; each row must come from a model that never saw it
        (``find_label_issues(...).pred_probs`` is such a matrix).
    classes:
        The classes in column order (default: the sorted distinct labels of ``target``).
    rank_by:
        ``"adjusted"`` (default): cleanlab's self-confidence after subtracting each class's
        average confidence, which stops a model that the noise pushed towards one class
        from filling the queue with the other class's correct rows; ``"self_confidence"``:
        the plain out-of-fold probability of the given label.
    budget:
        Keep only the first rows: a whole number of rows, or a fraction of ``data`` in (0, 1].
    exclude:
        Row ids to leave out, e.g. those a person has already reviewed. Reviewing in rounds
        pays: relabel the answers of one round, compute ``pred_probs`` again on the
        corrected labels (the fast mode takes seconds) and ask for the next round with the
        reviewed rows excluded; the models learn from the corrections, so each round finds
        more errors than the same rows taken at once from the first ranking.

    Returns
    -------
    pandas.DataFrame
        ``data``'s rows and columns, worst first (index kept), plus ``review_rank`` (1 =
        review first), ``label_quality`` (the rank score, 0 to 1, lowest first),
        ``p_label_wrong`` (1 - the out-of-fold probability of the given label),
        ``suggested_label`` (the most likely class out of fold) and ``flagged`` (counted as
        a likely error by cleanlab's ``prune_by_noise_rate``, the rows an automatic drop
        would remove).
    """
    _check_frame(data, target)
    clash = [c for c in QUEUE_COLUMNS if c in data.columns]
    if clash:
        raise DataError(
            f"the data already has column(s) {clash} that the review queue adds",
            column=clash[0],
            hint="Rename them first",
        )
    if rank_by not in RANK_BY:
        raise ConfigError(f"unknown ranking {rank_by!r}; use one of {', '.join(RANK_BY)}", key="rank_by")
    labels = [label_string(v) for v in data[target].tolist()]
    names = [label_string(c) for c in classes] if classes is not None else list(sorted_labels(labels))
    if len(names) < 2:
        raise DataError(
            f"a review ranks rows between classes, and there is only {len(names)}: {names}",
            column=target,
            hint="Pass classes= with every class of the task",
        )
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise DataError(
            f"labels {unknown[:5]} are not among the classes {names}",
            column=target,
            hint="Pass every class in classes=",
        )
    n_keep = _budget_rows(budget, len(data))
    probs = _check_probs(pred_probs, len(data), len(names))
    left_out = np.zeros(len(data), dtype=bool)
    if exclude is not None:
        excluded = list(exclude)
        strangers = [r for r in excluded if r not in data.index]
        if strangers:
            raise DataError(
                f"exclude names {len(strangers)} row id(s) that are not in the data (first: {strangers[:5]})",
                hint="Pass row ids of this frame's index",
            )
        left_out = data.index.isin(excluded)
    positions = np.arange(1, len(data) + 1)
    # Every row counts in the ranking (the per-class thresholds); excluded ones are only not shown.
    issues = issues_from_pred_probs(labels, probs, classes=names, rows=positions, rank_by=rank_by)
    table = issues.table[~left_out[issues.table["row"].to_numpy(dtype=np.int64) - 1]].head(n_keep)
    order = table["row"].to_numpy(dtype=np.int64) - 1
    given = np.asarray([names.index(s) for s in labels], dtype=np.int64)
    queue = data.iloc[order].copy()
    queue["review_rank"] = np.arange(1, len(order) + 1)
    queue["label_quality"] = table["label_quality"].to_numpy(dtype=np.float64)
    queue["p_label_wrong"] = 1.0 - probs[order, given[order]]
    queue["suggested_label"] = table["suggested_label"].to_numpy(dtype=object)
    queue["flagged"] = table["is_issue"].to_numpy(dtype=bool)
    return queue


@dataclass
class ReviewReport:
    """What :func:`apply_review` did with the answers.

    ``reviewed`` counts every row answered or skipped; it equals ``confirmed`` (the answer
    is the given label) + ``relabelled`` + ``dropped`` + ``skipped`` (no answer: unsure).
    """

    policy: str
    reviewed: int
    confirmed: int
    relabelled: int
    dropped: int
    skipped: int
    changes: dict[str, int] = field(default_factory=dict)
    rows_confirmed: list[Any] = field(default_factory=list)
    rows_relabelled: list[Any] = field(default_factory=list)
    rows_dropped: list[Any] = field(default_factory=list)
    rows_skipped: list[Any] = field(default_factory=list)

    @property
    def corrected(self) -> int:
        """Rows the reviewer said were wrong (relabelled or dropped)."""
        return self.relabelled + self.dropped

    def summary(self) -> str:
        """One line: the counts."""
        acted = f"{self.relabelled} relabelled" if self.policy == "relabel" else f"{self.dropped} dropped"
        changes = ", ".join(f"{k}: {v}" for k, v in sorted(self.changes.items()))
        return f"reviewed {self.reviewed} row(s): {self.confirmed} confirmed, {acted}, {self.skipped} skipped" + (
            f" ({changes})" if changes else ""
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe counts and the row ids of each outcome."""
        return {
            "policy": self.policy,
            "reviewed": self.reviewed,
            "confirmed": self.confirmed,
            "relabelled": self.relabelled,
            "dropped": self.dropped,
            "skipped": self.skipped,
            "changes": dict(self.changes),
            "rows_confirmed": list(self.rows_confirmed),
            "rows_relabelled": list(self.rows_relabelled),
            "rows_dropped": list(self.rows_dropped),
            "rows_skipped": list(self.rows_skipped),
        }


def _row_id(value: Any) -> Any:
    # numpy scalars in the report would not survive json.dumps.
    return value.item() if isinstance(value, np.generic) else value


def _is_skip(answer: Any) -> bool:
    if answer is None:
        return True
    try:
        return bool(pd.isna(answer))
    except (TypeError, ValueError):
        return False


def apply_review(
    data: pd.DataFrame,
    answers: Mapping[Any, Any] | pd.Series,
    *,
    target: str,
    policy: ReviewPolicy = "relabel",
    classes: Sequence[Any] | None = None,
) -> tuple[pd.DataFrame, ReviewReport]:
    """Apply a reviewer's answers to ``data``; returns the new frame and what changed.

    Parameters
    ----------
    data:
        The labeled rows, named by their index (as :func:`review_queue` returns them).
    answers:
        Row id -> the true label, or ``None`` (or NaN) when the reviewer was unsure: that row
        is skipped and keeps its label. A :class:`pandas.Series` indexed by row id works too.
    target:
        The label column.
    policy:
        ``"relabel"`` (default): a row whose answer differs from its label gets the answer
        and stays. ``"drop"``: such a row is removed. Confirmed and skipped rows never change.
    classes:
        The labels an answer may give (default: the distinct labels of ``target``); pass them
        to accept a class the data does not hold yet.

    Answers are matched to labels by their text (``1`` and ``"1"`` are one label); a new
    label is written as the column already writes it, so the column keeps its type.
    """
    _check_frame(data, target)
    if policy not in REVIEW_POLICIES:
        raise ConfigError(
            f"unknown review policy {policy!r}; use one of {', '.join(REVIEW_POLICIES)}",
            key="policy",
            hint="'relabel' keeps a corrected row with the reviewer's label, 'drop' removes it",
        )
    pairs: list[tuple[Any, Any]]
    if isinstance(answers, pd.Series):
        if not answers.index.is_unique:
            raise DataError("the answers name a row id twice", hint="Give one answer per row")
        pairs = list(answers.items())
    elif isinstance(answers, Mapping):
        pairs = list(answers.items())
    else:
        raise DataError(
            f"answers must map row ids to labels (a dict or a pandas Series), got {type(answers).__name__}",
            hint="Pass {row id: label or None}",
        )
    unknown_rows = [r for r, _ in pairs if r not in data.index]
    if unknown_rows:
        raise DataError(
            f"{len(unknown_rows)} answer(s) name row ids that are not in the data (first: {unknown_rows[:5]})",
            hint="Answer with the row ids of the review queue's index, on this same frame",
        )
    # Each label's own spelling in the column, so that relabelling keeps the column's type.
    spelling: dict[str, Any] = {}
    for value in data[target].tolist():
        spelling.setdefault(label_string(value), value)
    allowed = [label_string(c) for c in classes] if classes is not None else list(spelling)
    for c in classes if classes is not None else ():
        spelling.setdefault(label_string(c), c)
    bad = sorted({label_string(a) for _, a in pairs if not _is_skip(a) and label_string(a) not in allowed})
    if bad:
        raise DataError(
            f"answer(s) {bad[:5]} are not among the labels {allowed[:20]}",
            column=target,
            hint="Answer with an existing label, None when unsure, or pass classes= with the new label",
        )

    current = data[target]
    new_labels: dict[Any, Any] = {}
    drop_rows: list[Any] = []
    report = ReviewReport(policy=policy, reviewed=len(pairs), confirmed=0, relabelled=0, dropped=0, skipped=0)
    for row, answer in pairs:
        rid = _row_id(row)
        if _is_skip(answer):
            report.skipped += 1
            report.rows_skipped.append(rid)
            continue
        old, new = label_string(current.loc[row]), label_string(answer)
        if old == new:
            report.confirmed += 1
            report.rows_confirmed.append(rid)
            continue
        key = f"{old} -> {new}"
        report.changes[key] = report.changes.get(key, 0) + 1
        if policy == "drop":
            report.dropped += 1
            report.rows_dropped.append(rid)
            drop_rows.append(row)
        else:
            report.relabelled += 1
            report.rows_relabelled.append(rid)
            new_labels[row] = spelling[new]

    out = data.drop(index=drop_rows) if drop_rows else data.copy()
    if new_labels:
        out[target] = _relabelled(out[target], new_labels)
    return out, report


def _relabelled(column: pd.Series, new_labels: Mapping[Any, Any]) -> pd.Series:
    """``column`` with ``new_labels`` written in, in the column's own type where they fit it."""
    values = column.astype(object)
    for row, value in new_labels.items():
        values.loc[row] = value
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        # A category the column lacks would turn into a missing value, not the new label.
        categories = list(dtype.categories) + [
            v for v in dict.fromkeys(new_labels.values()) if v not in dtype.categories
        ]
        return pd.Series(pd.Categorical(values, categories=categories, ordered=dtype.ordered), index=values.index)
    try:
        typed = values.astype(dtype)
    except (TypeError, ValueError):
        return values
    # Ints stay ints; a conversion that would lose a label (to NaN) keeps the objects instead.
    same = typed.isna().sum() == values.isna().sum() and [label_string(v) for v in typed] == [
        label_string(v) for v in values
    ]
    return typed if same else values
