"""Serving a recommender: ``POST /v1/recommend`` for a folder written by ``Recommender.save``.

:class:`RecommenderPredictor` gives a :class:`~tunesmith.recsys.recommender.Recommender` the
shape of a text-classifier predictor (``version``, ``backend``, ``predict_rows``, ``warmup``,
``metadata``, ``close``), so the server's batcher, reload, drain and metrics serve it
unchanged: each recommend request is one "row", and the rows of concurrent requests become one
``recommend_batch`` call on the model thread.

A request names a known ``user`` (their stored history is used) or sends a ``history`` of
item ids in time order; when both are given the history wins, as in
``Recommender.recommend(user, history=...)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from tunesmith.errors import ConfigError, DataError, TunesmithError

if TYPE_CHECKING:
    from tunesmith.recsys.recommender import Recommender
    from tunesmith.serve.batcher import ServedModel

TASK = "recommendation"
# A cap on k keeps one request from asking for a whole large catalogue (scores and JSON grow
# with k); the catalogue itself caps what comes back.
MAX_K = 1000
# Longer histories than any sequential model reads are allowed (the model keeps the latest
# items) but bounded, so a request cannot make the server hash an unbounded list.
MAX_IDS = 10_000

ItemId = StrictStr | StrictInt


class RecommendRequest(BaseModel):
    """A known ``user``, or a ``history`` of item ids (oldest first); the history wins if both are given."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user": "196", "k": 10},
                {"history": ["50", "181", "258"], "k": 5, "exclude": ["100"]},
            ]
        },
    )

    user: ItemId | None = Field(default=None, description="A user id of the training log: their stored history.")
    history: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_IDS)] | None = Field(
        default=None,
        description="Item ids in time order (oldest first); overrides the user's stored history. "
        "Ids not in the catalogue are ignored.",
    )
    k: Annotated[int, Field(strict=True, ge=1, le=MAX_K)] = Field(default=10, description="How many items.")
    exclude: Annotated[list[ItemId], Field(max_length=MAX_IDS)] | None = Field(
        default=None, description="Item ids never to recommend (the history is always excluded)."
    )


class ItemOut(BaseModel):
    """One recommended item."""

    item: str
    score: float


class RecommendResponse(BaseModel):
    """The top items, best first; fewer than ``k`` when the catalogue runs out."""

    model_version: str = Field(..., description="Version of the model that made these recommendations.")
    items: list[ItemOut]
    source: str = Field(..., description="user (the stored history) or history (the request's).")


@dataclass(frozen=True)
class Recommendation:
    """One request's answer, in the form the batcher splits back per request."""

    items: list[dict[str, Any]]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "source": self.source}


def folder_task(path: str | os.PathLike[str]) -> str | None:
    """The ``task`` of a model folder's ``tunesmith.json``; ``None`` when it cannot be read.

    Cheap (no weights read), so the server can pick its endpoints before loading the model.
    """
    from tunesmith.runs.trust import MAX_JSON_BYTES, read_json_file

    # Through the trust module's reader: a link, FIFO or device in the file's place is refused
    # (never followed or blocked on) and the size is capped; the load that follows opens the
    # whole folder through open_model.
    try:
        meta = read_json_file(Path(path) / "tunesmith.json", limit=MAX_JSON_BYTES)
    except (TunesmithError, OSError, ValueError):
        return None
    task = meta.get("task") if isinstance(meta, dict) else None
    return task if isinstance(task, str) else None


