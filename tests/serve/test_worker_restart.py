"""``tunesmith serve --workers 2`` as a real process: a killed worker is replaced and nothing it
admitted before a SIGTERM is lost.

Each test finds the worker that holds a given client connection by reading the kernel's
connection table (psutil), so a request can be sent to the very worker that is then killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.serve.test_process import Server, served_model  # noqa: F401 - served_model is a fixture

psutil = pytest.importorskip("psutil")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow

BIG = 6000  # rows of a request that keeps a worker busy for a while
TEXT = "a great fun movie with a plot"


@pytest.fixture(scope="module")
def two_workers(served_model: tuple[Path, str]) -> Iterator[Server]:  # noqa: F811 - the fixture
    model, backend = served_model
    if backend != "onnx":  # pragma: no cover - two torch workers take too long to start here
        pytest.skip("needs the ONNX exporter for a fast start")
    srv = Server(
        model,
        backend,
        "--workers",
        "2",
        "--threads",
        "1",
        "--max-rows-per-request",
        str(BIG),
        "--max-queue",
        str(4 * BIG),
        "--max-body-bytes",
        str(64 * BIG),
        "--request-timeout-s",
        "60",
    )
    try:
        srv.wait_ready()
        _wait(lambda: len(_workers(srv)) == 2 and _ready_count(srv) == 2, 120)
        yield srv
    finally:
        srv.stop()


def _workers(srv: Server) -> list[int]:
    out = []
    for child in psutil.Process(srv.proc.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                out.append(child.pid)
        except psutil.Error:
            continue
    return sorted(out)


def _ready_count(srv: Server) -> int:
    return sum(1 for line in srv.output().splitlines() if "tunesmith: model" in line and " ready " in line)


def _holder(workers: list[int], local_port: int) -> int | None:
    """The worker that accepted the client connection from ``local_port``."""
    for pid in workers:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.raddr and c.raddr.port == local_port for c in conns):
            return pid
    return None


def _connect_to(srv: Server, pid: int, tries: int = 200) -> socket.socket:
    """A connection that worker ``pid`` accepted (the workers share one listening socket)."""
    for _ in range(tries):
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        port = sock.getsockname()[1]
        holder = None
        for _ in range(40):
            holder = _holder(_workers(srv), port)
            if holder is not None:
                break
            time.sleep(0.01)
        if holder == pid:
            return sock
        sock.close()
    raise AssertionError(f"worker {pid} accepted none of {tries} connections")


def _post(sock: socket.socket, rows: int) -> tuple[int, dict]:
    """POST /v1/predict of ``rows`` rows on a raw socket; (status, JSON body)."""
    body = json.dumps({"inputs": [{"text": TEXT}] * rows}).encode()
    head = f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer")
        data += chunk
    header, _, rest = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(fields["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of the answer")
        rest += chunk
    return int(lines[0].split()[1]), json.loads(rest)


def _kill_busy_worker(srv: Server, sig: signal.Signals) -> tuple[int, float, dict]:
    """Send a big request to one worker, signal that worker while it computes; what came back."""
    victim = min(_workers(srv))
    sock = _connect_to(srv, victim)
    outcome: dict = {}

    def send() -> None:
        try:
            outcome["status"], outcome["body"] = _post(sock, BIG)
        except OSError as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.3)  # the body is read and the rows are queued or in the model
    killed_at = time.monotonic()
    os.kill(victim, sig)
    sender.join(60)
    sock.close()
    assert "at" in outcome, "the request neither finished nor failed"
    return victim, killed_at, outcome


def _replaced(srv: Server, before: set[int], ready_before: int) -> int:
    """The new worker's pid, once it logged its model ready."""
    _wait(lambda: len(set(_workers(srv)) - before) == 1 and _ready_count(srv) > ready_before, 120)
    (new,) = set(_workers(srv)) - before
    return new


def test_a_sigtermed_worker_answers_what_it_admitted_and_is_replaced(two_workers: Server) -> None:
    srv = two_workers
    before, ready_before = set(_workers(srv)), _ready_count(srv)
    _, killed_at, outcome = _kill_busy_worker(srv, signal.SIGTERM)
    # The request the worker was computing when SIGTERM came finished, in full.
    assert outcome.get("status") == 200, outcome
    assert len(outcome["body"]["predictions"]) == BIG
    assert outcome["at"] > killed_at, "the request ended before the signal: nothing was tested"
    new = _replaced(srv, before, ready_before)
    with _connect_to(srv, new) as sock:
        status, body = _post(sock, 3)
    assert status == 200 and len(body["predictions"]) == 3


def test_a_stopping_worker_refuses_none_of_the_requests_it_reads(two_workers: Server) -> None:
    """Requests that reach a worker on its kept-alive connections after SIGTERM, until uvicorn
    closes them, are answered, not refused with 503: the other worker serves the next ones."""
    srv = two_workers
    before, ready_before = set(_workers(srv)), _ready_count(srv)
    victim = min(before)
    socks = [_connect_to(srv, victim) for _ in range(3)]
    statuses: list[int] = []

    def hammer(sock: socket.socket) -> None:
        while True:
            try:
                status, _ = _post(sock, 1)
            except OSError:  # the worker closed the connection: it is leaving
                return
            statuses.append(status)

    threads = [threading.Thread(target=hammer, args=(sock,), daemon=True) for sock in socks]
    for t in threads:
        t.start()
    time.sleep(0.5)
    answered_before = len(statuses)
    os.kill(victim, signal.SIGTERM)
    for t in threads:
        t.join(60)
    for sock in socks:
        sock.close()
    assert answered_before > 10, "the connections carried no traffic before the signal"
    assert set(statuses) == {200}, {code: statuses.count(code) for code in set(statuses)}
    _replaced(srv, before, ready_before)


def test_a_sigkilled_worker_is_replaced_and_only_its_in_flight_request_is_lost(two_workers: Server) -> None:
    srv = two_workers
    before, ready_before = set(_workers(srv)), _ready_count(srv)
    victim, _, outcome = _kill_busy_worker(srv, signal.SIGKILL)
    # Nothing drains a SIGKILLed process: its request fails at once (no hang), as a closed connection.
    assert "error" in outcome, outcome
    assert victim not in _workers(srv)
    new = _replaced(srv, before, ready_before)
    with _connect_to(srv, new) as sock:
        status, _ = _post(sock, 3)
    assert status == 200
    with httpx.Client(base_url=srv.base) as client:
        assert all(client.post("/v1/predict", json={"inputs": TEXT}).status_code == 200 for _ in range(20))


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, "timed out waiting"
        time.sleep(0.05)
