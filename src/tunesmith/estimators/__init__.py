"""Estimators: the one contract (:mod:`.base`) and the one registry of kinds (:mod:`.registry`).

Each kind lives in its own module and registers itself there; :mod:`tunesmith.kinds` imports
every built-in kind, so ``tunesmith.load`` and the CLI see them all.
"""

from __future__ import annotations

from tunesmith.estimators.base import Estimator, FitArguments, NotSupportedError, fit_arguments, unsupported
from tunesmith.estimators.registry import Kind, attach, get, names, register

__all__ = [
    "Estimator",
    "FitArguments",
    "Kind",
    "NotSupportedError",
    "attach",
    "fit_arguments",
    "get",
    "names",
    "register",
    "unsupported",
]
