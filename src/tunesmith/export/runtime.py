"""Prediction from a saved model folder with one interface for every backend.

:func:`load_predictor` opens a model folder written by :meth:`FineTuner.save` and returns a
:class:`Predictor` that runs either the PyTorch model (``backend="torch"``) or the ONNX graph
written by ``tunesmith export`` (``backend="onnx"``, fp32 or int8). Both take rows (dicts or a
DataFrame with the training columns), build the same input text as training did, tokenize
with the model's own tokenizer and run length-sorted batches. The server, ``tunesmith
predict`` and the benchmarks all predict through this one class, so they cannot disagree.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import ArtifactError, ConfigError, DataError, TunesmithError
from tunesmith.runs.tokenizer_trust import (
    check_token_configs,
    check_vocab,
    probe_tokenizer,
    read_tokenizer_json,
    tokenizer_call,
)
from tunesmith.runs.trust import (
    SafeFolder,
    field,
    open_model,
    open_regular,
    read_limited,
    run_isolated,
    signal_name,
)

ONNX_DIR = "onnx"
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
EXPORT_INFO = "export.json"
BACKENDS = ("onnx", "torch")
PRECISIONS = ("auto", "fp32", "int8")

TEXT_FORMAT_VERSION = 1
"""The ``format_version`` of a text model's ``tunesmith.json``."""

MAX_OUTPUTS = 1_000_000
"""Most outputs (classes) a saved model may declare; its head's shape must match too."""

MAX_POSITIONS = 1_048_576
"""Largest ``max_position_embeddings`` read from ``backbone_config.json``."""

MAX_EXPORT_INFO_BYTES = 1 << 20
"""``onnx/export.json`` is a few kilobytes; anything above a megabyte is not one tunesmith wrote."""

MAX_GRAPH_BYTES = 2 * 1024**3
"""An ONNX file cannot exceed protobuf's 2 GiB; tunesmith never writes external data beside it."""

_TASKS = ("binary", "multiclass", "regression")
_RETRAIN_HINT = "The folder is damaged or was not written by tunesmith; re-save or retrain the model"


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


def _sha256(path: Path) -> str:
    # Never through a link, never blocking on a FIFO: the file hashed is the regular file scanned.
    fd = open_regular(path, limit=None, shown=path.name)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_model(folder: str | os.PathLike[str]) -> tuple[SafeFolder, dict[str, Any]]:
    """The model folder opened through :func:`~tunesmith.runs.trust.open_model` and its ``tunesmith.json``.

    The whole tree is scanned first (no links, FIFOs, devices, code, pickles or archives);
    read every further file through the returned :class:`~tunesmith.runs.trust.SafeFolder`.
    """
    return open_model(folder)


def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``tunesmith.json`` of a model folder (after the scan of :func:`read_model`), or an :class:`ArtifactError`."""
    return read_model(folder)[1]


def model_version(folder: Path) -> str:
    """A short content hash of the weights: two folders with the same version hold the same model."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ArtifactError("model.safetensors is missing", path=folder, hint="Give a folder written by save()")
    return _sha256(weights)[:12]


@contextlib.contextmanager
def field_errors(file: str | os.PathLike[str], name: str) -> Iterator[None]:
    """Report what a loader refused in the value of field ``name`` of ``file`` as that field's fault.

    A :class:`ConfigError` (a saved setting that no longer validates), an
    :class:`ArtifactError` raised without a file, or a ``KeyError``/``TypeError``/
    ``ValueError`` met while using the value becomes one :class:`ArtifactError` naming
    ``file`` and the field.
    """
    try:
        yield
    except ArtifactError as exc:
        if exc.path is not None:
            raise
        raise ArtifactError(f"field {name!r}: {exc.message}", path=file, hint=exc.hint or _RETRAIN_HINT) from None
    except TunesmithError as exc:
        raise ArtifactError(f"field {name!r} is invalid: {exc}", path=file, hint=_RETRAIN_HINT) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ArtifactError(f"field {name!r} is malformed: {first}", path=file, hint=_RETRAIN_HINT) from None


def _string_list(meta: Mapping[str, Any], name: str, *, file: Path, default: Any = None) -> list[str]:
    values = field(meta, name, list, file=file, default=default)
    if values is None:
        return []
    if len(values) > MAX_OUTPUTS:
        raise ArtifactError(f"field {name!r} holds {len(values):,} entries, over {MAX_OUTPUTS:,}", path=file)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ArtifactError(f"field {name!r}[{i}] must be a string, got {type(v).__name__}", path=file)
    return list(values)


