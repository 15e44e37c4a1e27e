"""Deprecated: the image estimator moved to :mod:`tunesmith.estimators.image`.

``from tunesmith.vision import ImageFineTuner`` keeps working for one release, with a
:class:`DeprecationWarning`; import from ``tunesmith.estimators.image`` (or ``tunesmith``).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_NEW_HOME = "tunesmith.estimators.image"

# Every public name this module had, and the private ones other code reached for, by new module.
_MOVED = {
    "ImageFineTuner": "tunesmith.estimators.image.estimator",
    "ImageConfig": "tunesmith.estimators.image.settings",
    "make_image_config": "tunesmith.estimators.image.settings",
    "image_model_info": "tunesmith.estimators.image.folder",
    "MAX_CLASSES": "tunesmith.estimators.image.folder",
    "ImageModel": "tunesmith.estimators.image.model",
    "recalibrate_batchnorm": "tunesmith.estimators.image.model",
    "ImageInput": "tunesmith.estimators.image.inputs",
}
_RENAMED = {
    "_softmax": ("tunesmith.estimators.image.model", "softmax"),
    "_nhwc_to_tensor": ("tunesmith.estimators.image.model", "nhwc_to_tensor"),
    "_trained_batchnorm": ("tunesmith.estimators.image.model", "trained_batchnorm"),
    "_RecalibrateBeforeValidation": ("tunesmith.estimators.image.model", "RecalibrateBeforeValidation"),
    "_Collate": ("tunesmith.estimators.image.model", "Collate"),
    "_Indices": ("tunesmith.estimators.image.model", "IndexDataset"),
    "_Loaded": ("tunesmith.estimators.image.inputs", "Loaded"),
    "_BASELINE_NAMES": ("tunesmith.estimators.image.folder", "BASELINE_NAMES"),
}

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    if name == "IMAGE_FORMAT_VERSION":
        module, attr = "tunesmith.runs.meta", "FORMAT_VERSION"
    elif name in _MOVED:
        module, attr = _MOVED[name], name
    elif name in _RENAMED:
        module, attr = _RENAMED[name]
    else:
        raise AttributeError(f"module 'tunesmith.vision' has no attribute {name!r}")
    warnings.warn(
        f"tunesmith.vision is deprecated and will be removed in the next release; import {name} from {_NEW_HOME}",
        DeprecationWarning,
        stacklevel=2,
    )
    # The package registers the image kind; importing it first keeps tunesmith.load working.
    importlib.import_module(_NEW_HOME)
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return sorted([*_MOVED, *_RENAMED, "IMAGE_FORMAT_VERSION"])
