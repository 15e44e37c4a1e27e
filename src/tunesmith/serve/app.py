"""The FastAPI application of ``tunesmith serve``.

Endpoints: ``POST /v1/predict`` (a text model) or ``POST /v1/recommend`` (a recommender, see
:mod:`tunesmith.serve.recommend`), ``GET /v1/metadata``, ``GET /live``, ``GET /ready``,
``GET /metrics`` and, when an admin token is set, ``POST /admin/reload``. See
``docs/serving.md`` for the request and response formats.

The per-request path is kept short because it is measured: one pure-ASGI middleware
(:class:`_Gate`) does authentication, body-size limits, cheap overload rejection and metrics
before FastAPI routes the request; the handler parses the body with pydantic's JSON parser
and hands the rows to the :class:`~tunesmith.serve.batcher.Batcher`, which runs the model on
its own thread. Nothing on the event loop touches pandas or the model.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import math
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from tunesmith.errors import ArtifactError, DataError, TunesmithError
from tunesmith.runs.trust import SafeFolder
from tunesmith.serve.batcher import (
    Answer,
    Batcher,
    ClientGone,
    DeadlineExceeded,
    QueueFull,
    ShuttingDown,
    call_with_lower_priority,
)
from tunesmith.serve.predlog import LogRecord, PredictionLog
from tunesmith.serve.recommend import TASK as RECOMMENDATION
from tunesmith.serve.recommend import (
    RecommenderPredictor,
    RecommendRequest,
    RecommendResponse,
    load_served_model,
    request_row,
)
from tunesmith.serve.schemas import (
    ErrorOut,
    LiveOut,
    PredictionOut,
    PredictRequest,
    PredictResponse,
    ReadyOut,
    ReloadOut,
    ReloadRequest,
    RowSpec,
    ServedByOut,
    ValidationIssue,
    json_safe,
)
from tunesmith.serve.settings import SETTINGS_ENV, ServeSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tunesmith.serve.batcher import ServedModel

__all__ = [
    "ErrorOut",
    "LiveOut",
    "PredictRequest",
    "PredictResponse",
    "PredictionOut",
    "ReadyOut",
    "ReloadOut",
    "ReloadRequest",
    "ServedByOut",
    "ServerState",
    "ValidationIssue",
    "create_app",
    "create_app_from_env",
]

logger = logging.getLogger("tunesmith.serve")
T = TypeVar("T")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MODEL_ENV = "TUNESMITH_SERVE_MODEL"
# Fine at the low end: the interesting latencies of a small model are single milliseconds.
# fmt: off
LATENCY_BUCKETS = (
    0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.0125, 0.015, 0.02,
    0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024, 2048, 4096)
REJECTION_REASONS = (
    "unauthorized", "body_too_large", "too_many_rows", "queue_full", "timeout", "shutting_down", "invalid",
    "disconnected",
)
# fmt: on
ENDPOINTS = frozenset(
    {
        "/v1/predict",
        "/v1/recommend",
        "/v1/metadata",
        "/live",
        "/ready",
        "/metrics",
        "/admin/reload",
        "/openapi.json",
        "/docs",
    }
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


# The Prometheus text format every scraper reads; the 1.0.0 content type of newer clients only
# differs for metric names outside the legacy charset, which tunesmith does not use.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MAX_DETAIL_CHARS = 2000


def _dumps(payload: Any, *, non_finite: Literal["text", "null"] = "text") -> bytes:
    """Strict JSON: a NaN or an infinity is spelled as a string (an echoed input) or, with
    ``non_finite="null"``, as null (a model output that is not a number)."""
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        safe = json_safe(payload, non_finite=non_finite)
        return json.dumps(safe, separators=(",", ":"), allow_nan=False).encode()


# --- metrics -------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics of one app, in a registry of its own (several apps may share a process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tunesmith_http_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "tunesmith_http_request_duration_seconds",
            "Time from request start to the end of the response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "tunesmith_batch_rows", "Rows per model call (micro-batch).", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "tunesmith_batch_requests", "Requests per model call (micro-batch).", buckets=BATCH_BUCKETS, registry=r
        )
        self.model_seconds = Histogram(
            "tunesmith_model_seconds", "Time of one model call.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.rows = Counter("tunesmith_predicted_rows", "Rows predicted.", registry=r)
        self.queue_rows = Gauge("tunesmith_queue_rows", "Rows waiting for the model.", registry=r)
        self.busy_rows = Gauge(
            "tunesmith_model_busy_rows", "Rows of the model call running now (0: the model is idle).", registry=r
        )
        self.in_flight = Gauge("tunesmith_requests_in_flight", "HTTP requests being handled.", registry=r)
        self.ready = Gauge("tunesmith_ready", "1 when the model is warmed up and serving.", registry=r)
        self.rejections = Counter("tunesmith_rejections", "Requests refused, by reason.", ["reason"], registry=r)
        self.model_info = Gauge(
            "tunesmith_model_info",
            "The model serving now (value 1).",
            ["model_version", "backend", "precision"],
            registry=r,
        )
        self.reloads = Counter("tunesmith_reloads", "Model reloads by result.", ["result"], registry=r)
        self.log_records = Counter(
            "tunesmith_prediction_log_records",
            "Prediction log records by result (dropped: the buffer was full or the write failed).",
            ["result"],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        for result in ("written", "dropped"):
            self.log_records.labels(result)
        self._children: dict[tuple[str, int], Any] = {}
        self._latency: dict[str, Any] = {}

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        key = (endpoint, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(endpoint, str(status))
        child.inc()
        hist = self._latency.get(endpoint)
        if hist is None:
            hist = self._latency[endpoint] = self.latency.labels(endpoint)
        hist.observe(seconds)

    def batch(self, rows: int, requests: int, seconds: float) -> None:
        """Record one model call (called on the event loop by the batcher)."""
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.model_seconds.observe(seconds)
        self.rows.inc(rows)

    def set_model(self, predictor: ServedModel) -> None:
        self.model_info.clear()
        self.model_info.labels(predictor.version, predictor.backend, predictor.precision).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# --- server state --------------------------------------------------------------------------


class ServerState:
    """What one server process holds: the model (through the batcher), the log and the metrics."""

    def __init__(
        self, model: Path, settings: ServeSettings, predictor: ServedModel | None = None, *, owns_process: bool = False
    ) -> None:
        self.settings = settings
        self.owns_process = owns_process
        # Process-wide tuning only when the server has the process to itself (not under tests).
        self.nice = settings.model_nice if owns_process else 0
        self.model_path = model
        # Fixed for the life of the server: the routes are built for one kind of model, so a
        # reload must bring the same kind.
        self.recommender = (
            isinstance(predictor, RecommenderPredictor) if predictor is not None else peek_task(model) == RECOMMENDATION
        )
        self.model_endpoint = "/v1/recommend" if self.recommender else "/v1/predict"
        self.backend: str = settings.backend
        self.precision: str = settings.precision
        self.threads = settings.threads_per_worker()
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.predlog: PredictionLog | None = None
        self.ready = False
        self.draining = False
        self.failure: str | None = None
        self.in_flight = 0
        self._initial = predictor
        self._warm_task: asyncio.Task[None] | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._meta: tuple[ServedModel, dict[str, Any]] | None = None
        # What the rows of the model serving now look like (the OpenAPI document and the checks
        # of RowSpec.check); set with the model.
        self.row_spec = RowSpec.of(predictor) if predictor is not None else RowSpec("free")
        self.api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self.admin_token = settings.admin_token.get_secret_value().encode() if settings.admin_token else None
        m = self.metrics
        m.queue_rows.set_function(lambda: float(self.batcher.queued_rows if self.batcher else 0))
        m.busy_rows.set_function(lambda: float(self.batcher.busy_rows if self.batcher else 0))
        m.in_flight.set_function(lambda: float(self.in_flight))
        m.ready.set_function(lambda: 1.0 if self.ready else 0.0)

    # --- lifecycle -------------------------------------------------------------------------

    def load(
        self, path: Path, backend: str, precision: str, version: str | None, *, recommender: bool | None = None
    ) -> ServedModel:
        """Load a predictor or a recommender (blocking; run it off the event loop).

        With ``recommender`` given, a folder holding the other kind of model is refused before
        anything is loaded.
        """
        return load_checked(
            path,
            backend=backend,
            precision=precision,
            threads=self.threads,
            version=version,
            # A reload keeps the store of the start and re-reads it: adapters written since then
            # serve from the reload on.
            adapters=self.settings.adapters,
            backbone=self.settings.backbone,
            nice=self.nice,
            recommender=recommender,
        )

    async def start(self) -> None:
        """Load the model if not given, start the batcher and the log, and warm up in the background."""
        s = self.settings
        predictor = self._initial
        if predictor is None:
            path = self.model_path
            predictor = await off_loop(lambda: self.load(path, s.backend, s.precision, s.model_version), _close)
        self._initial = None
        self.row_spec = RowSpec.of(predictor)
        self._reload_lock = asyncio.Lock()
        self.batcher = Batcher(
            predictor,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue=s.max_queue,
            on_batch=self.metrics.batch,
            nice=self.nice,
        )
        await self.batcher.start()
        self.metrics.set_model(predictor)
        if s.prediction_log is not None:
            path = Path(s.prediction_log)
            if s.workers > 1:
                # One file per worker: SQLite handles several writers, but rotation by rename
                # would pull the file from under the other processes.
                path = path.with_name(f"{path.stem}.pid{os.getpid()}{path.suffix}")
            written = self.metrics.log_records.labels("written")
            dropped = self.metrics.log_records.labels("dropped")
            self.predlog = PredictionLog(
                path,
                fmt=s.prediction_log_format,
                rotate_rows=s.prediction_log_rotate_rows,
                buffer_rows=s.prediction_log_buffer_rows,
                buffer_bytes=s.prediction_log_buffer_bytes,
                on_written=written.inc,
                on_dropped=dropped.inc,
            )
            await asyncio.to_thread(self.predlog.start)
        self._warm_task = asyncio.create_task(self._warm_up(predictor))

    async def _warm_up(self, predictor: ServedModel) -> None:
        assert self.batcher is not None
        try:
            await self.batcher.call(predictor.warmup)
        except Exception as exc:
            self.failure = f"the warm-up prediction failed: {exc}"
            logger.error("tunesmith: %s; /ready stays 503", self.failure)
            return
        if self.owns_process:
            # Everything loaded so far (libraries, the model) lives as long as the process: out
            # of the collector's sight, full collections stay short instead of pausing the
            # event loop for tens of milliseconds under load.
            gc.collect()
            gc.freeze()
        if not self.draining:
            self.ready = True
            logger.info(
                "tunesmith: model %s ready (%s, %s, %d threads)",
                predictor.version,
                predictor.backend,
                predictor.precision,
                self.threads,
            )

    def begin_drain(self) -> None:
        """Stop reporting ready and admitting predictions (called on SIGTERM, before the server
        stops accepting connections).

        A prediction arriving from now on, say on a kept-alive connection, gets 503 with
        Retry-After; those admitted before still run to the end.
        """
        self.draining = True
        self.ready = False
        if self.batcher is not None:
            self.batcher.refuse_new()

    async def stop(self) -> None:
        """Finish queued work, then close the model and flush and close the prediction log."""
        self.begin_drain()
        if self._warm_task is not None and not self._warm_task.done():
            await asyncio.wait({self._warm_task}, timeout=self.settings.graceful_timeout_s)
        if self.batcher is not None:
            if not await self.batcher.drain(self.settings.graceful_timeout_s):
                logger.warning("tunesmith: queued predictions did not finish before the graceful timeout")
            await self.batcher.close()
        if self.predlog is not None:
            await asyncio.to_thread(self.predlog.close)

    # --- helpers for the handlers ------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        assert self.batcher is not None
        predictor = self.batcher.predictor
        if self._meta is None or self._meta[0] is not predictor:
            try:
                # Strict JSON: a metric may be NaN (say, a score undefined on a one-class test split).
                meta = json_safe(predictor.metadata())
            except Exception as exc:
                # The folder changed under the server (a file replaced by a link, say): what
                # serves is still known, and the endpoint stays up.
                logger.warning("tunesmith: the model's metadata cannot be read: %s", exc)
                meta = {
                    "task": getattr(predictor, "task", None),
                    "model_version": predictor.version,
                    "backend": predictor.backend,
                    "precision": predictor.precision,
                    "metadata_error": f"{type(exc).__name__}: {exc}"[:MAX_DETAIL_CHARS],
                }
            self._meta = (predictor, meta)
        out = dict(self._meta[1])
        out["limits"] = self.settings.limits()
        out["server"] = {"workers": self.settings.workers, "threads": self.threads, "ready": self.ready}
        return out

    def log(self, record: LogRecord) -> None:
        if self.predlog is not None:
            self.predlog.write(record)

    def _reload_answer(self, status: int, detail: str | list[dict[str, Any]]) -> Response:
        """A failed reload's answer: what keeps serving, and why."""
        assert self.batcher is not None
        old = self.batcher.predictor
        if isinstance(detail, str) and len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 3] + "..."
        body = {
            "reloaded": False,
            "model_version": old.version,
            "backend": old.backend,
            "precision": old.precision,
            "detail": json_safe(detail),
        }
        return Response(_dumps(body), status_code=status, media_type="application/json")

    async def reload(self, req: ReloadRequest) -> Response:
        """Load the model ``req`` names beside the serving one and switch over; the old one
        keeps serving when anything goes wrong (422), and a reload already running is a 409.
        """
        assert self.batcher is not None and self._reload_lock is not None
        if self._reload_lock.locked():
            # Refused rather than queued: a load that takes long (or never ends) must not pile
            # up admin requests behind it.
            return self._reload_answer(409, "another reload is running; try again when it is done")
        async with self._reload_lock:
            old = self.batcher.predictor
            path = Path(req.path) if req.path else self.model_path
            backend = req.backend or self.backend
            precision = req.precision or (self.precision if backend == self.backend else "auto")
            started = time.monotonic()
            try:
                # A thread of its own: the model thread keeps serving the old model, and a load
                # stuck in a system call holds up neither the event loop nor the process's exit.
                new = await off_loop(lambda: self._load_and_warm(path, backend, precision, req.model_version), _close)
            except Exception as exc:
                self.metrics.reloads.labels("failed").inc()
                if isinstance(exc, TunesmithError):
                    detail = str(exc)
                    logger.warning("tunesmith: reload failed, %s keeps serving: %s", old.version, detail)
                else:
                    # Not an error tunesmith knows: a bug or a folder no check foresaw. The server
                    # stays up with the old model; the log has the traceback.
                    detail = f"the model cannot be loaded: {type(exc).__name__}: {exc}"
                    logger.error("tunesmith: reload failed, %s keeps serving", old.version, exc_info=exc)
                return self._reload_answer(422, detail)
            self.batcher.swap(new)
            # The cached metadata holds the old predictor: drop it so the old model can go.
            self._meta = None
            self.row_spec = RowSpec.of(new)
            # A good model serves now, whatever became of the first warm-up.
            self.failure = None
            self.ready = not self.draining
            if self.owns_process:
                gc.freeze()  # the new model's objects, as after the first warm-up
            self.model_path, self.backend, self.precision = path, backend, precision
            self.metrics.set_model(new)
            self.metrics.reloads.labels("ok").inc()
            seconds = round(time.monotonic() - started, 3)
            logger.info("tunesmith: reloaded %s -> %s in %.2fs", old.version, new.version, seconds)
            out = ReloadOut(
                reloaded=True,
                model_version=new.version,
                backend=new.backend,
                precision=new.precision,
                previous_version=old.version,
                seconds=seconds,
            )
            return Response(_dumps(out.model_dump(exclude_none=True)), media_type="application/json")

    def _load_and_warm(self, path: Path, backend: str, precision: str, version: str | None) -> ServedModel:
        predictor = self.load(path, backend, precision, version, recommender=self.recommender)
        try:
            predictor.warmup()
        except Exception as exc:
            predictor.close()
            raise ArtifactError(f"the model failed its warm-up prediction: {exc}", path=path) from None
        return predictor


