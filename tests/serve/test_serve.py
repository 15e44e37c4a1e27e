"""The prediction server in-process: FastAPI's TestClient against a real tiny model (no mocks)."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_reviews
from tunesmith import FineTuner
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.export.runtime import load_predictor, model_version
from tunesmith.serve import PredictionLog, ServeSettings, create_app, read_prediction_log, run_server
from tunesmith.serve.batcher import Batcher, ShuttingDown
from tunesmith.serve.predlog import LogRecord, log_files

TEXTS = ["great fun movie", "awful boring movie", "best film i love it", "a dull dull film"]


def _fit(folder: Path, seed: int) -> Path:
    params = {
        "backbone": "tiny-text",
        "epochs": 3,
        "batch_size": 8,
        "lr": 3e-3,
        "max_length": 32,
        "progress": False,
        "runs_dir": str(folder.parent / "runs"),
        "num_threads": 1,
        "seed": seed,
    }
    FineTuner(**params).fit(make_reviews(64, seed=seed), target="label").save(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fit(tmp_path_factory.mktemp("serve") / "model", seed=0)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fit(tmp_path_factory.mktemp("serve2") / "model", seed=1)


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> list[str]:
    labels = FineTuner.load(model_dir).predict(pd.DataFrame({"text": TEXTS}))
    return [str(x) for x in labels]


def _settings(**options: Any) -> ServeSettings:
    base: dict[str, Any] = {"backend": "torch", "threads": 1, "api_key": None, "admin_token": None}
    return ServeSettings(**{**base, **options})


def _wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    until = time.monotonic() + timeout
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < until, "the server never became ready"
        time.sleep(0.01)


@contextmanager
def serving(model: Path, **options: Any) -> Iterator[TestClient]:
    app = create_app(model, _settings(**options))
    with TestClient(app) as client:
        _wait_ready(client)
        yield client


def _state(client: TestClient) -> Any:
    return client.app.state.tunesmith  # type: ignore[attr-defined]


def metrics(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse_metrics(client.get("/metrics").text)


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, "timed out waiting"
        time.sleep(0.002)


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with serving(model_dir, admin_token=None) as c:
        yield c


# --- predictions ---------------------------------------------------------------------------


def test_single_row_prediction(client: TestClient, expected: list[str]) -> None:
    r = client.post("/v1/predict", json={"inputs": {"text": TEXTS[0]}})
    assert r.status_code == 200
    body = r.json()
    assert body["model_version"] == _state(client).batcher.predictor.version
    assert body["backend"] == "torch"
    assert body["precision"] == "fp32"
    (pred,) = body["predictions"]
    assert pred["label"] == expected[0]
    assert math.isclose(sum(pred["probabilities"].values()), 1.0, abs_tol=1e-4)
    assert set(pred["probabilities"]) == {"neg", "pos"}
    assert r.headers["x-request-id"]


def test_batch_prediction_matches_finetuner(client: TestClient, expected: list[str]) -> None:
    rows = [{"text": t} for t in TEXTS[:2]] + TEXTS[2:]  # objects and bare strings mixed
    r = client.post("/v1/predict", json={"inputs": rows}, headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc-123"
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == expected
    for p in preds:
        assert math.isclose(sum(p["probabilities"].values()), 1.0, abs_tol=1e-4)
    r = client.post("/v1/predict", json={"inputs": TEXTS, "probabilities": False})
    assert r.json()["predictions"] == [{"label": label} for label in expected]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "inputs"]),
        ({"inputs": 5}, ["body", "inputs"]),
        ({"inputs": [{"text": "ok"}, 7]}, ["body", "inputs", 1]),
        ({"inputs": []}, ["body", "inputs"]),
        ({"inputs": [{"text": "fine"}, {"txt": "typo"}]}, ["body", "inputs", 1, "txt"]),
        ({"inputs": {"text": ""}}, ["body", "inputs", "text"]),
        ({"inputs": {"text": "   "}}, ["body", "inputs", "text"]),
        ({"inputs": ["fine", ""]}, ["body", "inputs", 1]),
        ({"inputs": [{"text": 12}]}, ["body", "inputs", 0, "text"]),
        ({"inputs": "fine", "probabilities": "maybe"}, ["body", "probabilities"]),
        ({"inputs": "fine", "top_k": 3}, ["body", "top_k"]),
    ],
)
def test_bad_payloads_are_422_naming_the_field(client: TestClient, body: dict[str, Any], loc: list[Any]) -> None:
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == loc
    assert err["msg"]


def test_a_bare_string_for_a_model_with_several_text_columns_is_422(tmp_path: Path) -> None:
    df = make_reviews(16).assign(title=["a film", "the movie"] * 8)
    params = {"backbone": "tiny-text", "epochs": 1, "batch_size": 8, "max_length": 32, "progress": False}
    fitted = FineTuner(**params, runs_dir=str(tmp_path / "runs"), num_threads=1, text_column=["text", "title"])
    folder = fitted.fit(df, target="label").save(tmp_path / "multi")
    with TestClient(create_app(folder, _settings())) as c:
        _wait_ready(c)  # the warm-up sends a value per text column, so this model becomes ready
        r = c.post("/v1/predict", json={"inputs": ["great fun movie", "boring"]})
        assert r.status_code == 422, r.text
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "inputs", 0]
        assert "several text columns: text, title" in err["msg"]
        r = c.post("/v1/predict", json={"inputs": {"text": "great fun movie", "title": "a film"}})
        assert r.status_code == 200, r.text


def test_unknown_column_message_names_row_and_known_columns(client: TestClient) -> None:
    r = client.post("/v1/predict", json={"inputs": [{"text": "fine"}, {"txt": "typo"}]})
    msg = r.json()["detail"][0]["msg"]
    assert "inputs[1]" in msg and "'txt'" in msg and "text" in msg


def test_invalid_json_and_wrong_content_type(client: TestClient) -> None:
    r = client.post("/v1/predict", content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"
    # No Content-Type: refused, so a browser's "simple" cross-site POST cannot reach the model.
    r = client.post("/v1/predict", content=b'{"inputs": "fine"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415


@contextmanager
def model_thread_held(client: TestClient) -> Iterator[None]:
    """Hold the model thread, with the batch loop waiting on a first one-row request.

    Requests sent inside the block queue up behind it, however slow the machine, and run
    together in the next batch once the block ends.
    """
    batcher = _state(client).batcher
    gate = threading.Event()
    batcher._executor.submit(gate.wait)
    first = threading.Thread(target=lambda: client.post("/v1/predict", json={"inputs": "hold"}))
    first.start()
    try:
        _wait_for(lambda: batcher.busy_rows == 1)
        yield
    finally:
        gate.set()
        first.join()


def test_bad_row_in_a_batch_fails_only_its_request(model_dir: Path, expected: list[str]) -> None:
    with serving(model_dir) as c:
        state = _state(c)
        results: dict[str, Any] = {}
        bad = threading.Thread(
            target=lambda: results.setdefault("bad", c.post("/v1/predict", json={"inputs": [{"nope": "x"}]}))
        )
        good = threading.Thread(
            target=lambda: results.setdefault("good", c.post("/v1/predict", json={"inputs": TEXTS}))
        )
        with model_thread_held(c):
            bad.start()
            good.start()
            _wait_for(lambda: state.batcher.queued_rows == 1 + len(TEXTS))
        for t in (bad, good):
            t.join()
        assert results["bad"].status_code == 422
        assert results["bad"].json()["detail"][0]["loc"] == ["body", "inputs", 0, "nope"]
        assert results["good"].status_code == 200
        assert [p["label"] for p in results["good"].json()["predictions"]] == expected
        # The bad and the good request shared one model call (after the one holding the model).
        values = metrics(c)
        assert metric(values, "tunesmith_batch_requests_sum") == 3
        assert metric(values, "tunesmith_batch_requests_bucket", le="1.0") < metric(
            values, "tunesmith_batch_requests_count"
        )


# --- limits --------------------------------------------------------------------------------


def test_too_many_rows_is_413(model_dir: Path) -> None:
    with serving(model_dir, max_rows_per_request=3) as c:
        r = c.post("/v1/predict", json={"inputs": ["a", "b", "c", "d"]})
        assert r.status_code == 413
        assert "at most 3" in r.json()["detail"]
        assert c.post("/v1/predict", json={"inputs": ["a", "b", "c"]}).status_code == 200
        assert metric(metrics(c), "tunesmith_rejections_total", reason="too_many_rows") == 1


def test_oversized_body_is_413_by_content_length_and_chunked(model_dir: Path) -> None:
    with serving(model_dir, max_body_bytes=1000) as c:
        big = json.dumps({"inputs": ["x" * 2000]}).encode()
        r = c.post("/v1/predict", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert "1000 bytes" in r.json()["detail"]

        def chunks() -> Iterator[bytes]:
            # No Content-Length: httpx sends it chunked, and the limit is counted as it streams.
            yield b'{"inputs": ["'
            for _ in range(100):
                yield b"y" * 100
            yield b'"]}'

        r = c.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 413
        # A body under the limit still goes through.
        assert c.post("/v1/predict", json={"inputs": "fine"}).status_code == 200
        assert metric(metrics(c), "tunesmith_rejections_total", reason="body_too_large") == 2


def test_full_queue_is_503_with_retry_after(model_dir: Path) -> None:
    with serving(model_dir, max_queue=8, max_rows_per_request=8000, request_timeout_s=60) as c:
        state = _state(c)
        results: list[int] = []

        def post(rows: list[str]) -> None:
            results.append(c.post("/v1/predict", json={"inputs": rows}).status_code)

        busy = threading.Thread(target=post, args=(["keep the model busy"] * 8000,))
        busy.start()
        _wait_for(lambda: state.batcher.busy_rows > 0)
        waiting = threading.Thread(target=post, args=(["queued"] * 6,))
        waiting.start()
        _wait_for(lambda: state.batcher.queued_rows == 6)
        # 6 waiting + 3 > 8: refused by the handler.
        r = c.post("/v1/predict", json={"inputs": ["a", "b", "c"]})
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        filler = threading.Thread(target=post, args=(["queued"] * 2,))
        filler.start()
        _wait_for(lambda: state.batcher.queued_rows == 8)
        # Queue full: refused before the body is read.
        started = time.monotonic()
        r = c.post("/v1/predict", json={"inputs": "one more"})
        assert r.status_code == 503
        assert time.monotonic() - started < 1.0
        assert int(r.headers["retry-after"]) >= 1
        for t in (busy, waiting, filler):
            t.join()
        assert results == [200, 200, 200]
        assert metric(metrics(c), "tunesmith_rejections_total", reason="queue_full") == 2


def test_request_timeout_is_504_and_expired_requests_are_skipped(model_dir: Path) -> None:
    with serving(model_dir, max_rows_per_request=8000, request_timeout_s=0.2) as c:
        state = _state(c)
        results: dict[str, Any] = {}
        slow = threading.Thread(
            target=lambda: results.setdefault("slow", c.post("/v1/predict", json={"inputs": ["slow"] * 8000}))
        )
        slow.start()
        _wait_for(lambda: state.batcher.busy_rows > 0)
        # Queued behind the slow batch, it times out before the model is free: never computed.
        r = c.post("/v1/predict", json={"inputs": ["skipped"] * 7})
        slow.join()
        assert r.status_code == 504
        assert "timeout" in r.json()["detail"]
        assert results["slow"].status_code == 504
        _wait_for(lambda: state.batcher.busy_rows == 0)
        values = metrics(c)
        assert metric(values, "tunesmith_predicted_rows_total") == 8000
        assert metric(values, "tunesmith_rejections_total", reason="timeout") == 2
        # Once the model is free, a small request is on time again.
        assert c.post("/v1/predict", json={"inputs": "fine"}).status_code == 200


def test_a_body_trickling_in_past_the_timeout_is_408(model_dir: Path) -> None:
    import httpx

    async def scenario() -> int:
        app = create_app(model_dir, _settings(request_timeout_s=0.2))
        state = app.state.tunesmith
        await state.start()

        async def slow_body() -> Any:
            yield b'{"inputs": '
            await asyncio.sleep(2)
            yield b'"too late"}'

        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                started = time.monotonic()
                r = await client.post("/v1/predict", content=slow_body(), headers={"content-type": "application/json"})
                assert time.monotonic() - started < 1.5
                return r.status_code
        finally:
            await state.stop()

    assert asyncio.run(scenario()) == 408


async def _upload_then_hang_up(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """Call the ASGI app as a server would for a client that sends half a body and hangs up."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"inputs": "half a', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    return sent