def check_text_meta(meta: Mapping[str, Any], *, file: Path) -> None:
    """Refuse a text model's ``tunesmith.json`` whose fields a loader reads have a wrong type or value.

    Checked: ``format_version``, ``task``, ``schema`` (columns, target, task), ``labels``
    and ``label_values``, ``n_outputs`` (1 to :data:`MAX_OUTPUTS`, equal to the number of
    labels or 1 for regression), ``target_scaling``, ``preprocessing``, ``config.max_length``,
    the ``backbone`` entry and the types of the report fields (``metrics``, ``history``,
    ...). Each refusal is an :class:`ArtifactError` naming ``file`` and the field.
    """
    version = field(meta, "format_version", int, file=file)
    if version != TEXT_FORMAT_VERSION:
        raise ArtifactError(
            f"model format version {version!r} is not supported (expected {TEXT_FORMAT_VERSION})",
            path=file,
            hint="Re-save the model with this tunesmith version",
        )
    task = field(meta, "task", str, file=file, choices=_TASKS)
    field(meta, "schema", dict, file=file)
    field(meta, "schema.task", str, file=file, choices=(task,))
    field(meta, "schema.target", str, file=file)
    if not _string_list(meta, "schema.text_columns", file=file):
        raise ArtifactError("field 'schema.text_columns' names no column", path=file, hint=_RETRAIN_HINT)
    for name in ("numeric_columns", "categorical_columns", "ignored_columns", "labels"):
        _string_list(meta, f"schema.{name}", file=file, default=None)
    labels = _string_list(meta, "labels", file=file, default=None)
    values = field(meta, "label_values", list, file=file, default=None) or []
    for i, v in enumerate(values):
        if not isinstance(v, (str, int, float, bool)):
            raise ArtifactError(f"field 'label_values'[{i}] must be a label, got {type(v).__name__}", path=file)
    n_outputs = field(meta, "n_outputs", int, file=file, low=1, high=MAX_OUTPUTS)
    wanted = 1 if task == "regression" else len(labels)
    if task != "regression" and len(labels) < 2:
        raise ArtifactError(f"field 'labels' must name at least 2 classes for a {task} model", path=file)
    if n_outputs != wanted:
        raise ArtifactError(
            f"field 'n_outputs' is {n_outputs} but a {task} model with {len(labels)} labels has {wanted}",
            path=file,
            hint=_RETRAIN_HINT,
        )
    if field(meta, "target_scaling", dict, file=file, default=None) is not None:
        for name in ("mean", "std"):
            number = field(meta, f"target_scaling.{name}", float, file=file)
            if not math.isfinite(number):
                raise ArtifactError(f"field 'target_scaling.{name}' must be finite, got {number!r}", path=file)
    if field(meta, "preprocessing", dict, file=file, default=None) is not None:
        impute = field(meta, "preprocessing.impute", dict, file=file, default=None) or {}
        for col, v in impute.items():
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise ArtifactError(
                    f"field 'preprocessing.impute.{col}' must be a value, got {type(v).__name__}", path=file
                )
        scaler = field(meta, "preprocessing.scaler", dict, file=file, default=None)
        if scaler is not None:
            from tunesmith.data.normalize import NumericScaler

            with field_errors(file, "preprocessing.scaler"):
                NumericScaler.from_dict(scaler)
    field(meta, "config", dict, file=file)
    field(meta, "config.max_length", int, file=file, low=1, high=MAX_POSITIONS, default=None)
    field(meta, "backbone", dict, file=file)
    field(meta, "backbone.name", str, file=file)
    field(meta, "backbone.fingerprint", str, file=file)
    field(meta, "backbone.weights", str, file=file, choices=("full", "base"))
    field(meta, "backbone.pooling", str, file=file, choices=("mean", "cls"))
    field(meta, "backbone.hidden_size", int, file=file, low=1, high=65_536, default=None)
    # Report fields: shown by /v1/metadata and the estimator's attributes, each of its own type.
    for name in ("metrics", "baselines", "training", "data"):
        field(meta, name, dict, file=file, default=None)
    field(meta, "history", list, file=file, default=None)
    for name in ("created", "tunesmith_version"):
        field(meta, name, str, file=file, default=None)


def saved_schema(meta: Mapping[str, Any], *, file: Path) -> Any:
    """The :class:`~tunesmith.data.schema.Schema` of a checked ``tunesmith.json``; a bad one names field 'schema'."""
    from tunesmith.data.schema import Schema

    with field_errors(file, "schema"):
        return Schema.from_dict(meta["schema"])


