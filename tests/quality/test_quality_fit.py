"""Data-quality settings of a fit: each step runs on the right rows and is counted in the record."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_reviews
from tunesmith import FineTuner
from tunesmith.errors import ConfigError


def test_duplicates_and_conflicts_are_cleaned_before_the_split(fast_params):
    df = make_reviews(48)
    n_dup = int(df.duplicated(subset=["text", "label"]).sum())
    assert n_dup > 0
    ft = FineTuner(**fast_params, duplicates="drop", conflicts="majority", baselines=False).fit(df, target="label")
    report = ft.cleaning_
    assert report.count("drop_duplicates") + report.count("drop_conflicts") >= n_dup
    assert sum(ft.split_sizes_.values()) == len(df) - report.dropped
    saved = json.loads((ft.run_dir_ / "data.json").read_text()) if (ft.run_dir_ / "data.json").exists() else None
    record = saved or ft.data_info_
    actions = {a["action"]: a["count"] for a in record["cleaning"]["actions"]}
    assert actions.get("drop_duplicates", 0) == report.count("drop_duplicates")
    text = (ft.run_dir_ / "report.md").read_text()
    assert f"cleaning: dropped {report.count('drop_duplicates')} exact duplicate row(s)" in text


def test_label_errors_dropped_from_training_split_only(fast_params):
    df = make_reviews(96)
    flipped = [0, 2, 5]
    df.loc[flipped, "label"] = df.loc[flipped, "label"].map({"pos": "neg", "neg": "pos"})
    df["split"] = ["train"] * 72 + ["valid"] * 12 + ["test"] * 12
    ft = FineTuner(**fast_params, label_errors="drop", label_error_folds=3, split_column="split", baselines=False).fit(
        df, target="label"
    )
    action = next(a for a in ft.cleaning_.actions if a.action == "drop_label_errors")
    assert set(action.rows) <= set(range(1, 73)), "only training rows may be dropped"
    assert {1, 3, 6} & set(action.rows), "at least one flipped row is found"
    assert ft.split_sizes_["train"] == 72 - action.count
    assert ft.split_sizes_["test"] == 12


def test_relabel_keeps_row_count(fast_params):
    df = make_reviews(60)
    df.loc[[0, 1], "label"] = df.loc[[0, 1], "label"].map({"pos": "neg", "neg": "pos"})
    ft = FineTuner(**fast_params, label_errors="relabel", label_error_folds=3, baselines=False).fit(df, target="label")
    action = next(a for a in ft.cleaning_.actions if a.action == "relabel_label_errors")
    assert ft.cleaning_.dropped == 0 and action.count == sum(action.details["changes"].values())


def test_oversampling_and_class_weight(fast_params):
    df = make_reviews(60)
    df = df[(df["label"] == "pos") | (df.index % 6 == 1)].reset_index(drop=True)  # 30 pos, 10 neg
    ft = FineTuner(**fast_params, balance="oversample", valid_size=0.2, test_size=0.2, baselines=False)
    ft.fit(df, target="label")
    action = next(a for a in ft.cleaning_.actions if a.action == "oversample")
    after = action.details["after"]
    assert after["pos"] == after["neg"] and ft.split_sizes_["train"] == sum(after.values())
    weighted = FineTuner(**fast_params, balance="class_weight", baselines=False).fit(df, target="label")
    assert weighted.cleaning_.actions == []
    with pytest.raises(ConfigError, match="balance='class_weight' conflicts with class_weight"):
        FineTuner(**fast_params, balance="class_weight", class_weight={"pos": 1.0}).fit(df, target="label")


def test_augmentation_adds_copies_with_a_seed(fast_params):
    df = make_reviews(40)
    a = FineTuner(**fast_params, augment=["delete", "swap"], augment_copies=2, baselines=False).fit(df, target="label")
    action = next(x for x in a.cleaning_.actions if x.action == "augment")
    assert action.count == 2 * (a.split_sizes_["train"] // 3)
    assert action.details["ops"] == ["delete", "swap"]
    b = FineTuner(**fast_params, augment=["delete", "swap"], augment_copies=2, baselines=False).fit(df, target="label")
    np.testing.assert_allclose(a.predict_proba(df["text"][:5]), b.predict_proba(df["text"][:5]), atol=1e-6)
    with pytest.raises(ConfigError, match="augment"):
        FineTuner(**fast_params, augment=["shuffle"]).fit(df, target="label")


def test_missing_imputed_and_scaled_with_training_values_and_saved(fast_params, tmp_path):
    df = make_reviews(60)
    rng = np.random.default_rng(0)
    df["year"] = rng.integers(1990, 2020, size=60).astype(float)
    df.loc[[3, 10, 50], "year"] = np.nan
    ft = FineTuner(**fast_params, missing="impute", numeric_scaling="robust", baselines=False)
    ft.fit(df, target="label", text_column="text")
    prep = ft.preprocessing_
    assert "year" in prep.impute and prep.scaler is not None
    train_rows = ft.split_sizes_["train"]
    assert ft.cleaning_.count("impute_missing") <= 3 and train_rows > 0
    new = pd.DataFrame({"text": ["great fun movie", "awful boring movie"], "year": [np.nan, 2005.0]})
    before = ft.predict_proba(new)
    ft.save(tmp_path / "m")
    from tunesmith import load

    loaded = load(tmp_path / "m")
    assert loaded.preprocessing_.to_dict() == prep.to_dict()
    np.testing.assert_allclose(loaded.predict_proba(new), before, atol=1e-6)


def test_impute_covers_columns_without_gaps_and_blank_strings(fast_params):
    df = make_reviews(48)
    df["color"] = np.where(np.arange(48) % 3 == 0, "red", "blue")
    df["size"] = np.arange(48, dtype=float)
    ft = FineTuner(**fast_params, missing="impute", baselines=False).fit(df, target="label", text_column="text")
    assert set(ft.preprocessing_.impute) == {"color", "size"}
    filled = ft.preprocessing_.apply(pd.DataFrame({"text": ["x"], "color": [" "], "size": [np.nan]}))
    assert filled["color"].item() == "blue" and filled["size"].item() == pytest.approx(ft.preprocessing_.impute["size"])


def test_cleaning_counts_with_eval_set_and_added_rows(fast_params):
    df = make_reviews(40)
    ft = FineTuner(**fast_params, balance="oversample", augment=["swap"], baselines=False)
    ft.fit(df.iloc[:30], target="label", eval_set=df.iloc[30:])
    report = ft.cleaning_
    assert report.rows_in == 30 and report.dropped == 0 and report.changed == 0
    assert report.added == report.count("oversample") + report.count("augment") > 0
    assert report.rows_out == ft.split_sizes_["train"]


def test_label_error_search_skipped_when_a_class_is_too_small(fast_params):
    df = make_reviews(40)
    df.loc[0, "label"] = "meh"
    df.loc[2, "label"] = "meh"
    with pytest.warns(UserWarning, match="label errors not searched"):
        ft = FineTuner(**fast_params, label_errors="drop", valid_size=0.0, test_size=0.0, baselines=False)
        ft.fit(df, target="label")
    assert ft.cleaning_.actions[-1].action == "skip_label_errors"


def test_useless_augmentation_is_reported(fast_params):
    # The tiny test backbone's random embeddings give no neighbours, so "replace" changes nothing.
    df = make_reviews(30)
    with pytest.warns(UserWarning, match="augmented copies equal their original text"):
        ft = FineTuner(**fast_params, augment=["replace"], baselines=False).fit(df, target="label")
    action = ft.cleaning_.actions[-1]
    assert action.details["unchanged_copies"] == action.count
