"""Cross-validation folds, cross_validate, and the training-loop callbacks it relies on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_reviews
from tunesmith import ConfigError, DataError, FineTuner, NotFittedError
from tunesmith.evaluate.folds import cv_folds
from tunesmith.search.cv import CVResult, cross_validate
from tunesmith.train.callbacks import Callback, StopTraining, TrainState


class Boom(Exception):
    """Stands in for a search pruner's exception (optuna.TrialPruned)."""


class Recorder(Callback):
    def __init__(self, order: int = 50) -> None:
        self.order = order
        self.seen: list[dict] = []

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        self.seen.append(dict(metrics))


class RaiseAt(Callback):
    def __init__(self, epoch: int, exc: Exception) -> None:
        self.epoch = epoch
        self.exc = exc

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        if metrics["epoch"] == self.epoch:
            raise self.exc


@pytest.fixture
def params(fast_params) -> dict:
    return {**fast_params, "runs_dir": None, "baselines": False}


# --- callbacks and best_score_ ------------------------------------------------------------------


def test_callbacks_receive_every_epochs_metrics(params, reviews):
    rec = Recorder()
    ft = FineTuner(**{**params, "early_stopping": False}).fit(reviews, target="label", callbacks=[rec])
    assert [m["epoch"] for m in rec.seen] == [1, 2, 3]
    assert all(ft.monitor_ in m for m in rec.seen)
    assert [m[ft.monitor_] for m in rec.seen] == [h[ft.monitor_] for h in ft.history_]


def test_callbacks_run_by_order_around_early_stopping(params, reviews):
    early, late = Recorder(order=10), Recorder(order=60)
    FineTuner(**params).fit(reviews, target="label", callbacks=[late, early])
    # Early stopping (order 20) marks an improving epoch after order 10 saw it, before order 60.
    assert "best" not in early.seen[0] and late.seen[0].get("best") is True


def test_an_exception_in_a_callback_propagates_and_leaves_the_estimator_unfitted(params, reviews):
    ft = FineTuner(**params)
    exc = Boom("pruned")
    with pytest.raises(Boom) as info:
        ft.fit(reviews, target="label", callbacks=[RaiseAt(2, exc)])
    assert info.value is exc
    with pytest.raises(NotFittedError):
        ft.predict(["great fun"])
    assert ft.best_score_ is None
    # A refit of a fitted estimator that fails the same way leaves it unfitted too.
    ft.fit(reviews, target="label")
    assert ft.best_score_ is not None
    with pytest.raises(Boom):
        ft.fit(reviews, target="label", callbacks=[RaiseAt(1, Boom())])
    with pytest.raises(NotFittedError):
        ft.predict(["great fun"])


def test_stop_training_from_a_callback_ends_cleanly(params, reviews):
    ft = FineTuner(**{**params, "epochs": 5}).fit(
        reviews, target="label", callbacks=[RaiseAt(2, StopTraining("enough"))]
    )
    assert ft.stop_reason_ == "enough" and len(ft.history_) == 2


def test_best_score_is_the_best_monitored_value(params, reviews, tmp_path):
    ft = FineTuner(**{**params, "early_stopping": False, "epochs": 4}).fit(reviews, target="label")
    assert ft.monitor_ == "valid_f1_macro" and ft.monitor_mode_ == "max"
    values = [h["valid_f1_macro"] for h in ft.history_]
    assert ft.best_score_ == max(values) == values[ft.best_epoch_ - 1]
    loaded = FineTuner.load(ft.save(tmp_path / "m"))
    assert loaded.best_score_ == ft.best_score_ and loaded.monitor_ == ft.monitor_
    assert loaded.monitor_mode_ == "max"

    lossy = FineTuner(**{**params, "early_stopping": False, "monitor": "loss"}).fit(reviews, target="label")
    assert lossy.monitor_ == "valid_loss" and lossy.monitor_mode_ == "min"
    assert lossy.best_score_ == min(h["valid_loss"] for h in lossy.history_)


def test_regression_monitors_rmse_downwards(params):
    rng = np.random.default_rng(0)
    texts = [("great " * int(k)) + "film" for k in rng.integers(0, 6, size=40)]
    y = [t.count("great") + float(rng.normal(0, 0.1)) for t in texts]
    ft = FineTuner(**params).fit(texts, y)
    assert ft.monitor_ == "valid_rmse" and ft.monitor_mode_ == "min"
    assert ft.best_score_ == min(h["valid_rmse"] for h in ft.history_)


