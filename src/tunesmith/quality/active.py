"""Active learning over any estimator: fit on the labels so far, pick the next batch, ask, repeat.

::

    from tunesmith.quality.active import active_learning

    result = active_learning(
        FineTuner(strategy="head_only", epochs=20),   # cheap to refit: the features are cached
        pool,                                         # a DataFrame; rows with a label count as labeled
        target="label",
        oracle=ask_a_person,                          # rows -> their labels (None: skipped)
        eval_set=valid,                               # labeled rows that score each round
        strategy="margin",
        batch_size=25,
        rounds=20,
    )
    result.curve()          # [(labels, validation score), ...]
    result.estimator        # fitted on every label gathered

Each round fits a clone of the estimator on the labeled rows (through the estimator contract, so
every kind works), scores it on ``eval_set``, and chooses the next batch among the unlabeled
rows with :func:`tunesmith.data.query.query` from the model's ``predict_proba`` (and ``embed``
for ``coreset`` and ``badge``). The loop stops after ``rounds`` rounds, when the pool is used
up, or when the validation score has not improved by ``min_delta`` for ``patience`` rounds; a
final fit then takes in the last batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from tunesmith.data.query import NEEDS_EMBEDDINGS, STRATEGIES, query
from tunesmith.errors import ConfigError, DataError
from tunesmith.estimators.base import NotSupportedError

Oracle = Callable[[pd.DataFrame], Sequence[Any]]


@dataclass
class ActiveRound:
    """One round: the model fitted on ``labeled`` labels, its score, and the batch it chose."""

    round: int
    labeled: int
    score: float | None
    picked: list[Any]
    answered: int
    skipped: int
    fit_seconds: float
    query_seconds: float


@dataclass
class ActiveLearningResult:
    """What :func:`active_learning` did: the rounds, the labels gathered and the final model."""

    rounds: list[ActiveRound]
    labels: pd.Series
    estimator: Any
    final_score: float | None
    stop_reason: str
    strategy: str
    skipped: list[Any] = field(default_factory=list)

    def curve(self) -> list[tuple[int, float | None]]:
        """``(labels, validation score)`` per round, then the final fit's."""
        points = [(r.labeled, r.score) for r in self.rounds]
        return [*points, (len(self.labels), self.final_score)]


