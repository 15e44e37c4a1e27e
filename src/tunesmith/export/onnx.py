"""ONNX export of a saved model folder of any kind, with a parity check.

:func:`export_onnx` opens the folder once, asks the one registry of kinds
(:mod:`tunesmith.estimators.registry`) for its kind's exporter and runs it: text models
(:mod:`tunesmith.export.text_export`: fp32 and int8, the int8 accuracy cost measured), image
and tabular models (:mod:`tunesmith.export.image`, :mod:`tunesmith.export.tabular`: fp32).
Every export is checked against the PyTorch model and writes ``onnx/export.json`` and a
section of ``card.md``; a failed check leaves the previous export as it was.

The names this module held before the split (``check_parity``, ``write_graph``,
``trace_to_onnx``, ``ExportResult``, ...) are still importable from it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import tunesmith.export.parts  # noqa: F401  (attaches each kind's predictor and exporter)
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.estimators import registry
from tunesmith.export.graph import (
    CARD_MARK,
    DEFAULT_TOLERANCE,
    OPSET,
    QUANTIZE_CHOICES,
    ExportResult,
    need_onnx,
    quantize_int8,
    render_export_section,
    trace_to_onnx,
)
from tunesmith.export.predictor import read_model
from tunesmith.export.text_export import check_parity, write_graph

__all__ = [
    "CARD_MARK",
    "DEFAULT_TOLERANCE",
    "OPSET",
    "QUANTIZE_CHOICES",
    "ExportResult",
    "check_parity",
    "export_onnx",
    "quantize_int8",
    "render_export_section",
    "trace_to_onnx",
    "write_graph",
]


def export_onnx(
    model: Any,
    *,
    quantize: str | None = None,
    data: Any = None,
    target: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_accuracy_drop: float | None = None,
    max_mae_increase: float | None = None,
    sample_size: int = 256,
    opset: int = OPSET,
    threads: int | None = None,
    seed: int = 0,
) -> ExportResult:
    """Write ``MODEL/onnx/model.onnx`` (and, for a text model, ``model.int8.onnx`` with ``quantize="int8"``).

    ``model`` is a model folder or a saved estimator (its ``model_path_``). ``data`` (a file or
    DataFrame) supplies the check rows: the run's training file gives its own test split
    (matched by SHA-256); any other labeled rows are used whole; without it, generated inputs
    check parity and int8 accuracy is not measured. ``tolerance`` bounds the fp32 graph's max
    |output difference| from PyTorch on up to ``sample_size`` rows; above it the export fails.
    ``max_accuracy_drop`` (points, classification) and ``max_mae_increase`` (regression) make
    the int8 export fail when it costs more than that; either needs labeled rows. The result
    is also written to ``onnx/export.json`` and to a section of ``card.md``.

    Raises:
        ConfigError: a setting out of range, or int8 asked of an image or tabular model.
        ArtifactError: no saved folder, an unsafe folder, or a graph that fails its check.
        NotSupportedError: a kind of model with no ONNX export (recommenders, adapter stores).
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"must be int8 or None, got {quantize!r}", key="quantize")
    if not tolerance > 0:
        raise ConfigError(f"must be above 0, got {tolerance!r}", key="tolerance")
    if sample_size < 1:
        raise ConfigError(f"must be at least 1, got {sample_size!r}", key="sample_size")
    need_onnx()
    started = time.perf_counter()
    given = model if isinstance(model, (str, os.PathLike)) else getattr(model, "model_path_", None)
    if given is None:
        raise ArtifactError(
            "this estimator was never saved, so there is no model folder to export into",
            hint="Call save(path) first, then export that folder",
        )
    folder = Path(given)
    if not folder.is_dir():
        raise ArtifactError("no model folder here", path=folder, hint="Give a folder written by tunesmith fit")
    safe, meta = read_model(folder)
    kind = registry.get(registry.kind_of_meta(meta))
    exporter = registry.require(kind, "exporter", "ONNX export", "Serve the folder with tunesmith serve")
    options: dict[str, Any] = {
        "model": model,
        "quantize": quantize,
        "data": data,
        "target": target,
        "tolerance": tolerance,
        "max_accuracy_drop": max_accuracy_drop,
        "max_mae_increase": max_mae_increase,
        "sample_size": sample_size,
        "opset": opset,
        "threads": threads,
        "seed": seed,
    }
    result: ExportResult = exporter(folder, safe, meta, started=started, **options)
    return result
