"""Start the prediction server: what ``tunesmith serve`` and ``python -m tunesmith.serve`` call.

With one worker the model is loaded here, before uvicorn starts, so a missing model folder
or ONNX graph fails at once with the :class:`~tunesmith.errors.TunesmithError` that
:func:`~tunesmith.export.runtime.load_predictor` raised. With several workers uvicorn starts
one process per worker from an import string and a factory; the settings travel to them as
JSON in an environment variable (not on a command line, where ``ps`` would show the keys),
and each process loads its own model with ``cores // workers`` threads.

uvicorn's supervisor replaces a worker that exits after it started, whether it was killed
(SIGKILL, the out-of-memory killer) or stopped gracefully (SIGTERM): only a worker that fails
before it serves (exit status 3) stops the whole server. A worker told to stop reports
not-ready but still answers the predictions that reach it in the moment before uvicorn closes
its connections (see :func:`create_worker_app`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from tunesmith.errors import ArtifactError, ConfigError, TunesmithError
from tunesmith.export.predictor import ONNX_DIR, ONNX_FILES
from tunesmith.serve.app import MODEL_ENV, create_app
from tunesmith.serve.personalized import check_adapter_store
from tunesmith.serve.settings import SETTINGS_ENV, ServeSettings
from tunesmith.serve.state import ServerState, checked_serving, load_checked
from tunesmith.serve.watch import check_reference_file, read_reference

logger = logging.getLogger(__package__)


def run_server(model: Path, settings: ServeSettings) -> None:
    """Serve the model folder ``model`` with ``settings`` until SIGTERM or Ctrl+C.

    On SIGTERM (or SIGINT) the server stops accepting connections, reports not-ready, finishes
    the requests it admitted (up to ``graceful_timeout_s``), flushes the prediction log and
    returns normally, so the process exits 0.

    Raises:
        TunesmithError: the model cannot be loaded, the address cannot be bound, or a worker
            failed to start. The message is one line, fit for the command line.
    """
    model = Path(model)
    check_prediction_log(settings)
    check_reference_file(settings)
    if settings.workers == 1:
        _run_single(model, settings)
    else:
        _run_workers(model, settings)


def _log_config(level: str) -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    # The server's own messages (ready, reload, dropped log records) print like uvicorn's.
    config["loggers"]["tunesmith"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _uvicorn_config(app: Any, settings: ServeSettings, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=_log_config(settings.log_level),
        access_log=settings.access_log,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s),
        server_header=False,
        **extra,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            key="port",
            hint="Pick another --port, or stop the process that uses it",
        ) from None
    sock.set_inheritable(True)
    return sock


def _load_error(model: Path, exc: Exception) -> ArtifactError:
    """A one-line :class:`ArtifactError` for an error no loader check foresaw (the traceback goes to
    the debug log): whatever a model folder holds, a bad one never starts a server, and the
    command line shows one line, not a stack trace."""
    logger.debug("tunesmith: loading %s failed", model, exc_info=exc)
    first = (str(exc).splitlines() or [""])[0][:300]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return ArtifactError(f"the model cannot be loaded ({what})", path=model, hint="Give a folder written by save()")


def _run_single(model: Path, settings: ServeSettings) -> None:
    try:
        predictor = load_checked(
            model,
            backend=settings.backend,
            precision=settings.precision,
            threads=settings.threads_per_worker(),
            version=settings.model_version,
            adapters=settings.adapters,
            nice=settings.model_nice,
            backbone=settings.backbone,
        )
    except TunesmithError:
        raise
    except Exception as exc:
        raise _load_error(model, exc) from None
    try:
        # The monitoring reference is checked against the loaded model before the port is
        # bound: a file without the model's columns fails with one line, not a start-up trace.
        reference = read_reference(settings, predictor) if settings.monitor_reference is not None else None
        sock = _bind(settings.host, settings.port)
    except TunesmithError:
        predictor.close()
        raise
    app = create_app(model, settings, predictor=predictor, owns_process=True)
    state: ServerState = app.state.tunesmith
    state.watch_reference = reference
    server = _Server(_uvicorn_config(app, settings), state)
    with sock, _quiet_signals(server):
        try:
            server.run(sockets=[sock])
        except SystemExit:
            # uvicorn (0.50 on) exits with its start-up failure status when the app's start-up
            # fails: a one-line error below instead.
            if server.started:
                raise
    if not server.started:
        raise TunesmithError("the server did not start; the log above says why")


class _Server(uvicorn.Server):
    """uvicorn's Server, told to drain (not-ready, 503 for new predictions) the moment a
    shutdown signal arrives. Worker processes of ``--workers N`` only report not-ready, since
    another worker can serve (see :func:`create_worker_app`).
    """

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.tunesmith_state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Before uvicorn closes the listener: a load balancer polling /ready on a kept-alive
        # connection sees 503 while the admitted requests finish.
        self.tunesmith_state.begin_drain()
        super().handle_exit(sig, frame)


@contextmanager
def _quiet_signals(server: uvicorn.Server) -> Iterator[None]:
    """Let a graceful shutdown end in a normal return (exit status 0).

    uvicorn re-raises the signal it shut down for once it restored the previous handlers; the
    default SIGTERM handler would then kill the process with status 143 after a clean drain.
    These handlers only ask the server to stop, which it already did.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(sig: int, frame: Any) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_prediction_log(settings: ServeSettings) -> None:
    """Fail before start-up, with the setting's name, when the prediction log cannot be written.

    Raises:
        ConfigError: the log's folder cannot be created or written, or the path is a folder.
    """
    path = settings.prediction_log
    if path is None:
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        folder = str(path.parent)
        raise ConfigError(f"cannot create the folder {folder!r}: {exc.strerror}", key="prediction_log") from None
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a folder; give a file name", key="prediction_log")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{str(path)!r} is not writable", key="prediction_log")


