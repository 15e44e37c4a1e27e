"""A labeling session: one row at a time, every answer on disk at once, retraining between batches.

::

    from tunesmith.quality.labeling import LabelingSession

    session = LabelingSession(model, pool, target="label", answers="pool.labels.jsonl")
    row = session.current()             # the row to show: its fields, the model's guess
    session.answer(row.row, "spam")     # or session.skip(row.row), session.undo()
    session.progress()                  # labels so far, the learning curve, why it stopped
    session.export("labeled.csv")       # the pool with every label gathered

The session is what ``tunesmith label`` and its labeling page (:mod:`tunesmith.serve.labeling_page`)
drive; it is plain Python and thread-safe (one lock around its state).

Batches. Rows are shown in batches of ``batch_size``. When a batch is answered the session
fits a :func:`~sklearn.base.clone` of ``estimator`` on every label so far (in a background
thread unless ``background=False``) and chooses the next batch among the unlabeled rows with
:func:`tunesmith.data.query.query`. While it retrains, the rows after the batch in the previous
model's ranking (one more batch of them) are shown, so labeling never waits for a fit; once the
new model is in, its ranking replaces them (answers given meanwhile count toward the next fit,
not toward the new batch). A batch also ends when nothing is left to show (a round of review
rows only, the pool's last rows). Until two classes have labels no model can be fitted: rows
come in a seeded random order, a batch ends all the same, and ``progress()["cannot_fit"]``
says why.

Review share. ``review_share`` of each batch goes to rows that came with a label the model
doubts (cleanlab's ActiveLab idea: fixing a wrong label can be worth more than a new one),
lowest self-confidence first (see :mod:`tunesmith.quality.labeling_rank` for which
probabilities). A review answer replaces the label: relabel, never drop.

Learning curve and stopping. Each fit after a new answer event adds a point ``(labels, score)``:
the score on ``eval_set`` when given, else the accuracy of the same out-of-fold predictions (no
point while there are too few labels for them). A round of review answers is a point too, at the
same number of labels; a fit on no new answer (a session reopened) is not. When the score has
not improved by more than ``min_delta`` for ``patience`` points, the session stops offering new
rows and says why; :meth:`keep_going` lifts that.

The answers file (JSON Lines, see :mod:`tunesmith.quality.labeling_store`) gets every label,
skip and undo, ``fsync``-ed before the call returns, and the learning curve's points; opening a
session replays it, so closing the page, the server or the machine loses nothing acknowledged.
The fitting and ranking live in :mod:`tunesmith.quality.labeling_rank`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.io import write_table
from tunesmith.data.query import STRATEGIES
from tunesmith.data.schema import column_role, label_string, missing_mask
from tunesmith.errors import ConfigError, DataError
from tunesmith.quality.labeling_rank import Item, Ranked, Ranker, choose_classes
from tunesmith.quality.labeling_store import EVENTS, AnswersFile
from tunesmith.runs.artifacts import json_safe

logger = logging.getLogger(__name__)


class UnknownRowError(DataError):
    """A row id that is not in the pool."""


class NotCurrentError(DataError):
    """An answer or skip for another row than the one on show."""


@dataclass(frozen=True)
class LabelingRow:
    """A row to show: its id, why it is shown, what to display and the model's guess.

    ``kind`` is ``"query"`` (no label yet) or ``"review"`` (its label ``given`` looks wrong);
    ``fields`` holds the row's columns but the target (and the text column, shown as ``text``);
    ``image`` says the row has an image (:meth:`LabelingSession.image_path`); ``guess`` and
    ``confidence`` are ``None`` until a model is fitted.
    """

    row: Any
    kind: str
    fields: dict[str, Any]
    text: str | None
    image: bool
    guess: Any
    confidence: float | None
    given: Any

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        return json_safe(
            {
                "row": self.row, "kind": self.kind, "fields": self.fields, "text": self.text, "image": self.image,
                "guess": self.guess, "confidence": self.confidence, "given": self.given,
            }
        )  # fmt: skip


@dataclass
class _Event:
    event: str
    row: Any
    label: Any = None
    kind: str = "query"


def _json_id(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else str(value)


def _whole(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"must be a whole number of at least {low}, got {value!r}", key=name)
    return int(value)


class LabelingSession:
    """Label a pool row by row with a model that retrains between batches; see the module docstring.

    Args:
        estimator: an unfitted estimator of the tunesmith contract (each fit uses a clone):
            ``fit(rows, target=)``, ``predict_proba`` in ``classes_`` order, ``score``, and
            ``embed`` for the ``coreset`` and ``badge`` strategies.
        pool: the rows; those with a value in ``target`` count as labeled. Its index gives
            the row ids and must be unique.
        target: the label column.
        answers: the answers file (JSON Lines), created if missing, replayed if present.
        strategy: a query strategy of :mod:`tunesmith.data.query`.
        batch_size: rows answered between fits.
        review_share: the fraction of each batch given to labeled rows whose label looks wrong.
        eval_set: labeled rows that score the learning curve (else out-of-fold accuracy).
        classes: the label choices (default: the labels in ``pool``; at least two).
        seed: the seed of the random order, the folds and the query tie-breaks.
        patience, min_delta: stop when the score has not improved by more than ``min_delta``
            for ``patience`` fits.
        folds: folds of the out-of-fold probabilities.
        text_column: the column shown as text (default: the one text column, if exactly one).
        image_column: a column of image file paths, relative to ``root``.
        root: the folder images are served from; no path may leave it (default: the current one).
        max_candidates: at most this many unlabeled rows (a seeded sample) are scored per fit.
        auto_retrain: fit when a batch is answered (else only :meth:`retrain` fits).
        background: fit in a background thread (else the answer that ends a batch waits).
        initial_fit: fit on the labels there are when the session opens (in the foreground).

    Raises:
        ConfigError: a setting out of range, an unknown strategy, fewer than two classes.
        DataError: ``target`` or a named column missing, a repeated row id, a label outside
            ``classes``, a damaged answers file, or one another session holds.
    """

    def __init__(
        self,
        estimator: Any,
        pool: pd.DataFrame,
        *,
        target: str,
        answers: str | os.PathLike[str],
        strategy: str = "margin",
        batch_size: int = 25,
        review_share: float = 0.2,
        eval_set: pd.DataFrame | None = None,
        classes: Sequence[Any] | None = None,
        seed: int = 0,
        patience: int = 3,
        min_delta: float = 0.0,
        folds: int = 3,
        text_column: str | None = None,
        image_column: str | None = None,
        root: str | os.PathLike[str] | None = None,
        max_candidates: int | None = 10_000,
        auto_retrain: bool = True,
        background: bool = True,
        initial_fit: bool = True,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown query strategy {strategy!r}", key="strategy", hint=f"Use one of {STRATEGIES}")
        self.batch_size = _whole("batch_size", batch_size, 1)
        self.patience = _whole("patience", patience, 1)
        self.folds = _whole("folds", folds, 2)
        candidates = None if max_candidates is None else _whole("max_candidates", max_candidates, 1)
        if not 0.0 <= float(review_share) < 1.0:
            raise ConfigError(f"must be at least 0 and below 1, got {review_share!r}", key="review_share")
        if target not in pool.columns:
            raise DataError(f"the pool has no column {target!r}", column=target, hint="Pass the label column as target")
        for name, column in (("text_column", text_column), ("image_column", image_column)):
            if column is not None and column not in pool.columns:
                raise DataError(f"the pool has no column {column!r}", column=column, hint=f"Check {name}")
        if not pool.index.is_unique:
            raise DataError("the pool's row ids (its index) repeat", hint="Call pool.reset_index(drop=True) first")
        self._ids = {str(_json_id(i)): i for i in pool.index}
        if len(self._ids) != len(pool):
            raise DataError("two row ids of the pool read the same as text", hint="Give the pool a plain index")
        self.estimator, self.pool, self.target = estimator, pool, target
        self.strategy, self.review_share, self.eval_set = strategy, float(review_share), eval_set
        self.min_delta = float(min_delta)
        self.auto_retrain, self.background = auto_retrain, background
        self.image_column, self.root = image_column, Path(root if root is not None else ".").resolve()
        self.text_column = text_column if text_column is not None or image_column is not None else self._text_guess()
        self._shown_columns = [c for c in pool.columns if c not in (target, self.text_column)]
        labeled = pool[target][~missing_mask(pool[target])]
        self.classes = choose_classes(classes, labeled)
        self._ranker = Ranker(
            estimator, target, self.classes, strategy, self.batch_size, self.review_share, self.folds, seed,
            eval_set, candidates,
        )  # fmt: skip
        self._original: dict[Any, Any] = {}
        for row, value in labeled.items():
            self._original[row] = self.classes[self._ranker.index_of(value, f"the label of row {row!r}")]
        self._lock = threading.RLock()
        self._stack: list[_Event] = []
        self._answers: dict[Any, Any] = {}
        self._skipped: set[Any] = set()
        self._curve: list[tuple[int, float]] = []
        self._events = 0  # label, skip and undo events so far: what a fit came after
        self._last_point: int | None = None  # the events the last point's fit came after
        self._best: float | None = None
        self._waited = 0
        self._stop_reason: str | None = None
        self._model: Any = None
        self._rounds = 0
        self._retraining = False
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        self._shown: Any = None
        self.path = Path(answers)
        self._file = AnswersFile(self.path)
        try:
            self._replay(self._file.read())
        except BaseException:
            self._file.close()
            raise
        self._opened_with = len(self._stack)
        self._batch_start = len(self._stack)
        order = np.random.default_rng(seed).permutation(len(pool))
        self._queue = [Item(pool.index[i], "query") for i in order if pool.index[i] not in self._original]
        if initial_fit:
            try:
                self.retrain(background=False)
            except BaseException:
                self._file.close()
                raise

    # --- what to show ------------------------------------------------------------------------

    def current(self) -> LabelingRow | None:
        """The row to show now; ``None`` when there is none (pool used up, stopped, or waiting for a fit)."""
        with self._lock:
            item = self._current_item()
            self._shown = item.row if item is not None else None
            return self._present(item) if item is not None else None

    def next(self) -> LabelingRow | None:
        """The same as :meth:`current` (the row the next answer is for)."""
        return self.current()

    def batch(self, limit: int | None = None) -> list[LabelingRow]:
        """The rows still to answer in this batch, in order (at most ``limit``; default the batch's rest)."""
        with self._lock:
            left = limit if limit is not None else max(self.batch_size - self._batch_done(), 0)
            items = [i for i in self._queue if not self._done(i) and (i.pinned or self._stop_reason is None)]
            return [self._present(i) for i in items[:left]]

    def image_path(self, row: Any) -> Path:
        """The image file of ``row``, resolved under ``root``; refused if it leaves ``root`` or is missing."""
        rid = self._row_id(row)
        if self.image_column is None:
            raise DataError("the rows have no image column", hint="Pass image_column")
        value = self.pool.at[rid, self.image_column]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"row {rid!r} has no image path", column=self.image_column)
        path = (self.root / value.strip()).resolve()
        if not path.is_relative_to(self.root):
            raise DataError(f"the image of row {rid!r} is outside {self.root}", column=self.image_column)
        if not path.is_file():
            raise DataError(f"the image of row {rid!r} is not a file: {value}", column=self.image_column)
        return path

    # --- answers -----------------------------------------------------------------------------

    def answer(self, row: Any, label: Any, *, only_current: bool = True) -> bool:
        """Label ``row``; saved to the answers file before this returns. A review answer relabels.

        ``only_current`` (the default) refuses any row but the one :meth:`current` shows
        (:class:`NotCurrentError`); pass ``False`` to answer any row (a merged spreadsheet).
        Returns ``False`` (and writes nothing) when the row already had this answer.
        """
        with self._lock:
            rid = self._row_id(row)
            value = self.classes[self._ranker.index_of(label, "the answer")]
            kind = self._check_current(rid, only_current)
            if rid in self._answers and label_string(self._answers[rid]) == label_string(value):
                return False
            self._record(_Event("label", rid, value, kind))
            return True

    def skip(self, row: Any, *, only_current: bool = True) -> None:
        """Pass over ``row``: it is not offered again (unless the skip is undone)."""
        with self._lock:
            rid = self._row_id(row)
            kind = self._check_current(rid, only_current)
            self._record(_Event("skip", rid, None, kind))

    def undo(self) -> Any:
        """Take back the last label or skip (written as an undo event); that row is shown next.

        Returns the row id undone. Raises :class:`DataError` when there is nothing to undo.
        """
        with self._lock:
            if not self._stack:
                raise DataError("there is nothing to undo", hint="Undo takes back labels and skips of this file")
            last = self._stack[-1]
            self._file.append({"event": "undo", "row": _json_id(last.row), "time": _now()})
            self._pop()
            self._events += 1
            self._batch_start = min(self._batch_start, len(self._stack))
            item = next((i for i in self._queue if i.row == last.row), None)
            if item is not None:
                self._queue.remove(item)
            else:
                item = self._item_for(last.row, last.kind)
            item.pinned = True
            self._queue.insert(0, item)
            return _json_id(last.row)

    def keep_going(self) -> None:
        """Go on offering rows after the session stopped for lack of improvement."""
        with self._lock:
            if self._stop_reason is not None:
                self._file.append({"event": "keep_going", "time": _now()})
                self._stop_reason, self._waited = None, 0

    def labels(self) -> pd.Series:
        """Every label: the pool's, with answers added and review answers replacing them (pool order)."""
        with self._lock:
            merged = {**self._original, **self._answers}
        index = [r for r in self.pool.index if r in merged]
        return pd.Series([merged[r] for r in index], index=pd.Index(index, name=self.pool.index.name), name=self.target)

    def export(self, path: str | os.PathLike[str]) -> Path:
        """Write the pool with every label gathered in ``target`` (CSV, Parquet, JSONL by suffix).

        Rows keep their order; the index (the row ids) is not written.
        """
        out = self.pool.copy()
        out[self.target] = self.labels().reindex(out.index).astype(object)
        return write_table(out, path)

    # --- retraining --------------------------------------------------------------------------

    def retrain(self, background: bool = True) -> bool:
        """Fit a clone on every label so far and rank the next batch; ``False`` if it cannot start.

        It cannot while a fit runs or before two classes have labels. In the background the
        new model is swapped in under the lock when ready; a failure there is kept in
        ``progress()["last_error"]`` (and logged) while the previous model goes on serving. In
        the foreground a failure raises.
        """
        with self._lock:
            if self._retraining:
                return False
            labels = self.labels()
            if labels.map(label_string).nunique() < 2:
                self._batch_start = len(self._stack)  # the batch ends unfitted: rows go on in random order
                return False
            done, events = set(self._answers) | self._skipped, self._events
            self._retraining = True
        if not background:
            self._retrain_job(labels, done, events, raise_errors=True)
            return True
        self._thread = threading.Thread(
            target=self._retrain_job, args=(labels, done, events, False), name="tunesmith-labeling-fit", daemon=True
        )
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background fit to finish; ``False`` if it still runs after ``timeout`` seconds."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    @property
    def model(self) -> Any:
        """The model fitted last (``None`` before the first fit)."""
        return self._model

    def progress(self) -> dict[str, Any]:
        """Where labeling stands, JSON-safe.

        ``labeled`` (rows with a label), ``original`` (labels the pool came with),
        ``answered`` (rows labeled through the answers file), ``answered_since_open``,
        ``reviewed`` and ``relabeled`` (review answers, and those that changed the label),
        ``skipped``, ``unlabeled`` (rows without a label and not skipped: the pool left),
        ``batch`` (``done`` of ``size``), ``retraining``, ``fits``, ``curve``
        (``[[labels, score], ...]``), ``score_on`` (``eval_set`` or ``out-of-fold``),
        ``stop_reason`` (or ``None``), ``cannot_fit`` (why no model can be fitted yet, or
        ``None``), ``waiting`` (no row until the running fit ends), ``done``, ``last_error``,
        ``classes`` and ``strategy``.
        """
        with self._lock:
            labeled = len(set(self._original) | set(self._answers))
            seen = sorted({label_string(v) for v in {**self._original, **self._answers}.values()})
            reviewed = [r for r in self._answers if r in self._original]
            current = self._current_item()
            unlabeled = len(self.pool) - labeled - len(self._skipped - set(self._original))
            return json_safe(
                {
                    "labeled": labeled,
                    "original": len(self._original),
                    "answered": len(self._answers),
                    "answered_since_open": max(len(self._stack) - self._opened_with, 0),
                    "reviewed": len(reviewed),
                    "relabeled": sum(
                        label_string(self._answers[r]) != label_string(self._original[r]) for r in reviewed
                    ),
                    "skipped": len(self._skipped),
                    "unlabeled": unlabeled,
                    "batch": {"done": min(self._batch_done(), self.batch_size), "size": self.batch_size},
                    "retraining": self._retraining,
                    "fits": self._rounds,
                    "curve": [list(p) for p in self._curve],
                    "score_on": "eval_set" if self.eval_set is not None else "out-of-fold",
                    "stop_reason": self._stop_reason,
                    "cannot_fit": None if len(seen) > 1 else _why_unfit(seen),
                    "waiting": current is None and self._retraining and self._stop_reason is None,
                    "done": current is None and not self._retraining,
                    "last_error": self._last_error,
                    "classes": list(self.classes),
                    "strategy": self.strategy,
                }
            )

    def close(self) -> None:
        """Wait for a running fit, then release the answers file."""
        self.wait()
        with self._lock:
            self._file.close()

    def __enter__(self) -> LabelingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals: state --------------------------------------------------------------------

    def _text_guess(self) -> str | None:
        found = [c for c in self.pool.columns if c != self.target and column_role(self.pool[c], str(c)) == "text"]
        return str(found[0]) if len(found) == 1 else None

    def _row_id(self, row: Any) -> Any:
        rid = self._ids.get(str(_json_id(row)))
        if rid is None:
            raise UnknownRowError(f"row {row!r} is not in the pool", hint="Use the row ids of the pool (its index)")
        return rid

    def _done(self, item: Item) -> bool:
        return item.row in self._answers or item.row in self._skipped

    def _current_item(self) -> Item | None:
        for item in self._queue:
            if not self._done(item) and (item.pinned or self._stop_reason is None):
                return item
        return None

    def _batch_done(self) -> int:
        return max(len(self._stack) - self._batch_start, 0)

    def _check_current(self, rid: Any, only_current: bool) -> str:
        item = self._current_item()
        if only_current and (item is None or item.row != rid):
            shown = "no row" if item is None else f"row {_json_id(item.row)!r}"
            raise NotCurrentError(
                f"row {_json_id(rid)!r} is not the row on show ({shown})", hint="Fetch the current row and answer it"
            )
        if item is not None and item.row == rid:
            return item.kind
        return "review" if rid in self._original else "query"

    def _record(self, event: _Event) -> None:
        self._file.append(
            {"event": event.event, "row": _json_id(event.row)}
            | ({"label": event.label} if event.event == "label" else {})
            | {"kind": event.kind, "time": _now()}
        )
        self._push(event)
        self._events += 1
        for item in self._queue:
            if item.row == event.row:
                item.pinned = False
        if not self.auto_retrain or self._retraining or not self._batch_done():
            return
        # nothing left to show ends the batch early: a round of reviews only, or the pool's last rows
        if self._batch_done() >= self.batch_size or (self._stop_reason is None and self._current_item() is None):
            self.retrain(background=self.background)

    def _push(self, event: _Event) -> None:
        self._stack.append(event)
        self._settle(event.row)

    def _pop(self) -> _Event:
        event = self._stack.pop()
        self._settle(event.row)
        return event

    def _settle(self, rid: Any) -> None:
        """A row's state is its last remaining event: labeled, skipped, or as the pool had it."""
        last = next((e for e in reversed(self._stack) if e.row == rid), None)
        self._answers.pop(rid, None)
        self._skipped.discard(rid)
        if last is not None and last.event == "label":
            self._answers[rid] = last.label
        elif last is not None:
            self._skipped.add(rid)

    def _scored(self, score: float | None) -> None:
        if score is None:
            return
        if self._best is None or score > self._best + self.min_delta:
            self._best, self._waited = score, 0
            return
        self._waited += 1
        if self._waited >= self.patience:
            self._stop_reason = (
                f"the score has not improved by more than {self.min_delta:g} for {self.patience} fits "
                f"(best {self._best:.4f})"
            )

    def _replay(self, events: list[tuple[int, dict[str, Any]]]) -> None:
        for number, raw in events:
            try:
                kind = raw.get("event")
                if kind in ("label", "skip"):
                    rid = self._row_id(raw.get("row"))
                    label = (
                        self.classes[self._ranker.index_of(raw.get("label"), "the label")] if kind == "label" else None
                    )
                    self._push(_Event(kind, rid, label, "review" if raw.get("kind") == "review" else "query"))
                    self._events += 1
                elif kind == "undo":
                    if not self._stack or str(_json_id(self._stack[-1].row)) != str(raw.get("row")):
                        raise DataError("undoes an event that is not the last one")
                    self._pop()
                    self._events += 1
                elif kind == "score":
                    labels, score = int(raw["labels"]), raw.get("score")
                    # a point from before "answers" came after at most the events above its line
                    after = raw.get("answers")
                    self._last_point = int(after) if after is not None else self._events
                    self._curve.append((labels, float(score) if score is not None else float("nan")))
                    self._scored(float(score) if score is not None else None)
                elif kind == "keep_going":
                    self._stop_reason, self._waited = None, 0
                else:
                    raise DataError(f"unknown event {kind!r}; events are {', '.join(EVENTS)}")
            except (DataError, KeyError, TypeError, ValueError) as exc:
                message = exc.message if isinstance(exc, DataError) else f"a malformed event ({exc})"
                raise DataError(
                    f"line {number}: {message}", file=self.path, hint="Fix or delete that line (or use another file)"
                ) from None

    # --- internals: fitting ---------------------------------------------------------------------

    def _retrain_job(self, labels: pd.Series, done: set[Any], events: int, raise_errors: bool) -> None:
        try:
            ranked = self._ranker.rank(self.pool, labels, done, self._original.keys(), self._rounds + 1)
        except Exception as exc:
            with self._lock:
                self._retraining = False
                self._last_error = f"{type(exc).__name__}: {exc}"
            if raise_errors:
                raise
            logger.warning("tunesmith: retraining failed, the previous model goes on serving: %s", exc)
            return
        with self._lock:
            if self._file.closed:  # closed while this fit ran: nothing left to swap into
                self._retraining = False
                return
            self._swap(ranked, events)

    def _item_for(self, rid: Any, kind: str) -> Item:
        if self._model is None:
            return Item(rid, kind)
        return self._ranker.guessed(rid, kind, self._ranker.proba(self._model, self.pool.loc[[rid]])[0])

    def _swap(self, ranked: Ranked, events: int) -> None:
        self._model, self._rounds = ranked.model, self._rounds + 1
        self._retraining, self._last_error = False, None
        # what is on show and rows brought back by undo stay first: an answer on its way must still fit
        kept = [i for i in self._queue if not self._done(i) and (i.pinned or i.row == self._shown)]
        rows = {i.row for i in kept}
        self._queue = kept + [i for i in ranked.queue if i.row not in rows and not self._done(i)]
        self._batch_start = len(self._stack)
        # a point per fit after new answers (relabels too), not per number of labels
        if ranked.score is not None and self._last_point != events:
            point = {"event": "score", "labels": ranked.labels, "answers": events, "score": ranked.score}
            self._file.append(point | {"time": _now()})
            self._curve.append((ranked.labels, ranked.score))
            self._last_point = events
            self._scored(ranked.score)

    def _present(self, item: Item) -> LabelingRow:
        values = self.pool.loc[item.row]
        text = values[self.text_column] if self.text_column is not None else None
        image = self.image_column is not None and isinstance(values[self.image_column], str)
        return LabelingRow(
            row=_json_id(item.row),
            kind=item.kind,
            fields={str(c): _cell(values[c]) for c in self._shown_columns},
            text=None if text is None or _cell(text) is None else str(text),
            image=image,
            guess=item.guess,
            confidence=item.confidence,
            given=self._original.get(item.row) if item.kind == "review" else None,
        )


def _cell(value: Any) -> Any:
    with contextlib.suppress(TypeError, ValueError):
        if pd.isna(value):
            return None
    return json_safe(value)


def _now() -> float:
    return round(time.time(), 3)


def _why_unfit(seen: list[str]) -> str:
    have = f"only class {seen[0]!r} has labels so far" if seen else "no row has a label yet"
    return f"{have}: rows come in a seeded random order until two classes have labels"
