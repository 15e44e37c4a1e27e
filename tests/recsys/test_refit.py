"""Recommender.refit on tiny planted logs: a period of A items, then a period of B items and a new one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tunesmith.errors import ConfigError, DataError
from tunesmith.estimators.base import NotSupportedError
from tunesmith.recsys.recommender import Recommender
from tunesmith.recsys.refitting import model_fingerprint as fingerprint
from tunesmith.runs.fingerprint import model_version

A = [f"a{i}" for i in range(15)]
B = [f"b{i}" for i in range(15)]
USERS = [f"u{i}" for i in range(24)]
FRESH_FANS = USERS[:16]  # the others never meet the new item "fresh"
COLUMNS = ["user_id", "item_id", "timestamp"]
SEQ = {"dim": 16, "layers": 1, "heads": 2, "max_len": 10, "dropout": 0.0}
PARAMS = {
    "bpr": {"model_params": {"factors": 8, "epochs": 20, "lr": 0.05}},
    "ease": {"model_params": {"l2": 10.0}},
    "popularity": {},
    "sasrec": {"seq": SEQ, "pretrain": False, "finetune_settings": {"epochs": 10, "lr": 1e-2, "batch_size": 64}},
}


def periods(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Old: five A items and one B item per user. New: four B items, "fresh" for the first 16
    users, and a user "newbie" never seen before. Later: two more B items per user, unseen in both.
    """
    rng = np.random.default_rng(seed)
    old, new, later = [], [], []
    for k, u in enumerate(USERS):
        a, b = rng.choice(15, 5, replace=False), rng.permutation(15)
        old += [(u, A[i], t) for t, i in enumerate(a)] + [(u, B[b[6 + k % 9]], 5)]
        items = [B[i] for i in b[:4]]
        if u in FRESH_FANS:
            items.insert(int(rng.integers(5)), "fresh")
        new += [(u, item, 100 + t) for t, item in enumerate(items)]
        later += [(u, B[i], 200 + t) for t, i in enumerate(b[4:6])]
    new += [("newbie", B[i], 100 + t) for t, i in enumerate(rng.choice(15, 3, replace=False))]
    new += [("newbie", "fresh", 110)]
    return tuple(pd.DataFrame(rows, columns=COLUMNS) for rows in (old, new, later))  # type: ignore[return-value]


OLD, NEW, LATER = periods()


@pytest.fixture(scope="module")
def fitted() -> dict[str, Recommender]:
    return {kind: Recommender(kind, threads=1, progress=False, **p).fit(OLD) for kind, p in PARAMS.items()}


@pytest.fixture(scope="module")
def refitted(fitted) -> dict[str, Recommender]:
    return {kind: rec.refit(NEW, replay=OLD) for kind, rec in fitted.items()}


def model_fingerprint(rec: Recommender) -> str:
    return fingerprint(rec.model_, rec.users_, rec.items_)


def snapshot(rec: Recommender) -> dict[str, np.ndarray]:
    arrays = {k: np.array(v, copy=True) for k, v in rec.model_.state()[0].items()}
    arrays.update(users=rec.users_.copy(), items=rec.items_.copy())
    arrays.update(indptr=rec.history_indptr_.copy(), indices=rec.history_indices_.copy())
    return arrays


@pytest.mark.parametrize("kind", ["bpr", "sasrec"])
def test_refit_leaves_the_model_it_starts_from_unchanged(fitted, kind):
    rec = fitted[kind]
    before, recs, metrics = snapshot(rec), rec.recommend_batch(users=USERS[:4], k=5), json.dumps(rec.test_metrics_)
    challenger = rec.refit(NEW, replay=OLD)
    after = snapshot(rec)
    assert challenger is not rec and challenger.model_ is not rec.model_
    assert set(after) == set(before)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert rec.recommend_batch(users=USERS[:4], k=5) == recs
    assert json.dumps(rec.test_metrics_) == metrics and not hasattr(rec, "refit_info_")
    with pytest.raises(DataError, match="unknown user 'newbie'"):
        rec.recommend("newbie")


@pytest.mark.parametrize("kind", ["bpr", "sasrec", "ease", "popularity"])
def test_a_new_user_gets_recommendations_and_a_new_item_is_recommended(refitted, kind):
    rec = refitted[kind]
    assert "newbie" in rec.users_ and "fresh" in rec.items_
    assert rec.model_.n_items == len(rec.items_)
    newbie_seen = set(NEW.loc[NEW["user_id"] == "newbie", "item_id"])
    picks = [r["item"] for r in rec.recommend("newbie", k=5)]
    assert len(picks) == 5 and not set(picks) & newbie_seen
    # The users who never met "fresh" in the new period get it among their first five.
    strangers = USERS[len(FRESH_FANS) :]
    found = sum("fresh" in [r["item"] for r in rec.recommend(u, k=5)] for u in strangers)
    assert found >= len(strangers) // 2, found
    rows = rec.refit_info_["rows"]
    assert rows["new_users"] == 1
    assert rows["new_items"] == len(set(NEW["item_id"]) - set(OLD["item_id"])) >= 1
    assert rows["new"] == len(NEW)


