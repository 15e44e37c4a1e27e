"""Interaction logs and their splits: reading, errors that name the row, k-core, split invariants."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunesmith import datasets
from tunesmith.errors import ConfigError, DataError
from tunesmith.recsys import (
    Interactions,
    k_core,
    leave_last_out,
    random_ratio,
    read_features,
    read_interactions,
    time_cut,
)


def log(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])


def synthetic(n_users: int = 40, n_items: int = 30, seed: int = 0) -> pd.DataFrame:
    """A random log with distinct (user, item) pairs, distinct times per user and ratings 1-5."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 15))
        items = rng.choice(n_items, size=n, replace=False)
        times = rng.choice(1000, size=n, replace=False)
        rows += [(f"u{u}", f"i{i}", float(t), int(rng.integers(1, 6))) for i, t in zip(items, times, strict=True)]
    return log(rows)


# --- reading ---------------------------------------------------------------------------------


def test_read_codes_sorting_and_report() -> None:
    df = log([("b", "x", 5, 4), ("a", "y", 3, 2), ("b", "y", 1, 5), ("a", "x", 9, 1)])
    inter = read_interactions(df, rating="rating")
    assert list(inter.users) == ["a", "b"] and list(inter.items) == ["x", "y"]
    f = inter.frame
    assert f["user"].dtype == np.int32 and f["item"].dtype == np.int32
    assert f["time"].dtype == np.float64 and f["row"].dtype == np.int64 and f["rating"].dtype == np.float64
    # Sorted by (user, time); row keeps the 1-based source row.
    assert f[["user", "item", "time", "row"]].values.tolist() == [
        [0, 1, 3, 2],
        [0, 0, 9, 4],
        [1, 1, 1, 3],
        [1, 0, 5, 1],
    ]
    assert inter.report == {"rows_in": 4, "rows_out": 4, "dropped": {"duplicate": 0}, "out_of_order": 1}
    assert inter.sequences()[1].tolist() == [1, 0]
    assert inter.matrix("rating").toarray().tolist() == [[1.0, 2.0], [4.0, 5.0]]


def test_read_file_with_datetimes_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "user,item,when,clicked,w\n"
        "1,10,2024-01-01T00:00:00Z,true,2\n"
        "1,11,2024-01-01 00:01:00,0,1.5\n"
        "2,10,2024-01-02T00:00:00+01:00,1,1\n"
    )
    inter = read_interactions(path, user="user", item="item", time="when", label="clicked", weight="w")
    assert inter.frame["time"].tolist() == [1704067200.0, 1704067260.0, 1704150000.0]
    assert inter.frame["label"].tolist() == [1, 0, 1] and inter.frame["label"].dtype == np.int8
    assert inter.positive_mask().tolist() == [True, False, True]
    assert inter.matrix("weight").toarray().tolist() == [[2.0, 1.5], [1.0, 0.0]]
    assert inter.report["source"] == str(path)


def test_ids_read_as_floats_match_integer_ids() -> None:
    inter = read_interactions(pd.DataFrame({"user_id": [1.0, 2.0], "item_id": [7, 7], "timestamp": [0, 1]}))
    assert list(inter.users) == ["1", "2"] and list(inter.items) == ["7"]


def test_unknown_column_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        read_interactions(log([("a", "x", 1, 5)]), rating="ratng")
    assert err.value.column == "ratng"
    assert "rating column 'ratng' not found" in str(err.value)
    assert "Did you mean 'rating'?" in str(err.value) and "'user_id'" in str(err.value)


def test_missing_id_names_row_and_column() -> None:
    df = log([("a", "x", 1, 5), ("b", None, 2, 5), (None, "y", 3, 5)])
    with pytest.raises(DataError) as err:
        read_interactions(df)
    assert (err.value.row, err.value.column) == (3, "user_id")
    assert str(err.value).startswith("row 3, column 'user_id': user id is missing")
    with pytest.raises(DataError, match="item id is missing") as err:
        read_interactions(df.iloc[:2])
    assert err.value.row == 2