def test_no_validation_no_best_score(params, reviews):
    ft = FineTuner(**{**params, "valid_size": 0.0}).fit(reviews, target="label")
    assert ft.best_score_ is None and ft.monitor_ == "valid_f1_macro"


# --- cv_folds -------------------------------------------------------------------------------------


def _covers_once(folds, n):
    valid = np.concatenate([v for _, v in folds])
    assert sorted(valid.tolist()) == list(range(n))
    for tr, va in folds:
        assert not set(tr) & set(va)


def test_stratified_folds_keep_class_proportions():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(90)], "label": ["a"] * 60 + ["b"] * 30})
    folds = cv_folds(df, k=3, target="label")
    assert len(folds) == 3
    _covers_once(folds, 90)
    for tr, va in folds:
        assert len(tr) + len(va) == 90
        assert (df.label.iloc[va] == "b").sum() == 10 and (df.label.iloc[tr] == "b").sum() == 20


def test_regression_and_untargeted_folds_are_plain_kfold():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "y": np.linspace(0, 1, 20)})
    folds = cv_folds(df, k=4, target="y")
    _covers_once(folds, 20)
    assert [len(v) for _, v in folds] == [5, 5, 5, 5]
    assert len(cv_folds(df, k=4)) == 4


def test_same_seed_same_folds_other_seed_other_folds():
    df = make_reviews(60, users=True)
    for kw in ({}, {"strategy": "group", "group_column": "user"}):
        a = cv_folds(df, k=3, target="label", seed=1, **kw)
        b = cv_folds(df, k=3, target="label", seed=1, **kw)
        assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    c = cv_folds(df, k=3, target="label", seed=2)
    a = cv_folds(df, k=3, target="label", seed=1)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_group_folds_never_split_a_group():
    df = make_reviews(60, users=True)
    folds = cv_folds(df, k=4, strategy="group", target="label", group_column="user")
    _covers_once(folds, 60)
    for tr, va in folds:
        assert not set(df.user.iloc[tr]) & set(df.user.iloc[va])
    regression = df.assign(y=np.arange(60) / 7.0)
    for tr, va in cv_folds(regression, k=4, strategy="group", target="y", group_column="user"):
        assert not set(df.user.iloc[tr]) & set(df.user.iloc[va])


def test_group_folds_need_k_groups():
    df = make_reviews(30, users=True)
    with pytest.raises(DataError, match=r"column 'user'.*8 group\(s\), fewer than the 10 folds"):
        cv_folds(df, k=10, strategy="group", target="label", group_column="user")
    with pytest.raises(DataError, match="group column 'usr' not found.*Did you mean 'user'"):
        cv_folds(df, k=3, strategy="group", target="label", group_column="usr")
    df.loc[4, "user"] = None
    with pytest.raises(DataError, match=r"row 5, column 'user': group value is missing"):
        cv_folds(df, k=3, strategy="group", target="label", group_column="user")


def test_time_folds_train_strictly_before_validation():
    rng = np.random.default_rng(0)
    days = pd.date_range("2024-01-01", periods=25, freq="D")
    # Shuffled rows with repeated dates (three rows on some days): ties must not straddle a fold.
    dates = rng.permutation(np.concatenate([days.values, days.values[:5], days.values[:5]]))
    df = pd.DataFrame({"text": [f"t{i}" for i in range(35)], "label": ["a", "b"] * 17 + ["a"], "date": dates})
    df["date"] = pd.to_datetime(df["date"]).dt.strftime("%Y-%m-%d")  # as read from a CSV
    folds = cv_folds(df, k=4, strategy="time", time_column="date")
    assert len(folds) == 4
    when = pd.to_datetime(df["date"])
    previous_train = 0
    for tr, va in folds:
        assert len(va) > 0 and when.iloc[tr].max() < when.iloc[va].min()
        assert len(tr) > previous_train  # an expanding window
        previous_train = len(tr)
    # The last validation block ends at the latest rows.
    assert when.iloc[folds[-1][1]].max() == when.max()


def test_time_folds_match_time_series_split_without_ties():
    from sklearn.model_selection import TimeSeriesSplit

    order = np.random.default_rng(1).permutation(30)
    df = pd.DataFrame({"text": ["x"] * 30, "t": order.astype(float)})
    folds = cv_folds(df, k=5, strategy="time", time_column="t")
    by_time = np.argsort(order)
    for (tr, va), (etr, eva) in zip(folds, TimeSeriesSplit(n_splits=5).split(np.zeros(30)), strict=True):
        assert np.array_equal(tr, np.sort(by_time[etr])) and np.array_equal(va, np.sort(by_time[eva]))


