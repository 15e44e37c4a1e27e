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
    from tunesmith.estimators import Estimator, NotSupportedError
    from tunesmith.estimators.image import ImageFineTuner
    from tunesmith.estimators.text import FineTuner
    from tunesmith.kinds import load
    from tunesmith.personalize.personalizer import Personalizer
    from tunesmith.quality import clean_data, find_label_issues, inspect_data
    from tunesmith.recsys.recommender import Recommender
    from tunesmith.tabular import TabularFineTuner


_LAZY = {
    "Estimator": "tunesmith.estimators",
    "NotSupportedError": "tunesmith.estimators",
    "FineTuner": "tunesmith.estimators.text",
    "ImageFineTuner": "tunesmith.estimators.image",
    "TabularFineTuner": "tunesmith.tabular",
    "Recommender": "tunesmith.recsys.recommender",
    "Personalizer": "tunesmith.personalize.personalizer",
    "load": "tunesmith.kinds",
    "FitConfig": "tunesmith.config",
    "create_backbone": "tunesmith.backbones",
    "list_backbones": "tunesmith.backbones",
    "register_backbone": "tunesmith.backbones",
    "inspect_data": "tunesmith.quality",
    "clean_data": "tunesmith.quality",
    "find_label_issues": "tunesmith.quality",
}

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "Estimator",
    "FineTuner",
    "FitConfig",
    "ImageFineTuner",
    "NotFittedError",
    "NotSupportedError",
    "Personalizer",
    "Recommender",
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
