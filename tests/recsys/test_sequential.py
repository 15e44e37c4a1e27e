"""The sequential recommender: learns next-item patterns, fine-tunes on positives, folds in, cold items."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.errors import ConfigError, NotFittedError
from tunesmith.recsys.sequential import SeqConfig, SequentialRecommender, TrainSettings

N_ITEMS = 30
SMALL = SeqConfig(dim=16, layers=1, heads=2, max_len=12, dropout=0.0, seed=0)


def _cycles(n_users: int = 60, length: int = 15, seed: int = 0) -> list[np.ndarray]:
    """Users walk item i -> i+1 (mod N) from a random start: a pattern only order reveals."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(N_ITEMS) + np.arange(length)) % N_ITEMS for _ in range(n_users)]


def _hit_rate(model: SequentialRecommender, seqs: list[np.ndarray]) -> float:
    scores = model.score([s[:-1] for s in seqs])
    return float(np.mean(scores.argmax(axis=1) == np.array([s[-1] for s in seqs])))


def test_pretraining_learns_the_next_item_and_early_stopping_keeps_the_best():
    train, valid = _cycles(), _cycles(20, seed=1)
    model = SequentialRecommender(N_ITEMS, SMALL)
    report = model.pretrain(
        train, TrainSettings(epochs=40, lr=5e-3, batch_size=32, patience=8), valid_fn=lambda m: _hit_rate(m, valid)
    )
    assert report.history[-1]["loss"] < report.history[0]["loss"]
    assert report.best_score is not None and report.best_score >= 0.9
    assert _hit_rate(model, valid) == report.best_score, "the best epoch's weights are the ones kept"


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bpr", "bce"])
def test_finetuning_counts_only_positive_targets(loss):
    seqs = _cycles(40)
    # Only even items are positives: the fine-tuned model must still learn the walk from them.
    positives = [s % 2 == 0 for s in seqs]
    model = SequentialRecommender(N_ITEMS, SMALL)
    settings = TrainSettings(epochs=25, lr=5e-3, batch_size=32, loss=loss, negatives=8, patience=0)
    report = model.finetune(seqs, positives, settings)
    assert report.phase == "finetune" and len(report.history) == 25
    # After an odd item the next (even) one is a positive target the model saw many times.
    tests = [s for s in _cycles(30, seed=2) if s[-1] % 2 == 0]
    assert _hit_rate(model, tests) >= 0.3  # chance is 1/30


def test_frozen_item_embeddings_do_not_move():
    model = SequentialRecommender(N_ITEMS, SMALL)
    before = model.net.item_emb.weight.detach().clone()
    model.finetune(_cycles(10), [np.ones(15, bool)] * 10, TrainSettings(epochs=2, freeze_item_embeddings=True))
    assert np.array_equal(before.numpy(), model.net.item_emb.weight.detach().numpy())


def test_state_round_trip_and_cold_items_scored_from_content():
    rng = np.random.default_rng(0)
    content = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    known = np.ones(N_ITEMS, dtype=bool)
    known[[5, 6]] = False  # never seen in training
    seqs = [s[~np.isin(s, [5, 6])] for s in _cycles()]
    model = SequentialRecommender(N_ITEMS, SMALL, content=content, known_items=known)
    model.pretrain(seqs, TrainSettings(epochs=3, lr=5e-3))
    vectors = model.item_vectors()
    # A cold item's vector is its projected content alone: non-zero, and exactly the projection.
    proj = model.net.content_proj.weight.detach().numpy()
    assert np.allclose(vectors[5], content[5] @ proj.T, atol=1e-5)
    arrays, settings = model.state()
    again = SequentialRecommender.from_state(arrays, settings)
    histories = [s[:-1] for s in seqs[:5]]
    assert np.allclose(model.score(histories), again.score(histories), atol=1e-5)
    assert len(again.reports) == 1


def test_errors_name_the_setting():
    with pytest.raises(ConfigError, match="multiple of heads"):
        SequentialRecommender(N_ITEMS, SeqConfig(dim=10, heads=3))
    with pytest.raises(ConfigError, match="loss"):
        SequentialRecommender(N_ITEMS, SMALL).pretrain(_cycles(4), TrainSettings(loss="hinge"))
    with pytest.raises(ConfigError, match="two or more interactions"):
        SequentialRecommender(N_ITEMS, SMALL).pretrain([np.array([1])])
    with pytest.raises(NotFittedError):
        SequentialRecommender(N_ITEMS, SMALL).score([np.array([1, 2])])


def test_short_histories_score_finite_in_training_and_inference_mode():
    model = SequentialRecommender(N_ITEMS, SMALL)
    model.pretrain(_cycles(20), TrainSettings(epochs=2))
    short = [np.array([3]), np.array([4, 5]), np.array([], dtype=np.int64), _cycles(1)[0]]
    scores = model.score(short)
    assert np.isfinite(scores).all()
    # Padding does not change what a history scores: the same history alone or in a batch.
    assert np.allclose(model.score([np.array([4, 5])])[0], scores[1], atol=1e-5)


def test_items_never_trained_on_are_not_recommended_without_content():
    known = np.ones(N_ITEMS, dtype=bool)
    known[[5, 6]] = False
    seqs = [s[~np.isin(s, [5, 6])] for s in _cycles()]
    model = SequentialRecommender(N_ITEMS, SMALL, known_items=known)
    model.pretrain(seqs, TrainSettings(epochs=2))
    scores = model.score(seqs[:4])
    assert np.isneginf(scores[:, [5, 6]]).all() and np.isfinite(np.delete(scores, [5, 6], axis=1)).all()
