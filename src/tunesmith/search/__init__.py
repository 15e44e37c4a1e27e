"""Hyperparameter search: search spaces and Optuna studies over fits (see docs/search.md)."""

from __future__ import annotations

from tunesmith.search.space import Dimension, SearchSpace, default_space
from tunesmith.search.tuner import TuneResult, tune

__all__ = ["Dimension", "SearchSpace", "TuneResult", "default_space", "tune"]