def test_duplicate_events() -> None:
    df = log([("a", "x", 1, 5), ("a", "y", 2, 5), ("b", "x", 1, 3), ("a", "x", 1, 4), ("a", "x", 1, 2)])
    with pytest.raises(DataError) as err:
        read_interactions(df, file="events.csv")
    assert err.value.row == 4 and err.value.file == "events.csv"
    assert "at the same time as row 1" in str(err.value) and "duplicates='drop'" in str(err.value)
    dropped = read_interactions(df, rating="rating", duplicates="drop")
    assert len(dropped) == 3 and dropped.report["dropped"] == {"duplicate": 2}
    assert dropped.report["rows_in"] == 5 and dropped.report["rows_out"] == 3
    assert dropped.frame.loc[dropped.frame["item"] == 0, "rating"].tolist() == [5.0, 3.0]  # the first is kept
    kept = read_interactions(df, duplicates="keep")
    assert len(kept) == 5
    m = kept.matrix("count")
    assert m[0, 0] == 3.0 and kept.matrix("binary")[0, 0] == 1.0


def test_strict_order_names_the_first_late_row() -> None:
    df = log([("a", "x", 5, 5), ("b", "x", 9, 5), ("b", "y", 3, 5), ("a", "y", 4, 5)])
    with pytest.raises(DataError) as err:
        read_interactions(df, order="strict")
    assert err.value.row == 3 and err.value.column == "timestamp"
    assert "earlier than the same user's previous event (row 2, time 9)" in str(err.value)
    assert read_interactions(df).report["out_of_order"] == 2


def test_bad_values_name_the_row() -> None:
    with pytest.raises(DataError, match="rating 'five' is not a number") as err:
        read_interactions(log([("a", "x", 1, 5), ("a", "y", 2, "five")]), rating="rating")
    assert (err.value.row, err.value.column) == (2, "rating")
    bad_label = pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"], "timestamp": [1, 2], "y": [1, "maybe"]})
    with pytest.raises(DataError, match="label 'maybe' is not 0/1") as err:
        read_interactions(bad_label, label="y")
    assert err.value.row == 2
    bad_time = log([("a", "x", "2024-01-01", 5), ("a", "y", "soon", 5)])
    with pytest.raises(DataError, match="neither a number") as err:
        read_interactions(bad_time)
    assert err.value.row == 2


def test_settings_are_checked() -> None:
    inter = read_interactions(log([("a", "x", 1, 5)]))
    with pytest.raises(ConfigError, match="duplicates"):
        read_interactions(log([("a", "x", 1, 5)]), duplicates="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no rating column"):
        inter.matrix("rating")
    with pytest.raises(ConfigError, match="needs a rating column"):
        inter.positive_mask(min_rating=4)
    with pytest.raises(ConfigError, match="boolean array"):
        inter.take(np.array([0]))


def test_take_keeps_the_id_maps() -> None:
    inter = read_interactions(synthetic(), rating="rating")
    part = inter.take(inter.positive_mask(min_rating=4))
    assert part.users is inter.users and part.items is inter.items
    assert (part.frame["rating"] >= 4).all()
    assert part.report["dropped"]["not_taken"] == len(inter) - len(part)
    assert part.matrix().shape == inter.matrix().shape


def test_k_core_reaches_a_fixed_point() -> None:
    # A chain: dropping the sparse user pushes item i4 under the minimum, which then pushes u3 under it.
    rows = [(f"u{u}", f"i{i}", 10 * u + i, 5) for u in range(3) for i in range(4)]
    rows += [("u3", "i0", 50, 5), ("u3", "i1", 51, 5), ("u3", "i4", 52, 5)]
    rows += [("u4", "i4", 60, 5)]
    inter = read_interactions(log(rows))
    core = k_core(inter, min_user=3, min_item=3)
    user_n = np.bincount(core.frame["user"], minlength=core.n_users)
    item_n = np.bincount(core.frame["item"], minlength=core.n_items)
    assert user_n.min() >= 3 and item_n.min() >= 3
    assert list(core.users) == ["u0", "u1", "u2"] and list(core.items) == ["i0", "i1", "i2", "i3"]
    assert core.report["k_core"]["rounds"] >= 3
    assert core.report["k_core"]["users_dropped"] == 2 and core.report["k_core"]["items_dropped"] == 1
    assert core.report["dropped"]["k_core"] == 4 and core.report["rows_out"] == 12

    big = k_core(read_interactions(synthetic(80, 40, seed=3)), min_user=5, min_item=5)
    assert np.bincount(big.frame["user"]).min() >= 5 and np.bincount(big.frame["item"]).min() >= 5
    assert big.frame.equals(big.frame.sort_values(["user", "time", "row"], kind="stable"))
    with pytest.raises(DataError, match="no interactions left"):
        k_core(inter, min_user=100)