def test_unreadable_time_names_column_and_row():
    df = pd.DataFrame({"text": ["x"] * 6, "when": ["2024-01-01", "2024-01-02", "soon", "2024-01-04", "x", "y"]})
    with pytest.raises(DataError, match=r"row 3, column 'when': cannot read 'soon' as a date"):
        cv_folds(df, k=2, strategy="time", time_column="when")
    df["when"] = ["2024-01-01", None, "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06"]
    with pytest.raises(DataError, match=r"row 2, column 'when': time value is missing"):
        cv_folds(df, k=2, strategy="time", time_column="when")
    same = pd.DataFrame({"text": ["x"] * 6, "when": [1, 1, 1, 1, 1, 2]})
    with pytest.raises(DataError, match="too few distinct times"):
        cv_folds(same, k=3, strategy="time", time_column="when")


def test_bad_fold_settings_are_config_errors():
    df = make_reviews(20, users=True)
    with pytest.raises(ConfigError, match="setting 'k'.*at least 2"):
        cv_folds(df, k=1, target="label")
    with pytest.raises(ConfigError, match="setting 'strategy'.*'random'"):
        cv_folds(df, strategy="random", target="label")
    with pytest.raises(ConfigError, match="setting 'group_column'"):
        cv_folds(df, strategy="group", target="label")
    with pytest.raises(ConfigError, match="setting 'time_column'"):
        cv_folds(df, strategy="time", target="label")
    with pytest.raises(DataError, match="too few rows"):
        cv_folds(df.head(3), k=4, target="label")
    with pytest.raises(DataError, match="target column 'lbl' not found"):
        cv_folds(df, k=3, target="lbl")


# --- cross_validate ---------------------------------------------------------------------------------


def test_cross_validate_scores_each_fold(params):
    result = cross_validate(params, make_reviews(60), target="label", k=3, progress=False)
    assert isinstance(result, CVResult)
    assert result.metric == "valid_f1_macro" and result.mode == "max"
    assert len(result.scores) == 3 and len(result.best_epochs) == 3 and len(result.fold_metrics) == 3
    assert result.mean == pytest.approx(np.mean(result.scores))
    assert result.std == pytest.approx(np.std(result.scores))
    for score, metrics, epoch in zip(result.scores, result.fold_metrics, result.best_epochs, strict=True):
        assert metrics["valid_f1_macro"] == score and metrics["epoch"] == epoch
    assert [s["valid"] for s in result.fold_sizes] == [20, 20, 20]
    d = result.to_dict()
    assert d["scores"] == result.scores and d["metric"] == "valid_f1_macro" and result.seconds > 0


def test_cross_validate_hands_each_fold_its_callbacks(params):
    calls: list[int] = []
    recorders: list[Recorder] = []

    def fold_callbacks(i: int) -> list[Callback]:
        calls.append(i)
        recorders.append(Recorder())
        return [recorders[-1]]

    cross_validate(
        {**params, "early_stopping": False},
        make_reviews(48),
        target="label",
        k=3,
        fold_callbacks=fold_callbacks,
        progress=False,
    )
    assert calls == [0, 1, 2]
    assert all(len(r.seen) == 3 and "valid_f1_macro" in r.seen[0] for r in recorders)

    def pruning(i: int) -> list[Callback]:
        return [RaiseAt(1, Boom())] if i == 1 else []

    with pytest.raises(Boom):
        cross_validate(params, make_reviews(48), target="label", k=3, fold_callbacks=pruning, progress=False)


def test_cross_validate_groups_and_time(params, tmp_path):
    df = make_reviews(48, users=True)
    result = cross_validate(params, df, target="label", k=3, strategy="group", group_column="user", progress=False)
    assert len(result.scores) == 3 and result.strategy == "group"
    df["day"] = pd.date_range("2024-01-01", periods=48, freq="D").strftime("%Y-%m-%d")
    path = tmp_path / "reviews.csv"
    df.to_csv(path, index=False)
    timed = cross_validate(
        {**params, "group_column": "user"},
        path,
        target="label",
        k=3,
        strategy="time",
        time_column="day",
        progress=False,
    )
    assert [s["valid"] for s in timed.fold_sizes] == [12, 12, 12]
    assert [s["train"] for s in timed.fold_sizes] == [12, 24, 36]


