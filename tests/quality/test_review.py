"""Label review: the queue ranks planted flips first; answers relabel or drop, every row counted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tunesmith.data.label_issues import find_label_issues
from tunesmith.errors import ConfigError, DataError
from tunesmith.quality.review import QUEUE_COLUMNS, apply_review, review_queue


def planted(n: int = 120, flips: int = 8, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, list[str], list[str]]:
    """Two clusters with ``flips`` labels flipped; ids ``r000``... Returns (data, embeddings, flipped ids, truth)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 6)) + np.where(y[:, None] == 1, 2.5, -2.5)
    truth = np.where(y == 1, "pos", "neg").astype(object)
    labels = truth.copy()
    flipped = np.sort(rng.choice(n, size=flips, replace=False))
    labels[flipped] = np.where(labels[flipped] == "pos", "neg", "pos")
    ids = [f"r{i:03d}" for i in range(n)]
    data = pd.DataFrame({"text": [f"review {i}" for i in range(n)], "label": labels}, index=ids)
    return data, x, [ids[i] for i in flipped], truth.tolist()


@pytest.fixture(scope="module")
def scene() -> tuple[pd.DataFrame, np.ndarray, list[str], list[str]]:
    data, x, flipped, truth = planted()
    issues = find_label_issues(data["text"].tolist(), data["label"].tolist(), embeddings=x, folds=4, progress=False)
    return data, issues.pred_probs, flipped, truth


def test_queue_ranks_planted_flips_first_and_keeps_the_row_ids(scene):
    data, probs, flipped, truth = scene
    queue = review_queue(data, target="label", pred_probs=probs)
    assert len(queue) == len(data) and list(queue.columns) == [*data.columns, *QUEUE_COLUMNS]
    assert set(queue.index[: len(flipped)]) == set(flipped)
    assert queue["review_rank"].tolist() == list(range(1, len(data) + 1))
    assert queue["label_quality"].is_monotonic_increasing
    top = queue.head(len(flipped))
    # The out-of-fold model is sure these labels are wrong and suggests the true ones.
    assert (top["p_label_wrong"] > 0.5).all() and queue["p_label_wrong"].iloc[-1] < 0.5
    by_id = dict(zip(data.index, truth, strict=True))
    assert top["suggested_label"].tolist() == [by_id[r] for r in top.index]
    # cleanlab's flags (what an automatic drop removes) are flips, and nearly all of them.
    flagged = set(queue.index[queue["flagged"]])
    assert flagged <= set(flipped) and len(flagged) >= len(flipped) - 2
    # The data's own columns come along unchanged, so a person sees what they judge.
    assert (queue.loc[flipped, "text"] == data.loc[flipped, "text"]).all()


def test_budget_keeps_the_worst_rows(scene):
    data, probs, _, _ = scene
    full = review_queue(data, target="label", pred_probs=probs)
    assert review_queue(data, target="label", pred_probs=probs, budget=5).index.tolist() == full.index[:5].tolist()
    assert len(review_queue(data, target="label", pred_probs=probs, budget=0.1)) == 12
    assert len(review_queue(data, target="label", pred_probs=probs, budget=10_000)) == len(data)
    # A second round leaves out what was reviewed and numbers the rest from 1.
    nxt = review_queue(data, target="label", pred_probs=probs, budget=5, exclude=full.index[:5])
    assert nxt.index.tolist() == full.index[5:10].tolist() and nxt["review_rank"].tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(DataError, match="exclude names 1 row id"):
        review_queue(data, target="label", pred_probs=probs, exclude=["r000", "nope"])


def test_adjusted_ranking_removes_the_lean_of_asymmetric_noise():
    # The model leans to "b": correct "a" rows get only 0.35-0.6 for "a"; correct "b" rows
    # 0.85-1.0 for "b". The 5 flips (truly "a", labeled "b") get 0.5-0.6 for "b".
    rng = np.random.default_rng(1)
    p_a_rows = rng.uniform(0.35, 0.6, 50)
    p_b_rows = rng.uniform(0.85, 1.0, 50)
    p_flips = rng.uniform(0.5, 0.6, 5)
    p_b = np.concatenate([1 - p_a_rows, p_b_rows, p_flips])
    probs = np.column_stack([1 - p_b, p_b])
    data = pd.DataFrame({"label": ["a"] * 50 + ["b"] * 55})
    flips = set(range(100, 105))
    plain = review_queue(data, target="label", pred_probs=probs, rank_by="self_confidence", budget=5)
    adjusted = review_queue(data, target="label", pred_probs=probs, budget=5)
    assert not set(plain.index) & flips
    assert set(adjusted.index) == flips


