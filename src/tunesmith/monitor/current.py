"""The current data: a prediction log of ``tunesmith serve`` or any data file, cut into windows."""

from __future__ import annotations

import itertools
import os
import warnings as warnings_module
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import DataError
from tunesmith.monitor.frame import check_columns, log_rows
from tunesmith.monitor.reference import Reference, read_data
from tunesmith.monitor.settings import MonitorSettings
from tunesmith.monitor.timing import window_starts


@dataclass
class Current:
    """Current rows (inputs, and outputs where logged) with where they came from."""

    frame: pd.DataFrame
    source: str
    is_log: bool
    dropped: dict[str, int]
    warnings: list[str]


def is_prediction_log(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is (the active file of) a prediction log written by ``tunesmith serve``."""
    from tunesmith.runs.predlog import log_files

    p = Path(path)
    files = [p] if p.is_file() else log_files(p)
    if not files:
        return False
    head = files[0].read_bytes()[:16] if files[0].stat().st_size else b""
    if head.startswith(b"SQLite format 3\x00"):
        return True
    if head.startswith(b"PAR1"):
        import pyarrow.parquet as pq

        try:
            names = set(pq.read_schema(files[0]).names)
        except Exception:  # an active Parquet log has no footer yet; its rotated files do
            return len(files) > 1
        return {"inputs", "outputs", "request_id"} <= names
    return False


def read_current(data: Any, ref: Reference, settings: MonitorSettings, model_version: str | None) -> Current:
    """The current rows: a log is expanded to one row per input and checked against the model version."""
    warnings: list[str] = []
    dropped: dict[str, int] = {}
    if isinstance(data, (str, os.PathLike)) and is_prediction_log(data):
        from tunesmith.runs.predlog import read_prediction_log

        with warnings_module.catch_warnings(record=True) as caught:
            warnings_module.simplefilter("always")
            log = read_prediction_log(data)
        # A Parquet file still being written, or a stranger in the folder: said in the report.
        warnings.extend(str(w.message) for w in caught)
        source = str(data)
        expected = model_version or ref.model_info.get("model_version")
        seen = sorted(log["model_version"].astype(str).unique()) if len(log) else []
        if expected is None and len(seen) > 1:
            raise DataError(
                f"the log holds predictions of {len(seen)} model versions ({', '.join(seen[:5])}) "
                "and this model's version is not known",
                file=source,
                column="model_version",
                hint="Pick one with --model-version (model_version= in Python), or pass the model folder",
            )
        if expected is not None and len(log):
            versions = log["model_version"].astype(str)
            other = versions != expected
            if other.all():
                raise DataError(
                    f"the log holds predictions of model version {', '.join(seen[:5])}, "
                    f"not of this model (version {expected})",
                    file=source,
                    column="model_version",
                    hint="Monitor the log with the model that served it, or pass --model-version to pick one",
                )
            if other.any():
                dropped["records_of_other_model_versions"] = int(other.sum())
                warnings.append(
                    f"{int(other.sum())} log records of other model versions "
                    f"({', '.join(sorted(versions[other].unique())[:5])}) are left out"
                )
                log = log[~other]
        frame, log_dropped = log_rows(log, ref.spec, file=source)
        dropped.update({k: v for k, v in log_dropped.items() if v})
        if len(frame):
            check_columns(frame, ref.spec, what="prediction log", file=source)
        return Current(frame, source, True, dropped, warnings)
    frame, source = read_data(data, "current")
    check_columns(frame, ref.spec, what="current data", file=None if isinstance(data, pd.DataFrame) else source)
    return Current(frame, source, False, dropped, warnings)


@dataclass
class Window:
    """One window: its rows (positions in the current frame) and a label for plots."""

    index: int
    rows: np.ndarray
    label: str
    start: str
    end: str


def make_windows(cur: Current, settings: MonitorSettings) -> tuple[list[Window], list[str]]:
    """Cut the current rows into windows of rows or of time.

    A trailing window of rows shorter than ``min_window_rows`` joins the one before; a time
    window that short is not tested and is reported. Too few rows for even one window is an
    error that says how many are needed.
    """
    n = len(cur.frame)
    need = settings.min_window_rows
    if n < need:
        raise DataError(
            f"the current data has {n} rows; a window needs at least {need} rows to test",
            file=cur.source,
            hint=f"Collect at least {need} rows, or lower min_window_rows (10 at least)",
        )
    notes: list[str] = []
    if settings.window_time is None:
        size = settings.window_rows or 1000
        starts = list(range(0, n, size))
        if len(starts) > 1 and n - starts[-1] < need:
            starts.pop()
        bounds = [*starts, n]
        windows = []
        for i, (a, b) in enumerate(itertools.pairwise(bounds)):
            windows.append(Window(i, np.arange(a, b), f"rows {a}-{b - 1}", str(a), str(b - 1)))
        return windows, notes
    column = "timestamp" if cur.is_log else settings.time_column
    if column is None or column not in cur.frame.columns:
        raise DataError(
            "windows of time need each row's time",
            file=cur.source,
            column=column,
            hint="Set time_column to the column holding it, or use window_rows",
        )
    times = pd.to_datetime(cur.frame[column], utc=True, errors="coerce", format="mixed")
    if times.isna().any():
        bad = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise DataError("a time cannot be read", file=cur.source, row=bad + 1, column=column)
    keys = window_starts(times, settings.window_time, settings.timezone)
    windows = []
    for key, idx in pd.Series(np.arange(n)).groupby(keys.to_numpy()).groups.items():
        rows = np.asarray(sorted(idx))
        label = pd.Timestamp(key).isoformat()  # type: ignore[arg-type]
        if len(rows) < need:
            notes.append(f"window {label} has {len(rows)} rows, fewer than {need}: not tested")
            cur.dropped["rows_in_windows_too_small"] = cur.dropped.get("rows_in_windows_too_small", 0) + len(rows)
            continue
        end = times.iloc[rows].max().isoformat()
        windows.append(Window(len(windows), rows, label, label, end))
    if not windows:
        raise DataError(
            f"no window of {settings.window_time} holds {need} rows or more",
            file=cur.source,
            hint="Use a longer window_time, window_rows, or a lower min_window_rows",
        )
    return windows, notes
