"""Hyperparameter search and cross-validation for every kind of model (see docs/search.md)."""

from __future__ import annotations

from tunesmith.search.cv import CVResult, cross_validate
from tunesmith.search.space import Dimension, SearchSpace, default_space, space_for
from tunesmith.search.tuner import TuneResult, tune

__all__ = ["CVResult", "Dimension", "SearchSpace", "TuneResult", "cross_validate", "default_space", "space_for", "tune"]
