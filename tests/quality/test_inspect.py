"""Data inspection: each check finds what was planted, the report files, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_reviews
from tunesmith.cli import main
from tunesmith.data.inspect import inspect_data, near_duplicate_pairs
from tunesmith.errors import ConfigError

FAST = {"backbone": "tiny-text", "folds": 3, "progress": False, "max_length": 32}


def planted() -> pd.DataFrame:
    """80 reviews with one of each problem planted (row numbers are 1-based data rows)."""
    df = make_reviews(80)
    df["leak"] = df["label"].map({"pos": "P", "neg": "N"})  # derived from the label
    df["score"] = np.arange(80, dtype=float)
    df.loc[5, "score"] = 1e6  # row 6: an outlier
    df.loc[7, "score"] = np.nan  # row 8: missing
    df["const"] = 1
    df["age"] = ["30"] * 79 + ["n/a"]  # row 80: a string among numbers
    return df


def test_every_planted_problem_is_found():
    df = planted()
    # Row 14 repeats row 13; rows 21 and 22 share input but not label.
    df.loc[13] = df.loc[12]
    df.loc[21, ["text", "leak", "score"]] = df.loc[20, ["text", "leak", "score"]]
    df.loc[21, "label"] = "pos" if df.loc[20, "label"] == "neg" else "neg"
    report = inspect_data(df.drop(columns=["leak"]), "label", text_column="text", **FAST)
    checks = {f.check: f for f in report.findings}
    assert checks["duplicate_rows"].rows == [14]
    assert checks["conflicting_labels"].count == 2 and checks["conflicting_labels"].rows == [21, 22]
    assert checks["constant_column"].column == "const"
    assert checks["missing_values"].column == "score" and checks["missing_values"].rows == [8]
    assert checks["numeric_outliers"].rows == [6]
    assert checks["mixed_types"].column == "age" and checks["mixed_types"].rows == [80]
    assert "'n/a'" in checks["mixed_types"].title
    assert report.class_counts == df["label"].value_counts().sort_index().to_dict()
    assert "label_errors" in checks or report.label_issues is not None
    assert "leakage" not in checks
    # The leaking column is an error, sorted first.
    leaky = inspect_data(df, "label", text_column="text", label_errors="none", near_duplicates=False, **FAST)
    assert leaky.findings[0].check == "leakage" and leaky.findings[0].column == "leak"
    assert leaky.findings[0].severity == "error" and leaky.has_errors


def test_imbalance_rare_labels_and_truncation():
    df = make_reviews(60)
    df.loc[:5, "label"] = "meh"
    df = pd.concat([df, df[df["label"] == "pos"].assign(text=lambda d: d["text"] + " again")])
    report = inspect_data(df, "label", label_errors="none", near_duplicates=False, **{**FAST, "max_length": 4})
    checks = {f.check: f for f in report.findings}
    assert checks["rare_labels"].details["labels"] == {"meh": 6}
    assert checks["class_balance"].severity == "warning" and report.imbalance_ratio == pytest.approx(54 / 6)
    assert checks["truncation"].count == len(df)


def test_overlap_by_split_column_and_test_file(tmp_path):
    df = make_reviews(40)
    df["split"] = ["train"] * 30 + ["test"] * 10
    df.loc[35, "text"] = df.loc[2, "text"]
    df.loc[35, "label"] = df.loc[2, "label"]
    report = inspect_data(df, "label", split_column="split", label_errors="none", **FAST)
    overlap = report.finding("train_test_overlap")
    assert overlap is not None and 36 in overlap.rows and overlap.severity == "error"
    test = tmp_path / "test.csv"
    df.iloc[30:].drop(columns="split").to_csv(test, index=False)
    train_only = df.iloc[:30].drop(columns="split")
    report = inspect_data(train_only, "label", test=test, label_errors="none", near_duplicates=False, **FAST)
    found = report.finding("train_test_overlap")
    assert found is not None and 6 in found.rows  # row 6 of the test file


def test_group_overlap():
    df = make_reviews(40, users=True)
    df["split"] = ["train"] * 30 + ["test"] * 10
    report = inspect_data(
        df, "label", split_column="split", group_column="user", label_errors="none", near_duplicates=False, **FAST
    )
    found = report.finding("group_overlap")
    assert found is not None and found.column == "user" and found.count == 10


def test_near_duplicate_pairs_skip_identical_texts_and_respect_threshold():
    e = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [1.0, 0.0]])
    pairs, total, crossing = near_duplicate_pairs(e, ["a", "b", "c", "a"], threshold=0.95, sides=np.array([0, 1, 0, 0]))
    assert total == 2 and {(i, j) for i, j, _ in pairs} == {(0, 1), (1, 3)}
    assert all(s >= 0.95 for _, _, s in pairs) and crossing == 2
    # Many near-identical vectors: every pair counted, the list capped, most similar first.
    rng = np.random.default_rng(0)
    many = np.ones((300, 4)) + rng.normal(scale=1e-3, size=(300, 4))
    pairs, total, _ = near_duplicate_pairs(many, [str(i) for i in range(300)], threshold=0.9)
    assert total == 300 * 299 // 2 and len(pairs) == 10_000
    assert [s for _, _, s in pairs] == sorted((s for _, _, s in pairs), reverse=True)


def test_report_files(tmp_path):
    report = inspect_data(planted(), "label", text_column="text", **FAST)
    md = report.write(tmp_path / "out")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["n_rows"] == 80 and data["counts_by_severity"]["error"] == 1
    assert {p for p in data["plots"]} == {"missing", "class_balance", "text_lengths", "label_quality"}
    for name in data["plots"].values():
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert "## Findings" in text and "leakage" in text and "](plots/class_balance.png)" in text


def test_bad_settings():
    with pytest.raises(ConfigError, match="label_errors"):
        inspect_data(make_reviews(20), "label", label_errors="slow", **{**FAST})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="near_duplicate_threshold"):
        inspect_data(make_reviews(20), "label", near_duplicate_threshold=1.5, **FAST)


def test_cli_inspect_and_fail_on(tmp_path, capsys):
    path = tmp_path / "reviews.csv"
    planted().to_csv(path, index=False)
    out = tmp_path / "report"
    args = ["inspect", str(path), "-t", "label", "-o", str(out), "--backbone", "tiny-text", "--folds", "3", "-q"]
    main(args)
    printed = capsys.readouterr().out
    assert "80 rows" in printed and "error" in printed
    saved = json.loads((out / "report.json").read_text())
    assert saved["findings"][0]["check"] == "leakage" and (out / "report.md").is_file()
    with pytest.raises(SystemExit) as exc:
        main([*args, "--fail-on", "error"])
    assert exc.value.code == 1
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(path), "-t", "nope", "-o", str(out), "--backbone", "tiny-text", "-q"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_cli_clean_writes_file_and_report(tmp_path, capsys):
    df = make_reviews(30)
    df = pd.concat([df, df.iloc[:3]], ignore_index=True)
    path = tmp_path / "reviews.csv"
    df.to_csv(path, index=False)
    out = tmp_path / "clean.csv"
    main(["clean", str(path), "-t", "label", "-o", str(out), "-q"])
    cleaned = pd.read_csv(out)
    report = json.loads((tmp_path / "clean.csv.clean.json").read_text())
    dups = next(a for a in report["actions"] if a["action"] == "drop_duplicates")
    assert len(cleaned) == len(df) - dups["count"] and report["rows_out"] == len(cleaned)
    assert {31, 32, 33} <= set(dups["rows"])
    with pytest.raises(SystemExit) as exc:
        main(["clean", str(path), "-t", "label", "-o", str(out), "-q"])
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err


def test_nested_json_values_are_ignored_and_ties_named_once(tmp_path):
    path = tmp_path / "nested.jsonl"
    rows = [
        {"text": t, "label": lab, "tags": ["a", "b"], "meta": {"k": 1}}
        for t, lab in zip(make_reviews(20)["text"], make_reviews(20)["label"], strict=True)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = inspect_data(path, "label", label_errors="none", near_duplicates=False, **FAST)
    roles = {c["column"]: c["role"] for c in report.columns}
    assert roles["tags"] == "ignored" and roles["meta"] == "ignored"
    balance = report.finding("class_balance")
    assert balance is not None and "'neg'" in balance.title and "'pos'" in balance.title
