"""A recommender you fit on an interaction log, score once, save, and serve.

:class:`Recommender` wraps the pieces of :mod:`tunesmith.recsys` into one estimator::

    rec = Recommender("sasrec", min_rating=4).fit("ratings.csv", rating="rating")
    rec.test_metrics_["overall"]["ndcg@10"], rec.baseline_metrics_["popularity"]["overall"]["ndcg@10"]
    rec.recommend("user-17", k=10)              # by id: their stored history
    rec.recommend(history=["i3", "i9"], k=10)   # a new user: fold-in, no retraining
    rec.save("model/")                          # safetensors + JSON, never pickle
    same = Recommender.load("model/")

``fit`` splits the log with :func:`~tunesmith.recsys.split.leave_last_out` (each user's last
positive is the test target, the one before it the validation target), trains on what comes
before and scores the test hold-out against popularity. The model served afterwards is that
split-trained model: it is *not* refitted on the held-out interactions, so the stored test
metrics describe exactly the model that is saved. Its input at serving time is each user's
full history, held-out interactions included.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError
from tunesmith.recsys.data import Interactions, k_core, read_features, read_interactions
from tunesmith.recsys.metrics import evaluate_ranking, top_k
from tunesmith.recsys.models import BPRMF, EASE, ItemKNN, Popularity, model_from_state
from tunesmith.recsys.sequential import SeqConfig, SequentialRecommender, TrainSettings
from tunesmith.recsys.split import HoldOut, leave_last_out

__all__ = ["FORMAT_VERSION", "MODEL_KINDS", "Recommender"]

FORMAT_VERSION = 1
TASK = "recommendation"
MODEL_KINDS = ("sasrec", "ease", "bpr", "itemknn", "popularity")
_CLASSIC = {"ease": EASE, "bpr": BPRMF, "itemknn": ItemKNN, "popularity": Popularity}
KS = (5, 10, 20)
RANKING_PLOT = "ranking_at_k.png"
HISTORY_PLOT = "ndcg_by_history.png"
# Fine-tuning starts from pre-trained weights, so it takes smaller steps than training from scratch.
_PRETRAIN_DEFAULTS = {"epochs": 50, "lr": 1e-3, "patience": 5}
_FINETUNE_DEFAULTS = {"epochs": 50, "lr": 3e-4, "patience": 5}
_SCRATCH_DEFAULTS = {"epochs": 50, "lr": 1e-3, "patience": 5}


def _dataclass_settings(cls: type, values: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    """``values`` checked against the fields of ``cls`` (SeqConfig or TrainSettings)."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"must be a dict of {cls.__name__} fields, got {type(values).__name__}", key=key)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r}", key=key, hint=f"Known: {', '.join(sorted(known))}")
    cls(**values).check()
    return dict(values)


def _item_texts(features: pd.DataFrame, columns: Sequence[str] | None, file: Any = None) -> pd.Series:
    """One text per item id: the chosen columns' values joined, missing values left out."""
    cols = list(columns) if columns is not None else [c for c in features.columns if c != "__row__"]
    for c in cols:
        if c not in features.columns:
            raise DataError(
                f"item text column {c!r} not found",
                file=file,
                column=c,
                hint=f"The item table has: {', '.join(map(str, features.columns))}",
            )
    if not cols:
        raise ConfigError("the item table has no column to build item texts from", key="item_text")
    parts = features[cols].astype(object).where(features[cols].notna(), "").astype(str)
    texts = [". ".join(v for v in row if v.strip()) for row in parts.itertuples(index=False)]
    return pd.Series(texts, index=features.index, dtype=object)


def _flags_by_user(inter: Interactions, mask: np.ndarray) -> list[np.ndarray]:
    """Per user code, ``mask`` (one value per row of ``inter.frame``) cut into the user's rows."""
    bounds = np.searchsorted(inter.frame["user"].to_numpy(), np.arange(inter.n_users + 1))
    return [mask[bounds[u] : bounds[u + 1]] for u in range(inter.n_users)]


