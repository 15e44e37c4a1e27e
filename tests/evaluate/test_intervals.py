"""Bootstrap intervals, gain verdicts, the small-test warning, the target check and the fit record."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tunesmith.data.targets import check_target_classes
from tunesmith.errors import ConfigError, DataError
from tunesmith.estimators.record import write_fit_record
from tunesmith.evaluate import intervals as iv
from tunesmith.evaluate.intervals import (
    LARGER,
    WITHIN,
    TestPredictions,
    add_intervals,
    bootstrap_intervals,
    gain_verdict,
)
from tunesmith.evaluate.metrics import compute_metrics
from tunesmith.runs.record import RunRecord
from tunesmith.runs.report import render_report


def _binary(n: int, signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(y * signal + rng.random(n) * (1 - signal), 0, 1)
    return y, np.column_stack([1 - p1, p1])


# --- the vectorised metrics agree with scikit-learn's --------------------------------------------


@pytest.mark.parametrize("k", [2, 4])
def test_vectorised_metrics_match_compute_metrics_on_each_resample(k):
    rng = np.random.default_rng(1)
    n = 120
    y = np.sort(rng.integers(0, k, n))  # sorted by class, as bootstrap_intervals arranges them
    proba = rng.dirichlet(np.ones(k), n)
    proba[:10] = proba[0]  # ties in the scores
    edges = np.flatnonzero(np.diff(y)) + 1
    blocks = list(zip([0, *edges.tolist()], [*edges.tolist(), n], strict=True))
    scorer = iv._Scorer("binary" if k == 2 else "multiclass", y, proba, blocks)
    idx = next(iv._resamples(blocks, n, 5, seed=3))
    got = scorer(idx)
    for r in range(idx.shape[0]):
        want = compute_metrics("multiclass", y[idx[r]], proba[idx[r]])
        for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "log_loss"):
            assert got[name][r] == pytest.approx(want[name], abs=1e-9), name


def test_vectorised_regression_metrics_match():
    rng = np.random.default_rng(2)
    y = rng.normal(size=50)
    pred = y + rng.normal(size=50)
    scorer = iv._Scorer("regression", y, pred, [(0, 50)])
    idx = next(iv._resamples([(0, 50)], 50, 4, seed=0))
    got = scorer(idx)
    for r in range(4):
        want = compute_metrics("regression", y[idx[r]], pred[idx[r]])
        for name in ("mae", "rmse", "r2"):
            assert got[name][r] == pytest.approx(want[name], abs=1e-9)


# --- intervals ----------------------------------------------------------------------------------


def test_intervals_contain_the_point_estimate_and_are_reproducible():
    y, p = _binary(500, 0.3)
    out = bootstrap_intervals(TestPredictions("binary", y, p, ["a", "b"]))
    point = compute_metrics("binary", y, p)
    assert out["n"] == 500 and out["stratified"] and out["n_resamples"] == 1000
    for name, (lo, hi) in out["metrics"].items():
        assert lo <= point[name] <= hi, name
    assert 0.03 < out["metrics"]["accuracy"][1] - out["metrics"]["accuracy"][0] < 0.15
    again = bootstrap_intervals(TestPredictions("binary", y, p, ["a", "b"]))
    assert again["metrics"] == out["metrics"]
    other = bootstrap_intervals(TestPredictions("binary", y, p, ["a", "b"]), seed=1)
    assert other["metrics"] != out["metrics"]
    assert out["warnings"] == []
    json.dumps(out)  # JSON-safe


def test_ten_thousand_rows_are_fast():
    y, p = _binary(10_000, 0.3)
    preds = TestPredictions("binary", y, p)
    start = time.process_time()
    bootstrap_intervals(preds)
    # about 0.35 s of CPU on the 2-core development machine; generous for slower CI
    assert time.process_time() - start < 3.0


def test_paired_gain_says_larger_than_the_noise():
    y, p = _binary(1000, 0.4)
    _, weak = _binary(1000, 0.0, seed=5)
    out = bootstrap_intervals(TestPredictions("binary", y, p, baselines={"weak": weak}))
    gain = out["gains"]["weak"]
    assert gain["paired"] and gain["better"] and gain["metric"] == "accuracy"
    assert gain["verdict"] == LARGER and gain["ci"][0] > 0
    assert gain["gain"] == pytest.approx(
        compute_metrics("binary", y, p)["accuracy"] - compute_metrics("binary", y, weak)["accuracy"]
    )
    assert set(out["baselines"]["weak"]) >= {"accuracy", "f1_macro"}


def test_gain_within_the_noise_is_called_out():
    y, p = _binary(60, 0.3)
    noisy = p.copy()
    noisy[:3] = noisy[:3, ::-1]  # the same model with three rows flipped
    out = bootstrap_intervals(TestPredictions("binary", y, p, baselines={"twin": noisy}))
    assert out["gains"]["twin"]["verdict"] == WITHIN
    assert any("within the noise" in w and "'twin'" in w for w in out["warnings"])


def test_unpaired_check_when_only_scores_are_known():
    y, p = _binary(400, 0.3)
    out = bootstrap_intervals(
        TestPredictions("binary", y, p),
        baseline_metrics={"far": {"accuracy": 0.3}, "close": {"accuracy": 0.7}, "none": {"accuracy": None}},
    )
    assert out["gains"]["far"] == {**out["gains"]["far"], "paired": False, "verdict": LARGER, "ci": None}
    assert out["gains"]["close"]["verdict"] == WITHIN
    assert "none" not in out["gains"]


def test_regression_gain_lower_is_better():
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    out = bootstrap_intervals(
        TestPredictions("regression", y, y + 0.1 * rng.normal(size=300), baselines={"mean": np.zeros(300)})
    )
    gain = out["gains"]["mean"]
    assert gain["metric"] == "rmse" and gain["gain"] < 0 and gain["better"] and gain["verdict"] == LARGER
    assert not out["stratified"]


def test_four_row_test_split_is_called_out():
    out = bootstrap_intervals(TestPredictions("binary", [0, 1, 0, 1], [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0, 1]]))
    assert out["metrics"]["accuracy"] == [1.0, 1.0]
    assert out["warnings"] and "only 4 rows" in out["warnings"][0]


def test_wide_accuracy_interval_warns():
    y, p = _binary(40, 0.05)
    out = bootstrap_intervals(TestPredictions("binary", y, p))
    assert any("points wide" in w for w in out["warnings"])


def test_diverged_outputs_and_bad_input():
    y, p = _binary(50, 0.3)
    bad = p.copy()
    bad[0, 0] = np.nan
    out = bootstrap_intervals(TestPredictions("binary", y, bad, baselines={"ok": p}))
    assert out["metrics"] == {} and "NaN" in out["warnings"][-1] and out["baselines"]["ok"]
    with pytest.raises(DataError, match="outputs for"):
        TestPredictions("binary", y, p[:10])
    with pytest.raises(ConfigError):
        TestPredictions("ranking", y, p)
    with pytest.raises(ConfigError):
        bootstrap_intervals(TestPredictions("binary", y, p), n_resamples=0)


def test_helpers():
    assert gain_verdict([0.01, 0.2]) == LARGER and gain_verdict([-0.2, -0.01]) == LARGER
    assert gain_verdict([-0.01, 0.2]) == WITHIN
    assert add_intervals({"accuracy": 0.9, "n": 5}, {"accuracy": (0.8, 1.0)}) == {
        "accuracy": 0.9,
        "accuracy_ci": [0.8, 1.0],
        "n": 5,
    }


# --- the target check -----------------------------------------------------------------------------


def test_check_target_classes():
    check_target_classes(["a", "b", "a", "b"], column="label")
    check_target_classes(["a", "b", "c"] * 4 + [None, None], column="label")
    with pytest.raises(DataError, match="4 distinct classes in 4 rows") as err:
        check_target_classes(["w", "x", "y", "z"], column="id", file="data.csv")
    assert err.value.column == "id" and err.value.file == "data.csv"
    assert "Pick the column" in str(err.value)
    with pytest.raises(DataError, match="regression"):
        check_target_classes([float(i) for i in range(18)] + [1.0, 2.0], column="price")


# --- the fit record -----------------------------------------------------------------------------------


def _info(y, p, n):
    labels = ["neg", "pos"]
    return {
        "title": "demo",
        "kind": "tabular",
        "task": "binary",
        "labels": labels,
        "metrics": compute_metrics("binary", y, p, labels),
        "baselines": {
            "majority": {**compute_metrics("binary", y, np.tile([0.5, 0.5], (n, 1)), labels), "model": "majority"},
            "tfidf": {"accuracy": 0.55},
        },
        "config": {"seed": 3, "epochs": 2},
        "data": {"file": "d.csv", "sha256": "ab" * 32, "rows": {"train": 400, "test": n}},
        "training": {"epochs_run": 2},
    }


def test_write_fit_record_writes_every_file(tmp_path):
    n = 200
    y, p = _binary(n, 0.4)
    record = RunRecord.create(tmp_path, "demo")
    history = [
        {"epoch": 1, "train_loss": 0.6, "valid_loss": 0.6, "valid_accuracy": 0.7},
        {"epoch": 2, "train_loss": 0.4, "valid_loss": 0.5, "valid_accuracy": 0.8, "best": True},
    ]
    preds = TestPredictions("binary", y, p, ["neg", "pos"], {"majority": np.tile([0.5, 0.5], (n, 1))})
    written = write_fit_record(record, _info(y, p, n), history=history, predictions=preds)
    names = {f.name for f in record.path.iterdir()}
    assert names >= {
        "config.yaml",
        "data.json",
        "environment.json",
        "metrics.json",
        "metrics.jsonl",
        "report.md",
        "learning_curves.png",
        "confusion_matrix.png",
    }
    metrics = json.loads((record.path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(written))
    assert isinstance(metrics["test"]["accuracy"], float)  # old readers keep working
    lo, hi = metrics["test"]["accuracy_ci"]
    assert lo <= metrics["test"]["accuracy"] <= hi
    assert "accuracy_ci" in metrics["baselines"]["majority"]
    assert metrics["gains"]["majority"]["verdict"] == LARGER
    assert metrics["gains"]["tfidf"]["paired"] is False
    assert metrics["intervals"]["n_resamples"] == 1000 and metrics["training"] == {"epochs_run": 2}
    assert json.loads((record.path / "environment.json").read_text())["seed"] == 3
    assert len(record.history()) == 2
    report = (record.path / "report.md").read_text()
    assert f"{metrics['test']['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" in report
    assert "larger than the noise (paired bootstrap)" in report
    assert "unpaired" in report
    assert "pandas.read_csv" in report and "Texts longer" not in report


def test_write_fit_record_small_split_and_regression(tmp_path):
    record = RunRecord.create(tmp_path, "tiny")
    y = np.array([0, 1, 0, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    info = {**_info(y, p, 4), "baselines": {}}
    written = write_fit_record(record, info, predictions=TestPredictions("binary", y, p, ["neg", "pos"]))
    assert "only 4 rows" in written["warnings"][0]
    report = (record.path / "report.md").read_text()
    assert report.index("**Warning:** The test split has only 4 rows") < report.index("## Test metrics")

    reg = RunRecord.create(tmp_path, "reg")
    yr = np.linspace(0, 1, 50)
    info = {"title": "r", "task": "regression", "metrics": compute_metrics("regression", yr, yr + 0.1)}
    written = write_fit_record(reg, info, predictions=TestPredictions("regression", yr, yr + 0.1))
    assert "rmse_ci" in written["test"] and (reg.path / "residuals.png").is_file()


def test_write_fit_record_without_predictions(tmp_path):
    record = RunRecord.create(tmp_path, "plain")
    written = write_fit_record(record, {"title": "p", "task": "binary", "metrics": {"accuracy": 0.8, "n": 100}})
    assert written["intervals"] is None and written["test"] == {"accuracy": 0.8, "n": 100}
    assert (record.path / "report.md").is_file()


def test_report_warns_on_small_split_without_intervals():
    text = render_report({"task": "binary", "metrics": {"accuracy": 1.0, "n": 4}})
    assert "**Warning:** The test split has only 4 rows" in text
    assert "Warning" not in render_report({"task": "binary", "metrics": {"accuracy": 0.9, "n": 400}})


# --- means of per-row values (a recommender's per-user NDCG and hit rate) -------------------


def test_mean_intervals_are_paired_seeded_and_fast() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    hr = (rng.random(n) < 0.3).astype(float)
    ndcg = hr * rng.random(n)
    pop_hr = (rng.random(n) < 0.1).astype(float)
    values = {"ndcg@10": ndcg, "hr@10": hr}
    base = {"popularity": {"ndcg@10": pop_hr * 0.5, "hr@10": pop_hr}}
    started = time.perf_counter()
    out = iv.bootstrap_mean_intervals(values, baselines=base, unit="users")
    assert time.perf_counter() - started < 5.0
    assert out["n"] == n and out["n_resamples"] == 1000 and not out["warnings"]
    lo, hi = out["metrics"]["hr@10"]
    assert lo < hr.mean() < hi and hi - lo < 0.04
    gain = out["gains"]["popularity"]
    assert gain["metric"] == "ndcg@10" and gain["paired"] and gain["verdict"] == LARGER and gain["ci"][0] > 0
    assert gain["by_metric"]["hr@10"]["verdict"] == LARGER
    again = iv.bootstrap_mean_intervals(values, baselines=base, unit="users")
    assert again["metrics"] == out["metrics"]  # fixed seed, same intervals


def test_mean_intervals_warn_on_few_users_and_noise() -> None:
    values = {"ndcg@10": np.array([1.0, 0.0, 0.5, 0.0, 1.0, 0.0])}
    out = iv.bootstrap_mean_intervals(
        values, baselines={"popularity": {"ndcg@10": np.array([0.0, 1.0, 0.5, 0.0, 1.0, 0.0])}}, unit="users"
    )
    assert "only 6 users" in out["warnings"][0]
    assert out["gains"]["popularity"]["verdict"] == WITHIN
    with pytest.raises(DataError, match="rows"):
        iv.bootstrap_mean_intervals(values, baselines={"b": {"ndcg@10": np.zeros(3)}})
    with pytest.raises(ConfigError):
        iv.bootstrap_mean_intervals(values, primary="mrr")
