"""Top-N ranking metrics over the full catalogue (no sampled negatives).

A model gives a score to every item for every user; items the user already had (their
history) are excluded; the rest are ranked, best first. Ties in score go to the lower item
code, in :func:`top_k` and :func:`target_ranks` alike, so a target's rank and its place in a
top-k list always agree, and a model that gives every item the same score is no better than
an arbitrary order (it does not get every target at rank 1).

Metrics are computed per user, then averaged over users with at least one target.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

from tunesmith.errors import ConfigError
from tunesmith.recsys.split import HoldOut

__all__ = [
    "evaluate_ranking",
    "ndcg_of_lists",
    "popularity_percentile",
    "ranking_metrics",
    "target_ranks",
    "top_k",
]

# Rank computations compare a target's score with a whole row of scores; this many scores
# at a time keeps the temporary arrays near 32 MB whatever the catalogue size.
_CHUNK_SCORES = 1 << 22


def _scores(scores: np.ndarray, exclude: sp.spmatrix | sp.sparray | None) -> np.ndarray:
    """A float64 copy of ``scores`` with excluded items at ``-inf``."""
    s = np.array(scores, dtype=np.float64, copy=True)
    if s.ndim != 2:
        raise ConfigError(f"scores must be a 2-d array (users x items), got shape {s.shape}", key="scores")
    nan = np.isnan(s)
    if nan.any():
        r, c = np.argwhere(nan)[0]
        raise ConfigError(
            f"scores hold {int(nan.sum())} NaN values (first: row {int(r)}, item {int(c)})",
            key="scores",
            hint="Check the model: NaN scores cannot be ranked",
        )
    if exclude is not None:
        ex = sp.csr_matrix(exclude)
        if ex.shape != s.shape:
            raise ConfigError(f"exclude has shape {ex.shape} but scores have shape {s.shape}", key="exclude")
        r, c = ex.nonzero()
        s[r, c] = -np.inf
    return s


def _top(s: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` item codes of prepared scores, ``-1`` where fewer than ``k`` items can be recommended."""
    n, m = s.shape
    kk = min(k, m)
    if kk == m:
        idx = np.argsort(-s, axis=1, kind="stable")
    else:
        # Partition finds the k-th best score; of the items tied with it, the lowest codes fill the list.
        kth = np.partition(s, m - kk, axis=1)[:, m - kk]
        greater = s > kth[:, None]
        tied = s == kth[:, None]
        room = kk - greater.sum(axis=1)
        chosen = greater | (tied & (np.cumsum(tied, axis=1) <= room[:, None]))
        idx = np.nonzero(chosen)[1].reshape(n, kk)
        order = np.argsort(-np.take_along_axis(s, idx, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1)
    idx = idx.astype(np.int64)
    idx[np.take_along_axis(s, idx, axis=1) == -np.inf] = -1
    if k > m:
        idx = np.hstack([idx, np.full((n, k - m), -1, dtype=np.int64)])
    return idx


def _check_k(k: int, key: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"{key} must be a whole number >= 1, got {k!r}", key=key)
    return int(k)


def top_k(scores: np.ndarray, exclude: sp.spmatrix | sp.sparray | None, k: int) -> np.ndarray:
    """The ``k`` best items of each row of ``scores`` (users x items), best first.

    Items stored as non-zero in ``exclude`` (same shape) are never returned, nor are items
    scored ``-inf``; when fewer than ``k`` items are left the row ends with ``-1``. Ties go to
    the lower item code. Returns an int64 array of shape ``(n_users, k)``.
    """
    return _top(_scores(scores, exclude), _check_k(k))


def _flat_targets(targets: Sequence[np.ndarray], n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row of each target, item of each target, targets per row), checked against the score shape."""
    if len(targets) != n:
        raise ConfigError(f"got targets for {len(targets)} users but scores for {n}", key="targets")
    lens = np.array([len(t) for t in targets], dtype=np.int64)
    items = np.concatenate([np.asarray(t, dtype=np.int64) for t in targets]) if n else np.zeros(0, np.int64)
    if len(items) and (items.min() < 0 or items.max() >= m):
        raise ConfigError(f"target item codes must lie in 0..{m - 1}", key="targets")
    return np.repeat(np.arange(n), lens), items, lens


def _ranks(s: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float64)
    m = s.shape[1]
    codes = np.arange(m)
    step = max(1, _CHUNK_SCORES // max(m, 1))
    for a in range(0, len(rows), step):
        r, t = rows[a : a + step], items[a : a + step]
        block = s[r]
        v = block[np.arange(len(r)), t][:, None]
        ahead = (block > v).sum(axis=1) + ((block == v) & (codes[None, :] < t[:, None])).sum(axis=1)
        out[a : a + step] = np.where(v[:, 0] == -np.inf, np.inf, ahead + 1.0)
    return out


def target_ranks(
    scores: np.ndarray, exclude: sp.spmatrix | sp.sparray | None, targets: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """The 1-based rank of each target among the items not excluded, one float64 array per row.

    rank = 1 + (items with a higher score) + (items with the same score and a lower code),
    the position the target takes in :func:`top_k`. A target that is excluded, or scored
    ``-inf``, can never be recommended: its rank is ``inf``.
    """
    s = _scores(scores, exclude)
    rows, items, lens = _flat_targets(targets, *s.shape)
    return np.split(_ranks(s, rows, items), np.cumsum(lens)[:-1]) if len(lens) else []


def popularity_percentile(item_popularity: np.ndarray) -> np.ndarray:
    """Each item's popularity as a percentile in 0..1: 0 for the least popular item, 1 for the
    most popular, tied items sharing the mean of their places."""
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.ndim != 1 or not len(pop):
        raise ConfigError("item_popularity must be a non-empty 1-d array", key="item_popularity")
    return (rankdata(pop, method="average") - 1.0) / max(len(pop) - 1, 1)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)) or not len(ks):
        raise ConfigError(f"ks must be a non-empty list of cut-offs, got {ks!r}", key="ks")
    return tuple(sorted({_check_k(k, "ks") for k in ks}))


def _percentiles(item_popularity: np.ndarray | None, m: int) -> np.ndarray | None:
    if item_popularity is None:
        return None
    pct = popularity_percentile(item_popularity)
    if len(pct) != m:
        raise ConfigError(f"item_popularity has {len(pct)} items but scores have {m}", key="item_popularity")
    return pct


def _per_user(
    s: np.ndarray, targets: Sequence[np.ndarray], ks: tuple[int, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per-user metric values and top-k lists (kmax) of the rows with at least one target."""
    n, m = s.shape
    rows, items, lens = _flat_targets(targets, n, m)
    ranks = _ranks(s, rows, items)
    has = lens > 0
    values: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks <= k
        hits = np.bincount(rows, weights=hit, minlength=n)
        gain = np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 1.0) + 1.0), 0.0)
        dcg = np.bincount(rows, weights=gain, minlength=n)
        ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
        idcg = ideal[np.clip(np.minimum(lens, k), 1, None) - 1]
        safe = np.maximum(lens, 1)
        values[f"hr@{k}"] = (hits > 0).astype(np.float64)[has]
        values[f"ndcg@{k}"] = (dcg / idcg)[has]
        values[f"recall@{k}"] = (hits / safe)[has]
        values[f"precision@{k}"] = (hits / k)[has]
    best = np.full(n, np.inf)
    np.minimum.at(best, rows, ranks)
    values["mrr"] = (1.0 / best)[has]
    return values, _top(s, max(ks))[has], has


