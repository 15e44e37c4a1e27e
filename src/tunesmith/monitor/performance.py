"""Performance without labels: the expected accuracy (or error) of rows no one has labeled yet.

For a classifier this is confidence-based performance estimation (NannyML's CBPE): learn on
labeled reference rows how often a prediction is right given what the model saw, then average
that chance over a window. CBPE calibrates the confidence alone (isotonic regression). Here
that calibration is the starting point, and gradient-boosted trees then learn corrections from
the confidence *and* the inputs (boosting from the calibrated log-odds, as many trees as an
inner validation split supports, five folds, an isotonic recalibration of the out-of-fold
predictions). Under covariate shift the chance of being right given the inputs holds, while
the chance given the confidence alone moves with the mix of inputs; where the inputs add
nothing, early stopping keeps the trees few and the estimate stays CBPE's. A regressor's mean
absolute error is estimated the same way from its prediction and inputs, starting from the
reference's mean error (NannyML's direct loss estimation). ``bench/monitoring.py`` compares
both with NannyML on ACS employment and the synthetic car loans.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import KFold

MIN_ROWS_FOR_TREES = 1000
FOLDS = 5
Z95 = 1.959964


@dataclass(frozen=True)
class Estimate:
    """A window's estimated metric with a 95% interval."""

    value: float
    lower: float
    upper: float


def _lgbm(task: str, seed: int) -> object:
    import lightgbm as lgb

    params: dict[str, Any] = {
        "n_estimators": MAX_TREES,
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_child_samples": 100,
        "random_state": seed,
        "n_jobs": 2,
        "verbose": -1,
    }
    return lgb.LGBMClassifier(**params) if task == "classification" else lgb.LGBMRegressor(**params)


