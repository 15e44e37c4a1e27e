"""Baselines scored on the same test split as the fine-tuned model.

A fine-tuned model is only worth its cost if it beats what is cheap: predicting the
majority class (or the mean), a bag-of-words linear model, and a linear model on the
frozen pre-trained embeddings. TF-IDF models often beat frozen embeddings on topical
or sentiment data, which is why all three are reported.

Each function returns the metric dictionary of :func:`tunesmith.evaluate.metrics.compute_metrics`
plus ``"model"`` (a human name), ``"fit_seconds"`` and, where a setting was chosen by
cross-validation, ``"params"``. Hyperparameters are chosen on the training split only.

The returned dictionary is a :class:`BaselineMetrics`: a plain ``dict`` that also carries the
baseline's test outputs (``.outputs``: class probabilities, or predicted values) so a paired
bootstrap can score it on the same resamples as the fine-tuned model
(:class:`tunesmith.evaluate.intervals.TestPredictions`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.metrics import compute_metrics

__all__ = ["BaselineMetrics", "embedding_baseline", "majority_baseline", "tfidf_baseline"]

_EMBEDDING_CS = (0.1, 1.0, 10.0)
# TF-IDF features are sparse and unit-normalised, so useful C values sit higher
_TFIDF_CS = (1.0, 10.0)
_RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))
_CV_FOLDS = 3
# below this many training rows, min_df=2 would throw away most of the vocabulary
_MIN_DF2_ROWS = 50


class BaselineMetrics(dict[str, Any]):
    """A baseline's metric dictionary, plus its outputs on the test rows in ``.outputs``.

    ``outputs`` is the ``(n, k)`` probability matrix for classification, the ``(n,)`` predicted
    values for regression. It is an attribute, not a key, so the dictionary (and any JSON made
    from it) is exactly what it always was.
    """

    outputs: np.ndarray | None

    def __init__(self, metrics: dict[str, Any], outputs: np.ndarray | None = None) -> None:
        super().__init__(metrics)
        self.outputs = outputs


def _check_task(task: str) -> bool:
    """True for classification; refuses unknown tasks."""
    if task in ("binary", "multiclass"):
        return True
    if task == "regression":
        return False
    raise ConfigError(f"unknown task {task!r}", key="task", hint="Choose one of: binary, multiclass, regression")


def _n_classes(y_train: np.ndarray, y_test: np.ndarray, n_classes: int | None) -> int:
    if n_classes is not None:
        return int(n_classes)
    top = max(int(np.max(y_train)) if len(y_train) else 0, int(np.max(y_test)) if len(y_test) else 0)
    return max(2, top + 1)


def _labels(k: int, labels: Sequence[str] | None) -> list[str]:
    return [str(x) for x in labels] if labels is not None else [str(i) for i in range(k)]


def _check_rows(n_x: int, n_y: int, what: str) -> None:
    if n_x != n_y:
        raise DataError(f"{what}: {n_x} inputs for {n_y} targets")
    if n_x == 0:
        raise DataError(f"{what}: no rows", hint="The split is empty; lower valid_size/test_size or add data")


def _full_proba(model: Any, X: Any, k: int) -> np.ndarray:
    """Probabilities with one column per class, including classes missing from the training split."""
    part = model.predict_proba(X)
    out = np.zeros((part.shape[0], k), dtype=np.float64)
    out[:, np.asarray(model.classes_, dtype=np.int64)] = part
    return out


def _cv_folds(y: np.ndarray, seed: int) -> StratifiedKFold | None:
    """Stratified folds when every class has enough rows for them, else None (no CV)."""
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if len(counts) < 2 or counts.min() < _CV_FOLDS:
        return None
    return StratifiedKFold(n_splits=_CV_FOLDS, shuffle=True, random_state=seed)


def _fit_logistic(pipe: Pipeline, X: Any, y: np.ndarray, cs: Sequence[float], seed: int) -> tuple[Any, float]:
    """Fit ``pipe`` (ending in a step named ``clf``), choosing C by CV on ``X`` when the classes allow."""
    folds = _cv_folds(y, seed)
    with warnings.catch_warnings():
        # an unconverged candidate during the search is expected and harmless
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds is None:
            c = 1.0
            pipe.set_params(clf__C=c)
            pipe.fit(X, y)
            return pipe, c
        search = GridSearchCV(pipe, {"clf__C": list(cs)}, cv=folds, scoring="neg_log_loss", n_jobs=1)
        search.fit(X, y)
        return search.best_estimator_, float(search.best_params_["clf__C"])


def _constant_classifier_proba(y_train: np.ndarray, n_test: int, k: int) -> np.ndarray:
    freqs = np.bincount(y_train, minlength=k).astype(np.float64)[:k]
    freqs /= freqs.sum()
    return np.tile(freqs, (n_test, 1))


def majority_baseline(
    y_train: np.ndarray,
    y_test: np.ndarray,
    task: str,
    n_classes: int | None = None,
    *,
    labels: Sequence[str] | None = None,
) -> BaselineMetrics:
    """Predict the most frequent training class, or the training mean for regression.

    For classification the predicted probabilities are the training class frequencies,
    so log loss and ROC AUC (0.5) are defined; accuracy equals the test share of the
    training-majority class. ``labels`` only names the per-class entries.
    """
    started = time.perf_counter()
    classification = _check_task(task)
    y_tr, y_te = np.asarray(y_train).ravel(), np.asarray(y_test).ravel()
    _check_rows(len(y_tr), len(y_tr), "majority baseline (train)")  # emptiness only
    _check_rows(len(y_te), len(y_te), "majority baseline (test)")
    if classification:
        y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
        k = _n_classes(y_tr, y_te, n_classes)
        outputs = _constant_classifier_proba(y_tr, len(y_te), k)
        metrics = compute_metrics(task, y_te, outputs, _labels(k, labels))
        name = "majority class"
    else:
        mean = float(np.mean(y_tr.astype(np.float64)))
        outputs = np.full(len(y_te), mean)
        metrics = compute_metrics(task, y_te, outputs)
        name = "training mean"
    return BaselineMetrics({**metrics, "model": name, "fit_seconds": time.perf_counter() - started}, outputs)


def embedding_baseline(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    task: str,
    n_classes: int | None = None,
    *,
    seed: int = 0,
    labels: Sequence[str] | None = None,
) -> BaselineMetrics:
    """A linear model on frozen (not fine-tuned) embeddings.

    Classification: standardized features + ``LogisticRegression(max_iter=2000)`` with
    ``C`` in (0.1, 1, 10) chosen by stratified 3-fold CV (log loss) on the training
    split; ``C=1`` when a class has fewer than 3 training rows. Regression: standardized
    features + ``RidgeCV``. The chosen setting is returned under ``"params"``.
    """
    started = time.perf_counter()
    classification = _check_task(task)
    Xtr = np.asarray(X_train, dtype=np.float64)
    Xte = np.asarray(X_test, dtype=np.float64)
    y_tr, y_te = np.asarray(y_train).ravel(), np.asarray(y_test).ravel()
    _check_rows(len(Xtr), len(y_tr), "embedding baseline (train)")
    _check_rows(len(Xte), len(y_te), "embedding baseline (test)")
    if not (np.all(np.isfinite(Xtr)) and np.all(np.isfinite(Xte))):
        raise DataError("embedding baseline: the frozen embeddings contain NaN or infinity")

    params: dict[str, Any]
    if classification:
        y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
        k = _n_classes(y_tr, y_te, n_classes)
        name = "frozen embeddings + logistic regression"
        if len(np.unique(y_tr)) < 2:
            outputs = _constant_classifier_proba(y_tr, len(y_te), k)
            params = {"note": "one class in training: constant prediction"}
        else:
            pipe = Pipeline(
                [("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=2000, random_state=seed))]
            )
            model, c = _fit_logistic(pipe, Xtr, y_tr, _EMBEDDING_CS, seed)
            outputs = _full_proba(model, Xte, k)
            params = {"C": c}
        metrics = compute_metrics(task, y_te, outputs, _labels(k, labels))
    else:
        name = "frozen embeddings + ridge regression"
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=_RIDGE_ALPHAS))
        model.fit(Xtr, y_tr.astype(np.float64))
        outputs = model.predict(Xte)
        metrics = compute_metrics(task, y_te.astype(np.float64), outputs)
        params = {"alpha": float(model[-1].alpha_)}
    return BaselineMetrics(
        {**metrics, "model": name, "params": params, "fit_seconds": time.perf_counter() - started}, outputs
    )


def _vectorizer(min_df: int) -> TfidfVectorizer:
    return TfidfVectorizer(
        ngram_range=(1, 2),
        sublinear_tf=True,
        min_df=min_df,
        max_features=200_000,  # bounds memory on large corpora; rare bigrams add little
        strip_accents="unicode",
        dtype=np.float64,
    )


def _texts(texts: Sequence[Any]) -> list[str]:
    return ["" if t is None else str(t) for t in texts]


def tfidf_baseline(
    texts_train: Sequence[str],
    y_train: np.ndarray,
    texts_test: Sequence[str],
    y_test: np.ndarray,
    task: str,
    n_classes: int | None = None,
    *,
    seed: int = 0,
    labels: Sequence[str] | None = None,
) -> BaselineMetrics:
    """TF-IDF over word 1-2 grams + a linear model.

    ``sublinear_tf``; ``min_df=2`` from 50 training rows on (1 below, or when 2 leaves no
    vocabulary). Classification: ``LogisticRegression`` with ``C`` in (1, 10) chosen by
    stratified 3-fold CV on the training split (``C=1`` when classes are too small);
    regression: ``Ridge(alpha=1)``. The vectorizer is fitted on training texts only.
    """
    started = time.perf_counter()
    classification = _check_task(task)
    tr, te = _texts(texts_train), _texts(texts_test)
    y_tr, y_te = np.asarray(y_train).ravel(), np.asarray(y_test).ravel()
    _check_rows(len(tr), len(y_tr), "TF-IDF baseline (train)")
    _check_rows(len(te), len(y_te), "TF-IDF baseline (test)")

    min_df = 2 if len(tr) >= _MIN_DF2_ROWS else 1
    vec = _vectorizer(min_df)
    try:
        Xtr = vec.fit_transform(tr)
    except ValueError:
        # "empty vocabulary": every term is rarer than min_df (or there are no words at all)
        min_df = 1
        vec = _vectorizer(min_df)
        try:
            Xtr = vec.fit_transform(tr)
        except ValueError:
            Xtr = None
    params: dict[str, Any] = {"min_df": min_df, "vocabulary": len(vec.vocabulary_) if Xtr is not None else 0}

    if classification:
        y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
        k = _n_classes(y_tr, y_te, n_classes)
        name = "TF-IDF 1-2 grams + logistic regression"
        if Xtr is None or len(np.unique(y_tr)) < 2:
            outputs = _constant_classifier_proba(y_tr, len(y_te), k)
            params["note"] = "no vocabulary or one class: constant prediction"
        else:
            pipe = Pipeline([("clf", LogisticRegression(max_iter=2000, random_state=seed))])
            model, c = _fit_logistic(pipe, Xtr, y_tr, _TFIDF_CS, seed)
            outputs = _full_proba(model, vec.transform(te), k)
            params["C"] = c
        metrics = compute_metrics(task, y_te, outputs, _labels(k, labels))
    else:
        name = "TF-IDF 1-2 grams + ridge regression"
        y_trf = y_tr.astype(np.float64)
        if Xtr is None:
            pred = np.full(len(te), float(np.mean(y_trf)))
            params["note"] = "no vocabulary: constant prediction"
        else:
            ridge = Ridge(alpha=1.0).fit(Xtr, y_trf)
            pred = ridge.predict(vec.transform(te))
            params["alpha"] = 1.0
        outputs = pred
        metrics = compute_metrics(task, y_te.astype(np.float64), outputs)
    return BaselineMetrics(
        {**metrics, "model": name, "params": params, "fit_seconds": time.perf_counter() - started}, outputs
    )
