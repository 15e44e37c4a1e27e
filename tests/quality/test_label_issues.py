"""Label errors: out-of-fold probabilities, cleanlab ranking, both modes.

The data layer (:mod:`tunesmith.data.label_issues`) takes ``pred_probs``, embeddings or a
model class to fine-tune; :mod:`tunesmith.quality` passes the text estimator.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_reviews
from tunesmith.data.label_issues import (
    blend_out_of_fold,
    find_label_issues,
    issues_from_pred_probs,
    label_quality,
    text_out_of_fold,
)
from tunesmith.errors import ConfigError, DataError


def blobs(n: int = 200, flips: int = 10, seed: int = 0) -> tuple[np.ndarray, list[str], list[int]]:
    """Two well-separated clusters; ``flips`` labels flipped. Returns (embeddings, labels, flipped 1-based rows)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 8)) + np.where(y[:, None] == 1, 3.0, -3.0)
    labels = np.where(y == 1, "pos", "neg").astype(object)
    flipped = np.sort(rng.choice(n, size=flips, replace=False))
    labels[flipped] = np.where(labels[flipped] == "pos", "neg", "pos")
    return x, labels.tolist(), (flipped + 1).tolist()


def test_fast_mode_finds_flipped_labels_on_separable_data():
    x, labels, flipped = blobs()
    texts = [f"t{i}" for i in range(len(labels))]
    issues = find_label_issues(texts, labels, embeddings=x, folds=5, progress=False)
    assert set(issues.flagged_rows()) == set(flipped)
    # Worst first: the flagged rows have the lowest label quality.
    assert set(issues.table["row"].head(len(flipped))) == set(flipped)
    worst = issues.issues.iloc[0]
    assert worst["suggested_label"] != worst["given_label"]
    assert issues.oof_accuracy == pytest.approx(1 - len(flipped) / len(labels), abs=0.02)
    d = issues.to_dict(max_rows=3)
    assert d["n_issues"] == len(flipped) and len(d["issues"]) == 3


def test_rows_are_reported_as_given():
    x, labels, flipped = blobs(n=60, flips=3)
    rows = [100 + i for i in range(60)]
    issues = find_label_issues([""] * 60, labels, embeddings=x, rows=rows, folds=3, progress=False)
    assert set(issues.flagged_rows()) == {r + 99 for r in flipped}


def test_same_seed_same_result_and_pred_probs_in_input_order():
    x, labels, flipped = blobs(n=80, flips=4)
    a = find_label_issues([""] * 80, labels, embeddings=x, folds=4, seed=3, progress=False)
    b = find_label_issues([""] * 80, labels, embeddings=x, folds=4, seed=3, progress=False)
    np.testing.assert_array_equal(a.pred_probs, b.pred_probs)
    assert a.pred_probs.shape == (80, 2)
    np.testing.assert_allclose(a.pred_probs.sum(axis=1), 1.0)
    # Input order: odd positions lie in the "pos" cluster (column 1), even ones in "neg".
    clean = np.setdiff1d(np.arange(80), np.asarray(flipped) - 1)
    pos, neg = clean[clean % 2 == 1], clean[clean % 2 == 0]
    assert a.pred_probs[pos, 1].mean() > 0.8 and a.pred_probs[neg, 0].mean() > 0.8


def test_pred_probs_given_by_the_caller_are_ranked_as_cleanlab_does():
    x, labels, _ = blobs(n=80, flips=4)
    a = find_label_issues([""] * 80, labels, embeddings=x, folds=4, seed=3, progress=False)
    b = issues_from_pred_probs(labels, a.pred_probs, rows=range(1, 81))
    assert b.flagged_rows() == a.flagged_rows() and b.labels == ("neg", "pos")
    assert b.mode == "given" and b.oof_accuracy == a.oof_accuracy
    with pytest.raises(DataError, match="pred_probs has shape"):
        issues_from_pred_probs(labels, a.pred_probs[:, :1])


def test_thorough_mode_needs_a_model_below_the_estimators():
    with pytest.raises(ConfigError, match="tunesmith.quality.find_label_issues"):
        find_label_issues(["a b"] * 8, ["x", "y"] * 4, mode="thorough", folds=2, progress=False)