def _summarise(
    values: dict[str, np.ndarray], top: np.ndarray, ks: tuple[int, ...], m: int, pct: np.ndarray | None
) -> dict[str, float]:
    n = len(top)
    out: dict[str, float] = {}
    for k in ks:
        for name in ("hr", "ndcg", "recall", "precision"):
            key = f"{name}@{k}"
            out[key] = float(values[key].mean()) if n else float("nan")
        shown = top[:, :k]
        shown = shown[shown >= 0]
        out[f"coverage@{k}"] = len(np.unique(shown)) / m
        if pct is not None:
            out[f"pop@{k}"] = float(pct[shown].mean()) if len(shown) else float("nan")
    out["mrr"] = float(values["mrr"].mean()) if n else float("nan")
    out["n_users"] = float(n)
    return out


def ranking_metrics(
    scores: np.ndarray,
    exclude: sp.spmatrix | sp.sparray | None,
    targets: Sequence[np.ndarray],
    *,
    ks: Sequence[int] = (5, 10, 20),
    item_popularity: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of ``scores`` (users x items) against each row's ``targets``.

    Averaged over the rows with at least one target, for each ``k`` in ``ks``:

    * ``hr@k``: 1 if any target is in the top k;
    * ``ndcg@k``: binary relevance, DCG = sum of 1/log2(rank + 1) over targets in the top k,
      divided by the ideal DCG of ``min(len(targets), k)`` targets at the top;
    * ``recall@k``: targets in the top k / number of targets (not / min(number, k), so a user
      with more than k targets cannot reach 1);
    * ``precision@k``: targets in the top k / k;
    * ``coverage@k``: distinct items in all rows' top k / number of items (a catalogue
      property, not an average);
    * ``pop@k`` (with ``item_popularity``, e.g. training interactions per item): mean
      :func:`popularity_percentile` of all recommended items, 0 = least popular, 1 = most;

    plus ``mrr`` (1 / rank of the best-ranked target, over the whole ranking; 0 when every
    target is excluded) and ``n_users``. Ranks follow :func:`target_ranks`.
    """
    checked = _check_ks(ks)
    s = _scores(scores, exclude)
    pct = _percentiles(item_popularity, s.shape[1])
    values, top, _ = _per_user(s, targets, checked)
    return _summarise(values, top, checked, s.shape[1], pct)


def ndcg_of_lists(
    recommended: Sequence[Sequence[Any]], targets: Sequence[Collection[Any]], *, k: int = 10
) -> np.ndarray:
    """NDCG@``k`` of each ranked list against its own targets: one float64 value per list.

    ``recommended[i]`` holds item ids best first (a top-k list such as
    :meth:`~tunesmith.recsys.ranking.Ranking.recommend_batch` gives, history excluded);
    ``targets[i]`` the ids to find. Relevance is binary and the ideal DCG is that of
    ``min(len(targets[i]), k)`` targets at the top, as ``ndcg@k`` in :func:`ranking_metrics`:
    the values average to its figure when the lists are :func:`top_k` of the same scores. A
    target the list does not hold (or holds past ``k``) adds nothing; a row without targets is
    NaN. Ids compare as given (use one type, e.g. strings, on both sides).
    """
    k = _check_k(k)
    if len(recommended) != len(targets):
        raise ConfigError(f"got {len(recommended)} ranked lists but targets for {len(targets)}", key="targets")
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)
    out = np.full(len(targets), np.nan)
    for i, (ranked, wanted) in enumerate(zip(recommended, targets, strict=True)):
        want = set(wanted)
        if not want:
            continue
        # A list repeating an id counts it once, at its best place.
        seen: set[Any] = set()
        dcg = 0.0
        for place, item in enumerate(list(ranked)[:k]):
            if item in want and item not in seen:
                dcg += discount[place]
            seen.add(item)
        out[i] = dcg / ideal[min(len(want), k) - 1]
    return out


def _group_labels(groups: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    edges = [int(g) for g in groups]
    if any(g < 1 for g in edges) or any(b <= a for a, b in pairwise(edges)):
        raise ConfigError(f"groups must be increasing whole numbers >= 1, got {list(groups)!r}", key="groups")
    if not edges:
        return np.zeros(0, dtype=np.int64), []
    labels = [f"<{edges[0]}"]
    labels += [f"{a}-{b - 1}" for a, b in pairwise(edges)]
    labels.append(f">={edges[-1]}")
    return np.asarray(edges, dtype=np.int64), labels


def evaluate_ranking(
    score_fn: Callable[[np.ndarray], np.ndarray],
    holdout: HoldOut,
    *,
    ks: Sequence[int] = (5, 10, 20),
    item_popularity: np.ndarray | None = None,
    batch_size: int = 256,
    groups: Sequence[int] = (10, 30, 100),
    per_user: bool = False,
) -> dict[str, Any]:
    """Score a hold-out set in batches and compute :func:`ranking_metrics`, overall and by history length.

    ``score_fn(positions)`` gets indices into ``holdout.users`` (at most ``batch_size`` of
    them) and returns scores of shape ``(len(positions), n_items)``; each user's history is
    excluded from the ranking. Returns ``{"overall": metrics, "by_history_length": {label:
    metrics}}``, where a user's group is the number of distinct items in their history and
    ``groups=(10, 30, 100)`` gives the labels ``"<10"``, ``"10-29"``, ``"30-99"`` and
    ``">=100"``. Every label is present; an empty group has ``n_users`` 0 and NaN metrics.

    With ``per_user``, ``"per_user"`` also holds each averaged metric's value per user with a
    target (``{"ndcg@10": (n_users,) array, ...}``, users in hold-out order), for bootstrap
    intervals over users (:func:`tunesmith.evaluate.intervals.bootstrap_mean_intervals`).
    """
    checked = _check_ks(ks)
    batch_size = _check_k(batch_size, "batch_size")
    edges, labels = _group_labels(groups)
    m = holdout.n_items
    pct = _percentiles(item_popularity, m)
    parts: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
    for start in range(0, len(holdout), batch_size):
        positions = np.arange(start, min(start + batch_size, len(holdout)))
        scores = np.asarray(score_fn(positions))
        if scores.shape != (len(positions), m):
            raise ConfigError(
                f"score_fn returned shape {scores.shape} for {len(positions)} users; expected {(len(positions), m)}",
                key="score_fn",
            )
        s = _scores(scores, holdout.exclude(positions))
        values, top, _ = _per_user(s, [holdout.targets[i] for i in positions], checked)
        parts.append((values, top))
    keys = [*(f"{n}@{k}" for k in checked for n in ("hr", "ndcg", "recall", "precision")), "mrr"]
    values = {key: np.concatenate([p[0][key] for p in parts]) if parts else np.zeros(0) for key in keys}
    top = np.vstack([p[1] for p in parts]) if parts else np.zeros((0, max(checked)), dtype=np.int64)
    # Users without targets are skipped by _per_user; drop them from the group sizes alike.
    sizes = holdout.history_sizes()[np.array([len(t) > 0 for t in holdout.targets], dtype=bool)]
    result: dict[str, Any] = {"overall": _summarise(values, top, checked, m, pct), "by_history_length": {}}
    group = np.searchsorted(edges, sizes, side="right")
    for g, label in enumerate(labels):
        sel = group == g
        result["by_history_length"][label] = _summarise(
            {key: v[sel] for key, v in values.items()}, top[sel], checked, m, pct
        )
    if per_user:
        result["per_user"] = values
    return result
