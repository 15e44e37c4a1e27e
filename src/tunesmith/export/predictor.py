"""The predictor contract every kind's predictor follows, and the text models' shared part.

A :class:`Predictor` turns rows (dicts, bare strings or a DataFrame) into
:class:`Prediction` objects: ``predict_rows``, ``predict_frame``, ``warmup``, ``metadata``,
``close``, with ``version``, ``backend`` and ``precision``. The server, ``tunesmith predict``
and the benchmarks all predict through it, so they cannot disagree. The base class is the
text models' (it builds the input text as training did and runs length-sorted batches);
:class:`ModalPredictor` is the base of the image and tabular predictors.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.validate import format_value, texts_of
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.estimators.text_meta import (
    MAX_POSITIONS,
    check_text_meta,
    saved_preprocessing,
    saved_schema,
)
from tunesmith.export.chunking import length_chunks
from tunesmith.runs.fingerprint import model_version
from tunesmith.runs.trust import SafeFolder, field, open_model

ONNX_DIR = "onnx"
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
EXPORT_INFO = "export.json"
BACKENDS = ("onnx", "torch")
PRECISIONS = ("auto", "fp32", "int8")

MAX_EXPORT_INFO_BYTES = 1 << 20
"""``onnx/export.json`` is a few kilobytes; anything above a megabyte is not one tunesmith wrote."""


@dataclass(frozen=True)
class Prediction:
    """One row's answer: ``label`` and ``probabilities`` for classification, ``value`` for regression.

    ``served_by`` and ``user_known`` are set by personalised serving only (see
    :class:`~tunesmith.serve.personalized.PersonalizedPredictor`): which adapter answered the
    row, and whether the row's user had one of their own.
    """

    label: Any = None
    probabilities: dict[str, float] | None = None
    value: float | None = None
    served_by: dict[str, Any] | None = None
    user_known: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with only the fields that apply."""
        out: dict[str, Any]
        if self.value is not None:
            out = {"value": self.value}
        else:
            out = {"label": self.label}
            if self.probabilities is not None:
                out["probabilities"] = self.probabilities
        # Only when set: answers of a server without adapters stay exactly as they were.
        if self.served_by is not None:
            out["served_by"] = self.served_by
        if self.user_known is not None:
            out["user_known"] = self.user_known
        return out


def read_model(folder: str | os.PathLike[str]) -> tuple[SafeFolder, dict[str, Any]]:
    """The model folder opened through :func:`~tunesmith.runs.trust.open_model` and its ``tunesmith.json``.

    The whole tree is scanned first (no links, FIFOs, devices, code, pickles or archives);
    read every further file through the returned :class:`~tunesmith.runs.trust.SafeFolder`.
    """
    return open_model(folder)


