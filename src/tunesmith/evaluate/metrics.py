"""Test and validation metrics for classification and regression.

Every function returns plain Python numbers (``float``/``int``/``None``, never numpy
scalars or NaN), so the dictionaries go straight into JSON files, YAML and reports.
A metric that is undefined on the given data (ROC AUC when a class is missing from the
true labels, R² on fewer than two rows) is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
)

from tunesmith.errors import ConfigError, DataError
from tunesmith.runs.metric_names import METRIC_DIRECTIONS, PRIMARY_METRIC

__all__ = [
    "CLASSIFICATION_METRICS",
    "METRIC_DIRECTIONS",
    "PRIMARY_METRIC",
    "REGRESSION_METRICS",
    "TASKS",
    "classification_metrics",
    "compute_metrics",
    "format_metrics_table",
    "metric_direction",
    "regression_metrics",
]

TASKS = ("binary", "multiclass", "regression")

CLASSIFICATION_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "log_loss")
REGRESSION_METRICS = ("mae", "rmse", "r2")

_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("loss", *CLASSIFICATION_METRICS),
    "multiclass": ("loss", *CLASSIFICATION_METRICS),
    "regression": ("loss", *REGRESSION_METRICS),
}


def metric_direction(name: str, task: str | None = None) -> Literal["max", "min"]:
    """Return ``"max"`` or ``"min"``: which way ``name`` improves.

    ``name`` may carry the ``valid_`` prefix used in training histories. With ``task``,
    a metric that does not exist for that task (``rmse`` for a classifier) is refused too.

    Raises:
        ConfigError: (key ``"monitor"``) for an unknown metric, listing the valid names.
    """
    key = name[len("valid_") :] if name.startswith("valid_") else name
    valid = _TASK_METRICS.get(task, tuple(METRIC_DIRECTIONS)) if task else tuple(METRIC_DIRECTIONS)
    if key not in valid:
        where = f" for a {task} task" if task else ""
        raise ConfigError(
            f"unknown metric {name!r}{where}",
            key="monitor",
            hint=f"Choose one of: {', '.join(valid)}",
        )
    return METRIC_DIRECTIONS[key]


def _as_float(value: Any) -> float | None:
    """A plain float, or None for NaN/inf (which JSON cannot hold)."""
    out = float(value)
    return out if math.isfinite(out) else None


def _class_indices(y_true: Any, k: int) -> np.ndarray:
    y = np.asarray(y_true).ravel()
    if y.dtype.kind == "f":
        # float labels (0.0, 1.0) come from pandas columns with missing values dropped
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError("class labels must be integer class indices", hint="Encode the labels as 0..k-1")
    elif y.dtype.kind not in "iub":
        raise DataError(
            f"class labels must be integer class indices, got dtype {y.dtype}",
            hint="Encode the labels as 0..k-1",
        )
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise DataError(
            f"class index {int(y.max()) if y.max() >= k else int(y.min())} is outside 0..{k - 1}",
            hint="The probability matrix needs one column per class",
        )
    return y


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Score class probabilities against true class indices.

    Args:
        y_true: ``(n,)`` integer class indices in ``0..k-1``.
        proba: ``(n, k)`` class probabilities (rows are renormalised to sum to 1). For a
            binary task a ``(n,)`` vector is read as the probability of class 1.
        labels: the ``k`` class names, in column order; they name the rows and columns
            of the confusion matrix and the keys of ``per_class``.

    Returns:
        ``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro`` (macro averages
        over the classes present in the true or predicted labels, as scikit-learn does),
        ``roc_auc`` (binary: of class 1's probability; multiclass: one-vs-rest macro;
        ``None`` when a class is absent from ``y_true``), ``log_loss``,
        ``confusion_matrix`` (list of lists, rows = true, columns = predicted, in
        ``labels`` order), ``per_class`` (``{label: {precision, recall, f1, support}}``)
        and ``n``. Non-finite probabilities (a diverged model) give ``None`` scores and
        a ``warning``.

    Raises:
        DataError: mismatched shapes, an empty set, or labels outside ``0..k-1``.
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2:
        raise DataError(f"probabilities must be a (rows, classes) matrix, got shape {p.shape}")
    n, k = p.shape
    labels = [str(label) for label in labels]
    if len(labels) != k:
        raise DataError(f"{len(labels)} class labels for {k} probability columns")
    if k < 2:
        raise DataError("classification needs at least 2 classes")
    y = _class_indices(y_true, k)
    if len(y) != n:
        raise DataError(f"{len(y)} true labels for {n} rows of probabilities")
    if n == 0:
        raise DataError("no rows to score", hint="The evaluation split is empty")

    idx = list(range(k))
    if not np.all(np.isfinite(p)):
        return {
            **dict.fromkeys(CLASSIFICATION_METRICS),
            "confusion_matrix": None,
            "per_class": {},
            "n": n,
            "warning": "model outputs contain NaN or infinity (training diverged?)",
        }
    totals = p.sum(axis=1, keepdims=True)
    # softmax in float32 sums to 1 only approximately; scikit-learn insists on exactly 1
    p = np.divide(p, totals, out=np.full_like(p, 1.0 / k), where=totals > 0)
    y_pred = p.argmax(axis=1)

    prec_m, rec_m, f1_m, _ = precision_recall_fscore_support(y, y_pred, average="macro", zero_division=0)
    prec, rec, f1, support = precision_recall_fscore_support(y, y_pred, labels=idx, zero_division=0)

    present = np.unique(y)
    roc_auc: float | None = None
    if len(present) == k:
        if k == 2:
            roc_auc = _as_float(roc_auc_score(y, p[:, 1]))
        else:
            roc_auc = _as_float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=idx))

    return {
        "accuracy": float(accuracy_score(y, y_pred)),
        "precision_macro": float(prec_m),
        "recall_macro": float(rec_m),
        "f1_macro": float(f1_m),
        "roc_auc": roc_auc,
        "log_loss": _as_float(log_loss(y, p, labels=idx)),
        "confusion_matrix": confusion_matrix(y, y_pred, labels=idx).astype(int).tolist(),
        "per_class": {
            label: {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "n": int(n),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Score numeric predictions: ``mae``, ``rmse``, ``r2`` (``None`` on fewer than 2 rows) and ``n``.

    Non-finite predictions give ``None`` scores and a ``warning`` instead of an exception,
    so one diverged validation epoch does not abort a run.

    Raises:
        DataError: mismatched lengths, an empty set, or non-finite true values.
    """
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if len(t) != len(p):
        raise DataError(f"{len(t)} true values for {len(p)} predictions")
    if len(t) == 0:
        raise DataError("no rows to score", hint="The evaluation split is empty")
    if not np.all(np.isfinite(t)):
        raise DataError("true values contain NaN or infinity")
    n = len(t)
    if not np.all(np.isfinite(p)):
        return {
            **dict.fromkeys(REGRESSION_METRICS),
            "n": n,
            "warning": "predictions contain NaN or infinity (training diverged?)",
        }
    return {
        "mae": float(mean_absolute_error(t, p)),
        "rmse": float(math.sqrt(mean_squared_error(t, p))),
        "r2": _as_float(r2_score(t, p)) if n >= 2 else None,
        "n": n,
    }


