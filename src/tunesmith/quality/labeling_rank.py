"""How a labeling session chooses its next batch: fit a clone, score it, pick review and query rows.

:func:`choose_classes` settles the label choices (one spelling each) that the ranking works in.

:class:`Ranker` holds the settings; :meth:`Ranker.rank` runs outside the session's lock (it
is what the background thread does) on a snapshot of the labels, so it reads only the pool and
what it is given.

- The fit: a :func:`~sklearn.base.clone` of the estimator on every labeled row (``eval_set``
  passed to ``fit`` when there is one, as :func:`tunesmith.quality.active.active_learning` does).
- Out-of-fold probabilities: a stratified ``folds``-fold cross-validation over the labeled
  rows, when every class has at least ``folds`` labels. They give the learning curve's score
  without an ``eval_set`` (their accuracy) and rank the review rows.
- Review rows (``review_share`` of the batch): rows that came with a label and were not answered
  or skipped in the session, whose label the model disagrees with, lowest self-confidence
  first (the probability of the given label; out-of-fold when there are enough labels, else
  in-sample, which is optimistic: a model that memorised a wrong label does not flag it).
- Query rows: the rest of the batch and one more batch in reserve, chosen among the unlabeled
  rows (at most ``max_candidates``, a seeded sample) by :func:`tunesmith.data.query.query`.
  Review rows are spread evenly through the batch; the reserve follows it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from tunesmith.data.query import NEEDS_EMBEDDINGS, query
from tunesmith.data.schema import label_string
from tunesmith.errors import ConfigError, DataError
from tunesmith.estimators.base import NotSupportedError


def choose_classes(classes: Sequence[Any] | None, labeled: pd.Series) -> list[Any]:
    """The label choices: ``classes`` (default: the labels in ``labeled``, sorted), one spelling each.

    Raises:
        ConfigError: a label given twice, or fewer than two choices.
    """
    if classes is None:
        seen: dict[str, Any] = {}
        for value in labeled:
            seen.setdefault(label_string(value), _canonical(value))
        chosen = [seen[k] for k in sorted(seen)]
    else:
        chosen = [_canonical(c) for c in classes]
        if len({label_string(c) for c in chosen}) != len(chosen):
            raise ConfigError(f"repeats a label: {chosen}", key="classes")
    if len(chosen) < 2:
        raise ConfigError(
            f"labeling needs at least two label choices, found {chosen}",
            key="classes",
            hint="Pass classes=[...] (--classes a,b,c) with every label a row may get",
        )
    return chosen


def _canonical(value: Any) -> Any:
    """One spelling per label: numpy scalars as Python values, whole floats (a column with gaps) as ints."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value.strip() if isinstance(value, str) else value


@dataclass
class Item:
    """A row in the session's queue: why it is there and the model's guess when it was ranked."""

    row: Any
    kind: str
    guess: Any = None
    confidence: float | None = None
    pinned: bool = False


@dataclass
class Ranked:
    """What a fit produced: the model, the new queue, its score and the labels it saw."""

    model: Any
    queue: list[Item]
    score: float | None
    labels: int