def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``tunesmith.json`` of a model folder (after the scan of :func:`read_model`), or an :class:`ArtifactError`."""
    return read_model(folder)[1]


class Predictor:
    """Turns rows into predictions with one backend; safe to call from one thread at a time per call.

    Use :func:`load_predictor` to build one. ``version`` identifies the model weights,
    ``backend`` and ``precision`` say what runs them.
    """

    backend: str = ""
    precision: str = "fp32"
    serving: str = "predict"
    """The server's style for it (a registry ``Kind.serving``): ``/v1/predict``."""

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        *,
        batch_size: int,
        version: str | None,
        safe: SafeFolder | None = None,
    ) -> None:
        """``safe``: ``folder`` as :func:`read_model` opened it (opened here when not given)."""
        if batch_size < 1:
            raise ConfigError(f"must be at least 1, got {batch_size}", key="batch_size")
        self.folder = folder
        self.safe = safe if safe is not None else SafeFolder.open(folder)
        meta_file = self.safe.root / "tunesmith.json"
        check_text_meta(meta, file=meta_file)
        self.meta = meta
        self.schema = saved_schema(meta, file=meta_file)
        self.task: str = meta["task"]
        self.labels: list[str] = list(meta.get("labels") or [])
        values = list(meta.get("label_values") or [])
        self.label_values: list[Any] = values if len(values) == len(self.labels) else list(self.labels)
        self.target_scaling: dict[str, float] = meta.get("target_scaling") or {"mean": 0.0, "std": 1.0}
        self.preprocessing = saved_preprocessing(meta, file=meta_file)
        self.n_outputs = int(meta["n_outputs"])
        positions, self.vocab_size = _encoder_limits(self.safe)
        self.max_length = min(int(meta["config"].get("max_length") or 128), positions)
        self.batch_size = batch_size
        self.version = version or model_version(folder)
        self._export_info = _read_export_info(self.safe)
        # One tokenizer call at a time: the Rust tokenizer is not documented as thread-safe for
        # changes of its truncation settings, and serialising it costs nothing next to the model.
        self._lock = threading.Lock()

    # --- inputs ------------------------------------------------------------------------------

    @property
    def input_columns(self) -> list[str]:
        """Columns a row may carry: text columns first, then numeric and categorical ones."""
        return list(self.schema.feature_columns)

    def input_schema(self) -> dict[str, Any]:
        """What a request row looks like: required text columns and optional extras."""
        s = self.schema
        return {
            "text_columns": list(s.text_columns),
            "numeric_columns": list(s.numeric_columns),
            "categorical_columns": list(s.categorical_columns),
            "required": list(s.text_columns[:1]) if len(s.text_columns) == 1 else [],
            "max_tokens": self.max_length,
        }

    def _validated(self, rows: Sequence[Mapping[str, Any] | str], where: str) -> list[Mapping[str, Any]]:
        s = self.schema
        known = set(s.feature_columns)
        records: list[Mapping[str, Any]] = []
        for i, row in enumerate(rows):
            if isinstance(row, str):
                if len(s.text_columns) > 1:
                    raise DataError(
                        f"{where}[{i}] is a bare string, but this model reads several text columns: "
                        f"{', '.join(s.text_columns)}",
                        row=i + 1,
                        hint="Send an object with a value per column",
                    )
                if not row.strip():
                    col = s.text_columns[0]
                    raise DataError(
                        f"{where}[{i}] has no text: field {col!r} is required",
                        row=i + 1,
                        column=col,
                        hint="Send the text to classify",
                    )
                records.append({s.text_columns[0]: row})
                continue
            if not isinstance(row, Mapping):
                raise DataError(
                    f"{where}[{i}] must be an object of column values or a string, got {type(row).__name__}",
                    row=i + 1,
                )
            unknown = [k for k in row if k not in known]
            if unknown:
                raise DataError(
                    f"{where}[{i}] has unknown field {unknown[0]!r}",
                    row=i + 1,
                    column=str(unknown[0]),
                    hint=f"This model reads: {', '.join(s.feature_columns)}",
                )
            for col in s.text_columns:
                value = row.get(col)
                if value is not None and not isinstance(value, str):
                    raise DataError(
                        f"{where}[{i}].{col} must be a string, got {type(value).__name__}", row=i + 1, column=col
                    )
            if not any(isinstance(row.get(c), str) and row[c].strip() for c in s.text_columns):
                col = s.text_columns[0]
                raise DataError(
                    f"{where}[{i}] has no text: field {col!r} is required",
                    row=i + 1,
                    column=col,
                    hint="Send the text to classify",
                )
            records.append(row)
        return records

    def rows_to_frame(self, rows: Sequence[Mapping[str, Any] | str], *, where: str = "inputs") -> pd.DataFrame:
        """A frame of the model's columns from dicts (or bare strings for a one-text-column model).

        A row without any text column, a text that is not a string or a column the model does
        not know is a :class:`DataError` naming the row (``where[i]``) and the field.
        """
        records = self._validated(rows, where)
        return pd.DataFrame.from_records([dict(r) for r in records], columns=list(self.schema.feature_columns))

    def rows_to_texts(self, rows: Sequence[Mapping[str, Any] | str], *, where: str = "inputs") -> list[str]:
        """The model's input text per row, with the checks of :meth:`rows_to_frame`."""
        records = self._validated(rows, where)
        s = self.schema
        if len(s.text_columns) == 1 and not s.numeric_columns and not s.categorical_columns and not self.preprocessing:
            # One text column and nothing else: the text is the stripped value. Skipping pandas
            # here saves most of a millisecond per request, a sixth of a single-row prediction.
            col = s.text_columns[0]
            return [format_value(r.get(col)) or "" for r in records]
        frame = pd.DataFrame.from_records([dict(r) for r in records], columns=list(s.feature_columns))
        return self.texts(frame)

    def texts(self, df: pd.DataFrame) -> list[str]:
        """The one input string per row that training built (text columns joined, extras appended)."""
        frame = df
        if self.preprocessing:
            frame = self.preprocessing.apply(df)
        for col in self.schema.text_columns:
            if col in frame.columns and frame[col].isna().any():
                frame = frame.assign(**{col: frame[col].fillna("")})
        return texts_of(frame, self.schema)

    # --- outputs -----------------------------------------------------------------------------

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        return 0

    def padded_batches(self, texts: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Tokenize ``texts`` and yield ``(rows, input_ids, attention_mask)`` per padded batch.

        ``rows`` are the positions in ``texts`` of the batch's rows. Rows are sorted by length
        and cut where the padded tokens saved pay for another model call
        (:func:`~tunesmith.export.chunking.length_chunks`), at most ``batch_size`` rows per
        batch; every caller that runs the model (:meth:`logits`, personalised serving) batches
        the same way.
        """
        if not texts:
            return
        with self._lock:
            ids = self._tokenize(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        for start, stop in length_chunks(lengths[order], self.batch_size):
            idx = order[start:stop]
            width = int(lengths[idx].max())
            batch = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, j in enumerate(idx):
                seq = ids[j]
                batch[row, : len(seq)] = seq
                mask[row, : len(seq)] = 1
            yield idx, batch, mask

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw model outputs ``(n, n_outputs)`` for ``texts``, in input order."""
        if not texts:
            return np.zeros((0, max(1, len(self.labels))), dtype=np.float32)
        out: np.ndarray | None = None
        for idx, batch, mask in self.padded_batches(texts):
            result = self._run(batch, mask)
            if out is None:
                out = np.empty((len(texts), result.shape[1]), dtype=np.float32)
            out[idx] = result
        assert out is not None
        return out

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax over classes, computed stably in float64 then returned as float32."""
        return softmax(logits).astype(np.float32)

    def predict_frame(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """``(predictions, probabilities)`` for a frame; probabilities are ``None`` for regression."""
        return self._decode(self.logits(self.texts(df)))

    def _decode(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.task == "regression":
            s = self.target_scaling
            return logits[:, 0] * float(s["std"]) + float(s["mean"]), None
        proba = self.probabilities(logits)
        values = np.asarray(self.label_values, dtype=object)
        return values[proba.argmax(axis=1)], proba

    def predict_rows(self, rows: Sequence[Mapping[str, Any] | str], *, probabilities: bool = True) -> list[Prediction]:
        """One :class:`Prediction` per row (dicts of column values or bare strings)."""
        return self.predictions(self.logits(self.rows_to_texts(rows)), probabilities)

    def predictions(self, logits: np.ndarray, probabilities: bool) -> list[Prediction]:
        """One :class:`Prediction` per row of model outputs (``probabilities``: include them)."""
        preds, proba = self._decode(logits)
        if proba is None:
            return [Prediction(value=float(v)) for v in preds]
        out = []
        for i, label in enumerate(preds):
            p = None
            if probabilities:
                p = {name: round(float(x), 6) for name, x in zip(self.labels, proba[i], strict=True)}
            out.append(Prediction(label=_plain(label), probabilities=p))
        return out

    def warmup(self) -> None:
        """One prediction on a made-up row, so the first request does not pay for lazy setup."""
        self.predict_rows([{col: "warm up the model with a short sentence." for col in self.schema.text_columns}])

    def metadata(self) -> dict[str, Any]:
        """Task, labels, input schema, version and test metrics (what ``/v1/metadata`` returns)."""
        meta = self.meta
        metrics = meta.get("metrics") or {}
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {
            "task": self.task,
            "labels": list(self.label_values) if self.task != "regression" else None,
            "input_schema": self.input_schema(),
            "model_version": self.version,
            "backend": self.backend,
            "precision": self.precision,
            "backbone": (meta.get("backbone") or {}).get("name"),
            "created": meta.get("created"),
            "tunesmith_version": meta.get("tunesmith_version"),
            "metrics": shown,
            "export": self.export_info(),
        }

    def export_info(self) -> dict[str, Any] | None:
        """``onnx/export.json`` as read (through the folder's trust checks) when the model was opened."""
        if not hasattr(self, "_export_info"):  # subclasses that set themselves up (image, tabular models)
            self._export_info = _read_export_info(SafeFolder.open(self.folder))
        info = self._export_info
        return dict(info) if info is not None else None

    def close(self) -> None:
        """Release the session or model (the object must not be used afterwards)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _read_export_info(safe: SafeFolder) -> dict[str, Any] | None:
    """``onnx/export.json`` read inside the scanned folder (a link there was refused by the scan), or None."""
    rel = f"{ONNX_DIR}/{EXPORT_INFO}"
    if not safe.has(rel):
        return None
    info: dict[str, Any] = safe.read_json(rel, limit=MAX_EXPORT_INFO_BYTES)
    return info


def _encoder_limits(safe: SafeFolder) -> tuple[int, int | None]:
    """``(max_position_embeddings, vocab_size)`` of ``backbone_config.json`` (512 and None when absent).

    The position limit caps truncation exactly as training's tokenizer did; the vocabulary
    size bounds the token ids the tokenizer may produce.
    """
    rel = "backbone_config.json"
    if not safe.has(rel):
        return 512, None
    config = safe.read_json(rel)
    file = safe.root / rel
    positions = field(config, "max_position_embeddings", int, file=file, low=1, high=MAX_POSITIONS, default=512)
    vocab = field(config, "vocab_size", int, file=file, low=1, high=4_194_304, default=None)
    return int(positions), vocab


def _plain(value: Any) -> Any:
    """numpy scalars become Python ones so they serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value


# --- image and tabular models ------------------------------------------------------------------


def graph_path(folder: Path, precision: str) -> Path:
    """The fp32 graph of an image or tabular model (int8 is for text encoders), never through a link."""
    if precision == "int8":
        raise ConfigError(
            "image and tabular models are exported in fp32 only",
            key="precision",
            hint="Use --precision fp32 (or auto)",
        )
    graph = folder / ONNX_DIR / ONNX_FILES["fp32"]
    # lstat: a link in the graph's place is refused, never followed out of the folder.
    try:
        regular = stat.S_ISREG(os.lstat(graph).st_mode) and not os.path.islink(folder / ONNX_DIR)
    except OSError:
        regular = False
    if not regular:
        raise ArtifactError(
            f"no fp32 ONNX graph ({ONNX_DIR}/{ONNX_FILES['fp32']})",
            path=folder,
            hint=f"Export it first: tunesmith export {folder} --format onnx",
        )
    return graph


class ModalPredictor(Predictor):
    """Shared set-up of the image and tabular predictors (labels, version, decoding of outputs).

    Every value here comes from a checked source (the loaded estimator or
    :func:`~tunesmith.estimators.image.image_model_info`), never straight from ``tunesmith.json``.
    """

    def __init__(
        self,
        folder: Path,
        meta: Mapping[str, Any],
        *,
        task: str,
        labels: Sequence[str],
        label_values: Sequence[Any],
        target_scaling: Mapping[str, float] | None,
        batch_size: int,
        version: str | None,
    ) -> None:
        # The text predictor's constructor reads a text schema and tokenizer settings; these
        # models have neither, so the common fields are set here.
        self.folder = folder
        self.meta = _shown_meta(meta)
        self.task = task
        self.labels = [str(x) for x in labels]
        values = list(label_values)
        self.label_values = values if len(values) == len(self.labels) else list(self.labels)
        self.target_scaling = dict(target_scaling or {"mean": 0.0, "std": 1.0})
        if batch_size < 1:
            raise ConfigError(f"must be at least 1, got {batch_size}", key="batch_size")
        self.batch_size = batch_size
        self.version = version or model_version(folder)


def _shown_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``tunesmith.json`` that ``metadata()`` reports, each of the type it expects.

    ``/v1/metadata`` shows them as they are; a folder whose report fields have another shape
    (a list of metrics, a backbone that is a string) shows nothing for them instead of failing.
    """
    out: dict[str, Any] = {}
    if not isinstance(meta, Mapping):
        return out
    metrics = meta.get("metrics")
    if isinstance(metrics, dict):
        out["metrics"] = metrics
    backbone = meta.get("backbone")
    if isinstance(backbone, dict) and isinstance(backbone.get("name"), str):
        out["backbone"] = {"name": backbone["name"]}
    for key in ("created", "tunesmith_version"):
        if isinstance(meta.get(key), str):
            out[key] = meta[key]
    return out
