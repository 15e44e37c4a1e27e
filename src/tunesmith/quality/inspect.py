"""``tunesmith inspect`` with every label-error mode: the checks of :mod:`tunesmith.data.inspect`,
the thorough label-error search fine-tuning :class:`~tunesmith.FineTuner` per fold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tunesmith.data import inspect as data_inspect
from tunesmith.data.inspect import LabelErrorMode
from tunesmith.data.inspect_duplicates import NEAR_DUPLICATE_THRESHOLD
from tunesmith.data.inspect_report import InspectionReport
from tunesmith.estimators.text import FineTuner


def inspect_data(
    data: str | Path | pd.DataFrame,
    target: str,
    *,
    text_column: str | Sequence[str] | None = None,
    task: str | None = None,
    test: str | Path | pd.DataFrame | None = None,
    split_column: str | None = None,
    group_column: str | None = None,
    backbone: str = "minilm-l6",
    label_errors: LabelErrorMode = "fast",
    folds: int = 5,
    near_duplicates: bool = True,
    near_duplicate_threshold: float = NEAR_DUPLICATE_THRESHOLD,
    max_length: int = 128,
    batch_size: int = 128,
    seed: int = 0,
    fit_params: dict[str, Any] | None = None,
    max_rows: int | None = None,
    progress: bool = True,
    fold_model: Callable[..., Any] = FineTuner,
) -> InspectionReport:
    """Profile ``data`` and find what is wrong with it.

    The checks and their parameters are those of :func:`tunesmith.data.inspect.inspect_data`;
    ``label_errors="thorough"`` fine-tunes ``fold_model`` (:class:`~tunesmith.FineTuner` by
    default, with ``fit_params`` as its settings) on each fold.
    """
    return data_inspect.inspect_data(
        data,
        target,
        text_column=text_column,
        task=task,
        test=test,
        split_column=split_column,
        group_column=group_column,
        backbone=backbone,
        label_errors=label_errors,
        folds=folds,
        near_duplicates=near_duplicates,
        near_duplicate_threshold=near_duplicate_threshold,
        max_length=max_length,
        batch_size=batch_size,
        seed=seed,
        fit_params=fit_params,
        max_rows=max_rows,
        progress=progress,
        fold_model=fold_model,
    )
