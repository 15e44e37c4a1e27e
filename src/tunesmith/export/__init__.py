"""Export a fine-tuned model to ONNX (fp32 and int8) and predict from it.

- :func:`export_onnx` writes ``MODEL/onnx/model.onnx`` (and ``model.int8.onnx``), checks the
  graph against PyTorch and records the result in ``export.json`` and the model card.
- :func:`load_predictor` opens a model folder for prediction with the ``onnx`` or ``torch``
  backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith._lazy import lazy_module

if TYPE_CHECKING:
    from tunesmith.export.onnx import ExportResult, export_onnx
    from tunesmith.export.runtime import Prediction, Predictor, load_predictor

_LAZY = {
    "ExportResult": "tunesmith.export.onnx",
    "export_onnx": "tunesmith.export.onnx",
    "Prediction": "tunesmith.export.runtime",
    "Predictor": "tunesmith.export.runtime",
    "load_predictor": "tunesmith.export.runtime",
}

__all__ = ["ExportResult", "Prediction", "Predictor", "export_onnx", "load_predictor"]

__getattr__, __dir__ = lazy_module(__name__, _LAZY, globals())
