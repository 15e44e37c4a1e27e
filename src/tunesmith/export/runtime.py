"""Prediction from a saved model folder with one interface for every backend.

:func:`load_predictor` opens a model folder written by :meth:`FineTuner.save` and returns a
:class:`Predictor` that runs either the PyTorch model (``backend="torch"``) or the ONNX graph
written by ``tunesmith export`` (``backend="onnx"``, fp32 or int8). Both take rows (dicts or a
DataFrame with the training columns), build the same input text as training did, tokenize
with the model's own tokenizer and run length-sorted batches. The server, ``tunesmith
predict`` and the benchmarks all predict through this one class, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import ArtifactError, ConfigError, DataError

ONNX_DIR = "onnx"
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
EXPORT_INFO = "export.json"
BACKENDS = ("onnx", "torch")
PRECISIONS = ("auto", "fp32", "int8")


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
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_meta(folder: Path) -> dict[str, Any]:
    """``tunesmith.json`` of a model folder, or an :class:`ArtifactError` saying what is wrong."""
    from tunesmith.runs.artifacts import check_safe_model_dir

    check_safe_model_dir(folder)
    try:
        meta: dict[str, Any] = json.loads((folder / "tunesmith.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"tunesmith.json cannot be read: {exc}", path=folder) from None
    return meta


def model_version(folder: Path) -> str:
    """A short content hash of the weights: two folders with the same version hold the same model."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ArtifactError("model.safetensors is missing", path=folder, hint="Give a folder written by save()")
    return _sha256(weights)[:12]


class Predictor:
    """Turns rows into predictions with one backend; safe to call from one thread at a time per call.

    Use :func:`load_predictor` to build one. ``version`` identifies the model weights,
    ``backend`` and ``precision`` say what runs them.
    """

    backend: str = ""
    precision: str = "fp32"

    def __init__(self, folder: Path, meta: dict[str, Any], *, batch_size: int, version: str | None) -> None:
        from tunesmith.data.quality import Preprocessing
        from tunesmith.data.schema import Schema

        self.folder = folder
        self.meta = meta
        self.schema = Schema.from_dict(meta["schema"])
        self.task: str = meta["task"]
        self.labels: list[str] = [str(x) for x in meta.get("labels") or []]
        values = list(meta.get("label_values") or [])
        self.label_values: list[Any] = values if len(values) == len(self.labels) else list(self.labels)
        self.target_scaling: dict[str, float] = meta.get("target_scaling") or {"mean": 0.0, "std": 1.0}
        self.preprocessing = Preprocessing.from_dict(meta.get("preprocessing"))
        self.max_length = min(int(meta["config"].get("max_length", 128)), _max_positions(folder))
        if batch_size < 1:
            raise ConfigError(f"must be at least 1, got {batch_size}", key="batch_size")
        self.batch_size = batch_size
        self.version = version or model_version(folder)
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
        path = self.folder / ONNX_DIR / EXPORT_INFO
        if not path.is_file():
            return None
        try:
            info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return info

    def close(self) -> None:
        """Release the session or model (the object must not be used afterwards)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def onnx_session(graph: Path, threads: int | None) -> Any:
    """An ONNX Runtime CPU session with ``threads`` compute threads; a bad graph is an :class:`ArtifactError`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ArtifactError(
            f"the ONNX graph cannot be loaded: {str(exc).splitlines()[0]}",
            path=graph,
            hint="Re-export the model with tunesmith export",
        ) from None


