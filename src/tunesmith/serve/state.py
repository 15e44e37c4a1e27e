"""What one server process holds: the model (through the batcher), its reload, the log and the metrics.

:class:`ServerState` loads the model off the event loop, starts the
:class:`~tunesmith.serve.batcher.Batcher` and the prediction log, warms up in the background,
drains on shutdown and swaps in a new model on ``POST /admin/reload`` (the old one keeps
serving when anything goes wrong). :func:`load_served_model` opens any kind of model folder
the registry of kinds knows, in the serving style of its kind (``predict``, ``recommend``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi.responses import Response

from tunesmith.errors import ArtifactError, ConfigError, TunesmithError
from tunesmith.estimators import registry
from tunesmith.export.runtime import load_predictor
from tunesmith.runs.trust import SafeFolder, open_model, read_json_file
from tunesmith.serve.batcher import Batcher, ServedModel, call_with_lower_priority
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.personalized import load_personalized_predictor
from tunesmith.serve.predlog import LogRecord, PredictionLog
from tunesmith.serve.schemas import MAX_DETAIL_CHARS, ReloadOut, ReloadRequest, RowSpec, dumps, json_safe
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.watch import LiveMonitor, ReferenceInput, read_reference

# One logger for the whole server, named after the package (``tunesmith.serve``).
logger = logging.getLogger(__package__)
T = TypeVar("T")

SERVING = {
    "predict": "a prediction model",
    "recommend": "a recommendation model",
    "personalize": "a personalised adapter store",
}
"""The serving styles of the registry's kinds (``Kind.serving``), in words."""


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
        self.serving: str = getattr(predictor, "serving", "predict") if predictor is not None else peek_serving(model)
        self.model_endpoint = "/v1/recommend" if self.serving == "recommend" else "/v1/predict"
        self.backend: str = settings.backend
        self.precision: str = settings.precision
        self.threads = settings.threads_per_worker()
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.predlog: PredictionLog | None = None
        # Live drift monitoring (monitor_reference); run_server may read the reference before
        # the app starts, so a bad file fails with one line before the port is bound.
        self.watch: LiveMonitor | None = None
        self.watch_reference: ReferenceInput | None = None
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

    @property
    def recommender(self) -> bool:
        """Whether this server answers ``/v1/recommend`` (else ``/v1/predict``)."""
        return self.serving == "recommend"

    def load(
        self, path: Path, backend: str, precision: str, version: str | None, *, serving: str | None = None
    ) -> ServedModel:
        """Load the served model of a folder (blocking; run it off the event loop).

        With ``serving`` given, a folder whose kind is served another way (a recommender on a
        prediction server, say) is refused before anything is loaded.
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
            serving=serving,
        )

    async def start(self) -> None:
        """Load the model if not given, start the batcher and the log, and warm up in the background."""
        s = self.settings
        predictor = self._initial
        if predictor is None:
            path = self.model_path
            predictor = await off_loop(lambda: self.load(path, s.backend, s.precision, s.model_version), _close)
        self._initial = None
        reference = self.watch_reference
        self.watch_reference = None
        if s.monitor_reference is not None and reference is None:
            try:
                reference = await asyncio.to_thread(read_reference, s, predictor)
            except BaseException:
                _close(predictor)
                raise
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
        if reference is not None:
            self.watch = self._start_watch(predictor, reference)
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

    def _start_watch(self, predictor: ServedModel, reference: ReferenceInput) -> LiveMonitor:
        """Start live drift monitoring; its reference is predicted on the model thread, between batches."""
        batcher = self.batcher
        assert batcher is not None
        loop = asyncio.get_running_loop()

        def submit(fn: Callable[[], T]) -> concurrent.futures.Future[T]:
            return asyncio.run_coroutine_threadsafe(batcher.call(fn), loop)

        watch = LiveMonitor(self.settings, self.metrics.monitor_gauges(), submit, nice=self.settings.model_nice)
        watch.start(predictor, reference)
        return watch

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
        if self.watch is not None:
            await asyncio.to_thread(self.watch.stop)
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
        """What ``/v1/metadata`` returns: the model's metadata (cached per model), limits and server state."""
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
        """Write one record to the prediction log and hand it to live monitoring, when they are on."""
        if self.predlog is not None:
            self.predlog.write(record)
        if self.watch is not None:
            self.watch.observe(record)

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
        return Response(dumps(body), status_code=status, media_type="application/json")

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
            if self.watch is not None and new.version != old.version:
                # Right after the swap: reference batches of the old model still queued are skipped.
                self.watch.reload(new)
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
            return Response(dumps(out.model_dump(exclude_none=True)), media_type="application/json")

    def _load_and_warm(self, path: Path, backend: str, precision: str, version: str | None) -> ServedModel:
        predictor = self.load(path, backend, precision, version, serving=self.serving)
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