def _close(predictor: ServedModel) -> None:
    """Close a model that was loaded after nobody waited for it any more."""
    try:
        predictor.close()
    except Exception:  # pragma: no cover - closing is best effort
        logger.debug("tunesmith: closing an orphaned model failed", exc_info=True)


async def off_loop(fn: Callable[[], T], orphan: Callable[[T], None] | None = None) -> T:
    """``fn()`` on a daemon thread of its own, awaited without blocking the event loop.

    Unlike :func:`asyncio.to_thread` (the loop's default executor, which ``asyncio.run`` joins
    at exit), a thread stuck in a system call can hold up neither the process's exit nor a
    cancelled await: cancellation returns at once, and a result that arrives when nobody waits
    for it any more goes to ``orphan`` (to close a loaded model).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.cancelled():
            if error is None and orphan is not None:
                orphan(result)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except Exception as exc:
            error = exc
        except BaseException as exc:  # SystemExit and friends cannot travel through a future
            error = RuntimeError(f"{type(exc).__name__}: {exc}")
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody waits
            if error is None and orphan is not None:
                orphan(result)

    threading.Thread(target=run, name="tunesmith-load", daemon=True).start()
    return await future


def peek_task(path: str | os.PathLike[str]) -> str | None:
    """The ``task`` in a folder's ``tunesmith.json``, or ``None`` when it cannot be read. Never blocks.

    The file is opened like every file of a loaded folder (no link followed, nothing but a
    regular file read): a FIFO named ``tunesmith.json`` would block a plain read forever.
    """
    from tunesmith.runs.trust import read_json_file

    try:
        meta = read_json_file(Path(path) / "tunesmith.json")
    except (TunesmithError, OSError, ValueError):
        return None
    task = meta.get("task")
    return task if isinstance(task, str) else None


def checked_task(path: str | os.PathLike[str]) -> str | None:
    """The ``task`` of the model folder ``path``, after the whole folder passed the trust checks.

    :meth:`~tunesmith.runs.trust.SafeFolder.open` refuses links, FIFOs, devices, code and
    pickles anywhere in the folder without opening anything but regular files. It runs before
    the loaders, which look at ``tunesmith.json`` (to tell a recommender from a text model)
    before their own scan.

    Raises:
        ArtifactError: the folder is missing, unsafe, or its ``tunesmith.json`` is unreadable.
    """
    return _opened_task(path)[1]


def _opened_task(path: str | os.PathLike[str]) -> tuple[SafeFolder, str | None]:
    """:func:`checked_task` and the folder it opened, for the loader to read without a second scan."""
    folder = SafeFolder.open(path)
    meta = folder.read_json("tunesmith.json")
    task = meta.get("task")
    return folder, task if isinstance(task, str) else None


def load_checked(
    path: Path,
    *,
    backend: str,
    precision: str,
    threads: int | None,
    version: str | None,
    adapters: str | os.PathLike[str] | None = None,
    nice: int = 0,
    recommender: bool | None = None,
    backbone: str | None = None,
) -> ServedModel:
    """The served model of folder ``path``, loaded after :func:`checked_task` passed it (blocking).

    ``nice`` lowers the priority of the loading thread (and so of the compute threads the
    runtime starts); with ``recommender`` given, a folder holding the other kind of model is
    refused before anything is loaded.

    Raises:
        TunesmithError: the folder is unsafe, of the wrong kind, or its model cannot be loaded.
    """
    opened, task = _opened_task(path)
    if recommender is not None and (task == RECOMMENDATION) != recommender:
        serving = "a recommendation model" if recommender else "a text model"
        raise ArtifactError(
            f"this server serves {serving}; the folder holds a {task!r} model",
            path=path,
            hint="Reload to a model of the same task, or start another server for this one",
        )
    return call_with_lower_priority(
        lambda: load_served_model(
            opened,
            backend=backend,
            precision=precision,
            threads=threads,
            version=version,
            adapters=adapters,
            backbone=backbone,
        ),
        nice,
    )


# --- the ASGI gate -------------------------------------------------------------------------


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes", headers={"connection": "close"})


def _secret_ok(given: bytes | None, secret: bytes) -> bool:
    return given is not None and hmac.compare_digest(given, secret)


async def _send_json(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = _dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Gate:
    """Pure ASGI middleware: auth, body limit, early 503, request metrics.

    Everything here happens before the body is read, so refusals cost next to nothing.
    (Starlette's BaseHTTPMiddleware would add a task and a stream per request.)
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.max_body = state.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        started = time.monotonic()
        scope["tunesmith.started"] = started
        path: str = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        state.in_flight += 1
        ticket = None
        try:
            refusal = self._screen(scope, path)
            if refusal is not None:
                code, reason, payload, headers = refusal
                state.metrics.rejections.labels(reason).inc()
                await _send_json(send_status, code, payload, headers)
                return
            if path == state.model_endpoint and state.batcher is not None:
                ticket = scope["tunesmith.ticket"] = state.batcher.arrive()
            await self.app(scope, self._limited(scope, receive), send_status)
        finally:
            if ticket is not None and state.batcher is not None:
                state.batcher.leave(ticket)
            state.in_flight -= 1
            state.metrics.request(endpoint, status, time.monotonic() - started)

    def _screen(self, scope: Scope, path: str) -> tuple[int, str, Any, list[tuple[bytes, bytes]]] | None:
        state = self.state
        length: bytes | None = None
        bearer: bytes | None = None
        api_key: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"authorization":
                if value[:7].lower() == b"bearer ":
                    bearer = value[7:].strip()
            elif key == b"x-api-key":
                api_key = value.strip()
        challenge = [(b"www-authenticate", b"Bearer")]
        if path.startswith("/v1/") and state.api_key is not None:
            if not (_secret_ok(api_key, state.api_key) or _secret_ok(bearer, state.api_key)):
                return 401, "unauthorized", {"detail": "a valid API key is required (X-API-Key header)"}, challenge
        elif path.startswith("/admin/") and state.admin_token is not None and not _secret_ok(bearer, state.admin_token):
            return 401, "unauthorized", {"detail": "a valid admin token is required (Authorization: Bearer)"}, challenge
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return 400, "invalid", {"detail": "Content-Length is not a number"}, []
            if too_big:
                # Refused without reading the body; the connection closes so the rest of it is
                # not read either.
                detail = {"detail": f"the request body is larger than {self.max_body} bytes"}
                return 413, "body_too_large", detail, [(b"connection", b"close")]
        batcher = state.batcher
        if path == state.model_endpoint and batcher is not None:
            if batcher.draining:
                return 503, "shutting_down", {"detail": "the server is shutting down"}, [(b"retry-after", b"1")]
            if batcher.full():
                retry = str(batcher.retry_after()).encode()
                return 503, "queue_full", {"detail": "the prediction queue is full"}, [(b"retry-after", retry)]
        return None

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return receive
        for key, _value in scope["headers"]:
            if key == b"content-length":
                return receive  # already checked; the server enforces the length it announced
        limit = self.max_body
        metrics = self.state.metrics
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    metrics.rejections.labels("body_too_large").inc()
                    raise _BodyTooLarge(limit)
            return message

        return receive_limited


# --- handlers ------------------------------------------------------------------------------


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False, include_context=False):
        item: dict[str, Any] = dict(err)
        item["loc"] = ("body", *err["loc"])
        if item.get("type") == "json_invalid":
            item.pop("input", None)
        out.append(item)
    return out


