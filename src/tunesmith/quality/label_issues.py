"""Likely label errors with every mode available: the thorough mode fine-tunes :class:`~tunesmith.FineTuner`.

:mod:`tunesmith.data.label_issues` ranks rows from out-of-fold probabilities and takes the
model to fine-tune per fold as an argument; this module passes the text estimator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tunesmith.data import label_issues as data_label_issues
from tunesmith.data.label_issues import FilterBy, LabelIssues, Mode
from tunesmith.estimators.text import FineTuner


def thorough_out_of_fold(
    texts: Sequence[str],
    y: np.ndarray,
    n_classes: int,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    seed: int = 0,
    fit_params: Mapping[str, Any] | None = None,
    progress: bool = True,
    fold_model: Callable[..., Any] = FineTuner,
) -> np.ndarray:
    """Out-of-fold class probabilities of :class:`~tunesmith.FineTuner` fine-tuned on the other folds."""
    return data_label_issues.thorough_out_of_fold(
        texts, y, n_classes, splits, fold_model=fold_model, seed=seed, fit_params=fit_params, progress=progress
    )


def find_label_issues(
    texts: Sequence[str],
    labels: Sequence[Any],
    *,
    mode: Mode = "fast",
    folds: int = 5,
    seed: int = 0,
    backbone: str = "minilm-l6",
    rows: Sequence[int] | np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
    embeddings: np.ndarray | None = None,
    fit_params: Mapping[str, Any] | None = None,
    filter_by: FilterBy = "prune_by_noise_rate",
    max_length: int = 128,
    progress: bool = True,
    fold_model: Callable[..., Any] = FineTuner,
) -> LabelIssues:
    """Rank rows by how likely their label is wrong; flag the likely errors.

    Parameters
    ----------
    texts, labels:
        One input text and its given label per row.
    mode:
        ``"fast"`` (logistic regression on frozen embeddings) or ``"thorough"`` (k-fold
        fine-tuning of ``fold_model``, by default :class:`~tunesmith.FineTuner` with
        ``fit_params`` as its settings, 2 epochs per fold).
    folds, seed:
        Stratified k-fold cross-validation; ``groups`` keeps each group in one fold.
    rows:
        The 1-based data row of each input (default ``1..n``), reported in the table.
    classes:
        All class names in index order (default: the sorted distinct labels).
    embeddings:
        Precomputed frozen embeddings for the fast mode (else computed with ``backbone``).
    filter_by:
        cleanlab's rule for counting issues (``prune_by_noise_rate`` by default).

    With out-of-fold probabilities of your own, use
    :func:`~tunesmith.data.label_issues.issues_from_pred_probs`.
    """
    return data_label_issues.find_label_issues(
        texts,
        labels,
        mode=mode,
        folds=folds,
        seed=seed,
        backbone=backbone,
        rows=rows,
        classes=classes,
        groups=groups,
        embeddings=embeddings,
        fit_params=fit_params,
        filter_by=filter_by,
        max_length=max_length,
        progress=progress,
        fold_model=fold_model,
    )
