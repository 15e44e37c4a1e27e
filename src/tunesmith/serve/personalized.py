"""Personalised serving: ``tunesmith serve MODEL --adapters STORE``.

:class:`PersonalizedPredictor` is the shared text classifier's
:class:`~tunesmith.export.runtime.TorchPredictor` plus an adapter store written by
``tunesmith personalize``. Each request row names its user in the store's user column (and
its segment in the segment column, when the store has one, and, for joint adapters, its item
in the item column, when the store has one); the batcher mixes the rows of
many users in one model call, so the route is chosen per row, never per request. The rows are
validated, turned into text and tokenised exactly as for the shared model, and each
length-sorted padded batch goes through
:meth:`~tunesmith.personalize.personalizer.Personalizer.run_batch`, which runs the encoder
once for the batch and lets each adapter correct only its own rows.

Every prediction says who answered it: ``served_by`` (``level`` ``user``, ``segment`` or
``shared`` and the ``adapter`` key) and, for a row that named a user, ``user_known``
(``false``: that user has no adapter in use, so the row fell back). Only the torch backend
runs adapters; a store built for another shared model is refused when the server starts.

The store may come from anyone: it is opened through the trust boundary of
:mod:`tunesmith.personalize.store` (scanned, every field of ``personalize.json`` and
``index.json`` checked, every adapter's header checked against the shared model's widths), so
a bad store refuses the start with one :class:`~tunesmith.errors.ArtifactError` line. While
serving, a store rewritten into one that is refused is logged and the adapters read before
keep serving (:meth:`~tunesmith.personalize.personalizer.Personalizer.refresh_store`); a
reload with a refused store fails and the old predictor keeps serving.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.estimators import registry
from tunesmith.export.predictor import Prediction, read_meta
from tunesmith.export.text import TorchPredictor
from tunesmith.runs.fingerprint import model_version

if TYPE_CHECKING:
    from tunesmith.personalize.personalizer import Personalizer
    from tunesmith.personalize.store import Route

BASE_KIND = "text"
"""The kind of model a :class:`~tunesmith.personalize.personalizer.Personalizer` adds adapters to."""

# A user id no store holds: the warm-up row takes the fallback path of an unknown user.
_WARMUP_USER = "__tunesmith_warmup__"


class RoutedRows(NamedTuple):
    """Request rows split for personalised prediction (:meth:`PersonalizedPredictor.split_routed`).

    ``model_rows``: each row without its routing-only columns. ``users``, ``segments`` and
    ``items``: each row's ids (``None``: unknown); ``segments`` and ``items`` are ``None`` when
    the store has no such column.
    """

    model_rows: list[Mapping[str, Any] | str]
    users: list[Any]
    segments: list[Any] | None
    items: list[Any] | None


class PersonalizedPredictor(TorchPredictor):
    """The shared model with per-user and per-segment adapters; build it with :func:`load_personalized_predictor`.

    Rows are those of the shared model plus, optionally, ``user_column``, ``segment_column``
    and ``item_column`` (string or integer ids; absent or ``null``: unknown). Those columns
    route the row (the item id goes to the user's joint adapter; an unknown item is answered
    from the row's text alone) and are not read by the model unless it was trained on them too.
    Call it from one thread at a time, as every predictor.
    """

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        personalizer: Personalizer,
        *,
        batch_size: int,
        threads: int | None,
        version: str | None,
    ) -> None:
        # The personalizer has loaded the shared model already: reuse it, one copy in memory.
        super().__init__(
            folder, meta, batch_size=batch_size, threads=threads, version=version, estimator=personalizer.base
        )
        self.personalizer: Personalizer | None = personalizer
        self.store_path = Path(personalizer.store.folder)
        self.user_column: str = personalizer.user_column
        self.segment_column: str | None = personalizer.segment_column
        self.item_column: str | None = personalizer.item_column
        features = set(self.schema.feature_columns)
        # Routing columns the model does not read are taken out of the row before the model's
        # own validation, which refuses fields it does not know.
        routing = (self.user_column, self.segment_column, self.item_column)
        self._routing_only = frozenset(c for c in routing if c and c not in features)

    def _p(self) -> Personalizer:
        if self.personalizer is None:
            raise RuntimeError("this predictor was closed")
        return self.personalizer

    # --- rows --------------------------------------------------------------------------------

    def split_routed(self, rows: Sequence[Mapping[str, Any] | str], *, where: str = "inputs") -> RoutedRows:
        """Each row without its routing-only columns, and its user, segment and item ids.

        ``segments`` (``items``) is ``None`` when the store has no segment (item) column. A
        bare string row names no user, segment or item.

        Raises:
            DataError: a user, segment or item id that is not a string or an integer, naming the row.
        """
        model_rows: list[Mapping[str, Any] | str] = []
        users: list[Any] = []
        segments: list[Any] | None = [] if self.segment_column else None
        items: list[Any] | None = [] if self.item_column else None
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                model_rows.append(row)
                users.append(None)
                for ids in (segments, items):
                    if ids is not None:
                        ids.append(None)
                continue
            users.append(_route_id(row, self.user_column, i, where))
            if segments is not None and self.segment_column:
                segments.append(_route_id(row, self.segment_column, i, where))
            if items is not None and self.item_column:
                items.append(_route_id(row, self.item_column, i, where))
            if self._routing_only and not self._routing_only.isdisjoint(row):
                row = {k: v for k, v in row.items() if k not in self._routing_only}
            model_rows.append(row)
        return RoutedRows(model_rows, users, segments, items)

    def split_rows(
        self, rows: Sequence[Mapping[str, Any] | str], *, where: str = "inputs"
    ) -> tuple[list[Mapping[str, Any] | str], list[Any], list[Any] | None]:
        """``(model rows, users, segments)`` of :meth:`split_routed` (the item ids left out).

        Raises:
            DataError: a user, segment or item id that is not a string or an integer, naming the row.
        """
        routed = self.split_routed(rows, where=where)
        return routed.model_rows, routed.users, routed.segments

    def rows_to_texts(self, rows: Sequence[Mapping[str, Any] | str], *, where: str = "inputs") -> list[str]:
        """The shared model's input text per row; the routing columns are accepted, not read."""
        model_rows, _, _ = self.split_rows(rows, where=where)
        return super().rows_to_texts(model_rows, where=where)

    # --- prediction ----------------------------------------------------------------------------

    def routed_logits(
        self,
        texts: Sequence[str],
        users: Sequence[Any],
        segments: Sequence[Any] | None = None,
        items: Sequence[Any] | None = None,
    ) -> tuple[np.ndarray, list[Route]]:
        """Adapted logits ``(n, k)`` and the route of each text, in input order.

        The padded batches are those of the shared model (:meth:`padded_batches`); each is one
        ``run_batch`` call with the ids of its rows (``items``: each row's item, for joint adapters).
        """
        import torch

        p = self._p()
        n = len(texts)
        routes: list[Route | None] = [None] * n
        out: np.ndarray | None = None
        for idx, ids, mask in self.padded_batches(texts):
            logits, batch_routes = p.run_batch(
                torch.from_numpy(ids),
                torch.from_numpy(mask),
                [users[j] for j in idx],
                None if segments is None else [segments[j] for j in idx],
                items=None if items is None else [items[j] for j in idx],
            )
            if out is None:
                out = np.empty((n, logits.shape[1]), dtype=np.float32)
            out[idx] = logits
            for j, route in zip(idx, batch_routes, strict=True):
                routes[j] = route
        if out is None:
            return np.zeros((0, max(1, len(self.labels))), dtype=np.float32), []
        assert all(r is not None for r in routes)
        return out, [r for r in routes if r is not None]

    def predict_rows(self, rows: Sequence[Mapping[str, Any] | str], *, probabilities: bool = True) -> list[Prediction]:
        """One :class:`~tunesmith.export.runtime.Prediction` per row, with ``served_by`` (and ``user_known``)."""
        model_rows, users, segments, items = self.split_routed(rows)
        texts = super().rows_to_texts(model_rows)
        logits, routes = self.routed_logits(texts, users, segments, items)
        out = []
        for pred, user, route in zip(self.predictions(logits, probabilities), users, routes, strict=True):
            served_by = {"level": route.level, "adapter": route.key}
            # Said only of rows that named a user: a row without one has no user to know.
            known = None if user is None else route.level == "user"
            out.append(replace(pred, served_by=served_by, user_known=known))
        return out

    def warmup(self) -> None:
        """Predict a made-up row through the fallback path and, if the store has one, a user adapter."""
        text = {col: "warm up the model with a short sentence." for col in self.schema.text_columns}
        rows: list[Mapping[str, Any] | str] = [{**text, self.user_column: _WARMUP_USER}]
        store = self._p().store
        for key in store:
            # Loads one adapter now so the first personalised request does not pay for it.
            if key.startswith("user:") and store.info(key).get("used", True):
                rows.append({**text, self.user_column: key.removeprefix("user:")})
                break
        self.predict_rows(rows)

    def metadata(self) -> dict[str, Any]:
        """The shared model's metadata plus ``personalization``: the store, its adapters and routing columns.

        ``item_column`` is reported only for a store that has one (joint adapters with items).
        """
        out = super().metadata()
        summary = self._p().store.summary()
        out["personalization"] = {
            "store": str(self.store_path),
            "adapters": summary["adapters"],
            "user_adapters": summary.get("user"),
            "segment_adapters": summary.get("segment"),
            "user_column": self.user_column,
            "segment_column": self.segment_column,
        }
        if self.item_column:
            # Left out otherwise: clients reading the report of stores without items see it unchanged.
            out["personalization"]["item_column"] = self.item_column
        return out

    def close(self) -> None:
        super().close()
        self.personalizer = None


def _route_id(row: Mapping[str, Any], column: str, i: int, where: str) -> Any:
    """A row's user, segment or item id: a string, an integer or ``None`` (absent or null)."""
    value = row.get(column)
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    # A float or an object would be routed by its string form ("42.0"), which names no adapter:
    # refused rather than silently served by the shared model.
    raise DataError(
        f"{where}[{i}].{column} must be a string or an integer id, got {type(value).__name__}",
        row=i + 1,
        column=column,
        hint="Send the id as it appears in the data the adapters were trained on",
    )


def check_adapter_store(model: str | os.PathLike[str], store: str | os.PathLike[str]) -> None:
    """Cheap checks that ``store`` is an adapter store built for the model folder ``model``.

    Reads the store's settings and index through the store's trust checks (the adapters'
    headers are checked against each other only: their widths against the model's when the
    model is loaded) and hashes the model's weights; loads no model.

    Raises:
        ArtifactError: no store folder, a store folder or file refused, or a store built for
            another shared model.
    """
    # here, not at the top: a server without --adapters must not load torch
    from tunesmith.personalize.settings import load_settings
    from tunesmith.personalize.store import AdapterStore

    load_settings(store)
    AdapterStore(store, "sha256:" + model_version(Path(model)))


def load_personalized_predictor(
    model: str | os.PathLike[str],
    store: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    threads: int | None = None,
    version: str | None = None,
) -> PersonalizedPredictor:
    """Open the shared model folder ``model`` with the adapter store ``store`` (torch backend).

    ``version`` overrides the reported model version (default: the shared model's content
    hash, as without adapters).

    Raises:
        ArtifactError: no model or store folder, a store refused by its trust checks (naming
            the file and the field), or a store built for another shared model.
        ConfigError: the model is not a text classifier.
    """
    import torch

    folder = Path(model)
    if not folder.is_dir():
        raise ArtifactError("no model folder here", path=folder, hint="Give a folder written by tunesmith fit")
    meta = read_meta(folder)
    kind, task = registry.get(registry.kind_of_meta(meta)), meta.get("task")
    # Adapters correct the text encoder's features: only a classifier of the kind the
    # personaliser builds on takes them.
    if kind.name != BASE_KIND or task not in ("binary", "multiclass"):
        what = f"a {kind.name} model" if kind.name != BASE_KIND else f"a {task} model"
        raise ConfigError(
            f"adapters personalise a text classifier; {folder} holds {what}",
            key="adapters",
            hint="Serve this model without --adapters",
        )
    # Refused before the model is loaded: a clear one-line error, and no wasted start-up.
    check_adapter_store(folder, store)
    if threads:
        torch.set_num_threads(threads)
    # here, not at the top: a server without --adapters must not load torch
    from tunesmith.personalize.personalizer import Personalizer

    personalizer = Personalizer.from_store(store, base=folder, progress=False)
    # The personalizer hashed the weights already for the store's fingerprint: reuse that hash.
    version = version or personalizer.base_fingerprint.removeprefix("sha256:")
    return PersonalizedPredictor(folder, meta, personalizer, batch_size=batch_size, threads=threads, version=version)