def test_cross_validate_refuses_bad_settings_before_training(params):
    with pytest.raises(ConfigError, match="setting 'group_column'"):
        cross_validate(params, make_reviews(20), target="label", k=3, strategy="group")
    with pytest.raises(ConfigError, match="setting 'epochs'"):
        cross_validate({**params, "epochs": 0}, make_reviews(20), target="label", k=3)
    with pytest.raises(DataError, match="target column 'lbl' not found"):
        cross_validate(params, make_reviews(20), target="lbl", k=3)


# --- every kind, through the contract -------------------------------------------------------------


def _table(n: int = 180, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    logit = 2.0 * x1 - x2 + np.where(color == "red", 2.0, -1.0)
    label = np.where(logit + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label})


def _stripes(n: int = 60, seed: int = 0, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.zeros((n, size, size), dtype=np.float32)
    band = size // 3
    for i, c in enumerate(y):
        x[i, c * band : (c + 1) * band, :] = 1.0
    return np.clip(x + rng.normal(0, 0.15, x.shape), 0, 1).astype(np.float32), y


def _log(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        group = u % 3
        picks = rng.choice(np.arange(group * 10, group * 10 + 10), size=6, replace=False)
        for t, i in enumerate(picks):
            rows.append({"user_id": f"u{u}", "item_id": f"i{i}", "timestamp": t, "rating": 5 if t % 2 == 0 else 4})
    return pd.DataFrame(rows)


def test_cross_validate_a_tabular_model_with_boosting_steps():
    from tunesmith.tabular.estimator import TabularFineTuner

    est = TabularFineTuner(
        model="lightgbm", n_estimators=40, early_stopping_rounds=10, rounds_per_step=10, progress=False, runs_dir=None
    )
    recorders: list[Recorder] = []

    def fold_callbacks(i: int) -> list[Callback]:
        recorders.append(Recorder())
        return [recorders[-1]]

    df = _table()
    df["region"] = np.arange(len(df)) % 6
    result = cross_validate(
        est, df, target="label", k=3, strategy="group", group_column="region", fold_callbacks=fold_callbacks,
        progress=False,
    )  # fmt: skip
    assert result.kind == "tabular" and result.metric == "valid_accuracy" and result.mode == "max"
    assert len(result.scores) == 3 and all(0.5 < s <= 1.0 for s in result.scores)
    assert result.fold_metrics[0]["valid_accuracy"] == result.scores[0]
    # LightGBM reports every rounds_per_step rounds: the steps a search prunes at
    assert all(r.seen and "valid_loss" in r.seen[0] for r in recorders)
    assert sum(s["valid"] for s in result.fold_sizes) == len(df)
    assert est.get_params()["task"] == "auto", "the estimator passed in is never changed"


def test_cross_validate_an_image_model_on_arrays():
    from tunesmith.estimators.image import ImageFineTuner

    x, y = _stripes()
    est = ImageFineTuner(
        backbone="tiny-image", image_size=16, epochs=2, batch_size=32, lr=3e-3, progress=False, runs_dir=None
    )
    result = cross_validate(est, x, y, k=3, progress=False)
    assert result.kind == "image" and result.metric == "valid_accuracy"
    assert len(result.scores) == 3 and result.epochs_run == [2, 2, 2]
    assert [s["valid"] for s in result.fold_sizes] == [20, 20, 20]


def test_cross_validate_a_recommender_by_ndcg():
    from tunesmith.recsys.recommender import Recommender

    result = cross_validate(Recommender(model="ease", min_rating=4, progress=False), _log(), target="rating", k=3)
    assert result.kind == "recommender" and result.metric == "valid_ndcg@10" and result.mode == "max"
    assert len(result.scores) == 3 and all(0.0 < s <= 1.0 for s in result.scores)
    assert "valid_hr@10" in result.fold_metrics[0]


def test_the_old_evaluate_cv_path_warns_and_still_works():
    import tunesmith.evaluate.cv as old
    import tunesmith.search.cv as new

    with pytest.warns(DeprecationWarning, match="tunesmith.search.cv"):
        assert old.cross_validate is new.cross_validate
    with pytest.warns(DeprecationWarning, match="tunesmith.evaluate.folds"):
        assert old.cv_folds is cv_folds