def _rows(inputs: Any) -> tuple[list[Any], bool]:
    """The request rows as a list and whether the request sent a single row."""
    single = not isinstance(inputs, list)
    rows = [inputs] if single else inputs
    if not rows:
        raise RequestValidationError(
            [{"type": "too_short", "loc": ("body", "inputs"), "msg": "inputs must hold at least one row", "input": []}]
        )
    for i, row in enumerate(rows):
        where: tuple[Any, ...] = ("body", "inputs") if single else ("body", "inputs", i)
        if isinstance(row, dict):
            continue
        if isinstance(row, str):
            if row.strip():
                continue
            msg = "the text is empty"
        else:
            msg = f"a row must be an object of column values or a string, got {type(row).__name__}"
        raise RequestValidationError([{"type": "value_error", "loc": where, "msg": msg, "input": row}])
    return rows, single


def _data_error_detail(exc: DataError, single: bool, rows: list[Any]) -> list[dict[str, Any]]:
    loc: list[Any] = ["body", "inputs"]
    row = None
    if exc.row is not None:
        i = exc.row - 1
        if not single:
            loc.append(i)
        row = rows[i] if 0 <= i < len(rows) else None
    if exc.column is not None:
        loc.append(exc.column)
    msg = exc.message if not exc.hint else f"{exc.message}. {exc.hint}"
    return [{"type": "value_error", "loc": loc, "msg": msg, "input": row}]