def _markdown_table(rows: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, m in rows.items():
        cells = [f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


class Recommender:
    """Fit a recommender on an interaction log, compare it with popularity, serve top-k lists.

    Parameters
    ----------
    model:
        ``"sasrec"`` (a sequential transformer, pre-trained on every interaction then
        fine-tuned on the positive ones), ``"ease"``, ``"bpr"``, ``"itemknn"`` or
        ``"popularity"``.
    min_rating:
        Interactions rated at least this are the positives to predict (needs ``rating`` in
        :meth:`fit`). Without it, a ``label`` column decides (1 = positive), else every
        interaction is positive.
    pretrain:
        SASRec only: pre-train on all interactions before fine-tuning on the positives.
    content_backbone:
        SASRec only: a text backbone (``"minilm-l6"``) that embeds each item's text, so items
        never seen in training can still be recommended (see :meth:`add_items`). ``None``:
        items are ids only.
    k_core:
        Keep only users and items with at least this many interactions (an int for both, or
        ``{"min_user": .., "min_item": ..}``).
    seq, pretrain_settings, finetune_settings:
        Fields of :class:`~tunesmith.recsys.sequential.SeqConfig` and
        :class:`~tunesmith.recsys.sequential.TrainSettings` for SASRec.
    model_params:
        Constructor arguments of a classic model (``{"l2": 500.0}`` for EASE).
    seed, threads:
        Random seed; compute threads (default: torch's).

    Fitted attributes end in ``_``: ``model_``, ``users_``, ``items_``, ``test_metrics_``,
    ``baseline_metrics_``, ``split_``, ``data_report_``; a loaded model also has
    ``saved_info_`` (the saving tunesmith version and time).
    """

    saved_info_: dict[str, str]
    # A content backbone path read from a loaded folder: never opened unless passed again.
    _untrusted_backbone: str | None = None

    def __init__(
        self,
        model: str = "sasrec",
        *,
        min_rating: float | None = None,
        pretrain: bool = True,
        content_backbone: str | None = None,
        k_core: int | Mapping[str, int] | None = None,
        seq: Mapping[str, Any] | None = None,
        pretrain_settings: Mapping[str, Any] | None = None,
        finetune_settings: Mapping[str, Any] | None = None,
        model_params: Mapping[str, Any] | None = None,
        seed: int = 0,
        threads: int | None = None,
    ) -> None:
        if model not in MODEL_KINDS:
            raise ConfigError(f"unknown model {model!r}", key="model", hint=f"Use one of: {', '.join(MODEL_KINDS)}")
        if min_rating is not None and (isinstance(min_rating, bool) or not isinstance(min_rating, (int, float))):
            raise ConfigError(f"must be a number, got {min_rating!r}", key="min_rating")
        if not isinstance(pretrain, bool):
            raise ConfigError(f"must be true or false, got {pretrain!r}", key="pretrain")
        if content_backbone is not None and model != "sasrec":
            raise ConfigError(
                f"content vectors are used by the sasrec model only, not {model!r}",
                key="content_backbone",
                hint="Use model='sasrec' or leave content_backbone unset",
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"must be a whole number, got {seed!r}", key="seed")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"must be a whole number >= 1, got {threads!r}", key="threads")
        self.model = model
        self.min_rating = None if min_rating is None else float(min_rating)
        self.pretrain = pretrain
        self.content_backbone = content_backbone
        self.k_core = self._check_k_core(k_core)
        self.seq = _dataclass_settings(SeqConfig, seq, "seq")
        self.pretrain_settings = _dataclass_settings(TrainSettings, pretrain_settings, "pretrain_settings")
        self.finetune_settings = _dataclass_settings(TrainSettings, finetune_settings, "finetune_settings")
        self.model_params = dict(model_params or {})
        if model in _CLASSIC:
            try:
                _CLASSIC[model](**self.model_params)
            except TypeError as exc:
                raise ConfigError(f"not accepted by {model}: {exc}", key="model_params") from None
        elif self.model_params:
            raise ConfigError("sasrec takes seq and *_settings, not model_params", key="model_params")
        self.seed = seed
        self.threads = threads

    @staticmethod
    def _check_k_core(value: int | Mapping[str, int] | None) -> dict[str, int] | None:
        if value is None:
            return None
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"min_user", "min_item"})
            if unknown:
                raise ConfigError(f"unknown key {unknown[0]!r}; use min_user and min_item", key="k_core")
            out = {"min_user": int(value.get("min_user", 0)), "min_item": int(value.get("min_item", 0))}
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            out = {"min_user": value, "min_item": value}
        else:
            raise ConfigError(f"must be a whole number >= 1 or a dict, got {value!r}", key="k_core")
        return out

    def get_params(self) -> dict[str, Any]:
        """The constructor settings (JSON-safe); ``Recommender(**params)`` rebuilds an unfitted copy."""
        return {
            "model": self.model,
            "min_rating": self.min_rating,
            "pretrain": self.pretrain,
            "content_backbone": self.content_backbone,
            "k_core": self.k_core,
            "seq": self.seq,
            "pretrain_settings": self.pretrain_settings,
            "finetune_settings": self.finetune_settings,
            "model_params": self.model_params,
            "seed": self.seed,
            "threads": self.threads,
        }

    def __repr__(self) -> str:
        fitted = f", {len(self.items_)} items, {len(self.users_)} users" if hasattr(self, "model_") else ""
        return f"Recommender(model={self.model!r}{fitted})"

    # --- fitting ---------------------------------------------------------------------------------

    def fit(
        self,
        log: str | Path | pd.DataFrame,
        *,
        user: str = "user_id",
        item: str = "item_id",
        time: str | None = "timestamp",
        rating: str | None = None,
        label: str | None = None,
        items: str | Path | pd.DataFrame | None = None,
        item_key: str = "item_id",
        item_text: Sequence[str] | None = None,
    ) -> Recommender:
        """Read ``log``, split it, train, score the test hold-out against popularity; returns ``self``.

        ``items`` is an item table (file or DataFrame, one row per ``item_key``); with a
        ``content_backbone`` the ``item_text`` columns (default: all) are joined into each
        item's text and embedded. Items in the table but not in the log are added as cold
        items (:meth:`add_items`).

        Raises
        ------
        tunesmith.errors.DataError
            A column not found, a bad value (naming the row), or too few interactions to split.
        tunesmith.errors.ConfigError
            ``min_rating`` without ``rating``, or ``content_backbone`` without ``items``.
        """
        if self.min_rating is not None and rating is None:
            raise ConfigError("min_rating needs a rating column", key="min_rating", hint="Pass rating=<column>")
        if self.content_backbone is not None and items is None:
            raise ConfigError(
                "a content backbone needs an item table to embed",
                key="content_backbone",
                hint="Pass items=<file or DataFrame> (and item_text=[columns])",
            )
        if isinstance(item_text, str):
            item_text = [item_text]
        inter = read_interactions(log, user=user, item=item, time=time, rating=rating, label=label)
        if self.k_core is not None:
            inter = k_core(inter, **self.k_core)
        positive = inter.positive_mask(min_rating=self.min_rating)
        split = leave_last_out(inter, positive=positive)
        self._columns = {"user": user, "item": item, "time": time, "rating": rating, "label": label}

        content: np.ndarray | None = None
        extra: pd.DataFrame | None = None
        if items is not None:
            features = read_features(items, item_key)
            if self.content_backbone is not None:
                texts = _item_texts(features, item_text, file=items if isinstance(items, (str, Path)) else None)
                known_ids = pd.Index(inter.items.astype(str))
                missing = ~known_ids.isin(features.index)
                if missing.any():
                    warnings.warn(
                        f"{int(missing.sum())} items of the log are not in the item table; they get an empty text",
                        stacklevel=2,
                    )
                log_texts = texts.reindex(known_ids).fillna("").tolist()
                content = self._embed(log_texts)
                extra = features.loc[~features.index.isin(known_ids)]

        started = _now()
        train = split.train
        train_matrix = train.matrix()
        popularity = np.asarray(train_matrix.sum(axis=0)).ravel()
        if self.model == "sasrec":
            self.model_, self.training_ = self._fit_sasrec(split, train, content)
        else:
            self.model_, self.training_ = self._fit_classic(split, train_matrix)
        self.training_["seconds"] = _now() - started

        self.users_ = np.asarray(inter.users, dtype=object)
        self.items_ = np.asarray(inter.items, dtype=object)
        self._index()
        self.content_ = content
        user_codes = inter.frame["user"].to_numpy()
        self.history_indptr_ = np.searchsorted(user_codes, np.arange(inter.n_users + 1)).astype(np.int64)
        self.history_indices_ = inter.frame["item"].to_numpy(dtype=np.int32).copy()

        self.test_metrics_ = evaluate_ranking(
            self._holdout_scorer(split.test), split.test, ks=KS, item_popularity=popularity
        )
        pop = Popularity().fit(train_matrix)
        self.baseline_metrics_ = {
            "popularity": evaluate_ranking(
                lambda pos: pop.score(split.test.exclude(pos)), split.test, ks=KS, item_popularity=popularity
            )
        }
        self.split_ = {**split.sizes(), "strategy": split.strategy, "notes": list(split.notes)}
        self.data_report_ = inter.report
        if extra is not None and len(extra):
            self.add_items(extra, item_text=item_text)
        return self

    def _embed(self, texts: list[str]) -> np.ndarray:
        from tunesmith.estimator import embed_texts

        assert self.content_backbone is not None
        untrusted = getattr(self, "_untrusted_backbone", None)
        if untrusted is not None and untrusted == self.content_backbone:
            raise ArtifactError(
                f"this model's content backbone {untrusted!r:.80} is a path named by the folder it was loaded "
                "from; tunesmith never opens such a path on its own",
                hint="Pass it yourself: Recommender.load(folder, content_backbone=...)",
            )
        return np.asarray(embed_texts(texts, self.content_backbone, max_length=64, progress=False), dtype=np.float32)

    def _fit_sasrec(
        self, split: Any, train: Interactions, content: np.ndarray | None
    ) -> tuple[SequentialRecommender, dict[str, Any]]:
        known = np.bincount(train.frame["item"].to_numpy(), minlength=train.n_items) > 0
        cfg = SeqConfig(**{"seed": self.seed, **self.seq})
        model = SequentialRecommender(train.n_items, cfg, content=content, known_items=known, threads=self.threads)
        seqs = train.sequences()
        positives = _flags_by_user(train, train.positive_mask(min_rating=self.min_rating))

        def valid(m: SequentialRecommender) -> float:
            res = evaluate_ranking(lambda pos: m.score([split.valid.sequences[i] for i in pos]), split.valid, ks=(10,))
            return float(res["overall"]["ndcg@10"])

        info: dict[str, Any] = {}
        if self.pretrain:
            r = model.pretrain(seqs, TrainSettings(**{**_PRETRAIN_DEFAULTS, **self.pretrain_settings}), valid_fn=valid)
            info["pretrain"] = {"best_epoch": r.best_epoch, "valid_ndcg@10": r.best_score, "seconds": r.seconds}
            tune = {**_FINETUNE_DEFAULTS, **self.finetune_settings}
        else:
            tune = {**_SCRATCH_DEFAULTS, **self.finetune_settings}
        r = model.finetune(seqs, positives, TrainSettings(**tune), valid_fn=valid)
        info["finetune"] = {"best_epoch": r.best_epoch, "valid_ndcg@10": r.best_score, "seconds": r.seconds}
        return model, info

    def _fit_classic(self, split: Any, train_matrix: sp.csr_matrix) -> tuple[Any, dict[str, Any]]:
        from threadpoolctl import threadpool_limits

        params = dict(self.model_params)
        if self.model == "bpr":
            params.setdefault("seed", self.seed)
        model = _CLASSIC[self.model](**params)
        with threadpool_limits(self.threads):
            if isinstance(model, BPRMF):
                # Early stopping on the validation hold-out, never on the test one.
                def valid(m: BPRMF) -> float:
                    res = evaluate_ranking(lambda pos: m.score(split.valid.exclude(pos)), split.valid, ks=(10,))
                    return float(res["overall"]["ndcg@10"])

                model.fit(train_matrix, valid_fn=valid)
                return model, {"best_epoch": model.best_epoch_}
            model.fit(train_matrix)
        return model, {}

    # --- scoring ---------------------------------------------------------------------------------

    def _require_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this Recommender is not fitted", hint="Call fit() or Recommender.load() first")

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
        self._require_fitted()
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
    ) -> Recommender:
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
        self._require_fitted()
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
        vectors = self._embed(_item_texts(new, item_text).tolist())
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

    # --- persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write a model folder: ``model.safetensors``, ``tunesmith.json`` and ``card.md``; atomically."""
        import torch

        from tunesmith.runs.artifacts import AtomicDirectory, atomic_write_json, json_safe, save_tensors

        self._require_fitted()
        model_arrays, model_settings = self.model_.state()
        arrays = {f"model.{k}": v for k, v in model_arrays.items() if v.size}
        arrays["history.indptr"] = self.history_indptr_
        arrays["history.indices"] = self.history_indices_
        meta = {
            "format_version": FORMAT_VERSION,
            "tunesmith_version": _version(),
            "task": TASK,
            "model": self.model,
            "settings": self.get_params(),
            "model_state": model_settings,
            "columns": getattr(self, "_columns", {}),
            "users": [str(u) for u in self.users_],
            "items": [str(i) for i in self.items_],
            "metrics": self.test_metrics_,
            "baselines": self.baseline_metrics_,
            "split": self.split_,
            "training": self.training_,
            "data": self.data_report_,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        final = Path(path)
        with AtomicDirectory(final, overwrite=overwrite) as tmp:
            tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
            save_tensors(Path(tmp) / "model.safetensors", tensors, {"format": "tunesmith", "task": TASK})
            atomic_write_json(Path(tmp) / "tunesmith.json", json_safe(meta))
            self._save_plots(Path(tmp))
            (Path(tmp) / "card.md").write_text(self.card(figures=True), encoding="utf-8")
        return final

    def _save_plots(self, folder: Path) -> None:
        """Write ``ranking_at_k.png`` and ``ndcg_by_history.png``: the model against its baselines."""
        from tunesmith.runs.plots import plot_metric_by_group, plot_ranking_at_k

        models = {self.model: self.test_metrics_, **self.baseline_metrics_}
        plot_ranking_at_k(models, folder / RANKING_PLOT)
        plot_metric_by_group(models, folder / HISTORY_PLOT, metric="ndcg@10")

    def card(self, figures: bool = False) -> str:
        """A short Markdown report: data, split, and test metrics against popularity.

        With ``figures`` the report links the plots :meth:`save` writes next to it
        (``ranking_at_k.png`` and ``ndcg_by_history.png``).
        """
        self._require_fitted()
        keys = ["hr@10", "ndcg@10", "recall@10", "mrr", "coverage@10"]
        # .get: a loaded model's metrics are whatever its folder recorded (possibly nothing).
        rows = {self.model: _dict_or(self.test_metrics_.get("overall"), {})}
        rows.update({name: _dict_or(m.get("overall"), {}) for name, m in self.baseline_metrics_.items()})
        lines = [
            f"# Recommender: {self.model}",
            "",
            f"{len(self.users_)} users, {len(self.items_)} items, "
            f"{self.data_report_.get('rows_out', '?')} interactions.",
            f"Test: each user's last positive interaction ({self.split_.get('test_users', '?')} users), ranked "
            "against every item the user has not interacted with.",
            "",
            *_markdown_table(rows, keys),
            "",
            "The saved model is the one trained on the split (not refitted on the held-out interactions).",
            "",
        ]
        if figures:
            lines += [
                "## Figures",
                "",
                "Hit rate and NDCG on the test interactions at list lengths k = 5, 10 and 20, "
                "for this model and the baselines:",
                "",
                f"![Ranking quality by cut-off k]({RANKING_PLOT})",
                "",
                "NDCG@10 by how many distinct items are in a user's history (user count under each group; "
                "empty groups left out), for this model and the baselines:",
                "",
                f"![NDCG@10 by history length]({HISTORY_PLOT})",
                "",
            ]
        return "\n".join(lines)

    @classmethod
    def load(cls, path: str | Path, *, content_backbone: str | None = None) -> Recommender:
        """Load a folder written by :meth:`save`.

        The folder is opened through :func:`tunesmith.runs.trust.open_model` (no pickles, code,
        links or files outside it); every field of ``tunesmith.json`` is checked, the id lists
        must agree with the weights, and the model's tensor shapes are compared with the
        safetensors header before anything is built. A content backbone stored as a path is
        never opened: pass ``content_backbone`` (a name or a folder you trust) to use
        :meth:`add_items` on such a model.

        Raises
        ------
        tunesmith.errors.ArtifactError
            The folder is missing, unsafe, damaged, or holds another kind of tunesmith model;
            the message names the file and field.
        """
        from tunesmith.runs.trust import malformed, open_model

        folder, meta = open_model(path)
        file = folder.root / "tunesmith.json"
        task = meta.get("task")
        if task != TASK or meta.get("kind", "recommender") != "recommender":
            raise ArtifactError(
                f"this folder holds a {task!r:.40} model, not a recommendation model",
                path=folder.root,
                hint="Load it with tunesmith.load(), or pass a folder written by Recommender.save",
            )
        version = meta.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ArtifactError(
                f"recommender format version {version!r:.40} is not supported (expected {FORMAT_VERSION})",
                path=file,
                hint="Re-save the model with this tunesmith version",
            )
        with malformed(file):
            return cls._from_folder(folder, meta, content_backbone)

    @classmethod
    def _from_folder(cls, folder: Any, meta: dict[str, Any], content_backbone: str | None) -> Recommender:
        """The recommender of an opened folder; every field is checked before it is used."""
        from tunesmith.backbones import is_registered
        from tunesmith.runs.trust import check_state_shapes, field

        file = folder.root / "tunesmith.json"
        weights = folder.root / "model.safetensors"
        kind = field(meta, "model", str, file=file, choices=MODEL_KINDS)
        settings = dict(field(meta, "settings", dict, file=file))
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ArtifactError(f"field 'settings' holds the unknown setting {unknown[0]!r:.60}", path=file)
        if settings.setdefault("model", kind) != kind:
            raise ArtifactError("fields 'model' and 'settings.model' disagree", path=file)
        stored_backbone = field(meta, "settings.content_backbone", (str, type(None)), file=file, default=None)
        untrusted = None
        if content_backbone is not None:
            settings["content_backbone"] = content_backbone
        elif stored_backbone is not None and not is_registered(stored_backbone):
            # Kept for the record, but never opened: add_items asks for it explicitly.
            untrusted = stored_backbone
        try:
            rec = cls(**settings)
        except ConfigError as exc:
            where = f"settings.{exc.key}" if exc.key else "settings"
            raise ArtifactError(f"field {where!r}: {exc.message}", path=file) from None
        users = _id_list(meta, "users", file)
        items = _id_list(meta, "items", file)
        if not items:
            raise ArtifactError("field 'items' is empty: a recommender needs a catalogue", path=file)
        state = field(meta, "model_state", dict, file=file)
        n_items = field(meta, "model_state.n_items", int, file=file)
        if n_items != len(items):
            raise ArtifactError(
                f"field 'model_state.n_items' is {n_items} but field 'items' lists {len(items)} ids", path=file
            )

        header = folder.header("model.safetensors")
        expected = _state_shapes(kind, state, header, n_items, file)
        n_indices = header["history.indices"].shape if "history.indices" in header else (0,)
        expected["history.indptr"] = (len(users) + 1,)
        expected["history.indices"] = tuple(n_indices) if len(n_indices) == 1 else (-1,)
        check_state_shapes(expected, header, file=weights)
        for key, info in header.items():
            integer = key.startswith("history.") or key.split(".")[-1] in ("indptr", "indices", "known_items")
            if integer != info.dtype.startswith(("I", "U")) or info.dtype == "BOOL":
                raise ArtifactError(f"tensor {key!r} has dtype {info.dtype}, which does not fit it", path=weights)
        arrays = {k: v.numpy() for k, v in folder.tensors("model.safetensors", expected=expected).items()}
        indptr, indices = arrays["history.indptr"], arrays.get("history.indices", np.zeros(0, dtype=np.int32))
        if (
            indptr[0] != 0
            or (np.diff(indptr) < 0).any()
            or indptr[-1] != len(indices)
            or (len(indices) and (indices.min() < 0 or indices.max() >= n_items))
        ):
            raise ArtifactError(
                "tensors 'history.indptr' and 'history.indices' do not describe histories of the catalogue's items",
                path=weights,
            )
        model_arrays = {k[len("model.") :]: v for k, v in arrays.items() if k.startswith("model.")}
        model: Any
        try:
            if kind == "sasrec":
                model = SequentialRecommender.from_state(model_arrays, state)
            else:
                model = model_from_state(model_arrays, state)
        except ArtifactError as exc:
            raise ArtifactError(exc.message, path=exc.path or weights, hint=exc.hint) from None
        rec.model_ = model
        rec.history_indptr_ = indptr.astype(np.int64)
        rec.history_indices_ = indices.astype(np.int32)
        rec.users_ = np.asarray(users, dtype=object)
        rec.items_ = np.asarray(items, dtype=object)
        rec.content_ = model_arrays.get("content")
        rec._untrusted_backbone = untrusted
        # Reports only: shown, never computed on; a value of the wrong shape is dropped.
        rec.test_metrics_ = _dict_or(meta.get("metrics"), {})
        rec.baseline_metrics_ = {k: v for k, v in _dict_or(meta.get("baselines"), {}).items() if isinstance(v, dict)}
        rec.split_ = _dict_or(meta.get("split"), {})
        rec.training_ = _dict_or(meta.get("training"), {})
        rec.data_report_ = _dict_or(meta.get("data"), {})
        rec._columns = _dict_or(meta.get("columns"), {})
        rec.saved_info_ = {k: meta[k] for k in ("tunesmith_version", "created") if isinstance(meta.get(k), str)}
        rec._index()
        return rec


MAX_ITEMS = 50_000_000
"""Most users or items a loaded recommender may list (its id lists and weights must agree too)."""


def _id_list(meta: dict[str, Any], name: str, file: Path) -> list[str]:
    """``meta[name]`` as a list of distinct string ids, or an ArtifactError naming the field."""
    from tunesmith.runs.trust import field

    ids = field(meta, name, list, file=file)
    if len(ids) > MAX_ITEMS:
        raise ArtifactError(f"field {name!r} lists {len(ids):,} ids, over the {MAX_ITEMS:,} limit", path=file)
    if not all(isinstance(x, str) for x in ids):
        bad = next(x for x in ids if not isinstance(x, str))
        raise ArtifactError(f"field {name!r} must list string ids, got {bad!r:.40}", path=file)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for x in ids:
            if x in seen:
                raise ArtifactError(f"field {name!r} lists the id {x!r:.40} twice", path=file)
            seen.add(x)
    return ids


def _state_shapes(
    kind: str, state: dict[str, Any], header: Mapping[str, Any], n_items: int, file: Path
) -> dict[str, tuple[int, ...]]:
    """The safetensors shapes (keys ``model.*``) that the model state in the metadata implies.

    A SASRec network is built on PyTorch's meta device to read its shapes (no memory); the
    classic models' shapes follow from ``n_items`` and their parameters. Lengths the metadata
    cannot know (a sparse matrix's stored values, the training users of BPR) are taken from
    the header and checked for consistency instead.
    """
    from tunesmith.recsys.sequential import SASRecNet
    from tunesmith.runs.trust import field, meta_shapes

    root = {"model_state": state}  # so that refusals name the field as it sits in the file

    def shape(key: str) -> tuple[int, ...] | None:
        info = header.get(f"model.{key}")
        return tuple(info.shape) if info is not None else None

    if kind == "sasrec":
        settings = field(root, "model_state.config", dict, file=file)
        unknown = sorted(set(settings) - {f.name for f in fields(SeqConfig)})
        if unknown:
            raise ArtifactError(f"field 'model_state.config' holds the unknown setting {unknown[0]!r:.60}", path=file)
        # torch.manual_seed takes 64 bits: a larger seed would fail deep inside the build.
        field(root, "model_state.config.seed", int, file=file, default=0, low=-(2**63), high=2**64 - 1)
        try:
            cfg = SeqConfig(**settings)
            cfg.check()
        except ConfigError as exc:
            raise ArtifactError(f"field 'model_state.config.{exc.key}': {exc.message}", path=file) from None
        content = shape("content")
        content_dim = content[1] if content is not None and len(content) == 2 else 0
        # The layer count must agree with the weights before the network is built, even on meta.
        stored = {k.split(".")[4] for k in header if k.startswith("model.net.encoder.layers.")}
        if cfg.layers != len(stored):
            raise ArtifactError(
                f"field 'model_state.config.layers' is {cfg.layers} but the weights hold {len(stored)} layers",
                path=file,
            )
        net = meta_shapes(lambda: SASRecNet(n_items, cfg, content_dim))
        out = {f"model.net.{k}": v for k, v in net.items()}
        out["model.known_items"] = (n_items,)
        if content_dim:
            out["model.content"] = (n_items, content_dim)
        return out
    expected_name = {"ease": "EASE", "bpr": "BPRMF", "itemknn": "ItemKNN", "popularity": "Popularity"}[kind]
    field(root, "model_state.model", str, file=file, choices=(expected_name,))
    if kind == "popularity":
        return {"model.counts": (n_items,)}
    if kind == "ease":
        return {"model.weights": (n_items, n_items)}
    if kind == "itemknn":
        out = {"model.indptr": (n_items + 1,)}
        nnz = shape("indices")
        if nnz is not None or shape("data") is not None:
            out["model.indices"] = nnz if nnz is not None and len(nnz) == 1 else (-1,)
            out["model.data"] = out["model.indices"]
        return out
    factors = field(root, "model_state.params.factors", int, file=file, low=1, high=1 << 16)
    out = {"model.item_factors": (n_items, factors), "model.item_bias": (n_items,)}
    users = shape("user_factors")
    out["model.user_factors"] = (users[0], factors) if users is not None and len(users) == 2 else (-1, factors)
    return out


def _dict_or(value: Any, default: Any) -> Any:
    return value if isinstance(value, dict) else default


def _now() -> float:
    return time.perf_counter()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tunesmith")
    except Exception:
        return "unknown"
