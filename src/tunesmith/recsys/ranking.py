"""Ranking with a fitted recommender: top-k lists for known users and raw histories, and
cold items added from their content (the serving half of
:class:`~tunesmith.recsys.recommender.Recommender`, which mixes this class in).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tunesmith.errors import ConfigError, DataError
from tunesmith.recsys.data import read_features
from tunesmith.recsys.metrics import top_k
from tunesmith.recsys.sequential import SequentialRecommender
from tunesmith.recsys.split import HoldOut
from tunesmith.recsys.training import item_texts


class Ranking:
    """Top-k lists from a fitted model and the users' stored histories (mixed into the Recommender)."""

    model_: Any
    users_: np.ndarray
    items_: np.ndarray
    content_: np.ndarray | None
    history_indptr_: np.ndarray
    history_indices_: np.ndarray
    _user_code: dict[str, int]
    _item_code: dict[str, int]

    if TYPE_CHECKING:  # given by the estimator this class is mixed into

        @property
        def content_backbone(self) -> str | None: ...

        def _check_fitted(self) -> None: ...

        def _embed(self, texts: list[str]) -> np.ndarray: ...

    # --- scoring ---------------------------------------------------------------------------------

    def _index(self) -> None:
        self._user_code = {str(u): i for i, u in enumerate(self.users_)}
        self._item_code = {str(v): i for i, v in enumerate(self.items_)}

    def _holdout_scorer(self, holdout: HoldOut) -> Any:
        def score(pos: np.ndarray) -> np.ndarray:
            return self._score_codes([holdout.sequences[i] for i in pos], n_items=holdout.n_items)

        return score

    def _score_codes(self, histories: Sequence[np.ndarray], *, n_items: int | None = None) -> np.ndarray:
        """Scores ``(len(histories), n_items)`` for histories of item codes in time order."""
        model = self.model_
        if isinstance(model, SequentialRecommender):
            return model.score(histories)
        n = n_items if n_items is not None else model.n_items
        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if histories else np.zeros(0)
        m = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(histories), n), dtype=np.float64)
        m.sum_duplicates()
        return np.asarray(model.score(m))

    def _user_history(self, user: Any) -> np.ndarray:
        code = self._user_code.get(str(user))
        if code is None:
            raise DataError(
                f"unknown user {str(user)!r}: not in the training log",
                hint="Send the user's history (a list of item ids) instead",
            )
        return self.history_indices_[self.history_indptr_[code] : self.history_indptr_[code + 1]]

    def _codes(self, ids: Sequence[Any] | None) -> tuple[np.ndarray, int]:
        """Item codes of ``ids`` in order, and how many ids were unknown (left out)."""
        if ids is None:
            return np.zeros(0, dtype=np.int32), 0
        if isinstance(ids, (str, bytes)):
            raise ConfigError("must be a list of item ids, not one string", key="history")
        codes = [self._item_code.get(str(i)) for i in ids]
        known = [c for c in codes if c is not None]
        return np.asarray(known, dtype=np.int32), len(codes) - len(known)

    def recommend(
        self,
        user: Any = None,
        *,
        history: Sequence[Any] | None = None,
        k: int = 10,
        exclude: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The top ``k`` items for one user: ``[{"item": id, "score": float}, ...]``, best first.

        Give a known ``user`` id (their stored history is used) or a raw ``history`` (item ids
        in time order; unknown ids are left out with a warning). Items in the history and in
        ``exclude`` are never returned; fewer than ``k`` come back when the catalogue runs out.

        Raises
        ------
        tunesmith.errors.DataError
            ``user`` is not in the training log and no ``history`` was given.
        """
        out = self.recommend_batch(
            users=None if user is None and history is not None else [user],
            histories=None if history is None else [history],
            k=k,
            exclude=None if exclude is None else [exclude],
        )
        return out[0]

    def recommend_batch(
        self,
        users: Sequence[Any] | None = None,
        histories: Sequence[Sequence[Any] | None] | None = None,
        *,
        k: int = 10,
        exclude: Sequence[Sequence[Any] | None] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """:meth:`recommend` for many users at once (one model call): one list per user.

        ``users`` and ``histories`` are aligned when both are given; a row's history (when not
        ``None``) wins over its user's stored one.
        """
        self._check_fitted()
        if users is None and histories is None:
            raise ConfigError("give users or histories", key="users", hint="recommend_batch(users=['u1', 'u2'])")
        n = len(users) if users is not None else len(histories or [])
        for name, seq in (("histories", histories), ("exclude", exclude)):
            if seq is not None and len(seq) != n:
                raise ConfigError(f"has {len(seq)} entries for {n} users", key=name)
        codes: list[np.ndarray] = []
        unknown = 0
        for i in range(n):
            raw = histories[i] if histories is not None else None
            if raw is not None:
                c, bad = self._codes(raw)
                unknown += bad
            elif users is not None and users[i] is not None:
                c = self._user_history(users[i])
            else:
                raise ConfigError(f"entry {i} has neither a user nor a history", key="users")
            codes.append(c)
        if unknown:
            warnings.warn(
                f"{unknown} item ids in the histories are not in the catalogue and were ignored", stacklevel=2
            )
        rows, cols = [], []
        for i, c in enumerate(codes):
            drop = c
            if exclude is not None and exclude[i] is not None:
                drop = np.concatenate([c, self._codes(exclude[i])[0]])
            rows.extend([i] * len(drop))
            cols.extend(drop.tolist())
        n_items = len(self.items_)
        mask = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(n, n_items), dtype=np.float64)
        if n == 0:
            return []
        scores = self._score_codes(codes)
        best = top_k(scores, mask, k)
        out: list[list[dict[str, Any]]] = []
        for i in range(n):
            picks = best[i][best[i] >= 0]
            out.append([{"item": self.items_[j], "score": float(scores[i, j])} for j in picks])
        return out

    # --- cold start ------------------------------------------------------------------------------

    def add_items(
        self,
        features: str | Path | pd.DataFrame,
        item_key: str = "item_id",
        item_text: Sequence[str] | None = None,
    ) -> Any:
        """Make new items recommendable without retraining, from their content alone.

        ``features`` is an item table (a DataFrame indexed by id, as :func:`read_features`
        returns, or a file/DataFrame with an ``item_key`` column). Their texts (``item_text``
        columns, joined) are embedded with the model's content backbone; their id vectors stay
        unlearned, so they are scored through their content. Ids already in the catalogue are
        left unchanged (with a warning).

        Raises
        ------
        tunesmith.errors.ConfigError
            The model has no content backbone.
        """
        self._check_fitted()
        if self.content_backbone is None or not isinstance(self.model_, SequentialRecommender):
            raise ConfigError(
                "new items need content vectors, and this model has no content backbone",
                key="content_backbone",
                hint="Fit with Recommender('sasrec', content_backbone='minilm-l6') and an item table",
            )
        if isinstance(item_text, str):
            item_text = [item_text]
        if isinstance(features, pd.DataFrame) and item_key not in features.columns:
            table = features.copy()
            table.index = table.index.astype(str)
        else:
            table = read_features(features, item_key)
        new = table.loc[[i not in self._item_code for i in table.index]]
        if len(new) < len(table):
            warnings.warn(
                f"{len(table) - len(new)} items are already in the catalogue and were left unchanged", stacklevel=2
            )
        if not len(new):
            return self
        vectors = self._embed(item_texts(new, item_text).tolist())
        arrays, settings = self.model_.state()
        weight = arrays["net.item_emb.weight"]
        arrays["net.item_emb.weight"] = np.vstack([weight, np.zeros((len(new), weight.shape[1]), weight.dtype)])
        arrays["content"] = np.vstack([arrays["content"], vectors.astype(arrays["content"].dtype)])
        arrays["known_items"] = np.concatenate([arrays["known_items"], np.zeros(len(new), dtype=np.uint8)])
        settings["n_items"] = int(settings["n_items"]) + len(new)
        self.model_ = SequentialRecommender.from_state(arrays, settings)
        self.items_ = np.concatenate([self.items_, np.asarray(new.index, dtype=object)])
        self.content_ = arrays["content"]
        self._index()
        return self


__all__ = ["Ranking"]