def test_relabel_replaces_the_label_with_the_answer_and_counts_everything(scene):
    data, probs, flipped, truth = scene
    queue = review_queue(data, target="label", pred_probs=probs, budget=12)
    by_id = dict(zip(data.index, truth, strict=True))
    answers: dict[str, str | None] = {r: by_id[r] for r in queue.index}
    skipped = queue.index[-1]
    answers[skipped] = None
    fixed, report = apply_review(data, answers, target="label")
    assert len(fixed) == len(data) and fixed.index.equals(data.index)
    assert report.policy == "relabel" and report.reviewed == 12 and report.skipped == 1
    assert report.relabelled == len(flipped) and set(report.rows_relabelled) == set(flipped)
    assert report.confirmed == 12 - 1 - len(flipped) and report.dropped == 0
    assert report.reviewed == report.confirmed + report.relabelled + report.dropped + report.skipped
    assert all(fixed.loc[r, "label"] == by_id[r] for r in flipped)
    untouched = [r for r in data.index if r not in flipped]
    assert (fixed.loc[untouched, "label"] == data.loc[untouched, "label"]).all()
    assert sum(report.changes.values()) == len(flipped)
    assert report.rows_skipped == [skipped] and "skipped" in report.summary()
    json.dumps(report.to_dict())
    assert data.loc[flipped, "label"].tolist() != fixed.loc[flipped, "label"].tolist()  # the input is not changed


def test_drop_removes_only_rows_the_reviewer_corrected(scene):
    data, probs, flipped, truth = scene
    by_id = dict(zip(data.index, truth, strict=True))
    queue = review_queue(data, target="label", pred_probs=probs, budget=10)
    answers = pd.Series({r: by_id[r] for r in queue.index})
    answers.iloc[0] = np.nan  # unsure: skipped, kept as it is
    kept, report = apply_review(data, answers, target="label", policy="drop")
    assert report.dropped == len(flipped) - 1 and report.relabelled == 0 and report.skipped == 1
    assert len(kept) == len(data) - report.dropped
    assert queue.index[0] in kept.index and not set(report.rows_dropped) & set(kept.index)
    assert (kept["label"] == data.loc[kept.index, "label"]).all()


def test_integer_labels_keep_their_type_and_answers_match_by_text():
    data = pd.DataFrame({"text": list("abcd"), "label": [0, 1, 0, 1]}, index=[10, 11, 12, 13])
    fixed, report = apply_review(data, {10: "1", 11: 1, 12: None}, target="label")
    assert fixed["label"].tolist() == [1, 1, 0, 1] and fixed["label"].dtype == data["label"].dtype
    assert (report.relabelled, report.confirmed, report.skipped) == (1, 1, 1)
    assert report.changes == {"0 -> 1": 1} and report.rows_relabelled == [10]


def test_a_new_class_needs_classes_and_categories_grow():
    data = pd.DataFrame({"label": pd.Categorical(["x", "y", "x"])})
    with pytest.raises(DataError, match="not among the labels"):
        apply_review(data, {0: "z"}, target="label")
    fixed, report = apply_review(data, {0: "z"}, target="label", classes=["x", "y", "z"])
    assert fixed["label"].tolist() == ["z", "y", "x"] and report.relabelled == 1


def test_errors_are_typed_and_say_what_to_do(scene):
    data, probs, _, _ = scene
    with pytest.raises(DataError, match="target column 'lable'"):
        review_queue(data, target="lable", pred_probs=probs)
    with pytest.raises(DataError, match="pred_probs has shape"):
        review_queue(data, target="label", pred_probs=probs[:-1])
    with pytest.raises(DataError, match="do not sum to 1"):
        review_queue(data, target="label", pred_probs=probs * 2)
    with pytest.raises(DataError, match="logits"):
        review_queue(data, target="label", pred_probs=probs - 0.5)
    with pytest.raises(ConfigError, match="budget"):
        review_queue(data, target="label", pred_probs=probs, budget=1.5)
    with pytest.raises(ConfigError, match="rank_by"):
        review_queue(data, target="label", pred_probs=probs, rank_by="margin")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="already has column"):
        review_queue(data.assign(flagged=True), target="label", pred_probs=probs)
    with pytest.raises(DataError, match="repeats row ids"):
        review_queue(data.set_axis(["same"] * len(data)), target="label", pred_probs=probs)
    with pytest.raises(DataError, match="no label"):
        review_queue(data.assign(label=[None, *data["label"].iloc[1:]]), target="label", pred_probs=probs)
    with pytest.raises(DataError, match="not in the data"):
        apply_review(data, {"nope": "pos"}, target="label")
    with pytest.raises(DataError, match="not among the labels"):
        apply_review(data, {"r000": "positive"}, target="label")
    with pytest.raises(ConfigError, match="policy"):
        apply_review(data, {"r000": "pos"}, target="label", policy="delete")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="dict or a pandas Series"):
        apply_review(data, [("r000", "pos")], target="label")  # type: ignore[arg-type]
