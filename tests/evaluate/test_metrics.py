"""Metrics: equal to scikit-learn and to hand-computed values, JSON-safe, None when undefined."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.metrics import (
    METRIC_DIRECTIONS,
    classification_metrics,
    compute_metrics,
    format_metrics_table,
    metric_direction,
    regression_metrics,
)

Y4 = np.array([0, 1, 1, 0])
P4 = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45]])  # predicts 0, 1, 0, 0


def _plain(value):
    """Fail if anything is a numpy type or NaN: the dict must be JSON-safe as is."""
    json.dumps(value, allow_nan=False)
    if isinstance(value, dict):
        for v in value.values():
            _plain(v)
    elif isinstance(value, list):
        for v in value:
            _plain(v)
    else:
        assert value is None or type(value) in (int, float, str, bool), type(value)


def test_binary_hand_values():
    m = classification_metrics(Y4, P4, ["neg", "pos"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    # class 1: precision 1/1, recall 1/2; class 0: precision 2/3, recall 2/2
    assert m["per_class"]["pos"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert m["per_class"]["neg"]["precision"] == pytest.approx(2 / 3)
    assert m["precision_macro"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["recall_macro"] == pytest.approx(0.75)
    # positives score 0.8 and 0.4, negatives 0.1 and 0.45: 3 of 4 pairs ordered correctly
    assert m["roc_auc"] == pytest.approx(0.75)
    expected_ll = -np.mean(np.log([0.9, 0.8, 0.4, 0.55]))
    assert m["log_loss"] == pytest.approx(expected_ll)
    assert m["n"] == 4
    _plain(m)


def test_binary_equals_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.3 * y + rng.random(200) * 0.7, 0.01, 0.99)
    proba = np.column_stack([1 - p1, p1])
    m = classification_metrics(y, proba, ["a", "b"])
    pred = proba.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    # a (n,) vector is the probability of class 1
    assert classification_metrics(y, p1, ["a", "b"])["roc_auc"] == pytest.approx(m["roc_auc"])


def test_multiclass_equals_sklearn_and_tolerates_float32_softmax():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 30)
    logits = rng.normal(size=(90, 3)) + np.eye(3)[y] * 1.5
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = compute_metrics("multiclass", y, proba.astype(np.float32), ["x", "y", "z"])
    pred = proba.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-6)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba), abs=1e-5)
    assert list(m["per_class"]) == ["x", "y", "z"]
    assert [m["per_class"][c]["support"] for c in "xyz"] == [30, 30, 30]
    _plain(m)


def test_roc_auc_none_when_a_class_is_absent():
    y = np.array([0, 0, 0])
    m = classification_metrics(y, np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1]]), ["a", "b"])
    assert m["roc_auc"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert math.isfinite(m["log_loss"])  # labels=range(k) keeps log loss defined
    assert m["confusion_matrix"] == [[2, 1], [0, 0]]
    y3 = np.array([0, 1, 0, 1])
    p3 = np.full((4, 3), 1 / 3)
    m3 = classification_metrics(y3, p3, ["a", "b", "c"])
    assert m3["roc_auc"] is None and m3["per_class"]["c"]["support"] == 0
    _plain(m3)


def test_classification_input_errors():
    with pytest.raises(DataError, match="labels"):
        classification_metrics(Y4, P4, ["only-one"])
    with pytest.raises(DataError, match="outside"):
        classification_metrics(np.array([0, 1, 2, 0]), P4, ["a", "b"])
    with pytest.raises(DataError, match="rows"):
        classification_metrics(Y4[:3], P4, ["a", "b"])
    with pytest.raises(DataError, match="no rows"):
        classification_metrics(np.array([], dtype=int), np.zeros((0, 2)), ["a", "b"])
    with pytest.raises(DataError, match="integer"):
        classification_metrics(np.array(["a", "b", "a", "b"]), P4, ["a", "b"])
    # float-typed integer labels are fine
    assert classification_metrics(Y4.astype(float), P4, ["a", "b"])["accuracy"] == 0.75


def test_nonfinite_outputs_give_none_not_a_crash():
    bad = P4.copy()
    bad[0, 0] = np.nan
    m = classification_metrics(Y4, bad, ["a", "b"])
    assert m["accuracy"] is None and m["n"] == 4 and "diverged" in m["warning"]
    r = regression_metrics([1.0, 2.0], [np.inf, 1.0])
    assert r["rmse"] is None and "warning" in r
    json.dumps(m, allow_nan=False)


def test_regression_hand_values_and_sklearn():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert m["mae"] == pytest.approx(1 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert m["r2"] == pytest.approx(0.5)  # 1 - 1 / 2
    assert m["n"] == 3
    _plain(m)
    rng = np.random.default_rng(2)
    t, p = rng.normal(size=50), rng.normal(size=50)
    m = compute_metrics("regression", t, p.reshape(-1, 1))
    assert m["r2"] == pytest.approx(skm.r2_score(t, p))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(t, p))
    assert regression_metrics([1.0], [2.0])["r2"] is None
    with pytest.raises(DataError):
        regression_metrics([1.0, 2.0], [1.0])


def test_compute_metrics_dispatch():
    m = compute_metrics("binary", Y4, P4)
    assert list(m["per_class"]) == ["0", "1"]
    with pytest.raises(ConfigError, match="unknown task") as err:
        compute_metrics("ranking", Y4, P4)
    assert err.value.key == "task"


def test_metric_direction():
    assert metric_direction("accuracy") == "max"
    assert metric_direction("loss") == "min"
    assert metric_direction("valid_rmse") == "min"
    assert metric_direction("r2") == "max"
    assert set(METRIC_DIRECTIONS) == {
        "loss",
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "roc_auc",
        "log_loss",
        "mae",
        "rmse",
        "r2",
    }
    with pytest.raises(ConfigError) as err:
        metric_direction("acuracy")
    assert err.value.key == "monitor"
    assert "accuracy" in str(err.value) and "f1_macro" in str(err.value)
    with pytest.raises(ConfigError, match="regression"):
        metric_direction("accuracy", task="regression")


def test_format_metrics_table():
    text = format_metrics_table(
        {"fine-tuned": {"accuracy": 0.9, "roc_auc": None}, "majority class": {"accuracy": 0.5}},
        ["accuracy", "roc_auc"],
    )
    lines = text.splitlines()
    assert lines[0].split() == ["model", "accuracy", "roc_auc"]
    assert lines[2].split() == ["fine-tuned", "0.9000", "-"]
    assert lines[3].split() == ["majority", "class", "0.5000", "-"]
    assert len({len(line) for line in lines[:2]}) == 1