MAX_TREES = 1000
STOP_AFTER = 20


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(q / (1 - q))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class PerformanceEstimator:
    """Expected accuracy (classification) or mean absolute error (regression) of unlabeled rows.

    ``fit`` takes the labeled reference: the model's probabilities (classification) or
    predictions (regression), the true targets, and optionally the inputs as a DataFrame of
    numeric and categorical columns. ``row_scores`` gives each row's chance of a correct
    prediction (or its expected absolute error); ``estimate`` averages them over a window.
    """

    def __init__(self, task: str, *, use_inputs: bool = True, seed: int = 0) -> None:
        self.task = task
        self.use_inputs = use_inputs
        self.seed = seed
        self.metric = "accuracy" if task == "classification" else "mae"
        self.direction = "below" if task == "classification" else "above"
        self._models: list[object] = []
        self._iso: IsotonicRegression | None = None
        self._columns: list[str] = []
        self._constant: float | None = None
        self._base_iso: IsotonicRegression | None = None
        self.trees: list[int] = []
        self._error_var = 0.0
        self._categories: dict[str, pd.Index] = {}
        self.method = "isotonic"

    # the design matrix ---------------------------------------------------------------------

    def _design(self, scores: np.ndarray, inputs: pd.DataFrame | None, fit: bool) -> pd.DataFrame:
        x = pd.DataFrame({f"score_{j}": scores[:, j] for j in range(scores.shape[1])})
        if inputs is None or not self.use_inputs:
            return x
        for col in inputs.columns:
            s = inputs[col]
            name = f"in_{col}"
            if pd.api.types.is_numeric_dtype(s):
                x[name] = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
            else:
                values = s.astype(str).to_numpy()
                if fit:
                    counts = pd.Series(values).value_counts()
                    self._categories[name] = pd.Index(counts.index[:50])
                x[name] = pd.Categorical(values, categories=self._categories[name])
        return x

    def _scores(self, proba_or_pred: np.ndarray, prediction: np.ndarray | None) -> np.ndarray:
        if self.task == "regression":
            return np.asarray(proba_or_pred, dtype=float).reshape(-1, 1)
        proba = np.asarray(proba_or_pred, dtype=float)
        if proba.shape[1] == 2:
            return proba[:, 1:]
        conf = proba.max(axis=1, keepdims=True)
        pred_idx = proba.argmax(axis=1) if prediction is None else prediction
        return np.hstack([conf, np.asarray(pred_idx, dtype=float).reshape(-1, 1)])

    def _target(self, proba_or_pred: np.ndarray, prediction: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.task == "regression":
            return np.abs(np.asarray(y, dtype=float) - np.asarray(prediction, dtype=float))
        if np.asarray(proba_or_pred).shape[1] == 2:
            return (np.asarray(y) == 1).astype(int)  # binary: P(positive), CBPE's own target
        return (np.asarray(y) == np.asarray(prediction)).astype(int)

    def _to_rows(self, raw: np.ndarray, proba_or_pred: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        if self.task == "classification" and np.asarray(proba_or_pred).shape[1] == 2:
            return np.where(np.asarray(prediction) == 1, raw, 1.0 - raw)
        return raw

    # fit and use ----------------------------------------------------------------------------

    def fit(
        self,
        proba_or_pred: np.ndarray,
        prediction: np.ndarray,
        y: np.ndarray,
        inputs: pd.DataFrame | None = None,
    ) -> PerformanceEstimator:
        """Learn from labeled reference rows. ``prediction`` and ``y`` are class indices for classifiers."""
        scores = self._scores(proba_or_pred, prediction)
        target = self._target(proba_or_pred, prediction, y)
        x = self._design(scores, inputs, fit=True)
        self._columns = list(x.columns)
        if self.task == "classification":
            # CBPE's calibration of the confidence: the start every tree corrects.
            self._base_iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores[:, 0], target)
            self.method = "isotonic on confidence"
        else:
            self._constant = float(np.mean(target))
            self.method = "the reference's mean absolute error"
        margin = self._margin(scores, len(x))
        oof = self._finish(margin)
        if len(x) >= MIN_ROWS_FOR_TREES and (self.task == "regression" or len(np.unique(target)) == 2):
            import lightgbm as lgb

            oof = np.zeros(len(x))
            self._models = []
            rng = np.random.default_rng(self.seed)
            trees = []
            for train, valid in KFold(FOLDS, shuffle=True, random_state=self.seed).split(x):
                # An inner split decides how many trees the inputs are worth, so the
                # out-of-fold predictions stay honest.
                stop = rng.random(len(train)) < 0.2
                fit_rows, stop_rows = train[~stop], train[stop]
                model = _lgbm(self.task, self.seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.fit(  # type: ignore[attr-defined]
                        x.iloc[fit_rows],
                        target[fit_rows],
                        init_score=margin[fit_rows],
                        eval_set=[(x.iloc[stop_rows], target[stop_rows])],
                        eval_init_score=[margin[stop_rows]],
                        callbacks=[lgb.early_stopping(STOP_AFTER, verbose=False)],
                    )
                trees.append(int(getattr(model, "best_iteration_", 0) or 0))
                oof[valid] = self._finish(self._raw(model, x.iloc[valid]) + margin[valid])
                self._models.append(model)
            self.trees = trees
            with_inputs = x.shape[1] > scores.shape[1]
            self.method = (
                f"{'isotonic on confidence' if self.task == 'classification' else 'mean error'}, corrected by "
                f"gradient boosting on {'confidence and inputs' if with_inputs else 'confidence'} "
                f"({int(np.median(trees))} trees)"
            )
        if self.task == "classification":
            self._iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(oof, target)
        else:
            # How far one row's absolute error strays from its expected value: the sampling
            # noise of a window's measured error (the spread of expected errors is not).
            self._error_var = float(np.mean((target - oof) ** 2))
        return self

    def _margin(self, scores: np.ndarray, n: int) -> np.ndarray:
        """Where the trees start: the calibrated log-odds, or the reference's mean error."""
        if self.task == "classification":
            assert self._base_iso is not None
            return _logit(self._base_iso.predict(scores[:, 0]))
        return np.full(n, self._constant if self._constant is not None else 0.0)

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        return _sigmoid(raw) if self.task == "classification" else raw

    def _raw(self, model: object, x: pd.DataFrame) -> np.ndarray:
        """The trees' correction (log-odds, or error), to add to the margin they started from."""
        return np.asarray(model.predict(x, raw_score=True), dtype=float)  # type: ignore[attr-defined]

    def _per_model(self, proba_or_pred: np.ndarray, prediction: np.ndarray, inputs: pd.DataFrame | None) -> np.ndarray:
        scores = self._scores(proba_or_pred, prediction)
        x = self._design(scores, inputs, fit=False)
        margin = self._margin(scores, len(x))
        if self._models:
            raws = np.vstack([self._finish(self._raw(m, x) + margin) for m in self._models])
        else:
            raws = self._finish(margin)[None, :]
        if self._iso is not None:
            raws = np.vstack([self._iso.predict(r) for r in raws])
        return np.vstack([self._to_rows(r, proba_or_pred, prediction) for r in raws])

    def row_scores(self, proba_or_pred: np.ndarray, prediction: np.ndarray, inputs: pd.DataFrame | None) -> np.ndarray:
        """Each row's chance of a correct prediction (or its expected absolute error)."""
        return self._per_model(proba_or_pred, prediction, inputs).mean(axis=0)

    def estimate(self, proba_or_pred: np.ndarray, prediction: np.ndarray, inputs: pd.DataFrame | None) -> Estimate:
        """The window's expected metric and a 95% interval for its measured value.

        The interval joins two uncertainties: the luck of which rows turn out right (a sum
        of independent Bernoulli draws; for errors, each row's error strays from its expected
        value as much as it did on the reference) and the disagreement between the fold models.
        """
        per_model = self._per_model(proba_or_pred, prediction, inputs)
        rows = per_model.mean(axis=0)
        n = len(rows)
        value = float(rows.mean())
        if self.task == "classification":
            sampling = float(np.sqrt(np.sum(rows * (1 - rows)))) / n
        else:
            sampling = float(np.sqrt(self._error_var / n))
        folds = per_model.mean(axis=1)
        model_se = float(np.std(folds, ddof=1) / np.sqrt(len(folds))) if len(folds) > 1 else 0.0
        half = Z95 * float(np.hypot(sampling, model_se))
        top = 1.0 if self.task == "classification" else float("inf")
        return Estimate(value, max(0.0, value - half), min(top, value + half))


def realized(task: str, prediction: np.ndarray, y: np.ndarray) -> float:
    """The measured accuracy (classification) or mean absolute error (regression)."""
    if task == "classification":
        return float(np.mean(np.asarray(prediction) == np.asarray(y)))
    return float(np.mean(np.abs(np.asarray(prediction, dtype=float) - np.asarray(y, dtype=float))))


def reference_band(
    task: str, prediction: np.ndarray, y: np.ndarray, window: int, sigmas: float, least: float
) -> dict[str, float]:
    """The reference's metric and how much it varies by chance, to set each window's alert threshold.

    ``chunk_sd`` is the standard deviation of the metric over consecutive reference chunks of
    ``window`` rows (NaN with fewer than three chunks); ``unit_sd`` the spread of one row
    (binomial for an accuracy, of the absolute errors for a regressor). :func:`threshold_at`
    scales them to a window's own number of rows, so a window of 100 labeled rows is judged
    with the spread of 100 rows, not of ``window``.
    """
    value = realized(task, prediction, y)
    n = len(y)
    if task == "classification":
        unit = float(np.sqrt(value * (1 - value)))
    else:
        unit = float(np.std(np.abs(np.asarray(prediction, dtype=float) - np.asarray(y, dtype=float))))
    chunks = [slice(i, i + window) for i in range(0, n - window + 1, window)]
    chunk_sd = (
        float(np.std([realized(task, prediction[c], y[c]) for c in chunks])) if len(chunks) >= 3 else float("nan")
    )
    least = least if task == "classification" else least * value
    return make_band(
        value, window, chunk_sd, unit, sigmas, least, higher_is_better=task == "classification", chunks=len(chunks)
    )


def make_band(
    value: float,
    window: int,
    chunk_sd: float,
    unit_sd: float,
    sigmas: float,
    least: float,
    *,
    higher_is_better: bool,
    chunks: int,
) -> dict[str, float]:
    """A reference band: the metric, its chance spread (see :func:`spread_at`), and the alert
    threshold for windows of ``window`` rows (``threshold_at`` gives it for other sizes)."""
    band = {
        "value": value,
        "rows": float(window),
        "chunk_sd": chunk_sd,
        "unit_sd": unit_sd,
        "sigmas": sigmas,
        "least": least,
        "direction": 1.0 if higher_is_better else -1.0,
        "chunks": float(chunks),
    }
    band["spread"] = spread_at(band, window)
    band["threshold"] = threshold_at(band, window)
    return band


def spread_at(band: dict[str, float], n: int) -> float:
    """The chance spread of the metric over ``n`` rows.

    The reference chunks' spread scaled to ``n`` rows, never below one row's spread / sqrt(n).
    """
    n = max(int(n), 1)
    floor = band["unit_sd"] / np.sqrt(n) if np.isfinite(band["unit_sd"]) else 0.0
    chunk = band["chunk_sd"] * np.sqrt(band["rows"] / n) if np.isfinite(band["chunk_sd"]) else 0.0
    return float(max(floor, chunk))


def threshold_at(band: dict[str, float], n: int) -> float:
    """The alert threshold for a window of ``n`` rows: ``sigmas`` spreads (at least ``least``) on the bad side."""
    margin = max(band["sigmas"] * spread_at(band, n), band["least"])
    return float(band["value"] - margin if band["direction"] > 0 else band["value"] + margin)
