"""Column roles, task inference, row dropping, target encoding and model input texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunesmith.data.io import read_table
from tunesmith.data.schema import Schema, infer_schema, label_string
from tunesmith.data.validate import DropReport, encode_target, prepare_frame, texts_of
from tunesmith.errors import ArtifactError, ConfigError, DataError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TEXTS = [
    "a lovely film with a warm heart",
    "dull and slow, far too long",
    "the cast is great and the plot is smart",
    "I walked out after an hour",
    "worth every minute of it",
    "not my kind of story at all",
]


def frame(target: list, **extra: list) -> pd.DataFrame:
    n = len(target)
    return pd.DataFrame({"text": [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(n)], "y": target, **extra})


# --- roles ----------------------------------------------------------------------------------


def test_roles_of_the_reviews_asset() -> None:
    schema = infer_schema(read_table(ASSETS / "reviews.csv"), "label")
    assert schema.text_columns == ("text",)
    assert schema.categorical_columns == ("user",)
    assert schema.numeric_columns == ()
    # review_id is unique per row: an identifier, in neither feature list.
    assert schema.ignored_columns == ("review_id",)
    assert schema.task == "binary"
    assert schema.labels == ("negative", "positive")


def test_roles_numeric_categorical_text_and_ids() -> None:
    n = 30
    df = frame(
        ["a", "b", "c"] * 10,
        price=np.linspace(1.5, 99.0, n),
        rating=[1, 2, 3, 4, 5] * 6,
        color=["red", "blue"] * 15,
        flag=[True, False, True] * 10,
        sku=[f"SKU-{i:04d}" for i in range(n)],
        order_id=np.arange(500, 500 + n) * 7,
        row_counter=np.arange(n)[::-1],
        when=pd.date_range("2024-01-01", periods=n),
        empty=[None] * n,
        title=[f"title {i}" for i in range(n)],
    )
    schema = infer_schema(df, "y")
    assert schema.text_columns == ("text", "title")  # unique ratio > 0.5
    assert schema.numeric_columns == ("price", "rating")
    assert schema.categorical_columns == ("color", "flag")
    assert set(schema.ignored_columns) == {"sku", "order_id", "row_counter", "when", "empty"}
    assert schema.task == "multiclass"


def test_explicit_text_columns_and_ignore() -> None:
    df = frame(["a", "b"] * 5, body=[f"long body text number {i}" for i in range(10)], group=["g1", "g2"] * 5)
    schema = infer_schema(df, "y", text_column="body", ignore=["group"])
    assert schema.text_columns == ("body",)
    # Other text-like columns are left out when the text column is given.
    assert "text" in schema.ignored_columns and "group" in schema.ignored_columns
    assert infer_schema(df, "y", text_column=["text", "body"]).text_columns == ("text", "body")


def test_missing_target_column_suggests_the_closest() -> None:
    with pytest.raises(DataError) as info:
        infer_schema(frame(["a", "b"]), "Y ", file="data.csv")
    err = info.value
    assert err.column == "Y " and "data.csv" in str(err)
    assert err.hint and "Did you mean 'y'" in err.hint and "'text'" in err.hint


def test_missing_text_column() -> None:
    with pytest.raises(DataError) as info:
        infer_schema(frame(["a", "b"]), "y", text_column="txt", file="data.csv")
    assert info.value.column == "txt" and "Did you mean 'text'" in str(info.value)


def test_target_cannot_be_the_text_column() -> None:
    with pytest.raises(DataError, match="cannot also be the text column"):
        infer_schema(frame(["a", "b"]), "y", text_column="y")


def test_no_text_column_found() -> None:
    df = pd.DataFrame({"x": [1.0, 2.5, 3.5, 4.5], "c": ["a", "b", "a", "b"], "y": [0, 1, 0, 1]})
    with pytest.raises(DataError) as info:
        infer_schema(df, "y", file="t.csv")
    assert "no text column found" in str(info.value) and "t.csv" in str(info.value)
    assert info.value.hint and "--text-column" in info.value.hint


def test_no_text_column_mentions_id_like_candidates() -> None:
    df = pd.DataFrame({"word": [f"w{i}" for i in range(25)], "y": [0, 1] * 12 + [0]})
    with pytest.raises(DataError, match="'word' look"):
        infer_schema(df, "y")
    assert infer_schema(df, "y", text_column="word").text_columns == ("word",)


# --- task -----------------------------------------------------------------------------------


def test_task_binary_from_strings_and_bools() -> None:
    assert infer_schema(frame(["pos", "neg", "pos"]), "y").task == "binary"
    schema = infer_schema(frame([True, False, True]), "y")
    assert schema.task == "binary" and schema.labels == ("False", "True")


def test_task_multiclass_from_small_integers_sorted_numerically() -> None:
    schema = infer_schema(frame([10, 2, 1, 2, 10, 1]), "y")
    assert schema.task == "multiclass"
    assert schema.labels == ("1", "2", "10")
    assert schema.label_to_index == {"1": 0, "2": 1, "10": 2}


def test_integer_labels_read_as_floats_keep_their_names() -> None:
    # A CSV integer column with a gap reads as float: 0.0/1.0 must stay "0"/"1".
    schema = infer_schema(frame([0.0, 1.0, None, 1.0]), "y")
    assert schema.task == "binary" and schema.labels == ("0", "1")
    assert label_string(1.0) == "1" and label_string(np.int64(3)) == "3" and label_string(" a ") == "a"


def test_task_regression_from_fractions_or_many_values() -> None:
    assert infer_schema(frame([0.5, 1.25, 3.0, 2.0]), "y").task == "regression"
    schema = infer_schema(frame(list(range(25))), "y")
    assert schema.task == "regression" and schema.labels is None


def test_task_override() -> None:
    schema = infer_schema(frame(list(range(25))), "y", task="multiclass")
    assert schema.task == "multiclass" and len(schema.labels or ()) == 25
    assert infer_schema(frame([0, 1, 0, 1]), "y", task="regression").task == "regression"
    assert infer_schema(frame([0, 1, 0, 1]), "y", task="auto").task == "binary"
    assert infer_schema(frame(["a", "b"]), "y", task="multiclass").task == "multiclass"


def test_invalid_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        infer_schema(frame(["a", "b"]), "y", task="classify")
    assert info.value.key == "task" and "classify" in str(info.value)


def test_binary_override_needs_two_classes() -> None:
    with pytest.raises(DataError, match="exactly 2 classes"):
        infer_schema(frame(["a", "b", "c"]), "y", task="binary")


def test_one_class_target() -> None:
    df = read_table(ASSETS / "one_class.csv")
    with pytest.raises(DataError) as info:
        infer_schema(df, "label", file="one_class.csv")
    err = info.value
    assert err.column == "label" and "one_class.csv" in str(err)
    assert "only one class ('positive')" in err.message


def test_schema_round_trips_through_json() -> None:
    schema = infer_schema(read_table(ASSETS / "reviews.csv"), "label")
    again = Schema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert again == schema
    with pytest.raises(ArtifactError):
        Schema.from_dict({"task": "binary"})
    with pytest.raises(ArtifactError):
        Schema.from_dict({**schema.to_dict(), "task": "ranking"})


# --- prepare_frame --------------------------------------------------------------------------


def test_drops_counted_per_reason_with_rows() -> None:
    df = read_table(ASSETS / "nan_target.csv")
    schema = infer_schema(df, "label")
    out, report = prepare_frame(df, schema, file="nan_target.csv")
    assert report.total_rows_in == 8 and report.rows_out == 5 and len(out) == 5
    assert report.missing_target == 2 and report.missing_text == 1
    assert report.example_rows == {"missing_target": [2, 6], "missing_text": [5]}
    assert report.summary() == "dropped 3 of 8 rows: 2 missing target (rows 2, 6), 1 missing text (row 5)"
    assert report and report.to_dict()["dropped_total"] == 3
    json.dumps(report.to_dict())
    assert out["__row__"].tolist() == [1, 3, 4, 7, 8]
    assert out["label"].tolist() == ["positive", "positive", "negative", "positive", "negative"]


def test_nothing_dropped_report_is_falsy() -> None:
    df = frame(["a", "b"])
    out, report = prepare_frame(df, infer_schema(df, "y"))
    assert not report and report.summary() == "dropped 0 of 2 rows"
    assert isinstance(report, DropReport)
    # The input frame is left alone.
    assert "__row__" not in df.columns and out["__row__"].tolist() == [1, 2]


def test_missing_target_as_error_names_first_row() -> None:
    df = frame(["a", None, "b", ""])
    with pytest.raises(DataError) as info:
        prepare_frame(df, infer_schema(df, "y"), file="f.csv", on_missing_target="error")
    assert info.value.row == 2 and info.value.column == "y" and "f.csv" in str(info.value)


def test_all_rows_dropped_is_an_error() -> None:
    df = pd.DataFrame({"text": [None, "  "], "y": ["a", "b"]})
    schema = Schema(target="y", task="binary", text_columns=("text",), labels=("a", "b"))
    with pytest.raises(DataError, match="no usable rows"):
        prepare_frame(df, schema)


def test_row_kept_only_when_some_text_column_has_text() -> None:
    df = pd.DataFrame({"t1": ["x", None, None], "t2": [None, "y", " "], "y": ["a", "b", "a"]})
    schema = Schema(target="y", task="binary", text_columns=("t1", "t2"), labels=("a", "b"))
    out, report = prepare_frame(df, schema)
    assert out["__row__"].tolist() == [1, 2] and report.missing_text == 1
    assert out["t1"].tolist() == ["x", ""] and out["t2"].tolist() == ["", "y"]


def test_regression_target_must_be_numeric() -> None:
    schema = Schema(target="y", task="regression", text_columns=("text",))
    out, _ = prepare_frame(frame(["1.5", 2, "3e2"]), schema)
    assert out["y"].tolist() == [1.5, 2.0, 300.0]
    with pytest.raises(DataError) as info:
        prepare_frame(frame([1.0, "lots", 2.0]), schema, file="r.csv")
    assert info.value.row == 2 and "'lots'" in str(info.value) and "r.csv" in str(info.value)
    with pytest.raises(DataError, match="infinite") as info:
        prepare_frame(frame([1.0, 2.0, float("-inf")]), schema)
    assert info.value.row == 3


def test_row_numbers_survive_drops_in_later_errors() -> None:
    schema = Schema(target="y", task="regression", text_columns=("text",))
    with pytest.raises(DataError) as info:
        prepare_frame(frame([None, 1.0, "x"]), schema)
    assert info.value.row == 3  # not 2, though row 1 was dropped first


def test_missing_columns_in_prepare() -> None:
    schema = Schema(target="y", task="binary", text_columns=("body",), labels=("a", "b"))
    with pytest.raises(DataError) as info:
        prepare_frame(frame(["a", "b"]), schema, file="e.csv")
    assert info.value.column == "body" and "e.csv" in str(info.value)


# --- encode_target ----------------------------------------------------------------------------


def test_encode_classification_and_regression() -> None:
    df = frame([1, 0, 1, 1])
    schema = infer_schema(df, "y")
    out, _ = prepare_frame(df, schema)
    codes = encode_target(out["y"], schema)
    assert codes.dtype == np.int64 and codes.tolist() == [1, 0, 1, 1]
    reg = Schema(target="y", task="regression", text_columns=("text",))
    values = encode_target(prepare_frame(frame([1.5, 2.0]), reg)[0]["y"], reg)
    assert values.dtype == np.float32 and values.tolist() == [1.5, 2.0]


def test_unseen_label_at_evaluation_names_its_row() -> None:
    train = frame(["pos", "neg", "pos"])
    schema = infer_schema(train, "y")
    evaluation = frame(["neg", None, "pos", "meh", "meh"])
    out, report = prepare_frame(evaluation, schema, file="eval.csv")
    assert report.missing_target == 1
    with pytest.raises(DataError) as info:
        encode_target(out["y"], schema, file="eval.csv")
    err = info.value
    assert err.row == 4 and err.column == "y"  # original row, despite the dropped row 2
    assert "eval.csv" in str(err) and "'meh'" in err.message and "'neg', 'pos'" in err.message
    assert "2 rows" in err.message and err.hint and "Retrain" in err.hint
    # A whole prepared frame works too; a plain series counts positions.
    with pytest.raises(DataError) as info:
        encode_target(out, schema)
    assert info.value.row == 4
    with pytest.raises(DataError) as info:
        encode_target(pd.Series(["pos", "x"]), schema)
    assert info.value.row == 2


# --- texts_of -------------------------------------------------------------------------------


def test_texts_join_text_columns_and_append_extras() -> None:
    df = pd.DataFrame(
        {
            "title": ["Great", "Bad!", None],
            "body": ["loved it", "hated it", "so so"],
            "year": [1999.0, np.nan, 2001.5],
            "genre": ["drama", "comedy", None],
        }
    )
    schema = Schema(
        target="y",
        task="binary",
        text_columns=("title", "body"),
        numeric_columns=("year",),
        categorical_columns=("genre", "absent"),
        labels=("a", "b"),
    )
    assert texts_of(df, schema) == [
        "Great. loved it | year: 1999 | genre: drama",
        "Bad! hated it | genre: comedy",
        "so so | year: 2001.5",
    ]


def test_a_column_named_text_is_always_text() -> None:
    # What fit(texts, labels) builds: short, repeated or one-word texts stay text.
    words = pd.DataFrame({"text": [f"w{i}" for i in range(30)], "y": [0, 1] * 15})
    assert infer_schema(words, "y").text_columns == ("text",)
    short = pd.DataFrame({"text": ["good", "bad"] * 15, "y": [1, 0] * 15})
    assert infer_schema(short, "y").text_columns == ("text",)


def test_example_rows_are_capped_and_summary_stays_short() -> None:
    df = frame([None] * 30 + ["a", "b"])
    out, report = prepare_frame(df, infer_schema(df, "y"))
    assert report.missing_target == 30 and len(report.example_rows["missing_target"]) == 20
    assert report.summary() == "dropped 30 of 32 rows: 30 missing target (rows 1, 2, 3, 4, 5, ...)"
    assert out["__row__"].tolist() == [31, 32]
    with pytest.raises(ConfigError):
        prepare_frame(df, infer_schema(df, "y"), on_missing_target="skip")  # type: ignore[arg-type]


def test_resolve_data_infers_the_schema_once_and_validates_the_frame():
    from tunesmith.data.validate import encode_split, resolve_data

    df = pd.DataFrame({"text": ["good film here", "bad film here", None, "fine film", "dull"], "y": [1, 0, 1, None, 0]})
    data = resolve_data(df, "y", file="d.csv")
    assert data.schema.task == "binary" and data.schema.labels == ("0", "1")
    assert data.label_values == [0, 1]
    assert data.drops.missing_target == 1 and data.drops.missing_text == 1
    assert list(data.frame["__row__"]) == [1, 2, 5]
    split = encode_split(data.frame, data.schema, file=data.file)
    assert list(split.y) == [1, 0, 0] and split.texts == ["good film here", "bad film here", "dull"]
    assert len(split) == 3 and encode_split(data.frame.iloc[:0], data.schema).y is None


def test_restore_label_values_gives_labels_back_in_the_users_type():
    from tunesmith.data.schema import label_values, restore_label_values

    assert list(restore_label_values(["0", "1"], [0, 1])) == [0, 1]
    assert list(restore_label_values(["False", "True"], [False, True])) == [False, True]
    assert list(restore_label_values(["a", "b"], ["a", "b"])) == ["a", "b"]
    assert label_values(["1", "2"], pd.Series([1.0, 2.0, None])) == [1, 2]
