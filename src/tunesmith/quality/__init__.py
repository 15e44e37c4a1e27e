"""Data quality over a model: inspection, cleaning and label-error search that train to find problems.

The checks themselves live in :mod:`tunesmith.data` and take what training produces
(out-of-fold ``pred_probs``, embeddings, or a classifier class to fine-tune per fold) as
arguments; this layer, above the estimators, supplies the text
:class:`~tunesmith.FineTuner` as that class, so that ``label_errors="thorough"`` works everywhere:

- :func:`find_label_issues`: likely label errors (cleanlab on out-of-fold probabilities);
- :func:`inspect_data`: every check of ``tunesmith inspect``;
- :func:`clean_data`: ``tunesmith clean``;
- :func:`thorough_out_of_fold`: the out-of-fold probabilities of the thorough mode.

Each takes exactly the arguments of its :mod:`tunesmith.data` namesake; only the default of
``fold_model`` differs, so the two signatures cannot drift apart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from tunesmith.data import clean as _clean
from tunesmith.data import inspect as _inspect
from tunesmith.data import label_issues as _label_issues
from tunesmith.data.clean_report import CleanAction, CleanReport
from tunesmith.data.inspect_report import Finding, InspectionReport
from tunesmith.data.label_issues import LabelIssues, issues_from_pred_probs
from tunesmith.estimators.text import FineTuner

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _fine_tuning_text_models(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """``function`` with :class:`~tunesmith.FineTuner` as its ``fold_model`` unless one is given."""

    @functools.wraps(function)
    def with_fold_model(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        kwargs.setdefault("fold_model", FineTuner)
        return function(*args, **kwargs)

    return with_fold_model


find_label_issues = _fine_tuning_text_models(_label_issues.find_label_issues)
inspect_data = _fine_tuning_text_models(_inspect.inspect_data)
clean_data = _fine_tuning_text_models(_clean.clean_data)
thorough_out_of_fold = _fine_tuning_text_models(_label_issues.thorough_out_of_fold)

__all__ = [
    "CleanAction",
    "CleanReport",
    "Finding",
    "InspectionReport",
    "LabelIssues",
    "clean_data",
    "find_label_issues",
    "inspect_data",
    "issues_from_pred_probs",
    "thorough_out_of_fold",
]