def _recommend_error_detail(exc: DataError) -> list[dict[str, Any]]:
    msg = exc.message if not exc.hint else f"{exc.message}. {exc.hint}"
    return [{"type": "value_error", "loc": ["body", exc.column or "user"], "msg": msg, "input": None}]


def _json_error(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    """``{"detail": detail}``; a detail that echoes inputs is made strict JSON first."""
    if not isinstance(detail, str):
        detail = json_safe(detail)
    return Response(_dumps({"detail": detail}), status_code=status, media_type="application/json", headers=headers)


_REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "The request's X-Request-ID (up to 64 characters of A-Za-z0-9._:-), or one made up.",
        "schema": {"type": "string"},
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "API key missing or wrong."},
    408: {"model": ErrorOut, "description": "The body did not arrive within request_timeout_s."},
    413: {"model": ErrorOut, "description": "Body larger than max_body_bytes, or more rows than max_rows_per_request."},
    415: {"model": ErrorOut, "description": "Content-Type is not application/json."},
    422: {"model": ErrorOut, "description": "Invalid request: detail lists {loc, msg} naming the row and field."},
    503: {
        "model": ErrorOut,
        "description": "Queue full or shutting down; retry after the Retry-After seconds.",
        "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}},
    },
    504: {"model": ErrorOut, "description": "The prediction did not finish within request_timeout_s."},
}


