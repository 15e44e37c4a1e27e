"""Run records, safe model artifacts, plots and the report / model card.

Names are imported on first use so that importing the package loads neither matplotlib
nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith._lazy import lazy_module

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


__getattr__, __dir__ = lazy_module(__name__, _LAZY, globals())