def saved_preprocessing(meta: Mapping[str, Any], *, file: Path) -> Any:
    """The :class:`~tunesmith.data.quality.Preprocessing` of a checked ``tunesmith.json``."""
    from tunesmith.data.quality import Preprocessing

    with field_errors(file, "preprocessing"):
        return Preprocessing.from_dict(meta.get("preprocessing"))


class Predictor:
    """Turns rows into predictions with one backend; safe to call from one thread at a time per call.

    Use :func:`load_predictor` to build one. ``version`` identifies the model weights,
    ``backend`` and ``precision`` say what runs them.
    """

    backend: str = ""
    precision: str = "fp32"

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
            from tunesmith.data.validate import format_value

            col = s.text_columns[0]
            return [format_value(r.get(col)) or "" for r in records]
        frame = pd.DataFrame.from_records([dict(r) for r in records], columns=list(s.feature_columns))
        return self.texts(frame)

    def texts(self, df: pd.DataFrame) -> list[str]:
        """The one input string per row that training built (text columns joined, extras appended)."""
        from tunesmith.data.validate import texts_of

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

        ``rows`` are the positions in ``texts`` of the batch's rows. Batches are sorted by
        length so similar lengths share padding and short texts stay cheap; every caller that
        runs the model (:meth:`logits`, personalised serving) batches the same way.
        """
        if not texts:
            return
        with self._lock:
            ids = self._tokenize(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
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


def _external_data(model: Any) -> str | None:
    """The name of the first tensor of an ONNX model whose data lives in another file, or None."""
    from onnx import AttributeProto, TensorProto

    def tensors_of(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            yield from nodes_tensors(node)

    def nodes_tensors(node: Any) -> Iterator[Any]:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            elif attr.type == AttributeProto.SPARSE_TENSORS:
                for sparse in attr.sparse_tensors:
                    yield sparse.values
                    yield sparse.indices
            elif attr.type == AttributeProto.GRAPH:
                yield from tensors_of(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from tensors_of(sub)

    def everything() -> Iterator[Any]:
        yield from tensors_of(model.graph)
        for function in model.functions:
            for node in function.node:
                yield from nodes_tensors(node)

    for tensor in everything():
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            return str(tensor.name) or "(unnamed)"
    return None


# The child process that builds a graph's session, and runs it once on a tiny input, before
# this process does (see onnx_session). Its address space is capped at what it held after
# importing ONNX Runtime plus the budget in argv[1]: an allocation beyond it fails there (or
# kills it), never here. It reports "[Fatal] <why>" on stderr and exits 3 when ONNX Runtime
# refuses the graph, 4 when the graph needs more memory than the cap.
_ORT_CHILD = """
import os, sys
budget = int(sys.argv[1])
data = sys.stdin.buffer.read()
import numpy as np
import onnxruntime as ort
try:
    import resource
    with open("/proc/self/statm") as fh:
        size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + budget, size + budget))
except (ImportError, OSError, ValueError):
    pass  # no cap where the platform has none; the parent's timeout still holds
def fail(code, what):
    print("[Fatal] " + what, file=sys.stderr)
    sys.exit(code)
def why(exc):
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    memory = isinstance(exc, MemoryError) or any(
        s in text for s in ("Failed to allocate", "bad_alloc", "bad allocation", "std::bad_array_new_length")
    )
    return (4 if memory else 3), text[:300]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
try:
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
except BaseException as exc:
    fail(*why(exc))
