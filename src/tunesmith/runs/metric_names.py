"""Metric names, the direction each improves in, and the small-test threshold.

These are facts about metrics, not code that computes them, so they live in the ground
layer: the report (``runs/report.py``) needs them to word gains, and
:mod:`tunesmith.evaluate.metrics` re-exports them for everyone else.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["METRIC_DIRECTIONS", "PRIMARY_METRIC", "SMALL_TEST_ROWS", "small_test_warning"]

METRIC_DIRECTIONS: dict[str, Literal["max", "min"]] = {
    "loss": "min",
    "accuracy": "max",
    "precision_macro": "max",
    "recall_macro": "max",
    "f1_macro": "max",
    "roc_auc": "max",
    "log_loss": "min",
    "mae": "min",
    "rmse": "min",
    "r2": "max",
}
"""Whether a larger (``"max"``) or smaller (``"min"``) value of each metric is better."""

PRIMARY_METRIC: dict[str, str] = {"binary": "accuracy", "multiclass": "accuracy", "regression": "rmse"}
"""The metric that reports lead with and compute gains on, per task."""

SMALL_TEST_ROWS = 30
"""Below this many test rows a report warns that the split is too small to tell models apart."""


def small_test_warning(n: int) -> str:
    """The sentence a report leads with when the test split has fewer than :data:`SMALL_TEST_ROWS` rows."""
    rows = "row" if n == 1 else "rows"
    return (
        f"The test split has only {n} {rows}: too few to tell models apart. Its metrics can "
        "swing widely from one split to the next (a perfect score on a handful of rows proves "
        "little), and their intervals are themselves unreliable. Use more data or a larger "
        f"test_size (at least {SMALL_TEST_ROWS} rows; a few hundred to see gains of a few points)."
    )