@dataclass
class Ranker:
    """The fitting and ranking settings of a session (see the module docstring)."""

    estimator: Any
    target: str
    classes: list[Any]
    strategy: str
    batch_size: int
    review_share: float
    folds: int
    seed: int
    eval_set: pd.DataFrame | None = None
    max_candidates: int | None = None
    _keys: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._keys = {label_string(c): i for i, c in enumerate(self.classes)}

    def index_of(self, value: Any, what: str) -> int:
        """The position of the class ``value`` names (compared as label strings), else a DataError."""
        index = self._keys.get(label_string(value)) if value is not None else None
        if index is None:
            raise DataError(
                f"{what} {value!r} is not one of the classes {self.classes}",
                hint="Answer with one of the classes, or add it to classes",
            )
        return index

    def fit(self, rows: pd.DataFrame) -> Any:
        """A clone of the estimator fitted on ``rows`` (their ``target`` column holds the labels)."""
        extra = {"eval_set": self.eval_set} if self.eval_set is not None else {}
        return clone(self.estimator).fit(rows, target=self.target, **extra)

    def proba(self, model: Any, rows: pd.DataFrame) -> np.ndarray:
        """One column per class of the session (zeros for a class the model never saw)."""
        p = np.asarray(model.predict_proba(rows.drop(columns=[self.target], errors="ignore")), dtype=np.float64)
        seen = getattr(model, "classes_", None)
        if seen is None or len(seen) != p.shape[1]:
            raise ConfigError("the estimator's predict_proba columns do not match its classes_", key="estimator")
        full = np.zeros((len(rows), len(self.classes)))
        full[:, [self.index_of(c, "the model's class") for c in seen]] = p
        return full

    def out_of_fold(self, rows: pd.DataFrame, y: np.ndarray) -> np.ndarray | None:
        """Out-of-fold probabilities of ``rows``; ``None`` when a class has fewer labels than folds."""
        counts = np.bincount(y)
        if counts[counts > 0].min() < self.folds:
            return None
        oof = np.zeros((len(rows), len(self.classes)))
        splits = StratifiedKFold(self.folds, shuffle=True, random_state=self.seed).split(np.zeros(len(y)), y)
        for train, test in splits:
            oof[test] = self.proba(self.fit(rows.iloc[train]), rows.iloc[test])
        return oof

    def guessed(self, row: Any, kind: str, proba: np.ndarray) -> Item:
        """An item with the most probable class as its guess."""
        best = int(np.argmax(proba))
        return Item(row, kind, self.classes[best], float(proba[best]))

    def rank(
        self, pool: pd.DataFrame, labels: pd.Series, done: Collection[Any], original: Collection[Any], number: int
    ) -> Ranked:
        """Fit on ``labels``, score, and queue the next batch and its reserve.

        ``done``: rows answered or skipped in the session (never queued); ``original``: rows
        that came with a label (review candidates); ``number``: the fit's number (its seed).
        """
        rows = pool.loc[labels.index].copy()
        rows[self.target] = labels.astype(object)
        y = np.asarray([self.index_of(v, "the label") for v in labels])
        model = self.fit(rows)
        oof = self.out_of_fold(rows, y) if self.review_share > 0 or self.eval_set is None else None
        if self.eval_set is not None:
            score: float | None = float(model.score(self.eval_set, target=self.target))
        else:
            score = float((oof.argmax(axis=1) == y).mean()) if oof is not None else None
        rng = np.random.default_rng(self.seed + number)
        reviews = self._reviews(model, rows, y, oof, done, original, rng)
        candidates = pool.index[~pool.index.isin(labels.index) & ~pool.index.isin(list(done))]
        if self.max_candidates is not None and len(candidates) > self.max_candidates:
            candidates = candidates[np.sort(rng.choice(len(candidates), self.max_candidates, replace=False))]
        n_query = self.batch_size - len(reviews)
        picked: list[Item] = []
        take = min(n_query + self.batch_size, len(candidates))
        if take:
            frame = pool.loc[candidates]
            proba = self.proba(model, frame)
            embeddings, known = self._embeddings(model, frame, rows)
            order = query(
                self.strategy, proba, take, embeddings=embeddings, labeled_embeddings=known, seed=self.seed + number
            )
            picked = [self.guessed(candidates[i], "query", proba[i]) for i in order]
        batch, reserve = picked[:n_query], picked[n_query:]
        total = len(batch) + len(reviews)
        # review rows spread through the batch, not bunched at one end
        slots = {int((i + 0.5) * total / len(reviews)) for i in range(len(reviews))} if reviews else set()
        mixed = [reviews.pop(0) if (at in slots and reviews) or not batch else batch.pop(0) for at in range(total)]
        return Ranked(model, mixed + reserve, score, len(labels))

    def _reviews(
        self,
        model: Any,
        rows: pd.DataFrame,
        y: np.ndarray,
        oof: np.ndarray | None,
        done: Collection[Any],
        original: Collection[Any],
        rng: np.random.Generator,
    ) -> list[Item]:
        wanted = min(int(self.batch_size * self.review_share + 0.5), self.batch_size - 1)
        where = np.asarray([r in original and r not in done for r in rows.index], dtype=bool)
        if wanted < 1 or not where.any():
            return []
        proba = oof[where] if oof is not None else self.proba(model, rows[where])
        given = y[where]
        confidence = proba[np.arange(len(given)), given]
        doubted = proba.argmax(axis=1) != given
        order = np.lexsort(np.stack([rng.random(len(given)), confidence]))  # lowest first, ties at random
        ids = rows.index[where]
        return [self.guessed(ids[i], "review", proba[i]) for i in order if doubted[i]][:wanted]

    def _embeddings(
        self, model: Any, frame: pd.DataFrame, labeled: pd.DataFrame
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.strategy not in NEEDS_EMBEDDINGS:
            return None, None
        try:
            pool = model.embed(frame.drop(columns=[self.target]))
            known = model.embed(labeled.drop(columns=[self.target])) if self.strategy == "coreset" else None
        except (NotSupportedError, AttributeError) as exc:
            raise ConfigError(
                f"strategy {self.strategy!r} needs the model's embeddings: {exc}",
                key="strategy",
                hint="Use margin, entropy or least_confidence with this kind",
            ) from None
        return np.asarray(pool), None if known is None else np.asarray(known)
