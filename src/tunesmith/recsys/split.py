"""Splitting an interaction log for top-N evaluation: leave-last-out, a global time cut, or a
per-user random ratio.

Every split gives rows to fit on (``train``) and two :class:`HoldOut` sets (``valid`` and
``test``). A hold-out lists, per evaluated user, the items to find (``targets``) and what a
model may see of that user when it ranks (``history``: excluded from the ranking and usable
for fold-in). Targets are positive rows (a boolean mask, all rows by default). The same rules
apply to every strategy:

* a target row is never a ``train`` row, and a user's targets never hold an item already in
  that user's history (re-consumption is not "finding" an item; such targets are dropped and
  counted in ``notes``);
* a user is evaluated only with at least one target and one history item (the others are
  counted in ``notes``);
* ``valid_train`` holds the rows a model scored on ``valid`` may be fitted on: it contains no
  validation target, so early stopping or tuning on ``valid`` is not scored on training rows.
  Refit on ``train`` before scoring ``test``.

Splits are deterministic (``random_ratio`` for a given ``seed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import scipy.sparse as sp

from tunesmith.errors import ConfigError, DataError
from tunesmith.recsys.data import Interactions

__all__ = ["HoldOut", "RecSplit", "leave_last_out", "random_ratio", "time_cut"]


@dataclass
class HoldOut:
    """Users to evaluate, the items to find for each, and what a model may see of them.

    ``users`` are user codes (int32, ascending); ``targets[i]`` the item codes (int32) to find
    for ``users[i]``; ``history`` an ``n_users x n_items`` binary matrix of what each user had
    interacted with at evaluation time (rows of users not evaluated may be non-empty too);
    ``sequences[i]`` the history of ``users[i]`` as item codes in time order (repeats kept).
    """

    users: np.ndarray
    targets: list[np.ndarray]
    history: sp.csr_matrix
    sequences: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        """Number of item codes (columns of ``history``)."""
        return int(self.history.shape[1])

    def history_sizes(self) -> np.ndarray:
        """Distinct history items of each evaluated user (aligned with ``users``)."""
        return np.diff(self.history.indptr)[self.users]

    def exclude(self, positions: np.ndarray) -> sp.csr_matrix:
        """History rows of the evaluated users at ``positions`` (indices into ``users``)."""
        return self.history[self.users[positions]]


@dataclass
class RecSplit:
    """A split of an interaction log: rows to fit on and two hold-out sets.

    ``strategy`` is ``"leave_last_out"``, ``"time_cut"`` or ``"random_ratio"``; ``notes``
    holds one sentence per noteworthy count (users not evaluated and why, targets dropped).
    ``valid_train`` is the part of ``train`` a model may be fitted on while it is scored on
    ``valid`` (the same rows as ``train`` for leave-last-out).
    """

    train: Interactions
    valid: HoldOut
    test: HoldOut
    strategy: str
    notes: list[str] = field(default_factory=list)
    valid_train: Interactions | None = None

    def sizes(self) -> dict[str, int]:
        """Rows to fit on and users evaluated: ``train_rows``, ``valid_train_rows``, ``valid_users``, ``test_users``."""
        vt = self.valid_train if self.valid_train is not None else self.train
        return {
            "train_rows": len(self.train.frame),
            "valid_train_rows": len(vt.frame),
            "valid_users": len(self.valid),
            "test_users": len(self.test),
        }


def _positive(inter: Interactions, positive: np.ndarray | None) -> np.ndarray:
    n = len(inter.frame)
    if positive is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(positive)
    if mask.dtype != np.bool_ or mask.shape != (n,):
        raise ConfigError(
            f"positive must be a boolean array with one value per row ({n}), got {mask.dtype} of shape {mask.shape}",
            key="positive",
            hint="Build it with inter.positive_mask(min_rating=4), for instance",
        )
    return mask


def _binary(user: np.ndarray, item: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(user)), (user, item)), shape=shape, dtype=np.float64)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _split_by_user(values: np.ndarray, user: np.ndarray, n_users: int) -> list[np.ndarray]:
    """``values`` (ordered by user) cut into one array per user code."""
    counts = np.bincount(user, minlength=n_users)
    return np.split(values, np.cumsum(counts)[:-1])


def _holdout(inter: Interactions, history: np.ndarray, target: np.ndarray, name: str, notes: list[str]) -> HoldOut:
    """A hold-out from row masks over ``inter.frame``: ``history`` rows and ``target`` rows."""
    user = inter.frame["user"].to_numpy(dtype=np.int32)
    item = inter.frame["item"].to_numpy(dtype=np.int32)
    shape = (inter.n_users, inter.n_items)
    hist = _binary(user[history], item[history], shape)
    seqs = _split_by_user(item[history], user[history], inter.n_users)
    has_history = np.diff(hist.indptr) > 0

    tu, ti = user[target], item[target]
    # A user's repeated target item counts once, at its first (earliest) occurrence.
    _, first = np.unique(tu.astype(np.int64) * inter.n_items + ti, return_index=True)
    first.sort()
    tu, ti = tu[first], ti[first]
    with_targets = np.zeros(inter.n_users, dtype=bool)
    with_targets[tu] = True
    seen = np.asarray(hist[tu, ti]).ravel() > 0 if len(tu) else np.zeros(0, dtype=bool)
    repeat_only = with_targets.copy()
    repeat_only[tu[~seen]] = False
    keep = ~seen & has_history[tu]
    if seen.any():
        notes.append(
            f"{name}: {int(seen.sum())} target items already in the user's history were dropped "
            f"(re-consumption); {int(repeat_only.sum())} users had only such targets"
        )
    no_history = with_targets & ~has_history & ~repeat_only
    if no_history.any():
        notes.append(f"{name}: {int(no_history.sum())} users with targets but no history are not evaluated")
    tu, ti = tu[keep], ti[keep]
    users = np.unique(tu).astype(np.int32)
    per_user = _split_by_user(ti, tu, inter.n_users)
    notes.append(f"{name}: {len(users)} users evaluated, {len(ti)} targets")
    return HoldOut(
        users=users,
        targets=[per_user[u] for u in users],
        history=hist,
        sequences=[seqs[u] for u in users],
    )


def _nonempty(inter: Interactions, mask: np.ndarray, what: str, hint: str) -> None:
    if not mask.any():
        raise DataError(f"the split leaves no {what} ({len(inter.frame)} rows in the log)", hint=hint)


def leave_last_out(inter: Interactions, *, positive: np.ndarray | None = None) -> RecSplit:
    """Hold out each user's last positive interaction for test and the one before for validation.

    Within a user, rows are in ``(time, row)`` order, so ties in time go by file order.
    Per user with at least 2 positives (``positive``, a mask over ``inter.frame``; all rows
    by default):

    * test target: the last positive row; validation target: the second-last positive row;
    * ``train`` (and ``valid_train``): the user's rows strictly before the validation target,
      of any rating; rows after it (up to and beyond the test target) are never fitted on;
    * validation history: those training rows; test history: every row before the test
      target (so it holds the validation target and anything between the two).

    Users with fewer than 2 positives, or with no row before their validation target, are not
    evaluated; all their rows go to ``train``. Both are counted in ``notes``.
    """
    pos = _positive(inter, positive)
    n = len(inter.frame)
    user = inter.frame["user"].to_numpy()
    counts = np.bincount(user, minlength=inter.n_users)
    start = np.cumsum(counts) - counts
    pos_rows = np.flatnonzero(pos)
    n_pos = np.bincount(user[pos_rows], minlength=inter.n_users)
    end = np.cumsum(n_pos) - 1
    two = n_pos >= 2
    last = np.full(inter.n_users, n, dtype=np.int64)
    second = np.full(inter.n_users, n, dtype=np.int64)
    last[two] = pos_rows[end[two]]
    second[two] = pos_rows[end[two] - 1]
    evaluated = two & (second > start)

    notes: list[str] = []
    few = (counts > 0) & ~two
    if few.any():
        notes.append(
            f"{int(few.sum())} users with fewer than 2 positive interactions are not evaluated; "
            f"their {int(counts[few].sum())} rows are all in train"
        )
    bare = two & ~evaluated
    if bare.any():
        notes.append(
            f"{int(bare.sum())} users with no interaction before their validation target are not evaluated; "
            "their rows are all in train"
        )
    position = np.arange(n)
    # Users not evaluated get cut points past the end of the log, so all their rows are training rows.
    second[~evaluated] = n
    last[~evaluated] = n
    train_mask = position < second[user]
    before_test = position < last[user]
    valid_target = position == second[user]
    test_target = position == last[user]
    _nonempty(inter, evaluated, "user to evaluate", "Each user needs at least 2 positive interactions")

    valid = _holdout(inter, train_mask, valid_target, "valid", notes)
    test = _holdout(inter, before_test, test_target, "test", notes)
    train = inter.take(train_mask)
    return RecSplit(train=train, valid=valid, test=test, strategy="leave_last_out", notes=notes, valid_train=train)


def _check_fraction(value: float, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(f"{key} must be between 0 and 1 (exclusive), got {value!r}", key=key)


def _when(t: float) -> str:
    """Epoch seconds as written in notes: the number, and the UTC date-time when it is a plausible one."""
    try:
        stamp = datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{t:.6g}"
    return f"{t:.6f}".rstrip("0").rstrip(".") + f" ({stamp})"


def time_cut(
    inter: Interactions,
    *,
    at: float | None = None,
    quantile: float = 0.8,
    positive: np.ndarray | None = None,
) -> RecSplit:
    """Split at one point in time for everyone: fit on the past, find what users did next.

    The test cut is ``at`` (epoch seconds) or ``np.quantile(times, quantile)`` over all rows
    (numpy's default linear interpolation). ``train`` = rows with ``time < cut``. Test targets:
    each user's distinct positive items at or after the cut; test history: the user's rows
    before the cut; only users with such rows are evaluated.

    Validation repeats this inside ``train``: a second cut at
    ``np.quantile(train times, quantile)``; ``valid_train`` = rows before it; validation
    targets = positive rows from the second cut up to (not including) the test cut; validation
    history = the user's rows before the second cut.
    """
    _check_fraction(quantile, "quantile")
    if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at)):
        raise ConfigError(f"at must be a time in epoch seconds, got {at!r}", key="at")
    pos = _positive(inter, positive)
    time = inter.frame["time"].to_numpy()
    cut = float(at) if at is not None else float(np.quantile(time, quantile))
    before = time < cut
    hint = "Move the cut (at=..., quantile=...) so that rows fall on both sides"
    _nonempty(inter, before, f"rows before the cut at {cut:g}", hint)
    _nonempty(inter, ~before, f"rows at or after the cut at {cut:g}", hint)
    valid_cut = float(np.quantile(time[before], quantile))
    before_valid = time < valid_cut
    _nonempty(inter, before_valid, f"rows before the validation cut at {valid_cut:g}", hint)

    notes = [f"test cut at {_when(cut)}, validation cut at {_when(valid_cut)}"]
    valid = _holdout(inter, before_valid, pos & before & ~before_valid, "valid", notes)
    test = _holdout(inter, before, pos & ~before, "test", notes)
    return RecSplit(
        train=inter.take(before),
        valid=valid,
        test=test,
        strategy="time_cut",
        notes=notes,
        valid_train=inter.take(before_valid),
    )


def _ratio_holdout(user: np.ndarray, rows: np.ndarray, test_size: float, rng: np.random.Generator) -> np.ndarray:
    """Mask over ``rows`` (indices, grouped by user) of those held out: per user ``n - round((1 - test_size) * n)``
    random rows, never all of them."""
    u = user[rows]
    order = np.lexsort((rng.random(len(rows)), u))
    counts = np.bincount(u)
    start = np.cumsum(counts) - counts
    rank = np.arange(len(rows)) - start[u[order]]
    # np.round rounds half to even like Python's round, which Microsoft Recommenders uses on the train share.
    n_train = np.maximum(1, np.round((1.0 - test_size) * counts)).astype(np.int64)
    held = np.zeros(len(rows), dtype=bool)
    held[order] = rank >= n_train[u[order]]
    return held


def random_ratio(
    inter: Interactions,
    *,
    test_size: float = 0.25,
    seed: int = 0,
    positive: np.ndarray | None = None,
) -> RecSplit:
    """Per-user random split: the protocol Microsoft Recommenders publishes for MovieLens
    (``python_stratified_split`` with ratio 0.75).

    Each user's rows are shuffled (seeded) and ``n - round((1 - test_size) * n)`` of them go
    to test, keeping at least one in train (round half to even, as Recommenders does, so the
    per-user counts match its split; the rows drawn differ). ``train`` = every row not in test.
    Test targets: the user's positive test rows (distinct items not in train); test history:
    the user's training rows.

    Validation is a further per-user split of the training rows with the same ratio, for
    early stopping and tuning: ``valid_train`` = training rows not drawn for validation,
    validation targets = the positive rows drawn, validation history = ``valid_train`` rows.
    ``train`` still holds the validation rows; refit on it before scoring test.
    """
    _check_fraction(test_size, "test_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be a whole number, got {seed!r}", key="seed")
    pos = _positive(inter, positive)
    user = inter.frame["user"].to_numpy()
    rng = np.random.default_rng(seed)
    all_rows = np.arange(len(user))
    is_test = _ratio_holdout(user, all_rows, test_size, rng)
    train_rows = all_rows[~is_test]
    is_valid = np.zeros(len(user), dtype=bool)
    is_valid[train_rows[_ratio_holdout(user, train_rows, test_size, rng)]] = True

    notes: list[str] = []
    counts = np.bincount(user, minlength=inter.n_users)
    no_test = (counts > 0) & (np.bincount(user[is_test], minlength=inter.n_users) == 0)
    if no_test.any():
        notes.append(f"{int(no_test.sum())} users have too few rows to hold any out for test; all are in train")
    valid = _holdout(inter, ~is_test & ~is_valid, pos & is_valid, "valid", notes)
    test = _holdout(inter, ~is_test, pos & is_test, "test", notes)
    return RecSplit(
        train=inter.take(~is_test),
        valid=valid,
        test=test,
        strategy="random_ratio",
        notes=notes,
        valid_train=inter.take(~is_test & ~is_valid),
    )