def test_a_client_hanging_up_mid_upload_is_499_not_500(model_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "p.db"

    async def scenario() -> Any:
        app = create_app(model_dir, _settings(admin_token="admin-token", prediction_log=log))
        state = app.state.tunesmith
        await state.start()
        try:
            for path in ("/v1/predict", "/admin/reload"):
                sent = await _upload_then_hang_up(app, path, [(b"authorization", b"Bearer admin-token")])
                assert sent[0]["type"] == "http.response.start"
                assert sent[0]["status"] == 499, sent
            assert state.predlog.flush()
        finally:
            await state.stop()
        return parse_metrics(state.metrics.exposition().decode())

    values = asyncio.run(scenario())
    assert metric(values, "tunesmith_rejections_total", reason="disconnected") == 2
    assert metric(values, "tunesmith_http_requests_total", endpoint="/v1/predict", status="499") == 1
    assert metric(values, "tunesmith_http_requests_total", endpoint="/admin/reload", status="499") == 1
    assert metric(values, "tunesmith_http_requests_total", endpoint="/v1/predict", status="500") == 0
    (record,) = read_prediction_log(log).itertuples()
    assert record.status == 499
    assert record.n_rows == 0
    assert "closed the connection" in record.error


def test_draining_refuses_new_predictions_and_finishes_admitted_ones(model_dir: Path, expected: list[str]) -> None:
    with serving(model_dir) as c:
        state = _state(c)
        results: dict[str, Any] = {}
        queued = threading.Thread(
            target=lambda: results.setdefault("queued", c.post("/v1/predict", json={"inputs": TEXTS}))
        )
        with model_thread_held(c):
            queued.start()
            _wait_for(lambda: state.batcher.queued_rows == len(TEXTS))
            state.begin_drain()  # what SIGTERM does first
            # A request on a kept-alive connection after the signal: refused at once.
            r = c.post("/v1/predict", json={"inputs": "too late"})
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert r.json()["detail"] == "the server is shutting down"
        queued.join()
        # Queued before the signal: answered.
        assert results["queued"].status_code == 200
        assert [p["label"] for p in results["queued"].json()["predictions"]] == expected
        assert metric(metrics(c), "tunesmith_rejections_total", reason="shutting_down") == 1


def test_a_request_still_uploading_when_draining_begins_is_answered(model_dir: Path) -> None:
    import httpx

    async def scenario() -> tuple[int, int]:
        app = create_app(model_dir, _settings())
        state = app.state.tunesmith
        await state.start()
        release = asyncio.Event()

        async def slow_body() -> Any:
            yield b'{"inputs": '
            await release.wait()
            yield b'"fine"}'

        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                headers = {"content-type": "application/json"}
                admitted = asyncio.ensure_future(client.post("/v1/predict", content=slow_body(), headers=headers))
                for _ in range(1000):
                    if state.batcher.incoming:
                        break
                    await asyncio.sleep(0.005)
                assert state.batcher.incoming == 1
                state.begin_drain()
                refused = await client.post("/v1/predict", json={"inputs": "new"})
                release.set()
                return (await admitted).status_code, refused.status_code
        finally:
            await state.stop()

    assert asyncio.run(scenario()) == (200, 503)


def test_batcher_drain_waits_for_the_batch_being_gathered(model_dir: Path) -> None:
    async def scenario() -> None:
        batcher = Batcher(load_predictor(model_dir, backend="torch", threads=1), max_wait_ms=1000)
        await batcher.start()
        try:
            ticket = batcher.arrive()  # another request on its way: the batch waits for it
            job = asyncio.ensure_future(batcher.submit(["fine"], deadline=time.monotonic() + 30))
            for _ in range(1000):
                if batcher._inflight:
                    break
                await asyncio.sleep(0.001)
            batcher.leave(ticket)  # it gave up; the batch still waits out max_wait_ms
            # Nothing queued, the model idle, nobody on the way: only the batch being gathered.
            assert not batcher._queue and batcher.busy_rows == 0 and batcher.incoming == 0
            assert await batcher.drain(0.05) is False
            assert await batcher.drain(10.0) is True
            assert len((await job).predictions) == 1
        finally:
            await batcher.close()

    asyncio.run(scenario())


def test_batcher_close_answers_the_requests_of_a_batch_it_cuts_off(model_dir: Path) -> None:
    async def scenario() -> None:
        batcher = Batcher(load_predictor(model_dir, backend="torch", threads=1))
        await batcher.start()
        gate = threading.Event()
        batcher._executor.submit(gate.wait)  # the batch cannot finish within close()'s second
        try:
            job = asyncio.ensure_future(batcher.submit(["fine"], deadline=time.monotonic() + 60))
            for _ in range(1000):
                if batcher.busy_rows:
                    break
                await asyncio.sleep(0.001)
            assert batcher.busy_rows == 1
            await batcher.close()
            # Answered at once, not after the request's own 60 s.
            with pytest.raises(ShuttingDown):
                await asyncio.wait_for(job, timeout=2)
        finally:
            gate.set()

    asyncio.run(scenario())


def test_api_key(model_dir: Path) -> None:
    with serving(model_dir, api_key="s3cret-key") as c:
        body = {"inputs": "fine"}
        assert c.post("/v1/predict", json=body).status_code == 401
        assert c.post("/v1/predict", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/v1/predict", json=body, headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert c.post("/v1/predict", json=body, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.get("/v1/metadata").status_code == 401
        meta = c.get("/v1/metadata", headers={"X-API-Key": "s3cret-key"}).json()
        assert meta["limits"]["api_key_required"] is True
        for path in ("/live", "/ready", "/metrics"):
            assert c.get(path).status_code == 200
        assert metric(metrics(c), "tunesmith_rejections_total", reason="unauthorized") == 3


# --- health, metadata, metrics, OpenAPI ----------------------------------------------------


def test_live_ready_and_draining(model_dir: Path) -> None:
    with serving(model_dir) as c:
        assert c.get("/live").json() == {"status": "alive"}
        ready = c.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["model_version"] == _state(c).batcher.predictor.version
        _state(c).begin_drain()  # what SIGTERM does first
        r = c.get("/ready")
        assert r.status_code == 503
        assert r.json()["status"] == "draining"
        assert c.get("/live").status_code == 200


def test_not_ready_until_the_warm_up_prediction_passed(model_dir: Path) -> None:
    import httpx

    async def scenario() -> None:
        app = create_app(model_dir, _settings())
        state = app.state.tunesmith
        await state.start()
        # Hold the model thread before the warm-up reaches it (the warm-up task has not run yet).
        gate = threading.Event()
        state.batcher._executor.submit(gate.wait)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                r = await client.get("/ready")
                assert r.status_code == 503
                assert r.json() == {"status": "starting"}
                # A prediction sent now waits behind the warm-up instead of failing.
                pending = asyncio.ensure_future(client.post("/v1/predict", json={"inputs": "fine"}))
                await asyncio.sleep(0.05)
                assert not pending.done()
                gate.set()
                assert (await pending).status_code == 200
                for _ in range(500):
                    if (await client.get("/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                assert (await client.get("/ready")).json()["status"] == "ready"
        finally:
            gate.set()
            await state.stop()
        assert state.ready is False

    asyncio.run(scenario())


def test_metadata(client: TestClient, model_dir: Path) -> None:
    meta = client.get("/v1/metadata").json()
    assert meta["task"] == "binary"
    assert meta["labels"] == ["neg", "pos"]
    assert meta["input_schema"]["text_columns"] == ["text"]
    assert meta["model_version"] == model_version(model_dir)
    assert meta["backend"] == "torch"
    assert meta["limits"]["max_rows_per_request"] == 256
    assert meta["limits"]["max_body_bytes"] == 1 << 20
    assert meta["server"]["ready"] is True


def test_metrics_move(client: TestClient) -> None:
    before = metrics(client)
    client.post("/v1/predict", json={"inputs": TEXTS})
    client.post("/v1/predict", json={})
    after = metrics(client)

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert moved("tunesmith_http_requests_total", endpoint="/v1/predict", status="200") == 1
    assert moved("tunesmith_http_requests_total", endpoint="/v1/predict", status="422") == 1
    assert moved("tunesmith_http_request_duration_seconds_count", endpoint="/v1/predict") == 2
    assert moved("tunesmith_batch_rows_count") == 1
    assert moved("tunesmith_batch_rows_sum") == len(TEXTS)
    assert moved("tunesmith_predicted_rows_total") == len(TEXTS)
    assert moved("tunesmith_rejections_total", reason="invalid") == 1
    # Fine buckets from 1 ms.
    assert (
        "tunesmith_http_request_duration_seconds_bucket",
        frozenset({("endpoint", "/v1/predict"), ("le", "0.001")}),
    ) in after
    version = _state(client).batcher.predictor.version
    assert metric(after, "tunesmith_model_info", model_version=version, backend="torch", precision="fp32") == 1
    assert metric(after, "tunesmith_ready") == 1
    assert ("tunesmith_queue_rows", frozenset()) in after
    assert ("tunesmith_rejections_total", frozenset({("reason", "queue_full")})) in after


def test_micro_batching_gathers_concurrent_requests(model_dir: Path, expected: list[str]) -> None:
    with serving(model_dir, max_batch_size=32) as c:
        state = _state(c)
        results: dict[int, Any] = {}

        def post(i: int) -> None:
            results[i] = c.post("/v1/predict", json={"inputs": TEXTS[i % 4]})

        threads = [threading.Thread(target=post, args=(i,)) for i in range(12)]
        with model_thread_held(c):
            for t in threads:
                t.start()
            _wait_for(lambda: state.batcher.queued_rows == 12)
        for t in threads:
            t.join()
        # Each request got its own row's answer back from the shared batch.
        for i, r in results.items():
            assert r.status_code == 200
            assert r.json()["predictions"][0]["label"] == expected[i % 4]
        values = metrics(c)
        batches = metric(values, "tunesmith_batch_requests_count")
        requests = metric(values, "tunesmith_batch_requests_sum")
        assert requests == 13
        assert batches < requests  # at least one model call served several requests
        assert metric(values, "tunesmith_batch_requests_bucket", le="1.0") < batches


def test_openapi_documents_the_models(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/predict"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    schemas = spec["components"]["schemas"]
    assert {"PredictRequest", "PredictResponse", "PredictionOut", "ErrorOut"} <= set(schemas)
    assert {"inputs", "probabilities"} <= set(schemas["PredictRequest"]["properties"])
    assert "/admin/reload" not in spec["paths"]  # no admin token, no admin endpoints


@pytest.fixture(scope="module")
def mixed_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text model that also reads a numeric (stars) and a categorical (genre) column."""
    root = tmp_path_factory.mktemp("mixed")
    df = make_reviews(16).assign(stars=[float(i % 5) for i in range(16)], genre=["drama", "comedy"] * 8)
    params = {"backbone": "tiny-text", "epochs": 1, "batch_size": 8, "max_length": 32, "progress": False}
    fitted = FineTuner(**params, runs_dir=str(root / "runs"), num_threads=1)
    return fitted.fit(df, target="label").save(root / "model")


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (b'{"inputs": "fine", "probabilities": NaN}', ["body", "probabilities"]),
        (b'{"inputs": NaN}', ["body", "inputs"]),
        (b'{"inputs": [Infinity]}', ["body", "inputs", 0]),
        (b'{"inputs": {"text": -Infinity}}', ["body", "inputs", "text"]),
        (b'{"inputs": {"text": "fine", "extra": 1e999999}}', ["body", "inputs", "extra"]),
        (b'{"inputs": [{"text": "fine", "x": [NaN, {"y": Infinity}]}]}', ["body", "inputs", 0, "x"]),
    ],
)
def test_non_finite_numbers_are_a_strict_json_422(client: TestClient, raw: bytes, loc: list[Any]) -> None:
    # Python's JSON reader takes NaN, Infinity and overflowing numbers; echoing them back used
    # to fail the 422 itself with a plain-text 500.
    r = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    body = json.loads(r.text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    (err,) = body["detail"]
    assert err["loc"] == loc
    assert {"type", "loc", "msg"} <= set(err)


def test_numeric_and_categorical_columns_take_what_the_document_says(mixed_model_dir: Path) -> None:
    with serving(mixed_model_dir) as c:
        row = {"text": "great fun movie", "stars": 4, "genre": "drama"}
        assert c.post("/v1/predict", json={"inputs": row}).status_code == 200
        missing = {"text": "great fun movie", "stars": None, "genre": None}
        assert c.post("/v1/predict", json={"inputs": [missing, {"text": "x", "genre": True}]}).status_code == 200
        refused = [
            (b'{"inputs": {"text": "x", "stars": Infinity}}', ["body", "inputs", "stars"], "finite"),
            (b'{"inputs": [{"text": "x", "stars": 1e999999}]}', ["body", "inputs", 0, "stars"], "finite"),
            (b'{"inputs": {"text": "x", "stars": "3"}}', ["body", "inputs", "stars"], "number or null"),
            (b'{"inputs": {"text": "x", "stars": true}}', ["body", "inputs", "stars"], "number or null"),
            (b'{"inputs": {"text": "x", "genre": NaN}}', ["body", "inputs", "genre"], "finite"),
            (b'{"inputs": {"text": "x", "genre": {"a": 1}}}', ["body", "inputs", "genre"], "string, a number"),
        ]
        for raw, loc, words in refused:
            r = c.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 422, (raw, r.text)
            (err,) = r.json()["detail"]
            assert err["loc"] == loc and words in err["msg"], (raw, err)
        row_schema = c.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
        one_row = row_schema["properties"]["inputs"]["anyOf"][0]["anyOf"][0]
        assert one_row["properties"]["stars"]["type"] == ["number", "null"]
        assert one_row["properties"]["genre"]["type"] == ["string", "number", "boolean", "null"]
        assert one_row["required"] == ["text"] and one_row["additionalProperties"] is False


def test_a_reload_to_a_model_with_other_columns_changes_the_document(model_dir: Path, mixed_model_dir: Path) -> None:
    def columns(c: TestClient) -> set[str]:
        predict = c.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
        return set(predict["properties"]["inputs"]["anyOf"][0]["anyOf"][0]["properties"])

    with serving(model_dir, admin_token="admin-token") as c:
        assert columns(c) == {"text"}
        r = c.post(
            "/admin/reload", json={"path": str(mixed_model_dir)}, headers={"Authorization": "Bearer admin-token"}
        )
        assert r.status_code == 200, r.text
        assert columns(c) == {"text", "stars", "genre"}
        assert c.post("/v1/predict", json={"inputs": {"text": "fine", "stars": 2}}).status_code == 200


def test_request_bodies_are_strict_and_the_document_says_so(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    predict = schemas["PredictRequest"]
    assert predict["additionalProperties"] is False and predict["required"] == ["inputs"]
    assert schemas["ReloadRequest"]["additionalProperties"] is False
    row, batch = predict["properties"]["inputs"]["anyOf"]
    obj, bare = row["anyOf"]
    # The served model's own column, required and not blank: {"inputs": {}} is invalid by the
    # document, as the server answers.
    assert obj["required"] == ["text"] and obj["additionalProperties"] is False
    assert set(obj["properties"]) == {"text"}
    assert bare["type"] == "string" and "pattern" in bare
    assert batch["minItems"] == 1 and batch["maxItems"] == 256
    assert predict["properties"]["probabilities"]["type"] == "boolean"
    for body in ({"inputs": {}}, {"inputs": []}, {"inputs": "fine", "probabilities": 0}, {"inputs": "x", "top": 1}):
        assert client.post("/v1/predict", json=body).status_code == 422, body
    # The examples of the document are valid requests.
    for example in predict["examples"]:
        assert client.post("/v1/predict", json=example).status_code == 200, example


def test_the_non_blank_pattern_matches_what_the_server_calls_blank() -> None:
    import re
    import sys

    from tunesmith.serve.schemas import NON_BLANK, WHITESPACE

    assert set(WHITESPACE) == {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()}
    pattern = re.compile(NON_BLANK)
    for text in ["", " ", "\t\n", "\x1c\x1f", "\u3000\xa0", "\u2028"]:
        assert not text.strip() and pattern.search(text) is None, repr(text)
    for text in ["a", " b ", "\ufeff", "\x00", "\u200b"]:
        assert text.strip() and pattern.search(text) is not None, repr(text)


def test_metrics_and_probes_are_documented_as_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    metrics_doc = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics_doc) == ["text/plain; version=0.0.4"]
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    ready = spec["paths"]["/ready"]["get"]["responses"]
    assert {"200", "503"} <= set(ready)
    assert spec["paths"]["/live"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]


def test_a_model_output_that_is_not_a_number_is_null(model_dir: Path) -> None:
    import dataclasses

    with serving(model_dir) as c:
        predictor = _state(c).batcher.predictor
        real = predictor.predict_rows

        def nan_rows(rows: Any, *, probabilities: bool = True) -> Any:
            # What a tabular network answers for values far outside its training range.
            out = real(rows, probabilities=probabilities)
            return [dataclasses.replace(p, probabilities=dict.fromkeys(p.probabilities, math.nan)) for p in out]

        predictor.predict_rows = nan_rows
        r = c.post("/v1/predict", json={"inputs": "fine"})
    assert r.status_code == 200
    (pred,) = json.loads(r.text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))["predictions"]
    assert set(pred["probabilities"].values()) == {None}


def test_metadata_never_serves_a_linked_export_json(model_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"token": "s3cr3t"}))
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "export.json").write_text(json.dumps({"note": "genuine"}))
    linked = tmp_path / "linked"
    shutil.copytree(folder, linked)
    (linked / "onnx" / "export.json").unlink()
    (linked / "onnx" / "export.json").symlink_to(secret)
    # A folder holding the link is refused outright, at start-up and on reload.
    error = _run_server_in_thread(linked, _settings())
    assert isinstance(error, ArtifactError) and "link" in str(error), repr(error)
    auth = {"Authorization": "Bearer admin-token"}
    with serving(folder, admin_token="admin-token") as c:
        r = c.post("/admin/reload", json={"path": str(linked)}, headers=auth)
        assert r.status_code == 422 and "link" in r.json()["detail"], r.text
        # The link appears after the model was loaded: never followed either.
        (folder / "onnx" / "export.json").unlink()
        (folder / "onnx" / "export.json").symlink_to(secret)
        r = c.get("/v1/metadata")
        assert r.status_code == 200, r.text
        assert "s3cr3t" not in r.text


def test_a_refused_row_with_a_nan_is_logged_as_strict_json(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "preds.db"
    with serving(model_dir, prediction_log=path) as c:
        raw = b'{"inputs": [{"text": "fine", "extra": NaN}]}'
        r = c.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert _state(c).predlog.flush()
    (logged,) = read_prediction_log(path, parse_json=False)["inputs"]
    assert json.loads(logged, parse_constant=lambda name: pytest.fail(f"{name} is not JSON")) == [
        {"text": "fine", "extra": "NaN"}
    ]


def test_metadata_is_strict_json_even_with_a_nan_metric(client: TestClient) -> None:
    state = _state(client)
    state._meta = None
    predictor = state.batcher.predictor
    saved = predictor.meta.get("metrics")
    predictor.meta["metrics"] = {"accuracy": 0.5, "mcc": float("nan")}
    try:
        r = client.get("/v1/metadata")
    finally:
        predictor.meta["metrics"] = saved
        state._meta = None
    assert r.status_code == 200
    assert json.loads(r.text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))["metrics"]["mcc"] == "NaN"


# --- hot reload ----------------------------------------------------------------------------


def test_admin_endpoints_absent_without_token(client: TestClient) -> None:
    assert client.post("/admin/reload").status_code == 404


def test_reload_switches_versions_without_failing_requests(model_dir: Path, other_model_dir: Path) -> None:
    auth = {"Authorization": "Bearer admin-token"}
    with serving(model_dir, admin_token="admin-token") as c:
        old = c.post("/v1/predict", json={"inputs": "fine"}).json()["model_version"]
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401

        statuses: list[int] = []
        versions: set[str] = set()
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                r = c.post("/v1/predict", json={"inputs": TEXTS})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["model_version"])

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        _wait_for(lambda: len(statuses) >= 5)
        r = c.post("/admin/reload", json={"path": str(other_model_dir)}, headers=auth)
        _wait_for(lambda: len(statuses) >= 20 + 5)
        stop.set()
        for t in threads:
            t.join()
        assert r.status_code == 200, r.text
        new = r.json()["model_version"]
        assert r.json()["reloaded"] is True
        assert r.json()["previous_version"] == old
        assert new != old
        assert set(statuses) == {200}
        assert versions == {old, new}
        assert c.post("/v1/predict", json={"inputs": "fine"}).json()["model_version"] == new
        assert c.get("/v1/metadata").json()["model_version"] == new
        values = metrics(c)
        assert metric(values, "tunesmith_model_info", model_version=new, backend="torch", precision="fp32") == 1
        assert metric(values, "tunesmith_model_info", model_version=old, backend="torch", precision="fp32") == 0
        assert metric(values, "tunesmith_reloads_total", result="ok") == 1


def test_reload_of_a_corrupt_model_keeps_the_old_one(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    auth = {"Authorization": "Bearer admin-token"}
    with serving(model_dir, admin_token="admin-token") as c:
        old = c.post("/v1/predict", json={"inputs": "fine"}).json()["model_version"]
        r = c.post("/admin/reload", json={"path": str(broken)}, headers=auth)
        assert r.status_code == 422
        body = r.json()
        assert body["reloaded"] is False
        assert body["model_version"] == old
        assert "safetensors" in body["detail"]
        r = c.post("/admin/reload", json={"path": str(tmp_path / "nowhere")}, headers=auth)
        assert r.status_code == 422 and "no model folder" in r.json()["detail"]
        r = c.post("/admin/reload", json={"backend": "tpu"}, headers=auth)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "backend"]
        after = c.post("/v1/predict", json={"inputs": "fine"})
        assert after.status_code == 200
        assert after.json()["model_version"] == old
        assert metric(metrics(c), "tunesmith_reloads_total", result="failed") == 2
        # Re-reading the same folder (no body) works and keeps the version (same weights).
        r = c.post("/admin/reload", headers=auth)
        assert r.status_code == 200 and r.json()["model_version"] == old


def test_a_good_reload_makes_a_server_whose_warm_up_failed_ready(model_dir: Path) -> None:
    predictor = load_predictor(model_dir, backend="torch", threads=1)

    def broken_warmup() -> None:
        raise RuntimeError("the warm-up broke")

    predictor.warmup = broken_warmup  # type: ignore[method-assign]
    auth = {"Authorization": "Bearer admin-token"}
    app = create_app(model_dir, _settings(admin_token="admin-token"), predictor=predictor)
    with TestClient(app) as c:
        state = _state(c)
        _wait_for(lambda: state.failure is not None)
        r = c.get("/ready")
        assert r.status_code == 503
        assert r.json()["status"] == "failed" and "warm-up broke" in r.json()["detail"]
        assert c.get("/v1/metadata").json()["server"]["ready"] is False
        assert state._meta is not None and state._meta[0] is predictor
        r = c.post("/admin/reload", headers=auth)
        assert r.status_code == 200, r.text
        # The old predictor is no longer held by the metadata cache.
        assert state._meta is None
        r = c.get("/ready")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        assert metric(metrics(c), "tunesmith_ready") == 1
        # A reload while draining leaves the server not ready.
        state.begin_drain()
        assert c.post("/admin/reload", headers=auth).status_code == 200
        assert c.get("/ready").json()["status"] == "draining"


def _fifo_folders(model: Path, root: Path) -> list[Path]:
    """Copies of ``model``: one with a FIFO beside its files, one whose tunesmith.json is a FIFO."""
    import os

    beside = root / "fifo-beside"
    shutil.copytree(model, beside)
    os.mkfifo(beside / "vocab.extra")
    marker = root / "fifo-marker"
    shutil.copytree(model, marker)
    (marker / "tunesmith.json").unlink()
    os.mkfifo(marker / "tunesmith.json")
    return [beside, marker]


def test_reload_errors_match_the_document(model_dir: Path) -> None:
    auth = {"Authorization": "Bearer admin-token"}
    with serving(model_dir, admin_token="admin-token") as c:
        old = c.post("/v1/predict", json={"inputs": "fine"}).json()["model_version"]
        documented = c.get("/openapi.json").json()["paths"]["/admin/reload"]["post"]["responses"]
        assert {"200", "401", "409", "415", "422"} <= set(documented) and "500" not in documented
        bodies = [
            {"path": "x" * 100_000},  # used to be a 500
            {"path": "a\x00b"},
            {"backend": "tpu"},
            {"path": None, "extra": 1},
        ]
        for body in bodies:
            r = c.post("/admin/reload", json=body, headers=auth)
            assert r.status_code == 422, r.text
            out = r.json()
            assert out["reloaded"] is False and out["model_version"] == old
            assert isinstance(out["detail"], list) and out["detail"][0]["loc"][0] == "body"
        r = c.post("/admin/reload", content=b"{", headers={**auth, "content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
        r = c.post("/admin/reload", content=b"{}", headers={**auth, "content-type": "text/plain"})
        assert r.status_code == 415 and isinstance(r.json()["detail"], str)
        long_path = "/" + "/".join(["d" * 200] * 19)  # valid for the document, too long for the system
        r = c.post("/admin/reload", json={"path": long_path}, headers=auth)
        assert r.status_code == 422 and isinstance(r.json()["detail"], str), r.text
        assert c.post("/v1/predict", json={"inputs": "fine"}).json()["model_version"] == old


@pytest.mark.parametrize("error", [RuntimeError("the loader broke"), KeyError("labels"), ArtifactError("bad folder")])
def test_any_error_while_reloading_keeps_the_old_model(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    import tunesmith.serve.state as app_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    auth = {"Authorization": "Bearer admin-token"}
    with serving(model_dir, admin_token="admin-token") as c:
        old = c.post("/v1/predict", json={"inputs": "fine"}).json()["model_version"]
        monkeypatch.setattr(app_module, "load_served_model", broken)
        with caplog.at_level("WARNING", logger="tunesmith.serve"):
            r = c.post("/admin/reload", headers=auth)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["reloaded"] is False and body["model_version"] == old
        assert type(error).__name__ in body["detail"] or "bad folder" in body["detail"]
        assert "reload failed" in caplog.text
        assert c.get("/ready").status_code == 200
        assert c.post("/v1/predict", json={"inputs": "fine"}).json()["model_version"] == old
        assert metric(metrics(c), "tunesmith_reloads_total", result="failed") == 1


def test_reload_to_a_folder_with_a_fifo_returns_at_once_and_shutdown_is_clean(model_dir: Path, tmp_path: Path) -> None:
    auth = {"Authorization": "Bearer admin-token"}
    folders = _fifo_folders(model_dir, tmp_path)
    with serving(model_dir, admin_token="admin-token") as c:
        old = c.post("/v1/predict", json={"inputs": "fine"}).json()["model_version"]
        for folder in folders:
            began = time.monotonic()
            r = c.post("/admin/reload", json={"path": str(folder)}, headers=auth)
            assert time.monotonic() - began < 5
            assert r.status_code == 422, r.text
            assert r.json()["reloaded"] is False and "FIFO" in r.json()["detail"]
        # The lock is free again: a good reload goes through.
        assert c.post("/admin/reload", headers=auth).json()["reloaded"] is True
        assert c.post("/v1/predict", json={"inputs": "fine"}).json()["model_version"] == old
        began = time.monotonic()
    assert time.monotonic() - began < 10  # the lifespan shut down


def test_a_reload_while_one_runs_is_409_and_predictions_go_on(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunesmith.serve.state as app_module

    entered, release = threading.Event(), threading.Event()
    real = app_module.load_served_model

    def slow(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    auth = {"Authorization": "Bearer admin-token"}
    with serving(model_dir, admin_token="admin-token") as c:
        monkeypatch.setattr(app_module, "load_served_model", slow)
        first: dict[str, Any] = {}
        t = threading.Thread(target=lambda: first.setdefault("r", c.post("/admin/reload", headers=auth)))
        t.start()
        try:
            assert entered.wait(30)
            r = c.post("/admin/reload", headers=auth)
            assert r.status_code == 409 and r.json()["reloaded"] is False
            assert "another reload" in r.json()["detail"]
            assert c.post("/v1/predict", json={"inputs": "fine"}).status_code == 200
        finally:
            release.set()
            t.join(30)
        assert first["r"].status_code == 200 and first["r"].json()["reloaded"] is True


def test_off_loop_does_not_hold_up_a_cancelled_await_and_closes_what_comes_late() -> None:
    from tunesmith.serve.app import off_loop

    release = threading.Event()
    closed: list[str] = []

    def stuck() -> str:
        release.wait(30)
        return "model"

    async def main() -> float:
        began = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(off_loop(stuck, closed.append), timeout=0.2)
        return time.monotonic() - began

    assert asyncio.run(main()) < 5  # asyncio.run returned: it did not join the stuck thread
    release.set()
    _wait_for(lambda: closed == ["model"])

    async def fails() -> None:
        await off_loop(lambda: (_ for _ in ()).throw(ValueError("boom")))

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(fails())


# --- prediction log ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["preds.db", "preds.parquet"])
def test_prediction_log_rotates_and_reads_back(model_dir: Path, tmp_path: Path, name: str) -> None:
    path = tmp_path / "logs" / name
    with serving(model_dir, prediction_log=path, prediction_log_rotate_rows=3) as c:
        version = _state(c).batcher.predictor.version
        assert _state(c).predlog.buffer_bytes == 64 << 20
        for i in range(7):
            assert c.post("/v1/predict", json={"inputs": [TEXTS[i % 4]]}).status_code == 200
        assert c.post("/v1/predict", json={"inputs": [{"text": ""}]}).status_code == 422
        assert _state(c).predlog.flush()
        if name.endswith(".db"):
            live = read_prediction_log(path)  # SQLite is readable while the server runs
            assert len(live) == 8
    files = log_files(path)
    assert len(files) == 3  # two full rotated files and the active one
    assert files[-1] == path
    assert all(f.parent == path.parent for f in files)
    log = read_prediction_log(path)
    assert len(log) == 8
    assert list(log.columns[:4]) == ["timestamp", "request_id", "model_version", "backend"]
    assert str(log["timestamp"].dt.tz) == "UTC"
    assert log["timestamp"].is_monotonic_increasing
    ok = log[log["status"] == 200]
    assert len(ok) == 7
    assert set(ok["model_version"]) == {version}
    assert set(log["backend"]) == {"torch"}
    assert ok["inputs"].iloc[1] == [TEXTS[1]]
    assert ok["outputs"].iloc[0][0]["label"] in ("pos", "neg")
    assert (ok["latency_ms"] > 0).all()
    assert (log["n_rows"] == 1).all()
    bad = log[log["status"] == 422].iloc[0]
    assert bad["outputs"] is None
    assert "no text" in bad["error"]
    assert log["request_id"].is_unique


def test_prediction_log_drops_and_counts_when_the_buffer_is_full(tmp_path: Path) -> None:
    dropped: list[int] = []
    plog = PredictionLog(tmp_path / "p.db", buffer_rows=3, on_dropped=dropped.append)
    record = LogRecord(time.time(), "r1", "v1", "torch", 200, 1.0, inputs=["a", "b"], outputs=[{"label": "pos"}] * 2)
    # Not started: nothing drains the buffer, so the second record does not fit.
    assert plog.write(record) is True
    assert plog.write(record) is False
    assert plog.dropped == 1
    assert dropped == [1]
    plog.start()
    assert plog.flush()
    plog.close()
    assert plog.written == 1
    assert len(read_prediction_log(tmp_path / "p.db")) == 1


def test_prediction_log_buffer_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    dropped: list[int] = []
    plog = PredictionLog(tmp_path / "p.db", buffer_rows=1000, buffer_bytes=1 << 20, on_dropped=dropped.append)

    def record(rid: str, inputs: list[Any], nbytes: int = 0) -> LogRecord:
        return LogRecord(time.time(), rid, "v1", "torch", 200, 1.0, inputs=inputs, nbytes=nbytes)

    # Not started: nothing drains the buffer. Rows fit, but a second 600 kB body does not.
    assert plog.write(record("big1", ["x"], nbytes=600_000)) is True
    assert plog.write(record("big2", ["x"], nbytes=600_000)) is False
    # Without the request's size, the texts are counted.
    assert plog.write(record("long", ["y" * 500_000])) is False
    assert plog.write(record("short", ["y" * 1000])) is True
    assert plog.dropped == 2
    assert dropped == [1, 1]
    plog.start()
    assert plog.flush()
    plog.close()
    assert list(read_prediction_log(tmp_path / "p.db")["request_id"]) == ["big1", "short"]
    assert ServeSettings().prediction_log_buffer_bytes == 64 << 20


def test_read_prediction_log_without_a_log(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no prediction log"):
        read_prediction_log(tmp_path / "none.db")


# --- settings and start-up errors ----------------------------------------------------------


def test_settings_validation() -> None:
    with pytest.raises(ConfigError, match="max_batch_size"):
        ServeSettings.from_options(max_batch_size=0)
    with pytest.raises(ConfigError, match="unknown setting") as info:
        ServeSettings.from_options(max_bach_size=4)
    assert "max_batch_size" in str(info.value)
    with pytest.raises(ConfigError, match="onnx backend only"):
        ServeSettings.from_options(backend="torch", precision="int8")
    with pytest.raises(ConfigError, match="port"):
        ServeSettings.from_options(port=70000)
    s = ServeSettings.from_options(prediction_log="logs/p.parquet", port=None, api_key=None, admin_token=None)
    assert s.prediction_log_format == "parquet"
    assert s.port == 8000
    assert ServeSettings(workers=2, threads=None).threads_per_worker() >= 1


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNESMITH_API_KEY", "from-env")
    monkeypatch.setenv("TUNESMITH_ADMIN_TOKEN", "admin-env")
    s = ServeSettings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(s)
    again = ServeSettings.from_json(s.to_json())
    assert again.admin_token is not None and again.admin_token.get_secret_value() == "admin-env"
    assert again == s


def test_a_worker_reports_not_ready_when_sigterm_arrives(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith.serve.app import MODEL_ENV
    from tunesmith.serve.command import create_worker_app
    from tunesmith.serve.settings import SETTINGS_ENV

    monkeypatch.setenv(SETTINGS_ENV, _settings().to_json())
    monkeypatch.setenv(MODEL_ENV, str(model_dir))
    seen: list[int] = []
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Stands in for uvicorn's handler, which a worker installs before it calls the factory.
    signal.signal(signal.SIGTERM, lambda sig, frame: seen.append(sig))
    try:
        state = create_worker_app().state.tunesmith
        assert not state.draining
        signal.raise_signal(signal.SIGTERM)
        # Not ready at once (a load balancer stops sending); the connections it has still get
        # answers until uvicorn closes them (tests/serve/test_worker_restart.py).
        assert state.draining and not state.ready
        assert seen == [signal.SIGTERM]  # and uvicorn still hears of it
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_run_server_fails_fast_on_user_errors(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no model folder"):
        run_server(tmp_path / "missing", _settings())
    with pytest.raises(ArtifactError, match="ONNX graph"):
        run_server(model_dir, _settings(backend="onnx"))
    with pytest.raises(ArtifactError, match="ONNX graph"):
        run_server(model_dir, _settings(backend="onnx", workers=2))
    with pytest.raises(ConfigError, match="prediction_log.*folder"):
        run_server(model_dir, _settings(prediction_log=tmp_path))


def _run_server_in_thread(model: Path, settings: ServeSettings, timeout: float = 60.0) -> BaseException | None:
    """run_server's exception, from a thread, so a start-up that blocks fails the test instead of hanging it."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            run_server(model, settings)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert outcome, "run_server did not return"
    return outcome[0]


def test_run_server_refuses_a_folder_with_a_fifo_without_blocking(model_dir: Path, tmp_path: Path) -> None:
    for folder in _fifo_folders(model_dir, tmp_path):
        for workers in (1, 2):
            error = _run_server_in_thread(folder, _settings(workers=workers))
            assert isinstance(error, ArtifactError), repr(error)
            assert "FIFO" in str(error) and "\n" not in str(error)


def test_run_server_turns_any_load_error_into_one_line(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunesmith.serve.state as app_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("labels")

    monkeypatch.setattr(app_module, "load_served_model", broken)
    error = _run_server_in_thread(model_dir, _settings(port=0))
    assert isinstance(error, ArtifactError), repr(error)
    assert "cannot be loaded (KeyError: 'labels')" in str(error) and "\n" not in str(error)


# --- ONNX ----------------------------------------------------------------------------------


def test_onnx_backend(model_dir: Path, tmp_path: Path, expected: list[str]) -> None:
    try:
        from tunesmith.export.onnx import export_onnx
    except ImportError as exc:  # pragma: no cover - export is optional
        pytest.skip(f"ONNX export unavailable: {exc}")
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    export_onnx(folder, quantize="int8", sample_size=8)
    with serving(folder, backend="onnx", precision="int8") as c:
        r = c.post("/v1/predict", json={"inputs": TEXTS})
        assert r.status_code == 200
        body = r.json()
        assert body["backend"] == "onnx"
        assert [p["label"] for p in body["predictions"]] == expected
        assert c.get("/v1/metadata").json()["precision"] == "int8"
