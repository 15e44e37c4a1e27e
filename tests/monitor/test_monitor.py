"""``tunesmith.monitor``: windows, drift, performance estimation, logs, errors and the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_reviews
from tunesmith.errors import DataError
from tunesmith.monitor import EXIT_ALERT, EXIT_DRIFT, EXIT_OK, build_reference, make_settings, monitor


def scored(n: int, seed: int, *, shift: float = 0.0, hard: float = 0.0) -> pd.DataFrame:
    """A binary task with a model's scores: ``shift`` moves ``x``; ``hard`` mixes in rows near the boundary."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, size=n)
    z = rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n, p=[0.5, 0.3, 0.2])
    logit = 3.0 * z
    near = rng.random(n) < hard
    logit[near] = rng.normal(0, 0.3, size=int(near.sum()))
    p = 1 / (1 + np.exp(-logit))
    y = (rng.random(n) < p).astype(int)
    return pd.DataFrame({"x": x, "z": z, "colour": colour, "score": p, "pred": (p > 0.5).astype(int), "y": y})


def run(ref: pd.DataFrame, cur: pd.DataFrame, **kw: object):  # type: ignore[no-untyped-def]
    return monitor(
        None, ref, cur, target="y", proba="score", prediction="pred", progress_bar=False, embedding_rows=0, **kw
    )


def test_same_distribution_is_ok_and_exits_zero() -> None:
    res = run(scored(6000, 0), scored(3000, 1).drop(columns=["y"]), window_rows=1000)
    assert res.status == "ok" and res.exit_code == EXIT_OK
    assert len(res.result["windows"]) == 3
    signals = {s["name"] for s in res.result["signals"]}
    assert {"input:x", "input:colour", "output:probabilities", "performance:estimated accuracy"} <= signals
    est = res.windows().query("signal == 'performance:estimated accuracy'")
    reference = res.result["reference"]["performance"]["value"]
    assert np.all(np.abs(est.value - reference) < 0.03)


def test_an_input_shift_drifts_names_the_column_and_shows_examples() -> None:
    cur = scored(2000, 2, shift=1.0).drop(columns=["y"])
    res = run(scored(6000, 0), cur, window_rows=1000)
    assert res.status == "drift" and res.exit_code == EXIT_DRIFT
    assert all(w["values"]["input:x"]["drift"] for w in res.result["windows"])
    assert not any(w["values"]["input:z"]["drift"] for w in res.result["windows"])
    top = res.result["top_changes"][0]
    assert top["column"] == "x" and top["windows_drifted"] == 2
    assert "median" in top["summary"] and len(top["examples"]) == 5
    # Examples are the rows that moved most: far above the reference median of about 0.
    assert min(e["x"] for e in top["examples"]) > 2.0


def test_a_large_window_needs_a_large_effect_not_only_a_tiny_p_value() -> None:
    ref = scored(20000, 0)
    cur = scored(20000, 3).drop(columns=["y"])
    cur["x"] += 0.05  # significant at this size, but a twentieth of a standard deviation
    res = run(ref, cur, window_rows=20000, test_rows=20000)
    f = res.result["windows"][0]["values"]["input:x"]
    assert f["p_adjusted"] < 0.05 and f["value"] < 0.1
    assert not f["drift"]


def test_performance_drop_is_estimated_without_labels_and_alerts() -> None:
    # Rows near the decision boundary exist in the reference too, but become common.
    ref = scored(8000, 0, hard=0.1)
    cur = scored(2000, 4, hard=0.6)
    res = run(ref, cur.drop(columns=["y"]), window_rows=1000)
    assert res.status == "alert" and res.exit_code == EXIT_ALERT
    est = res.windows().query("signal == 'performance:estimated accuracy'")
    truth = [(cur.pred == cur.y)[i : i + 1000].mean() for i in (0, 1000)]
    assert np.all(np.abs(est.value.to_numpy() - truth) < 0.05)
    assert res.alerts and "threshold" in res.alerts[0]["message"]


def test_labels_that_arrived_are_joined_and_measured(tmp_path: Path) -> None:
    cur = scored(2000, 5).assign(id=[f"k{i}" for i in range(2000)])
    labels = cur[["id", "y"]].sample(frac=1.0, random_state=0)
    res = run(scored(6000, 0), cur.drop(columns=["y"]), labels=labels, key="id", window_rows=1000)
    real = res.windows().query("signal == 'performance:realized accuracy'")
    truth = [(cur.pred == cur.y)[i : i + 1000].mean() for i in (0, 1000)]
    np.testing.assert_allclose(real.value.to_numpy(), truth)