del data
kinds = {"float": np.float32, "double": np.float64, "float16": np.float16, "int64": np.int64, "int32": np.int32,
         "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
feeds = {}
for node in session.get_inputs():
    kind = kinds.get(str(node.type).removeprefix("tensor(").removesuffix(")"))
    if kind is None:
        sys.exit(0)  # an input this check cannot make up: the build alone was checked
    shape = [d if isinstance(d, int) and d > 0 else 2 for d in (node.shape or [])]
    try:
        feeds[node.name] = np.zeros(shape, kind)
    except BaseException as exc:
        fail(*why(exc))
try:
    session.run(None, feeds)
except BaseException as exc:
    code, text = why(exc)
    if code == 4:
        fail(code, text)
print("ok")
"""

_ORT_VERDICTS: dict[str, str | None] = {}
_ORT_VERDICT_LOCK = threading.Lock()


def _graph_budget(size: int) -> int:
    """Bytes of memory a session for a ``size``-byte graph may take beyond ONNX Runtime itself.

    A tunesmith graph's session (initializers copied, weights pre-packed) takes about twice
    the graph's size: MiniLM's 90 MB graph 175 MiB, its int8 graph 118 MiB.
    """
    return 64 * 1024**2 + 3 * size


def _session_verdict(data: bytes) -> str | None:
    """Why building a session for ``data`` failed in a child process (crash, memory, refusal), or None.

    The child builds the session as :func:`onnx_session` does and runs it once on a tiny
    input, with its memory capped at :func:`_graph_budget`; cached by the graph's SHA-256 for
    the life of the process, so a graph is checked once.
    """
    import signal

    digest = hashlib.sha256(data).hexdigest()
    with _ORT_VERDICT_LOCK:
        if digest in _ORT_VERDICTS:
            return _ORT_VERDICTS[digest]
    budget = _graph_budget(len(data))
    timeout = 8.0 + 30.0 * len(data) / 1024**3
    run = run_isolated(_ORT_CHILD, [str(budget)], data, timeout=timeout, what="building its ONNX Runtime session")
    verdict = run.failure
    if run.returncode:
        said = [ln for ln in run.stderr.splitlines() if ln.startswith("[Fatal]")]
        detail = said[-1].removeprefix("[Fatal]").strip()[:300] if said else ""
        if run.returncode == 4 or run.returncode == -signal.SIGKILL:
            verdict = (
                f"ONNX Runtime needs more than {budget / 1024**2:.0f} MiB to build its session "
                f"(the most a {len(data):,}-byte graph may take)"
            )
        elif run.returncode == 3 and detail:
            verdict = detail
        elif run.returncode < 0:
            verdict = f"ONNX Runtime crashed the process that built its session ({signal_name(run.returncode)})"
        else:
            verdict = f"ONNX Runtime failed in the process that built its session (exit status {run.returncode})"
    with _ORT_VERDICT_LOCK:
        _ORT_VERDICTS[digest] = verdict
    return verdict


def onnx_session(graph: Path, threads: int | None) -> Any:
    """An ONNX Runtime CPU session with ``threads`` compute threads; a bad graph is an :class:`ArtifactError`.

    The graph is read once (a regular file, never through a link) and must hold all its
    weights: a tensor stored as external data would make ONNX Runtime open another file,
    so such graphs are refused (tunesmith never writes them). The session is built from the
    bytes that were checked, so no path inside the graph is ever resolved. It is first built
    (and run once on a tiny input) in a child process with capped memory
    (:func:`_session_verdict`): a graph whose constant folding would allocate gigabytes, or
    that crashes ONNX Runtime, is refused there and never built here.
    """
    import onnx
    import onnxruntime as ort

    data = read_limited(graph, limit=MAX_GRAPH_BYTES, shown=f"{graph.parent.name}/{graph.name}")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends for a file that is not a graph
        raise ArtifactError(
            f"the ONNX graph cannot be loaded: {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}",
            path=graph,
            hint="Re-export the model with tunesmith export",
        ) from None
    external = _external_data(model)
    del model
    if external is not None:
        raise ArtifactError(
            f"the ONNX graph stores tensor {external!r} as external data in another file; tunesmith graphs hold "
            "all their weights and a loaded folder may not make it read other files",
            path=graph,
            hint="Re-export the model with tunesmith export",
        )
    verdict = _session_verdict(data)
    if verdict is not None:
        raise ArtifactError(
            f"the ONNX graph cannot be loaded: {verdict}",
            path=graph,
            hint="Re-export the model with tunesmith export",
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ArtifactError(
            f"the ONNX graph cannot be loaded: {(str(exc).splitlines() or [type(exc).__name__])[0][:300]}",
            path=graph,
            hint="Re-export the model with tunesmith export",
        ) from None


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


def _onnx_tokenizer(safe: SafeFolder, *, vocab_size: int | None) -> Any:
    """The saved ``tokenizer/tokenizer.json`` as a :class:`tokenizers.Tokenizer`, after the checks a load makes.

    The tokenizer's configuration files may not name custom code or other files (as for
    :meth:`FineTuner.load <tunesmith.FineTuner.load>`); ``tokenizer.json`` is read inside the
    folder with a size cap and parsed from text, so no path in it is opened; its token ids
    must stay below the encoder's ``vocab_size``, and it must encode a short probe text (a
    tokenizer the library parses but panics on is refused here, not at the first prediction).
    """
    check_token_configs(safe)
    rel = "tokenizer/tokenizer.json"
    tokenizer = read_tokenizer_json(safe, rel)
    if vocab_size is not None:
        check_vocab(tokenizer, vocab_size, folder=safe, rel=rel)
    probe_tokenizer(tokenizer.encode_batch, path=safe.root / rel)
    return tokenizer


def _plain(value: Any) -> Any:
    """numpy scalars become Python ones so they serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value


