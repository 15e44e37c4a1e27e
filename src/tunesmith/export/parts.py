"""What the export layer gives each kind of model, attached to the one registry of kinds.

Importing this module attaches, per kind declared in the registry, the ONNX ``exporter`` and
the ``predictor`` that ``tunesmith predict``, batch prediction and the server open a folder
with. :func:`~tunesmith.export.runtime.load_predictor`, :func:`~tunesmith.export.onnx.export_onnx`
and the server look them up with
:func:`tunesmith.estimators.registry.require`; a kind with no exporter (recommenders,
personalised adapter stores) is refused with a sentence saying what to do instead.

Exporter calling convention: ``exporter(folder, safe, meta, *, model, quantize, data, target,
tolerance, max_accuracy_drop, max_mae_increase, sample_size, opset, threads, seed)``.
Predictor: ``predictor(folder, safe, meta, *, backend, precision, batch_size, threads,
version, backbone)``. ``safe`` and ``meta`` are the folder as
:func:`~tunesmith.runs.trust.open_model` opened it, read without a second scan.
"""

from __future__ import annotations

# The built-in kinds are declared in the registry itself; their estimator modules (which load
# torch) are imported only where a part needs the estimator, so serving an ONNX graph does not.
from tunesmith.estimators import registry
from tunesmith.export.image import exporter as image_exporter
from tunesmith.export.image import open_image_predictor
from tunesmith.export.recommender import open_recommender_predictor
from tunesmith.export.tabular import exporter as tabular_exporter
from tunesmith.export.tabular import open_tabular_predictor
from tunesmith.export.text import open_text_predictor
from tunesmith.export.text_export import export_text_onnx

registry.attach("text", exporter=export_text_onnx, predictor=open_text_predictor)
registry.attach("image", exporter=image_exporter, predictor=open_image_predictor)
registry.attach("tabular", exporter=tabular_exporter, predictor=open_tabular_predictor)
registry.attach("recommender", predictor=open_recommender_predictor)
