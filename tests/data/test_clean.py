"""Cleaning: duplicates, conflicts, missing values, label errors, balance; every action counted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tunesmith.data import infer_schema, prepare_frame
from tunesmith.data.balance import resample
from tunesmith.data.clean import (
    apply_label_issues,
    clean_data,
    clean_frame,
    drop_duplicates,
    handle_missing,
    resolve_conflicts,
)
from tunesmith.data.label_issues import LabelIssues
from tunesmith.errors import ConfigError, DataError


def frame() -> tuple[pd.DataFrame, object]:
    df = pd.DataFrame(
        {
            "text": [
                "great film",  # 1
                "awful film",  # 2
                "great film",  # 3 duplicate of 1
                "Great  FILM",  # 4 same input as 1 (normalised), other label -> conflict
                "dull plot",  # 5
                "dull plot",  # 6 conflict with 5 (tie)
                "fine acting",  # 7
                "bad acting",  # 8
            ],
            "label": ["pos", "neg", "pos", "neg", "neg", "pos", "pos", "neg"],
            "year": [2001.0, np.nan, 2001.0, 2001.0, 2005.0, 2005.0, 2010.0, np.nan],
        }
    )
    schema = infer_schema(df, "label", text_column="text")
    prepared, _ = prepare_frame(df, schema)
    return prepared, schema


def test_drop_duplicates_keeps_first_and_names_rows():
    df, schema = frame()
    out, action = drop_duplicates(df, schema)
    assert action.count == 1 and action.rows == [3]
    assert out["__row__"].tolist() == [1, 2, 4, 5, 6, 7, 8]


def test_conflicts_majority_keeps_winner_and_drops_ties():
    df, schema = frame()
    out, action = resolve_conflicts(df, schema, "majority")
    # "great film" x2 pos vs 1 neg -> drop row 4; "dull plot" 1-1 tie -> drop both.
    assert sorted(action.rows) == [4, 5, 6]
    assert action.details["groups"] == 2 and action.details["tied_groups"] == 1
    assert 1 in out["__row__"].tolist() and 3 in out["__row__"].tolist()


def test_conflicts_drop_and_keep():
    df, schema = frame()
    _, dropped = resolve_conflicts(df, schema, "drop")
    assert sorted(dropped.rows) == [1, 3, 4, 5, 6]
    kept, report = resolve_conflicts(df, schema, "keep")
    assert len(kept) == len(df) and report.count == 0 and sorted(report.rows) == [1, 3, 4, 5, 6]


def test_missing_drop_and_impute_with_train_values():
    df, schema = frame()
    out, action, _ = handle_missing(df, schema, "drop")
    assert action.rows == [2, 8] and len(out) == 6
    imputed, action, fills = handle_missing(df, schema, "impute")
    assert fills == {"year": pytest.approx(2003.0)}
    assert imputed.loc[imputed["__row__"] == 2, "year"].item() == pytest.approx(2003.0)
    assert action.count == 2 and action.details["per_column"] == {"year": 2}
    _, _, given = handle_missing(df, schema, "impute", fill_values={"year": 1.0})
    assert given == {"year": 1.0}


def issues_for(rows: list[int], given: list[str], suggested: list[str]) -> LabelIssues:
    table = pd.DataFrame(
        {"row": rows, "given_label": given, "suggested_label": suggested, "label_quality": 0.1, "is_issue": True}
    )
    return LabelIssues(table, np.zeros((0, 2)), ("neg", "pos"), "fast", 5, 0.0, 0.9)


def test_label_issues_drop_and_relabel():
    df, schema = frame()
    issues = issues_for([7, 8], ["pos", "neg"], ["neg", "pos"])  # rows 7 and 8
    out, action = apply_label_issues(df, schema, issues, "drop")
    assert action.rows == [7, 8] and len(out) == 6
    out, action = apply_label_issues(df, schema, issues, "relabel")
    assert out.loc[out["__row__"] == 7, "label"].item() == "neg"
    assert action.details["changes"] == {"pos -> neg": 1, "neg -> pos": 1}
    with pytest.raises(DataError, match="not in the data"):
        apply_label_issues(df, schema, issues_for([99], ["pos"], ["neg"]), "drop")


def test_clean_frame_reports_every_step_and_validates():
    df, schema = frame()
    out, report = clean_frame(df, schema, duplicates="drop", conflicts="majority", missing="drop")
    assert report.rows_in == 8 and report.rows_out == len(out)
    assert report.count("drop_conflicts") == 3 and report.count("drop_duplicates") == 1
    assert report.dropped == 8 - len(out)
    assert "exact duplicate" in report.summary()
    json.dumps(report.to_dict())
    with pytest.raises(ConfigError, match="setting 'conflicts'"):
        clean_frame(df, schema, conflicts="vote")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs label issues"):
        clean_frame(df, schema, label_errors="drop")


def test_resample_over_and_under_is_seeded_and_counted():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": ["a"] * 8 + ["b"] * 2, "__row__": range(1, 11)})
    over, action = resample(df, "label", "oversample", seed=0)
    assert over["label"].value_counts().to_dict() == {"a": 8, "b": 8}
    assert action.count == 6 and action.details["before"] == {"a": 8, "b": 2}
    again, _ = resample(df, "label", "oversample", seed=0)
    assert again["__row__"].tolist() == over["__row__"].tolist()
    under, action = resample(df, "label", "undersample", seed=0)
    assert under["label"].value_counts().to_dict() == {"a": 2, "b": 2}
    assert action.count == 6 and len(action.rows) == 6 and set(action.rows) <= set(range(1, 9))
    with pytest.raises(ConfigError, match="balance"):
        resample(df, "label", "smote")  # type: ignore[arg-type]


def test_clean_data_keeps_user_columns_and_types(tmp_path):
    df = pd.DataFrame({"review": ["good", "good", "bad", None, "meh"], "stars": [1, 1, 0, 1, 0]})
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    out, report = clean_data(path, "stars", text_column="review", progress=False)
    assert list(out.columns) == ["review", "stars"]
    assert out["review"].tolist() == ["good", "bad", "meh"] and out["stars"].tolist() == [1, 0, 0]
    assert report.count("drop_unusable") == 1 and report.count("drop_duplicates") == 1
    assert report.rows_in == 5 and report.rows_out == 3


def test_clean_data_writes_imputed_values_and_checks_label_errors_after_conflicts(tmp_path):
    from tests.conftest import make_reviews

    df = make_reviews(60)
    df["size"] = np.where(np.arange(60) % 7 == 0, np.nan, np.arange(60, dtype=float))
    # Rows 61-66 repeat rows 1-3 twice with the other label: conflicts the cleaning drops first.
    flipped = df.iloc[:3].assign(label=lambda d: d["label"].map({"pos": "neg", "neg": "pos"}))
    df = pd.concat([df, flipped, flipped], ignore_index=True)
    out, report = clean_data(
        df,
        "label",
        text_column="text",
        missing="impute",
        label_errors="drop",
        backbone="tiny-text",
        folds=3,
        progress=False,
    )
    assert out["size"].notna().all()
    assert report.count("impute_missing") > 0 and report.count("drop_conflicts") > 0
    assert report.rows_out == len(out) and report.dropped == len(df) - len(out)
    labels_action = next(a for a in report.actions if a.action == "drop_label_errors")
    assert not set(labels_action.rows) & set(report.actions[1].rows)


def test_clean_data_refuses_a_bad_row_column():
    df = pd.DataFrame({"text": ["a b c", "d e f", "g h i"], "label": ["x", "y", "x"], "__row__": ["a", "b", "c"]})
    with pytest.raises(DataError, match="reserved"):
        clean_data(df, "label", progress=False)


def test_label_error_fraction_acts_on_the_worst_ranked_rows():
    df, schema = frame()
    table = pd.DataFrame(
        {
            "row": [8, 7, 2, 1],
            "given_label": ["neg", "pos", "neg", "pos"],
            "suggested_label": ["pos", "neg", "pos", "neg"],
            "label_quality": [0.01, 0.05, 0.2, 0.3],
            "is_issue": True,
        }
    )
    issues = LabelIssues(table, np.zeros((0, 2)), ("neg", "pos"), "fast", 5, 0.0, 0.9)
    out, action = apply_label_issues(df, schema, issues, "drop", fraction=0.5)
    assert action.rows == [7, 8] and action.details["flagged"] == 4 and len(out) == len(df) - 2
    with pytest.raises(ConfigError, match="label_error_fraction"):
        apply_label_issues(df, schema, issues, "drop", fraction=0.0)