class OnnxPredictor(Predictor):
    """ONNX Runtime on the CPU, with the model's tokenizer; no PyTorch needed at prediction time."""

    backend = "onnx"

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        *,
        precision: str,
        batch_size: int,
        threads: int | None,
        version: str | None,
        graph: Path | None = None,
        safe: SafeFolder | None = None,
    ) -> None:
        """``graph``: a graph to run instead of the exported one (the export's own checks)."""
        super().__init__(folder, meta, batch_size=batch_size, version=version, safe=safe)
        safe = self.safe
        if precision == "auto":
            precision = "int8" if safe.has(f"{ONNX_DIR}/{ONNX_FILES['int8']}") else "fp32"
        if graph is None:
            graph = safe.file(f"{ONNX_DIR}/{ONNX_FILES[precision]}", required=False)
        if graph is None:
            flag = " --quantize int8" if precision == "int8" else ""
            raise ArtifactError(
                f"no {precision} ONNX graph ({ONNX_DIR}/{ONNX_FILES[precision]})",
                path=folder,
                hint=f"Export it first: tunesmith export {folder} --format onnx{flag}",
            )
        self.precision = precision
        self.graph_path = graph
        tokenizer = _onnx_tokenizer(safe, vocab_size=self.vocab_size)
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._tokenizer_path = safe.root / "tokenizer" / "tokenizer.json"
        pad = tokenizer.token_to_id("[PAD]")
        cfg_rel = "tokenizer/tokenizer_config.json"
        if safe.has(cfg_rel):
            name = safe.read_json(cfg_rel).get("pad_token")
            if isinstance(name, dict):  # an AddedToken as older transformers versions saved it
                name = name.get("content")
            if isinstance(name, str) and tokenizer.token_to_id(name) is not None:
                pad = tokenizer.token_to_id(name)
        self._pad = int(pad) if pad is not None else 0
        self._session = onnx_session(graph, threads)
        self._input_names = {i.name for i in self._session.get_inputs()}
        outputs = self._session.get_outputs()
        if not outputs or outputs[0].name != "logits":
            raise ArtifactError(
                "the ONNX graph has no 'logits' output", path=graph, hint="Re-export the model with tunesmith export"
            )
        shape = outputs[0].shape
        width = shape[1] if isinstance(shape, (list, tuple)) and len(shape) == 2 else None
        if isinstance(width, int) and width != self.n_outputs:
            raise ArtifactError(
                f"the ONNX graph gives {width} outputs but tunesmith.json field 'n_outputs' is {self.n_outputs}",
                path=graph,
                hint="Re-export the model with tunesmith export",
            )

    @property
    def pad_id(self) -> int:
        return self._pad

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = tokenizer_call(lambda: self._tokenizer.encode_batch(list(texts)), path=self._tokenizer_path)
        return [enc.ids for enc in encoded]

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        try:
            out = self._session.run(["logits"], {k: v for k, v in feed.items() if k in self._input_names})[0]
        except Exception as exc:  # onnxruntime's own types: the graph does not fit the model's inputs
            raise ArtifactError(
                f"the ONNX graph failed on a batch: {(str(exc).splitlines() or [type(exc).__name__])[0][:300]}",
                path=self.graph_path,
                hint="Re-export the model with tunesmith export",
            ) from None
        result = np.asarray(out, dtype=np.float32)
        if result.ndim != 2 or result.shape[1] != self.n_outputs:
            raise ArtifactError(
                f"the ONNX graph gives outputs of shape {list(result.shape)}, not (rows, {self.n_outputs})",
                path=self.graph_path,
                hint="Re-export the model with tunesmith export",
            )
        return result

    def close(self) -> None:
        self._session = None


