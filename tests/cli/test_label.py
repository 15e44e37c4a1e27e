"""``tunesmith label``: a batch file to fill in, merged back as answers; errors without a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.cli.test_cli import cli as run_cli
from tests.conftest import make_reviews
from tests.quality.test_labeling import blobs, pool_with
from tunesmith import FineTuner
from tunesmith.cli.label import _estimator


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit status, stdout with its line wrapping undone, stderr)."""
    code, out, err = run_cli(capsys, *args)
    return code, " ".join(out.split()), err


@pytest.fixture
def table(tmp_path: Path) -> tuple[Path, pd.Series]:
    pool = pool_with(80, 12)
    truth = pool.pop("truth")
    path = tmp_path / "pool.csv"
    pool.to_csv(path, index=False)
    truth.index = range(1, len(truth) + 1)  # the command's row ids: 1-based data rows
    return path, truth


def fill(batch: Path, truth: pd.Series, blank: int = 0) -> pd.DataFrame:
    filled = pd.read_csv(batch)
    filled["label"] = [truth[r] for r in filled["row"]]
    filled.loc[: blank - 1, "label"] = None
    filled.to_csv(batch, index=False)
    return filled


def test_a_batch_is_written_filled_in_and_merged(capsys: pytest.CaptureFixture[str], table: tuple) -> None:
    data, truth = table
    code, out, err = cli(capsys, "label", str(data), "-t", "label", "--batch-size", "6", "--review-share", "0")
    assert code == 0, err
    batch = data.with_name("pool.batch.csv")
    written = pd.read_csv(batch)
    assert list(written.columns) == ["row", "kind", "guess", "confidence", "given_label", "x1", "x2", "label"]
    assert len(written) == 6 and set(written["kind"]) == {"query"} and written["label"].isna().all()
    assert written["row"].between(13, 80).all() and written["guess"].isin(["no", "yes"]).all()
    assert "wrote 6 rows" in out and "--merge" in out

    code, _, err = cli(capsys, "label", str(data), "-t", "label")
    assert code == 2 and "was not merged" in err  # a filled-in file is never overwritten unmerged

    filled = fill(batch, truth, blank=1)
    code, out, err = cli(capsys, "label", str(data), "-t", "label", "--batch-size", "6", "--merge", str(batch))
    assert code == 0, err
    assert "merged 5 answer(s)" in out and "1 left blank" in out and "17 labeled" in out
    events = [json.loads(line) for line in data.with_name("pool.labels.jsonl").read_text().splitlines()]
    labels = {e["row"]: e["label"] for e in events if e["event"] == "label"}
    assert labels == {int(r): truth[r] for r in filled["row"][1:]}
    next_batch = pd.read_csv(batch)
    assert len(next_batch) == 6 and not set(next_batch["row"]) & set(labels)
    assert [n for n, _ in _curve(events)] == [12, 17]

    # the same answers merged twice are not written twice
    next_batch["label"] = None
    next_batch.loc[: len(filled) - 1, ["row", "label"]] = filled[["row", "label"]].to_numpy()
    next_batch.to_csv(batch, index=False)
    exported = data.with_name("out.parquet")
    code, out, _ = cli(capsys, "label", str(data), "-t", "label", "--merge", str(batch), "--export", str(exported))
    assert code == 0 and "5 already given" in out and "(17 labeled)" in out
    assert pd.read_parquet(exported)["label"].notna().sum() == 17


def test_with_one_class_merged_the_next_batch_still_comes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data, batch = tmp_path / "pool.csv", tmp_path / "pool.batch.csv"
    blobs(40, 1).drop(columns=["truth"]).to_csv(data, index=False)  # not one label yet
    args = ["label", str(data), "-t", "label", "--classes", "no,yes", "--batch-size", "6", "--seed", "3"]
    code, out, err = cli(capsys, *args)
    assert code == 0 and "wrote 6 rows" in out and "no row has a label yet" in out, err
    first = pd.read_csv(batch)
    first["label"] = "yes"  # every answer the same class: no model can be fitted yet
    first.to_csv(batch, index=False)
    code, out, err = cli(capsys, *args, "--merge", str(batch))
    assert code == 0, err
    assert "merged 6 answer(s)" in out and "only class 'yes' has labels so far" in out and "0 fit(s)" in out
    assert "wrote 6 rows" in out and "nothing left to ask" not in out
    second = pd.read_csv(batch)
    assert len(second) == 6 and not set(second["row"]) & set(first["row"]) and second["guess"].isna().all()
    second["label"] = ["no", "yes"] * 3
    second.to_csv(batch, index=False)
    code, out, err = cli(capsys, *args, "--merge", str(batch))  # no --overwrite needed
    assert code == 0 and "1 fit(s)" in out and "has labels so far" not in out, err


