"""The image kind: fine-tune a pre-trained CNN on labeled images (:class:`ImageFineTuner`).

Modules: :mod:`.settings` (every setting), :mod:`.inputs` (folders, tables, arrays decoded
at the model's size), :mod:`.model` (the network, BatchNorm recalibration, batches),
:mod:`.estimator` (fit as named steps, predict, evaluate), :mod:`.fewshot` (the fewshot
strategy: a closed-form head on frozen features), :mod:`.folder` (the model folder) and
:mod:`.record` (the run record). Importing this package registers the kind ``image``.
"""

from __future__ import annotations

from typing import Any

from tunesmith.estimators.image.estimator import ImageFineTuner
from tunesmith.estimators.image.folder import MAX_CLASSES, image_model_info
from tunesmith.estimators.image.inputs import ImageInput
from tunesmith.estimators.image.model import ImageModel, recalibrate_batchnorm
from tunesmith.estimators.image.settings import ImageConfig, make_image_config
from tunesmith.estimators.registry import Kind, register
from tunesmith.runs.trust import SafeFolder


def _open(folder: SafeFolder, meta: dict[str, Any] | None, **options: Any) -> ImageFineTuner:
    return ImageFineTuner._from_opened(folder, meta)


KIND = register(
    Kind(
        name="image",
        estimator=ImageFineTuner,
        open=_open,
        summary="image classifier fine-tuned from a pre-trained CNN (folders of class sub-folders, tables of paths)",
        serving="predict",
    )
)

__all__ = [
    "KIND",
    "MAX_CLASSES",
    "ImageConfig",
    "ImageFineTuner",
    "ImageInput",
    "ImageModel",
    "image_model_info",
    "make_image_config",
    "recalibrate_batchnorm",
]
