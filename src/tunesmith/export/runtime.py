"""Prediction from a saved model folder of any kind, with one interface for every backend.

:func:`load_predictor` opens a model folder and returns a :class:`Predictor` that runs either
the PyTorch model (``backend="torch"``) or the ONNX graph written by ``tunesmith export``
(``backend="onnx"``). The folder's kind, looked up in the one registry of kinds
(:mod:`tunesmith.estimators.registry`), picks the predictor: text
(:mod:`tunesmith.export.text`), image (:mod:`tunesmith.export.image`) or tabular
(:mod:`tunesmith.export.tabular`). The server, ``tunesmith predict`` and the benchmarks all
predict through it, so they cannot disagree.

The names this module held before the split (``OnnxPredictor``, ``onnx_session``,
``check_text_meta``, ...) are still importable from it.
"""

from __future__ import annotations

import os
from pathlib import Path

import tunesmith.export.parts  # noqa: F401  (attaches each kind's predictor and exporter)
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.estimators import registry
from tunesmith.estimators.text_meta import (
    MAX_OUTPUTS,
    MAX_POSITIONS,
    TEXT_FORMAT_VERSION,
    TEXT_READABLE_VERSIONS,
    check_text_meta,
    field_errors,
    saved_preprocessing,
    saved_schema,
)
from tunesmith.export.predictor import (
    BACKENDS,
    EXPORT_INFO,
    MAX_EXPORT_INFO_BYTES,
    ONNX_DIR,
    ONNX_FILES,
    PRECISIONS,
    Prediction,
    Predictor,
    read_meta,
    read_model,
    softmax,
)
from tunesmith.export.session import MAX_GRAPH_BYTES, default_threads, onnx_session
from tunesmith.export.text import OnnxPredictor, TorchPredictor
from tunesmith.runs.fingerprint import model_version

__all__ = [
    "BACKENDS",
    "EXPORT_INFO",
    "MAX_EXPORT_INFO_BYTES",
    "MAX_GRAPH_BYTES",
    "MAX_OUTPUTS",
    "MAX_POSITIONS",
    "ONNX_DIR",
    "ONNX_FILES",
    "PRECISIONS",
    "TEXT_FORMAT_VERSION",
    "TEXT_READABLE_VERSIONS",
    "OnnxPredictor",
    "Prediction",
    "Predictor",
    "TorchPredictor",
    "check_text_meta",
    "default_threads",
    "field_errors",
    "load_predictor",
    "model_version",
    "onnx_session",
    "read_meta",
    "read_model",
    "saved_preprocessing",
    "saved_schema",
    "softmax",
]


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
    on the metadata's word (see :meth:`FineTuner.load <tunesmith.estimators.text.FineTuner.load>`).

    The folder goes through :func:`read_model` once; every file is then read through that
    scan. A folder that is unsafe or malformed is an :class:`ArtifactError` naming the file
    and field. A kind served by a server of its own (a recommender) is refused here.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"must be one of {', '.join(BACKENDS)}, got {backend!r}", key="backend")
    if precision not in PRECISIONS:
        raise ConfigError(f"must be one of {', '.join(PRECISIONS)}, got {precision!r}", key="precision")
    folder = Path(path)
    safe, meta = read_model(path)  # a folder the caller opened already is not scanned again
    kind = registry.get(registry.kind_of_meta(meta))
    if kind.serving != "predict":
        raise ArtifactError(
            f"this folder holds a {kind.name} model, which predicts with its own server",
            path=safe.root / "tunesmith.json",
            hint="Serve it with tunesmith serve, or load it with tunesmith.load()",
        )
    open_predictor = registry.require(kind, "predictor", "Prediction", "Load it with tunesmith.load()")
    predictor: Predictor = open_predictor(
        folder,
        safe,
        meta,
        backend=backend,
        precision=precision,
        batch_size=batch_size,
        threads=threads,
        version=version,
        backbone=backbone,
    )
    return predictor
