"""tunesmith: fine-tune pre-trained models on labeled data, measured against baselines.

Public API::

    from tunesmith import FineTuner, load
    ft = FineTuner(backbone="minilm-l6", epochs=3).fit("reviews.csv", target="label")
    ft.save("model"); load("model").predict(["what a film"])

Names are imported on first use, so ``import tunesmith`` (and the CLI's ``--help``) stays
fast: torch and transformers load only when a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError, TunesmithError

if TYPE_CHECKING:
    from tunesmith.backbones import create_backbone, list_backbones, register_backbone
    from tunesmith.config import FitConfig
    from tunesmith.estimator import FineTuner, load

__version__ = "0.1.0"

_LAZY = {
    "FineTuner": "tunesmith.estimator",
    "load": "tunesmith.estimator",
    "FitConfig": "tunesmith.config",
    "create_backbone": "tunesmith.backbones",
    "list_backbones": "tunesmith.backbones",
    "register_backbone": "tunesmith.backbones",
}

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "FineTuner",
    "FitConfig",
    "NotFittedError",
    "TunesmithError",
    "__version__",
    "create_backbone",
    "list_backbones",
    "load",
    "register_backbone",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
