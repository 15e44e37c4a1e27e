"""``tunesmith clean`` with every label-error mode: :func:`tunesmith.data.clean.clean_data`, the
thorough label-error search fine-tuning :class:`~tunesmith.FineTuner` per fold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from tunesmith.data import clean as data_clean
from tunesmith.data.clean import ConflictPolicy, DuplicatePolicy, LabelErrorPolicy, MissingPolicy
from tunesmith.data.clean_report import CleanReport
from tunesmith.estimators.text import FineTuner


def clean_data(
    data: str | Path | pd.DataFrame,
    target: str,
    *,
    text_column: str | Sequence[str] | None = None,
    task: str | None = None,
    duplicates: DuplicatePolicy = "drop",
    conflicts: ConflictPolicy = "majority",
    missing: MissingPolicy = "keep",
    label_errors: LabelErrorPolicy = "keep",
    label_error_mode: Literal["fast", "thorough"] = "fast",
    label_error_fraction: float = 1.0,
    folds: int = 5,
    balance: Literal["none", "oversample", "undersample"] = "none",
    backbone: str = "minilm-l6",
    seed: int = 0,
    fit_params: dict[str, Any] | None = None,
    progress: bool = True,
    fold_model: Callable[..., Any] = FineTuner,
) -> tuple[pd.DataFrame, CleanReport]:
    """Read, check and clean a whole data set; the frame keeps the input's own columns.

    The steps and parameters are those of :func:`tunesmith.data.clean.clean_data`;
    ``label_error_mode="thorough"`` fine-tunes ``fold_model`` (:class:`~tunesmith.FineTuner`
    by default) on each fold.
    """
    return data_clean.clean_data(
        data,
        target,
        text_column=text_column,
        task=task,
        duplicates=duplicates,
        conflicts=conflicts,
        missing=missing,
        label_errors=label_errors,
        label_error_mode=label_error_mode,
        label_error_fraction=label_error_fraction,
        folds=folds,
        balance=balance,
        backbone=backbone,
        seed=seed,
        fit_params=fit_params,
        progress=progress,
        fold_model=fold_model,
    )
