"""k-fold bagging of LightGBM: the averaged booster, out-of-fold validation, callbacks, saving, refits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_wine

from tunesmith.data.validate import encode_target
from tunesmith.errors import ConfigError
from tunesmith.tabular import TabularFineTuner
from tunesmith.tabular.bagging import average_boosters, bag_lightgbm, fold_indices
from tunesmith.tabular.boosting import keep_trees, lgb_dataset, lgb_params
from tunesmith.tabular.settings import TabularConfig
from tunesmith.train.callbacks import Callback, StopTraining, TrainState

lgb = pytest.importorskip("lightgbm")

FAST = {"n_estimators": 120, "early_stopping_rounds": 15, "epochs": 10, "progress": False, "runs_dir": ""}


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    logit = 2.0 * x1 - x2 + np.where(color == "red", 1.5, -0.5)
    label = np.where(logit + rng.normal(size=n) > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label})


@pytest.mark.parametrize("value", [-1, 1, 51])
def test_bagging_folds_is_validated(value: int) -> None:
    with pytest.raises(ConfigError) as info:
        TabularFineTuner(bagging_folds=value)
    assert info.value.key == "bagging_folds"
    assert TabularConfig().bagging_folds == 8  # the documented default
    assert TabularFineTuner(bagging_folds=0).bagging_folds == 0


def test_folds_cover_every_row_once_and_keep_the_classes() -> None:
    y = np.array([0] * 30 + [1] * 10)
    folds = fold_indices("binary", y, 5, seed=0)
    held = np.concatenate([b for _, b in folds])
    assert sorted(held.tolist()) == list(range(40))
    for train, valid in folds:
        assert not set(train) & set(valid) and len(train) + len(valid) == 40
        assert y[valid].sum() == 2  # stratified: each fold holds a fifth of the rare class
    assert len(fold_indices("regression", np.arange(3.0), 8, seed=0)) == 3  # never more folds than rows


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_averaged_booster_is_the_mean_of_its_boosters(task: str) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = {
        "binary": (X[:, 0] > 0).astype(float),
        "multiclass": np.digitize(X[:, 0], [-0.5, 0.5]).astype(float),
        "regression": X[:, 0] * 3 + X[:, 1],
    }[task]
    params = lgb_params(task, 3, learning_rate=0.1, num_leaves=7, min_child_samples=5, seed=0)
    init = lgb.train(params, lgb.Dataset(X, y), 5)
    boosters = [
        keep_trees(lgb.train({**params, "seed": i}, lgb.Dataset(X[i::3], y[i::3]), 10 + 5 * i, init_model=init))
        for i in range(3)
    ]
    averaged = average_boosters(boosters, first=5)
    per = boosters[0].num_model_per_iteration()
    assert averaged.current_iteration() == 5 + 10 + 15 + 20
    want = np.mean([b.predict(X, raw_score=True) for b in boosters], axis=0)
    np.testing.assert_allclose(averaged.predict(X, raw_score=True), want, rtol=1e-10, atol=1e-10)
    # the shared trees are kept once, as they were
    assert averaged.dump_model()["tree_info"][: 5 * per] == init.dump_model()["tree_info"]
    assert lgb.Booster(model_str=averaged.model_to_string()).model_to_string() == averaged.model_to_string()


def test_bagged_fit_is_the_mean_of_boosters_trained_on_the_folds() -> None:
    df = _rows(400, 0)
    est = TabularFineTuner(model="lightgbm", bagging_folds=4, **FAST).fit(df, target="label")
    info = est.training_info_["lightgbm"]
    rounds = info["new_trees"]
    assert info["bagging_folds"] == 4 and info["trees"] == 4 * rounds == est.booster_.current_iteration()
    assert "refit_full_rounds" not in info  # every row already trained three of the four boosters

    # the same boosters, trained one by one on the same folds of the same rows
    cfg = est._config()
    pre, schema = est.preprocessor_, est.schema_
    train, valid = df.iloc[: len(df) - 40], df.iloc[len(df) - 40 :]
    parts = [(pre.encode(p), encode_target(p["label"], schema)) for p in (train, valid)]
    booster, again, oof = bag_lightgbm(cfg, "binary", 2, pre.raw_categorical_indices, parts[0], parts[1])
    features = pre.encode(df)
    y = encode_target(df["label"], schema)
    full = lgb_dataset(features, y, pre.raw_categorical_indices)
    params = lgb_params(
        "binary", 2, learning_rate=cfg.learning_rate, num_leaves=cfg.num_leaves,
        min_child_samples=cfg.min_child_samples, seed=cfg.seed,
    )  # fmt: skip
    expected = np.zeros(len(y))
    raws = []
    for fold_rows, held in fold_indices("binary", y, 4, cfg.seed):
        one = lgb.train(params, full.subset(sorted(fold_rows)), again["new_trees"])
        expected[held] = one.predict(features.raw[held])
        raws.append(one.predict(features.raw, raw_score=True))
    np.testing.assert_allclose(booster.predict(features.raw, raw_score=True), np.mean(raws, axis=0), atol=1e-9)
    # validation rows are scored by the booster that held them out, never by the average
    np.testing.assert_allclose(oof, expected[len(train) :], atol=1e-12)
    assert not np.allclose(oof, booster.predict(features.raw[len(train) :]))


def test_bagged_model_saves_loads_and_predicts_identically(tmp_path) -> None:
    df, test = _rows(500, 1), _rows(200, 2)
    est = TabularFineTuner(bagging_folds=3, **FAST).fit(df, target="label", test_set=test)
    assert est.candidates_["lightgbm"]["test"]["accuracy"] >= 0.8
    folder = est.save(tmp_path / "m")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "lightgbm.txt", "tunesmith.json", "card.md"}
    loaded = TabularFineTuner.load(folder)
    assert loaded.bagging_folds == 3
    np.testing.assert_array_equal(loaded.predict_proba(test), est.predict_proba(test))
    np.testing.assert_array_equal(loaded.predict(test), est.predict(test))
    assert loaded.booster_.current_iteration() == est.training_info_["lightgbm"]["trees"]


def test_bagging_multiclass_and_regression_beat_one_booster_or_match() -> None:
    wine = load_wine(as_frame=True).frame
    m = TabularFineTuner(model="lightgbm", bagging_folds=4, **FAST).fit(
        wine.iloc[::2], target="target", test_set=wine.iloc[1::2]
    )
    assert m.booster_.num_model_per_iteration() == 3 and m.test_metrics_["accuracy"] >= 0.9
    assert m.predict_proba(wine.iloc[1::2]).sum(axis=1) == pytest.approx(1.0)
    diabetes = load_diabetes(as_frame=True).frame
    r = TabularFineTuner(model="lightgbm", bagging_folds=4, **FAST).fit(
        diabetes.iloc[:350], target="target", test_set=diabetes.iloc[350:]
    )
    assert r.test_metrics_["r2"] > 0.3


class _Steps(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.seen: list[tuple[int, dict]] = []
        self.starts = self.ends = 0
        self.stop_at = stop_at

    def on_fit_start(self, state: TrainState) -> None:
        self.starts += 1

    def on_fit_end(self, state: TrainState) -> None:
        self.ends += 1

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        self.seen.append((state.epoch, dict(metrics)))
        if self.stop_at is not None and state.epoch == self.stop_at:
            raise StopTraining("enough")


def test_callbacks_see_the_mean_fold_loss_and_stop_every_fold() -> None:
    df = _rows(400, 3)
    seen = _Steps()
    m = TabularFineTuner(model="lightgbm", bagging_folds=3, rounds_per_step=5, **FAST).fit(
        df, target="label", callbacks=[seen]
    )
    assert seen.starts == seen.ends == 1
    assert [e for e, _ in seen.seen] == list(range(len(seen.seen)))
    assert [x["round"] for _, x in seen.seen[:3]] == [5, 10, 15]
    assert all(x["valid_loss"] > 0 for _, x in seen.seen)
    assert m.training_info_["lightgbm"]["steps"] == [x for _, x in seen.seen]

    stop = _Steps(stop_at=2)
    s = TabularFineTuner(model="lightgbm", bagging_folds=3, rounds_per_step=10, **FAST).fit(
        df, target="label", callbacks=[stop]
    )
    info = s.training_info_["lightgbm"]
    assert info["stop_reason"] == "enough" and len(info["steps"]) == 3 and info["new_trees"] <= 30
    assert s.booster_.current_iteration() == 3 * info["new_trees"]


def test_a_bagged_model_continues_and_refits_on_top_of_its_average(tmp_path) -> None:
    old, new, test = _rows(400, 4), _rows(300, 5), _rows(300, 6)
    base = TabularFineTuner(model="lightgbm", bagging_folds=3, **FAST).fit(old, target="label")
    n = base.booster_.current_iteration()
    cont = TabularFineTuner(init_model=str(base.save(tmp_path / "b")), model="lightgbm", bagging_folds=3, **FAST)
    cont.fit(new)
    info = cont.training_info_["lightgbm"]
    assert info["init_trees"] == n and cont.booster_.current_iteration() == n + 3 * info["new_trees"]
    assert cont.booster_.dump_model()["tree_info"][:n] == base.booster_.dump_model()["tree_info"]
    assert cont.score(test) >= base.score(test) - 0.02
    # a refit grows one set of new trees on the averaged booster (early-stopped on held-out new rows)
    refit = base.refit(new, replay=old)
    assert refit.booster_.current_iteration() > n
    assert refit.booster_.dump_model()["tree_info"][:n] == base.booster_.dump_model()["tree_info"]
    assert refit.score(test) >= 0.7


def test_auto_compares_classifiers_on_log_loss_unless_told_accuracy() -> None:
    from tunesmith.tabular.refitting import joint_key, selection_key

    sharp = {"accuracy": 0.90, "log_loss": 0.25}
    lucky = {"accuracy": 0.91, "log_loss": 0.35}  # a few more rows right, every probability worse
    assert selection_key("binary", sharp) > selection_key("binary", lucky)
    assert selection_key("binary", sharp, "accuracy") < selection_key("binary", lucky, "accuracy")
    assert joint_key("binary", [sharp, sharp]) > joint_key("binary", [lucky, lucky])
    assert selection_key("regression", {"mae": 1.0}, "accuracy") == selection_key("regression", {"mae": 1.0})
    with pytest.raises(ConfigError) as info:
        TabularFineTuner(selection_metric="f1")
    assert info.value.key == "selection_metric"
    df = _rows(300, 7)
    for by in ("log_loss", "accuracy"):
        m = TabularFineTuner(selection_metric=by, bagging_folds=2, **FAST).fit(df, target="label")
        assert m.chosen_ == max(m.candidates_, key=lambda n: selection_key("binary", m.candidates_[n]["valid"], by))


def test_a_model_saved_before_bagging_loads_with_the_settings_it_was_fit_with(tmp_path) -> None:
    import json

    df = _rows(300, 8)
    folder = TabularFineTuner(model="lightgbm", bagging_folds=0, **FAST).fit(df, target="label").save(tmp_path / "m")
    meta = json.loads((folder / "tunesmith.json").read_text())
    for key in ("bagging_folds", "selection_metric"):
        del meta["config"][key]
    (folder / "tunesmith.json").write_text(json.dumps(meta))
    old = TabularFineTuner.load(folder)
    assert old.bagging_folds == 0 and old.selection_metric == "accuracy"
    new = TabularFineTuner(model="lightgbm", **FAST).fit(df, target="label").save(tmp_path / "new")
    assert TabularFineTuner.load(new).bagging_folds == 8
