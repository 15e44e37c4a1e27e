"""Prediction and ONNX export for tabular models.

The graph takes the preprocessed feature matrix (LightGBM trees converted with onnxmltools,
or the neural network traced by torch); the preprocessing itself (imputation, scaling,
category codes, text vectors) runs before it, from the model's JSON. :class:`TabularPredictor`
follows the predictor contract (:class:`~tunesmith.export.predictor.Predictor`), so
``tunesmith serve``, ``tunesmith predict`` and the micro-batcher work on it unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import ConfigError, DataError
from tunesmith.export.graph import ExportResult, check_tolerance, finish, parity, refuse_int8, trace_to_onnx
from tunesmith.export.predictor import ONNX_DIR, ONNX_FILES, ModalPredictor, Prediction, graph_path, softmax
from tunesmith.export.session import onnx_session
from tunesmith.runs.trust import SafeFolder, open_model

NEURAL_GRAPH = "model.neural.onnx"


class TabularPredictor(ModalPredictor):
    """Predicts from rows of column values with the model's own preprocessing.

    ``backend="torch"`` runs LightGBM's and PyTorch's own predictors; ``"onnx"`` runs the
    exported graphs (``model.onnx``: the trees, or the network; ``model.neural.onnx``: the
    network of an ensemble). Text columns of a mixed-row model are embedded by the text
    encoder in PyTorch either way.
    """

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        *,
        backend: str,
        batch_size: int,
        threads: int | None,
        version: str | None,
        graph: Path | None = None,
        backbone: str | None = None,
        opened: SafeFolder | None = None,
    ) -> None:
        # Everything below comes from the loaded estimator, which checked every field; the
        # ``meta`` passed in is read only for the report fields of metadata().
        # ``opened``: the folder as the caller scanned it, read from without a second scan.
        from tunesmith.tabular.estimator import (
            TabularFineTuner,  # here, not at the top: ONNX serving must not load torch
        )

        est = TabularFineTuner.load(opened if opened is not None else folder, backbone=backbone)
        assert est.preprocessor_ is not None and est.schema_ is not None
        super().__init__(
            folder,
            meta,
            task=est.schema_.task,
            labels=list(est.schema_.labels or []),
            label_values=list(est.label_values_),
            target_scaling=est.target_scaling_,
            batch_size=batch_size,
            version=version,
        )
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.backend = backend
        self.precision = "fp32"
        self.schema = est.schema_
        self.columns = list(est.preprocessor_.columns)
        self.estimator: Any = est
        self._sessions: dict[str, Any] = {}
        if backend == "onnx":
            graph = graph or graph_path(folder, "fp32")
            chosen = self.estimator.chosen_
            first = "neural" if chosen == "neural" else "lightgbm"
            self._sessions[first] = onnx_session(graph, threads)
            if chosen == "ensemble":
                self._sessions["neural"] = onnx_session(graph.parent / NEURAL_GRAPH, threads)

    @property
    def required_columns(self) -> list[str]:
        return []

    def input_schema(self) -> dict[str, Any]:
        s = self.schema
        return {
            "text_columns": list(s.text_columns),
            "numeric_columns": list(s.numeric_columns),
            "categorical_columns": list(s.categorical_columns),
            "required": [],
            "missing_values": "a column left out of a row counts as missing (imputed as in training)",
        }

    def rows_to_texts(  # type: ignore[override]
        self, rows: Sequence[Mapping[str, Any] | str], *, where: str = "inputs"
    ) -> list[Mapping[str, Any]]:
        """The rows, checked: objects whose fields are the model's columns (the server's validation step)."""
        known = set(self.columns)
        out: list[Mapping[str, Any]] = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise DataError(
                    f"{where}[{i}] must be an object of column values, got {type(row).__name__}",
                    row=i + 1,
                    hint=f"This model reads: {', '.join(self.columns)}",
                )
            unknown = [k for k in row if k not in known]
            if unknown:
                raise DataError(
                    f"{where}[{i}] has unknown field {unknown[0]!r}",
                    row=i + 1,
                    column=str(unknown[0]),
                    hint=f"This model reads: {', '.join(self.columns)}",
                )
            for key, value in row.items():
                if value is not None and not isinstance(value, (str, int, float, bool)):
                    raise DataError(
                        f"{where}[{i}].{key} must be a number, a string or null, got {type(value).__name__}",
                        row=i + 1,
                        column=str(key),
                    )
            out.append(row)
        return out

    def outputs(self, df: pd.DataFrame) -> np.ndarray:
        """Probabilities ``(n, k)`` (classification) or values ``(n,)`` (regression) for a frame."""
        est = self.estimator
        for col in self.columns:
            if col not in df.columns:
                raise DataError(
                    f"column {col!r} used in training is missing",
                    column=col,
                    hint=f"Columns present: {', '.join(map(str, df.columns))}",
                )
        features = est.preprocessor_.encode(est._with_rows(df))
        if not self._sessions:
            return np.asarray(est._outputs(features, est.chosen_))
        parts = []
        for name, session in self._sessions.items():
            parts.append(self._run_graph(name, session, features))
        return np.mean(parts, axis=0) if len(parts) > 1 else parts[0]

    def _run_graph(self, name: str, session: Any, features: Any) -> np.ndarray:
        task = self.task
        if name == "lightgbm":
            outs = session.run(None, {"raw": features.raw.astype(np.float32)})
            if task == "regression":
                return np.asarray(outs[0], dtype=np.float64).reshape(-1)
            return np.asarray(outs[1], dtype=np.float64)
        feed = {"numeric": features.numeric.astype(np.float32), "categorical": features.categorical.astype(np.int64)}
        names = {i.name for i in session.get_inputs()}
        logits = np.asarray(session.run(["logits"], {k: v for k, v in feed.items() if k in names})[0], np.float64)
        if task == "regression":
            s = self.target_scaling
            return logits[:, 0] * float(s["std"]) + float(s["mean"])
        return softmax(logits)

    def _decode(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        # A tabular model's outputs are already probabilities (or values), not logits.
        if self.task == "regression":
            return logits.astype(np.float64), None
        proba = logits.astype(np.float32)
        return np.asarray(self.label_values, dtype=object)[proba.argmax(axis=1)], proba

    def predict_frame(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        return self._decode(self.outputs(df))

    def predict_rows(self, rows: Sequence[Mapping[str, Any] | str], *, probabilities: bool = True) -> list[Prediction]:
        records = self.rows_to_texts(rows)
        frame = pd.DataFrame.from_records([dict(r) for r in records], columns=self.columns)
        return self.predictions(self.outputs(frame), probabilities)

    def warmup(self) -> None:
        self.predict_rows([{}])

    def close(self) -> None:
        self._sessions = {}
        self.estimator = None


def _sample_rows(est: Any, data: Any, sample_size: int, seed: int) -> tuple[pd.DataFrame, str]:
    """Rows to check parity on: the given data, or rows drawn from what the preprocessor learned."""
    rng = np.random.default_rng(seed)
    if data is not None:
        frame, _ = est._read(data, "data")
        idx = np.sort(rng.permutation(len(frame))[:sample_size])
        return frame.iloc[idx].reset_index(drop=True), f"{len(idx)} given rows"
    pre = est.preprocessor_
    n = min(sample_size, 128)
    cols: dict[str, Any] = {}
    for i, col in enumerate(pre.numeric_columns):
        values = rng.normal(
            pre.means[i] if i < len(pre.means) else 0.0, 1.0 + abs(pre.stds[i] if i < len(pre.stds) else 1.0), n
        )
        values[rng.random(n) < 0.1] = np.nan
        cols[col] = values
    for col in pre.categorical_columns:
        vocab = [*list(pre.vocabularies.get(col) or []), "never-seen-category"]
        cols[col] = [vocab[j] for j in rng.integers(0, len(vocab), n)]
    for col in pre.text_columns:
        words = ["good", "bad", "price", "quality", "fast", "slow", "great", "poor"]
        cols[col] = [" ".join(rng.choice(words, 5)) for _ in range(n)]
    return pd.DataFrame(cols), "generated rows"


def export_tabular_onnx(
    folder: Path,
    meta: dict[str, Any],
    *,
    data: Any,
    tolerance: float,
    sample_size: int,
    opset: int,
    threads: int | None,
    seed: int,
) -> ExportResult:
    """Convert a tabular model to ONNX (trees with onnxmltools, the network with torch) and check parity."""
    started = time.perf_counter()
    # Written into below: opened (links refused) before anything is, and loaded from that scan.
    safe, _ = open_model(folder)
    from tunesmith.tabular.estimator import TabularFineTuner  # here, not at the top: ONNX serving must not load torch

    est: Any = TabularFineTuner.load(safe)
    frame, source = _sample_rows(est, data, sample_size, seed)
    features = est.preprocessor_.encode(est._with_rows(frame))
    chosen = est.chosen_
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        first = scratch / ONNX_FILES["fp32"]
        if chosen in ("lightgbm", "ensemble"):
            _write_trees(est.booster_, features.raw.shape[1], first)
        if chosen == "neural":
            _write_net(est.net_, features, first, opset)
        if chosen == "ensemble":
            _write_net(est.net_, features, scratch / NEURAL_GRAPH, opset)
        reference = np.asarray(est._outputs(features, chosen), dtype=np.float64)
        check = TabularPredictor(folder, meta, backend="torch", batch_size=64, threads=threads, version="check")
        check._sessions["neural" if chosen == "neural" else "lightgbm"] = onnx_session(first, threads)
        if chosen == "ensemble":
            check._sessions["neural"] = onnx_session(scratch / NEURAL_GRAPH, threads)
        got = check.outputs(frame)
        ref2 = reference if reference.ndim == 2 else reference[:, None]
        got2 = got if got.ndim == 2 else got[:, None]
        result = parity(ref2, got2)
        result.update({"tolerance": tolerance, "source": source, "graph": chosen})
        check_tolerance(result, tolerance, folder)
        if chosen == "ensemble":
            (folder / ONNX_DIR).mkdir(exist_ok=True)
            os.replace(scratch / NEURAL_GRAPH, folder / ONNX_DIR / NEURAL_GRAPH)
        else:
            (folder / ONNX_DIR / NEURAL_GRAPH).unlink(missing_ok=True)
        written = finish(folder, scratch, result, opset, started, safe)
        if chosen == "ensemble":
            written.files["neural"] = f"{ONNX_DIR}/{NEURAL_GRAPH}"
        return written
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# onnxmltools' LightGBM converter supports opsets up to 15 (ai.onnx.ml TreeEnsemble included).
TREE_OPSET = 15


def _write_trees(booster: Any, n_features: int, path: Path) -> None:
    try:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError:
        raise ConfigError(
            "exporting LightGBM trees to ONNX needs the package onnxmltools",
            key="format",
            hint="Install it with: pip install 'tunesmith[serve]'",
        ) from None
    graph = convert_lightgbm(
        booster, initial_types=[("raw", FloatTensorType([None, n_features]))], target_opset=TREE_OPSET, zipmap=False
    )
    path.write_bytes(graph.SerializeToString())


def _write_net(net: Any, features: Any, path: Path, opset: int) -> None:
    import torch

    numeric = torch.as_tensor(features.numeric[:2], dtype=torch.float32)
    categorical = torch.as_tensor(features.categorical[:2], dtype=torch.long)
    net.eval()
    axes = {"numeric": {0: "batch"}, "categorical": {0: "batch"}, "logits": {0: "batch"}}
    trace_to_onnx(net, (numeric, categorical), path, ["numeric", "categorical"], axes, opset=opset)


def open_tabular_predictor(
    folder: Path,
    safe: SafeFolder,
    meta: dict[str, Any],
    *,
    backend: str,
    precision: str,
    batch_size: int,
    threads: int | None,
    version: str | None,
    backbone: str | None = None,
) -> TabularPredictor:
    """The predictor of an opened tabular model folder (what the registry's ``tabular`` kind predicts with)."""
    return TabularPredictor(
        folder,
        meta,
        backend=backend,
        batch_size=batch_size,
        threads=threads,
        version=version,
        graph=graph_path(folder, precision) if backend == "onnx" else None,
        backbone=backbone,
        opened=safe,
    )


def exporter(
    folder: Path, safe: SafeFolder, meta: dict[str, Any], *, quantize: str | None, **options: Any
) -> ExportResult:
    """The registry's ONNX exporter of tabular models: fp32 only (see :func:`export_tabular_onnx`)."""
    refuse_int8("tabular", quantize)
    return export_tabular_onnx(folder, meta, **{k: options[k] for k in _EXPORT_OPTIONS})


_EXPORT_OPTIONS = ("data", "tolerance", "sample_size", "opset", "threads", "seed")
