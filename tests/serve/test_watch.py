"""Live drift monitoring of the server: gauges on /metrics, computed off the request path."""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient

from tests.conftest import make_reviews
from tests.serve.test_serve import _fit, _settings, parse_metrics, serving
from tunesmith.errors import ConfigError, DataError
from tunesmith.monitor.frame import Spec
from tunesmith.serve import ServeSettings, create_app, run_server
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.predlog import LogRecord
from tunesmith.serve.watch import LiveMonitor, ReferenceInput, conform, live_frame

Values = dict[tuple[str, frozenset[tuple[str, str]]], float]
FAST = {"monitor_interval_s": 0.2, "monitor_min_rows": 20, "monitor_window_rows": 60}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fit(tmp_path_factory.mktemp("watch") / "model", seed=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("watch-ref") / "reference.csv"
    make_reviews(200, seed=5).to_csv(path, index=False)
    return path


def _get(values: Values, name: str, **labels: str) -> float | None:
    return values.get((name, frozenset(labels.items())))


def _poll(client: TestClient, ok: Callable[[Values], bool], timeout: float = 30.0) -> Values:
    until = time.monotonic() + timeout
    while True:
        values = parse_metrics(client.get("/metrics").text)
        if ok(values):
            return values
        assert time.monotonic() < until, "the monitor never got there: " + str(
            {k: v for k, v in values.items() if "monitor" in k[0] or "drift" in k[0]}
        )
        time.sleep(0.05)


def test_gauges_show_no_drift_then_the_drift_of_shifted_texts(model_dir: Path, reference: Path) -> None:
    with serving(model_dir, monitor_reference=reference, **FAST) as c:
        before = parse_metrics(c.get("/metrics").text)
        assert _get(before, "tunesmith_monitor_runs_total", result="ok") == 0
        assert math.isnan(_get(before, "tunesmith_performance_alert") or 0.0)
        like = make_reviews(60, seed=7)["text"].tolist()
        for i, text in enumerate(like):
            # A third of the requests ask for no probabilities: their rows count for the inputs only.
            r = c.post("/v1/predict", json={"inputs": text, "probabilities": i % 3 != 0})
            assert r.status_code == 200
        values = _poll(c, lambda v: _get(v, "tunesmith_monitor_window_rows") == 60)
        assert _get(values, "tunesmith_monitor_runs_total", result="failed") == 0
        accuracy = _get(values, "tunesmith_estimated_performance", metric="accuracy")
        lower = _get(values, "tunesmith_estimated_performance_lower", metric="accuracy")
        upper = _get(values, "tunesmith_estimated_performance_upper", metric="accuracy")
        threshold = _get(values, "tunesmith_performance_threshold", metric="accuracy")
        assert accuracy is not None and lower is not None and upper is not None and threshold is not None
        assert 0.0 <= lower <= accuracy <= upper and 0.0 <= accuracy <= 1.0
        assert 0.0 < threshold < 1.0
        assert _get(values, "tunesmith_performance_alert") in (0.0, 1.0)
        assert (_get(values, "tunesmith_drift_signals_detected") or 0.0) <= 1
        for signal in ("input:text.chars", "input:text.oov", "output:probabilities", "output:predicted class"):
            effect = _get(values, "tunesmith_drift_effect", signal=signal)
            p = _get(values, "tunesmith_drift_p_value", signal=signal)
            assert effect is not None and effect >= 0.0, signal
            assert p is not None and 0.0 <= p <= 1.0, signal
            assert _get(values, "tunesmith_drift_detected", signal=signal) in (0.0, 1.0)
        assert _get(values, "tunesmith_drift_detected", signal="input:text.chars") == 0.0
        assert time.time() - (_get(values, "tunesmith_monitor_last_run_timestamp_seconds") or 0.0) < 60

        odd = " ".join(["qwxzy"] * 150)
        for _ in range(60):
            assert c.post("/v1/predict", json={"inputs": {"text": odd}}).status_code == 200
        values = _poll(c, lambda v: _get(v, "tunesmith_drift_detected", signal="input:text.chars") == 1.0)
        assert (_get(values, "tunesmith_drift_effect", signal="input:text.chars") or 0.0) > 1.0
        assert _get(values, "tunesmith_drift_detected", signal="input:text.oov") == 1.0
        assert (_get(values, "tunesmith_drift_signals_detected") or 0.0) >= 2
        p_chars = _get(values, "tunesmith_drift_p_value", signal="input:text.chars")
        # A p-value of exactly 0 is the strongest drift, not a missing gauge (``or`` took it for one).
        assert p_chars is not None and p_chars < 0.05


def test_a_reload_to_another_version_starts_a_new_window(model_dir: Path, reference: Path) -> None:
    auth = {"Authorization": "Bearer admin-token"}
    with serving(model_dir, monitor_reference=reference, admin_token="admin-token", **FAST) as c:
        texts = make_reviews(60, seed=8)["text"].tolist()
        assert c.post("/v1/predict", json={"inputs": texts}).status_code == 200
        _poll(c, lambda v: _get(v, "tunesmith_monitor_window_rows") == 60)
        r = c.post("/admin/reload", json={"model_version": "v2"}, headers=auth)
        assert r.status_code == 200, r.text
        # The old model's figures are gone at once; the new one's window starts empty.
        values = parse_metrics(c.get("/metrics").text)
        assert math.isnan(_get(values, "tunesmith_monitor_window_rows") or 0.0)
        assert _get(values, "tunesmith_estimated_performance", metric="accuracy") is None
        assert c.post("/v1/predict", json={"inputs": texts[:30]}).status_code == 200
        values = _poll(c, lambda v: _get(v, "tunesmith_monitor_window_rows") == 30)
        assert _get(values, "tunesmith_monitor_runs_total", result="failed") == 0
        assert _get(values, "tunesmith_estimated_performance", metric="accuracy") is not None


def test_a_reference_without_the_input_column_fails_start_up(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    make_reviews(50).rename(columns={"text": "review"}).to_csv(bad, index=False)
    app = create_app(model_dir, _settings(monitor_reference=bad))
    with pytest.raises(DataError, match="lacks the model's input column.*'text'") as err, TestClient(app):
        pass
    assert err.value.column == "text" and err.value.file == str(bad)
    # run_server says it before binding the port, in one line.
    with pytest.raises(DataError, match="'text'"):
        run_server(model_dir, _settings(monitor_reference=bad, port=0))
    no_target = tmp_path / "unlabeled.csv"
    make_reviews(50)[["text"]].to_csv(no_target, index=False)
    with pytest.raises(DataError, match="target column 'label'"):
        run_server(model_dir, _settings(monitor_reference=no_target, port=0))
    with pytest.raises(DataError, match="does not exist"):
        run_server(model_dir, _settings(monitor_reference=tmp_path / "missing.csv", port=0))


def test_monitor_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="monitor_min_rows"):
        ServeSettings.from_options(monitor_reference="ref.csv", monitor_min_rows=500, monitor_window_rows=100)
    with pytest.raises(ConfigError, match="monitor_reference"):
        ServeSettings.from_options(monitor_target="label")
    with pytest.raises(ConfigError, match="monitor_interval_s"):
        ServeSettings.from_options(monitor_interval_s=0)
    s = ServeSettings.from_options(monitor_reference="ref.csv")
    assert (s.monitor_window_rows, s.monitor_min_rows, s.monitor_interval_s) == (1000, 200, 30.0)


class _Stub:
    def __init__(self, version: str) -> None:
        self.version = version


def test_observe_is_cheap_bounded_and_keeps_only_the_serving_model(tmp_path: Path) -> None:
    settings = _settings(monitor_reference=tmp_path / "ref.csv", monitor_window_rows=500, monitor_min_rows=20)
    pending: concurrent.futures.Future[Any] = concurrent.futures.Future()  # the model thread never answers

    def submit(fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        return pending

    frame = pd.DataFrame({"text": ["a fine film"], "label": ["pos"]})
    spec = Spec(text=["text"], target="label", task="classification", classes=["neg", "pos"])
    monitor = LiveMonitor(settings, Metrics().monitor_gauges(), submit)
    monitor.start(_Stub("v1"), ReferenceInput(frame, "ref.csv", spec, ()))
    try:
        out = [{"label": "pos", "probabilities": {"neg": 0.2, "pos": 0.8}}]
        records = [
            LogRecord(time.time(), f"r{i}", "v1", "torch", 200, 1.0, [{"text": f"text {i}"}], out)
            for i in range(10_000)
        ]
        started = time.perf_counter()
        for record in records:
            monitor.observe(record)
        assert time.perf_counter() - started < 0.5
        assert monitor.buffered_rows == 500
        monitor.observe(LogRecord(time.time(), "x", "v1", "torch", 422, 1.0, [{"text": "bad"}], None))
        monitor.reload(_Stub("v2"))
        assert monitor.buffered_rows == 0
        monitor.observe(records[0])  # answered by the model swapped out
        assert monitor.buffered_rows == 0
        monitor.observe(LogRecord(time.time(), "y", "v2", "torch", 200, 1.0, ["a", "b"], out * 2))
        assert monitor.buffered_rows == 2
        assert monitor.run_once() is False  # no reference yet, and too few rows
    finally:
        monitor.stop()


def _mixed(n: int, seed: int) -> pd.DataFrame:
    df = make_reviews(n, seed=seed)
    return df.assign(
        stars=[float(i % 5) for i in range(n)],
        genre=["drama", "comedy"] * (n // 2),
        # Not whole numbers: a regression target, not two classes.
        score=[(0.8 if label == "pos" else 0.1) + 0.01 * (i % 7) for i, label in enumerate(df["label"])],
    ).drop(columns=["label"])


def test_a_regressor_with_numeric_and_categorical_columns(tmp_path: Path) -> None:
    params = {"backbone": "tiny-text", "epochs": 1, "batch_size": 8, "max_length": 32, "progress": False}
    from tunesmith import FineTuner

    model = FineTuner(**params, runs_dir=str(tmp_path / "runs"), num_threads=1, seed=0)
    folder = model.fit(_mixed(16, 0), target="score").save(tmp_path / "model")
    reference = tmp_path / "reference.parquet"
    _mixed(200, 5).to_parquet(reference)
    with serving(folder, monitor_reference=reference, **FAST) as c:
        rows = _mixed(60, 7).drop(columns=["score"]).to_dict(orient="records")
        for row in rows[:30]:
            assert c.post("/v1/predict", json={"inputs": row}).status_code == 200
        assert c.post("/v1/predict", json={"inputs": rows[30:]}).status_code == 200
        values = _poll(c, lambda v: _get(v, "tunesmith_monitor_window_rows") == 60)
        assert _get(values, "tunesmith_monitor_runs_total", result="failed") == 0
        mae = _get(values, "tunesmith_estimated_performance", metric="mae")
        assert mae is not None and 0.0 <= mae < 1.0
        assert _get(values, "tunesmith_drift_detected", signal="input:genre") == 0.0
        assert _get(values, "tunesmith_drift_effect", signal="output:prediction") is not None
        assert _get(values, "tunesmith_drift_detected", signal="input:stars") == 0.0
        shifted = [{**r, "stars": r["stars"] * 1000 + 1000} for r in rows]
        assert c.post("/v1/predict", json={"inputs": shifted}).status_code == 200
        values = _poll(c, lambda v: _get(v, "tunesmith_drift_detected", signal="input:stars") == 1.0)
        assert _get(values, "tunesmith_drift_detected", signal="input:genre") == 0.0


def test_the_window_frame_has_every_input_column_and_the_files_categories() -> None:
    spec = Spec(text=["text"], numeric=["stars"], categorical=["genre"], task="regression")
    entries = [
        (1.0, "a", "v1", "a bare text", {"value": 0.5}),
        (2.0, "b", "v1", {"text": "with genre", "genre": 3}, {"value": 0.25}),
    ]
    frame = live_frame(entries, spec)
    assert frame["text"].tolist() == ["a bare text", "with genre"]
    assert frame["stars"].isna().all()  # no row sent it
    assert pd.isna(frame["genre"][0]) and frame["genre"][1] == "3"
    assert frame["prediction"].tolist() == [0.5, 0.25]
    # A file's 3.0 (a column of numbers with a gap) is the category a request's 3 is.
    ref = conform(pd.DataFrame({"text": ["x", None], "stars": [1.0, None], "genre": [3.0, None]}), spec)
    assert ref["genre"][0] == "3" and pd.isna(ref["genre"][1])
    assert ref["text"][0] == "x" and pd.isna(ref["text"][1])
