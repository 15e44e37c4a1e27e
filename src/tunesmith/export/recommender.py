"""Prediction from a recommender folder, in the shape of every other kind's predictor.

:class:`RecommenderPredictor` gives a :class:`~tunesmith.recsys.recommender.Recommender` the
shape of a predictor (``version``, ``backend``, ``predict_rows``, ``warmup``, ``metadata``,
``close``), so the server's batcher, reload, drain and metrics serve it unchanged: each
recommend request is one "row" (``{"user", "history", "k", "exclude"}``, ids as strings), and
the rows of concurrent requests become one ``recommend_batch`` call on the model thread. The
request schema and the ``/v1/recommend`` route live in :mod:`tunesmith.serve.recommend`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import DataError
from tunesmith.estimators import registry
from tunesmith.runs.fingerprint import model_version
from tunesmith.runs.trust import SafeFolder

if TYPE_CHECKING:
    from tunesmith.recsys.recommender import Recommender

TASK = "recommendation"
# A cap on k keeps one request from asking for a whole large catalogue (scores and JSON grow
# with k); the catalogue itself caps what comes back.
MAX_K = 1000


@dataclass(frozen=True)
class Recommendation:
    """One request's answer, in the form the batcher splits back per request."""

    items: list[dict[str, Any]]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "source": self.source}


class RecommenderPredictor:
    """A loaded recommender with the interface the server's batcher expects.

    Rows are request dicts ``{"user", "history", "k", "exclude"}`` with ids as strings (see
    :func:`request_row`); :meth:`predict_rows` answers them with one ``recommend_batch`` call.
    Call it from one thread at a time.
    """

    task = TASK
    precision = "fp32"
    serving = "recommend"
    """The server's style for it (a registry ``Kind.serving``): ``/v1/recommend``."""

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
        folder = Path(path)
        from tunesmith.recsys.recommender import Recommender  # here, not at the top: ONNX serving must not load torch

        return cls._of(Recommender.load(folder), folder, threads, version)

    @classmethod
    def _of(cls, rec: Recommender, folder: Path, threads: int | None, version: str | None) -> RecommenderPredictor:
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
        row: dict[str, Any]
        if self.n_users:
            row = {"user": next(iter(self._users)), "history": None, "k": 10, "exclude": None}
        else:
            row = {"user": None, "history": [next(iter(self._items))], "k": 10, "exclude": None}
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


def open_recommender_predictor(
    folder: Path,
    safe: SafeFolder,
    meta: dict[str, Any],
    *,
    backend: str = "torch",
    precision: str = "auto",
    batch_size: int = 64,
    threads: int | None = None,
    version: str | None = None,
    backbone: str | None = None,
) -> RecommenderPredictor:
    """The predictor of an opened recommender folder (what the registry's ``recommender`` kind serves with).

    A recommender runs its own model (torch or numpy): ``backend``, ``precision`` and
    ``backbone`` do not apply to it and are ignored, as the server's settings are.
    """
    import tunesmith.recsys.recommender  # noqa: F401  (registers the kind's loader; loads torch)

    rec = registry.opener(registry.get("recommender"))(safe, meta)
    return RecommenderPredictor._of(rec, folder, threads, version)
