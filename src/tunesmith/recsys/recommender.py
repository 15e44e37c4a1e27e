"""A recommender you fit on an interaction log, score once, save, and serve.

:class:`Recommender` wraps the pieces of :mod:`tunesmith.recsys` into one estimator of the
one contract (:class:`~tunesmith.estimators.base.Estimator`, kind ``recommender``)::

    rec = Recommender("sasrec", min_rating=4).fit("ratings.csv", target="rating")
    rec.test_metrics_["overall"]["ndcg@10"], rec.baseline_metrics_["popularity"]["overall"]["ndcg@10"]
    rec.recommend("user-17", k=10)              # by id: their stored history
    rec.recommend(history=["i3", "i9"], k=10)   # a new user: fold-in, no retraining
    rec.predict(["user-17", "user-3"])          # top-10 item ids per user
    rec.score(held_out_log)                     # NDCG@10 on later interactions
    rec.save("model/")                          # safetensors + JSON, never pickle
    same = tunesmith.load("model/")

``fit`` splits the log with :func:`~tunesmith.recsys.split.leave_last_out` (each user's last
positive is the test target, the one before it the validation target), trains on what comes
before and scores the test hold-out against popularity. The model served afterwards is that
split-trained model: it is *not* refitted on the held-out interactions, so the stored test
metrics describe exactly the model that is saved. Its input at serving time is each user's
full history, held-out interactions included.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from tunesmith.backbones.embed import embed_texts
from tunesmith.data.io import read_table
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.estimators.base import Estimator, fit_arguments, unsupported
from tunesmith.estimators.registry import Kind, register
from tunesmith.recsys import folder as _folder
from tunesmith.recsys import report as _report
from tunesmith.recsys.bpr import BPRMF
from tunesmith.recsys.data import Interactions, k_core, read_features, read_interactions
from tunesmith.recsys.metrics import evaluate_ranking, ranking_metrics
from tunesmith.recsys.models import Popularity
from tunesmith.recsys.ranking import Ranking
from tunesmith.recsys.refitting import LORA_HINT, refit_model
from tunesmith.recsys.sequential import SeqConfig, SequentialRecommender, phase_settings
from tunesmith.recsys.settings import CLASSIC, MODEL_KINDS, RecommenderSettings, check_settings
from tunesmith.recsys.split import RecSplit, leave_last_out
from tunesmith.recsys.training import EpochReporter, flags_by_user, item_texts
from tunesmith.runs.record import RunRecord
from tunesmith.runs.trust import SafeFolder, open_model
from tunesmith.train.callbacks import StopTraining

__all__ = ["FORMAT_VERSION", "MODEL_KINDS", "Recommender"]

FORMAT_VERSION = 2
TASK = _folder.TASK
KS = (5, 10, 20)
RANKING_PLOT = _report.RANKING_PLOT
HISTORY_PLOT = _report.HISTORY_PLOT


class Recommender(Ranking, Estimator):
    """Fit a recommender on an interaction log, compare it with popularity, serve top-k lists.

    Settings (keywords; ``model`` may also come first), validated at construction by
    :class:`~tunesmith.recsys.settings.RecommenderSettings`:

    model:
        ``"sasrec"`` (a sequential transformer, pre-trained on every interaction then
        fine-tuned on the positive ones), ``"ease"``, ``"bpr"``, ``"itemknn"`` or
        ``"popularity"``.
    min_rating:
        Interactions rated at least this are the positives to predict (needs the rating
        column: ``target=`` or ``rating=`` in :meth:`fit`). Without it, a ``label`` column
        decides (1 = positive), else every interaction is positive.
    pretrain:
        SASRec only: pre-train on all interactions before fine-tuning on the positives.
    content_backbone:
        SASRec only: a text backbone (``"minilm-l6"``) that embeds each item's text, so items
        never seen in training can still be recommended (see :meth:`add_items`).
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
    runs_dir, run_name:
        Where each fit writes its run record (``None`` or ``""``: none), and the record's name.

    Fitted attributes end in ``_``: ``model_``, ``users_``, ``items_``, ``test_metrics_``,
    ``baseline_metrics_``, ``split_``, ``data_report_``, ``history_`` (one row per training
    epoch), ``run_dir_``; a loaded model also has ``saved_info_``.
    """

    kind: ClassVar[str] = "recommender"
    needs_target: ClassVar[bool] = False
    settings_model = RecommenderSettings

    saved_info_: dict[str, str]
    refit_info_: dict[str, Any]
    # A content backbone path read from a loaded folder: never opened unless passed again.
    _untrusted_backbone: str | None = None

    def __init__(self, model: str = "sasrec", **settings: Any) -> None:
        self._config = check_settings({"model": model, **settings})
        super().__init__(model=model, **settings)

    def set_params(self, **params: Any) -> Recommender:
        """Change settings; the whole set is checked again before anything changes."""
        self._config = check_settings({**self._params, **params})
        super().set_params(**params)
        return self

    @property
    def config(self) -> RecommenderSettings:
        """The resolved settings (defaults filled in, ``k_core`` as a dict)."""
        return self._config

    model = property(lambda self: self._config.model, doc="The model kind (a setting).")
    min_rating = property(lambda self: self._config.min_rating, doc="Positive threshold (a setting).")
    pretrain = property(lambda self: self._config.pretrain, doc="SASRec pre-training on (a setting).")
    content_backbone = property(lambda self: self._config.content_backbone, doc="Item text backbone (a setting).")
    k_core = property(lambda self: self._config.k_core, doc="k-core filter (a setting, as a dict).")
    seed = property(lambda self: self._config.seed, doc="Random seed (a setting).")
    threads = property(lambda self: self._config.threads, doc="Compute threads (a setting).")

    def __repr__(self) -> str:
        fitted = f", {len(self.items_)} items, {len(self.users_)} users" if self.is_fitted else ""
        return f"Recommender(model={self.model!r}{fitted})"

    # --- fitting ---------------------------------------------------------------------------------

    def fit(
        self,
        data: str | Path | pd.DataFrame | None = None,
        y: Any = None,
        *,
        target: str | None = None,
        eval_set: Any = None,
        test_set: Any = None,
        callbacks: Sequence[Any] | None = None,
        user: str = "user_id",
        item: str = "item_id",
        time: str | None = "timestamp",
        rating: str | None = None,
        label: str | None = None,
        items: str | Path | pd.DataFrame | None = None,
        item_key: str = "item_id",
        item_text: Sequence[str] | None = None,
        log: str | Path | pd.DataFrame | None = None,
    ) -> Recommender:
        """Read the interaction log ``data``, split it, train, score the test hold-out; returns ``self``.

        ``target`` names the column that decides which interactions are positives: with
        ``min_rating`` set it is the rating column (the same as ``rating=``), otherwise a 0/1
        label column (the same as ``label=``); without either every interaction is positive.
        ``y`` is refused: a recommender learns from a table of interactions, not from arrays.
        The validation and test hold-outs are each user's last positives (leave-last-out), so
        ``eval_set`` and ``test_set`` are not taken.

        ``callbacks`` (:class:`~tunesmith.train.callbacks.Callback`) get
        ``on_epoch_end(state, metrics)`` after every training epoch, ``metrics`` holding
        ``valid_ndcg@10`` (on epochs that validate) and ``loss``; models trained in one step
        call it once. A :class:`~tunesmith.train.callbacks.StopTraining` ends training with the
        best epoch kept; ``optuna.TrialPruned`` ends the fit.

        ``items`` is an item table (file or DataFrame, one row per ``item_key``); with a
        ``content_backbone`` the ``item_text`` columns (default: all) are joined into each
        item's text and embedded. Items in the table but not in the log are added as cold
        items (:meth:`add_items`).

        Raises
        ------
        tunesmith.errors.DataError
            A column not found, a bad value (naming the row), or too few interactions to split.
        tunesmith.errors.ConfigError
            ``min_rating`` without a rating column, ``content_backbone`` without ``items``,
            ``y=``, or ``target=`` together with ``rating=``/``label=``.
        """
        if log is not None:
            if data is not None:
                raise ConfigError("both data and log= were given; they mean the same table", key="log")
            data = log
        args = fit_arguments(self, data, y, target=target, eval_set=eval_set, test_set=test_set, callbacks=callbacks)
        rating, label = self._target_columns(args, rating, label)
        if self.min_rating is not None and rating is None:
            raise ConfigError("min_rating needs a rating column", key="min_rating", hint="Pass target=<rating column>")
        if self.content_backbone is not None and items is None:
            raise ConfigError(
                "a content backbone needs an item table to embed",
                key="content_backbone",
                hint="Pass items=<file or DataFrame> (and item_text=[columns])",
            )
        if isinstance(item_text, str):
            item_text = [item_text]
        inter = read_interactions(args.data, user=user, item=item, time=time, rating=rating, label=label)
        if self.k_core is not None:
            inter = k_core(inter, **self.k_core)
        positive = inter.positive_mask(min_rating=self.min_rating)
        split = leave_last_out(inter, positive=positive)
        self._columns = {"user": user, "item": item, "time": time, "rating": rating, "label": label}
        content, extra = self._content(inter, items, item_key, item_text)

        record = self._open_record(args.data)
        reporter = EpochReporter(args.callbacks, record=record, enabled=self._config.progress)
        started = _now()
        train_matrix = split.train.matrix()
        popularity = np.asarray(train_matrix.sum(axis=0)).ravel()
        with reporter:
            if self.model == "sasrec":
                self.model_, self.training_ = self._fit_sasrec(split, split.train, content, reporter)
            else:
                self.model_, self.training_ = self._fit_classic(split, train_matrix, reporter)
        self.training_["seconds"] = _now() - started
        self.history_ = reporter.history

        self.users_ = np.asarray(inter.users, dtype=object)
        self.items_ = np.asarray(inter.items, dtype=object)
        self._index()
        self.content_ = content
        user_codes = inter.frame["user"].to_numpy()
        self.history_indptr_ = np.searchsorted(user_codes, np.arange(inter.n_users + 1)).astype(np.int64)
        self.history_indices_ = inter.frame["item"].to_numpy(dtype=np.int32).copy()
        self._score_test(split, train_matrix, popularity)
        self.data_report_ = inter.report
        if extra is not None and len(extra):
            self.add_items(extra, item_text=item_text)
        self.run_dir_: Path | None = None
        if record is not None:
            self._finish_record(record, args.data)
        return self

    def _target_columns(self, args: Any, rating: str | None, label: str | None) -> tuple[str | None, str | None]:
        """The rating and label columns, with ``target=`` standing for the one the settings use."""
        if args.y is not None:
            raise ConfigError(
                "a recommender learns from an interaction table, not from y",
                key="y",
                hint="Pass the log as data and name the positive-deciding column with target=",
            )
        if args.eval_set is not None or args.test_set is not None:
            raise unsupported(
                self,
                "eval_set= and test_set=",
                "The recommender holds out each user's last positives itself; score later logs with score()",
            )
        if args.target is None:
            return rating, label
        if rating is not None or label is not None:
            raise ConfigError(
                "target= names the rating or label column; give it once", key="target", hint="Drop rating=/label="
            )
        return (args.target, None) if self.min_rating is not None else (None, args.target)

    def _content(
        self, inter: Interactions, items: Any, item_key: str, item_text: Sequence[str] | None
    ) -> tuple[np.ndarray | None, pd.DataFrame | None]:
        """Content vectors of the log's items (with a content backbone) and the table's extra items."""
        if items is None:
            return None, None
        features = read_features(items, item_key)
        if self.content_backbone is None:
            return None, None
        texts = item_texts(features, item_text, file=items if isinstance(items, (str, Path)) else None)
        known_ids = pd.Index(inter.items.astype(str))
        missing = ~known_ids.isin(features.index)
        if missing.any():
            warnings.warn(
                f"{int(missing.sum())} items of the log are not in the item table; they get an empty text",
                stacklevel=3,
            )
        content = self._embed(texts.reindex(known_ids).fillna("").tolist())
        return content, features.loc[~features.index.isin(known_ids)]

    def _embed(self, texts: list[str]) -> np.ndarray:
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
        self, split: RecSplit, train: Interactions, content: np.ndarray | None, reporter: EpochReporter
    ) -> tuple[SequentialRecommender, dict[str, Any]]:
        cfg_ = self._config
        known = np.bincount(train.frame["item"].to_numpy(), minlength=train.n_items) > 0
        cfg = SeqConfig(**{"seed": self.seed, **(cfg_.seq or {})})
        model = SequentialRecommender(train.n_items, cfg, content=content, known_items=known, threads=self.threads)
        seqs = train.sequences()
        positives = flags_by_user(train, train.positive_mask(min_rating=self.min_rating))

        def valid(m: SequentialRecommender) -> float:
            res = evaluate_ranking(lambda pos: m.score([split.valid.sequences[i] for i in pos]), split.valid, ks=(10,))
            return float(res["overall"]["ndcg@10"])

        pre, tune = phase_settings(self.pretrain, cfg_.pretrain_settings, cfg_.finetune_settings)
        reporter.start(model.net, (pre.epochs if self.pretrain else 0) + tune.epochs)
        info: dict[str, Any] = {}
        if self.pretrain:
            r = model.pretrain(seqs, pre, valid_fn=valid, on_epoch=reporter.phase("pretrain"))
            info["pretrain"] = {"best_epoch": r.best_epoch, "valid_ndcg@10": r.best_score, "seconds": r.seconds}
            if r.stop_reason:
                # A callback ended training: it ends the fit's training, not one phase of it.
                info["stop_reason"] = r.stop_reason
                return model, info
        r = model.finetune(seqs, positives, tune, valid_fn=valid, on_epoch=reporter.phase("finetune"))
        info["finetune"] = {"best_epoch": r.best_epoch, "valid_ndcg@10": r.best_score, "seconds": r.seconds}
        if r.stop_reason:
            info["stop_reason"] = r.stop_reason
        return model, info

    def _fit_classic(
        self, split: RecSplit, train_matrix: sp.csr_matrix, reporter: EpochReporter
    ) -> tuple[Any, dict[str, Any]]:
        params = dict(self._config.model_params or {})
        if self.model == "bpr":
            params.setdefault("seed", self.seed)
        model = CLASSIC[self.model](**params)

        def valid(m: Any) -> float:
            # Early stopping and pruning on the validation hold-out, never on the test one.
            res = evaluate_ranking(lambda pos: m.score(split.valid.exclude(pos)), split.valid, ks=(10,))
            return float(res["overall"]["ndcg@10"])

        with threadpool_limits(self.threads):
            if isinstance(model, BPRMF):
                reporter.start(model, model.epochs)
                model.fit(train_matrix, valid_fn=valid, on_record=reporter.phase("train"))
                info: dict[str, Any] = {"best_epoch": model.best_epoch_}
                if model.stop_reason_:
                    info["stop_reason"] = model.stop_reason_
                return model, info
            reporter.start(model, 1)
            model.fit(train_matrix)
            # One step, no epochs: the callbacks hear of it once.
            with contextlib.suppress(StopTraining):
                reporter.phase("train")({"epoch": 1, "valid": valid(model)})
        return model, {}

    def _score_test(self, split: RecSplit, train_matrix: sp.csr_matrix, popularity: np.ndarray) -> None:
        test = evaluate_ranking(
            self._holdout_scorer(split.test), split.test, ks=KS, item_popularity=popularity, per_user=True
        )
        pop = Popularity().fit(train_matrix)
        baseline = evaluate_ranking(
            lambda pos: pop.score(split.test.exclude(pos)), split.test, ks=KS, item_popularity=popularity, per_user=True
        )
        per_user, pop_per_user = test.pop("per_user"), baseline.pop("per_user")
        self.test_metrics_, self.baseline_metrics_ = test, {"popularity": baseline}
        # Resampling the test users: 95% intervals, and the paired gain over popularity.
        self.intervals_ = _report.add_test_intervals(
            self.test_metrics_, self.baseline_metrics_, per_user, {"popularity": pop_per_user}
        )
        self.split_ = {**split.sizes(), "strategy": split.strategy, "notes": list(split.notes)}

    def refit(
        self, data: Any, y: Any = None, *, replay: Any = None, target: str | None = None, **settings: Any
    ) -> Recommender:
        """A copy continued on the new interaction log ``data`` (the challenger); ``self`` is left as it is.

        ``data`` has the columns :meth:`fit` read and may hold users and items the model never
        saw: their rows are added (the current ones copied). Each user's stored history gets the
        new interactions appended. ``replay`` is the old log (or part of it); ``settings`` are
        fields of :class:`~tunesmith.train.continual.RefitSettings`. BPR-MF and SASRec continue
        training (fewer epochs, early stopping on the new log's held-out positives, L2-SP and
        WiSE-FT per ``method``); EASE, item-kNN and popularity are solved again on old + new.
        ``refit_info_`` records what was done (saved under ``refit``); the copy's test metrics
        are on each user's last positive of the new log. See :mod:`tunesmith.recsys.refitting`.

        Raises:
            DataError: an empty log, a column not found (named), a new log too short to hold out.
            NotSupportedError: ``method='lora'``.
        """
        self._check_fitted()
        if settings.get("method") == "lora":
            raise unsupported(self, "refit method 'lora'", LORA_HINT)
        started = _now()
        done = refit_model(self, data, y, replay=replay, target=target, settings=settings)
        new = type(self)(**self.get_params())
        new.model_, new.users_, new.items_, new.content_ = done.model, done.users, done.items, done.content
        new.history_indptr_, new.history_indices_ = done.history_indptr, done.history_indices
        new._columns, new._untrusted_backbone = dict(self._columns), self._untrusted_backbone
        new.training_, new.history_, new.data_report_ = done.training, done.history, done.data_report
        new._index()
        new._score_test(done.split, done.train_matrix, np.asarray(done.train_matrix.sum(axis=0)).ravel())
        new.run_dir_ = None
        new.refit_info_ = {**done.info, "seconds": _now() - started}
        return new

    # --- the run record --------------------------------------------------------------------------

    def _open_record(self, data: Any) -> RunRecord | None:
        if not self._config.runs_dir:
            return None
        name = self._config.run_name or f"recommender-{self.model}"
        record = RunRecord.create(self._config.runs_dir, name)
        record.write_config({**self._config.model_dump(mode="json"), "columns": getattr(self, "_columns", {})})
        return record

    def _finish_record(self, record: RunRecord, data: Any) -> None:
        info = _report.data_info(data, self.data_report_, self.split_)
        _report.write_run_files(
            record,
            info=info,
            seed=self.seed,
            metrics={
                "test": self.test_metrics_,
                "baselines": self.baseline_metrics_,
                "training": self.training_,
                "intervals": {k: v for k, v in self.intervals_.items() if k not in ("gains", "warnings")} or None,
                "gains": self.intervals_.get("gains", {}),
                "warnings": self.intervals_.get("warnings", []),
            },
            history=self.history_,
            model=self.model,
            test_metrics=self.test_metrics_,
            baselines=self.baseline_metrics_,
            report_md=self.card(figures=True),
        )
        self.run_dir_ = record.path

    # --- the contract: predict, score, evaluate ------------------------------------------------

    def _users_of(self, data: Any) -> list[Any]:
        """User ids of ``data``: a sequence of ids, or a table (DataFrame or file) with the user column."""
        if isinstance(data, (str, Path)):
            data = read_interactions_table(data)
        if isinstance(data, pd.DataFrame):
            column = str(getattr(self, "_columns", {}).get("user") or "user_id")
            if column not in data.columns:
                raise DataError(
                    f"user column {column!r} not found",
                    column=column,
                    hint=f"The table has: {', '.join(map(str, data.columns))}",
                )
            return data[column].tolist()
        if isinstance(data, (bytes, np.generic)) or not isinstance(data, (Sequence, np.ndarray, pd.Series)):
            raise ConfigError("predict takes a list of user ids or a table with the user column", key="data")
        return list(data)

    def predict(self, data: Any, *, k: int = 10) -> np.ndarray:
        """The top ``k`` item ids for each user of ``data`` (one entry per row), best first.

        ``data`` is a list of user ids, or a table (DataFrame or file) with the fit's user
        column. Returns an object array whose entries are lists of item ids; for scores too,
        use :meth:`recommend_batch`.

        Raises:
            DataError: a user not in the training log.
        """
        lists = self.recommend_batch(users=self._users_of(data), k=k)
        out = np.empty(len(lists), dtype=object)
        for i, row in enumerate(lists):
            out[i] = [r["item"] for r in row]
        return out

    def predict_proba(self, data: Any) -> np.ndarray:
        """Not offered: a recommender ranks items, it does not give class probabilities."""
        raise unsupported(self, "predict_proba", "Use recommend() or predict()")

    def embed(self, data: Any, *, max_rows: int | None = None) -> np.ndarray:
        """Not offered: a recommender's rows are users, whose factors are not a representation of inputs."""
        raise unsupported(self, "embed", "Recommenders are monitored on users, items and recommended items")

    def evaluate(self, data: Any, *, ks: Sequence[int] = KS, **columns: Any) -> dict[str, Any]:
        """Full-ranking metrics (:func:`~tunesmith.recsys.metrics.ranking_metrics`) on held-out interactions.

        ``data`` is a later interaction log (file or DataFrame, read with the fit's columns
        unless ``columns`` say otherwise: ``user=``, ``item=``, ``time=``, ``rating=``,
        ``label=``). Each known user's positive interactions in it are the items to find; the
        ranking uses the user's stored history and excludes it. Unknown users and items are
        left out (counted in ``left_out``).
        """
        self._check_fitted()
        cols = {**{"user": "user_id", "item": "item_id", "time": None}, **getattr(self, "_columns", {}), **columns}
        inter = read_interactions(
            data,
            user=cols["user"],
            item=cols["item"],
            time=cols.get("time"),
            rating=cols.get("rating"),
            label=cols.get("label"),
            duplicates="keep",
        )
        positive = inter.positive_mask(min_rating=self.min_rating)
        frame = inter.frame.loc[positive]
        users = [self._user_code.get(str(u)) for u in inter.users[frame["user"].to_numpy()]]
        items = [self._item_code.get(str(i)) for i in inter.items[frame["item"].to_numpy()]]
        targets: dict[int, set[int]] = {}
        left_out = 0
        for u, i in zip(users, items, strict=True):
            if u is None or i is None:
                left_out += 1
                continue
            targets.setdefault(u, set()).add(i)
        if not targets:
            raise DataError(
                "no positive interaction of a known user with a known item to score",
                hint="Score a later log of the users and items the model was trained on",
            )
        codes = sorted(targets)
        histories = [self._user_history(self.users_[c]) for c in codes]
        scores = self._score_codes(histories)
        rows = np.repeat(np.arange(len(codes)), [len(h) for h in histories])
        cols_ = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int32)
        seen = sp.csr_matrix((np.ones(len(cols_)), (rows, cols_)), shape=scores.shape)
        metrics = ranking_metrics(scores, seen, [np.asarray(sorted(targets[c])) for c in codes], ks=ks)
        return {**metrics, "left_out": left_out}

    def score(self, data: Any, y: Any = None, *, target: str | None = None, k: int = 10) -> float:
        """NDCG@``k`` on held-out interactions (higher is better); see :meth:`evaluate`.

        ``target`` names the column deciding positives, as in :meth:`fit`.
        """
        if y is not None:
            raise ConfigError("a recommender is scored on an interaction table, not on y", key="y")
        columns: dict[str, Any] = {}
        if target is not None:
            columns = {"rating": target} if self.min_rating is not None else {"label": target}
        return float(self.evaluate(data, ks=(k,), **columns)[f"ndcg@{k}"])

    # --- persistence -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write a model folder: ``model.safetensors``, ``tunesmith.json``, ``card.md`` and plots; atomically."""
        self._check_fitted()
        model_arrays, model_settings = self.model_.state()
        meta = _folder.folder_meta(
            model=self.model,
            settings=self.get_params(),
            model_settings=model_settings,
            columns=getattr(self, "_columns", {}),
            users=self.users_,
            items=self.items_,
            metrics=self.test_metrics_,
            baselines=self.baseline_metrics_,
            split=self.split_,
            training=self.training_,
            data=self.data_report_,
            refit=getattr(self, "refit_info_", None),
        )

        def extras(folder: Path) -> None:
            _report.save_plots(self.model, self.test_metrics_, self.baseline_metrics_, folder)
            (folder / "card.md").write_text(self.card(figures=True), encoding="utf-8")

        return _folder.write_folder(
            path,
            overwrite=overwrite,
            model_state=(model_arrays, model_settings),
            history=(self.history_indptr_, self.history_indices_),
            meta=meta,
            write_extras=extras,
        )

    def card(self, figures: bool = False) -> str:
        """A short Markdown report: data, split, and test metrics against popularity.

        With ``figures`` the report links the plots :meth:`save` writes next to it
        (``ranking_at_k.png`` and ``ndcg_by_history.png``).
        """
        self._check_fitted()
        return _report.card(
            self.model,
            self.test_metrics_,
            self.baseline_metrics_,
            n_users=len(self.users_),
            n_items=len(self.items_),
            data_report=self.data_report_,
            split=self.split_,
            figures=figures,
        )

    @classmethod
    def load(cls, path: str | Path, *, content_backbone: str | None = None) -> Recommender:
        """Load a folder written by :meth:`save` (format version 1 or 2).

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
        folder, meta = open_model(path)
        return _open(folder, meta, content_backbone=content_backbone)


def _open(folder: SafeFolder, meta: dict[str, Any], *, content_backbone: str | None = None) -> Recommender:
    """The registry's loader: a recommender from an opened folder and its ``tunesmith.json``."""
    rec: Recommender = _folder.read_folder(folder, meta, content_backbone, Recommender)
    return rec


def read_interactions_table(path: str | Path) -> pd.DataFrame:
    """A table file read as it is (for the user ids :meth:`Recommender.predict` takes)."""
    return read_table(path)


def _now() -> float:
    return time.perf_counter()


register(
    Kind(
        name="recommender",
        estimator=Recommender,
        open=_open,
        summary="Top-k recommendations from an interaction log (SASRec, EASE, BPR-MF, item-kNN, popularity)",
        options=("content_backbone",),
        serving="recommend",
        classifier=False,
    )
)
