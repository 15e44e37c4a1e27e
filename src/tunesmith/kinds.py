"""Every built-in kind of model, registered: import this module to see them all.

Each estimator module registers its own kind (:mod:`tunesmith.estimators.registry`) when it
is imported; this module imports them all, so ``tunesmith.load``, the CLI, export, batch
prediction and serving find every kind through one registry. A new kind plugs in by
defining an :class:`~tunesmith.estimators.base.Estimator` subclass, registering a
:class:`~tunesmith.estimators.registry.Kind` for it and being imported here.
"""

from __future__ import annotations

import os
from typing import Any

from tunesmith.estimators import registry
from tunesmith.estimators.image import ImageFineTuner
from tunesmith.estimators.text import FineTuner
from tunesmith.personalize.personalizer import Personalizer
from tunesmith.recsys.recommender import Recommender
from tunesmith.tabular.estimator import TabularFineTuner

ESTIMATORS = (FineTuner, ImageFineTuner, TabularFineTuner, Recommender, Personalizer)
"""The estimator class of every built-in kind, in registry order."""


def load(path: str | os.PathLike[str], **options: Any) -> Any:
    """Load a saved model folder of any kind; its metadata picks the estimator.

    ``tunesmith.load("model")`` returns a :class:`~tunesmith.FineTuner`,
    :class:`~tunesmith.ImageFineTuner`, :class:`~tunesmith.TabularFineTuner`,
    :class:`~tunesmith.Recommender` or (for an adapter store, with ``base=`` the shared model
    folder) a :class:`~tunesmith.Personalizer`. The folder is untrusted input: it is opened
    once through the trust checks, no code from it runs and nothing outside it is read.
    ``options`` are the keywords of that kind's loader (``backbone=`` for a head-only or LoRA
    text model, ``base=`` for an adapter store); one the kind does not take is refused.

    Raises:
        ArtifactError: the folder is unsafe or malformed; the message names the file and field.
        ConfigError: a keyword this kind of folder does not take.
    """
    return registry.load(path, **options)


def names() -> tuple[str, ...]:
    """The names of the registered kinds (``text``, ``image``, ``tabular``, ``recommender``, ``personalized``)."""
    return registry.names()
