"""Per-user and per-segment head adapters over a saved shared text classifier.

:class:`Personalizer` reads each row's encoder features and shared logits from the saved
model once (each distinct input text is embedded once), then trains one head adapter per
user with at least ``min_rows`` labeled rows, and one per segment, on the earlier part of
that user's (or segment's) rows in time order; the later ``valid_fraction`` decides whether
the adapter is used. Prediction routes each row: the user's adapter, else the segment's,
else the shared model, and says which.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.data.schema import label_string, require_column
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.personalize.head import (
    HeadAdapter,
    HeadAdapterSettings,
    apply_head_adapter,
    compare_logits,
    fit_head_adapter,
    validate_head_adapter,
)
from tunesmith.personalize.lora import (
    LoraAdapter,
    LoraAdapterSettings,
    Tapped,
    concat_tapped,
    fit_lora_adapter,
    last_ffn_output,
    lora_logits,
    lora_projection,
    rows_between,
    subset,
    tap_last_ffn,
)
from tunesmith.personalize.store import (
    ADAPTER_KINDS,
    MAX_ADAPTER_RANK,
    AdapterDims,
    AdapterStore,
    Route,
    adapter_key,
    open_store,
)
from tunesmith.runs.trust import field
from tunesmith.train.batching import Collator

SETTINGS_FILE = "personalize.json"
MAX_STEPS = 1_000_000
"""Most training steps per adapter a store's settings may ask for."""

logger = logging.getLogger("tunesmith.personalize")

__all__ = ["ADAPTER_KINDS", "SETTINGS_FILE", "Personalizer", "load_settings", "time_ordered_holdout", "write_report"]


def time_ordered_holdout(
    df: pd.DataFrame, group_column: str, fraction: float, time_column: str | None = None
) -> np.ndarray:
    """Boolean mask of each group's last ``fraction`` of rows (by ``time_column``, else row order).

    A group with ``n`` rows holds out ``floor(fraction * n)`` of them, so a group with very
    few rows keeps them all for training.
    """
    if not 0 <= fraction < 1:
        raise ConfigError(f"must be in [0, 1), got {fraction}", key="valid_fraction")
    order = np.arange(len(df))
    keys = df[group_column].astype(str).to_numpy()
    if time_column is not None:
        times = pd.to_numeric(df[time_column], errors="coerce").to_numpy(dtype=float)
        sorted_idx = np.lexsort((order, times, keys))
    else:
        sorted_idx = np.lexsort((order, keys))
    held = np.zeros(len(df), dtype=bool)
    sorted_keys = keys[sorted_idx]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(sorted_idx)]
    for s, e in zip(starts, ends, strict=True):
        k = int(np.floor(fraction * (e - s)))
        if k:
            held[sorted_idx[e - k : e]] = True
    return held


