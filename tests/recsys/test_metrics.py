"""Full-ranking metrics: a hand-computed example, exclusion, ties, coverage, popularity, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from tunesmith.errors import ConfigError
from tunesmith.recsys import (
    HoldOut,
    evaluate_ranking,
    popularity_percentile,
    ranking_metrics,
    target_ranks,
    top_k,
)

# Two users, five items. User 0 already had item 1 (its best score); user 1 had nothing.
SCORES = np.array([[0.1, 0.9, 0.5, 0.3, 0.7], [0.8, 0.2, 0.6, 0.4, 0.0]])
EXCLUDE = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]]))
TARGETS = [np.array([2, 3]), np.array([4])]
POPULARITY = np.array([10, 50, 20, 30, 40])


def test_hand_computed_example() -> None:
    # User 0 ranks 4, 2, 3, 0 (item 1 excluded): targets at 2 and 3. User 1 ranks 0, 2, 3, 1, 4: target at 5.
    assert [r.tolist() for r in target_ranks(SCORES, EXCLUDE, TARGETS)] == [[2.0, 3.0], [5.0]]
    assert top_k(SCORES, EXCLUDE, 3).tolist() == [[4, 2, 3], [0, 2, 3]]
    assert top_k(SCORES, EXCLUDE, 7).tolist() == [[4, 2, 3, 0, -1, -1, -1], [0, 2, 3, 1, 4, -1, -1]]
    m = ranking_metrics(SCORES, EXCLUDE, TARGETS, ks=(1, 3), item_popularity=POPULARITY)
    ndcg_user0 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    expected = {
        "hr@1": 0.0,
        "ndcg@1": 0.0,
        "recall@1": 0.0,
        "precision@1": 0.0,
        "coverage@1": 2 / 5,  # items 4 and 0
        "pop@1": (0.75 + 0.0) / 2,
        "hr@3": 0.5,
        "ndcg@3": ndcg_user0 / 2,
        "recall@3": 0.5,
        "precision@3": (2 / 3) / 2,
        "coverage@3": 4 / 5,  # items 0, 2, 3, 4
        "pop@3": (0.75 + 0.25 + 0.5 + 0.0 + 0.25 + 0.5) / 6,
        "mrr": (1 / 2 + 1 / 5) / 2,
        "n_users": 2.0,
    }
    assert list(m) == list(expected)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key


def test_popularity_percentile() -> None:
    assert popularity_percentile(POPULARITY).tolist() == [0.0, 1.0, 0.25, 0.5, 0.75]
    assert popularity_percentile(np.array([0, 0, 5])).tolist() == [0.25, 0.25, 1.0]  # ties share their places


def test_excluded_items_are_never_recommended() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((20, 12))
    best = scores.argmax(axis=1)
    exclude = sp.csr_matrix((np.ones(20), (np.arange(20), best)), shape=(20, 12))
    top = top_k(scores, exclude, 12)
    assert not any(best[u] in top[u] for u in range(20))
    assert (top[:, -1] == -1).all() and (top[:, :-1] >= 0).all()  # 11 items can be shown; the 12th slot is padding
    ranks = target_ranks(scores, exclude, [np.array([b]) for b in best])
    assert all(np.isinf(r[0]) for r in ranks)
    m = ranking_metrics(scores, exclude, [np.array([b]) for b in best], ks=(10,))
    assert m["hr@10"] == 0.0 and m["mrr"] == 0.0


def test_ties_go_to_the_lower_item_code_everywhere() -> None:
    constant = np.zeros((1, 6))
    assert top_k(constant, None, 3).tolist() == [[0, 1, 2]]
    # A model scoring every item alike does not find every target at rank 1.
    assert target_ranks(constant, None, [np.array([4])])[0].tolist() == [5.0]
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(30, 25)).astype(float)  # many ties
    exclude = sp.random(30, 25, density=0.2, random_state=1, format="csr")
    targets = [np.array([t]) for t in rng.integers(0, 25, size=30)]
    ranks = np.array([r[0] for r in target_ranks(scores, exclude, targets)])
    top = top_k(scores, exclude, 25)
    for u, t in enumerate(targets):
        listed = np.flatnonzero(top[u] == t[0])
        assert (ranks[u] == listed[0] + 1) if len(listed) else np.isinf(ranks[u])


def test_recall_ndcg_with_more_targets_than_k() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    m = ranking_metrics(scores, None, [np.array([0, 1, 2])], ks=(2,))
    assert m["recall@2"] == pytest.approx(2 / 3)  # hits / number of targets
    assert m["ndcg@2"] == pytest.approx(1.0)  # ideal DCG over min(3, 2) targets
    assert m["precision@2"] == 1.0


def holdout(n_users: int, n_items: int, seed: int = 0) -> HoldOut:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 140, size=n_users)
    rows = np.repeat(np.arange(n_users), np.minimum(sizes, n_items - 3))
    cols = np.concatenate([rng.choice(n_items, size=min(s, n_items - 3), replace=False) for s in sizes])
    history = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, n_items))
    targets = []
    for u in range(n_users):
        free = np.setdiff1d(np.arange(n_items), history[u].indices)
        targets.append(rng.choice(free, size=int(rng.integers(1, 3)), replace=False).astype(np.int32))
    seqs = [history[u].indices.astype(np.int32) for u in range(n_users)]
    return HoldOut(np.arange(n_users, dtype=np.int32), targets, history, seqs)


def test_evaluate_ranking_batches_and_groups() -> None:
    hold = holdout(50, 160)
    rng = np.random.default_rng(2)
    table = rng.random((50, 160))
    pop = rng.integers(0, 100, size=160)
    result = evaluate_ranking(lambda p: table[p], hold, ks=(5, 10), item_popularity=pop, batch_size=7)
    whole = ranking_metrics(table, hold.history, hold.targets, ks=(5, 10), item_popularity=pop)
    assert result["overall"] == pytest.approx(whole)
    groups = result["by_history_length"]
    assert list(groups) == ["<10", "10-29", "30-99", ">=100"]
    sizes = hold.history_sizes()
    expected_n = [(sizes < 10).sum(), ((sizes >= 10) & (sizes < 30)).sum(), ((sizes >= 30) & (sizes < 100)).sum()]
    expected_n.append((sizes >= 100).sum())
    assert [g["n_users"] for g in groups.values()] == expected_n
    big = sizes >= 100
    sub = ranking_metrics(table[big], hold.history[big], [t for t, b in zip(hold.targets, big, strict=True) if b])
    assert groups[">=100"]["ndcg@10"] == pytest.approx(sub["ndcg@10"])


def test_bad_inputs_are_config_errors() -> None:
    hold = holdout(4, 20)
    with pytest.raises(ConfigError, match="score_fn returned shape"):
        evaluate_ranking(lambda p: np.zeros((len(p), 19)), hold)
    with pytest.raises(ConfigError, match="NaN"):
        ranking_metrics(np.array([[np.nan, 1.0]]), None, [np.array([0])])
    with pytest.raises(ConfigError, match="ks"):
        ranking_metrics(SCORES, None, TARGETS, ks=(0,))
    with pytest.raises(ConfigError, match="groups"):
        evaluate_ranking(lambda p: np.zeros((len(p), 20)), hold, groups=(30, 10))
    with pytest.raises(ConfigError, match="exclude has shape"):
        top_k(SCORES, sp.csr_matrix((1, 5)), 2)