def check_model(model: Path, settings: ServeSettings) -> None:
    """Cheap checks of a model folder without loading it (for the parent of several workers).

    Raises:
        TunesmithError: no model folder, no readable ``tunesmith.json``, no weights, no ONNX
            graph of the requested precision, or an adapter store built for another model.
    """
    try:
        _check_model(Path(model), settings)
    except TunesmithError:
        raise
    except Exception as exc:
        raise _load_error(Path(model), exc) from None


def _check_model(folder: Path, settings: ServeSettings) -> None:
    # The trust checks of every loaded folder (no links, FIFOs, code or pickles), run before
    # anything reads a file of it.
    serving = checked_serving(folder)
    if not (folder / "model.safetensors").is_file():
        raise ArtifactError("model.safetensors is missing", path=folder, hint="Give a folder written by save()")
    if settings.adapters is not None:
        # Each worker would refuse a store built for another model; say so once, up front.
        check_adapter_store(folder, settings.adapters)
    # Only the predict serving style runs ONNX graphs: a recommender runs its own model (torch
    # or numpy), and the backend setting does not apply to it.
    if settings.backend == "onnx" and serving == "predict":
        onnx_dir = folder / ONNX_DIR
        wanted = ["int8", "fp32"] if settings.precision == "auto" else [settings.precision]
        if not any((onnx_dir / ONNX_FILES[p]).is_file() for p in wanted):
            flag = " --quantize int8" if settings.precision == "int8" else ""
            raise ArtifactError(
                f"no {'/'.join(wanted)} ONNX graph in {ONNX_DIR}/",
                path=folder,
                hint=f"Export it first: tunesmith export {folder} --format onnx{flag}",
            )


WORKER_FACTORY = "tunesmith.serve.command:create_worker_app"


def create_worker_app() -> Any:
    """App factory of each ``--workers N`` process: model and settings come from the environment.

    On SIGTERM or SIGINT the worker reports not-ready (``/ready`` 503 ``draining``) at once,
    then uvicorn's own handler (installed before it calls the factory) stops the server: the
    listener closes, so new connections go to the other workers (or the replacement the
    supervisor starts), idle kept-alive connections close, and each in-flight request gets
    its answer with ``Connection: close``. Unlike a lone server, the worker does not refuse
    the predictions it reads in the tenth of a second before uvicorn acts on the signal:
    they would be 503s, though another worker can serve their client's next connection, and
    the drain waits for them like for any admitted request. A rolling restart (SIGHUP to the
    parent, or SIGTERM to one worker) so refuses nothing.
    """
    raw = os.environ.get(SETTINGS_ENV)
    model = os.environ.get(MODEL_ENV)
    if not raw or not model:
        raise RuntimeError(f"{SETTINGS_ENV} and {MODEL_ENV} must be set (run_server sets them)")
    app = create_app(Path(model), ServeSettings.from_json(raw), owns_process=True)
    _unready_on_signals(app.state.tunesmith)
    return app


def _unready_on_signals(state: ServerState) -> None:
    """Report not-ready on SIGTERM and SIGINT, then call the handler that was there (uvicorn's)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):  # SIG_DFL or SIG_IGN: nobody to chain to, leave it
            continue

        def handler(signum: int, frame: Any, previous: Callable[[int, Any], Any] = previous) -> None:
            # Not begin_drain(): that also refuses new predictions; the lifespan's shutdown
            # (ServerState.stop) does so once uvicorn has closed the connections.
            state.draining = True
            state.ready = False
            previous(signum, frame)

        signal.signal(sig, handler)


def _run_workers(model: Path, settings: ServeSettings) -> None:
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    check_model(model, settings)
    sock = _bind(settings.host, settings.port)
    saved = {key: os.environ.get(key) for key in (SETTINGS_ENV, MODEL_ENV)}
    # Worker processes are spawned, so they inherit this environment; the secrets stay out of
    # argv and out of the logs.
    os.environ[SETTINGS_ENV] = settings.to_json()
    os.environ[MODEL_ENV] = str(model.resolve())
    try:
        config = _uvicorn_config(WORKER_FACTORY, settings, factory=True, workers=settings.workers)
        supervisor = Multiprocess(config, sockets=[sock])
        with sock:
            supervisor.run()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise TunesmithError("a worker process failed to start; the log above says why")