def test_read_features(tmp_path: Path) -> None:
    path = tmp_path / "items.tsv"
    path.write_text("item_id\ttitle\n1\tAlpha\n2\tBeta\n")
    feats = read_features(path, "item_id")
    assert feats.index.tolist() == ["1", "2"] and feats.loc["2", "title"] == "Beta"
    with pytest.raises(DataError, match="given twice") as err:
        read_features(pd.DataFrame({"id": ["a", "b", "a"], "f": [1, 2, 3]}), "id")
    assert err.value.row == 3 and "first at row 1" in str(err.value)
    with pytest.raises(DataError, match="Did you mean 'item_id'"):
        read_features(path, "itemid")


def test_movielens_without_recbole_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps recbole==1.2.1"):
        datasets.movielens_100k()


# --- splits ----------------------------------------------------------------------------------


def test_leave_last_out_by_hand() -> None:
    rows = [
        ("a", "i1", 1, 5),
        ("a", "i2", 2, 2),
        ("a", "i3", 3, 4),
        ("a", "i4", 4, 5),
        ("a", "i5", 5, 1),  # after the test target: never fitted on
        ("b", "i1", 1, 4),  # one positive: not evaluated, in train
        ("c", "i2", 1, 5),  # two positives, nothing before the validation target
        ("c", "i3", 2, 5),
        ("d", "i1", 1, 2),
        ("d", "i2", 2, 4),
        ("d", "i3", 3, 5),
    ]
    inter = read_interactions(log(rows), rating="rating")
    split = leave_last_out(inter, positive=inter.positive_mask(min_rating=4))
    item = {name: code for code, name in enumerate(inter.items)}
    a, d = 0, 3
    assert split.test.users.tolist() == [a, d] and split.valid.users.tolist() == [a, d]
    assert [t.tolist() for t in split.valid.targets] == [[item["i3"]], [item["i2"]]]
    assert [t.tolist() for t in split.test.targets] == [[item["i4"]], [item["i3"]]]
    assert [s.tolist() for s in split.valid.sequences] == [[item["i1"], item["i2"]], [item["i1"]]]
    assert [s.tolist() for s in split.test.sequences] == [
        [item["i1"], item["i2"], item["i3"]],
        [item["i1"], item["i2"]],
    ]
    train_rows = sorted(split.train.frame["row"].tolist())
    assert train_rows == [1, 2, 6, 7, 8, 9]
    assert split.valid_train is split.train
    assert any("1 users with fewer than 2 positive" in n for n in split.notes)
    assert any("1 users with no interaction before their validation target" in n for n in split.notes)
    assert split.test.history_sizes().tolist() == [3, 2]


def target_times(inter: Interactions) -> dict[tuple[int, int], float]:
    f = inter.frame
    return dict(zip(zip(f["user"], f["item"], strict=True), f["time"], strict=True))


