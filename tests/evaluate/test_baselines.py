"""Baselines: the majority class, frozen embeddings + linear, TF-IDF + linear."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.metrics import log_loss

from tests.conftest import make_reviews
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.baselines import embedding_baseline, majority_baseline, tfidf_baseline


def test_majority_accuracy_is_the_majority_share():
    y_train = np.array([0, 0, 0, 1])
    y_test = np.array([0, 1, 0, 0, 1])
    m = majority_baseline(y_train, y_test, "binary", 2)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["roc_auc"] == pytest.approx(0.5)  # constant scores rank nothing
    assert m["log_loss"] == pytest.approx(log_loss(y_test, np.tile([0.75, 0.25], (5, 1))))
    assert m["model"] == "majority class" and m["fit_seconds"] >= 0
    json.dumps(m, allow_nan=False)


def test_majority_multiclass_and_regression():
    m = majority_baseline(
        np.array([2, 2, 1, 0]), np.array([2, 1, 2, 2, 0]), "multiclass", 4, labels=["a", "b", "c", "d"]
    )
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["roc_auc"] is None  # class "d" never occurs in the test split
    assert m["per_class"]["c"]["recall"] == 1.0
    r = majority_baseline(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0]), "regression")
    assert r["mae"] == pytest.approx(1.0) and r["model"] == "training mean"
    with pytest.raises(ConfigError):
        majority_baseline(np.array([0]), np.array([0]), "ranking")
    with pytest.raises(DataError):
        majority_baseline(np.array([0, 1]), np.array([], dtype=int), "binary")


def test_embedding_baseline_beats_majority_on_separable_data():
    X, y = make_classification(
        n_samples=300, n_features=16, n_informative=6, class_sep=1.5, weights=[0.6, 0.4], random_state=0
    )
    Xtr, Xte, ytr, yte = X[:200], X[200:], y[:200], y[200:]
    emb = embedding_baseline(Xtr, ytr, Xte, yte, "binary", 2, seed=0)
    maj = majority_baseline(ytr, yte, "binary", 2)
    assert emb["accuracy"] > maj["accuracy"] + 0.15
    assert emb["roc_auc"] > 0.85
    assert emb["model"] == "frozen embeddings + logistic regression"
    assert emb["params"]["C"] in (0.1, 1.0, 10.0)
    # the choice of C uses the training split only, so the result is reproducible
    again = embedding_baseline(Xtr, ytr, Xte, yte, "binary", 2, seed=0)
    assert again["accuracy"] == emb["accuracy"] and again["log_loss"] == emb["log_loss"]
    json.dumps(emb, allow_nan=False)


def test_embedding_baseline_keeps_a_column_for_a_class_missing_from_train():
    X, y = make_classification(
        n_samples=120, n_features=8, n_informative=4, n_classes=3, n_clusters_per_class=1, random_state=1
    )
    keep = y != 2
    m = embedding_baseline(X[keep][:60], y[keep][:60], X[80:], y[80:], "multiclass", 3)
    assert len(m["confusion_matrix"]) == 3
    assert m["per_class"]["2"]["recall"] == 0.0  # never predicted: no probability column was learned


def test_embedding_baseline_small_classes_skip_cv():
    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]])
    y = np.array([0, 1, 0, 1])
    m = embedding_baseline(X, y, X, y, "binary", 2)
    assert m["params"]["C"] == 1.0 and m["accuracy"] == 1.0


def test_embedding_baseline_regression():
    X, y = make_regression(n_samples=200, n_features=10, noise=5.0, random_state=0)
    m = embedding_baseline(X[:150], y[:150], X[150:], y[150:], "regression")
    mean = majority_baseline(y[:150], y[150:], "regression")
    assert m["rmse"] < 0.3 * mean["rmse"] and m["r2"] > 0.9
    assert m["model"] == "frozen embeddings + ridge regression"


def test_tfidf_baseline_learns_obvious_words():
    df = make_reviews(80, seed=3)
    y = (df["label"] == "pos").to_numpy().astype(int)
    texts = df["text"].tolist()
    m = tfidf_baseline(texts[:60], y[:60], texts[60:], y[60:], "binary", 2, labels=["neg", "pos"])
    assert m["accuracy"] >= 0.9
    assert m["model"].startswith("TF-IDF") and m["fit_seconds"] >= 0
    assert m["params"]["min_df"] == 2 and m["params"]["C"] in (1.0, 10.0)
    assert set(m["per_class"]) == {"neg", "pos"}


def test_tfidf_tiny_set_falls_back_to_min_df_1():
    texts = ["good", "bad", "good film", "bad film"]
    y = np.array([1, 0, 1, 0])
    m = tfidf_baseline(texts, y, ["good movie", "bad movie"], np.array([1, 0]), "binary")
    assert m["params"]["min_df"] == 1 and m["accuracy"] == 1.0
    empty = tfidf_baseline(["", "", ""], np.array([0, 1, 1]), ["x"], np.array([1]), "binary")
    assert empty["accuracy"] == 1.0 and "note" in empty["params"]


def test_tfidf_regression():
    words = ["awful", "bad", "fine", "good", "great"]
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 120)
    texts = [f"the movie was {words[s]} overall" for s in scores]
    m = tfidf_baseline(texts[:90], scores[:90].astype(float), texts[90:], scores[90:].astype(float), "regression")
    assert m["r2"] > 0.8 and m["model"].endswith("ridge regression")


def test_baselines_carry_their_test_outputs_for_paired_intervals():
    from tunesmith.evaluate.intervals import TestPredictions, bootstrap_intervals
    from tunesmith.evaluate.metrics import compute_metrics

    X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    frozen = embedding_baseline(X[:150], y[:150], X[150:], y[150:], "binary")
    majority = majority_baseline(y[:150], y[150:], "binary")
    texts = ["good great" if v else "bad awful" for v in y]
    tfidf = tfidf_baseline(texts[:150], y[:150], texts[150:], y[150:], "binary")
    for result in (frozen, majority, tfidf):
        assert isinstance(result, dict) and result.outputs.shape == (50, 2)
        assert compute_metrics("binary", y[150:], result.outputs)["accuracy"] == result["accuracy"]
        assert "outputs" not in result and json.loads(json.dumps(result)) == dict(result)
    regression = majority_baseline(np.arange(5.0), np.arange(3.0), "regression")
    assert regression.outputs.tolist() == [2.0, 2.0, 2.0]
    out = bootstrap_intervals(
        TestPredictions("binary", y[150:], frozen.outputs, baselines={"majority": majority.outputs})
    )
    assert out["gains"]["majority"]["paired"]
