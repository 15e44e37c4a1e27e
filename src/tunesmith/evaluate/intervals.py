"""95% bootstrap confidence intervals for test metrics, and whether a gain beats the noise.

One held-out test split gives one number per metric; how far that number would move on
another test split of the same size is what the interval says. The test rows are resampled
with replacement ``n_resamples`` times (1,000 by default, fixed seed, stratified by class for
classifiers so every class keeps its count and ROC AUC stays defined), every metric is
computed on every resample at once with numpy, and the 2.5th and 97.5th percentiles are the
interval.

The gain over a baseline is judged on the same resamples (a *paired* bootstrap): both models
are scored on the very same rows each time, so row difficulty cancels out and the interval of
the difference is much narrower than the two intervals side by side. The gain is *larger than
the noise* when its interval excludes 0, else *within the noise*. When only a baseline's
scores are known (not its outputs), the check is unpaired and says so.

Example::

    from tunesmith.evaluate.intervals import TestPredictions, bootstrap_intervals

    preds = TestPredictions(
        task="binary",
        y_true=y_test,                    # class indices 0..k-1
        outputs=proba,                    # (n, k) probabilities of the fine-tuned model
        labels=["neg", "pos"],
        baselines={"tfidf": tfidf_proba}, # same rows, same form
    )
    out = bootstrap_intervals(preds)
    out["metrics"]["accuracy"]            # [0.822, 0.861]
    out["gains"]["tfidf"]["verdict"]      # "larger than the noise"
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunesmith.errors import ConfigError, DataError
from tunesmith.runs.metric_names import METRIC_DIRECTIONS, PRIMARY_METRIC, SMALL_TEST_ROWS, small_test_warning

__all__ = [
    "CONFIDENCE",
    "LARGER",
    "N_RESAMPLES",
    "WIDE_ACCURACY_INTERVAL",
    "WITHIN",
    "TestPredictions",
    "add_intervals",
    "bootstrap_intervals",
    "bootstrap_mean_intervals",
    "gain_verdict",
    "small_sample_warning",
]

N_RESAMPLES = 1000
CONFIDENCE = 0.95
LARGER = "larger than the noise"
WITHIN = "within the noise"
WIDE_ACCURACY_INTERVAL = 0.2
"""An accuracy interval wider than this (20 points) gets a warning: the split cannot separate models."""

# resamples are drawn in chunks of at most this many (resample, row) cells, so a large test
# split never needs a (1000, n) index matrix at once
_CHUNK_CELLS = 2_000_000
# one-vs-rest ROC AUC costs one pass per class; beyond this many classes it gets no interval
_MAX_AUC_CLASSES = 50
_CLASSIFICATION = ("binary", "multiclass")


@dataclass
class TestPredictions:
    """A model's outputs on the test rows, with the baselines' outputs on the same rows.

    Attributes:
        task: ``"binary"``, ``"multiclass"`` or ``"regression"``.
        y_true: ``(n,)`` true class indices ``0..k-1``, or true values (regression, in
            target units).
        outputs: ``(n, k)`` class probabilities (a ``(n,)`` vector is the probability of
            class 1), or ``(n,)`` / ``(n, 1)`` predicted values in target units. Pass
            probabilities, not logits.
        labels: the class names in column order (empty for regression).
        baselines: baseline key (``"majority"``, ``"tfidf"``...) -> its outputs on the same
            rows, in the same form; give those you have.
    """

    __test__ = False  # not a pytest test class, despite the name

    task: str
    y_true: Any
    outputs: Any
    labels: Sequence[str] = ()
    baselines: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in (*_CLASSIFICATION, "regression"):
            raise ConfigError(
                f"unknown task {self.task!r}", key="task", hint="Choose one of: binary, multiclass, regression"
            )
        self.y_true = np.asarray(self.y_true).ravel()
        self.outputs = self._normalise(self.outputs, "the model")
        self.baselines = {str(k): self._normalise(v, f"baseline {k!r}") for k, v in (self.baselines or {}).items()}
        self.labels = [str(x) for x in self.labels]

    @property
    def classification(self) -> bool:
        return self.task in _CLASSIFICATION

    def _normalise(self, outputs: Any, what: str) -> np.ndarray:
        out = np.asarray(outputs, dtype=np.float64)
        if self.classification:
            if out.ndim == 1:
                out = np.column_stack([1.0 - out, out])
            if out.ndim != 2 or out.shape[1] < 2:
                raise DataError(f"{what}: probabilities must be a (rows, classes) matrix, got shape {out.shape}")
        else:
            if out.ndim == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.ndim != 1:
                raise DataError(f"{what}: predictions must be one value per row, got shape {out.shape}")
        if len(out) != len(self.y_true):
            raise DataError(f"{what}: {len(out)} outputs for {len(self.y_true)} test rows")
        return out


def gain_verdict(interval: Sequence[float]) -> str:
    """``"larger than the noise"`` when the interval of a gain excludes 0, else ``"within the noise"``."""
    lo, hi = float(interval[0]), float(interval[1])
    return LARGER if lo > 0 or hi < 0 else WITHIN


def add_intervals(metrics: Mapping[str, Any], intervals: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """A copy of ``metrics`` with ``<name>_ci: [lo, hi]`` after each metric that has an interval.

    >>> add_intervals({"accuracy": 0.9, "n": 50}, {"accuracy": [0.82, 0.96]})
    {'accuracy': 0.9, 'accuracy_ci': [0.82, 0.96], 'n': 50}
    """
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        out[key] = value
        if key in intervals and not key.endswith("_ci"):
            out[f"{key}_ci"] = [float(x) for x in intervals[key]]
    return out


# --- scoring many resamples at once -----------------------------------------------------------


class _Scorer:
    """One model's outputs, prepared once, scored on a block of resampled row indices.

    Rows are sorted by class beforehand and resampled within their class, so column ``j`` of
    every resample holds a row of class ``y[j]``: the true labels of a resample never need
    gathering, and each class's rows form one contiguous run of columns.
    """

    def __init__(self, task: str, y: np.ndarray, outputs: np.ndarray, blocks: Sequence[tuple[int, int]]) -> None:
        self.task = task
        self.y = y
        if task == "regression":
            self.err = outputs - y
            return
        p = outputs
        totals = p.sum(axis=1, keepdims=True)
        k = p.shape[1]
        p = np.divide(p, totals, out=np.full_like(p, 1.0 / k), where=totals > 0)
        self.k = k
        self.pred = p.argmax(axis=1)
        self.true_code = y * k
        picked = np.clip(p[np.arange(len(y)), y], np.finfo(np.float64).eps, 1.0)
        self.row_loss = -np.log(picked)
        # ROC AUC is undefined (None) when a class is missing from the test rows
        self.auc: list[tuple[np.ndarray, int, tuple[int, int]]] = []
        if len(blocks) == k and k <= _MAX_AUC_CLASSES:
            for c in [1] if k == 2 else range(k):
                _, groups = np.unique(p[:, c], return_inverse=True)
                groups = groups.ravel()
                self.auc.append((groups, int(groups.max()) + 1, blocks[c]))

    def __call__(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        if self.task == "regression":
            return self._regression(idx)
        return self._classification(idx)

    def _regression(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        e = self.err[idx]
        t = self.y[idx]
        sq = (e * e).sum(axis=1)
        sst = ((t - t.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(sst > 0, 1.0 - sq / sst, np.nan)
        out = {"mae": np.abs(e).mean(axis=1), "rmse": np.sqrt(sq / idx.shape[1])}
        if idx.shape[1] >= 2:
            out["r2"] = r2
        return out

    def _classification(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        b, n = idx.shape
        k = self.k
        keys = self.pred[idx]
        keys += self.true_code
        keys += (np.arange(b) * (k * k))[:, None]
        cm = np.bincount(keys.ravel(), minlength=b * k * k).reshape(b, k, k)
        tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
        support = cm.sum(axis=2).astype(np.float64)
        predicted = cm.sum(axis=1).astype(np.float64)
        present = (support + predicted) > 0
        n_present = np.maximum(present.sum(axis=1), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(predicted > 0, tp / predicted, 0.0)
            recall = np.where(support > 0, tp / support, 0.0)
            f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
        out = {
            "accuracy": tp.sum(axis=1) / n,
            # macro averages over the classes present in the true or predicted labels, as scikit-learn does
            "precision_macro": (precision * present).sum(axis=1) / n_present,
            "recall_macro": (recall * present).sum(axis=1) / n_present,
            "f1_macro": (f1 * present).sum(axis=1) / n_present,
            "log_loss": self.row_loss[idx].mean(axis=1),
        }
        if self.auc:
            out["roc_auc"] = np.mean(
                [_auc(groups[idx], n_groups, block) for groups, n_groups, block in self.auc], axis=0
            )
        return out


def _auc(groups: np.ndarray, n_groups: int, positive: tuple[int, int]) -> np.ndarray:
    """ROC AUC of each resample (row of ``groups``, the rank group of each drawn row's score).

    The positives are the columns ``positive[0]:positive[1]``. AUC is the chance that a positive
    outscores a negative, ties counting half, from per-resample counts of each score group.
    """
    b = groups.shape[0]
    start, stop = positive
    keys = groups + (np.arange(b) * n_groups)[:, None]
    size = b * n_groups
    every = np.bincount(keys.ravel(), minlength=size)
    pos = np.bincount(keys[:, start:stop].ravel(), minlength=size)
    neg = (every - pos).reshape(b, n_groups)
    pos = pos.reshape(b, n_groups)
    below = np.cumsum(neg, axis=1)
    below -= neg
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    pairs = (stop - start) * (groups.shape[1] - (stop - start))
    return wins / pairs if pairs > 0 else np.full(b, np.nan)


def _resamples(blocks: Sequence[tuple[int, int]], n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of row indices, one resample per row; each run ``blocks[i]`` of columns is drawn from itself."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _CHUNK_CELLS // max(n, 1)))
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        idx = np.empty((b, n), dtype=np.intp)
        for start, stop in blocks:
            idx[:, start:stop] = rng.integers(start, stop, size=(b, stop - start))
        done += b
        yield idx


def _interval(samples: np.ndarray, confidence: float) -> list[float] | None:
    finite = samples[np.isfinite(samples)]
    # an interval from a handful of defined resamples would pretend to a precision it lacks
    if finite.size < max(10, samples.size // 2):
        return None
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return [float(lo), float(hi)]


# --- the public entry point --------------------------------------------------------------------


def bootstrap_intervals(
    predictions: TestPredictions,
    *,
    baseline_metrics: Mapping[str, Mapping[str, Any]] | None = None,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap intervals of every test metric, paired gains over baselines, and warnings.

    Args:
        predictions: the model's (and the baselines') outputs on the test rows.
        baseline_metrics: baseline key -> its test metrics, for baselines whose outputs are
            not in ``predictions.baselines``: their gain gets an unpaired check (is the
            baseline's score, or its interval when it has ``<metric>_ci``, clear of the
            model's interval?).
        n_resamples: how many resamples (1,000 gives percentiles stable to about 0.1 point).
        confidence: the interval's coverage, 0.95 for 95%.
        seed: the resampling seed; the same seed gives the same intervals.

    Returns:
        A JSON-safe dict::

            {"method": "percentile bootstrap", "confidence": 0.95, "n_resamples": 1000,
             "seed": 0, "stratified": True, "n": 1066,
             "metrics": {"accuracy": [0.822, 0.861], ...},          # the model's intervals
             "baselines": {"tfidf": {"accuracy": [0.75, 0.80], ...}},  # where outputs were given
             "gains": {"tfidf": {"metric": "accuracy", "gain": 0.066, "ci": [0.041, 0.09],
                                 "paired": True, "better": True,
                                 "verdict": "larger than the noise"}},
             "warnings": ["..."]}

        ``gain`` is the model's score minus the baseline's on the task's primary metric
        (accuracy, or rmse where lower is better: ``better`` says which way is good).
        Metrics undefined on the data (ROC AUC with a class missing) get no interval.

    Raises:
        ConfigError: ``n_resamples`` below 1 or ``confidence`` outside (0, 1).
        DataError: no test rows.
    """
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be at least 1, got {n_resamples}", key="n_resamples")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence}", key="confidence")
    task = predictions.task
    classification = predictions.classification
    y = predictions.y_true
    n = len(y)
    if n == 0:
        raise DataError("no test rows to compute intervals on", hint="The test split is empty")
    if classification:
        y = y.astype(np.int64)
        k = predictions.outputs.shape[1]
        if y.min() < 0 or y.max() >= k:
            raise DataError(f"class index outside 0..{k - 1} in the test labels", hint="Encode labels as 0..k-1")
    else:
        y = y.astype(np.float64)
    primary = PRIMARY_METRIC[task]
    out: dict[str, Any] = {
        "method": "percentile bootstrap",
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "stratified": classification,
        "n": int(n),
        "metrics": {},
        "baselines": {},
        "gains": {},
        "warnings": [],
    }
    warnings: list[str] = out["warnings"]
    if n < SMALL_TEST_ROWS:
        warnings.append(small_test_warning(n))

    if not np.all(np.isfinite(y)):
        raise DataError("true test values contain NaN or infinity")
    if classification:
        # stratified: rows sorted by class, each class resampled within its own run of rows
        order = np.argsort(y, kind="stable")
        y = y[order]
        edges = np.flatnonzero(np.diff(y)) + 1
        starts = [0, *edges.tolist()]
        blocks = list(zip(starts, [*edges.tolist(), n], strict=True))
    else:
        order = np.arange(n)
        blocks = [(0, n)]
    outputs = {"": predictions.outputs[order], **{k: v[order] for k, v in predictions.baselines.items()}}
    finite = {key: bool(np.all(np.isfinite(o))) for key, o in outputs.items()}
    scorers = {key: _Scorer(task, y, o, blocks) for key, o in outputs.items() if finite[key]}
    if not finite[""]:
        warnings.append("no intervals: the model's outputs contain NaN or infinity (training diverged?)")
    if not scorers:
        return out

    everything = np.arange(n)[None, :]
    points = {key: {m: float(v[0]) for m, v in s(everything).items()} for key, s in scorers.items()}
    parts: dict[str, list[dict[str, np.ndarray]]] = {key: [] for key in scorers}
    for idx in _resamples(blocks, n, n_resamples, seed):
        for key, scorer in scorers.items():
            parts[key].append(scorer(idx))
    samples = {key: {m: np.concatenate([blk[m] for blk in blks]) for m in blks[0]} for key, blks in parts.items()}

    def intervals_of(key: str) -> dict[str, list[float]]:
        found = {m: _interval(s, confidence) for m, s in samples[key].items()}
        return {m: ci for m, ci in found.items() if ci is not None}

    better_sign = 1.0 if METRIC_DIRECTIONS[primary] == "max" else -1.0
    if "" in samples:
        out["metrics"] = intervals_of("")
        acc = out["metrics"].get("accuracy")
        if acc and n >= SMALL_TEST_ROWS and acc[1] - acc[0] > WIDE_ACCURACY_INTERVAL:
            warnings.append(
                f"The 95% interval of accuracy is {100 * (acc[1] - acc[0]):.0f} points wide "
                f"([{acc[0]:.3f}, {acc[1]:.3f}]) on {n} test rows: models closer than that cannot be "
                "told apart. Use more data or a larger test_size."
            )
    for key in predictions.baselines:
        if key not in samples:
            continue
        out["baselines"][key] = intervals_of(key)
        if "" not in samples or primary not in samples[""] or primary not in samples[key]:
            continue
        diff = samples[""][primary] - samples[key][primary]
        ci = _interval(diff, confidence)
        if ci is None:
            continue
        gain = points[""][primary] - points[key][primary]
        verdict = gain_verdict(ci)
        out["gains"][key] = {
            "metric": primary,
            "gain": gain,
            "ci": ci,
            "paired": True,
            "better": bool(gain * better_sign > 0),
            "verdict": verdict,
        }
        if verdict == WITHIN:
            warnings.append(_within_noise_warning(key, task, gain, ci, n))

    model_ci = out["metrics"].get(primary)
    model_point = points.get("", {}).get(primary)
    for key, m in (baseline_metrics or {}).items():
        if key in out["gains"] or model_ci is None or model_point is None:
            continue
        value = m.get(primary) if isinstance(m, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        other = m.get(f"{primary}_ci")
        if isinstance(other, Sequence) and len(other) == 2:
            clear = other[1] < model_ci[0] or other[0] > model_ci[1]
        else:
            clear = not model_ci[0] <= value <= model_ci[1]
        gain = model_point - float(value)
        out["gains"][str(key)] = {
            "metric": primary,
            "gain": gain,
            "ci": None,
            "paired": False,
            "better": bool(gain * better_sign > 0),
            "verdict": LARGER if clear else WITHIN,
        }
    return out


def _within_noise_warning(key: str, task: str, gain: float, ci: Sequence[float], n: int) -> str:
    if task == "regression":
        text = f"{gain:+.4g} (95% interval [{ci[0]:+.4g}, {ci[1]:+.4g}])"
    else:
        text = f"{100 * gain:+.2f} points (95% interval [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}])"
    return (
        f"The gain over baseline {key!r} is within the noise: {text} includes 0 on {n} test rows. "
        "The test split cannot tell these two models apart; a larger test split (or cross-validation) may."
    )


# --- metrics that are means of per-row (per-user) values -----------------------------------------


def small_sample_warning(n: int, unit: str = "rows") -> str:
    """The small-test warning for ``n`` test ``unit`` (``"rows"``, ``"users"``)."""
    if unit == "rows":
        return small_test_warning(n)
    one = unit[:-1] if unit.endswith("s") else unit
    return (
        f"The test split has only {n} {one if n == 1 else unit}: too few to tell models apart. Its metrics "
        "can swing widely from one split to the next, and their intervals are themselves unreliable. "
        f"Use more data (at least {SMALL_TEST_ROWS} test {unit}; a few hundred to see gains of a few points)."
    )


def bootstrap_mean_intervals(
    values: Mapping[str, Any],
    *,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    primary: str | None = None,
    directions: Mapping[str, str] | None = None,
    unit: str = "rows",
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap intervals of metrics that are means over test rows (or users), and paired gains.

    For metrics such as a recommender's NDCG@10 or hit rate, which are the mean of one value
    per test user: the users are resampled with replacement, every metric's mean is computed
    on every resample at once (one matrix product per block of resamples), and the 2.5th and
    97.5th percentiles are the interval. Each baseline is scored on the very same resamples
    (a paired bootstrap), so its gain gets an interval and a verdict.

    Args:
        values: metric name -> ``(n,)`` per-row values of the model (same rows for every metric).
        baselines: baseline key -> metric name -> ``(n,)`` values on the same rows, in the same order.
        primary: the metric gains are judged on (default: the first of ``values``).
        directions: metric -> ``"max"`` or ``"min"`` (default ``"max"``: larger is better).
        unit: what a row is (``"rows"``, ``"users"``), for the small-test warning.
        n_resamples, confidence, seed: as for :func:`bootstrap_intervals`.

    Returns:
        The shape :func:`bootstrap_intervals` returns (``method``, ``confidence``,
        ``n_resamples``, ``seed``, ``stratified`` (False), ``n``, ``metrics``, ``baselines``,
        ``gains``, ``warnings``); each gain also has ``by_metric``: the paired gain, its
        interval and verdict on every metric.

    Raises:
        ConfigError: ``n_resamples`` below 1, ``confidence`` outside (0, 1), or an unknown ``primary``.
        DataError: no rows, or arrays of different lengths.
    """
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be at least 1, got {n_resamples}", key="n_resamples")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence}", key="confidence")
    names = list(values)
    if primary is None and names:
        primary = names[0]
    if primary not in values:
        raise ConfigError(f"primary metric {primary!r} has no values", key="primary")
    directions = directions or {}
    columns = {"": _value_matrix(values, names, "the model")}
    for key, metrics in (baselines or {}).items():
        columns[str(key)] = _value_matrix(metrics, names, f"baseline {key!r}")
    n = columns[""].shape[0]
    if n == 0:
        raise DataError("no test rows to compute intervals on", hint="The test split is empty")
    for key, matrix in columns.items():
        if matrix.shape[0] != n:
            raise DataError(f"baseline {key!r} has values for {matrix.shape[0]} rows, the model for {n}")
    out: dict[str, Any] = {
        "method": "percentile bootstrap",
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "stratified": False,
        "n": int(n),
        "metrics": {},
        "baselines": {},
        "gains": {},
        "warnings": [small_sample_warning(n, unit)] if n < SMALL_TEST_ROWS else [],
    }
    # Every model's values side by side: one product per block scores all of them at once.
    stacked = np.hstack(list(columns.values()))
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _CHUNK_CELLS // n))
    blocks = []
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        counts = np.bincount((idx + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        blocks.append(counts @ stacked / n)
        done += b
    means = np.vstack(blocks)
    points = stacked.mean(axis=0)
    width = len(names)
    samples = {key: means[:, i * width : (i + 1) * width] for i, key in enumerate(columns)}
    point = {key: points[i * width : (i + 1) * width] for i, key in enumerate(columns)}

    def intervals_of(key: str) -> dict[str, list[float]]:
        found = {m: _interval(samples[key][:, j], confidence) for j, m in enumerate(names)}
        return {m: ci for m, ci in found.items() if ci is not None}

    out["metrics"] = intervals_of("")
    for key in columns:
        if not key:
            continue
        out["baselines"][key] = intervals_of(key)
        by_metric: dict[str, dict[str, Any]] = {}
        for j, m in enumerate(names):
            ci = _interval(samples[""][:, j] - samples[key][:, j], confidence)
            if ci is None:
                continue
            gain = float(point[""][j] - point[key][j])
            sign = -1.0 if directions.get(m) == "min" else 1.0
            by_metric[m] = {"gain": gain, "ci": ci, "better": bool(gain * sign > 0), "verdict": gain_verdict(ci)}
        if primary not in by_metric:
            continue
        main = by_metric[primary]
        out["gains"][key] = {"metric": primary, **main, "paired": True, "by_metric": by_metric}
        if main["verdict"] == WITHIN:
            lo, hi = main["ci"]
            out["warnings"].append(
                f"The gain over baseline {key!r} on {primary} is within the noise: {main['gain']:+.4f} "
                f"(95% interval [{lo:+.4f}, {hi:+.4f}]) includes 0 on {n} test {unit}. "
                "The test split cannot tell these two models apart."
            )
    return out


def _value_matrix(values: Mapping[str, Any], names: Sequence[str], what: str) -> np.ndarray:
    """``(n, len(names))`` float64 columns of per-row values; every name present, every value finite."""
    missing = [m for m in names if m not in values]
    if missing:
        raise DataError(f"{what}: no per-row values of {', '.join(missing)}")
    cols = [np.asarray(values[m], dtype=np.float64).ravel() for m in names]
    if len({len(c) for c in cols}) > 1:
        raise DataError(f"{what}: the metrics have per-row values for different numbers of rows")
    matrix = np.column_stack(cols) if cols else np.zeros((0, 0))
    if not np.all(np.isfinite(matrix)):
        raise DataError(f"{what}: per-row metric values contain NaN or infinity")
    return matrix
