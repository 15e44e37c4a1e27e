"""Running adapters: the LoRA tap on the encoder's last block, routing rows to adapters, and the
batched serving path (mixed into :class:`~tunesmith.personalize.personalizer.Personalizer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from tunesmith.backbones.embed import run_batches
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.personalize.head import HeadAdapter, apply_head_adapter, compare_logits
from tunesmith.personalize.joint import JointModel, JointVector, index_of, joint_logits
from tunesmith.personalize.joint_training import load_joint
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
from tunesmith.personalize.store import JOINT_KEY, AdapterStore, Route
from tunesmith.train.batching import Collator

logger = logging.getLogger("tunesmith.personalize")


class AdapterRouting:
    """The LoRA tap, routing and the serving batch path of a Personalizer (mixed into it)."""

    _adapters: dict[str, HeadAdapter | LoraAdapter | JointVector]
    _refresh_error: str | None
    _joint_part: tuple[JointModel, dict[str, int], str | None] | None
    lora_settings: LoraAdapterSettings

    if TYPE_CHECKING:  # given by the estimator this class is mixed into

        @property
        def base(self) -> Any: ...

        @property
        def store(self) -> AdapterStore: ...

        @property
        def seed(self) -> int: ...

        @property
        def segment_column(self) -> str | None: ...

        @property
        def progress(self) -> bool: ...

        @property
        def feature_dtype(self) -> str: ...

        _cache: dict[str, tuple[np.ndarray, np.ndarray]]

    def shared_outputs(self, df: pd.DataFrame, *, training: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Encoder features ``(n, d)`` and shared logits ``(n, k)`` of each row.

        Each distinct input text is run through the encoder once per cache (see ``feature_cache``).
        With ``training`` the pass runs in ``feature_dtype`` (bfloat16 halves its time on CPUs
        with bfloat16 units; prediction always runs in float32, as the server does).
        """
        ft = self.base
        assert ft.model_ is not None
        texts, _, _ = ft._texts_for_prediction(df)
        unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        low = training and self.feature_dtype == "bfloat16"
        # Outputs of the two precisions are kept apart: a prediction never reads a bfloat16 one.
        prefix = "bfloat16\0" if low else ""
        missing = [str(t) for t in unique if prefix + str(t) not in self._cache]
        if missing:
            ids = ft.backbone_.tokenize(missing, ft.config_.max_length)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
                features = run_batches(
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
                self._cache[prefix + text] = (f.astype(np.float32), z.astype(np.float32))
        feats = np.stack([self._cache[prefix + str(t)][0] for t in unique])
        outs = np.stack([self._cache[prefix + str(t)][1] for t in unique])
        inv = inverse.reshape(-1)
        return feats[inv], outs[inv]

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
        items: Sequence[Any] | None = None,
    ) -> tuple[np.ndarray, list[Route]]:
        """Adapted logits ``(n, k)`` and the route of each row of one padded token batch.

        Rows of different users share the encoder pass; each adapter then corrects only
        its own rows. A user without a (used) adapter falls back to the segment's, then to
        the shared model; ``None`` as a user or segment means unknown. ``items`` name each
        row's item for joint adapters (``None``, or an item they never saw: the item's text alone).
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
                    out[rows] = self.corrected(adapter, f_np[rows], out[rows], items, rows)
        return out, routes

    def corrected(
        self,
        adapter: HeadAdapter | JointVector,
        features: np.ndarray,
        logits: np.ndarray,
        items: Sequence[Any] | None,
        rows: Sequence[int],
    ) -> np.ndarray:
        """The shared logits of ``rows`` corrected by a head or joint adapter over their cached features.

        ``features`` and ``logits`` are those rows' already; ``items`` is every row's item (or
        ``None``), picked out here for a joint adapter.
        """
        if isinstance(adapter, JointVector):
            return self.joint_rows(adapter, features, logits, None if items is None else [items[i] for i in rows])
        return apply_head_adapter(adapter, features, logits)

    def _joint(self) -> tuple[JointModel, dict[str, int], str | None]:
        """The store's shared part of joint adapters, its item index and id (read once per store version)."""
        if self._joint_part is None:
            model, items = load_joint(self.store)
            self._joint_part = (model, items, self.store.info(JOINT_KEY).get("id"))
        return self._joint_part

    def joint_rows(
        self, adapter: JointVector, features: np.ndarray, logits: np.ndarray, items: Sequence[Any] | None
    ) -> np.ndarray:
        """Logits of one user's rows by its joint adapter; the shared logits if the adapter belongs to
        another version of the shared part (a store rewritten while it was read)."""
        model, index, joint_id = self._joint()
        if adapter.joint != joint_id or tuple(adapter.u.shape) != (model.rank, logits.shape[1]):
            logger.warning("tunesmith: a joint adapter of another joint model was skipped (the store is changing)")
            return logits
        idx = index_of(items, index) if items is not None else np.full(len(logits), -1, dtype=np.int64)
        return joint_logits(model, features, logits, idx, adapter.u, adapter.c)

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
            self._joint_part = None
        return changed

    def _routes(self, users: Sequence[Any], segments: Sequence[Any] | None) -> tuple[list[Route], dict[str, list[int]]]:
        """The route of each row, and the rows of each adapter that answers some."""
        routes = [self.route(u, None if segments is None else segments[i]) for i, u in enumerate(users)]
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(routes):
            if r.key is not None:
                groups.setdefault(r.key, []).append(i)
        return routes, groups

    def _adapter(self, key: str) -> HeadAdapter | LoraAdapter | JointVector:
        adapter = self._adapters.get(key)
        if adapter is None:
            tensors = self.store.load(key)
            # The kind is read from the tensors themselves: the file is what will run, even if
            # the index this process read is older than it.
            loaded: HeadAdapter | LoraAdapter | JointVector
            if "u" in tensors:
                loaded = JointVector(tensors["u"].float(), tensors["c"].float(), self.store.info(key).get("joint"))
            else:
                loaded = LoraAdapter.from_tensors(tensors) if "scale" in tensors else HeadAdapter.from_tensors(tensors)
                loaded.eval()
            adapter = self._adapters[key] = loaded
        return adapter


__all__ = ["AdapterRouting"]
