"""Data quality over a model: inspection, cleaning and label-error search that train to find problems.

The checks themselves live in :mod:`tunesmith.data` and take what training produces
(out-of-fold ``pred_probs``, embeddings, or a classifier class to fine-tune per fold) as
arguments; this layer, above the estimators, supplies the text
:class:`~tunesmith.FineTuner` so that ``label_errors="thorough"`` works everywhere:

- :func:`find_label_issues`: likely label errors (cleanlab on out-of-fold probabilities);
- :func:`inspect_data`: every check of ``tunesmith inspect``;
- :func:`clean_data`: ``tunesmith clean``.
"""

from __future__ import annotations

from tunesmith.data.clean_report import CleanAction, CleanReport
from tunesmith.data.inspect_report import Finding, InspectionReport
from tunesmith.data.label_issues import LabelIssues, issues_from_pred_probs
from tunesmith.quality.clean import clean_data
from tunesmith.quality.inspect import inspect_data
from tunesmith.quality.label_issues import find_label_issues, thorough_out_of_fold

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