def compute_metrics(
    task: str, y_true: np.ndarray, output: np.ndarray, labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Dispatch on ``task``: ``"binary"``/``"multiclass"`` score probabilities, ``"regression"`` values.

    For classification ``output`` is the ``(n, k)`` probability matrix and ``labels``
    default to ``"0".."k-1"``; for regression ``output`` is ``(n,)`` or ``(n, 1)``.

    Raises:
        ConfigError: (key ``"task"``) for an unknown task.
    """
    if task in ("binary", "multiclass"):
        out = np.asarray(output)
        k = 2 if out.ndim == 1 else out.shape[-1]
        names = list(labels) if labels is not None else [str(i) for i in range(k)]
        return classification_metrics(y_true, out, names)
    if task == "regression":
        return regression_metrics(y_true, output)
    raise ConfigError(f"unknown task {task!r}", key="task", hint=f"Choose one of: {', '.join(TASKS)}")


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "-"
    return str(value)


def format_metrics_table(rows: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """A plain-text table with one row per model and one column per metric.

    Numbers get 4 decimals; a missing or undefined metric shows as ``-``.

    >>> print(format_metrics_table({"a": {"accuracy": 0.5}}, ["accuracy"]))
    model  accuracy
    -----  --------
    a        0.5000
    """
    header = ["model", *metrics]
    body = [[str(name), *(_fmt(m.get(key)) for key in metrics)] for name, m in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]
    return "\n".join(out)
