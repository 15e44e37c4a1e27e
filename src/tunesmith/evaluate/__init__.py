"""Metrics, baselines and cross-validation folds: how good a fine-tuned model is, and whether it beats cheap models.

Names are imported on first use so that importing the package does not load scikit-learn.
Cross-validation itself fits estimators, so it lives a layer above: :mod:`tunesmith.search.cv`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith._lazy import lazy_module

if TYPE_CHECKING:
    from tunesmith.evaluate.baselines import embedding_baseline, majority_baseline, tfidf_baseline
    from tunesmith.evaluate.folds import cv_folds
    from tunesmith.evaluate.metrics import (
        METRIC_DIRECTIONS,
        PRIMARY_METRIC,
        classification_metrics,
        compute_metrics,
        format_metrics_table,
        metric_direction,
        regression_metrics,
    )

_LAZY = {
    "METRIC_DIRECTIONS": "tunesmith.evaluate.metrics",
    "PRIMARY_METRIC": "tunesmith.evaluate.metrics",
    "classification_metrics": "tunesmith.evaluate.metrics",
    "compute_metrics": "tunesmith.evaluate.metrics",
    "format_metrics_table": "tunesmith.evaluate.metrics",
    "metric_direction": "tunesmith.evaluate.metrics",
    "regression_metrics": "tunesmith.evaluate.metrics",
    "embedding_baseline": "tunesmith.evaluate.baselines",
    "majority_baseline": "tunesmith.evaluate.baselines",
    "tfidf_baseline": "tunesmith.evaluate.baselines",
    "cv_folds": "tunesmith.evaluate.folds",
}

__all__ = [
    "METRIC_DIRECTIONS",
    "PRIMARY_METRIC",
    "classification_metrics",
    "compute_metrics",
    "cv_folds",
    "embedding_baseline",
    "format_metrics_table",
    "majority_baseline",
    "metric_direction",
    "regression_metrics",
    "tfidf_baseline",
]


__getattr__, __dir__ = lazy_module(__name__, _LAZY, globals())
