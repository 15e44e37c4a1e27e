"""Deprecated: cross-validation moved to :mod:`tunesmith.search.cv` (it fits estimators, so it
lives above them), and the fold builders to :mod:`tunesmith.evaluate.folds`.

This old import path keeps working for one release, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "CVResult": "tunesmith.search.cv",
    "cross_validate": "tunesmith.search.cv",
    "STRATEGIES": "tunesmith.evaluate.folds",
    "Fold": "tunesmith.evaluate.folds",
    "cv_folds": "tunesmith.evaluate.folds",
    "time_values": "tunesmith.evaluate.folds",
}

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"tunesmith.evaluate.cv.{name} is deprecated and will be removed in the next release; import it from {module}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