def test_time_windows_and_a_short_trailing_window() -> None:
    cur = scored(2500, 6).drop(columns=["y"])
    cur["when"] = pd.date_range("2026-01-01", periods=2500, freq="1min")
    res = run(scored(6000, 0), cur, window_time="1D", time_column="when")
    assert [w["label"][:10] for w in res.result["windows"]] == ["2026-01-01", "2026-01-02"]
    res = run(scored(6000, 0), cur.drop(columns=["when"]), window_rows=1210)
    assert [w["rows"] for w in res.result["windows"]] == [1210, 1290]  # the last 80 rows joined the one before


def test_too_few_rows_says_how_many_are_needed() -> None:
    with pytest.raises(DataError, match="has 40 rows; a window needs at least 100 rows"):
        run(scored(2000, 0), scored(40, 1))


def test_a_reference_without_the_model_columns_is_refused(tmp_path: Path, fast_params: dict) -> None:
    from tunesmith import FineTuner

    model = FineTuner(**fast_params).fit(make_reviews(64), target="label")
    with pytest.raises(DataError, match="lacks the model's input column\\(s\\) 'text'"):
        monitor(model, pd.DataFrame({"review": ["a"] * 200, "label": ["pos"] * 200}), make_reviews(200))


def _write_log(path: Path, texts: list[str], proba: np.ndarray, classes: list[str], version: str) -> None:
    from tunesmith.serve.predlog import LogRecord, PredictionLog

    log = PredictionLog(path, fmt="parquet" if path.suffix == ".parquet" else "sqlite", rotate_rows=40)
    log.start()
    now = time.time()
    for i in range(0, len(texts), 2):
        rows = texts[i : i + 2]
        outs = [
            {"label": classes[int(np.argmax(p))], "probabilities": dict(zip(classes, map(float, p), strict=True))}
            for p in proba[i : i + 2]
        ]
        log.write(LogRecord(now + i, f"r{i}", version, "onnx", 200, 3.0, rows, outs))
    log.write(LogRecord(now + 10_000, "bad", version, "onnx", 422, 1.0, ["x"], None, "invalid"))
    log.close()


@pytest.mark.parametrize("suffix", [".sqlite", ".parquet"])
def test_a_prediction_log_with_rotated_files_is_monitored(tmp_path: Path, fast_params: dict, suffix: str) -> None:
    from tunesmith import FineTuner
    from tunesmith.runs.fingerprint import model_version

    model = FineTuner(**fast_params).fit(make_reviews(64), target="label")
    folder = model.save(tmp_path / "model")
    served = make_reviews(240, seed=3)
    proba = model.predict_proba(served)
    classes = [str(c) for c in model.classes_]
    log = tmp_path / f"predictions{suffix}"
    _write_log(log, served["text"].tolist(), proba, classes, model_version(folder))
    assert len(list(tmp_path.glob(f"predictions*{suffix}"))) > 2  # rotated every 40 records
    res = monitor(folder, make_reviews(300, seed=1), log, window_rows=120, progress_bar=False, embedding_rows=50)
    assert res.result["current"]["rows"] == 240
    assert res.result["current"]["dropped"] == {"failed_requests": 1, "rows_of_failed_requests": 1}
    names = {s["name"] for s in res.result["signals"]}
    assert {"input:text.chars", "input:text.oov", "representation:embedding", "output:probabilities"} <= names
    assert res.status in ("ok", "drift")

    with pytest.raises(DataError, match="model version 000000000000, not of this model"):
        other = tmp_path / "other" / "predictions.sqlite"
        other.parent.mkdir()
        _write_log(other, served["text"].tolist(), proba, classes, "000000000000")
        monitor(folder, make_reviews(300, seed=1), other, window_rows=120, progress_bar=False)


def test_out_of_domain_text_drifts_in_the_representation(fast_params: dict) -> None:
    from tunesmith import FineTuner

    model = FineTuner(**fast_params).fit(make_reviews(64), target="label")
    ref = build_reference(model, make_reviews(400, seed=1), settings=make_settings(embedding_rows=100))
    odd = pd.DataFrame({"text": [f"quarterly revenue guidance {i} exceeded consensus" for i in range(300)]})
    res = monitor(model, ref, odd, window_rows=300, embedding_rows=100, progress_bar=False)
    values = res.result["windows"][0]["values"]
    assert values["representation:embedding"]["drift"]
    assert values["input:text.oov"]["drift"]


