"""Run records, safe model artifacts, plots and the report / model card.

Names are imported on first use so that importing the package loads neither matplotlib
nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunesmith.runs.artifacts import (
        UNSAFE_SUFFIXES,
        AtomicDirectory,
        atomic_write_bytes,
        atomic_write_json,
        atomic_write_text,
        check_safe_model_dir,
        json_safe,
        load_tensors,
        save_tensors,
    )
    from tunesmith.runs.plots import plot_confusion_matrix, plot_learning_curves, plot_residuals
    from tunesmith.runs.record import RunRecord, environment_info
    from tunesmith.runs.report import render_report

_LAZY = {
    **dict.fromkeys(
        [
            "UNSAFE_SUFFIXES",
            "AtomicDirectory",
            "atomic_write_bytes",
            "atomic_write_json",
            "atomic_write_text",
            "check_safe_model_dir",
            "json_safe",
            "load_tensors",
            "save_tensors",
        ],
        "tunesmith.runs.artifacts",
    ),
    **dict.fromkeys(["plot_confusion_matrix", "plot_learning_curves", "plot_residuals"], "tunesmith.runs.plots"),
    **dict.fromkeys(["RunRecord", "environment_info"], "tunesmith.runs.record"),
    "render_report": "tunesmith.runs.report",
}

__all__ = [
    "UNSAFE_SUFFIXES",
    "AtomicDirectory",
    "RunRecord",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_safe_model_dir",
    "environment_info",
    "json_safe",
    "load_tensors",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_residuals",
    "render_report",
    "save_tensors",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tunesmith.runs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