def test_a_saved_model_refits_on_every_label(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fast_params: dict
) -> None:
    reviews = make_reviews(40).astype(object)
    saved = FineTuner(**{**fast_params, "epochs": 1, "progress": True})  # the fit defaults: splits, baselines
    folder = saved.fit(reviews[:24], target="label").save(tmp_path / "model")
    assert saved.get_params()["valid_size"] == 0.1 and saved.get_params()["baselines"]
    reviews.loc[10:, "label"] = None
    data = tmp_path / "reviews.jsonl"
    reviews.to_json(data, orient="records", lines=True)
    estimator = _estimator(data, folder, None, "auto", "label", None, None, None)
    params = estimator.get_params()
    overridden = ("valid_size", "test_size", "early_stopping", "baselines", "runs_dir", "progress")
    assert {k: params[k] for k in overridden} == {
        "valid_size": 0.0, "test_size": 0.0, "early_stopping": False, "baselines": False, "runs_dir": None,
        "progress": False,
    }  # fmt: skip
    assert params["strategy"] == "full" and params["epochs"] == 1  # the model's own choices stay
    runs = sorted((tmp_path / "runs").rglob("*"))
    code, out, err = cli(capsys, "label", str(data), "-t", "label", "--model", str(folder), "--batch-size", "4")
    assert code == 0 and "1 fit(s)" in out and "wrote 4 rows" in out, err
    assert sorted((tmp_path / "runs").rglob("*")) == runs  # a round writes no run


def _curve(events: list[dict]) -> list[tuple[int, float]]:
    return [(e["labels"], e["score"]) for e in events if e["event"] == "score"]


def test_user_errors_are_one_line_without_a_traceback(capsys: pytest.CaptureFixture[str], table: tuple) -> None:
    data, _ = table
    bad = data.with_name("bad.csv")
    pd.DataFrame({"row": [20, 21], "label": ["yes", "maybe"]}).to_csv(bad, index=False)
    code, _, err = cli(capsys, "label", str(data), "-t", "label", "--merge", str(bad), "--export", str(bad) + ".out")
    assert code == 2 and "Traceback" not in err
    assert err.strip().startswith("error: ") and "bad.csv, row 2, column 'label'" in err and "'maybe'" in err
    for args, message in (
        (["-t", "nope"], "no column 'nope'"),
        (["-t", "label", "--strategy", "bald"], "unknown query strategy 'bald'"),
        (["-t", "label", "--model", "m", "--backbone", "tiny-text"], "cannot be combined with --model"),
        (["-t", "label", "--merge", str(data)], "has no column 'row'"),
    ):
        code, _, err = cli(capsys, "label", str(data), *args)
        assert code == 2 and message in err and "Traceback" not in err


def test_text_data_gets_a_head_only_text_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    reviews = make_reviews(40).astype(object)
    reviews.loc[10:, "label"] = None
    data = tmp_path / "reviews.jsonl"
    reviews.to_json(data, orient="records", lines=True)
    out_file = tmp_path / "next.csv"
    code, _, err = cli(
        capsys, "label", str(data), "-t", "label", "--backbone", "tiny-text", "--batch-size", "4", "-o", str(out_file),
        "--answers", str(tmp_path / "answers.jsonl"),
    )  # fmt: skip
    assert code == 0, err
    batch = pd.read_csv(out_file)
    assert list(batch.columns) == ["row", "kind", "guess", "confidence", "given_label", "text", "label"]
    assert len(batch) == 4 and batch["guess"].isin(["neg", "pos"]).all()
    assert np.isfinite(batch["confidence"]).all() and (tmp_path / "answers.jsonl").exists()


def test_help_names_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "label", "--help")
    assert code == 0 and "--serve" in out and "--merge" in out and "--review-share" in out
