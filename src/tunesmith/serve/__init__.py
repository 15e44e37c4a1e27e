"""The HTTP prediction server: ``tunesmith serve MODEL``.

- :func:`run_server` serves a model folder with :class:`ServeSettings` (FastAPI + uvicorn).
- :func:`create_app` builds the ASGI app alone (for tests or another ASGI server).
- :func:`read_prediction_log` reads the prediction log back as a DataFrame.

Needs the ``serve`` extra (``pip install 'tunesmith[serve]'``). See ``docs/serving.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith._lazy import lazy_module

if TYPE_CHECKING:
    from tunesmith.serve.app import create_app
    from tunesmith.serve.batcher import Batcher
    from tunesmith.serve.command import run_server
    from tunesmith.serve.predlog import LogRecord, PredictionLog, read_prediction_log
    from tunesmith.serve.settings import ServeSettings

_LAZY = {
    "Batcher": "tunesmith.serve.batcher",
    "LogRecord": "tunesmith.serve.predlog",
    "PredictionLog": "tunesmith.serve.predlog",
    "ServeSettings": "tunesmith.serve.settings",
    "create_app": "tunesmith.serve.app",
    "read_prediction_log": "tunesmith.serve.predlog",
    "run_server": "tunesmith.serve.command",
}

__all__ = [
    "Batcher",
    "LogRecord",
    "PredictionLog",
    "ServeSettings",
    "create_app",
    "read_prediction_log",
    "run_server",
]

__getattr__, __dir__ = lazy_module(__name__, _LAZY, globals())
