"""Personalizer.refit: only users with new rows change, into a new store; the old one is never touched."""

from __future__ import annotations

import copy
import gc
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.estimators.base import NotSupportedError
from tunesmith.personalize.personalizer import Personalizer
from tunesmith.personalize.refitting import refit_folder


def ratings(users: dict[str, bool], rows: int, seed: int, start: int = 0) -> pd.DataFrame:
    """Rows of each user at times ``start..``: a contrarian (True) dislikes the films the rest like."""
    rng = np.random.default_rng(seed)
    out = []
    for user, contrarian in users.items():
        for t in range(start, start + rows):
            good = bool(rng.random() < 0.5)
            text = ("a good great film" if good else "a bad awful film") + str(rng.choice([" indeed", " really", ""]))
            out.append({"user": user, "t": t, "text": text, "label": "yes" if good != contrarian else "no"})
    return pd.DataFrame(out)


OLD_USERS = {"u0": True, "u1": False, "u2": False, "u3": True, "u4": False}


@pytest.fixture(scope="module")
def shared_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tunesmith import FineTuner

    folder = tmp_path_factory.mktemp("shared") / "model"
    params = {
        "backbone": "tiny-text", "epochs": 4, "batch_size": 16, "lr": 3e-3, "max_length": 16,
        "progress": False, "runs_dir": "", "num_threads": 1, "baselines": False,
    }  # fmt: skip
    mostly = ratings({f"s{i}": i % 4 == 0 for i in range(16)}, 24, seed=0)
    FineTuner(**params).fit(mostly[["text", "label"]], target="label").save(folder)
    return folder


@pytest.fixture(scope="module")
def old_data() -> pd.DataFrame:
    return ratings(OLD_USERS, 20, seed=1)


