"""Active-learning query strategies: what each picks, and that bad input is refused by name."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tunesmith.data.query import STRATEGIES, query, uncertainty
from tunesmith.errors import ConfigError


def _proba(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)


def test_uncertainty_strategies_rank_as_defined() -> None:
    p = _proba([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0], [0.34, 0.33, 0.33]])
    # least confidence: lowest top probability first
    assert query("least_confidence", p, 4).tolist() == [3, 1, 2, 0]
    # margin ("breaking ties"): the 0.50/0.50 row is a perfect tie, then 0.34/0.33
    assert query("margin", p, 4).tolist() == [2, 3, 1, 0]
    # entropy: the near-uniform row, then the spread one, then the two-way tie
    assert query("entropy", p, 4).tolist() == [3, 1, 2, 0]
    np.testing.assert_allclose(uncertainty("entropy", _proba([[0.5, 0.5]])), [np.log(2)])


def test_ties_are_broken_at_random_not_by_position() -> None:
    p = np.full((100, 2), 0.5)
    picks = {tuple(query("margin", p, 5, seed=s).tolist()) for s in range(5)}
    assert len(picks) == 5  # not always the first five rows
    assert query("margin", p, 5, seed=3).tolist() == query("margin", p, 5, seed=3).tolist()


def test_coreset_covers_the_pool_instead_of_one_region() -> None:
    rng = np.random.default_rng(0)
    # three tight clusters; two points are already labeled in the first
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.1, (50, 2)) for c in centers])
    p = np.full((150, 2), 0.5)
    picked = query("coreset", p, 2, embeddings=x, labeled_embeddings=centers[:1] + 0.05)
    assert sorted(int(i) // 50 for i in picked) == [1, 2]  # one in each unlabeled cluster
    picked = query("coreset", p, 3, embeddings=x, seed=1)
    assert sorted(int(i) // 50 for i in picked) == [0, 1, 2]


def test_badge_starts_from_the_largest_gradient_and_spreads_out() -> None:
    rng = np.random.default_rng(0)
    # Three far-apart clouds of rows with the same norm; every row equally uncertain.
    directions = np.eye(8)[:3] * 20
    x = np.concatenate([d + rng.normal(0, 1, (60, 8)) for d in directions])
    picked = query("badge", np.full((180, 2), 0.5), 3, embeddings=x, seed=0)
    assert sorted(int(i) // 60 for i in picked) == [0, 1, 2]
    # The first pick is the row whose last-layer gradient is largest: the least certain one.
    proba = np.tile([0.99, 0.01], (180, 1))
    proba[77] = [0.5, 0.5]
    assert query("badge", proba, 3, embeddings=x)[0] == 77
    # Exact duplicates of a picked row are never picked again.
    dup = np.repeat(x[:1], 200, axis=0)
    assert len(set(query("badge", np.full((200, 2), 0.5), 10, embeddings=dup).tolist())) == 10


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_a_batch_of_distinct_rows(strategy: str) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 4))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    x = rng.normal(size=(300, 16))
    picked = query(strategy, p, 25, embeddings=x, seed=2)
    assert picked.shape == (25,) and len(set(picked.tolist())) == 25 and picked.min() >= 0 and picked.max() < 300
    assert np.array_equal(picked, query(strategy, p, 25, embeddings=x, seed=2))


def test_a_10k_pool_is_queried_quickly() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(2), size=10_000)
    x = rng.normal(size=(10_000, 384)).astype(np.float32)
    started = time.perf_counter()
    for strategy in ("margin", "coreset", "badge"):
        query(strategy, p, 25, embeddings=x, labeled_embeddings=x[:25])
    assert time.perf_counter() - started < 10.0  # the benchmark holds the 2 s target; this guards regressions


def test_bad_input_is_refused_by_name() -> None:
    p = np.full((4, 2), 0.5)
    with pytest.raises(ConfigError, match="unknown query strategy 'bald'"):
        query("bald", p, 1)
    with pytest.raises(ConfigError, match="asks for 5 rows but the pool holds 4"):
        query("margin", p, 5)
    with pytest.raises(ConfigError, match=r"rows must sum to 1 \(row 0 sums to 3.0000\)"):
        query("entropy", np.array([[1.0, 2.0]]), 1)
    with pytest.raises(ConfigError, match="needs the pool's embeddings"):
        query("coreset", p, 1)
    with pytest.raises(ConfigError, match=r"must have shape \(4, dim\), got \(3, 2\)"):
        query("badge", p, 1, embeddings=np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="positive whole number"):
        query("random", p, 0)