def test_the_stored_history_is_old_then_new_and_is_masked(refitted):
    rec = refitted["bpr"]
    code = list(rec.users_).index("u3")
    stored = [rec.items_[c] for c in rec.history_indices_[rec.history_indptr_[code] : rec.history_indptr_[code + 1]]]
    old = OLD.loc[OLD["user_id"] == "u3"].sort_values("timestamp")["item_id"].tolist()
    new = NEW.loc[NEW["user_id"] == "u3"].sort_values("timestamp")["item_id"].tolist()
    assert stored == old + new
    picks = [r["item"] for r in rec.recommend("u3", k=len(rec.items_))]
    assert not set(picks) & set(old + new)
    assert len(picks) == len(rec.items_) - len(set(old + new))


@pytest.mark.parametrize("kind", ["bpr", "sasrec", "popularity"])
def test_the_refit_beats_its_parent_once_the_popular_items_change(fitted, refitted, kind):
    parent, rec = fitted[kind], refitted[kind]
    # A later period of the same users, on items known to both models and seen by neither user.
    assert rec.score(LATER) > parent.score(LATER) + 0.02
    scores = rec.refit_info_["scores"]["new_test"]
    assert scores["refit"] > scores["parent"] + 0.02
    # The challenger's own test metrics are the new log's held-out last positives.
    assert rec.test_metrics_["overall"]["ndcg@10"] == pytest.approx(scores["refit"], abs=1e-6)
    assert rec.split_["strategy"] == "refit_leave_last_out"


def test_trainable_refit_record(refitted, fitted):
    info = refitted["bpr"].refit_info_
    assert info["plan"] == {
        "method": "auto",
        "replay": True,
        "replay_ratio": 1.0,
        "l2sp_weight": 0.01,
        "lora": False,
        "wise_ft": True,
    }
    rows = info["rows"]
    assert rows["replay_train"] == min(rows["new_train"], info["replay"]["sampled_from"]) > 0
    assert rows["train"] == rows["new_train"] + rows["replay_train"]
    assert rows["new_valid"] > 0 and rows["new_test"] > 0 and rows["old_valid"] > 0
    assert info["alpha"] in {t["alpha"] for t in info["alpha_trials"]}
    assert [t["alpha"] for t in info["alpha_trials"]] == [0.25, 0.5, 0.75, 1.0]
    assert all(len(t["scores"]) == 2 for t in info["alpha_trials"])  # new and old held-out
    # the served model's hold-out scores are the chosen trial's (measured once, on that model)
    chosen = next(t for t in info["alpha_trials"] if t["alpha"] == info["alpha"])
    assert chosen["scores"] == [info["scores"]["new_valid"]["refit"], info["scores"]["old_valid"]["refit"]]
    # Fewer epochs than the fit, from the fit's learning rate.
    assert info["epochs"] == 10 and info["lr"] == 0.05 and not info["closed_form"]
    assert 0 < info["train_seconds"] <= info["seconds"]
    # Fitted in memory, never saved: named by its content hash, with no folder version yet.
    assert info["parent"] == {"fingerprint": model_fingerprint(fitted["bpr"]), "model_version": None}
    assert info["fingerprint"] == model_fingerprint(refitted["bpr"]) != info["parent"]["fingerprint"]
    assert len(info["data"]["new_sha256"]) == 64 and len(info["data"]["replay_sha256"]) == 64


def test_closed_form_models_are_solved_again_on_old_and_new(refitted):
    info = refitted["ease"].refit_info_
    assert info["closed_form"] and info["alpha"] is None and info["alpha_trials"] == []
    assert "closed form" in info["note"]
    # Every stored old row went into the solve, not a sample.
    assert info["rows"]["replay_train"] >= len(OLD)


