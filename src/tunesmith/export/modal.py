"""Prediction and ONNX export for image and tabular models (the old home of these names).

The image predictor and exporter live in :mod:`tunesmith.export.image`, the tabular ones in
:mod:`tunesmith.export.tabular`; both follow the predictor contract of
:class:`~tunesmith.export.predictor.Predictor`. The names are kept importable from here.
"""

from __future__ import annotations

from tunesmith.export.image import IMAGE_FIELD, ImagePredictor, export_image_onnx
from tunesmith.export.predictor import ModalPredictor
from tunesmith.export.predictor import graph_path as _graph_path
from tunesmith.export.tabular import NEURAL_GRAPH, TREE_OPSET, TabularPredictor, export_tabular_onnx

_ModalPredictor = ModalPredictor

__all__ = [
    "IMAGE_FIELD",
    "NEURAL_GRAPH",
    "TREE_OPSET",
    "ImagePredictor",
    "ModalPredictor",
    "TabularPredictor",
    "_graph_path",
    "export_image_onnx",
    "export_tabular_onnx",
]
