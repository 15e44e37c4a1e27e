"""Joint adapters: training across users, fold-in, the Personalizer and server paths, the CLI, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tests.personalize.test_personalize import shared_model  # noqa: F401  (a fixture: the tiny shared model)
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.estimators.base import NotSupportedError
from tunesmith.personalize.joint import JointAdapterSettings, fit_joint, fold_in, joint_logits
from tunesmith.personalize.personalizer import Personalizer
from tunesmith.personalize.settings import softmax, time_ordered_holdout
from tunesmith.personalize.store import JOINT_KEY, AdapterStore

# --- joint training on planted taste -----------------------------------------------------------


def _taste_rows(
    n_users: int, rows: int, seed: int, *, few: frozenset[int] = frozenset(), few_rows: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, user index and labels: even users like rows with feature 0 > 0, odd users the opposite.

    The ``few`` users have ``few_rows`` rows that say nothing of their taste (feature 0 is zero):
    only their segment can tell what they like.
    """
    rng = np.random.default_rng(seed)
    f_all, u_all, y_all = [], [], []
    for user in range(n_users):
        sign = 1.0 if user % 2 == 0 else -1.0
        n = few_rows if user in few else rows
        f = rng.normal(size=(n, 16)).astype(np.float32)
        if user in few:
            f[:, 0] = 0.0
        y = (sign * f[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
        f_all.append(f)
        u_all.append(np.full(n, user))
        y_all.append(y)
    return np.concatenate(f_all), np.concatenate(u_all), np.concatenate(y_all)


def _user_auc(logits: np.ndarray, y: np.ndarray, users: np.ndarray) -> float:
    """Mean over users of the ROC AUC of their rows."""
    p = softmax(logits)[:, 1]
    return float(np.mean([roc_auc_score(y[users == u], p[users == u]) for u in np.unique(users)]))


N_USERS, FEW = 50, frozenset(range(30, 50))
SETTINGS = JointAdapterSettings(rank=4, steps=150, lr=0.05)


@pytest.fixture(scope="module")
def taste() -> dict[str, Any]:
    """Training rows (15 per user, 3 uninformative ones for the ``FEW``) and 30 held-out rows per user."""
    f, u, y = _taste_rows(N_USERS, 15, seed=0, few=FEW)
    ft, ut, yt = _taste_rows(N_USERS, 30, seed=10)
    # The shared model knows nothing of the taste: half the users like what the other half dislike.
    return {"f": f, "u": u, "y": y, "z": np.zeros((len(f), 2), np.float32), "ft": ft, "ut": ut, "yt": yt}


def _fit(taste: dict[str, Any], *, segments: bool) -> Any:
    user_segments = np.arange(N_USERS) % 2 if segments else None
    return fit_joint(
        taste["f"], taste["z"], taste["y"], taste["u"], np.full(len(taste["u"]), -1), n_users=N_USERS, n_items=0,
        settings=SETTINGS, l2=0.1, user_segments=user_segments, n_segments=2 if segments else 0, seed=0,
    )  # fmt: skip


def _held_out(fit: Any, taste: dict[str, Any], *, users: bool) -> np.ndarray:
    ft, ut = taste["ft"], taste["ut"]
    none = np.full(len(ut), -1)
    return np.asarray(fit.logits(ft, np.zeros((len(ft), 2), np.float32), none, ut if users else none, none))


def test_joint_training_learns_each_users_taste_from_few_rows(taste: dict[str, Any]) -> None:
    fit = _fit(taste, segments=False)
    assert fit.history[-1] < fit.history[0] - 0.2
    many = ~np.isin(taste["ut"], list(FEW))
    ut, yt = taste["ut"][many], taste["yt"][many]
    personal = _user_auc(_held_out(fit, taste, users=True)[many], yt, ut)
    population = _user_auc(_held_out(fit, taste, users=False)[many], yt, ut)
    # 12 training rows per user, tastes opposite between halves: the population model cannot rank a
    # user's rows, each user's vector (placed through W learned from all users) can.
    assert population < 0.6 and personal > 0.9
    loss = torch.nn.functional.cross_entropy
    ll_personal = float(loss(torch.as_tensor(_held_out(fit, taste, users=True)[many]), torch.as_tensor(yt)))
    ll_population = float(loss(torch.as_tensor(_held_out(fit, taste, users=False)[many]), torch.as_tensor(yt)))
    assert ll_personal < ll_population - 0.2


def test_users_whose_rows_say_little_take_their_segments_taste(taste: dict[str, Any]) -> None:
    few = np.isin(taste["ut"], list(FEW))
    ut, yt = taste["ut"][few], taste["yt"][few]
    alone = _user_auc(_held_out(_fit(taste, segments=False), taste, users=True)[few], yt, ut)
    with_segment = _user_auc(_held_out(_fit(taste, segments=True), taste, users=True)[few], yt, ut)
    # Their 3 rows carry no sign of their taste: alone they are a coin toss, with a segment they
    # rank rows as the segment's users do.
    assert alone < 0.65 and with_segment > 0.7 and with_segment > alone + 0.2


def test_fold_in_places_a_user_as_joint_training_did(taste: dict[str, Any]) -> None:
    fit = _fit(taste, segments=False)
    f, z, y, u = taste["f"], taste["z"], taste["y"], taste["u"]
    ft, ut = taste["ft"], taste["ut"]
    for user in (3, 4):
        mine, held = u == user, ut == user
        vec, bias = fold_in(fit.model, f[mine], z[mine], y[mine], np.full(mine.sum(), -1), l2=fit.l2, steps=50)
        again = fold_in(fit.model, f[mine], z[mine], y[mine], np.full(mine.sum(), -1), l2=fit.l2, steps=50)
        assert torch.equal(vec, again[0]) and torch.equal(bias, again[1])  # deterministic
        assert vec.shape == fit.user_vectors[user].shape
        # The same objective for that user, the shared part fixed: the same place, up to the
        # optimiser's tolerance.
        np.testing.assert_allclose(vec.numpy(), fit.user_vectors[user].numpy(), atol=2e-3)
        no_items, zt = np.full(held.sum(), -1), np.zeros((held.sum(), 2), np.float32)
        folded = softmax(joint_logits(fit.model, ft[held], zt, no_items, vec, bias))
        trained = softmax(joint_logits(fit.model, ft[held], zt, no_items, fit.user_vectors[user], fit.user_bias[user]))
        np.testing.assert_allclose(folded, trained, atol=1e-3)
    # Without the user's rows (an empty user) fold-in refuses rather than invent a vector.
    with pytest.raises(ConfigError, match="at least one labeled row"):
        fold_in(fit.model, f[:0], z[:0], y[:0], np.full(0, -1), l2=0.1)


# --- the Personalizer with joint adapters -------------------------------------------------------

GOOD = ["a good great film", "a good great film indeed", "a good great film really"]
BAD = ["a bad awful film", "a bad awful film indeed", "a bad awful film really"]
ITEMS = {f"i{k}": text for k, text in enumerate(GOOD + BAD)}


def _item_ratings(users: list[str], rows: int, seed: int) -> pd.DataFrame:
    """Ratings of six films (items) by users; users ``u0``, ``u4``, ... like the bad ones."""
    rng = np.random.default_rng(seed)
    out = []
    for user in users:
        contrarian = int(user.removeprefix("u")) % 4 == 0
        for t in range(rows):
            item = f"i{rng.integers(len(ITEMS))}"
            good = ITEMS[item] in GOOD
            out.append(
                {
                    "user": user,
                    "region": "north" if int(user.removeprefix("u")) % 2 else "south",
                    "t": t,
                    "item": item,
                    "text": ITEMS[item],
                    "label": "yes" if good != contrarian else "no",
                }
            )
    return pd.DataFrame(out)


USERS = [f"u{k}" for k in range(12)]
JOINT: dict[str, Any] = {
    "user_column": "user", "item_column": "item", "time_column": "t", "min_rows": 10, "adapter_kind": "joint",
    "joint_rank": 4, "joint_l2": [0.03, 0.3], "progress": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def ratings() -> tuple[pd.DataFrame, pd.DataFrame]:
    data = _item_ratings(USERS, 30, seed=1)
    held = time_ordered_holdout(data, "user", 0.2, "t")
    return data.loc[~held].reset_index(drop=True), data.loc[held].reset_index(drop=True)


@pytest.fixture(scope="module")
def joint_store(shared_model: Path, ratings: tuple[pd.DataFrame, pd.DataFrame], tmp_path_factory: Any) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("joint") / "store"
    Personalizer(shared_model, folder, **JOINT).fit(ratings[0])
    return folder


def _files(store: AdapterStore) -> dict[str, bytes]:
    return {k: (store.folder / store.info(k)["file"]).read_bytes() for k in store}


def test_personalizer_trains_joint_adapters_and_routes_to_them(
    shared_model: Path,  # noqa: F811
    joint_store: Path,
    ratings: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, test = ratings
    p = Personalizer.from_store(joint_store, base=shared_model)
    assert p.adapter_kind == "joint" and p.item_column == "item" and p.joint_settings.l2 == (0.03, 0.3)
    store = p.store
    shared = store.info(JOINT_KEY)
    assert shared["kind"] == "joint" and sorted(shared["items"]) == sorted(set(train["item"]))
    assert shared["settings"]["l2"] in (0.03, 0.3) and shared["id"].startswith("sha256:")
    assert JOINT_KEY in store and set(store) == {f"user:{u}" for u in USERS} and len(store) == len(USERS)
    for user in USERS:
        info = store.info(f"user:{user}")
        assert info["kind"] == "joint" and info["joint"] == shared["id"] and "candidates" not in info
        assert set(store.load(f"user:{user}")) == {"u", "c"}
    result = p.evaluate(test)
    users = result["users"].set_index("user")
    contrarians = users.loc[["u0", "u4", "u8"]]
    assert contrarians["accuracy_shared"].mean() < 0.2
    assert contrarians["accuracy_personal"].mean() >= contrarians["accuracy_shared"].mean() + 0.6
    proba, levels = p.predict_routed(test)
    used = {u for u in USERS if store.info(f"user:{u}")["used"]}
    assert {"u0", "u4", "u8"} <= used
    assert levels == ["user" if u in used else "shared" for u in test["user"]]
    # from the store alone (a copy saved elsewhere), the same probabilities exactly
    copy = p.save(joint_store.parent / "copy")
    again, again_levels = Personalizer.from_store(copy, base=shared_model).predict_routed(test)
    np.testing.assert_array_equal(again, proba)
    assert again_levels == levels
    # an unknown item is answered from the text alone, a known one with the item's vector too
    row = test.head(1)
    without = p.predict_routed(row.assign(item="never-seen"))[0]
    no_column = p.predict_routed(row.drop(columns="item"))[0]
    np.testing.assert_allclose(without, no_column, atol=1e-6)
    assert np.abs(without - proba[:1]).max() > 1e-5
    with pytest.raises(NotSupportedError, match="refit of joint adapters"):
        p.refit(train)


def test_new_users_are_folded_in_and_nobody_else_changes(
    shared_model: Path,  # noqa: F811
    joint_store: Path,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "store"
    shutil.copytree(joint_store, folder)
    before = _files(AdapterStore(folder, Personalizer.from_store(folder, base=shared_model).base_fingerprint))
    new = _item_ratings(["u100", "u101"], 30, seed=5)  # u100 is a contrarian
    held = time_ordered_holdout(new, "user", 0.2, "t")
    p = Personalizer(shared_model, folder, **JOINT)
    p.fit(new.loc[~held], users=["u100", "u101"])
    after = _files(p.store)
    assert set(after) == set(before) | {"user:u100", "user:u101"}
    assert all(after[k] == before[k] for k in before)  # the shared part and every other user, byte for byte
    shared_id = p.store.info(JOINT_KEY)["id"]
    for user in ("u100", "u101"):
        info = p.store.info(f"user:{user}")
        assert (
            info["kind"] == "joint"
            and info["joint"] == shared_id
            and (info["rows_train"], info["rows_valid"]) == (20, 4)
        )
    test = new.loc[held].reset_index(drop=True)
    proba, levels = p.predict_routed(test)
    contrarian = (test["user"] == "u100").to_numpy()
    assert set(np.asarray(levels)[contrarian]) == {"user"}
    y = (test["label"] == "yes").to_numpy()
    assert np.mean((proba[:, 1] > 0.5)[contrarian] == y[contrarian]) > 0.8
    # deterministic: folding the same rows in again gives the same vectors (tensors compared: the
    # safetensors header's metadata order varies between writes)
    first = p.store.load("user:u100")
    p.fit(new.loc[~held], users=["u100"])
    second = p.store.load("user:u100")
    assert all(torch.equal(first[k], second[k]) for k in ("u", "c"))


def test_joint_and_head_candidates_are_recorded_per_user(
    shared_model: Path,  # noqa: F811
    ratings: tuple[pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
) -> None:
    params = {**JOINT, "adapter_kind": "joint,head", "local_min_rows": 20, "joint_l2": 0.1, "steps": 50}
    p = Personalizer(shared_model, tmp_path / "store", **params)
    train = ratings[0]
    # u11 keeps 15 rows (fewer than local_min_rows): it is offered the joint adapter only.
    train = train.loc[(train["user"] != "u11") | (train["t"] < 15)]
    p.fit(train)
    for user in USERS[:-1]:
        info = p.store.info(f"user:{user}")
        assert set(info["candidates"]) == {"joint", "head"} and info["kind"] in ("joint", "head")
        best = min(info["candidates"], key=lambda k: info["candidates"][k])
        if info["used"]:
            assert info["kind"] == best
    lone = p.store.info("user:u11")
    assert lone["kind"] == "joint" and "candidates" not in lone


def _tampered(joint_store: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path / "store"
    shutil.copytree(joint_store, folder)
    return folder, json.loads((folder / "index.json").read_text())


def _rewrite(folder: Path, rel: str, tensors: dict[str, torch.Tensor]) -> None:
    from tunesmith.runs.artifacts import save_tensors

    save_tensors(folder / rel, tensors, {"format": "tunesmith-adapter"})


def test_tampered_joint_stores_are_refused_naming_the_field(
    shared_model: Path,  # noqa: F811
    joint_store: Path,
    tmp_path: Path,
) -> None:
    folder, index = _tampered(joint_store, tmp_path / "shape")
    entry = index["adapters"]["user:u1"]
    _rewrite(folder, entry["file"], {"u": torch.zeros(4, 3), "c": torch.zeros(2)})
    with pytest.raises(ArtifactError, match="tensor 'u' has shape \\[4, 3\\]") as err:
        Personalizer.from_store(folder, base=shared_model)
    assert entry["file"] in str(err.value)

    folder, index = _tampered(joint_store, tmp_path / "items")
    index["adapters"][JOINT_KEY]["items"] = index["adapters"][JOINT_KEY]["items"][:-1]
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError, match=r"field \"adapters\['joint:shared'\]\.items\" must list 6 item ids") as err:
        Personalizer.from_store(folder, base=shared_model)
    assert "index.json" in str(err.value)

    folder, index = _tampered(joint_store, tmp_path / "shared_in_user")
    shared_file = folder / index["adapters"][JOINT_KEY]["file"]
    (folder / index["adapters"]["user:u2"]["file"]).write_bytes(shared_file.read_bytes())
    with pytest.raises(ArtifactError, match="holds what joint adapters share; only 'joint:shared'") as err:
        Personalizer.from_store(folder, base=shared_model)
    assert "user:u2" in str(err.value)


def test_a_vector_of_another_shared_part_is_not_applied(
    shared_model: Path,  # noqa: F811
    joint_store: Path,
    ratings: tuple[pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
) -> None:
    folder, index = _tampered(joint_store, tmp_path)
    index["adapters"]["user:u0"]["joint"] = "sha256:" + "0" * 64  # trained with another shared part
    (folder / "index.json").write_text(json.dumps(index))
    p = Personalizer.from_store(folder, base=shared_model)
    rows = ratings[1].loc[ratings[1]["user"].isin(["u0", "u4"])].reset_index(drop=True)
    proba, levels = p.predict_routed(rows)
    shared = softmax(p.shared_outputs(rows)[1])
    u0 = (rows["user"] == "u0").to_numpy()
    # u0 is routed as a user without an adapter; u4's vector still applies.
    assert set(np.asarray(levels)[u0]) == {"shared"} and set(np.asarray(levels)[~u0]) == {"user"}
    np.testing.assert_allclose(proba[u0], shared[u0], atol=1e-6)
    assert np.abs(proba[~u0] - shared[~u0]).max() > 0.3
    # Even asked directly (a server that read the index before it changed), the vector is not applied.
    vector = p._adapter("user:u0")
    features, logits = p.shared_outputs(rows.loc[u0])
    np.testing.assert_array_equal(p.joint_rows(vector, features, logits, None), logits)


def test_a_new_full_fit_replaces_the_shared_part_and_drops_vectors_of_absent_users(
    shared_model: Path,  # noqa: F811
    joint_store: Path,
    ratings: tuple[pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "store"
    shutil.copytree(joint_store, folder)
    old = json.loads((folder / "index.json").read_text())["adapters"][JOINT_KEY]
    train = ratings[0].loc[ratings[0]["user"] != "u5"]
    p = Personalizer(shared_model, folder, **{**JOINT, "joint_l2": 0.1})
    p.fit(train)
    new = p.store.info(JOINT_KEY)
    # A new shared part is a new file (readers of the old index kept the old one), the old one is gone.
    assert new["id"] != old["id"] and new["file"] != old["file"]
    assert not (folder / old["file"]).exists() and (folder / new["file"]).exists()
    # u5's vector belonged to the old shared part: removed, u5 falls back to the shared model.
    assert "user:u5" not in p.store and p.route("u5").level == "shared"
    assert all(p.store.info(k)["joint"] == new["id"] for k in p.store)
    again = Personalizer.from_store(folder, base=shared_model)
    assert set(again.store) == {f"user:{u}" for u in USERS if u != "u5"}


def test_joint_vectors_without_their_shared_part_are_refused(
    shared_model: Path,  # noqa: F811
    joint_store: Path,
    tmp_path: Path,
) -> None:
    folder, index = _tampered(joint_store, tmp_path)
    del index["adapters"][JOINT_KEY]
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError, match="holds a joint adapter, but the store has no 'joint:shared' entry"):
        Personalizer.from_store(folder, base=shared_model)


def test_evaluation_scores_a_collaborative_filtering_baseline_on_the_same_rows(
    shared_model: Path,  # noqa: F811
    joint_store: Path,
    ratings: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, test = ratings
    p = Personalizer.from_store(joint_store, base=shared_model)
    result = p.evaluate(test, train=train)
    users = result["users"]
    assert users["auc_cf"].notna().sum() == users["auc_personal"].notna().sum() > 0
    assert result["cf"]["chosen"] in result["cf"]["validation"]
    assert "auc_cf" in result["summary"]["all"] and set(result["summary"]["by_kind"]) <= {"joint", "shared"}
    assert set(users["kind"].dropna()) == {"joint"}
    # Items are films liked or not by everyone but the contrarians: CF ranks each user's rows well too.
    assert result["summary"]["all"]["auc_cf"] > 0.7
    head = Personalizer(shared_model, joint_store.parent / "head", user_column="user", progress=False)
    with pytest.raises(ConfigError, match="needs the items: this Personalizer has no item_column"):
        head.fit(train).evaluate(test, train=train)


# --- serving ------------------------------------------------------------------------------------


def test_the_server_passes_each_rows_item_to_its_joint_adapter(
    shared_model: Path,  # noqa: F811
    joint_store: Path,
    ratings: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    from tunesmith.serve.personalized import load_personalized_predictor

    test = ratings[1].head(8)
    rows: list[Any] = [{"text": r.text, "user": r.user, "item": r.item} for r in test.itertuples()]
    rows += [
        {"text": test["text"][0], "user": test["user"][0]},  # no item: the text alone
        {"text": test["text"][0], "user": test["user"][0], "item": None},
        {"text": test["text"][0], "item": test["item"][0]},  # no user: the shared model
    ]
    predictor = load_personalized_predictor(shared_model, joint_store, batch_size=4, threads=1)
    try:
        assert predictor.item_column == "item"
        assert predictor.metadata()["personalization"]["item_column"] == "item"
        model_rows, users, segments, items = predictor.split_routed(rows)
        assert all("item" not in r and "user" not in r for r in model_rows)  # routing only: the model reads text
        assert items == [*test["item"], None, None, test["item"][0]] and segments is None
        assert predictor.split_rows(rows)[1] == users  # the three-part split callers keep working
        served = predictor.predict_rows(rows)
        got = np.array([[(p.probabilities or {})["no"], (p.probabilities or {})["yes"]] for p in served])
        offline, levels = Personalizer.from_store(joint_store, base=shared_model).predict_routed(test)
        np.testing.assert_allclose(got[:8], offline, atol=1e-5)
        assert [(p.served_by or {})["level"] for p in served[:8]] == levels
        no_item, _ = Personalizer.from_store(joint_store, base=shared_model).predict_routed(
            test.head(1).drop(columns="item")
        )
        np.testing.assert_allclose(got[8:10], np.repeat(no_item, 2, axis=0), atol=1e-5)
        assert np.abs(got[8] - got[0]).max() > 1e-5  # the item did change the answer
        assert served[10].served_by == {"level": "shared", "adapter": None}
        with pytest.raises(DataError, match=r"inputs\[0\]\.item must be a string or an integer"):
            predictor.predict_rows([{"text": "a good film", "user": "u1", "item": 1.5}])
    finally:
        predictor.close()


# --- the command line ---------------------------------------------------------------------------


def test_cli_trains_joint_adapters_and_folds_users_in(
    shared_model: Path,  # noqa: F811
    ratings: tuple[pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
    capsys: Any,
) -> None:
    from tests.cli.test_cli import cli

    csv = tmp_path / "ratings.csv"
    ratings[0].to_csv(csv, index=False)
    store = tmp_path / "store"
    common = [str(shared_model), str(csv), "--user-column", "user", "--time-column", "t", "-o", str(store)]
    code, out, err = cli(
        capsys, "personalize", *common, "--kind", "joint", "--item-column", "item", "--joint-rank", "4",
        "--joint-l2", "0.03,0.1", "--joint-l2", "0.3", "--local-min-rows", "40", "--feature-dtype", "float32",
    )  # fmt: skip
    assert code == 0, err
    assert "user adapters: 12 user(s)" in out
    settings = json.loads((store / "personalize.json").read_text())
    assert settings["adapter_kind"] == "joint" and settings["item_column"] == "item"
    assert settings["joint"]["rank"] == 4 and settings["joint"]["l2"] == [0.03, 0.1, 0.3]
    assert settings["local_min_rows"] == 40
    index = json.loads((store / "index.json").read_text())["adapters"]
    assert len(index[JOINT_KEY]["items"]) == 6
    shared_bytes = (store / index[JOINT_KEY]["file"]).read_bytes()

    more = tmp_path / "more.csv"
    _item_ratings(["u100"], 20, seed=7).to_csv(more, index=False)
    # An update takes the store's kind, item column and joint settings: u100 is folded in.
    code, out, err = cli(capsys, "personalize", *common[:1], str(more), *common[2:], "--users", "u100")
    assert code == 0, err
    index = json.loads((store / "index.json").read_text())["adapters"]
    assert index["user:u100"]["kind"] == "joint" and (store / index[JOINT_KEY]["file"]).read_bytes() == shared_bytes
    again = json.loads((store / "personalize.json").read_text())
    assert again["item_column"] == "item" and again["joint"]["rank"] == 4 and again["local_min_rows"] == 40

    code, _, err = cli(capsys, "personalize", *common, "--users", "u100", "--item-column", "other")
    assert code == 2 and "learned the items of column 'item', not 'other'" in err and "Traceback" not in err
    code, _, err = cli(capsys, "personalize", *common, "--kind", "head")
    assert code == 2 and "holds joint adapters, not head" in err
    code, _, err = cli(capsys, "personalize", *common, "--kind", "jiont")
    assert code == 2 and "adapter_kind" in err and "jiont" in err
    code, _, err = cli(capsys, "personalize", *common, "--joint-l2", "0.1,lots")
    assert code == 2 and "joint_l2" in err and "'lots'" in err