def _max_positions(folder: Path) -> int:
    """The encoder's position limit, which caps truncation exactly as training's tokenizer did."""
    try:
        config = json.loads((folder / "backbone_config.json").read_text(encoding="utf-8"))
        return int(config.get("max_position_embeddings", 512))
    except (OSError, json.JSONDecodeError, TypeError, ValueError):
        return 512


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
    ) -> None:
        super().__init__(folder, meta, batch_size=batch_size, version=version)
        from tokenizers import Tokenizer

        onnx_dir = folder / ONNX_DIR
        if precision == "auto":
            precision = "int8" if (onnx_dir / ONNX_FILES["int8"]).is_file() else "fp32"
        graph = graph or onnx_dir / ONNX_FILES[precision]
        if not graph.is_file():
            flag = " --quantize int8" if precision == "int8" else ""
            raise ArtifactError(
                f"no {precision} ONNX graph ({ONNX_DIR}/{ONNX_FILES[precision]})",
                path=folder,
                hint=f"Export it first: tunesmith export {folder} --format onnx{flag}",
            )
        self.precision = precision
        self.graph_path = graph
        tok_file = folder / "tokenizer" / "tokenizer.json"
        if not tok_file.is_file():
            raise ArtifactError("tokenizer/tokenizer.json is missing", path=folder)
        tokenizer = Tokenizer.from_file(str(tok_file))
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        pad = tokenizer.token_to_id("[PAD]")
        tok_cfg = folder / "tokenizer" / "tokenizer_config.json"
        if tok_cfg.is_file():
            try:
                name = json.loads(tok_cfg.read_text(encoding="utf-8")).get("pad_token")
                if isinstance(name, str) and tokenizer.token_to_id(name) is not None:
                    pad = tokenizer.token_to_id(name)
            except (OSError, json.JSONDecodeError):
                pass
        self._pad = int(pad) if pad is not None else 0
        self._session = onnx_session(graph, threads)
        self._input_names = {i.name for i in self._session.get_inputs()}

    @property
    def pad_id(self) -> int:
        return self._pad

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tokenizer.encode_batch(list(texts))]

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        out = self._session.run(["logits"], {k: v for k, v in feed.items() if k in self._input_names})[0]
        return np.asarray(out, dtype=np.float32)

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
    ) -> None:
        """``estimator``: the :class:`~tunesmith.FineTuner` of ``folder`` if already loaded (else loaded here)."""
        super().__init__(folder, meta, batch_size=batch_size, version=version)
        import torch

        from tunesmith.estimator import FineTuner

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        if estimator is None:
            estimator = FineTuner.load(folder)
        self.estimator: FineTuner | None = estimator
        self._backbone: Any = estimator.backbone_
        self._model: Any = estimator.model_
        self._pad = int(estimator.backbone_.pad_id)

    @property
    def pad_id(self) -> int:
        return self._pad

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        assert self._backbone is not None, "this predictor was closed"
        return list(self._backbone.tokenize(texts, self.max_length))

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
) -> Predictor:
    """Open the model folder at ``path`` for prediction.

    ``backend`` is ``"onnx"`` (needs ``tunesmith export`` first) or ``"torch"``. For ONNX,
    ``precision`` picks ``"int8"`` or ``"fp32"``; ``"auto"`` takes int8 when it was exported.
    ``threads`` caps the compute threads (default: all cores this process may use);
    ``version`` overrides the model version reported with every prediction (default: a
    content hash of the weights).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"must be one of {', '.join(BACKENDS)}, got {backend!r}", key="backend")
    if precision not in PRECISIONS:
        raise ConfigError(f"must be one of {', '.join(PRECISIONS)}, got {precision!r}", key="precision")
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError("no model folder here", path=folder, hint="Give a folder written by tunesmith fit")
    meta = read_meta(folder)
    kind = meta.get("kind", "text")
    if kind in ("image", "tabular"):
        from tunesmith.export.modal import ImagePredictor, TabularPredictor

        graph = None
        if backend == "onnx":
            from tunesmith.export.modal import _graph_path

            graph = _graph_path(folder, precision)
        cls = ImagePredictor if kind == "image" else TabularPredictor
        return cls(folder, meta, backend=backend, batch_size=batch_size, threads=threads, version=version, graph=graph)
    if backend == "torch":
        if precision == "int8":
            raise ConfigError("int8 runs on the onnx backend only", key="precision", hint="Use --backend onnx")
        return TorchPredictor(folder, meta, batch_size=batch_size, threads=threads, version=version)
    return OnnxPredictor(folder, meta, precision=precision, batch_size=batch_size, threads=threads, version=version)
