"""Serving a recommender: ``POST /v1/recommend`` for a folder written by ``Recommender.save``.

The request and response schemas live here; the predictor that gives a
:class:`~tunesmith.recsys.recommender.Recommender` the shape the server's batcher expects is
:class:`~tunesmith.export.recommender.RecommenderPredictor` (importable from here too): each
recommend request is one "row", and the rows of concurrent requests become one
``recommend_batch`` call on the model thread.

A request names a known ``user`` (their stored history is used) or sends a ``history`` of
item ids in time order; when both are given the history wins, as in
``Recommender.recommend(user, history=...)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from tunesmith.errors import DataError, TunesmithError
from tunesmith.export.recommender import MAX_K, TASK, Recommendation, RecommenderPredictor
from tunesmith.runs.trust import MAX_JSON_BYTES, read_json_file
from tunesmith.serve.state import load_served_model

__all__ = [
    "MAX_IDS",
    "MAX_K",
    "TASK",
    "ItemOut",
    "RecommendRequest",
    "RecommendResponse",
    "Recommendation",
    "RecommenderPredictor",
    "folder_task",
    "is_recommender_folder",
    "load_served_model",
    "request_row",
]

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


def folder_task(path: str | os.PathLike[str]) -> str | None:
    """The ``task`` of a model folder's ``tunesmith.json``; ``None`` when it cannot be read.

    Cheap (no weights read), so the server can pick its endpoints before loading the model.
    """
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


def recommend_error_detail(exc: DataError) -> list[dict[str, Any]]:
    """The 422 detail of a request the recommender cannot answer (an unknown user, say)."""
    msg = exc.message if not exc.hint else f"{exc.message}. {exc.hint}"
    return [{"type": "value_error", "loc": ["body", exc.column or "user"], "msg": msg, "input": None}]


def _integral(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def recommend_with_integral_floats(body: bytes) -> RecommendRequest | None:
    """The request read with ``5.0`` taken as the integer ``5`` (for ``user``, ``k`` and the ids), or None.

    JSON has one kind of number and JSON Schema's ``integer`` includes 5.0, as the document
    promises; the request model's strict integers refuse it. Only tried for a body the model
    refused, so a valid request pays nothing.
    """
    try:
        data = pydantic_core.from_json(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    fixed = dict(data)
    for key in ("user", "k"):
        if key in fixed:
            fixed[key] = _integral(fixed[key])
    for key in ("history", "exclude"):
        if isinstance(fixed.get(key), list):
            fixed[key] = [_integral(v) for v in fixed[key]]
    try:
        return RecommendRequest.model_validate(fixed)
    except ValidationError:
        return None


def recommend_request_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The recommend body as the server takes it: a user id or a history is required (null is
    neither), and only examples that hold for any model (a history; ids outside the catalogue
    are ignored, while a user must be known)."""
    out = dict(schema)
    out["anyOf"] = [
        {"required": ["user"], "properties": {"user": {"type": ["string", "integer"]}}},
        {"required": ["history"], "properties": {"history": {"type": "array"}}},
    ]
    out["examples"] = [{"history": ["50", "181", "258"], "k": 5, "exclude": ["100"]}]
    return out