def create_app(
    model: str | os.PathLike[str],
    settings: ServeSettings,
    predictor: ServedModel | None = None,
    *,
    owns_process: bool = False,
) -> FastAPI:
    """The server app for the model folder ``model``.

    ``predictor`` is an already loaded :class:`~tunesmith.export.runtime.Predictor` for that
    folder (``run_server`` loads it up front so a bad model fails before the server starts);
    without it the app loads the model itself at start-up. The app takes ownership of the
    predictor and closes it on shutdown. ``owns_process`` (set by ``run_server``) allows
    process-wide tuning: lower priority for the model's threads (``model_nice``) and a frozen
    garbage-collector heap after warm-up.
    """
    state = ServerState(Path(model), settings, predictor, owns_process=owns_process)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="tunesmith prediction server",
        version="1",
        description="Predictions from a model fine-tuned with tunesmith. See docs/serving.md.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.tunesmith = state
    timeout = settings.request_timeout_s
    max_rows = settings.max_rows_per_request

    def log_request(
        rid: str,
        started: float,
        status: int,
        version: str,
        backend: str,
        rows: list[Any],
        *,
        outputs: list[dict[str, Any]] | None = None,
        error: str | None = None,
        nbytes: int = 0,
    ) -> None:
        if state.predlog is None:
            return
        record = LogRecord(
            timestamp=time.time(),
            request_id=rid,
            model_version=version,
            backend=backend,
            status=status,
            latency_ms=round((time.monotonic() - started) * 1000.0, 3),
            inputs=rows,
            outputs=outputs,
            error=error,
            nbytes=nbytes,
        )
        state.log(record)

    def request_id(request: Request) -> str:
        rid = request.headers.get("x-request-id") or ""
        return rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex

    async def read_body(request: Request, started: float, rid: str) -> bytes | Response:
        """The JSON body, or the response that refuses it (415, 408, 499)."""
        if not _is_json(request.headers.get("content-type")):
            return _json_error(415, "send the body as JSON with Content-Type: application/json")
        try:
            # The deadline covers the upload too: a client trickling its body holds no slot forever.
            return await asyncio.wait_for(request.body(), timeout=max(0.0, started + timeout - time.monotonic()))
        except asyncio.TimeoutError:
            state.metrics.rejections.labels("timeout").inc()
            return _json_error(408, f"the request body did not arrive within {timeout:g}s")
        except ClientDisconnect:
            # Hung up mid-upload: nobody reads an answer, but the attempt is counted and logged.
            state.metrics.rejections.labels("disconnected").inc()
            gone_early = "the client closed the connection before the request body arrived"
            if state.batcher is not None:
                serving = state.batcher.predictor
                log_request(rid, started, 499, serving.version, serving.backend, [], error=gone_early)
            return _json_error(499, gone_early)

    async def run_model(
        request: Request,
        rows: list[Any],
        probabilities: bool,
        started: float,
        data_error: Callable[[DataError], list[dict[str, Any]]],
    ) -> Answer | tuple[int, str | None, Response]:
        """The batcher's answer, or (status, error to log, response) when there is none.

        ``data_error`` words the 422 detail of a row the model cannot read. A 503 refusal
        logs nothing: the request never reached the model.
        """
        batcher = state.batcher
        assert batcher is not None
        # Completes when the client hangs up (the body is read, so the next message is the
        # disconnect): its rows are then skipped instead of computed for nobody.
        gone = asyncio.ensure_future(request.receive())
        try:
            return await batcher.submit(
                rows,
                probabilities=probabilities,
                deadline=started + timeout,
                ticket=request.scope.get("tunesmith.ticket"),
                gone=gone,
            )
        except QueueFull as exc:
            state.metrics.rejections.labels("queue_full").inc()
            return 503, None, _json_error(503, "the prediction queue is full", {"retry-after": str(exc.retry_after)})
        except ShuttingDown:
            state.metrics.rejections.labels("shutting_down").inc()
            return 503, None, _json_error(503, "the server is shutting down", {"retry-after": "1"})
        except ClientGone:
            state.metrics.rejections.labels("disconnected").inc()
            error = "the client closed the connection before the prediction was done"
            return 499, error, _json_error(499, error)
        except DeadlineExceeded:
            state.metrics.rejections.labels("timeout").inc()
            error = f"no prediction within the request timeout of {timeout:g}s"
            return 504, error, _json_error(504, error)
        except DataError as exc:
            state.metrics.rejections.labels("invalid").inc()
            return 422, str(exc), _json_error(422, data_error(exc))
        except Exception as exc:
            logger.exception("tunesmith: prediction failed")
            error = f"{type(exc).__name__}: {exc}"
            return 500, error, _json_error(500, f"the prediction failed: {error}")
        finally:
            gone.cancel()

    def invalid(errors: list[dict[str, Any]]) -> Response:
        """422 for a request that is not valid; every refused input echoed in strict JSON."""
        state.metrics.rejections.labels("invalid").inc()
        return _json_error(422, errors)

    async def predict(request: Request) -> Response:
        started: float = request.scope.get("tunesmith.started") or time.monotonic()
        rid = request_id(request)
        body = await read_body(request, started, rid)
        if isinstance(body, Response):
            return body
        try:
            req = PredictRequest.model_validate_json(body)
            rows, single = _rows(req.inputs)
        except ValidationError as exc:
            return invalid(_body_errors(exc))
        except RequestValidationError as exc:
            return invalid(list(exc.errors()))
        if len(rows) > max_rows:
            state.metrics.rejections.labels("too_many_rows").inc()
            return _json_error(
                413, f"inputs has {len(rows)} rows; this server takes at most {max_rows} per request", None
            )
        issues = state.row_spec.check(rows, single)
        if issues is not None:
            return invalid(issues)
        assert state.batcher is not None
        # Reported when the request fails; a success reports the model that answered it.
        version, backend = state.batcher.predictor.version, state.batcher.predictor.backend
        outputs = None
        answer = await run_model(
            request, rows, req.probabilities, started, lambda exc: _data_error_detail(exc, single, rows)
        )
        if isinstance(answer, Answer):
            status, error = 200, None
            outputs = answer.predictions
            version, backend = answer.model_version, answer.backend
            body_out = {
                "model_version": version,
                "backend": backend,
                "precision": answer.precision,
                "predictions": outputs,
            }
            # A model fed values far outside its training range can answer NaN: null, as documented.
            response = Response(_dumps(body_out, non_finite="null"), media_type="application/json")
        else:
            status, error, response = answer
            if status == 503:
                return response
        response.headers["x-request-id"] = rid
        log_request(rid, started, status, version, backend, rows, outputs=outputs, error=error, nbytes=len(body))
        return response

    async def recommend(request: Request) -> Response:
        started: float = request.scope.get("tunesmith.started") or time.monotonic()
        rid = request_id(request)
        body = await read_body(request, started, rid)
        if isinstance(body, Response):
            return body
        try:
            req = RecommendRequest.model_validate_json(body)
        except ValidationError as exc:
            again = _recommend_with_integral_floats(body)
            if again is None:
                return invalid(_body_errors(exc))
            req = again
        if req.user is None and req.history is None:
            msg = "give a user id (user) or a list of item ids (history)"
            return invalid([{"type": "missing", "loc": ["body", "user"], "msg": msg, "input": None}])
        rows = [request_row(req)]
        assert state.batcher is not None
        version, backend = state.batcher.predictor.version, state.batcher.predictor.backend
        outputs = None
        answer = await run_model(request, rows, False, started, _recommend_error_detail)
        if isinstance(answer, Answer):
            status, error = 200, None
            outputs = answer.predictions
            version, backend = answer.model_version, answer.backend
            out = outputs[0]
            body_out = {"model_version": version, "items": out["items"], "source": out["source"]}
            response = Response(_dumps(body_out), media_type="application/json")
        else:
            status, error, response = answer
            if status == 503:
                return response
        response.headers["x-request-id"] = rid
        log_request(rid, started, status, version, backend, rows, outputs=outputs, error=error, nbytes=len(body))
        return response

    def route(path: str, summary: str, schema: type[BaseModel], response: type[BaseModel], handler: Any) -> None:
        # The body is read by the handler itself (to bound its size and time), so the request
        # schema is declared for the OpenAPI document only.
        app.post(
            path,
            summary=summary,
            response_model=response,
            responses={200: {"headers": _REQUEST_ID_HEADER}, **_ERRORS},
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema.__name__}"}}},
                }
            },
        )(handler)

    if state.recommender:
        route("/v1/recommend", "Top-k items for a user or a history", RecommendRequest, RecommendResponse, recommend)
    else:
        route("/v1/predict", "Predict one row or a batch", PredictRequest, PredictResponse, predict)

    @app.get(
        "/v1/metadata",
        summary="Model and server metadata",
        response_model=dict[str, Any],
        responses={401: _ERRORS[401]},
    )
    async def metadata() -> Response:
        return Response(_dumps(state.metadata()), media_type="application/json")

    @app.get("/live", summary="200 while the process runs", response_model=LiveOut)
    async def live() -> Response:
        return Response(b'{"status":"alive"}', media_type="application/json")

    @app.get(
        "/ready",
        summary="200 once the model is warmed up; 503 before that and while draining",
        response_model=ReadyOut,
        responses={503: {"model": ReadyOut, "description": "Starting, draining, or the warm-up failed."}},
    )
    async def ready() -> Response:
        if state.ready:
            batcher = state.batcher
            version = batcher.predictor.version if batcher is not None else None
            return Response(_dumps({"status": "ready", "model_version": version}), media_type="application/json")
        why = "draining" if state.draining else ("failed" if state.failure else "starting")
        payload: dict[str, Any] = {"status": why}
        if state.failure:
            payload["detail"] = state.failure
        return Response(_dumps(payload), status_code=503, media_type="application/json")

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "The Prometheus text exposition format.",
                "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    if settings.admin_token is not None:

        @app.post(
            "/admin/reload",
            summary="Load a model version beside the serving one and switch over",
            response_model=ReloadOut,
            responses={
                401: {"model": ErrorOut, "description": "Admin token missing or wrong."},
                408: _ERRORS[408],
                409: {"model": ReloadOut, "description": "Another reload is running; the old model keeps serving."},
                413: {"model": ErrorOut, "description": "Body larger than max_body_bytes."},
                415: _ERRORS[415],
                422: {
                    "model": ReloadOut,
                    "description": "Invalid body (detail lists the fields), or the model cannot be loaded (detail "
                    "says why); the old model keeps serving.",
                },
            },
            openapi_extra={
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReloadRequest"}}},
                }
            },
        )
        async def reload(request: Request) -> Response:
            started: float = request.scope.get("tunesmith.started") or time.monotonic()
            try:
                body = await asyncio.wait_for(request.body(), timeout=max(0.0, started + timeout - time.monotonic()))
            except asyncio.TimeoutError:
                state.metrics.rejections.labels("timeout").inc()
                return _json_error(408, f"the request body did not arrive within {timeout:g}s")
            except ClientDisconnect:
                state.metrics.rejections.labels("disconnected").inc()
                return _json_error(499, "the client closed the connection before the request body arrived")
            if body.strip():
                if not _is_json(request.headers.get("content-type")):
                    return _json_error(415, "send the body as JSON with Content-Type: application/json")
                try:
                    req = ReloadRequest.model_validate_json(body)
                except ValidationError as exc:
                    state.metrics.rejections.labels("invalid").inc()
                    return state._reload_answer(422, _body_errors(exc))
            else:
                req = ReloadRequest()
            return await state.reload(req)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler answers 500 when the refused input holds a NaN (its JSON is strict).
        state.metrics.rejections.labels("invalid").inc()
        return _json_error(422, list(exc.errors()))

    app.openapi = _openapi(app, state)  # type: ignore[method-assign]
    app.add_middleware(_Gate, state=state)
    return app


