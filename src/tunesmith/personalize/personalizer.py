"""Per-user and per-segment head adapters over a saved shared text classifier.

:class:`Personalizer` reads each row's encoder features and shared logits from the saved
model once (each distinct input text is embedded once), then trains one head adapter per
user with at least ``min_rows`` labeled rows, and one per segment, on the earlier part of
that user's (or segment's) rows in time order; the later ``valid_fraction`` decides whether
the adapter is used. Prediction routes each row: the user's adapter, else the segment's,
else the shared model, and says which (:meth:`Personalizer.predict_routed`).

It follows the one estimator contract (kind ``personalized``): the constructor only checks
and stores settings; the shared model is loaded and the store opened on first use.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from tunesmith.data.io import read_table
from tunesmith.data.schema import label_string, require_column
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.estimators.base import Estimator, fit_arguments, unsupported
from tunesmith.estimators.record import write_fit_record
from tunesmith.estimators.registry import Kind, register
from tunesmith.estimators.text import FineTuner
from tunesmith.personalize.evaluation import evaluate_personalizer
from tunesmith.personalize.head import (
    HeadAdapter,
    fit_head_adapter,
    validate_head_adapter,
)
from tunesmith.personalize.joint import JointAdapterSettings, JointVector, item_ids
from tunesmith.personalize.joint_training import best_kind, joint_candidates, log_loss_of
from tunesmith.personalize.lora import (
    LoraAdapter,
    last_ffn_output,
    lora_logits,
)
from tunesmith.personalize.refitting import refit_adapters, refit_folder
from tunesmith.personalize.report import adapters_section, fit_info, write_report
from tunesmith.personalize.routing import AdapterRouting
from tunesmith.personalize.settings import (
    MAX_STEPS,
    SETTINGS_FILE,
    PersonalizerSettings,
    adapter_kinds,
    check_settings,
    joint_settings,
    load_settings,
    settings_record,
    softmax,
    store_params,
    time_ordered_holdout,
)
from tunesmith.personalize.store import ADAPTER_KINDS, JOINT_KEY, AdapterDims, AdapterStore, adapter_key
from tunesmith.progress import progress
from tunesmith.runs.artifacts import AtomicDirectory, atomic_write_json
from tunesmith.runs.fingerprint import model_version
from tunesmith.runs.record import RunRecord
from tunesmith.runs.trust import SafeFolder

logger = logging.getLogger("tunesmith.personalize")

__all__ = [
    "ADAPTER_KINDS",
    "MAX_STEPS",
    "SETTINGS_FILE",
    "Personalizer",
    "load_settings",
    "time_ordered_holdout",
    "write_report",
]


class Personalizer(AdapterRouting, Estimator):
    """Head adapters per user (and per segment) on top of a saved text classifier.

    Parameters
    ----------
    base:
        Folder of a saved :class:`~tunesmith.FineTuner` classification model (the shared model).
    store:
        Folder of the adapter store (created or reused; refused if built for another model).
    user_column, segment_column, time_column:
        Columns naming each row's user, its segment (optional) and its time (optional; row
        order otherwise).
    min_rows:
        Labeled rows a user or segment needs for an adapter; others fall back.
    valid_fraction:
        The latest share of each user's rows that validates its adapter.
    rank, l2, steps, lr, seed:
        Head adapter training (:class:`~tunesmith.personalize.HeadAdapterSettings`).
    adapter_kind, lora_rank, lora_alpha, lora_steps, lora_lr:
        ``head`` (over cached features) or ``lora`` (on the encoder's last block) and LoRA training.
    progress:
        Show progress while features are computed and adapters trained.
    runs_dir, run_name:
        Where each fit writes its run record (``runs_dir/<time>-<run_name>/``: resolved config,
        data SHA-256 and rows, dropped rows by reason, environment, each adapter's training and
        validation summary, ``report.md``), and its name; ``None`` or ``""`` writes none.
        ``run_dir_`` is the folder written.
    feature_cache:
        Not a setting (``get_params`` leaves it out, a clone starts without it): the shared
        model's features and logits per input text. Give one dict to several Personalizers of
        the same shared model so each text is embedded once.

    The constructor only checks and stores these; the shared model is loaded and the store
    opened on first use (:meth:`fit`, :meth:`predict`, :meth:`from_store`, or the ``base`` and
    ``store`` attributes, which are the loaded model and the opened store).
    """

    kind: ClassVar[str] = "personalized"
    needs_target: ClassVar[bool] = False
    # Fitted by fit() or from_store(): opening the store on first use (a predict before fit)
    # must not make an unfitted Personalizer answer with the shared model alone.
    fitted_attribute: ClassVar[str] = "store_folder_"
    settings_model = PersonalizerSettings
    refit_info_: dict[str, Any]  # set by refit() (and a load of what one wrote)

    def __init__(
        self,
        base: str | os.PathLike[str] | None = None,
        store: str | os.PathLike[str] | None = None,
        *,
        feature_cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        **settings: Any,
    ) -> None:
        given = {k: v for k, v in (("base", base), ("store", store)) if v is not None}
        self._config, self.settings, self.lora_settings = check_settings({**given, **settings})
        self.joint_settings: JointAdapterSettings = joint_settings(self._config)
        super().__init__(**given, **settings)
        # Not a setting: an optimisation shared between Personalizers of one shared model, so a
        # clone starts with an empty cache of its own (same results, computed again).
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = feature_cache if feature_cache is not None else {}
        self._adapters: dict[str, HeadAdapter | LoraAdapter | JointVector] = {}
        self._refresh_error: str | None = None
        self._joint_part = None

    def set_params(self, **params: Any) -> Personalizer:
        """Change settings (checked as a whole first); the shared model and store open again on next use."""
        self._config, self.settings, self.lora_settings = check_settings({**self._params, **params})
        self.joint_settings = joint_settings(self._config)
        super().set_params(**params)
        for name in ("store_", "store_folder_", "base_model_", "labels_", "base_fingerprint_"):
            self.__dict__.pop(name, None)
        self._adapters = {}
        return self

    # The settings, read as attributes.
    adapter_kind = property(lambda self: self._config.adapter_kind)
    adapter_kinds = property(lambda self: adapter_kinds(self._config.adapter_kind))
    item_column = property(lambda self: self._config.item_column)
    local_min_rows = property(lambda self: self._config.local_min_rows)
    feature_dtype = property(lambda self: self._config.feature_dtype)
    user_column = property(lambda self: self._config.user_column)
    segment_column = property(lambda self: self._config.segment_column)
    time_column = property(lambda self: self._config.time_column)
    min_rows = property(lambda self: self._config.min_rows)
    valid_fraction = property(lambda self: self._config.valid_fraction)
    seed = property(lambda self: self._config.seed)
    progress = property(lambda self: self._config.progress)

    @property
    def base_path(self) -> Path:
        """The shared model folder (the ``base`` setting)."""
        return Path(self._config.base)

    @property
    def base(self) -> Any:
        """The shared model (a text :class:`FineTuner`), loaded on first use."""
        return self._open().base_model_

    @property
    def store(self) -> AdapterStore:
        """The adapter store, opened on first use (created if absent)."""
        return self._open().store_

    @property
    def labels(self) -> list[str]:
        """The shared model's class labels."""
        return self._open().labels_

    @property
    def base_fingerprint(self) -> str:
        """``sha256:`` and the shared model's weights hash: the store refuses adapters of another model."""
        return self._open().base_fingerprint_

    def _open(self) -> Personalizer:
        """Load the shared model and open the store (once); what the constructor leaves to first use.

        Raises:
            ConfigError: the shared model is not a classifier, or has no block for LoRA adapters.
            ArtifactError: the shared model or the store is refused.
        """
        if "store_" in self.__dict__:
            return self
        ft = FineTuner.load(self.base_path)
        if ft.schema_ is None or ft.schema_.task == "regression":
            raise ConfigError("personalisation needs a classification model as the shared model", key="base")
        if "lora" in self.adapter_kinds:
            last_ffn_output(ft.backbone_)  # refused now, before fit removes anything
        self.base_model_ = ft
        self.labels_ = list(ft.schema_.labels or [])
        self.base_fingerprint_ = "sha256:" + model_version(self.base_path)
        # The widths every adapter of this shared model has: each adapter file's header is
        # checked against them before any of its tensors is read.
        self.store_ = AdapterStore(self._config.store, self.base_fingerprint_, dims=self._dims())
        return self

    def _dims(self) -> AdapterDims:
        """The widths of this shared model's adapters (the LoRA ones ``None`` if it has no block for them)."""
        ft = self.base_model_
        assert ft.model_ is not None
        linear = getattr(ft.model_.head, "linear", None)
        outputs = int(linear.out_features) if isinstance(linear, torch.nn.Linear) else len(self.labels)
        try:
            dense = last_ffn_output(ft.backbone_).get_submodule("dense")
        except (ConfigError, AttributeError):
            dense = None
        if not isinstance(dense, torch.nn.Linear):
            return AdapterDims(int(ft.backbone_.hidden_size), outputs)
        return AdapterDims(int(ft.backbone_.hidden_size), outputs, int(dense.in_features), int(dense.out_features))

    # --- shared model ------------------------------------------------------------------------

    def _targets(self, df: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
        """Class indices and a mask of rows whose label the shared model knows (others are dropped, counted)."""
        index = {name: i for i, name in enumerate(self.labels)}
        raw = df[target]
        names = [None if pd.isna(v) else label_string(v) for v in raw.tolist()]
        known = np.array([n is not None and n in index for n in names], dtype=bool)
        y = np.array([index[n] if k and n is not None else -1 for n, k in zip(names, known, strict=True)])
        return y.astype(np.int64), known

    # --- training ----------------------------------------------------------------------------

    def fit(
        self,
        data: pd.DataFrame | str | os.PathLike[str],
        y: Any = None,
        *,
        target: str | None = None,
        eval_set: Any = None,
        test_set: Any = None,
        callbacks: Sequence[Any] | None = None,
        users: list[Any] | None = None,
    ) -> Personalizer:
        """Train (or retrain) adapters on labeled rows; with ``users``, only those users' adapters change.

        ``target`` is the label column (default: the shared model's target column). Each
        adapter is validated on the latest ``valid_fraction`` of its own rows, so ``eval_set``
        and ``test_set`` are not taken (score held-out rows with :meth:`evaluate`); adapters
        train in a few closed steps, without epochs to report to ``callbacks``.
        """
        args = fit_arguments(self, data, y, target=target, eval_set=eval_set, test_set=test_set, callbacks=callbacks)
        if args.y is not None:
            raise ConfigError("the labels are a column of data, not y", key="y", hint="Name it with target=")
        if args.eval_set is not None or args.test_set is not None or args.callbacks:
            raise unsupported(
                self,
                "eval_set=, test_set= and callbacks=",
                "Adapters validate on each user's latest rows; score held-out rows with evaluate()",
            )
        self._open()
        self.__dict__.pop("refit_info_", None)  # a fit's adapters are no refit's
        started = time.perf_counter()
        df, file = self._read(args.data)
        read = df
        assert self.base.schema_ is not None
        target = self.base.schema_.target
        if args.target is not None and args.target != target:
            require_column(df, args.target, "target", file)
            df = df.assign(**{target: df[args.target]})
        require_column(df, self.user_column, "user", file)
        require_column(df, target, "target", file)
        if self.segment_column:
            require_column(df, self.segment_column, "segment", file)
        y, known = self._targets(df, target)
        self.dropped_ = {"unknown_or_missing_label": int((~known).sum())}
        df, y = df.loc[known].reset_index(drop=True), y[known]
        kinds = self.adapter_kinds
        if self.item_column and "joint" in kinds:
            require_column(df, self.item_column, "item", file)
        cached = "head" in kinds or "joint" in kinds
        features, logits = self.shared_outputs(df, training=True) if cached else (None, None)
        report: dict[str, Any] = {"user": {}, "segment": {}}
        wanted = None if users is None else {str(u) for u in users}
        groups: list[tuple[str, str | None]] = [("user", self.user_column)]
        if self.segment_column and users is None:
            groups.append(("segment", self.segment_column))
        plan: list[tuple[str, str, str, np.ndarray, np.ndarray]] = []
        trained: dict[str, dict[str, Any]] = {}
        by_user = time_ordered_holdout(df, self.user_column, self.valid_fraction, self.time_column)
        for level, column in groups:
            assert column is not None
            # Joint adapters of users and segments are trained together, so both validate on the
            # same rows: each user's latest.
            joint = "joint" in kinds or level == "user"
            held = by_user if joint else time_ordered_holdout(df, column, self.valid_fraction, self.time_column)
            keys = df[column].astype(str).to_numpy()
            for value in pd.unique(keys):
                if wanted is not None and value not in wanted:
                    continue
                rows = keys == value
                train, valid = rows & ~held, rows & held
                key = adapter_key(level, value, column if level == "segment" else None)
                if rows.sum() < self.min_rows or not valid.any():
                    report[level][value] = {"rows": int(rows.sum()), "adapter": False}
                    if key in self.store:
                        self.store.delete(key)  # too few rows now: the stale adapter must not answer
                    continue
                plan.append((level, str(value), key, np.flatnonzero(train), np.flatnonzero(valid)))
        with self.store.deferred():
            joint_candidates = self._joint_candidates(df, y, features, logits, by_user, plan, fold=users is not None)
            bar = progress(f"{self.adapter_kind} adapters", len(plan), unit="adapters",
                           enabled=self.progress and len(plan) > 2)  # fmt: skip
            with bar as advance:
                for level, value, key, train_idx, valid_idx in plan:
                    candidates: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]] = {}
                    if key in joint_candidates:
                        c = joint_candidates[key]
                        candidates["joint"] = (c.tensors, c.check, c.settings)
                    # Beside joint adapters, a user's own head or LoRA adapter is tried only with
                    # rows enough to learn more than the shared taste vector already says.
                    local = len(kinds) == 1 or len(train_idx) + len(valid_idx) >= self.local_min_rows
                    if "head" in kinds and local and features is not None and logits is not None:
                        head = fit_head_adapter(
                            features[train_idx], logits[train_idx], y[train_idx], self.settings, seed=self.seed
                        )
                        check = validate_head_adapter(head, features[valid_idx], logits[valid_idx], y[valid_idx])
                        candidates["head"] = (head.tensors(), check, self.settings.__dict__)
                    if "lora" in kinds and local:
                        lora, check = self._fit_lora(df, y, train_idx, valid_idx)
                        candidates["lora"] = (lora.tensors(), check, self.lora_settings.__dict__)
                    if not candidates:
                        report[level][value] = {"rows": len(train_idx) + len(valid_idx), "adapter": False}
                        if key in self.store:
                            self.store.delete(key)
                        advance()
                        continue
                    kind = best_kind(candidates)
                    tensors, check, settings = candidates[kind]
                    meta = {
                        "level": level,
                        "kind": kind,
                        "rows_train": len(train_idx),
                        "rows_valid": len(valid_idx),
                        "used": bool(check["used"]),
                        "validation": check,
                        "settings": settings,
                    }
                    if len(candidates) > 1:
                        meta["candidates"] = {k: log_loss_of(c[1]) for k, c in candidates.items()}
                    if kind == "joint":
                        meta["joint"] = self.store.info(JOINT_KEY)["id"]  # the shared part it belongs to
                    self.store.put(key, tensors, meta)
                    fields = ("level", "kind", "rows_train", "rows_valid", "used", "validation")
                    trained[key] = {k: meta[k] for k in fields}
                    self._adapters.pop(key, None)
                    report[level][value] = {
                        "rows": len(train_idx) + len(valid_idx),
                        "adapter": True,
                        "kind": kind,
                        "used": bool(check["used"]),
                    }
                    advance()
        self._joint_part = None
        self.report_ = report
        self._write_settings()
        self.store_folder_ = Path(self.store.folder)
        self.run_dir_ = self._write_record(args.data, read, len(df), args.target or target, trained, started)
        return self

    def _joint_candidates(
        self, df: pd.DataFrame, y: np.ndarray, features: np.ndarray | None, logits: np.ndarray | None,
        held: np.ndarray, plan: list[tuple[str, str, str, np.ndarray, np.ndarray]], *, fold: bool,
    ) -> dict[str, Any]:  # fmt: skip
        """Joint adapters of the keys in ``plan`` (:func:`~tunesmith.personalize.joint_training.joint_candidates`)."""
        if "joint" not in self.adapter_kinds:
            return {}
        assert features is not None and logits is not None
        candidates, summary = joint_candidates(self, df, y, features, logits, held, plan, fold=fold)
        if summary is not None:
            self.joint_info_ = summary
        return candidates

    def refit(
        self, data: Any, y: Any = None, *, replay: Any = None, target: str | None = None,
        store: str | os.PathLike[str] | None = None, **settings: Any,
    ) -> Personalizer:  # fmt: skip
        """A new Personalizer whose adapters continue on new labeled ``data``; ``self`` is left as it was.

        Only users (and segments) with labeled rows in ``data`` change: an adapter continues from
        its weights (L2-SP toward them, replay of the user's old rows from ``replay``, WiSE-FT
        chosen on the user's latest new rows and held-out old ones), or stays as it was with too
        few rows; a user without one gets one as :meth:`fit` makes it (or none). Other adapters
        are copied byte for byte into a new store: ``store`` (a new folder), else a temporary one
        removed with the returned Personalizer (:meth:`save` it to keep it); built aside, renamed
        into place whole: this store, maybe serving, is never written. ``settings``:
        :class:`~tunesmith.train.continual.RefitSettings` (``epochs`` are adapter steps, half a
        fit's by default; ``valid_size`` does not apply: each user's latest ``valid_fraction``
        of new rows is held out, as in fit). The shared model is not refitted: refit it with its
        own kind's refit (FineTuner.refit), then fit adapters on it anew. ``refit_info_`` (kept in
        ``personalize.json``) holds the plan, rows, held-out scores and ``users`` (``retrained``,
        ``new``, ``kept``, ``shared``, ``unchanged``). See docs/refit.md.

        Raises:
            DataError: no rows, a missing column, or a label the shared model does not know.
            NotSupportedError: ``method='lora'`` (each adapter already is a low-rank update).
        """
        self._check_fitted()
        if "joint" in self.adapter_kinds:
            raise unsupported(
                self,
                "refit of joint adapters",
                "Fold in the users whose rows changed with fit(data, users=[...]), or fit all users again",
            )
        if settings.get("method") == "lora":
            raise unsupported(self, "refit method 'lora'", "Use method='auto' or 'l2sp': adapters are low-rank already")
        folder, scratch = refit_folder(self.store.folder, store)
        child = Personalizer(**{**self.get_params(), "store": folder}, feature_cache=self._cache)
        refit_adapters(child, self.store, data, y, replay=replay, target=target, settings=settings, scratch=scratch)
        child.__dict__.pop("store_")  # opened before its folder existed: open what was written
        child._open().store_folder_ = folder
        return child

    def _write_record(
        self, data: Any, read: pd.DataFrame, rows: int, target: str, trained: dict[str, Any], started: float
    ) -> Path | None:
        """The fit's run record under ``runs_dir`` (None when unset): config, data, drops, adapters, report."""
        if not self._config.runs_dir:
            return None
        config = self._config.model_dump(mode="json")
        record = RunRecord.create(self._config.runs_dir, self._config.run_name or "personalize")
        info = fit_info(
            base=self.base_path.name, target=target, task=str(self.base.schema_.task), labels=self.labels,
            config=config, data=data, frame=read, rows_used=rows, dropped=self.dropped_, adapters=trained,
            report=self.report_, seconds=round(time.perf_counter() - started, 3),
        )  # fmt: skip
        write_fit_record(record, info)
        report = (record.path / "report.md").read_text(encoding="utf-8")
        record.write_text("report.md", report.rstrip("\n") + "\n\n" + adapters_section(info))
        return record.path

    def _read(self, data: pd.DataFrame | str | os.PathLike[str]) -> tuple[pd.DataFrame, str | None]:
        """The rows, and the file they came from (named in errors)."""
        if isinstance(data, pd.DataFrame):
            return data.reset_index(drop=True), None
        return read_table(data), str(data)

    def _write_settings(self, folder: Path | None = None) -> None:
        """``personalize.json`` (with ``refit_info_`` after a refit) in ``folder``, by default the store's."""
        record = settings_record(
            self._config, base_fingerprint=self.base_fingerprint, head=self.settings, lora=self.lora_settings,
            refit=getattr(self, "refit_info_", None),
        )  # fmt: skip
        atomic_write_json((folder or self.store.folder) / SETTINGS_FILE, record)

    # --- prediction and evaluation -----------------------------------------------------------

    def predict_proba(self, data: pd.DataFrame | str | os.PathLike[str]) -> np.ndarray:
        """Class probabilities ``(n, k)`` per row (columns in the order of ``labels``), each row
        answered by its user's adapter, else its segment's, else the shared model."""
        return self.predict_routed(data)[0]

    def predict(self, data: pd.DataFrame | str | os.PathLike[str]) -> np.ndarray:
        """The most probable label of each row (strings, as the shared model's labels)."""
        proba = self.predict_proba(data)
        return np.asarray(self.labels, dtype=object)[proba.argmax(axis=1)]

    def embed(self, data: pd.DataFrame | str | os.PathLike[str], *, max_rows: int | None = None) -> np.ndarray:
        """The shared model's representation of each row, ``(n, d)`` float32 (:meth:`FineTuner.embed`).

        One representation for every row, whichever adapter answers it: head adapters act
        after it, on this very vector; LoRA adapters change the encoder's last block per user,
        and their users are compared on the shared encoder's vector too, so reference and
        current data stay comparable when users or adapters change.
        """
        self._check_fitted()
        return np.asarray(self.base.embed(data, max_rows=max_rows), dtype=np.float32)

    def score(self, data: Any, y: Any = None, *, target: str | None = None) -> float:
        """Accuracy of the personalised predictions on the labeled rows of ``data`` (higher is better).

        Rows without a label the shared model knows are left out; ``target`` names the label
        column when it is not the shared model's.
        """
        if y is not None:
            raise ConfigError("the labels are a column of data, not y", key="y", hint="Name it with target=")
        df, _ = self._labeled(data, target)
        y_true, _ = self._targets(df, self.base.schema_.target)
        return float(np.mean(self.predict_proba(df).argmax(axis=1) == y_true))

    def _labeled(self, data: Any, target: str | None) -> tuple[pd.DataFrame, str | None]:
        """The rows of ``data`` with a label the shared model knows (in its target column)."""
        self._open()
        df, file = self._read(data)
        assert self.base.schema_ is not None
        wanted = self.base.schema_.target
        if target is not None and target != wanted:
            require_column(df, target, "target", file)
            df = df.assign(**{wanted: df[target]})
        require_column(df, self.user_column, "user", file)
        require_column(df, wanted, "target", file)
        _, known = self._targets(df, wanted)
        df = df.loc[known].reset_index(drop=True)
        if not len(df):
            raise DataError("no labeled rows to score", file=file, hint="Give rows with the target column filled")
        return df, file

    def predict_routed(self, data: pd.DataFrame | str | os.PathLike[str]) -> tuple[np.ndarray, list[str]]:
        """Probabilities per row and the level that answered it (``user``, ``segment`` or ``shared``).

        What ``predict_proba`` returned before the one estimator contract (a pair).
        """
        self._check_fitted()
        self._open()
        df, file = self._read(data)
        require_column(df, self.user_column, "user", file)
        features, logits = self.shared_outputs(df)
        out = logits.copy()
        users = df[self.user_column].astype(str).tolist()
        segments = df[self.segment_column].astype(str).tolist() if self.segment_column in df.columns else None
        has_items = self.item_column and self.item_column in df.columns
        items = list(item_ids(df[self.item_column])) if has_items else None
        found, routes = self._routes(users, segments)
        levels = [r.level for r in found]
        ft = self.base
        assert ft.model_ is not None
        for key, rows in routes.items():
            adapter = self._adapter(key)
            if isinstance(adapter, LoraAdapter):
                # A batch at a time: a large segment's tapped rows would not fit in memory at once.
                size = ft.config_.eval_batch_size
                for start in range(0, len(rows), size):
                    part = rows[start : start + size]
                    tapped, _ = self.tap(df.iloc[part], project=adapter.A.detach())
                    with torch.no_grad():
                        mine = lora_logits(adapter, self._ffn, ft.model_.head, tapped, ft.backbone_.pooling)
                    out[part] = mine.numpy()
            else:
                out[rows] = self.corrected(adapter, features[rows], logits[rows], items, rows)
        return softmax(out).astype(np.float32), levels

    @classmethod
    def from_store(
        cls, store: str | os.PathLike[str], base: str | os.PathLike[str] | None = None, *, progress: bool = False
    ) -> Personalizer:
        """Reopen a store written by :meth:`fit`, with the settings it was built with.

        ``base`` is the shared model folder; the store checks it is the model its adapters
        were trained on (by fingerprint). The folder recorded in the store's
        ``personalize.json`` is only named in the error when ``base`` is missing: a path
        written in a store is never opened, as the store may come from anyone.

        Raises:
            ArtifactError: no ``base`` given, or the store or its settings are refused.
        """
        s = load_settings(store)
        if base is None:
            raise ArtifactError(
                f"field 'base' names the shared model {str(s['base'])[:200]!r}, but a path written in an adapter "
                "store is never opened",
                path=Path(store) / SETTINGS_FILE,
                hint="Pass the shared model folder yourself: Personalizer.from_store(store, base=MODEL)",
            )
        p = cls(base, store, progress=progress, **store_params(s))
        if s["refit"] is not None:
            p.refit_info_ = s["refit"]
        # Opened now: a server or a check wants the store refused here, not at the first request.
        p._open().store_folder_ = Path(p.store.folder)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None) -> Personalizer:
        """Reopen a saved adapter store (:meth:`from_store`); ``base`` is the shared model folder."""
        return cls.from_store(path, base)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the adapter store to ``path``: a copy of the store (index, adapters, settings), atomically.

        Saving to the store's own folder writes nothing new (every fit keeps it up to date).
        """
        self._check_fitted()
        source = Path(self.store.folder)
        final = Path(path)
        if final.exists() and final.resolve() == source.resolve():
            return final
        if not (source / SETTINGS_FILE).is_file():
            self._write_settings()
        with AtomicDirectory(final, overwrite=overwrite) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        return final

    def evaluate(
        self, data: pd.DataFrame | str | os.PathLike[str], *, train: pd.DataFrame | str | os.PathLike[str] | None = None
    ) -> dict[str, Any]:
        """Per-user accuracy and ROC AUC (binary): personalised, shared, collaborative filtering.

        ``users`` holds one record per user (with the adapter kind that answered it);
        ``summary`` the means over users, overall and by the number of training rows the user's
        adapter had (``<20``, ``20-49``, ``50+``, ``none`` for users without an adapter);
        ``dropped`` counts rows left out for a missing label or one the shared model does not
        know. With ``train`` (the rows the adapters were trained on) and an ``item_column``, a
        collaborative-filtering baseline is fitted on those rows and labels
        (:class:`~tunesmith.personalize.baselines.CollaborativeBaseline`: the best of matrix
        factorisation, EASE and BPR on the same validation rows) and scored beside (``auc_cf``).
        """
        return evaluate_personalizer(self, data, train=train)


def _open_store(
    path: str | os.PathLike[str] | SafeFolder,
    meta: dict[str, Any] | None,
    *,
    base: str | os.PathLike[str] | None = None,
) -> Personalizer:
    """The registry's loader: an adapter store folder (``personalize.json``) with its shared model ``base``."""
    root = path.root if isinstance(path, SafeFolder) else path
    return Personalizer.from_store(root, base)


register(
    Kind(
        name="personalized",
        estimator=Personalizer,
        open=_open_store,
        summary="Per-user and per-segment adapters over a shared text classifier",
        marker=SETTINGS_FILE,
        options=("base",),
        serving="personalize",
    )
)