def is_recommender_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a recommendation model (``Recommender.save``)."""
    return folder_task(path) == TASK


class RecommenderPredictor:
    """A loaded recommender with the interface the server's batcher expects.

    Rows are request dicts ``{"user", "history", "k", "exclude"}`` with ids as strings (see
    :func:`request_row`); :meth:`predict_rows` answers them with one ``recommend_batch`` call.
    Call it from one thread at a time.
    """

    task = TASK
    precision = "fp32"

    def __init__(self, recommender: Recommender, folder: Path, version: str) -> None:
        self.recommender: Recommender | None = recommender
        self.folder = folder
        self.version = version
        self.kind: str = recommender.model
        # A sequential model runs torch; the classic ones are numpy/scipy.
        self.backend = "torch" if self.kind == "sasrec" else "numpy"
        self._users: Mapping[str, int] = recommender._user_code
        self._items: Mapping[str, int] = recommender._item_code

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, threads: int | None = None, version: str | None = None
    ) -> RecommenderPredictor:
        """Load a recommender folder; ``version`` defaults to a content hash of its weights."""
        from tunesmith.export.runtime import model_version
        from tunesmith.recsys.recommender import Recommender

        folder = Path(path)
        rec = Recommender.load(folder)
        if threads:
            import torch

            torch.set_num_threads(threads)
        return cls(rec, folder, version or model_version(folder))

    def _rec(self) -> Recommender:
        if self.recommender is None:
            raise RuntimeError("this recommender was closed")
        return self.recommender

    @property
    def n_users(self) -> int:
        return len(self._users)

    @property
    def n_items(self) -> int:
        return len(self._items)

    def rows_to_texts(self, rows: Sequence[Any], *, where: str = "inputs") -> list[Any]:
        """Check the rows without running the model: a user without a history must be known.

        (The name is the batcher's: it calls this to find the request that failed a batch.)

        Raises:
            DataError: an unknown user and no history; ``column`` is ``"user"``.
        """
        for row in rows:
            if row["history"] is None and row["user"] not in self._users:
                raise DataError(
                    f"unknown user {row['user']!r}: not in the training log",
                    column="user",
                    hint="Send the user's history (a list of item ids) instead",
                )
        return list(rows)

    def predict_rows(self, rows: Sequence[Any], *, probabilities: bool = True) -> list[Recommendation]:
        """One :class:`Recommendation` per request row, all from one ``recommend_batch`` call."""
        rec = self._rec()
        self.rows_to_texts(rows)
        k = max(row["k"] for row in rows)
        items = self._items
        # Unknown history ids are dropped here: recommend_batch would warn about each request.
        histories = [None if r["history"] is None else [i for i in r["history"] if i in items] for r in rows]
        lists = rec.recommend_batch(
            users=[r["user"] for r in rows],
            histories=histories,
            k=k,
            exclude=[r["exclude"] for r in rows],
        )
        return [
            Recommendation(picks[: row["k"]], "user" if row["history"] is None else "history")
            for row, picks in zip(rows, lists, strict=True)
        ]

    def warmup(self) -> None:
        """One recommendation, so the first request does not pay for lazy setup."""
        if self.n_users:
            row = request_row(RecommendRequest(user=next(iter(self._users))))
        else:
            row = request_row(RecommendRequest(history=[next(iter(self._items))]))
        self.predict_rows([row])

    def metadata(self) -> dict[str, Any]:
        """What ``/v1/metadata`` returns: task, model kind, catalogue size, test metrics, version."""
        rec = self._rec()
        overall = (rec.test_metrics_ or {}).get("overall") or {}
        baselines = {name: (m or {}).get("overall") or {} for name, m in (rec.baseline_metrics_ or {}).items()}
        # Read and checked when the model was loaded: the folder is not read again here.
        saved = getattr(rec, "saved_info_", None) or {}
        return {
            "task": TASK,
            "model": self.kind,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "max_k": MAX_K,
            "model_version": self.version,
            "backend": self.backend,
            "precision": self.precision,
            "metrics": overall,
            "baselines": baselines,
            "split": rec.split_,
            "tunesmith_version": saved.get("tunesmith_version"),
            "created": saved.get("created"),
        }

    def close(self) -> None:
        """Drop the model (the object must not be used afterwards)."""
        self.recommender = None


def _ids(values: Sequence[str | int] | None) -> list[str] | None:
    # The recommender stores ids as strings: 50 and "50" are the same item.
    return None if values is None else [v if isinstance(v, str) else str(v) for v in values]


def request_row(req: RecommendRequest) -> dict[str, Any]:
    """The batcher row of a validated request: ids as strings."""
    user = req.user
    return {
        "user": user if user is None or isinstance(user, str) else str(user),
        "history": _ids(req.history),
        "k": req.k,
        "exclude": _ids(req.exclude),
    }


def load_served_model(
    path: str | os.PathLike[str],
    *,
    backend: str,
    precision: str,
    threads: int | None,
    version: str | None,
    adapters: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
) -> ServedModel:
    """A recommender or a text predictor, whichever the folder holds (blocking).

    With ``adapters`` (an adapter store folder) a text classifier is served with per-user
    adapters (:class:`~tunesmith.serve.personalized.PersonalizedPredictor`, torch only).

    Raises:
        ConfigError: adapters with the onnx backend or with a recommender.
    """
    if adapters is not None:
        if is_recommender_folder(path):
            raise ConfigError(
                "adapters personalise a text classifier, not a recommender",
                key="adapters",
                hint="Serve the recommender without --adapters",
            )
        if backend != "torch":
            raise ConfigError(
                f"personalised serving (--adapters) runs on the torch backend only, not {backend}",
                key="backend",
                hint="Use --backend torch",
            )
        from tunesmith.serve.personalized import load_personalized_predictor

        return load_personalized_predictor(path, adapters, threads=threads, version=version)
    if is_recommender_folder(path):
        return RecommenderPredictor.load(path, threads=threads, version=version)
    from tunesmith.export.runtime import load_predictor

    return load_predictor(
        path, backend=backend, precision=precision, threads=threads, version=version, backbone=backbone
    )
