"""The collaborative-filtering baseline: it learns planted tastes, is deterministic and never fails a row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tunesmith.errors import ConfigError, DataError, NotFittedError
from tunesmith.personalize.baselines import BPR_GRID, EASE_GRID, MF_GRID, CollaborativeBaseline, mean_user_auc
from tunesmith.personalize.settings import time_ordered_holdout


def planted(n_users: int = 80, n_items: int = 40, per_user: int = 30, seed: int = 0) -> pd.DataFrame:
    """Rows whose like/dislike label follows a rank-2 taste structure plus a milder item bias."""
    rng = np.random.default_rng(seed)
    users, items = rng.standard_normal((n_users, 2)), rng.standard_normal((n_items, 2))
    bias = 0.5 * rng.standard_normal(n_items)
    rows = []
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            logit = 2.0 * users[u] @ items[i] + bias[i]
            liked = rng.random() < 1 / (1 + np.exp(-logit))
            rows.append({"user": f"u{u}", "item": int(i), "label": "like" if liked else "dislike", "t": t})
    # Shuffled, so only the time column says which rows are a user's latest.
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def baseline(**kw: object) -> CollaborativeBaseline:
    return CollaborativeBaseline("user", "item", "label", "like", time_column="t", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def split() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = planted()
    held = time_ordered_holdout(df, "user", 0.2, "t")
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


@pytest.fixture(scope="module")
def fitted(split: tuple[pd.DataFrame, pd.DataFrame]) -> CollaborativeBaseline:
    return baseline().fit(split[0])


def _auc(rows: pd.DataFrame, scores: np.ndarray) -> float:
    return mean_user_auc(rows["user"].to_numpy(), (rows["label"] == "like").to_numpy(), scores)


def test_beats_random_and_item_popularity_on_held_out_rows(
    split: tuple[pd.DataFrame, pd.DataFrame], fitted: CollaborativeBaseline
) -> None:
    train, test = split
    ours = _auc(test, fitted.score_rows(test))
    rate = (train["label"] == "like").groupby(train["item"]).mean()
    popularity = _auc(test, test["item"].map(rate).fillna(rate.mean()).to_numpy())
    count = _auc(test, test["item"].map(train["item"].value_counts()).fillna(0).to_numpy(dtype=float))
    chance = _auc(test, np.random.default_rng(0).random(len(test)))
    assert ours > popularity + 0.05, (fitted.chosen_, ours, popularity)
    assert ours > count + 0.1 and ours > chance + 0.1, (ours, count, chance)
    assert ours > 0.7


def test_validation_covers_every_setting_and_the_best_one_is_chosen(fitted: CollaborativeBaseline) -> None:
    expected = (
        {f"mf(rank={r}, l2={l2:g})" for r, l2 in MF_GRID}
        | {f"ease(l2={l2:g})" for l2 in EASE_GRID}
        | {f"bpr(factors={f}, reg={r:g})" for f, r in BPR_GRID}
    )
    assert set(fitted.validation_) == expected
    assert all(0.5 < v <= 1.0 for v in fitted.validation_.values()), fitted.validation_
    assert fitted.validation_[fitted.chosen_] == max(fitted.validation_.values())
    assert fitted.dropped_ == {"missing label": 0, "missing user or item": 0}
    assert 0 < fitted.fit_seconds_ < 60


def test_same_seed_gives_identical_scores(split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, test = split
    for family in ("mf", "bpr"):
        a = baseline(candidates=[family]).fit(train)
        b = baseline(candidates=[family]).fit(train)
        assert a.validation_ == b.validation_
        assert np.array_equal(a.score_rows(test), b.score_rows(test)), family


@pytest.mark.parametrize("family", ["mf", "ease", "bpr"])
def test_unknown_users_and_items_get_finite_scores(family: str, split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, test = split
    model = baseline(candidates=[family]).fit(train)
    assert model.chosen_.startswith(family + "(")
    rows = pd.DataFrame(
        {
            "user": ["u0", "nobody", "nobody", "u0", "nobody", None, "u1"],
            "item": [train["item"].iloc[0], train["item"].iloc[0], 999, 999, 998, 3, None],
        }
    )
    scores = model.score_rows(rows)
    assert scores.dtype == np.float64 and scores.shape == (len(rows),)
    assert np.isfinite(scores).all(), scores
    # Nothing known about either side: every such row scores alike.
    assert scores[2] == scores[4]
    # Known rows score as they did, whatever else is in the frame.
    assert np.array_equal(model.score_rows(test.iloc[:5])[[0]], model.score_rows(test.iloc[[0]]))


def test_items_scored_as_text_or_numbers_alike(fitted: CollaborativeBaseline, split: tuple[pd.DataFrame, ...]) -> None:
    test = split[1].iloc[:20]
    as_text = test.assign(item=test["item"].astype(str))
    assert np.array_equal(fitted.score_rows(test), fitted.score_rows(as_text))


def test_mean_user_auc_matches_sklearn_per_user() -> None:
    rng = np.random.default_rng(1)
    users = rng.integers(0, 12, 300)
    liked = rng.random(300) < 0.4
    for scores in (rng.random(300), rng.integers(0, 3, 300).astype(float)):  # ties count one half
        expected = [
            roc_auc_score(liked[users == u], scores[users == u])
            for u in np.unique(users)
            if 0 < liked[users == u].sum() < (users == u).sum()
        ]
        assert mean_user_auc(users, liked, scores) == pytest.approx(np.mean(expected), abs=1e-12)
    one_class = np.ones(300, dtype=bool)
    assert np.isnan(mean_user_auc(users, one_class, scores))


@pytest.mark.parametrize("column", ["user", "item", "label", "t"])
def test_missing_column_names_it(column: str, split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    with pytest.raises(DataError, match=f"column '{column}'.*missing") as err:
        baseline().fit(split[0].drop(columns=[column]))
    assert err.value.column == column


def test_score_rows_missing_column_and_not_fitted(fitted: CollaborativeBaseline) -> None:
    with pytest.raises(DataError, match="column 'item'"):
        fitted.score_rows(pd.DataFrame({"user": ["u0"]}))
    with pytest.raises(NotFittedError, match="not fitted"):
        baseline().score_rows(pd.DataFrame({"user": ["u0"], "item": [1]}))


def test_missing_labels_are_dropped_and_counted(split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train = split[0].copy()
    train.loc[:9, "label"] = None
    model = baseline(candidates=["ease"]).fit(train)
    assert model.dropped_["missing label"] == 10
    with pytest.raises(DataError, match="no rows left") as err:
        baseline().fit(train.assign(label=None))
    assert err.value.column == "label"


def test_one_label_only_or_wrong_positive_is_refused(split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    with pytest.raises(DataError, match="column 'label'.*needs both labels"):
        CollaborativeBaseline("user", "item", "label", "LIKE").fit(split[0])


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="candidates"):
        baseline(candidates=["mf", "svd"])
    with pytest.raises(ConfigError, match="candidates"):
        baseline(candidates="mf")
    with pytest.raises(ConfigError, match="valid_fraction"):
        baseline(valid_fraction=1.0)


@pytest.mark.slow
def test_movielens_100k_per_user_auc() -> None:
    from tunesmith.datasets import movielens_100k

    ratings = movielens_100k()[0].assign(liked=lambda r: (r["rating"] >= 4).astype(int))
    held = time_ordered_holdout(ratings, "user_id", 0.2, "timestamp")
    train, test = ratings[~held], ratings[held]
    model = CollaborativeBaseline("user_id", "item_id", "liked", 1, time_column="timestamp").fit(train)
    auc = mean_user_auc(test["user_id"].to_numpy(), test["liked"].to_numpy(), model.score_rows(test))
    # Item biases alone reach about 0.69 here; the chosen model should add to them.
    assert auc > 0.695, (model.chosen_, model.validation_, auc)