class Personalizer:
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
    feature_cache:
        The shared model's features and logits per input text. Give one dict to several
        Personalizers of the same shared model so each text is embedded once.
    """

    def __init__(
        self,
        base: str | os.PathLike[str],
        store: str | os.PathLike[str],
        *,
        user_column: str,
        segment_column: str | None = None,
        time_column: str | None = None,
        min_rows: int = 10,
        valid_fraction: float = 0.2,
        rank: int = 4,
        l2: float = 1e-2,
        steps: int = 100,
        lr: float = 0.05,
        seed: int = 0,
        adapter_kind: str = "head",
        lora_rank: int = 4,
        lora_alpha: float = 8.0,
        lora_steps: int = 40,
        lora_lr: float = 0.02,
        progress: bool = True,
        feature_cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        from tunesmith.estimator import FineTuner
        from tunesmith.export.runtime import model_version

        if min_rows < 2:
            raise ConfigError(f"must be at least 2, got {min_rows}", key="min_rows")
        if not 0 < valid_fraction < 1:
            raise ConfigError(f"must be between 0 and 1, got {valid_fraction}", key="valid_fraction")
        if adapter_kind not in ADAPTER_KINDS:
            raise ConfigError(f"must be one of {', '.join(ADAPTER_KINDS)}, got {adapter_kind!r}", key="adapter_kind")
        self.adapter_kind = adapter_kind
        self.settings = HeadAdapterSettings(rank=rank, l2=l2, steps=steps, lr=lr)
        self.lora_settings = LoraAdapterSettings(rank=lora_rank, alpha=lora_alpha, l2=l2, steps=lora_steps, lr=lora_lr)
        self.base_path = Path(base)
        self.base = FineTuner.load(self.base_path)
        if self.base.schema_ is None or self.base.schema_.task == "regression":
            raise ConfigError("personalisation needs a classification model as the shared model", key="base")
        if adapter_kind == "lora":
            last_ffn_output(self.base.backbone_)  # refused now, before fit removes anything
        self.user_column = user_column
        self.segment_column = segment_column
        self.time_column = time_column
        self.min_rows = min_rows
        self.valid_fraction = valid_fraction
        self.seed = seed
        self.progress = progress
        self.base_fingerprint = "sha256:" + model_version(self.base_path)
        # The widths every adapter of this shared model has: each adapter file's header is
        # checked against them before any of its tensors is read.
        self.store = AdapterStore(store, self.base_fingerprint, dims=self._dims())
        self.labels = list(self.base.schema_.labels or [])
        # The shared model's outputs per input text; pass one dict to several Personalizers of the
        # same shared model to embed each text once.
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = feature_cache if feature_cache is not None else {}
        self._adapters: dict[str, HeadAdapter | LoraAdapter] = {}
        self._refresh_error: str | None = None

    def _dims(self) -> AdapterDims:
        """The widths of this shared model's adapters (the LoRA ones ``None`` if it has no block for them)."""
        ft = self.base
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

    def shared_outputs(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Encoder features ``(n, d)`` and shared logits ``(n, k)`` of each row.

        Each distinct input text is run through the encoder once per cache (see ``feature_cache``).
        """
        from tunesmith.estimator import FineTuner

        ft = self.base
        assert ft.model_ is not None
        texts, _, _ = ft._texts_for_prediction(df)
        unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        missing = [str(t) for t in unique if t not in self._cache]
        if missing:
            ids = ft.backbone_.tokenize(missing, ft.config_.max_length)
            features = FineTuner._run_batches(
                ft.backbone_,
                ids,
                ft.config_.eval_batch_size,
                ft.backbone_.pad_id,
                progress=self.progress,
                description="shared model features",
            )
            with torch.inference_mode():
                logits = ft.model_.head(torch.as_tensor(features)).float().numpy()
            for text, f, z in zip(missing, features, logits, strict=True):
                self._cache[text] = (f.astype(np.float32), z.astype(np.float32))
        feats = np.stack([self._cache[str(t)][0] for t in unique])
        outs = np.stack([self._cache[str(t)][1] for t in unique])
        inv = inverse.reshape(-1)
        return feats[inv], outs[inv]

    def _targets(self, df: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
        """Class indices and a mask of rows whose label the shared model knows (others are dropped, counted)."""
        index = {name: i for i, name in enumerate(self.labels)}
        raw = df[target]
        names = [None if pd.isna(v) else label_string(v) for v in raw.tolist()]
        known = np.array([n is not None and n in index for n in names], dtype=bool)
        y = np.array([index[n] if k and n is not None else -1 for n, k in zip(names, known, strict=True)])
        return y.astype(np.int64), known

    # --- training ----------------------------------------------------------------------------

    def fit(self, data: pd.DataFrame | str | os.PathLike[str], *, users: list[Any] | None = None) -> Personalizer:
        """Train (or retrain) adapters; with ``users``, only those users' adapters change."""
        df, file = self._read(data)
        assert self.base.schema_ is not None
        target = self.base.schema_.target
        require_column(df, self.user_column, "user", file)
        require_column(df, target, "target", file)
        if self.segment_column:
            require_column(df, self.segment_column, "segment", file)
        y, known = self._targets(df, target)
        self.dropped_ = {"unknown_or_missing_label": int((~known).sum())}
        df, y = df.loc[known].reset_index(drop=True), y[known]
        features, logits = self.shared_outputs(df) if self.adapter_kind == "head" else (None, None)
        report: dict[str, Any] = {"user": {}, "segment": {}}
        wanted = None if users is None else {str(u) for u in users}
        groups: list[tuple[str, str | None]] = [("user", self.user_column)]
        if self.segment_column and users is None:
            groups.append(("segment", self.segment_column))
        plan: list[tuple[str, str, str, np.ndarray, np.ndarray]] = []
        for level, column in groups:
            assert column is not None
            held = time_ordered_holdout(df, column, self.valid_fraction, self.time_column)
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
        from tunesmith.estimator import _progress

        bar = _progress(f"{self.adapter_kind} adapters", len(plan), enabled=self.progress and len(plan) > 2)
        with self.store.deferred(), bar as advance:
            for level, value, key, train_idx, valid_idx in plan:
                if features is not None and logits is not None:
                    head = fit_head_adapter(
                        features[train_idx], logits[train_idx], y[train_idx], self.settings, seed=self.seed
                    )
                    check = validate_head_adapter(head, features[valid_idx], logits[valid_idx], y[valid_idx])
                    tensors, settings = head.tensors(), self.settings.__dict__
                else:
                    lora, check = self._fit_lora(df, y, train_idx, valid_idx)
                    tensors, settings = lora.tensors(), self.lora_settings.__dict__
                meta = {
                    "level": level,
                    "kind": self.adapter_kind,
                    "rows_train": len(train_idx),
                    "rows_valid": len(valid_idx),
                    "used": bool(check["used"]),
                    "validation": check,
                    "settings": settings,
                }
                self.store.put(key, tensors, meta)
                self._adapters.pop(key, None)
                report[level][value] = {
                    "rows": len(train_idx) + len(valid_idx),
                    "adapter": True,
                    "used": bool(check["used"]),
                }
                advance()
        self.report_ = report
        self._write_settings()
        return self

    def tap(self, df: pd.DataFrame, project: torch.Tensor | None = None) -> tuple[Tapped, torch.Tensor]:
        """The last feed-forward block's inputs for ``df``'s rows (one padded batch) and their shared logits.

        With ``project`` (an adapter's fixed ``A``), only ``h @ A`` is kept of the wide inner
        activations, batch by batch: what training needs, at a fraction of the memory.
        """
        ft = self.base
        assert ft.model_ is not None
        texts, _, _ = ft._texts_for_prediction(df)
        ids = ft.backbone_.tokenize([str(t) for t in texts], ft.config_.max_length)
        parts: list[Tapped] = []
        logits: list[torch.Tensor] = []
        size = ft.config_.eval_batch_size
        collate = Collator(ft.backbone_.pad_id)
        for start in range(0, len(ids), size):
            padded = collate([{"input_ids": seq, "index": i} for i, seq in enumerate(ids[start : start + size])])
            batch, mask = padded["input_ids"], padded["attention_mask"]
            with torch.inference_mode():
                tapped, features = self._encode(batch, mask)
                logits.append(ft.model_.head(features).float())
                h = tapped.h if project is None else tapped.h @ project
            # Clones made outside inference mode: training may record operations on them.
            parts.append(Tapped(h.clone(), tapped.pre.clone(), mask, project is not None))
        return concat_tapped(parts), torch.cat(logits).clone()

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[Tapped, torch.Tensor]:
        """Pooled features of a batch and what the last feed-forward block saw (checked to be the same pass)."""
        ft = self.base
        with tap_last_ffn(ft.backbone_) as seen:
            features = ft.backbone_(input_ids, attention_mask)
        if len(seen) != 1 or seen[0][0].shape[:2] != attention_mask.shape:
            raise ConfigError(
                f"the last feed-forward block ran {len(seen)} time(s) for one batch; LoRA adapters need it to "
                "run once over whole sequences (is chunk_size_feed_forward set?)",
                key="adapter_kind",
                hint="Use adapter_kind='head'",
            )
        return Tapped(seen[0][0], seen[0][1], attention_mask), features

    def _fit_lora(
        self, df: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, valid_idx: np.ndarray
    ) -> tuple[LoraAdapter, dict[str, Any]]:
        ft = self.base
        assert ft.model_ is not None
        idx = np.concatenate([train_idx, valid_idx])
        dense = self._ffn.get_submodule("dense")
        assert isinstance(dense, torch.nn.Linear)
        a = lora_projection(dense.in_features, self.lora_settings.rank, self.seed)
        tapped, shared = self.tap(df.iloc[idx], project=a)
        n = len(train_idx)
        adapter = fit_lora_adapter(
            self._ffn,
            ft.model_.head,
            ft.backbone_.pooling,
            rows_between(tapped, 0, n),
            y[train_idx],
            self.lora_settings,
            seed=self.seed,
        )
        with torch.no_grad():
            valid = rows_between(tapped, n, len(idx))
            mine = lora_logits(adapter, self._ffn, ft.model_.head, valid, ft.backbone_.pooling)
        check = compare_logits(shared[n:].numpy(), mine.numpy(), y[valid_idx])
        return adapter, check

    @property
    def _ffn(self) -> torch.nn.Module:
        return last_ffn_output(self.base.backbone_)

    def _read(self, data: pd.DataFrame | str | os.PathLike[str]) -> tuple[pd.DataFrame, str | None]:
        """The rows, and the file they came from (named in errors)."""
        if isinstance(data, pd.DataFrame):
            return data.reset_index(drop=True), None
        from tunesmith.data.io import read_table

        return read_table(data), str(data)

    def _write_settings(self) -> None:
        from tunesmith.runs.artifacts import atomic_write_json

        atomic_write_json(
            self.store.folder / SETTINGS_FILE,
            {
                "base": str(self.base_path.resolve()),
                "base_fingerprint": self.base_fingerprint,
                "user_column": self.user_column,
                "segment_column": self.segment_column,
                "time_column": self.time_column,
                "min_rows": self.min_rows,
                "valid_fraction": self.valid_fraction,
                "adapter_kind": self.adapter_kind,
                "head": self.settings.__dict__,
                "lora": self.lora_settings.__dict__,
                "seed": self.seed,
            },
        )

    # --- prediction and evaluation -----------------------------------------------------------

    def predict_proba(self, data: pd.DataFrame | str | os.PathLike[str]) -> tuple[np.ndarray, list[str]]:
        """Probabilities per row and the level that answered it (``user``, ``segment`` or ``shared``)."""
        df, file = self._read(data)
        require_column(df, self.user_column, "user", file)
        features, logits = self.shared_outputs(df)
        out = logits.copy()
        users = df[self.user_column].astype(str).tolist()
        segments = df[self.segment_column].astype(str).tolist() if self.segment_column in df.columns else None
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
                out[rows] = apply_head_adapter(adapter, features[rows], logits[rows])
        from tunesmith.export.runtime import softmax

        return softmax(out).astype(np.float32), levels

    def route(self, user: Any, segment: Any = None) -> Route:
        """Which adapter answers a row of ``user`` (and ``segment``): user, segment or shared."""
        return self.store.route(
            None if user is None else str(user),
            None if segment is None else str(segment),
            segment_column=self.segment_column,
        )

    def run_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        users: Sequence[Any],
        segments: Sequence[Any] | None = None,
    ) -> tuple[np.ndarray, list[Route]]:
        """Adapted logits ``(n, k)`` and the route of each row of one padded token batch.

        Rows of different users share the encoder pass; each adapter then corrects only
        its own rows. A user without a (used) adapter falls back to the segment's, then to
        the shared model; ``None`` as a user or segment means unknown.
        """
        ft = self.base
        assert ft.model_ is not None
        n = int(input_ids.shape[0])
        if len(users) != n or (segments is not None and len(segments) != n):
            raise ConfigError(f"{n} rows but {len(users)} users and {len(segments or [])} segments")
        self.refresh_store()
        routes, groups = self._routes(users, segments)
        adapters = {key: self._adapter(key) for key in groups}
        need_tap = any(isinstance(a, LoraAdapter) for a in adapters.values())
        with torch.inference_mode():
            if need_tap:
                tapped, features = self._encode(input_ids, attention_mask)
            else:
                features = ft.backbone_(input_ids, attention_mask)
            logits = ft.model_.head(features).float()
            out = logits.numpy().copy()
            f_np = features.float().numpy()
            for key, rows in groups.items():
                adapter = adapters[key]
                if isinstance(adapter, LoraAdapter):
                    part = subset(tapped, rows)
                    out[rows] = lora_logits(adapter, self._ffn, ft.model_.head, part, ft.backbone_.pooling).numpy()
                else:
                    out[rows] = apply_head_adapter(adapter, f_np[rows], out[rows])
        return out, routes

    def refresh_store(self) -> bool:
        """Re-read the store if another process changed it; ``True`` if the new one is in force.

        A store changed into one that is refused (a bad ``index.json``, a link, a FIFO, an
        adapter of the wrong shapes) is logged once and the adapters read before keep
        serving: a server never stops, nor serves what it refused.
        """
        try:
            changed = self.store.refresh()
        except ArtifactError as exc:
            if str(exc) != self._refresh_error:
                logger.warning(
                    "tunesmith: the adapter store changed but is refused; the adapters read before keep serving: %s",
                    exc,
                )
                self._refresh_error = str(exc)
            return False
        if changed:
            # Another process rewrote the store (tunesmith personalize --users): read adapters anew.
            self._refresh_error = None
            self._adapters.clear()
        return changed

    def _routes(self, users: Sequence[Any], segments: Sequence[Any] | None) -> tuple[list[Route], dict[str, list[int]]]:
        """The route of each row, and the rows of each adapter that answers some."""
        routes = [self.route(u, None if segments is None else segments[i]) for i, u in enumerate(users)]
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(routes):
            if r.key is not None:
                groups.setdefault(r.key, []).append(i)
        return routes, groups

    def _adapter(self, key: str) -> HeadAdapter | LoraAdapter:
        adapter = self._adapters.get(key)
        if adapter is None:
            tensors = self.store.load(key)
            # The kind is read from the tensors themselves: the file is what will run, even if
            # the index this process read is older than it.
            loaded: HeadAdapter | LoraAdapter = (
                LoraAdapter.from_tensors(tensors) if "scale" in tensors else HeadAdapter.from_tensors(tensors)
            )
            loaded.eval()
            adapter = self._adapters[key] = loaded
        return adapter

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
        head, lora = s["head"], s["lora"]
        return cls(
            base,
            store,
            user_column=s["user_column"],
            segment_column=s["segment_column"],
            time_column=s["time_column"],
            min_rows=s["min_rows"],
            valid_fraction=s["valid_fraction"],
            seed=s["seed"],
            progress=progress,
            adapter_kind=s["adapter_kind"],
            **{k: head[k] for k in ("rank", "l2", "steps", "lr") if k in head},
            **{f"lora_{k}": lora[k] for k in ("rank", "alpha", "steps", "lr") if k in lora},
        )

    def evaluate(self, data: pd.DataFrame | str | os.PathLike[str]) -> dict[str, Any]:
        """Per-user accuracy and ROC AUC (binary), personalised vs shared, on labeled rows.

        ``users`` holds one record per user; ``summary`` the means over users, overall and by
        the number of training rows the user's adapter had (``<20``, ``20-49``, ``50+``,
        ``none`` for users without an adapter); ``dropped`` counts rows left out for a missing
        label or one the shared model does not know.
        """
        from sklearn.metrics import roc_auc_score

        from tunesmith.export.runtime import softmax

        df, file = self._read(data)
        assert self.base.schema_ is not None
        require_column(df, self.user_column, "user", file)
        require_column(df, self.base.schema_.target, "target", file)
        y, known = self._targets(df, self.base.schema_.target)
        df, y = df.loc[known].reset_index(drop=True), y[known]
        if not len(df):
            raise DataError("no labeled rows to evaluate", file=file, hint="Give rows with the target column filled")
        personal, levels = self.predict_proba(df)
        _, logits = self.shared_outputs(df)
        shared = softmax(logits)
        binary = len(self.labels) == 2
        records = []
        for user, idx in df.groupby(df[self.user_column].astype(str)).indices.items():
            yt = y[idx]
            rec: dict[str, Any] = {"user": user, "rows": len(idx), "level": levels[idx[0]]}
            key = adapter_key("user", user)
            rec["train_rows"] = int(self.store.info(key).get("rows_train", 0)) if key in self.store else 0
            for name, proba in (("shared", shared), ("personal", personal)):
                rec[f"accuracy_{name}"] = float(np.mean(proba[idx].argmax(axis=1) == yt))
                if binary and len(np.unique(yt)) == 2:
                    rec[f"auc_{name}"] = float(roc_auc_score(yt, proba[idx, 1]))
            records.append(rec)
        table = pd.DataFrame(records)

        def means(frame: pd.DataFrame) -> dict[str, Any]:
            out: dict[str, Any] = {"users": len(frame)}
            for col in ("accuracy_shared", "accuracy_personal", "auc_shared", "auc_personal"):
                if col in frame.columns and frame[col].notna().any():
                    out[col] = float(frame[col].mean())
            return out

        bins = pd.cut(table["train_rows"], [-1, 0, 19, 49, np.inf], labels=["none", "<20", "20-49", "50+"])
        summary = {
            "all": means(table),
            "by_train_rows": {str(b): means(g) for b, g in table.groupby(bins, observed=True)},
        }
        return {
            "users": table,
            "summary": summary,
            "levels": pd.Series(levels).value_counts().to_dict(),
            "dropped": {"unknown_or_missing_label": int((~known).sum())},
        }