def test_the_command_line_writes_the_report_and_exits_with_the_status(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tunesmith.cli import app

    scored(6000, 0).to_csv(tmp_path / "ref.csv", index=False)
    scored(2000, 2, shift=1.0).drop(columns=["y"]).to_csv(tmp_path / "cur.csv", index=False)
    args = ["monitor", "none", "-r", str(tmp_path / "ref.csv"), "-c", str(tmp_path / "cur.csv"), "-t", "y"]
    args += ["--proba", "score", "--prediction", "pred", "-o", str(tmp_path / "out"), "-q", "embedding_rows=0"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == EXIT_DRIFT, out.output
    assert "drift" in out.output and "input:x" in out.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "drift" and report["exit_code"] == EXIT_DRIFT
    assert (tmp_path / "out" / "report.html").read_text().count("data:image/png;base64,") >= 4


def test_whole_numbers_read_from_a_file_match_integers_sent_in_requests() -> None:
    ref = scored(3000, 0).assign(code=np.tile([1.0, 2.0, np.nan], 1000))
    cur = scored(1000, 1).drop(columns=["y"]).assign(code=pd.Series(np.tile([1, 2, None], 334)[:1000], dtype=object))
    res = run(ref, cur, window_rows=1000)
    assert not res.result["windows"][0]["values"]["input:code"]["drift"]


def test_rows_answered_without_probabilities_count_for_inputs_only(tmp_path: Path, fast_params: dict) -> None:
    from tunesmith import FineTuner
    from tunesmith.runs.fingerprint import model_version
    from tunesmith.serve.predlog import LogRecord, PredictionLog

    model = FineTuner(**fast_params).fit(make_reviews(64), target="label")
    folder = model.save(tmp_path / "model")
    served = make_reviews(200, seed=4)
    proba = model.predict_proba(served)
    classes = [str(c) for c in model.classes_]
    log = PredictionLog(tmp_path / "p.sqlite")
    log.start()
    for i, (text, p) in enumerate(zip(served["text"], proba, strict=True)):
        out: dict = {"label": classes[int(np.argmax(p))]}
        if i % 4:  # every fourth request asked for no probabilities
            out["probabilities"] = dict(zip(classes, map(float, p), strict=True))
        log.write(LogRecord(1e9 + i, f"r{i}", model_version(folder), "onnx", 200, 1.0, [text], [out]))
    log.close()
    res = monitor(folder, make_reviews(300, seed=1), tmp_path / "p.sqlite", window_rows=200, progress_bar=False)
    values = res.result["windows"][0]["values"]
    assert values["output:probabilities"]["note"] == "50 rows answered without probabilities are left out"
    est = values["performance:estimated accuracy"]
    assert est["value"] is not None and 0.0 <= est["lower"] <= est["value"] <= est["upper"] <= 1.0


def test_a_regressors_error_is_estimated_with_an_interval_that_covers_it() -> None:
    from tunesmith.monitor.performance import PerformanceEstimator

    rng = np.random.default_rng(8)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        x = rng.normal(size=n)
        noise = rng.normal(size=n) * np.where(x > 0, 2.0, 0.5)  # errors are larger for x > 0
        y = 2 * x + noise
        return 2 * x, y, pd.DataFrame({"x": x})

    pred, y, inputs = rows(6000)
    est = PerformanceEstimator("regression").fit(pred, pred, y, inputs)
    covered = 0
    for _ in range(40):
        pred, y, inputs = rows(1000)
        e = est.estimate(pred, pred, inputs)
        truth = float(np.mean(np.abs(y - pred)))
        covered += e.lower <= truth <= e.upper
    assert covered >= 34  # about 95% of 40


def test_days_start_at_local_midnight_and_bad_spans_are_refused() -> None:
    from tunesmith.errors import ConfigError

    cur = scored(300, 7).drop(columns=["y"])
    # 22:00 UTC on 5 January is 23:00 in Berlin: still the 5th there, the 6th an hour later.
    cur["when"] = pd.date_range("2026-01-05T21:00:00Z", periods=300, freq="1min")
    res = run(scored(3000, 0), cur, window_time="1D", time_column="when", timezone="Europe/Berlin", min_window_rows=50)
    assert [w["label"] for w in res.result["windows"]] == ["2026-01-05T00:00:00+01:00", "2026-01-06T00:00:00+01:00"]
    assert [w["rows"] for w in res.result["windows"]] == [120, 180]
    for bad in ("fortnight", "-1D"):
        with pytest.raises(ConfigError, match="window_time"):
            make_settings(window_time=bad)
    with pytest.raises(ConfigError, match="timezone"):
        make_settings(timezone="Mars/Olympus")