def test_settings_shape_the_refit(fitted):
    rec = fitted["bpr"]
    naive = rec.refit(NEW, method="naive", epochs=2)
    assert naive.refit_info_["alpha"] is None and naive.refit_info_["alpha_trials"] == []
    assert naive.refit_info_["rows"]["replay_train"] == 0 and naive.refit_info_["epochs"] == 2
    assert naive.refit_info_["data"]["replay_sha256"] is None
    half = rec.refit(NEW, replay=OLD, replay_ratio=0.5, epochs=2)
    rows = half.refit_info_["rows"]
    assert rows["replay_train"] == round(0.5 * rows["new_train"])
    with pytest.raises(NotSupportedError, match="refit method 'lora' is not offered for recommender"):
        rec.refit(NEW, method="lora")
    with pytest.raises(ConfigError) as err:
        rec.refit(NEW, replay_ration=2.0)
    assert err.value.key == "replay_ration"
    with pytest.raises(ConfigError, match="not on y"):
        rec.refit(NEW, [1, 2])


def test_bad_new_logs_are_refused_with_what_to_do(fitted):
    rec = fitted["bpr"]
    with pytest.raises(DataError, match="'timestamp'") as err:
        rec.refit(NEW.drop(columns=["timestamp"]))
    assert err.value.column == "timestamp"
    with pytest.raises(DataError, match="no rows"):
        rec.refit(NEW.iloc[:0])
    with pytest.raises(DataError, match="replay data lacks column"):
        rec.refit(NEW, replay=OLD.rename(columns={"item_id": "song"}))
    one_each = NEW.groupby("user_id").head(1)
    with pytest.raises(DataError, match="no user with two positive interactions") as err:
        rec.refit(one_each)
    assert "three or more" in (err.value.hint or "")


@pytest.mark.parametrize("kind", ["bpr", "sasrec"])
def test_save_load_round_trip_keeps_the_record_and_names_the_parent(fitted, kind, tmp_path):
    parent_folder = fitted[kind].save(tmp_path / "parent")
    parent = Recommender.load(parent_folder)
    rec = parent.refit(NEW, replay=OLD, epochs=3)
    # The same model after a save and a load: the same fingerprint, and now a folder version too.
    expected = {"fingerprint": model_fingerprint(fitted[kind]), "model_version": model_version(parent_folder)}
    assert rec.refit_info_["parent"] == expected
    folder = rec.save(tmp_path / "child")
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["refit"]["rows"] == rec.refit_info_["rows"] and meta["refit"]["parent"] == expected
    loaded = Recommender.load(folder)
    assert loaded.refit_info_ == json.loads(json.dumps(rec.refit_info_))
    assert loaded.recommend_batch(users=["newbie", "u3"], k=5) == rec.recommend_batch(users=["newbie", "u3"], k=5)
    # A refitted model refits again, from its own grown tables.
    next_period = periods(seed=1)[1].assign(timestamp=lambda d: d["timestamp"] + 1000)
    again = loaded.refit(next_period, epochs=1)
    assert again.refit_info_["rows"]["new_users"] == 0 and len(again.items_) == len(rec.items_)


def test_ratings_decide_which_new_interactions_are_held_out():
    rec = Recommender("ease", min_rating=4, progress=False).fit(OLD.assign(stars=5), target="stars")
    with pytest.raises(DataError, match="'stars'"):
        rec.refit(NEW)
    # Every new interaction rated below min_rating: nothing positive to hold out.
    with pytest.raises(DataError, match="no user with two positive interactions"):
        rec.refit(NEW.assign(stars=2))
    # target= names the rating column of a log that calls it otherwise.
    done = rec.refit(NEW.assign(rating=5), target="rating")
    assert done.refit_info_["rows"]["new_test"] == len(USERS) + 1


def test_a_content_model_grows_its_content_table():
    items = pd.DataFrame({"item_id": A + B, "title": [f"song {i}" for i in A + B]})
    rec = Recommender(
        "sasrec",
        content_backbone="tiny-text",
        threads=1,
        progress=False,
        **{**PARAMS["sasrec"], "finetune_settings": {"epochs": 2}},
    ).fit(OLD, items=items, item_text=["title"])
    rec.add_items(pd.DataFrame({"item_id": ["cold"], "title": ["song cold"]}), item_text=["title"])
    assert not rec.model_._known.numpy()[-1]  # known by its content only
    cold_fans = pd.DataFrame({"user_id": USERS[:3], "item_id": ["cold"] * 3, "timestamp": [99] * 3})
    done = rec.refit(pd.concat([cold_fans, NEW]), epochs=1)
    n = len(done.items_)
    assert done.model_.n_items == n and done.content_ is not None and done.content_.shape[0] == n
    # "cold" now has interactions, so its id vector is learned; "fresh" came with no text.
    known = dict(zip(done.items_, done.model_._known.numpy(), strict=True))
    assert known["cold"] and known["fresh"]
    assert not done.content_[list(done.items_).index("fresh")].any()
    done.add_items(pd.DataFrame({"item_id": ["later"], "title": ["song later"]}), item_text=["title"])
    assert done.model_.n_items == n + 1