def write_report(result: dict[str, Any], folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Save an :meth:`Personalizer.evaluate` result: JSON, the per-user table as CSV, and two plots.

    ``per_user.png``: each user's shared vs personalised ROC AUC (accuracy for more than two
    classes). ``by_train_rows.png``: the mean per group of users by training rows, shared vs
    personalised.
    """
    from tunesmith.runs.artifacts import atomic_write_json, json_safe
    from tunesmith.runs.plots import plot_metric_by_group, plot_per_user_comparison

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    table: pd.DataFrame = result["users"]
    metric = "auc" if "auc_shared" in table.columns and table["auc_shared"].notna().any() else "accuracy"
    shown = "ROC AUC" if metric == "auc" else "accuracy"
    paths = {"json": out / "evaluation.json", "csv": out / "per_user.csv"}
    atomic_write_json(
        paths["json"],
        json_safe({k: v for k, v in result.items() if k != "users"} | {"metric": metric}),
    )
    table.to_csv(paths["csv"], index=False)
    paths["per_user"] = plot_per_user_comparison(
        table[f"{metric}_shared"].to_numpy(dtype=float),
        table[f"{metric}_personal"].to_numpy(dtype=float),
        out / "per_user.png",
        metric=shown,
        sizes=table["train_rows"].to_numpy(dtype=float),
    )
    groups = result["summary"]["by_train_rows"]
    models = {
        name: {g: {shown: v.get(f"{metric}_{key}"), "n_users": v.get("users", 0)} for g, v in groups.items()}
        for name, key in (("shared", "shared"), ("personalised", "personal"))
    }
    paths["by_train_rows"] = plot_metric_by_group(
        models,
        out / "by_train_rows.png",
        metric=shown,
        xlabel="training rows of the user's adapter",
        title=f"mean per-user {shown} by training rows",
    )
    return paths


def load_settings(store: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings a store was built with (``personalize.json``), every field checked.

    The store is opened through :func:`~tunesmith.personalize.store.open_store` (scanned:
    no links, FIFOs, devices, code or pickles) and the file read with a size cap. Absent or
    ``null`` fields come back with their defaults (``head`` and ``lora`` hold only the
    fields present).

    Raises:
        ArtifactError: no store, no ``personalize.json``, or a field of the wrong type or out
            of range, naming the file and the field.
    """
    folder = open_store(store, marker=SETTINGS_FILE)
    file = folder.root / SETTINGS_FILE
    data: dict[str, Any] = folder.read_json(SETTINGS_FILE)
    out = dict(data)
    out["base"] = field(data, "base", str, file=file)
    out["base_fingerprint"] = field(data, "base_fingerprint", str, default=None, file=file)
    out["user_column"] = field(data, "user_column", str, file=file)
    if not out["user_column"]:
        raise ArtifactError(
            "field 'user_column' is empty", path=file, hint="Rebuild the store with tunesmith personalize"
        )
    for name in ("segment_column", "time_column"):
        out[name] = field(data, name, str, default=None, file=file) or None
    out["min_rows"] = field(data, "min_rows", int, default=10, low=2, file=file)
    out["valid_fraction"] = field(data, "valid_fraction", float, default=0.2, file=file)
    if not 0 < out["valid_fraction"] < 1:
        raise ArtifactError(f"field 'valid_fraction' must be between 0 and 1, got {out['valid_fraction']!r}", path=file)
    out["adapter_kind"] = field(data, "adapter_kind", str, default="head", choices=ADAPTER_KINDS, file=file)
    for kind, low_rank in (("head", 0), ("lora", 1)):
        given = field(data, kind, dict, default={}, file=file)
        view = {kind: given}  # null stands for {}: every field its default
        checked: dict[str, Any] = {
            "rank": field(view, f"{kind}.rank", int, default=None, low=low_rank, high=MAX_ADAPTER_RANK, file=file),
            "steps": field(view, f"{kind}.steps", int, default=None, low=1, high=MAX_STEPS, file=file),
        }
        for name, zero in (("lr", False), ("l2", True), ("alpha", False)):
            checked[name] = _finite(view, f"{kind}.{name}", file, zero=zero)
        # A checked field that is absent or null is left out: the Personalizer's default applies.
        out[kind] = {k: v for k, v in {**given, **checked}.items() if v is not None or k not in checked}
    out["seed"] = field(data, "seed", int, default=0, low=0, high=2**63 - 1, file=file)
    return out


def _finite(data: dict[str, Any], name: str, file: Path, *, zero: bool) -> float | None:
    """The number at ``name`` if present: finite and above zero (or at least zero)."""
    value = field(data, name, float, default=None, file=file)
    if value is not None and not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
        bound = "at least 0" if zero else "above 0"
        raise ArtifactError(f"field {name!r} must be a finite number {bound}, got {value!r}", path=file)
    return value
