"""The FastAPI application of ``tunesmith serve``: what uvicorn imports.

The server is split along its seams: request and response schemas
(:mod:`tunesmith.serve.schemas`), Prometheus metrics (:mod:`tunesmith.serve.metrics`), the
server state that holds and reloads the model (:mod:`tunesmith.serve.state`), the ASGI gate
that enforces size, authentication and overload limits (:mod:`tunesmith.serve.gate`) and
the routes (:mod:`tunesmith.serve.routes`). This module keeps their public names importable
from one place. The factory uvicorn's worker processes call is
:func:`tunesmith.serve.command.create_worker_app`.
"""

from __future__ import annotations

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
    "load_checked",
    "load_served_model",
    "off_loop",
    "peek_serving",
]

MODEL_ENV = "TUNESMITH_SERVE_MODEL"