@pytest.fixture(scope="module")
def fitted(shared_model: Path, old_data: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Personalizer:
    store = tmp_path_factory.mktemp("stores") / "store"
    p = Personalizer(shared_model, store, user_column="user", time_column="t", steps=150, progress=False)
    return p.fit(old_data)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def tensor_bytes(p: Personalizer, key: str) -> dict[str, bytes]:
    return {name: t.numpy().tobytes() for name, t in p.store.load(key).items()}


def test_refit_changes_only_users_with_new_rows_and_leaves_self_as_it_was(fitted, old_data):
    # u1 turns contrarian; u9 is new with enough rows, u8 new with too few; u2 has too few new rows.
    new = pd.concat(
        [
            ratings({"u1": True}, 20, seed=2, start=20),
            ratings({"u9": True}, 20, seed=3, start=20),
            ratings({"u8": True}, 3, seed=4, start=20),
            ratings({"u2": False}, 3, seed=5, start=20),
        ],
        ignore_index=True,
    )
    folder = Path(fitted.store.folder)
    files, index = snapshot(folder), copy.deepcopy(fitted.store._index)
    siblings = sorted(folder.parent.iterdir())
    probe = ratings({u: False for u in OLD_USERS}, 4, seed=6, start=40)
    before = fitted.predict_proba(probe)

    child = fitted.refit(new, replay=old_data, method="l2sp")

    # self: its store on disk and in memory, its answers, and no refit record
    assert snapshot(folder) == files and fitted.store._index == index
    np.testing.assert_array_equal(fitted.predict_proba(probe), before)
    assert not hasattr(fitted, "refit_info_")
    # the new store: in a temporary folder (nothing written beside this one), read back through every check
    scratch = Path(child.store.folder).parent
    assert scratch != folder.parent and sorted(folder.parent.iterdir()) == siblings and child.is_fitted
    users = child.refit_info_["users"]
    assert users == {"retrained": ["u1"], "new": ["u9"], "kept": ["u2"], "shared": ["u8"], "unchanged": 4}
    for user in ("u0", "u2", "u3", "u4"):
        key = f"user:{user}"
        assert tensor_bytes(child, key) == tensor_bytes(fitted, key), user
        assert (child.store.folder / child.store.info(key)["file"]).read_bytes() == files[
            fitted.store.info(key)["file"]
        ]
    assert tensor_bytes(child, "user:u1")["B"] != tensor_bytes(fitted, "user:u1")["B"]
    assert "user:u9" in child.store and "user:u9" not in fitted.store
    assert child.store.info("user:u9")["rows_train"] == 16  # as fit splits 20 rows: the latest 4 validate
    assert "user:u8" not in child.store and child.route("u8").level == "shared"
    # u1's taste changed: the refitted adapter follows it on u1's later rows, the old one does not
    later = ratings({"u1": True}, 20, seed=7, start=40)
    assert child.score(later) >= fitted.score(later) + 0.4
    # what was done is recorded
    info = child.refit_info_
    assert info["plan"]["l2sp_weight"] > 0 and not info["plan"]["replay"] and not info["plan"]["wise_ft"]
    assert info["rows"]["new_train"] == 16 and info["rows"]["new_valid"] == 4 and info["rows"]["old_valid"] > 0
    assert set(info["held_out"]) == {"new", "old"}
    assert info["held_out"]["new"]["refitted"]["log_loss"] < info["held_out"]["new"]["current"]["log_loss"]
    assert len(info["data"]["new_sha256"]) == 64 and len(info["data"]["replay_sha256"]) == 64
    assert info["parent"].startswith("sha256:") and info["seconds"] >= info["train_seconds"] > 0
    assert child.store.info("user:u1")["refit"]["rows"]["new_valid"] == 4
    # the temporary store goes with the Personalizer that holds it
    del child
    gc.collect()
    assert not scratch.exists()


def test_auto_refit_replays_old_rows_interpolates_and_round_trips(fitted, old_data, shared_model, tmp_path):
    new = ratings({"u0": True, "u3": True}, 15, seed=8, start=20)
    child = fitted.refit(new, replay=old_data, store=tmp_path / "next", seed=1)
    info = child.refit_info_
    assert Path(child.store.folder) == tmp_path / "next"
    assert info["plan"]["replay"] and info["plan"]["wise_ft"] and info["replay"]["replayed"] > 0
    assert info["rows"]["replay_train"] == info["replay"]["replayed"]
    assert sum(info["alphas_chosen"].values()) == 2 and info["users"]["retrained"] == ["u0", "u3"]
    trials = child.store.info("user:u0")["refit"]["alpha_trials"]
    assert [t["alpha"] for t in trials] == [0.25, 0.5, 0.75, 1.0] and len(trials[0]["scores"]) == 2
    # saved and loaded: the record and the answers come back
    saved = child.save(tmp_path / "saved")
    again = Personalizer.load(saved, base=shared_model)
    assert again.refit_info_ == info
    probe = ratings({"u0": True, "u1": False, "u3": True}, 4, seed=9, start=40)
    np.testing.assert_allclose(again.predict_proba(probe), child.predict_proba(probe), atol=1e-6)
    # a fit replaces what the refit recorded
    refitted_again = Personalizer.load(saved, base=shared_model)
    refitted_again.fit(new, users=["u0"])
    assert not hasattr(refitted_again, "refit_info_")
    assert not hasattr(Personalizer.load(saved, base=shared_model), "refit_info_")


def test_bad_new_data_is_refused_and_nothing_is_written(fitted, old_data):
    folder = Path(fitted.store.folder)
    siblings = sorted(p.name for p in folder.parent.iterdir())
    scratches = set(Path(tempfile.gettempdir()).glob("tunesmith-refit-*"))
    new = ratings({"u1": False}, 10, seed=10, start=20)
    with pytest.raises(DataError) as err:
        fitted.refit(new.assign(label=["maybe"] + ["yes"] * 9))
    assert "'maybe'" in str(err.value) and "fit a new model" in str(err.value)
    with pytest.raises(DataError, match="has no rows"):
        fitted.refit(new.iloc[:0])
    with pytest.raises(DataError, match="'user'"):
        fitted.refit(new.drop(columns="user"))
    with pytest.raises(DataError, match="replay data"):
        fitted.refit(new, replay=old_data.assign(label="maybe"))
    with pytest.raises(ConfigError) as cfg:
        fitted.refit(new, penalty_weight=-1)
    assert cfg.value.key == "penalty_weight"
    with pytest.raises(NotSupportedError, match="refit method 'lora'"):
        fitted.refit(new, method="lora")
    with pytest.raises(ArtifactError, match="already exists"):
        fitted.refit(new, store=folder)
    assert sorted(p.name for p in folder.parent.iterdir()) == siblings
    assert set(Path(tempfile.gettempdir()).glob("tunesmith-refit-*")) == scratches


def test_refit_folder_is_the_given_new_one_or_a_temporary_one(tmp_path):
    (tmp_path / "s").mkdir()
    assert refit_folder(tmp_path / "s", tmp_path / "other") == (tmp_path / "other", None)
    with pytest.raises(ArtifactError, match="already exists"):
        refit_folder(tmp_path / "other", tmp_path / "s")
    folder, scratch = refit_folder(tmp_path / "s", None)
    assert scratch is not None and folder == scratch / "s" and not folder.exists() and tmp_path not in folder.parents
    scratch.rmdir()


def test_lora_adapters_continue_and_the_others_stay(shared_model, old_data, tmp_path):
    p = Personalizer(
        shared_model, tmp_path / "store", user_column="user", time_column="t", adapter_kind="lora",
        lora_steps=40, lora_lr=0.1, progress=False,
    )  # fmt: skip
    p.fit(old_data[old_data["user"].isin(["u0", "u1"])])
    child = p.refit(ratings({"u1": True}, 20, seed=11, start=20), epochs=10)
    assert child.refit_info_["users"]["retrained"] == ["u1"] and child.store.info("user:u1")["settings"]["steps"] == 10
    assert tensor_bytes(child, "user:u0") == tensor_bytes(p, "user:u0")
    assert tensor_bytes(child, "user:u1")["B"] != tensor_bytes(p, "user:u1")["B"]
    assert tensor_bytes(child, "user:u1")["A"] == tensor_bytes(p, "user:u1")["A"]  # A stays the fixed projection


def test_segments_with_new_rows_are_refitted_too_and_target_can_be_renamed(shared_model, old_data, tmp_path):
    regions = {"u0": "north", "u1": "north", "u2": "south", "u3": "south", "u4": "south"}

    def with_region(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(region=frame["user"].map(regions)).rename(columns={"label": "liked"})

    p = Personalizer(
        shared_model, tmp_path / "store", user_column="user", segment_column="region", time_column="t",
        steps=60, progress=False,
    )  # fmt: skip
    p.fit(with_region(old_data), target="liked")
    child = p.refit(with_region(ratings({"u1": True}, 20, seed=12, start=20)), target="liked", store=tmp_path / "new")
    info = child.refit_info_
    assert info["users"]["retrained"] == ["u1"] and info["users"]["unchanged"] == 4
    assert info["segments"] == {"retrained": ["north"], "new": [], "kept": [], "shared": [], "unchanged": 1}
    assert tensor_bytes(child, "segment:region=south") == tensor_bytes(p, "segment:region=south")
    assert tensor_bytes(child, "segment:region=north")["B"] != tensor_bytes(p, "segment:region=north")["B"]