def peek_serving(path: str | os.PathLike[str]) -> str:
    """The serving style of the folder's kind, ``predict`` when it cannot be told. Never blocks.

    The file is opened like every file of a loaded folder (no link followed, nothing but a
    regular file read): a FIFO named ``tunesmith.json`` would block a plain read forever.
    """
    try:
        meta = read_json_file(Path(path) / "tunesmith.json")
        return registry.get(registry.kind_of_meta(meta)).serving
    except (TunesmithError, OSError, ValueError):
        return "predict"


def checked_serving(path: str | os.PathLike[str]) -> str:
    """The serving style of the model folder ``path``'s kind, after the whole folder passed the trust checks.

    :meth:`~tunesmith.runs.trust.SafeFolder.open` refuses links, FIFOs, devices, code and
    pickles anywhere in the folder without opening anything but regular files.

    Raises:
        ArtifactError: the folder is missing, unsafe, or its ``tunesmith.json`` is unreadable.
    """
    return _opened(path)[2].serving


def checked_task(path: str | os.PathLike[str]) -> str | None:
    """The ``task`` of the model folder ``path``, after the whole folder passed the trust checks."""
    task = _opened(path)[1].get("task")
    return task if isinstance(task, str) else None


def _opened(path: str | os.PathLike[str]) -> tuple[SafeFolder, dict[str, Any], registry.Kind]:
    """The folder opened through the trust checks, its ``tunesmith.json`` and its kind (one scan)."""
    folder, meta = open_model(path)
    return folder, meta, registry.get(registry.kind_of_meta(meta))


def load_checked(
    path: Path,
    *,
    backend: str,
    precision: str,
    threads: int | None,
    version: str | None,
    adapters: str | os.PathLike[str] | None = None,
    nice: int = 0,
    serving: str | None = None,
    backbone: str | None = None,
) -> ServedModel:
    """The served model of folder ``path``, loaded after the trust checks passed it (blocking).

    ``nice`` lowers the priority of the loading thread (and so of the compute threads the
    runtime starts); with ``serving`` given, a folder whose kind is served another way is
    refused before anything is loaded.

    Raises:
        TunesmithError: the folder is unsafe, of the wrong kind, or its model cannot be loaded.
    """
    opened, meta, kind = _opened(path)
    if serving is not None and kind.serving != serving:
        raise ArtifactError(
            f"this server serves {SERVING.get(serving, serving)}; the folder holds a {meta.get('task')!r} model",
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


def load_served_model(
    path: str | os.PathLike[str],
    *,
    backend: str,
    precision: str,
    threads: int | None,
    version: str | None,
    adapters: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
) -> ServedModel:
    """The served model of a folder of any registered kind, in its kind's serving style (blocking).

    A ``predict`` kind (text, image, tabular) opens through
    :func:`~tunesmith.export.runtime.load_predictor`; a kind with a server of its own (a
    recommender) through the predictor the registry holds for it. With ``adapters`` (an
    adapter store folder) a text classifier is served with per-user adapters
    (:class:`~tunesmith.serve.personalized.PersonalizedPredictor`, torch only).

    Raises:
        ConfigError: adapters with the onnx backend or with a model they cannot personalise.
    """
    safe, meta = open_model(path)  # a folder opened already is not scanned again
    kind = registry.get(registry.kind_of_meta(meta))
    options: dict[str, Any] = {"backend": backend, "precision": precision, "threads": threads, "version": version}
    if adapters is not None:
        if kind.serving != "predict":
            raise ConfigError(
                f"adapters personalise a text classifier, not a {kind.name}",
                key="adapters",
                hint=f"Serve the {kind.name} without --adapters",
            )
        if backend != "torch":
            raise ConfigError(
                f"personalised serving (--adapters) runs on the torch backend only, not {backend}",
                key="backend",
                hint="Use --backend torch",
            )
        return load_personalized_predictor(path, adapters, threads=threads, version=version)
    return _OPENERS[kind.serving](safe, meta, kind, backbone=backbone, **options)


def _open_predictor(safe: SafeFolder, meta: dict[str, Any], kind: registry.Kind, **options: Any) -> ServedModel:
    return load_predictor(safe, **options)


def _open_own(safe: SafeFolder, meta: dict[str, Any], kind: registry.Kind, **options: Any) -> ServedModel:
    open_predictor = registry.require(kind, "predictor", "Serving", "Load it with tunesmith.load()")
    served: ServedModel = open_predictor(Path(safe.root), safe, meta, batch_size=64, **options)
    return served


def _refuse_store(safe: SafeFolder, meta: dict[str, Any], kind: registry.Kind, **options: Any) -> ServedModel:
    raise ArtifactError(
        "this folder holds personalised adapters, which serve beside their shared model",
        path=safe.root,
        hint="Serve the shared model with --adapters pointing at this folder",
    )


# How each serving style of the registry's kinds (Kind.serving) opens a folder.
_OPENERS: dict[str, Callable[..., ServedModel]] = {
    "predict": _open_predictor,
    "recommend": _open_own,
    "personalize": _refuse_store,
}
