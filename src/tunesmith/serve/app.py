"""The FastAPI application of ``tunesmith serve``: what uvicorn imports.

The server is split along its seams: request and response schemas
(:mod:`tunesmith.serve.schemas`), Prometheus metrics (:mod:`tunesmith.serve.metrics`), the
server state that holds and reloads the model (:mod:`tunesmith.serve.state`), the ASGI gate
that enforces size, authentication and overload limits (:mod:`tunesmith.serve.gate`) and
the routes (:mod:`tunesmith.serve.routes`). This module keeps their public names importable
from one place and holds the factory uvicorn's worker processes call,
:func:`create_app_from_env`.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from tunesmith.serve.gate import ENDPOINTS
from tunesmith.serve.gate import Gate as _Gate
from tunesmith.serve.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, METRICS_CONTENT_TYPE, REJECTION_REASONS, Metrics
from tunesmith.serve.routes import create_app
from tunesmith.serve.schemas import (
    ErrorOut,
    LiveOut,
    PredictionOut,
    PredictRequest,
    PredictResponse,
    ReadyOut,
    ReloadOut,
    ReloadRequest,
    ServedByOut,
    ValidationIssue,
)
from tunesmith.serve.settings import SETTINGS_ENV, ServeSettings
from tunesmith.serve.state import (
    ServerState,
    checked_serving,
    checked_task,
    load_checked,
    load_served_model,
    off_loop,
    peek_serving,
)

__all__ = [
    "BATCH_BUCKETS",
    "ENDPOINTS",
    "LATENCY_BUCKETS",
    "METRICS_CONTENT_TYPE",
    "MODEL_ENV",
    "REJECTION_REASONS",
    "ErrorOut",
    "LiveOut",
    "Metrics",
    "PredictRequest",
    "PredictResponse",
    "PredictionOut",
    "ReadyOut",
    "ReloadOut",
    "ReloadRequest",
    "ServedByOut",
    "ServerState",
    "ValidationIssue",
    "_Gate",
    "checked_serving",
    "checked_task",
    "create_app",
    "create_app_from_env",
    "load_checked",
    "load_served_model",
    "off_loop",
    "peek_serving",
]

MODEL_ENV = "TUNESMITH_SERVE_MODEL"


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
