"""What the monitor compares for a recommender: who asks, what they consume, what it recommends.

A recommender's inputs are ids, not features, so each row becomes a few comparable figures:
whether its user (and item) were in the training log, the length of the user's stored
history, the item's training popularity; its outputs become the popularity of the items it
recommends and the most recommended items. Interactions that arrived later are the labels:
the hit rate and NDCG@10 of the recommendations for them are measured per window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import DataError

K = 10
USER_KNOWN = "user.known"
USER_HISTORY = "user.history"
ITEM_KNOWN = "item.known"
ITEM_POPULARITY = "item.popularity"
TOP_POPULARITY = "recommended.popularity"
TOP_ITEM = "recommended.first_item"


def is_recommender(est: Any) -> bool:
    """True for a fitted model that ranks items for users (the registry's ``recommend`` style)."""
    return est is not None and hasattr(est, "users_") and hasattr(est, "items_") and hasattr(est, "predict")


def id_columns(est: Any, frame: pd.DataFrame) -> tuple[str, str | None]:
    """The user and item columns of ``frame``: the fit's names, or ``user``/``item`` of a request log."""
    cols = getattr(est, "_columns", {}) or {}
    user = next((c for c in (cols.get("user"), "user", "user_id") if c and c in frame.columns), None)
    if user is None:
        raise DataError(
            f"the data has no user column ({cols.get('user') or 'user_id'} or user)",
            column=str(cols.get("user") or "user_id"),
            hint="Give the interaction log's user column, or a prediction log of the recommender",
        )
    item = next((c for c in (cols.get("item"), "item", "item_id") if c and c in frame.columns), None)
    return user, item


def present(spec: Any, derived: pd.DataFrame) -> Any:
    """``spec`` narrowed to the figures ``derived`` has (a request log has no item column)."""
    from dataclasses import replace

    return replace(
        spec,
        numeric=[c for c in spec.numeric if c in derived.columns],
        categorical=[c for c in spec.categorical if c in derived.columns],
    )


def _popularity(est: Any) -> np.ndarray:
    counts = np.bincount(np.asarray(est.history_indices_, dtype=np.int64), minlength=len(est.items_))
    return np.log1p(counts.astype(float))


class RankingView:
    """Turns rows of interactions or recommendation requests into the figures the tests compare."""

    def __init__(self, est: Any) -> None:
        self.est = est
        self.user_index = {str(u): i for i, u in enumerate(est.users_)}
        self.item_index = {str(v): i for i, v in enumerate(est.items_)}
        self.history = np.diff(np.asarray(est.history_indptr_))
        self.popularity = _popularity(est)

    def features(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per row: user known, user history length, item known, item popularity (when an item column exists)."""
        user, item = id_columns(self.est, frame)
        codes = np.array([self.user_index.get(str(u), -1) for u in frame[user]])
        out = pd.DataFrame(
            {
                USER_KNOWN: np.where(codes >= 0, "known", "new"),
                USER_HISTORY: np.where(codes >= 0, self.history[np.maximum(codes, 0)], 0).astype(float),
            }
        )
        if item is not None:
            items = np.array([self.item_index.get(str(v), -1) for v in frame[item]])
            out[ITEM_KNOWN] = np.where(items >= 0, "known", "new")
            out[ITEM_POPULARITY] = np.where(items >= 0, self.popularity[np.maximum(items, 0)], 0.0)
        return out

    def recommendations(self, frame: pd.DataFrame, logged: pd.Series | None) -> list[list[str]]:
        """Each row's recommended items: from the log when it has them, else asked of the model (known users)."""
        if logged is not None:
            return [[str(i) for i in (v if isinstance(v, list) else [])] for v in logged]
        user, _ = id_columns(self.est, frame)
        users = [str(u) for u in frame[user]]
        known = sorted({u for u in users if u in self.user_index})
        lists = dict(zip(known, self.est.predict(known, k=K), strict=True)) if known else {}
        return [[str(i) for i in lists.get(u, [])] for u in users]

    def outputs(self, lists: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Per row: mean popularity of the recommended items, and the first item (``(none)`` if empty)."""
        pop = np.full(len(lists), np.nan)
        first = np.empty(len(lists), dtype=object)
        for i, items in enumerate(lists):
            codes = [self.item_index[v] for v in items if v in self.item_index]
            if codes:
                pop[i] = float(self.popularity[codes].mean())
            first[i] = items[0] if items else "(none)"
        return pop, first

    def realized(self, frame: pd.DataFrame) -> dict[str, float] | None:
        """Hit rate and NDCG@10 of the model on interactions that arrived (its ``evaluate``)."""
        _, item = id_columns(self.est, frame)
        if item is None:
            return None
        try:
            metrics = self.est.evaluate(frame)
        except DataError:
            return None
        if not metrics.get("n_users"):
            return None
        return {"ndcg@10": float(metrics["ndcg@10"]), "hr@10": float(metrics["hr@10"]), "users": metrics["n_users"]}