@pytest.mark.parametrize("strategy", ["leave_last_out", "time_cut", "random_ratio"])
def test_split_invariants(strategy: str) -> None:
    inter = read_interactions(synthetic(), rating="rating")
    pos = inter.positive_mask(min_rating=3)
    make = {"leave_last_out": leave_last_out, "time_cut": time_cut, "random_ratio": random_ratio}[strategy]
    split = make(inter, positive=pos)
    again = make(inter, positive=pos)
    when = target_times(inter)
    rating = dict(zip(zip(inter.frame["user"], inter.frame["item"], strict=True), inter.frame["rating"], strict=True))
    train = split.train.matrix()
    assert split.valid_train is not None
    valid_train = split.valid_train.matrix()
    assert split.strategy == strategy
    assert len(split.test) > 0 and len(split.valid) > 0
    for hold, fit in ((split.valid, valid_train), (split.test, train)):
        for u, targets, seq in zip(hold.users, hold.targets, hold.sequences, strict=True):
            assert len(targets) > 0 and len(seq) > 0
            for t in targets:
                assert rating[(u, t)] >= 3
                assert fit[u, t] == 0  # a target is never a row fitted on
                assert hold.history[u, t] == 0  # nor already in the history
                if strategy != "random_ratio":
                    assert max(when[(u, i)] for i in seq) < when[(u, t)]  # history is before the target
            assert sorted(set(seq.tolist())) == hold.history[u].indices.tolist()
            times = [when[(u, i)] for i in seq]
            assert times == sorted(times)
    # Deterministic.
    assert split.notes == again.notes
    assert split.train.frame.equals(again.train.frame)
    assert all(np.array_equal(a, b) for a, b in zip(split.test.targets, again.test.targets, strict=True))


def test_time_cut_and_random_ratio_counts() -> None:
    inter = read_interactions(synthetic(seed=1), rating="rating")
    split = time_cut(inter, at=500.0)
    assert (split.train.frame["time"] < 500).all()
    assert split.valid_train is not None and (split.valid_train.frame["time"] < 500).all()
    assert split.notes[0].startswith("test cut at 500 (1970-01-01 00:08:20 UTC)")
    with pytest.raises(DataError, match="no rows before the cut"):
        time_cut(inter, at=-1.0)

    ratio = random_ratio(inter, test_size=0.25, seed=0)
    n = np.bincount(inter.frame["user"], minlength=inter.n_users)
    n_train = np.bincount(ratio.train.frame["user"], minlength=inter.n_users)
    assert n_train.tolist() == [max(1, round(0.75 * k)) for k in n]  # Recommenders' per-user counts
    test_rows = len(inter) - len(ratio.train)
    assert sum(len(t) for t in ratio.test.targets) == test_rows  # every test row is a target (all positive)
    other = random_ratio(inter, test_size=0.25, seed=1)
    assert not other.train.frame.equals(ratio.train.frame)
    with pytest.raises(ConfigError, match="test_size"):
        random_ratio(inter, test_size=1.5)


@pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="recbole (bundles MovieLens-100K) not installed"
)
def test_movielens_100k_leave_last_out() -> None:
    ratings, users, items = datasets.movielens_100k()
    assert (len(ratings), len(users), len(items)) == (100_000, 943, 1_682)
    assert list(ratings.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert list(items.columns) == ["item_id", "title", "year", "genres"]
    inter = read_interactions(ratings, rating="rating")
    assert (inter.n_users, inter.n_items, len(inter)) == (943, 1_682, 100_000)
    assert inter.report["dropped"] == {"duplicate": 0}
    split = leave_last_out(inter, positive=inter.positive_mask(min_rating=4))

    # The same protocol computed independently with pandas.
    f = ratings.assign(row=np.arange(len(ratings))).sort_values(["user_id", "timestamp", "row"], kind="stable")
    f["pos_in_user"] = f.groupby("user_id").cumcount()
    liked = f[f["rating"] >= 4]
    second = liked.groupby("user_id")["pos_in_user"].nth(-2)
    second_by_user = pd.Series(second.to_numpy(), index=liked.loc[second.index, "user_id"])
    expected = int((second_by_user > 0).sum())
    assert len(split.test) == len(split.valid) == expected
    n_liked = liked.groupby("user_id").size()
    evaluated_ids = inter.users[split.test.users]
    assert (n_liked.loc[evaluated_ids] >= 2).all()
    ratings_of = inter.matrix("rating")
    assert all(ratings_of[u, t[0]] >= 4 for u, t in zip(split.test.users, split.test.targets, strict=True))
    assert len(split.train) == int(second_by_user[second_by_user > 0].sum()) + int(
        f[~f["user_id"].isin(second_by_user[second_by_user > 0].index)].shape[0]
    )