def _openapi(app: FastAPI, state: ServerState) -> Callable[[], dict[str, Any]]:
    """The document builder: the rows of ``/v1/predict`` are those of the model serving now."""
    settings = state.settings
    built: dict[RowSpec, dict[str, Any]] = {}

    def build() -> dict[str, Any]:
        spec = state.row_spec
        cached = built.get(spec)
        if cached is not None:
            return cached
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in (RecommendRequest if state.recommender else PredictRequest, ReloadRequest):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(model_schema.pop("$defs", {}))
            schemas[model.__name__] = model_schema
        if state.recommender:
            schemas["RecommendRequest"] = _recommend_request_schema(schemas["RecommendRequest"])
        else:
            schemas["PredictRequest"] = spec.request_schema(settings.max_rows_per_request)
        schemes = components.setdefault("securitySchemes", {})
        paths = schema.get("paths", {})
        if settings.api_key is not None:
            schemes["ApiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            schemes["Bearer"] = {"type": "http", "scheme": "bearer"}
            for path in ("/v1/predict", "/v1/recommend", "/v1/metadata"):
                for op in paths.get(path, {}).values():
                    op["security"] = [{"ApiKey": []}, {"Bearer": []}]
        if settings.admin_token is not None:
            schemes["Bearer"] = {"type": "http", "scheme": "bearer"}
            for op in paths.get("/admin/reload", {}).values():
                op["security"] = [{"Bearer": []}]
        if not schemes:
            components.pop("securitySchemes")
        # One document per kind of rows: a reload to a model with other columns changes it.
        built.clear()
        built[spec] = schema
        app.openapi_schema = schema
        return schema

    return build


def _integral(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _recommend_with_integral_floats(body: bytes) -> RecommendRequest | None:
    """The request read with ``5.0`` taken as the integer ``5`` (for ``user``, ``k`` and the ids), or None.

    JSON has one kind of number and JSON Schema's ``integer`` includes 5.0, as the document
    promises; the request model's strict integers refuse it. Only tried for a body the model
    refused, so a valid request pays nothing.
    """
    try:
        data = pydantic_core.from_json(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    fixed = dict(data)
    for key in ("user", "k"):
        if key in fixed:
            fixed[key] = _integral(fixed[key])
    for key in ("history", "exclude"):
        if isinstance(fixed.get(key), list):
            fixed[key] = [_integral(v) for v in fixed[key]]
    try:
        return RecommendRequest.model_validate(fixed)
    except ValidationError:
        return None


def _recommend_request_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The recommend body as the server takes it: a user id or a history is required (null is
    neither), and only examples that hold for any model (a history; ids outside the catalogue
    are ignored, while a user must be known)."""
    out = dict(schema)
    out["anyOf"] = [
        {"required": ["user"], "properties": {"user": {"type": ["string", "integer"]}}},
        {"required": ["history"], "properties": {"history": {"type": "array"}}},
    ]
    out["examples"] = [{"history": ["50", "181", "258"], "k": 5, "exclude": ["100"]}]
    return out


def create_app_from_env() -> FastAPI:
    """App factory for uvicorn worker processes: model and settings come from the environment.

    The worker reports not-ready and refuses new predictions the moment SIGTERM or SIGINT
    arrives, as ``run_server`` does with one worker, then uvicorn's own handler (installed
    before it calls the factory) stops the server.
    """
    raw = os.environ.get(SETTINGS_ENV)
    model = os.environ.get(MODEL_ENV)
    if not raw or not model:
        raise RuntimeError(f"{SETTINGS_ENV} and {MODEL_ENV} must be set (run_server sets them)")
    app = create_app(Path(model), ServeSettings.from_json(raw), owns_process=True)
    _drain_on_signals(app.state.tunesmith)
    return app


def _drain_on_signals(state: ServerState) -> None:
    """Call ``state.begin_drain()`` on SIGTERM and SIGINT, then the handler that was there."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):  # SIG_DFL or SIG_IGN: nobody to chain to, leave it
            continue

        def handler(signum: int, frame: Any, previous: Callable[[int, Any], Any] = previous) -> None:
            state.begin_drain()
            previous(signum, frame)

        signal.signal(sig, handler)
