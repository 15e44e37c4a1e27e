"""Reading a prediction log back: the active and rotated files of ``tunesmith serve --prediction-log``.

The writer lives with the server (:mod:`tunesmith.serve.predlog`); reading is here, below the
estimators, so the monitor can read a log without importing the server.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.errors import ArtifactError

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = (
    "timestamp",
    "request_id",
    "model_version",
    "backend",
    "status",
    "latency_ms",
    "n_rows",
    "inputs",
    "outputs",
    "error",
)
SQLITE_MAGIC = b"SQLite format 3\x00"
PARQUET_MAGIC = b"PAR1"


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files of the log at ``path``: rotated ones in order, then the active one.

    Logs of several worker processes (``STEM.pidNNN.SUFFIX``) are included.
    """
    active = Path(path)
    folder = active.parent
    if not folder.is_dir():
        return []
    pattern = re.compile(
        rf"^{re.escape(active.stem)}(\.pid\d+)?(\.\d{{6}}-\d{{8}}T\d{{6}}Z)?{re.escape(active.suffix)}$"
    )
    found = [p for p in folder.iterdir() if p.is_file() and pattern.match(p.name)]

    def order(p: Path) -> tuple[str, int, str]:
        m = pattern.match(p.name)
        assert m is not None
        # Rotated files (they have a sequence) come before the active file of the same worker.
        return (m.group(1) or "", 0 if m.group(2) else 1, m.group(2) or "")

    return sorted(found, key=order)


def read_prediction_log(path: str | os.PathLike[str], *, parse_json: bool = True) -> pd.DataFrame:
    """The prediction log at ``path`` (active and rotated files) as one DataFrame, oldest first.

    Columns: ``timestamp`` (UTC), ``request_id``, ``model_version``, ``backend``, ``status``,
    ``latency_ms``, ``n_rows``, ``inputs``, ``outputs``, ``error``. With ``parse_json``,
    ``inputs`` holds the list of request rows and ``outputs`` the list of predictions (``None``
    for a failed request); otherwise both are JSON text. A Parquet file that is still being
    written (no footer yet) is skipped with a warning.

    Raises:
        ArtifactError: no log file exists at ``path``.
    """
    import pandas as pd

    files = log_files(path)
    if not files:
        raise ArtifactError("no prediction log here", path=Path(path), hint="Serve with --prediction-log PATH first")
    frames = []
    for file in files:
        frame = _read_one(file)
        if frame is not None and len(frame):
            frames.append(frame)
    if not frames:
        out = pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
        out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True)
        return out
    out = pd.concat(frames, ignore_index=True)
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True, format="ISO8601")
    out = out.sort_values("timestamp", kind="stable", ignore_index=True)
    if parse_json:
        for col in ("inputs", "outputs"):
            out[col] = [json.loads(v) if isinstance(v, str) else None for v in out[col]]
    return out[list(COLUMNS)]


def _read_one(file: Path) -> pd.DataFrame | None:
    import pandas as pd

    with file.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(SQLITE_MAGIC):
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        try:
            return pd.read_sql_query(f"SELECT {', '.join(COLUMNS)} FROM predictions", conn)
        finally:
            conn.close()
    if head.startswith(PARQUET_MAGIC):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file)
        except Exception:  # no footer yet: the file is still open in a running server
            warnings.warn(f"{file} is still being written; its rows appear when it rotates", stacklevel=3)
            return None
        frame = table.to_pandas()
        return frame[[c for c in COLUMNS if c in frame.columns]]
    if not head:
        return None
    warnings.warn(f"{file} is neither SQLite nor Parquet; skipped", stacklevel=3)
    return None