class TorchPredictor(Predictor):
    """The PyTorch model as :meth:`FineTuner.load` builds it."""

    backend = "torch"

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        *,
        batch_size: int,
        threads: int | None,
        version: str | None,
        estimator: Any = None,
        safe: SafeFolder | None = None,
        backbone: str | None = None,
    ) -> None:
        """``estimator``: the :class:`~tunesmith.FineTuner` of ``folder`` if already loaded (else loaded here).

        ``backbone`` names the pre-trained backbone of a head-only or LoRA model whose
        metadata names a local folder (see :meth:`FineTuner.load <tunesmith.FineTuner.load>`).
        """
        super().__init__(folder, meta, batch_size=batch_size, version=version, safe=safe)
        import torch

        from tunesmith.estimator import FineTuner

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        if estimator is None:
            estimator = FineTuner._from_opened(self.safe, meta, backbone=backbone)
        self.estimator: FineTuner | None = estimator
        self._backbone: Any = estimator.backbone_
        self._model: Any = estimator.model_
        self._pad = int(estimator.backbone_.pad_id)

    @property
    def pad_id(self) -> int:
        return self._pad

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        assert self._backbone is not None, "this predictor was closed"
        backbone = self._backbone
        return tokenizer_call(
            lambda: list(backbone.tokenize(texts, self.max_length)),
            path=self.safe.root / "tokenizer" / "tokenizer.json",
        )

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        assert self._model is not None
        with torch.inference_mode():
            out = self._model(torch.from_numpy(ids), torch.from_numpy(mask))
        return np.asarray(out.float().numpy(), dtype=np.float32)

    def close(self) -> None:
        # Every reference to the network goes, or a reload would keep two models in memory.
        self._model = None
        self.estimator = None
        self._backbone = None


def default_threads() -> int:
    """Threads for one model: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def load_predictor(
    path: str | os.PathLike[str],
    *,
    backend: str = "onnx",
    precision: str = "auto",
    batch_size: int = 64,
    threads: int | None = None,
    version: str | None = None,
    backbone: str | None = None,
) -> Predictor:
    """Open the model folder at ``path`` for prediction.

    ``backend`` is ``"onnx"`` (needs ``tunesmith export`` first) or ``"torch"``. For ONNX,
    ``precision`` picks ``"int8"`` or ``"fp32"``; ``"auto"`` takes int8 when it was exported.
    ``threads`` caps the compute threads (default: all cores this process may use);
    ``version`` overrides the model version reported with every prediction (default: a
    content hash of the weights). ``backbone`` (torch backend) names the pre-trained backbone
    of a head-only or LoRA model whose metadata names a local folder, which is never opened
    on the metadata's word (see :meth:`FineTuner.load <tunesmith.FineTuner.load>`).

    The folder goes through :func:`read_model` once; every file is then read through that
    scan. A folder that is unsafe or malformed is an :class:`ArtifactError` naming the file
    and field.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"must be one of {', '.join(BACKENDS)}, got {backend!r}", key="backend")
    if precision not in PRECISIONS:
        raise ConfigError(f"must be one of {', '.join(PRECISIONS)}, got {precision!r}", key="precision")
    folder = Path(path)
    safe, meta = read_model(path)  # a folder the caller opened already is not scanned again
    kind = meta.get("kind", "text")
    if kind in ("image", "tabular"):
        from tunesmith.export.modal import ImagePredictor, TabularPredictor

        graph = None
        if backend == "onnx":
            from tunesmith.export.modal import _graph_path

            graph = _graph_path(folder, precision)
        if kind == "tabular":
            return TabularPredictor(
                folder,
                meta,
                backend=backend,
                batch_size=batch_size,
                threads=threads,
                version=version,
                graph=graph,
                backbone=backbone,
                opened=safe,
            )
        if backbone is not None:
            raise ConfigError(
                "backbone= applies to text and tabular models; this folder holds an image model",
                key="backbone",
                hint="Leave backbone out for this model",
            )
        return ImagePredictor(
            folder,
            meta,
            backend=backend,
            batch_size=batch_size,
            threads=threads,
            version=version,
            graph=graph,
            opened=safe,
        )
    if kind != "text":
        raise ArtifactError(
            f"field 'kind' is {kind!r}: this folder holds a {kind} model, which predicts with its own server",
            path=safe.root / "tunesmith.json",
            hint="Serve it with tunesmith serve, or load it with tunesmith.load()",
        )
    if backend == "torch":
        if precision == "int8":
            raise ConfigError("int8 runs on the onnx backend only", key="precision", hint="Use --backend onnx")
        return TorchPredictor(
            folder, meta, batch_size=batch_size, threads=threads, version=version, safe=safe, backbone=backbone
        )
    return OnnxPredictor(
        folder, meta, precision=precision, batch_size=batch_size, threads=threads, version=version, safe=safe
    )
