"""``FineTuner.refit``: continue from the current weights, keep the classes, never touch the champion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tunesmith
from tests.conftest import make_reviews
from tunesmith import FineTuner
from tunesmith.data.io import file_sha256
from tunesmith.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> FineTuner:
    runs = tmp_path_factory.mktemp("runs")
    params = {"backbone": "tiny-text", "epochs": 3, "batch_size": 8, "lr": 3e-3, "max_length": 32,
              "progress": False, "runs_dir": str(runs), "num_threads": 1}  # fmt: skip
    return FineTuner(**params).fit(make_reviews(64, seed=0), target="label")


def _distance(a: FineTuner, b: FineTuner) -> float:
    sa, sb = a.model_.state_dict(), b.model_.state_dict()
    return float(sum(((sa[k].float() - sb[k].float()) ** 2).sum() for k in sa if sa[k].is_floating_point()))


def test_refit_starts_from_the_current_weights_and_leaves_them_alone(champion: FineTuner) -> None:
    texts = make_reviews(20, seed=5)["text"].tolist()
    before = champion.predict_proba(texts)
    state = {k: v.clone() for k, v in champion.model_.state_dict().items()}
    # a learning rate too small to move anything: the challenger must be the champion's weights
    still = champion.refit(make_reviews(40, seed=1), method="naive", lr=1e-12)
    assert still is not champion
    np.testing.assert_allclose(still.predict_proba(texts), before, atol=1e-5)
    moved = champion.refit(make_reviews(40, seed=1), method="naive", lr=1e-2, epochs=2)
    assert _distance(moved, champion) > 1e-3
    np.testing.assert_array_equal(champion.predict_proba(texts), before)
    assert all(torch.equal(v, champion.model_.state_dict()[k]) for k, v in state.items())


def test_auto_replays_interpolates_and_records_it(champion: FineTuner, tmp_path) -> None:
    new, old = make_reviews(60, seed=2), make_reviews(120, seed=3)
    ch = champion.refit(new, replay=old, target="label")
    info = ch.refit_info_
    assert info["plan"] == {"method": "auto", "replay": True, "replay_ratio": 1.0, "l2sp_weight": 0.01,
                            "lora": False, "wise_ft": True}  # fmt: skip
    assert info["rows"] == {"new_train": 51, "new_valid": 9, "replay_train": 51, "old_valid": 9, "train": 102}
    assert info["alpha"] in (0.25, 0.5, 0.75, 1.0) and len(info["alpha_trials"]) == 4
    assert info["epochs"] == 1 and info["train_seconds"] > 0 and info["data"]["replay_sha256"]
    # the challenger's settings stay the model's own; the refit's are in refit_info_
    assert ch.get_params()["epochs"] == ch.config_.epochs == 3 and info["lr"] == 3e-3
    assert ch.score(new, target="label") >= 0.5
    assert json.loads((ch.run_dir_ / "refit.json").read_text())["rows"] == info["rows"]
    back = tunesmith.load(ch.save(tmp_path / "challenger"))
    assert back.refit_info_["alpha"] == info["alpha"]
    np.testing.assert_allclose(back.predict_proba(new), ch.predict_proba(new), atol=1e-6)
    grand = back.refit(make_reviews(40, seed=4), method="naive")
    assert grand.refit_info_["parent"]["model_version"] is not None
    # a file is named, as a fit names it, without the folder it lay in on this machine
    make_reviews(30, seed=4).to_csv(tmp_path / "new.csv", index=False)
    from_file = champion.refit(tmp_path / "new.csv", method="naive").refit_info_["data"]
    assert from_file["new_file"] == "new.csv" and from_file["new_sha256"] == file_sha256(tmp_path / "new.csv")


def test_l2sp_keeps_the_weights_near_the_champion(champion: FineTuner) -> None:
    new = make_reviews(60, seed=6)
    free = champion.refit(new, method="naive", lr=1e-2, epochs=2)
    held = champion.refit(new, method="l2sp", penalty_weight=50.0, lr=1e-2, epochs=2)
    assert _distance(held, champion) < 0.2 * _distance(free, champion)


def test_lora_on_the_current_model_merges_into_a_full_model(champion: FineTuner, tmp_path) -> None:
    new = make_reviews(40, seed=7)
    ch = champion.refit(new, method="lora", lr=1e-2)
    assert ch.config_.strategy == "full" and ch.get_params()["strategy"] == "full"
    assert not hasattr(ch.model_.backbone.model, "merge_and_unload")
    back = tunesmith.load(ch.save(tmp_path / "lora"))
    np.testing.assert_allclose(back.predict_proba(new), ch.predict_proba(new), atol=1e-5)


def test_one_class_of_new_rows_keeps_every_class(champion: FineTuner) -> None:
    new = make_reviews(40, seed=8)
    only_pos = new[new["label"] == "pos"]
    ch = champion.refit(only_pos, method="naive")
    assert list(ch.classes_) == list(champion.classes_) and ch.predict_proba(new).shape[1] == 2


def test_bad_new_data_gets_a_clear_error(champion: FineTuner) -> None:
    bad = make_reviews(20, seed=9)
    bad.loc[3, "label"] = "mixed"
    with pytest.raises(DataError, match="'mixed' the model never saw") as err:
        champion.refit(bad)
    assert err.value.row == 4 and "fit a new model" in str(err.value)
    with pytest.raises(DataError, match="the new data has no rows"):
        champion.refit(bad.iloc[:0])
    with pytest.raises(DataError, match=r"lacks column\(s\) 'text'"):
        champion.refit(bad.rename(columns={"text": "review"}))
    with pytest.raises(DataError, match="replay data"):
        champion.refit(make_reviews(20), replay=bad)
    with pytest.raises(ConfigError, match="replay_rate"):
        champion.refit(make_reviews(20), replay_rate=2)


def test_lora_on_a_head_only_model_is_refused(tmp_path) -> None:
    params = {"backbone": "tiny-text", "epochs": 1, "batch_size": 8, "max_length": 32, "progress": False,
              "runs_dir": "", "num_threads": 1, "strategy": "head_only"}  # fmt: skip
    head = FineTuner(**params).fit(make_reviews(40), target="label")
    with pytest.raises(ConfigError, match="head_only"):
        head.refit(make_reviews(20, seed=1), method="lora")
    assert head.refit(make_reviews(30, seed=1)).config_.strategy == "head_only"


def test_regression_keeps_the_target_scale(tmp_path) -> None:
    rng = np.random.default_rng(0)
    df = make_reviews(60)
    df["score"] = np.where(df["label"] == "pos", 80.0, 20.0) + rng.normal(0, 2, len(df))
    params = {"backbone": "tiny-text", "epochs": 2, "batch_size": 8, "lr": 3e-3, "max_length": 32,
              "progress": False, "runs_dir": "", "num_threads": 1}  # fmt: skip
    reg = FineTuner(**params).fit(df.drop(columns=["label"]), target="score")
    new = df.drop(columns=["label"]).sample(30, random_state=1)
    new["score"] += 1000.0  # a new period far from the old scale
    ch = reg.refit(new, method="naive", lr=1e-12)
    assert ch.target_scaling_ == reg.target_scaling_
    np.testing.assert_allclose(ch.predict(df), reg.predict(df), atol=1e-3)
    # rows without a score neither count nor turn WiSE-FT's held-out error into NaN
    gaps = new.assign(score=[np.nan] * 5 + new["score"].tolist()[5:])
    info = reg.refit(gaps, method="wise", lr=1e-12).refit_info_
    assert info["rows"]["new_train"] + info["rows"]["new_valid"] == 25
    assert info["alpha_trials"] and all(np.isfinite(t["mean"]) for t in info["alpha_trials"])
    with pytest.raises(DataError, match="every row of the new data has a missing label"):
        reg.refit(new.assign(score=np.nan))
