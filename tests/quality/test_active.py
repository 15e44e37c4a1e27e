"""active_learning: rounds over the estimator contract, the oracle asked only for chosen rows, stopping."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_reviews
from tunesmith import FineTuner
from tunesmith.errors import ConfigError, DataError
from tunesmith.quality.active import active_learning
from tunesmith.tabular import TabularFineTuner

TREES = {"model": "lightgbm", "bagging_folds": 0, "n_estimators": 40, "progress": False, "runs_dir": ""}


def _blobs(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    label = np.where(x1 + 0.5 * x2 + rng.normal(scale=0.3, size=n) > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "label": label})


class Oracle:
    """Answers from the hidden truth and remembers what it was asked."""

    def __init__(self, truth: pd.Series, skip: set[Any] | None = None) -> None:
        self.truth = truth
        self.skip = skip or set()
        self.asked: list[Any] = []

    def __call__(self, rows: pd.DataFrame) -> list[Any]:
        assert "label" not in rows.columns  # the oracle never sees the hidden column
        self.asked.extend(rows.index)
        return [None if i in self.skip else self.truth[i] for i in rows.index]


def test_rounds_ask_only_for_new_rows_and_the_model_learns() -> None:
    full = _blobs(600, 0)
    pool = full.assign(label=None)
    oracle = Oracle(full["label"], skip={5})
    result = active_learning(
        TabularFineTuner(**TREES), pool, target="label", oracle=oracle, eval_set=_blobs(300, 1),
        strategy="margin", batch_size=20, rounds=5, initial=20, patience=5,
    )  # fmt: skip
    assert len(oracle.asked) == len(set(oracle.asked)) == 20 + 5 * 20  # nobody asked twice
    skipped = 1 if 5 in oracle.asked else 0
    assert len(result.labels) == 120 - skipped and result.skipped == ([5] if skipped else [])
    # Each round trains on the labels before it plus what the previous round's batch answered.
    for before, after in zip(result.rounds, result.rounds[1:], strict=False):
        assert after.labeled == before.labeled + before.answered
    assert result.rounds[-1].labeled + result.rounds[-1].answered == len(result.labels)
    assert result.final_score is not None and result.final_score > 0.85
    assert result.curve()[-1] == (len(result.labels), result.final_score)
    assert result.stop_reason == "ran 5 rounds"


def test_uncertainty_beats_random_at_the_same_labels() -> None:
    full = _blobs(1500, 2)
    valid = _blobs(500, 3)
    scores = {}
    for strategy in ("random", "margin"):
        result = active_learning(
            TabularFineTuner(**TREES), full.assign(label=None), target="label", oracle=Oracle(full["label"]),
            eval_set=valid, strategy=strategy, batch_size=15, rounds=6, initial=20, patience=10, seed=0,
        )  # fmt: skip
        scores[strategy] = result.final_score
    assert scores["margin"] >= scores["random"]


def test_it_stops_when_the_score_stops_improving() -> None:
    full = _blobs(400, 4)
    result = active_learning(
        TabularFineTuner(**TREES), full.assign(label=None), target="label", oracle=Oracle(full["label"]),
        eval_set=_blobs(200, 5), batch_size=10, rounds=50, initial=20, patience=2, min_delta=0.5,
    )  # fmt: skip
    # No round can improve by half the accuracy: the first round sets the best, two more end it.
    assert len(result.rounds) == 3 and "did not improve for 2 rounds" in result.stop_reason


def test_text_models_query_with_embeddings(fast_params: dict) -> None:
    df = make_reviews(60)
    pool = df.assign(label=None)
    result = active_learning(
        FineTuner(**{**fast_params, "runs_dir": None, "baselines": False, "epochs": 1}), pool, target="label",
        oracle=Oracle(df["label"]), eval_set=make_reviews(20, seed=1), strategy="badge", batch_size=8,
        rounds=2, initial=12,
    )  # fmt: skip
    assert len(result.labels) == 12 + 2 * 8 and len(result.rounds) == 2


def test_bad_settings_are_refused_by_name() -> None:
    pool = _blobs(50, 0).assign(label=None)
    oracle = Oracle(_blobs(50, 0)["label"])
    with pytest.raises(ConfigError, match="unknown query strategy 'bald'"):
        active_learning(TabularFineTuner(**TREES), pool, target="label", oracle=oracle, strategy="bald")
    with pytest.raises(ConfigError, match="at least 1, got 0"):
        active_learning(TabularFineTuner(**TREES), pool, target="label", oracle=oracle, batch_size=0)
    with pytest.raises(DataError, match="no column 'y'"):
        active_learning(TabularFineTuner(**TREES), pool, target="y", oracle=oracle)
    with pytest.raises(DataError, match="answered 1 labels for 25 rows"):
        active_learning(TabularFineTuner(**TREES), pool, target="label", oracle=lambda rows: ["yes"])
    with pytest.raises(ConfigError, match="needs the model's embeddings"):
        active_learning(TabularFineTuner(**TREES), pool, target="label", oracle=oracle, strategy="coreset", rounds=1)
