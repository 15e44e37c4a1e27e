"""Refitting a fitted tabular model on new rows: self unchanged, old trees kept, replay against forgetting."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tunesmith.errors import ConfigError, DataError
from tunesmith.estimators.base import NotSupportedError
from tunesmith.runs.fingerprint import model_version
from tunesmith.tabular import TabularFineTuner
from tunesmith.tabular.refitting import joint_key, model_fingerprint

FAST = {
    "n_estimators": 200,
    "early_stopping_rounds": 20,
    "min_child_samples": 5,
    "num_leaves": 8,
    "epochs": 30,
    "batch_size": 32,
    "hidden": (32,),
    "lr": 1e-2,
    "progress": False,
    "runs_dir": "",
}


def _period(n: int, seed: int, *, new: bool) -> pd.DataFrame:
    """A toy stream: the old period lives at x2 < 0 with label x1 > 0; in the new one (x2 > 0) the relation flips.

    A model that learns the new rows alone, where x2 never varies across 0, flips the old
    region too: forgetting. Old rows replayed beside the new ones teach the trees where
    each relation holds.
    """
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.uniform(0, 2, size=n) if new else rng.uniform(-2, 0, size=n)
    yes = (x1 < 0) if new else (x1 > 0)
    yes = np.where(rng.random(n) < 0.05, ~yes, yes)
    noise = rng.choice(["p", "q", "r"], size=n)
    return pd.DataFrame({"x1": x1, "x2": x2, "noise": noise, "label": np.where(yes, "yes", "no")})


@pytest.fixture(scope="module")
def stream() -> dict[str, pd.DataFrame]:
    return {
        "old": _period(200, 0, new=False),
        "old_test": _period(200, 1, new=False),
        "new": _period(120, 2, new=True),
        "new_test": _period(200, 3, new=True),
    }


@pytest.fixture(scope="module")
def both(stream: dict[str, pd.DataFrame]) -> TabularFineTuner:
    """LightGBM and the network, fit on the old period (fit keeps the better; both are held)."""
    return TabularFineTuner(**FAST).fit(stream["old"], target="label")


@pytest.fixture(scope="module")
def trees(stream: dict[str, pd.DataFrame]) -> TabularFineTuner:
    return TabularFineTuner(model="lightgbm", **FAST).fit(stream["old"], target="label")


def _tree_text(booster, n: int | None = None) -> str:
    """The trees of a LightGBM model text (its header names the ranges of the data it last saw)."""
    text = booster.model_to_string(num_iteration=n)
    return text[text.index("Tree=0") : text.index("end of trees")]


def test_refit_leaves_self_unchanged_and_keeps_the_old_trees(
    both: TabularFineTuner, stream: dict[str, pd.DataFrame]
) -> None:
    test = stream["new_test"]
    before = both.predict_proba(test).tobytes()
    trees_before = both.booster_.model_to_string()
    assert both.net_ is not None
    weights_before = {k: v.clone() for k, v in both.net_.state_dict().items()}
    fingerprint = model_fingerprint(both)

    new = both.refit(stream["new"], replay=stream["old"], model="auto")

    assert both.predict_proba(test).tobytes() == before
    assert both.booster_.model_to_string() == trees_before
    assert all(v.equal(weights_before[k]) for k, v in both.net_.state_dict().items())
    assert model_fingerprint(both) == fingerprint
    assert both.refit_info_ is None
    # the refit grew new trees on top of the old ones, which are kept as they were
    old_n = both.booster_.current_iteration()
    assert new.booster_.current_iteration() > old_n
    assert _tree_text(new.booster_, old_n) == _tree_text(both.booster_)
    assert new.booster_.dump_model()["tree_info"][:old_n] == both.booster_.dump_model()["tree_info"]
    # every part was refit and the candidate best on held-out new and old rows together serves
    info = new.refit_info_
    assert info is not None and info["trained"] == ["lightgbm", "neural"]
    assert set(new.candidates_) == {"lightgbm", "neural", "ensemble"}
    assert all(set(c) == {"valid", "old_valid"} for c in new.candidates_.values())
    assert new.chosen_ == max(
        new.candidates_,
        key=lambda n: joint_key("binary", [new.candidates_[n]["valid"], new.candidates_[n]["old_valid"]]),
    )
    assert info["plan"]["replay"] and info["plan"]["wise_ft"] and info["plan"]["l2sp_weight"] > 0
    assert info["rows"]["replay_train"] == info["rows"]["new_train"] > 0 and info["rows"]["old_valid"] > 0
    assert set(info["alphas"]) == {"lightgbm", "neural"} and info["alpha"] in (0.25, 0.5, 0.75, 1.0)
    assert {t["model"] for t in info["alpha_trials"]} == {"lightgbm", "neural"}
    assert all(len(t["scores"]) == 2 for t in info["alpha_trials"])
    assert info["parent"]["fingerprint"] == fingerprint and info["parent"]["model_version"] is None
    assert 0 < info["train_seconds"] <= info["seconds"]
    assert info["budget"]["epochs"] == FAST["epochs"] // 2 and info["budget"]["rounds"] == FAST["n_estimators"] // 2
    json.dumps(info)  # JSON as it is


def test_refit_on_a_changed_relation_learns_it_and_replay_forgets_less(
    trees: TabularFineTuner, stream: dict[str, pd.DataFrame]
) -> None:
    old_test, new_test = stream["old_test"], stream["new_test"]
    base_old, base_new = trees.score(old_test), trees.score(new_test)
    replayed = trees.refit(stream["new"], replay=stream["old"])
    naive = trees.refit(stream["new"], method="naive")
    assert replayed.score(new_test) >= base_new + 0.3
    assert naive.score(new_test) >= base_new + 0.3
    # new rows alone flip the old region too; replayed old rows keep it
    assert base_old - naive.score(old_test) >= 0.15
    assert base_old - replayed.score(old_test) <= base_old - naive.score(old_test) - 0.15
    assert naive.refit_info_["rows"]["replay_train"] == 0 and naive.refit_info_["alpha"] is None


def test_network_refit_learns_the_new_relation_and_replay_forgets_less(
    stream: dict[str, pd.DataFrame],
) -> None:
    base = TabularFineTuner(model="neural", **FAST).fit(stream["old"], target="label")
    old_test, new_test = stream["old_test"], stream["new_test"]
    auto = base.refit(stream["new"], replay=stream["old"])
    naive = base.refit(stream["new"], method="naive")
    assert auto.score(new_test) >= base.score(new_test) + 0.3
    assert auto.score(old_test) >= naive.score(old_test) + 0.05
    assert auto.booster_ is None and auto.refit_info_["trained"] == ["neural"]
    assert auto.refit_info_["alpha"] == auto.refit_info_["alphas"]["neural"]
    assert auto.preprocessor_ is base.preprocessor_ and auto.net_ is not base.net_


def test_regression_refit_keeps_the_target_scaling_and_follows_a_shift() -> None:
    def rows(n: int, seed: int, shift: float) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 2))
        return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": 3 * x[:, 0] - x[:, 1] + shift})

    base = TabularFineTuner(model="ensemble", **FAST).fit(rows(200, 0, 0.0), target="y")
    new, test = rows(120, 1, 4.0), rows(100, 2, 4.0)
    out = base.refit(new)  # no old rows: L2-SP and WiSE-FT judged on the new rows alone
    assert out.chosen_ == "ensemble" and out.target_scaling_ == base.target_scaling_
    assert base.evaluate(test)["mae"] > 3.0 and out.evaluate(test)["mae"] < base.evaluate(test)["mae"] - 2.0
    # held-out scores are minus the MAE, one per held-out period
    trials = out.refit_info_["alpha_trials"]
    assert trials and all(len(t["scores"]) == 1 and t["scores"][0] <= 0 for t in trials)


def test_refit_refuses_a_label_the_model_never_saw(trees: TabularFineTuner, stream: dict[str, pd.DataFrame]) -> None:
    new = stream["new"].copy()
    new.loc[5, "label"] = "maybe"
    with pytest.raises(DataError, match="maybe") as info:
        trees.refit(new)
    assert info.value.column == "label" and info.value.row == 6
    assert "fit a new model" in (info.value.hint or "")
    with pytest.raises(DataError, match="replay data.*maybe"):
        trees.refit(stream["new"], replay=new)


def test_refit_refuses_a_missing_column_and_empty_data(
    trees: TabularFineTuner, stream: dict[str, pd.DataFrame]
) -> None:
    with pytest.raises(DataError, match="'x2'") as info:
        trees.refit(stream["new"].drop(columns=["x2"]))
    assert info.value.column == "x2"
    with pytest.raises(DataError, match="'label'"):
        trees.refit(stream["new"].drop(columns=["label"]))
    with pytest.raises(DataError, match="no rows"):
        trees.refit(stream["new"].iloc[:0])
    with pytest.raises(DataError, match="replay data has no rows"):
        trees.refit(stream["new"], replay=stream["old"].iloc[:0])
    with pytest.raises(DataError, match="missing label"):
        trees.refit(stream["new"].assign(label=None))
    with pytest.raises(DataError, match="one labeled row"):
        trees.refit(stream["new"].iloc[:1])


def test_refit_refuses_lora_and_bad_settings(trees: TabularFineTuner, stream: dict[str, pd.DataFrame]) -> None:
    with pytest.raises(NotSupportedError, match="lora") as info:
        trees.refit(stream["new"], method="lora")
    assert "method='auto'" in (info.value.hint or "")
    with pytest.raises(ConfigError) as bad:
        trees.refit(stream["new"], replay_ratio=-1)
    assert bad.value.key == "replay_ratio"
    with pytest.raises(ConfigError) as unknown:
        trees.refit(stream["new"], epoch=3)
    assert unknown.value.key == "epoch"
    with pytest.raises(ConfigError, match="neural part") as missing:
        trees.refit(stream["new"], model="neural")
    assert missing.value.key == "model"


def test_refit_takes_labels_as_y_or_under_another_name(
    trees: TabularFineTuner, stream: dict[str, pd.DataFrame]
) -> None:
    new = stream["new"]
    plain = trees.refit(new).predict_proba(stream["new_test"])
    by_y = trees.refit(new.drop(columns=["label"]), new["label"].to_numpy())
    renamed = trees.refit(new.rename(columns={"label": "outcome"}), target="outcome")
    np.testing.assert_array_equal(by_y.predict_proba(stream["new_test"]), plain)
    np.testing.assert_array_equal(renamed.predict_proba(stream["new_test"]), plain)


def test_save_and_load_keep_the_refit_record_and_predictions(
    trees: TabularFineTuner, stream: dict[str, pd.DataFrame], tmp_path
) -> None:
    parent = TabularFineTuner.load(trees.save(tmp_path / "champion"))
    new = parent.refit(stream["new"], replay=stream["old"])
    assert new.refit_info_["parent"]["model_version"] is not None
    assert new.refit_info_["parent"]["fingerprint"] == model_fingerprint(trees)
    folder = new.save(tmp_path / "challenger")
    # the trees are part of the version: a LightGBM refit is a new version of the model
    assert model_version(folder) != new.refit_info_["parent"]["model_version"]
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["refit"]["plan"] == new.refit_info_["plan"]
    loaded = TabularFineTuner.load(folder)
    assert loaded.refit_info_ == json.loads(json.dumps(new.refit_info_))
    assert model_fingerprint(loaded) == new.refit_info_["fingerprint"]
    np.testing.assert_array_equal(loaded.predict_proba(stream["new_test"]), new.predict_proba(stream["new_test"]))
    # a model fit from scratch carries no refit record, saved or not
    plain = TabularFineTuner.load(trees.save(tmp_path / "plain"))
    assert plain.refit_info_ is None and "refit" not in json.loads((tmp_path / "plain" / "tunesmith.json").read_text())
    # and a refitted model fit again is no longer a refit
    assert new.fit(stream["new"], target="label").refit_info_ is None
