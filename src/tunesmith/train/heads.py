"""Linear heads fitted in closed form on fixed features: logistic regression and class prototypes.

Few-shot models (text and image) fit their head on the vectors of a tuned or frozen backbone
with scikit-learn rather than by gradient steps: with a few dozen rows a convex fit is exact,
fast and deterministic. Each function returns the ``(weight, bias)`` of a ``torch.nn.Linear``
over all classes, so the model stays one network that saves, exports and serves as any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tunesmith.errors import ConfigError


def fit_head(features: np.ndarray, y: np.ndarray, n_classes: int, c: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A logistic regression on ``features``, as the ``(weight, bias)`` of a linear layer over all classes.

    Classes that never appear in ``y`` get a bias far below the others so they are never
    predicted (they cannot be learned from nothing). A binary model's single decision function
    becomes two rows, ``[0, w]``: the softmax of ``(0, w.x + b)`` is the logistic of ``w.x + b``.
    """
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    clf.fit(features, y)
    hidden = features.shape[1]
    weight = np.zeros((n_classes, hidden), dtype=np.float32)
    bias = np.full(n_classes, -1e4, dtype=np.float32)
    if len(present) == 2:
        weight[present[0]] = 0.0
        bias[present[0]] = 0.0
        weight[present[1]] = clf.coef_[0]
        bias[present[1]] = clf.intercept_[0]
    else:
        for row, cls in enumerate(clf.classes_):
            weight[int(cls)] = clf.coef_[row]
            bias[int(cls)] = clf.intercept_[row]
    return weight, bias


def choose_head(features: np.ndarray, y: np.ndarray, c: float, seed: int) -> str:
    """``logistic`` or ``prototype``, whichever classifies held-out labeled rows better.

    Stratified k-fold over the labeled rows (k up to 5, at most the smallest class's size);
    a tie, or too few rows to hold any out, keeps the logistic regression.
    """
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(y)[np.unique(y)].min())
    k = min(5, smallest)
    if k < 2:
        return "logistic"
    hits = {"logistic": 0, "prototype": 0}
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(features, y):
        n = int(y.max()) + 1
        for name in hits:
            w, b = head_weights(name, features[train], y[train], n, c, seed)
            hits[name] += int(np.sum((features[test] @ w.T + b).argmax(1) == y[test]))
    return "prototype" if hits["prototype"] > hits["logistic"] else "logistic"


def head_weights(
    name: str, features: np.ndarray, y: np.ndarray, n_classes: int, c: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The linear head ``(weight, bias)`` of the ``logistic`` or ``prototype`` head.

    The prototype head scores each class by the cosine between a row's vector and the class's
    mean unit vector. A row's norm scales every class's score alike, so the linear layer holds
    the unit prototypes times a temperature and needs no normalisation of its input: the
    winning class is the nearest prototype, and the temperature (set so a typical row's scores
    span a few logits) keeps the probabilities from being all but uniform.
    """
    if name == "logistic":
        return fit_head(features, y, n_classes, c, seed)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    weight = np.zeros((n_classes, features.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -1e4, dtype=np.float32)
    for k in np.unique(y):
        proto = unit[y == k].mean(0)
        weight[int(k)] = proto / max(float(np.linalg.norm(proto)), 1e-12)
        bias[int(k)] = 0.0
    typical = float(np.median(np.linalg.norm(features, axis=1))) or 1.0
    return weight * (10.0 / typical), bias


# At or below this many training rows in the median class, strategy="auto" takes the few-shot
# path: there full fine-tuning of a new head is at its worst (bench/few_labels.py).
FEWSHOT_MAX_PER_CLASS = 64


def resolve_auto_strategy(
    cfg: Any,
    task: str,
    y_train: Any,
    *,
    loop_settings: Sequence[str],
    keep_full: bool = False,
    hint: str,
    max_per_class: int = FEWSHOT_MAX_PER_CLASS,
) -> Any:
    """``cfg`` (a pydantic settings model) with ``strategy="auto"`` replaced by the strategy this fit runs.

    ``auto`` is ``fewshot`` for a classification task whose median class has at most
    ``max_per_class`` training rows (:data:`FEWSHOT_MAX_PER_CLASS` for text), unless one of
    ``loop_settings`` (settings only the training loop reads) differs from its default, which
    asks for the loop, or ``keep_full`` (a refit, a backbone without pre-trained weights);
    else ``full``.

    Raises:
        ConfigError: ``strategy="fewshot"`` on a regression task (``hint`` says what instead).
    """
    regression = task == "regression"
    if cfg.strategy == "fewshot" and regression:
        raise ConfigError(
            "strategy='fewshot' fits a head from examples of classes; this task is regression",
            key="strategy",
            hint=hint,
        )
    if cfg.strategy != "auto":
        return cfg
    fields = type(cfg).model_fields
    loop_asked = any(getattr(cfg, name) != fields[name].default for name in loop_settings)
    chosen = "full"
    if not (regression or loop_asked or keep_full) and y_train is not None and len(y_train):
        counts = np.unique(np.asarray(y_train), return_counts=True)[1]
        if len(counts) >= 2 and float(np.median(counts)) <= max_per_class:
            chosen = "fewshot"
    return cfg.model_copy(update={"strategy": chosen})
