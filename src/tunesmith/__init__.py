"""tunesmith: fine-tune pre-trained models on labeled data, measured against baselines.

Public API::

    from tunesmith import FineTuner, load
    ft = FineTuner(backbone="minilm-l6", epochs=3).fit("reviews.csv", target="label")
    ft.save("model"); load("model").predict(["what a film"])

Names are imported on first use, so ``import tunesmith`` (and the CLI's ``--help``) stays
fast: torch and transformers load only when a model is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith._lazy import lazy_module
from tunesmith._version import __version__
from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError, TunesmithError

if TYPE_CHECKING:
    from tunesmith.backbones import create_backbone, list_backbones, register_backbone
    from tunesmith.config import FitConfig
    from tunesmith.data.clean import clean_data
    from tunesmith.data.inspect import inspect_data
    from tunesmith.data.label_issues import find_label_issues
    from tunesmith.estimator import FineTuner, load
    from tunesmith.tabular import TabularFineTuner
    from tunesmith.vision import ImageFineTuner


_LAZY = {
    "FineTuner": "tunesmith.estimator",
    "ImageFineTuner": "tunesmith.vision",
    "TabularFineTuner": "tunesmith.tabular",
    "load": "tunesmith.estimator",
    "FitConfig": "tunesmith.config",
    "create_backbone": "tunesmith.backbones",
    "list_backbones": "tunesmith.backbones",
    "register_backbone": "tunesmith.backbones",
    "inspect_data": "tunesmith.data.inspect",
    "clean_data": "tunesmith.data.clean",
    "find_label_issues": "tunesmith.data.label_issues",
}

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "FineTuner",
    "FitConfig",
    "ImageFineTuner",
    "NotFittedError",
    "TabularFineTuner",
    "TunesmithError",
    "__version__",
    "clean_data",
    "create_backbone",
    "find_label_issues",
    "inspect_data",
    "list_backbones",
    "load",
    "register_backbone",
]


__getattr__, __dir__ = lazy_module(__name__, _LAZY, globals())