def test_thorough_mode_fine_tunes_per_fold():
    from tunesmith.quality import find_label_issues

    df = make_reviews(48)
    labels = df["label"].tolist()
    labels[0] = "neg"  # row 1 is really "pos"
    issues = find_label_issues(
        df["text"].tolist(),
        labels,
        mode="thorough",
        folds=3,
        backbone="tiny-text",
        max_length=32,
        progress=False,
        fit_params={"epochs": 8, "batch_size": 8, "lr": 3e-3, "num_threads": 1},
    )
    assert issues.mode == "thorough" and issues.pred_probs.shape == (48, 2)
    assert 1 in issues.flagged_rows()
    assert issues.oof_accuracy > 0.8
    # The fine-tuned folds weigh half; the fast models that learned something share the rest.
    weights = issues.details["members"]
    assert set(issues.member_probs) == {"fine_tuned", "embeddings", "tfidf"}
    assert weights["fine_tuned"] >= 0.5 and sum(weights.values()) == pytest.approx(1.0)
    np.testing.assert_allclose(
        issues.pred_probs, sum(w * issues.member_probs[name] for name, w in weights.items() if w > 0)
    )


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ConfigError, match="mode"):
        find_label_issues(["a", "b"], ["x", "y"], mode="slow", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="folds"):
        find_label_issues(["a", "b"], ["x", "y"], folds=1, progress=False)
    with pytest.raises(DataError, match="2 texts but 3 labels"):
        find_label_issues(["a", "b"], ["x", "y", "z"], progress=False)
    with pytest.raises(DataError, match="fewer than folds=5"):
        find_label_issues(["a"] * 12, ["x"] * 10 + ["y"] * 2, embeddings=np.zeros((12, 2)), progress=False)
    with pytest.raises(DataError, match="at least two classes"):
        find_label_issues(["a"] * 6, ["x"] * 6, embeddings=np.zeros((6, 2)), folds=2, progress=False)


def test_groups_fewer_than_folds_and_many_classes():
    x, labels, _ = blobs(n=40, flips=0)
    with pytest.raises(DataError, match="2 group"):
        find_label_issues([""] * 40, labels, embeddings=x, groups=["a", "b"] * 20, folds=3, progress=False)
    # 21 integer-like classes must stay classes (not regression) in the thorough folds.
    from tunesmith import find_label_issues as find_with_fine_tuning

    labels = [str(i % 21) for i in range(84)]
    texts = [f"word{i % 21} filler" for i in range(84)]
    issues = find_with_fine_tuning(
        texts,
        labels,
        mode="thorough",
        folds=2,
        backbone="tiny-text",
        max_length=16,
        progress=False,
        fit_params={"epochs": 1, "batch_size": 16, "num_threads": 1},
    )
    assert issues.pred_probs.shape == (84, 21)


def test_adjusted_label_quality_is_cleanlabs_and_survives_an_absent_class():
    from cleanlab.rank import get_label_quality_scores

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=60)
    y = np.arange(60) % 3
    np.testing.assert_allclose(label_quality(y, probs), get_label_quality_scores(y, probs, adjust_pred_probs=True))
    np.testing.assert_allclose(label_quality(y, probs, rank_by="self_confidence"), probs[np.arange(60), y])
    # No row labeled class 2: scores stay spread out and keep the order of p(given) - threshold.
    y2 = np.arange(60) % 2
    scores = label_quality(y2, probs)
    assert ((scores > 0) & (scores < 1)).all()
    thresholds = np.array([probs[y2 == c, c].mean() for c in (0, 1)])
    np.testing.assert_array_equal(np.argsort(scores), np.argsort(probs[np.arange(60), y2] - thresholds[y2]))
    with pytest.raises(ConfigError, match="rank_by"):
        label_quality(y, probs, rank_by="margin")  # type: ignore[arg-type]


def test_fast_mode_averages_in_the_words_and_leaves_out_a_model_that_learned_nothing():
    df = make_reviews(80, seed=2)
    labels = df["label"].tolist()
    flipped = [3, 10, 17, 40]
    for i in flipped:
        labels[i] = "neg" if labels[i] == "pos" else "pos"
    noise = np.random.default_rng(0).normal(size=(80, 8))  # embeddings that carry no signal
    issues = find_label_issues(df["text"].tolist(), labels, embeddings=noise, folds=4, progress=False)
    assert issues.details["members"] == {"embeddings": 0.0, "tfidf": 1.0}
    assert issues.details["rank_by"] == "adjusted"
    assert set(issues.table["row"].head(len(flipped))) == {i + 1 for i in flipped}
    alone = find_label_issues(df["text"].tolist(), labels, embeddings=noise, folds=4, ensemble=False, progress=False)
    assert set(alone.member_probs) == {"embeddings"}
    assert len(set(alone.table["row"].head(len(flipped))) & {i + 1 for i in flipped}) < len(flipped)


def test_text_model_needs_shared_words_and_blend_weights():
    y = np.arange(40) % 2
    splits = [(np.arange(40)[np.arange(40) % 4 != k], np.arange(40)[np.arange(40) % 4 == k]) for k in range(4)]
    assert text_out_of_fold([f"id{i}" for i in range(40)], y, 2, splits) is None
    assert text_out_of_fold([""] * 40, y, 2, splits) is None
    good = np.column_stack([np.where(y == 0, 0.9, 0.1), np.where(y == 0, 0.1, 0.9)])
    flat = np.full((40, 2), 0.5)
    probs, used = blend_out_of_fold({"good": good, "flat": flat, "missing": None}, y, {"good": 3.0, "flat": 1.0})
    assert used == {"good": 1.0, "flat": 0.0, "missing": 0.0}
    np.testing.assert_allclose(probs, good)
    probs, used = blend_out_of_fold({"a": good, "b": good.copy()}, y, {"a": 3.0, "b": 1.0})
    assert used == {"a": 0.75, "b": 0.25}
