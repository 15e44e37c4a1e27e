"""The prediction server as a real process: uvicorn on an ephemeral loopback port.

The model is exported to ONNX when the exporter is available: an ONNX server starts in about a
second because it never imports PyTorch. Without the exporter the tests fall back to the torch
backend (slower to start) and skip the multi-worker test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_reviews
from tunesmith import FineTuner

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
BIG = 8000  # rows of one slow-ish request
MAX_BODY = 400_000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("serve_proc")
    folder = root / "model"
    FineTuner(
        backbone="tiny-text",
        epochs=3,
        batch_size=8,
        lr=3e-3,
        max_length=32,
        progress=False,
        runs_dir=str(root / "runs"),
        num_threads=1,
    ).fit(make_reviews(64), target="label").save(folder)
    try:
        from tunesmith.export.onnx import export_onnx
    except ImportError:  # pragma: no cover - exporter not there yet
        return folder, "torch"
    export_onnx(folder, quantize="int8", sample_size=8)
    return folder, "onnx"


class Server:
    def __init__(self, model: Path, backend: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(model.parent / f"server-{self.port}.log", "w+")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "tunesmith.serve", str(model), "--port", str(self.port), "--backend", backend]
        inherited = {k: v for k, v in os.environ.items() if k not in ("TUNESMITH_API_KEY", "TUNESMITH_ADMIN_TOKEN")}
        full_env = {**inherited, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.proc = subprocess.Popen(
            [*cmd, *args], cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, text=True
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            assert self.proc.poll() is None, f"server exited early:\n{self.output()}"
            try:
                if httpx.get(self.base + "/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:  # pragma: no cover - only when the test failed already
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(served_model: tuple[Path, str]) -> Iterator[Server]:
    model, backend = served_model
    srv = Server(
        model,
        backend,
        "--threads",
        "1",
        "--max-rows-per-request",
        str(BIG),
        "--max-queue",
        str(8 * BIG),
        "--max-body-bytes",
        str(MAX_BODY),
        "--request-timeout-s",
        "60",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _raw_request(port: int, head: bytes, chunks: list[bytes] = []) -> bytes:  # noqa: B006 - never mutated
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        for chunk in chunks:
            s.sendall(chunk)
        data = b""
        while b"\r\n\r\n" not in data:
            part = s.recv(65536)
            if not part:
                break
            data += part
        return data


def test_serves_predictions_on_loopback(server: Server, served_model: tuple[Path, str]) -> None:
    r = httpx.post(server.base + "/v1/predict", json={"inputs": ["great fun movie", "awful boring movie"]})
    assert r.status_code == 200
    body = r.json()
    assert body["backend"] == served_model[1]
    assert [p["label"] for p in body["predictions"]] == ["pos", "neg"]
    assert "tunesmith_http_requests_total" in httpx.get(server.base + "/metrics").text


def test_oversized_content_length_is_refused_before_the_body(server: Server) -> None:
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
    )
    # Not one byte of the body is sent: the answer can only come from the headers.
    response = _raw_request(server.port, head)
    assert response.startswith(b"HTTP/1.1 413"), response


def test_oversized_chunked_body_is_cut_off_at_the_limit(server: Server) -> None:
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"y" * 100_000
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    # Five chunks pass the limit; the final zero-length chunk is never sent, so a server that
    # waited for the whole body would never answer.
    response = _raw_request(server.port, head, [framed] * 5)
    assert response.startswith(b"HTTP/1.1 413"), response


def _metric(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_requests_of_clients_that_hung_up_are_not_computed(server: Server) -> None:
    rows_before = _metric(server.base, "tunesmith_predicted_rows_total")
    gone_before = _metric(server.base, 'tunesmith_rejections_total{reason="disconnected"}')
    busy = threading.Thread(
        target=lambda: httpx.post(server.base + "/v1/predict", json={"inputs": ["x"] * BIG}, timeout=60)
    )
    busy.start()
    until = time.monotonic() + 30
    while _metric(server.base, "tunesmith_model_busy_rows") < BIG:
        assert time.monotonic() < until
        time.sleep(0.005)
    # Queued behind the big request; the client gives up long before the model is free.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base + "/v1/predict", json={"inputs": ["abandoned"] * 77}, timeout=0.05)
    busy.join()
    until = time.monotonic() + 10
    while _metric(server.base, 'tunesmith_rejections_total{reason="disconnected"}') == gone_before:
        assert time.monotonic() < until, "the disconnect was never noticed"
        time.sleep(0.01)
    assert _metric(server.base, "tunesmith_predicted_rows_total") - rows_before == BIG


def test_sigterm_finishes_admitted_requests_and_exits_0(server: Server) -> None:
    results: list[tuple[int, int]] = []
    lock = threading.Lock()

    def post(i: int) -> None:
        with httpx.Client(base_url=server.base, timeout=60) as client:
            r = client.post("/v1/predict", json={"inputs": [f"great fun movie number {i}"] * BIG})
            with lock:
                results.append((r.status_code, len(r.json().get("predictions", []))))

    n = 6
    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    # Wait until every request is inside the server (the gauge counts this /metrics call too).
    until = time.monotonic() + 30
    while True:
        text = httpx.get(server.base + "/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("tunesmith_requests_in_flight "))
        if float(line.split()[-1]) >= n + 1:
            break
        assert time.monotonic() < until, "requests never arrived"
        time.sleep(0.005)
    server.proc.send_signal(signal.SIGTERM)
    # New connections are refused while the admitted requests are still being answered.
    refused = False
    until = time.monotonic() + 5
    while time.monotonic() < until and not refused:
        try:
            httpx.get(server.base + "/live", timeout=0.5)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            # Refused outright, or reset: a connection that reached the backlog just as the
            # listener closed was never admitted, and the kernel resets it.
            refused = True
        time.sleep(0.01)
    unfinished_when_refused = n - len(results)
    for t in threads:
        t.join(60)
    assert server.proc.wait(30) == 0, server.output()
    assert refused
    assert unfinished_when_refused > 0, "the requests finished before the signal; nothing was drained"
    assert results == [(200, BIG)] * n
    out = server.output()
    assert "Traceback" not in out
    assert "Application shutdown complete" in out


def test_startup_error_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.serve", str(tmp_path / "missing"), "--backend", "torch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no model folder" in lines[0]


def _fifo_folder(model: Path, root: Path, name: str) -> Path:
    folder = root / f"fifo-{name}"
    shutil.copytree(model, folder)
    target = folder / name
    if target.exists():
        target.unlink()
    os.mkfifo(target)
    return folder


@pytest.mark.parametrize("name", ["tunesmith.json", "vocab.extra"])
def test_a_folder_holding_a_fifo_is_refused_in_one_line(
    served_model: tuple[Path, str], tmp_path: Path, name: str
) -> None:
    folder = _fifo_folder(served_model[0], tmp_path, name)
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.serve", str(folder), "--backend", served_model[1]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "FIFO" in lines[0]


def test_a_reload_to_a_folder_holding_a_fifo_returns_and_the_server_still_stops(
    served_model: tuple[Path, str], tmp_path: Path
) -> None:
    model, backend = served_model
    folders = [_fifo_folder(model, tmp_path, name) for name in ("tunesmith.json", "vocab.extra")]
    srv = Server(model, backend, "--threads", "1", env={"TUNESMITH_ADMIN_TOKEN": "adm"})
    try:
        srv.wait_ready()
        auth = {"Authorization": "Bearer adm"}
        for folder in folders:
            r = httpx.post(srv.base + "/admin/reload", json={"path": str(folder)}, headers=auth, timeout=10)
            assert r.status_code == 422, r.text
            assert r.json()["reloaded"] is False and "FIFO" in r.json()["detail"]
        # The reload lock is free and the model still serves.
        r = httpx.post(srv.base + "/admin/reload", headers=auth, timeout=60)
        assert r.status_code == 200 and r.json()["reloaded"] is True, r.text
        assert httpx.post(srv.base + "/v1/predict", json={"inputs": "great fun movie"}).status_code == 200
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0, srv.output()
        out = srv.output()
    finally:
        srv.stop()
    assert "Traceback" not in out and "Application shutdown complete" in out


def test_several_workers_each_load_the_model(served_model: tuple[Path, str], tmp_path: Path) -> None:
    model, backend = served_model
    if backend != "onnx":  # pragma: no cover - two torch workers take too long to start here
        pytest.skip("needs the ONNX exporter for a fast start")
    log = tmp_path / "preds.db"
    # The API key travels to the workers through the environment, never on a command line.
    srv = Server(model, backend, "--workers", "2", "--prediction-log", str(log), env={"TUNESMITH_API_KEY": "k"})
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.base, headers={"X-API-Key": "k"}) as client:
            for _ in range(20):
                r = client.post("/v1/predict", json={"inputs": "great fun movie"})
                assert r.status_code == 200
            assert client.post("/v1/predict", json={"inputs": "x"}, headers={"X-API-Key": "no"}).status_code == 401
            server_info = client.get("/v1/metadata").json()["server"]
        assert server_info["workers"] == 2
        assert server_info["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
        # Each worker process opened a log file of its own.
        _wait(lambda: len(list(tmp_path.glob("preds.pid*.db"))) == 2)
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.output()
    from tunesmith.serve import read_prediction_log

    log_rows = read_prediction_log(log)
    assert len(log_rows) == 20
    assert set(log_rows["status"]) == {200}


def _wait(condition: Any, timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, "timed out waiting"
        time.sleep(0.05)