def active_learning(
    estimator: Any,
    data: pd.DataFrame,
    *,
    target: str,
    oracle: Oracle,
    eval_set: pd.DataFrame | None = None,
    strategy: str = "margin",
    batch_size: int = 25,
    rounds: int = 20,
    initial: int = 25,
    patience: int = 3,
    min_delta: float = 0.0,
    seed: int = 0,
) -> ActiveLearningResult:
    """Run active learning on the pool ``data``; see the module docstring.

    Args:
        estimator: an unfitted estimator of any kind (cloned each round, never fitted itself).
        data: the pool; its ``target`` column holds the labels known so far (missing elsewhere).
        target: the label column.
        oracle: called with the rows of a batch (a DataFrame, the pool's own index), returns one
            label per row; ``None`` means the row was skipped (it is not offered again).
        eval_set: labeled rows that score each round (``estimator.score``) and decide when to
            stop; without it the loop runs ``rounds`` rounds.
        strategy: a query strategy of :mod:`tunesmith.data.query`.
        batch_size: rows asked per round.
        rounds: the most rounds (fits) before the final fit.
        initial: with fewer than two labels in ``data``, this many rows are drawn at random
            and asked first.
        patience, min_delta: stop when the score has not improved by more than ``min_delta``
            for ``patience`` rounds.
        seed: the seed of random draws.

    Raises:
        ConfigError: an unknown strategy or a setting out of range, or a strategy that needs
            embeddings with a kind that has none.
        DataError: ``target`` missing from ``data``, or an oracle answer of the wrong length.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown query strategy {strategy!r}", key="strategy", hint=f"Use one of {STRATEGIES}")
    for name, value, low in (("batch_size", batch_size, 1), ("rounds", rounds, 1), ("patience", patience, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"must be a whole number of at least {low}, got {value!r}", key=name)
    if target not in data.columns:
        raise DataError(f"the pool has no column {target!r}", column=target, hint="Pass the label column as target")
    if not data.index.is_unique:
        raise DataError("the pool's index has repeated values", hint="Call data.reset_index(drop=True) first")
    rng = np.random.default_rng(seed)
    labels = data[target].dropna()
    skipped: list[Any] = []
    if len(labels) < 2:
        start = data.index[rng.permutation(len(data))[: min(initial, len(data))]]
        labels, _ = _ask(oracle, data.loc[start], target, labels, skipped)
    history: list[ActiveRound] = []
    best: float | None = None
    waited = 0
    stop_reason = f"ran {rounds} rounds"
    fitted: Any = None
    for number in range(1, rounds + 1):
        started = time.perf_counter()
        fitted = _fit(estimator, data, labels, target, eval_set)
        fit_seconds = time.perf_counter() - started
        score = float(fitted.score(eval_set, target=target)) if eval_set is not None else None
        unlabeled = data.index.difference(labels.index).difference(pd.Index(skipped))
        if not len(unlabeled):
            history.append(ActiveRound(number, len(labels), score, [], 0, 0, fit_seconds, 0.0))
            stop_reason = "the pool is labeled"
            break
        started = time.perf_counter()
        picked = _choose(fitted, strategy, data.loc[unlabeled], data.loc[labels.index], batch_size, seed + number)
        query_seconds = time.perf_counter() - started
        before = len(skipped)
        labels, answered = _ask(oracle, data.loc[picked], target, labels, skipped)
        history.append(
            ActiveRound(
                number, len(labels) - answered, score, list(picked), answered, len(skipped) - before,
                fit_seconds, query_seconds,
            )
        )  # fmt: skip
        if score is not None:
            if best is None or score > best + min_delta:
                best, waited = score, 0
            else:
                waited += 1
                if waited >= patience:
                    stop_reason = f"the validation score did not improve for {patience} rounds"
                    break
    final = _fit(estimator, data, labels, target, eval_set)
    final_score = float(final.score(eval_set, target=target)) if eval_set is not None else None
    return ActiveLearningResult(history, labels, final, final_score, stop_reason, strategy, skipped)


def _fit(estimator: Any, data: pd.DataFrame, labels: pd.Series, target: str, eval_set: Any) -> Any:
    rows = data.loc[labels.index].copy()
    rows[target] = labels
    model = clone(estimator)
    return model.fit(rows, target=target, **({"eval_set": eval_set} if eval_set is not None else {}))


def _choose(
    fitted: Any, strategy: str, pool: pd.DataFrame, labeled: pd.DataFrame, batch_size: int, seed: int
) -> pd.Index:
    proba = fitted.predict_proba(pool)
    embeddings = labeled_embeddings = None
    if strategy in NEEDS_EMBEDDINGS:
        try:
            embeddings = fitted.embed(pool)
            labeled_embeddings = fitted.embed(labeled) if strategy == "coreset" else None
        except NotSupportedError as exc:
            raise ConfigError(
                f"strategy {strategy!r} needs the model's embeddings: {exc}",
                key="strategy",
                hint="Use margin, entropy or least_confidence with this kind",
            ) from None
    picked = query(
        strategy,
        proba,
        min(batch_size, len(pool)),
        embeddings=embeddings,
        labeled_embeddings=labeled_embeddings,
        seed=seed,
    )
    return pool.index[picked]


def _ask(
    oracle: Oracle, rows: pd.DataFrame, target: str, labels: pd.Series, skipped: list[Any]
) -> tuple[pd.Series, int]:
    answers = list(oracle(rows.drop(columns=[target])))
    if len(answers) != len(rows):
        raise DataError(
            f"the oracle answered {len(answers)} labels for {len(rows)} rows",
            hint="Return one label per row, None for a row to skip",
        )
    given = {i: a for i, a in zip(rows.index, answers, strict=True) if a is not None and not _missing(a)}
    skipped.extend(i for i in rows.index if i not in given)
    if not given:
        return labels, 0
    return pd.concat([labels, pd.Series(given, name=labels.name)]), len(given)


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
