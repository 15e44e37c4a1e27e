"""Train/validation/test splits: determinism, stratification, groups and a split column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunesmith.data.io import read_table
from tunesmith.data.schema import infer_schema
from tunesmith.data.split import SplitResult, split_frame
from tunesmith.data.validate import prepare_frame
from tunesmith.errors import ConfigError, DataError

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def labeled(n: int = 200, minority: float = 0.2, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.where(np.arange(n) < int(n * minority), "rare", "common")
    return pd.DataFrame(
        {
            "text": [f"text number {i}" for i in range(n)],
            "y": rng.permutation(y),
            "user": [f"u{i % 23}" for i in range(n)],
        }
    )


def row_sets(result: SplitResult) -> dict[str, set[str]]:
    return {name: set(part["text"]) for name, part in result.frames().items()}


def test_sizes_are_fractions_of_the_whole() -> None:
    result = split_frame(labeled(200), target="y", task="binary", valid_size=0.15, test_size=0.25)
    assert result.sizes() == {"train": 120, "valid": 30, "test": 50}
    assert result.strategy == "stratified" and result.notes == []
    sets = row_sets(result)
    assert not (sets["train"] & sets["valid"] or sets["train"] & sets["test"] or sets["valid"] & sets["test"])
    assert len(sets["train"] | sets["valid"] | sets["test"]) == 200


def test_same_seed_same_split_other_seed_other_split() -> None:
    df = labeled()
    a = split_frame(df, target="y", task="binary", seed=7)
    b = split_frame(df, target="y", task="binary", seed=7)
    c = split_frame(df, target="y", task="binary", seed=8)
    for name in ("train", "valid", "test"):
        assert a.frames()[name].index.equals(b.frames()[name].index)
    assert not a.test.index.equals(c.test.index)


def test_stratification_keeps_class_proportions() -> None:
    df = labeled(300, minority=0.1)
    result = split_frame(df, target="y", task="binary", valid_size=0.2, test_size=0.2, seed=3)
    for part in (result.train, result.valid, result.test):
        assert (part["y"] == "rare").mean() == pytest.approx(0.1, abs=0.02)


def test_too_small_class_falls_back_to_random_with_a_note() -> None:
    df = labeled(50)
    df.loc[0, "y"] = "singleton"
    result = split_frame(df, target="y", task="multiclass", seed=0)
    assert result.strategy == "random"
    assert any("'singleton'" in note for note in result.notes)
    assert sum(result.sizes().values()) == 50


def test_regression_and_stratify_off_are_random() -> None:
    df = labeled(40).assign(y=np.linspace(0, 1, 40))
    assert split_frame(df, target="y", task="regression").strategy == "random"
    assert split_frame(labeled(40), target="y", task="binary", stratify=False).strategy == "random"


def test_zero_sizes_give_empty_parts_with_columns() -> None:
    result = split_frame(labeled(30), target="y", task="binary", valid_size=0.0, test_size=0.0)
    assert result.sizes() == {"train": 30, "valid": 0, "test": 0}
    assert list(result.valid.columns) == ["text", "y", "user"]


def test_groups_never_cross_splits() -> None:
    df = labeled(230)
    for seed in range(3):
        result = split_frame(df, target="y", task="binary", group_column="user", seed=seed)
        users = {name: set(part["user"]) for name, part in result.frames().items()}
        assert not (users["train"] & users["valid"] or users["train"] & users["test"] or users["valid"] & users["test"])
        assert result.strategy == "grouped" and all(result.sizes().values())
        assert result.sizes()["test"] == pytest.approx(23, abs=10)
    again = split_frame(df, target="y", task="binary", group_column="user", seed=2)
    assert again.test.index.equals(result.test.index)


def test_groups_on_the_reviews_asset() -> None:
    df = read_table(ASSETS / "reviews.csv")
    prepared, _ = prepare_frame(df, infer_schema(df, "label", ignore=["user"]))
    result = split_frame(prepared, target="label", task="binary", group_column="user", seed=0)
    users = [set(part["user"]) for part in result.frames().values()]
    assert sum(len(u) for u in users) == 8
    assert set(result.train["label"]) == {"positive", "negative"}


def test_group_errors() -> None:
    with pytest.raises(DataError) as info:
        split_frame(labeled(), target="y", task="binary", group_column="usr", file="g.csv")
    assert info.value.column == "usr" and "g.csv" in str(info.value) and "'user'" in str(info.value)
    df = labeled(20)
    df.loc[5, "user"] = None
    with pytest.raises(DataError) as info:
        split_frame(df, target="y", task="binary", group_column="user")
    assert info.value.row == 6
    with pytest.raises(DataError, match="2 group"):
        split_frame(labeled(20).assign(user=["a", "b"] * 10), target="y", task="binary", group_column="user")


def test_split_column_is_followed() -> None:
    df = labeled(8).assign(split=["train", " Training", "VALID", "dev", "val", "validation", "test", "Test "])
    result = split_frame(df, target="y", task="binary", split_column="split")
    assert result.strategy == "column"
    assert result.sizes() == {"train": 2, "valid": 4, "test": 2}
    assert result.train["text"].tolist() == ["text number 0", "text number 1"]
    assert "split" in result.train.columns


def test_split_column_bad_value_names_row() -> None:
    df = labeled(6).assign(split=["train", "train", "valid", "holdout", "test", "train"])
    with pytest.raises(DataError) as info:
        split_frame(df, target="y", task="binary", split_column="split", file="s.csv")
    err = info.value
    assert err.row == 4 and err.column == "split" and "'holdout'" in err.message and "s.csv" in str(err)


def test_split_column_row_numbers_come_from_prepared_frame() -> None:
    df = labeled(6).assign(split=["train", "train", "valid", "oops", "test", "train"])
    df.loc[0, "y"] = None
    schema = infer_schema(df, "y", ignore=["split", "user"])
    prepared, _ = prepare_frame(df, schema)
    with pytest.raises(DataError) as info:
        split_frame(prepared, target="y", task="binary", split_column="split")
    assert info.value.row == 4


def test_split_column_needs_train_rows_and_must_exist() -> None:
    df = labeled(4).assign(split=["valid", "test", "test", "valid"])
    with pytest.raises(DataError, match="no train rows"):
        split_frame(df, target="y", task="binary", split_column="split")
    with pytest.raises(DataError) as info:
        split_frame(df, target="y", task="binary", split_column="fold")
    assert info.value.column == "fold"


def test_bad_settings() -> None:
    df = labeled(20)
    with pytest.raises(ConfigError):
        split_frame(df, target="y", task="binary", valid_size=0.5, test_size=0.5)
    with pytest.raises(ConfigError):
        split_frame(df, target="y", task="binary", test_size=-0.1)
    with pytest.raises(ConfigError):
        split_frame(df, target="y", task="ranking")
    with pytest.raises(ConfigError):
        split_frame(df, target="y", task="binary", group_column="user", split_column="user")
    with pytest.raises(DataError, match="too few rows"):
        split_frame(df.head(2), target="y", task="binary")
