"""The process-wide cache of frozen-backbone features (head_only fits and baselines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_reviews
from tunesmith import FineTuner
from tunesmith.backbones import cache as fc
from tunesmith.backbones import create_backbone
from tunesmith.backbones.cache import FeatureCache, clear_feature_cache, feature_cache_stats, feature_key


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("_seconds")}


@pytest.fixture(autouse=True)
def empty_cache():
    clear_feature_cache()
    yield
    clear_feature_cache()


@pytest.fixture
def head_params(fast_params) -> dict:
    return {**fast_params, "strategy": "head_only", "runs_dir": None, "lr": 1e-2}


def test_second_head_only_fit_hits_and_predicts_the_same(head_params, reviews):
    a = FineTuner(**head_params).fit(reviews, target="label")
    first = feature_cache_stats()
    # train, valid and test splits (the test split for the frozen baseline)
    assert first.hits == 0 and first.misses == 3 and first.entries == 3
    b = FineTuner(**head_params).fit(reviews, target="label")
    second = feature_cache_stats()
    assert second.hits == 3 and second.misses == 3 and second.entries == 3
    texts = reviews.text.tolist()
    assert np.array_equal(a.predict_proba(texts), b.predict_proba(texts))
    timing = {"epoch_seconds", "train_examples_per_s"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in a.history_] == [
        {k: v for k, v in h.items() if k not in timing} for h in b.history_
    ]
    assert _untimed(a.baseline_metrics_["frozen"]) == _untimed(b.baseline_metrics_["frozen"])


def test_cached_features_equal_fresh_ones(head_params, reviews):
    FineTuner(**head_params).fit(reviews, target="label")
    cached = FineTuner(**head_params).fit(reviews, target="label")
    fresh = FineTuner(**{**head_params, "feature_cache": False}).fit(reviews, target="label")
    texts = reviews.text.tolist()
    assert np.array_equal(cached.predict_proba(texts), fresh.predict_proba(texts))
    assert _untimed(cached.test_metrics_) == _untimed(fresh.test_metrics_)


def test_head_only_scores_the_test_split_from_frozen_features(head_params, reviews):
    train, valid, test = reviews.iloc[:32], reviews.iloc[32:40], make_reviews(16, seed=9)
    ft = FineTuner(**{**head_params, "baselines": False}).fit(train, target="label", eval_set=valid, test_set=test)
    assert feature_cache_stats().entries == 3  # train, valid and test, without baselines too
    # The same numbers as running the whole model over the test texts.
    whole = ft.evaluate(test)
    assert ft.test_metrics_["accuracy"] == whole["accuracy"]
    assert ft.test_metrics_["log_loss"] == pytest.approx(whole["log_loss"], rel=1e-5)


def test_a_different_max_length_or_pooling_misses(head_params, reviews):
    FineTuner(**head_params).fit(reviews, target="label")
    before = feature_cache_stats()
    FineTuner(**{**head_params, "max_length": 16}).fit(reviews, target="label")
    after = feature_cache_stats()
    assert after.hits == before.hits and after.misses == before.misses + 3
    FineTuner(**{**head_params, "pooling": "cls"}).fit(reviews, target="label")
    assert feature_cache_stats().hits == before.hits
    # Other texts, same settings: a miss too.
    FineTuner(**head_params).fit(make_reviews(48, seed=3), target="label")
    assert feature_cache_stats().hits == before.hits


def test_feature_cache_off_leaves_the_cache_alone(head_params, reviews):
    FineTuner(**{**head_params, "feature_cache": False}).fit(reviews, target="label")
    stats = feature_cache_stats()
    assert stats.hits == stats.misses == stats.entries == 0


def test_full_fine_tune_caches_only_the_baseline_features(fast_params, reviews):
    params = {**fast_params, "runs_dir": None}
    a = FineTuner(**params).fit(reviews, target="label")
    assert feature_cache_stats().entries == 2  # train and test, for the frozen baseline
    b = FineTuner(**params).fit(reviews, target="label")
    assert feature_cache_stats().hits == 2
    assert _untimed(a.baseline_metrics_["frozen"]) == _untimed(b.baseline_metrics_["frozen"])
    sa, sb = a.model_.state_dict(), b.model_.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_bound_evicts_least_recently_used(head_params, reviews, monkeypatch):
    FineTuner(**head_params).fit(reviews, target="label")
    stats = feature_cache_stats()
    assert stats.entries == 3
    # Room for about one split's features: storing more evicts the oldest.
    limit = stats.bytes // 2
    monkeypatch.setattr(fc.FEATURE_CACHE, "max_bytes", limit)
    FineTuner(**head_params).fit(make_reviews(48, seed=5), target="label")
    after = feature_cache_stats()
    assert after.evictions > 0 and after.bytes <= limit


def test_lru_order_and_oversized_entries():
    cache = FeatureCache(max_bytes=3 * 4 * 4)  # three 4-float tensors
    keys = [("fp", "mean", 8, str(i)) for i in range(4)]
    for key in keys[:3]:
        assert cache.put(key, torch.zeros(4))
    assert cache.get(keys[0]) is not None  # keys[0] is now the most recently used
    cache.put(keys[3], torch.zeros(4))
    assert keys[1] not in cache and keys[0] in cache and keys[3] in cache
    assert cache.stats().evictions == 1
    assert not cache.put(("fp", "mean", 8, "big"), torch.zeros(100))
    assert len(cache) == 3
    cache.resize(4 * 4)
    assert len(cache) == 1 and keys[3] in cache
    cache.clear()
    assert len(cache) == 0 and cache.stats().hits == 0


def test_callers_cannot_corrupt_the_cache():
    cache = FeatureCache()
    key = ("fp", "mean", 8, "x")
    original = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    cache.put(key, original)
    original.zero_()  # the caller's tensor is not the stored one
    got = cache.get(key)
    assert got is not None and torch.equal(got, torch.arange(6, dtype=torch.float32).reshape(2, 3))
    got.fill_(-1.0)  # nor is the tensor handed back
    again = cache.get(key)
    assert again is not None and torch.equal(again, torch.arange(6, dtype=torch.float32).reshape(2, 3))


def test_embed_results_cannot_be_mutated_into_the_cache(fast_params):
    ft = FineTuner(**fast_params)
    cfg = ft.config
    backbone = create_backbone("tiny-text")
    ids = backbone.tokenize(["great fun movie", "awful boring film"], cfg.max_length)
    first = ft._embed(backbone, ids, cfg, "x", cache=True)
    expected = first.clone()
    first.add_(100.0)
    hit = ft._embed(backbone, ids, cfg, "x", cache=True)
    assert torch.equal(hit, expected)
    hit.mul_(0.0)
    assert torch.equal(ft._embed(backbone, ids, cfg, "x", cache=True), expected)
    assert feature_cache_stats().hits == 2


def test_backbone_without_fingerprint_is_not_cached(fast_params):
    ft = FineTuner(**fast_params)
    backbone = create_backbone("tiny-text")
    backbone.fingerprint = ""
    ids = backbone.tokenize(["great fun movie"], 32)
    ft._embed(backbone, ids, ft.config, "x", cache=True)
    assert feature_cache_stats().entries == 0


def test_key_depends_on_every_token_and_row_boundary():
    assert feature_key("f", "mean", 8, [[1, 2], [3]]) != feature_key("f", "mean", 8, [[1], [2, 3]])
    assert feature_key("f", "mean", 8, [[1, 2]]) != feature_key("f", "mean", 8, [[1, 3]])
    assert feature_key("f", "mean", 8, [[1, 2]]) == feature_key("f", "mean", 8, [[1, 2]])
    assert feature_key("f", "mean", 8, [[1, 2]]) != feature_key("g", "mean", 8, [[1, 2]])
