"""The prediction log: every prediction request's inputs, outputs, latency and model version.

Records are written off the request path. :meth:`PredictionLog.write` only appends to a
buffer bounded in input rows and in bytes, and returns at once; a background thread writes the
buffer to an SQLite database (default) or to Parquet files. When the buffer is full the record
is dropped and counted (``dropped``, and the
``tunesmith_prediction_log_records_total{result="dropped"}`` metric of the server): logging
never slows down or fails a prediction.

The active file is rotated every ``rotate_rows`` records: it is renamed to
``STEM.NNNNNN-YYYYMMDDTHHMMSSZ.SUFFIX`` beside it (sequence first, so names sort in order)
and a new active file is started. :func:`read_prediction_log` reads the active and rotated
files back as one DataFrame.

SQLite rows are readable as soon as they are committed (about once a second). A Parquet file
is only readable once closed: rows of the active Parquet file appear when it rotates or the
server stops.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.runs.predlog import COLUMNS, log_files, read_prediction_log
from tunesmith.serve.schemas import json_safe

__all__ = ["COLUMNS", "FORMATS", "LogRecord", "PredictionLog", "log_files", "read_prediction_log"]

logger = logging.getLogger(__package__)  # one logger for the whole server: tunesmith.serve

FORMATS = ("sqlite", "parquet")
# Parquet is written in row groups of at least this many records (or after _PARQUET_MAX_AGE_S):
# one row group per request would bloat the file's footer at low traffic.
_PARQUET_GROUP = 1024
_PARQUET_MAX_AGE_S = 10.0
# Size estimate of a record without a known request size: per row and per prediction, plus the
# length of each text (counted without serialising anything).
_ROW_BYTES = 64
_OUTPUT_BYTES = 128


@dataclass(frozen=True)
class LogRecord:
    """One prediction request as the log stores it (``outputs`` is ``None`` when it failed).

    ``nbytes`` is the size of the request body, what the buffer's byte bound counts; ``0``:
    estimated from the inputs.
    """

    timestamp: float
    request_id: str
    model_version: str
    backend: str
    status: int
    latency_ms: float
    inputs: Sequence[Any]
    outputs: Sequence[Any] | None = None
    error: str | None = None
    nbytes: int = 0

    @property
    def n_rows(self) -> int:
        return len(self.inputs)

    def size(self) -> int:
        """Approximate bytes the record holds in memory: the request body and its predictions."""
        size = self.nbytes or _estimate_bytes(self.inputs)
        return size + _OUTPUT_BYTES * len(self.outputs or ())


def _estimate_bytes(rows: Sequence[Any]) -> int:
    total = 0
    for row in rows:
        total += _ROW_BYTES
        if isinstance(row, str):
            total += len(row)
        elif isinstance(row, dict):
            total += sum(len(v) if isinstance(v, str) else 16 for v in row.values())
    return total


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        # A refused request's NaN or infinity (Python's JSON reader takes them): stored as strings,
        # so every JSON reader can read the log, not only Python's.
        return json.dumps(json_safe(value), ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=False)


def _rotated_pattern(active: Path) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(active.stem)}\.(\d{{6}})-\d{{8}}T\d{{6}}Z{re.escape(active.suffix)}$")


class _Sink:
    """Writes records to the active file and rotates it; used by the writer thread only."""

    def __init__(self, path: Path, rotate_rows: int) -> None:
        self.path = path
        self.rotate_rows = rotate_rows
        self.rows_in_file = 0
        pattern = _rotated_pattern(path)
        seqs = [int(m.group(1)) for p in path.parent.iterdir() if (m := pattern.match(p.name))]
        self.seq = max(seqs, default=0)

    def write(self, records: list[LogRecord]) -> None:
        while records:
            room = self.rotate_rows - self.rows_in_file
            part, records = records[:room], records[room:]
            self._append(part)
            self.rows_in_file += len(part)
            if self.rows_in_file >= self.rotate_rows:
                self.rotate()

    def rotate(self) -> None:
        self._close_file()
        if self.path.exists():
            self.seq += 1
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            self.path.rename(self.path.with_name(f"{self.path.stem}.{self.seq:06d}-{stamp}{self.path.suffix}"))
        self.rows_in_file = 0

    def flush(self) -> None:
        """Make buffered records durable and readable."""

    def close(self) -> None:
        self._close_file()

    def _append(self, records: list[LogRecord]) -> None:
        raise NotImplementedError

    def _close_file(self) -> None:
        raise NotImplementedError


class _SqliteSink(_Sink):
    def __init__(self, path: Path, rotate_rows: int) -> None:
        super().__init__(path, rotate_rows)
        self._conn: sqlite3.Connection | None = None
        self._open()

    def _open(self) -> None:
        # Rollback journal (not WAL): a rotated file then is one self-contained file, and
        # readers never hold a -wal file that a rename would separate from its database.
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS predictions (timestamp TEXT NOT NULL, request_id TEXT, model_version TEXT,"
            " backend TEXT, status INTEGER, latency_ms REAL, n_rows INTEGER, inputs TEXT, outputs TEXT, error TEXT)"
        )
        conn.commit()
        self.rows_in_file = int(conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
        self._conn = conn

    def _append(self, records: list[LogRecord]) -> None:
        if self._conn is None:
            self._open()
        assert self._conn is not None
        with self._conn:
            self._conn.executemany(
                "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        _iso(r.timestamp),
                        r.request_id,
                        r.model_version,
                        r.backend,
                        r.status,
                        r.latency_ms,
                        r.n_rows,
                        _dumps(list(r.inputs)),
                        _dumps(None if r.outputs is None else list(r.outputs)),
                        r.error,
                    )
                    for r in records
                ],
            )

    def rotate(self) -> None:
        super().rotate()
        self._open()

    def _close_file(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _ParquetSink(_Sink):
    def __init__(self, path: Path, rotate_rows: int) -> None:
        super().__init__(path, rotate_rows)
        import pyarrow as pa

        self._pa = pa
        self._schema = pa.schema(
            [
                ("timestamp", pa.timestamp("us", tz="UTC")),
                ("request_id", pa.string()),
                ("model_version", pa.string()),
                ("backend", pa.string()),
                ("status", pa.int32()),
                ("latency_ms", pa.float64()),
                ("n_rows", pa.int32()),
                ("inputs", pa.string()),
                ("outputs", pa.string()),
                ("error", pa.string()),
            ]
        )
        self._writer: Any = None
        self._pending: list[LogRecord] = []
        self._pending_since = 0.0
        if path.exists():
            # A Parquet file cannot be appended to: keep what an earlier run wrote as a rotated file.
            self.rotate()

    def write(self, records: list[LogRecord]) -> None:
        super().write(records)
        if self._pending and time.monotonic() - self._pending_since >= _PARQUET_MAX_AGE_S:
            self._write_group()

    def _append(self, records: list[LogRecord]) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.extend(records)
        if len(self._pending) >= _PARQUET_GROUP:
            self._write_group()

    def _write_group(self) -> None:
        if not self._pending:
            return
        import pyarrow.parquet as pq

        pa = self._pa
        records, self._pending = self._pending, []
        table = pa.table(
            {
                "timestamp": pa.array([int(r.timestamp * 1e6) for r in records], pa.timestamp("us", tz="UTC")),
                "request_id": [r.request_id for r in records],
                "model_version": [r.model_version for r in records],
                "backend": [r.backend for r in records],
                "status": pa.array([r.status for r in records], pa.int32()),
                "latency_ms": [float(r.latency_ms) for r in records],
                "n_rows": pa.array([r.n_rows for r in records], pa.int32()),
                "inputs": [_dumps(list(r.inputs)) for r in records],
                "outputs": [_dumps(None if r.outputs is None else list(r.outputs)) for r in records],
                "error": [r.error for r in records],
            },
            schema=self._schema,
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self._schema, compression="zstd")
        self._writer.write_table(table)

    def flush(self) -> None:
        self._write_group()

    def _close_file(self) -> None:
        self._write_group()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class PredictionLog:
    """A bounded, non-blocking writer of :class:`LogRecord` to SQLite or Parquet.

    ``buffer_rows`` bounds the input rows held in memory and ``buffer_bytes`` their size
    (:meth:`LogRecord.size`); a record that does not fit either is dropped and counted
    (``on_dropped``), never waited for. ``start()`` opens the file (so a bad path fails at
    start-up) and starts the writer thread; ``close()`` writes what is buffered and closes
    the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fmt: Literal["sqlite", "parquet"] = "sqlite",
        rotate_rows: int = 100_000,
        buffer_rows: int = 50_000,
        buffer_bytes: int = 64 << 20,
        flush_interval_s: float = 1.0,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"must be one of {', '.join(FORMATS)}, got {fmt!r}", key="prediction_log_format")
        if rotate_rows < 1:
            raise ConfigError(f"must be at least 1, got {rotate_rows}", key="prediction_log_rotate_rows")
        self.path = Path(path)
        self.fmt = fmt
        self.rotate_rows = rotate_rows
        self.buffer_rows = buffer_rows
        self.buffer_bytes = buffer_bytes
        self.flush_interval_s = flush_interval_s
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._cond = threading.Condition()
        self._buffer: list[LogRecord] = []
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._accepted = 0
        self._done = 0
        self._flush_wanted = False
        self._closing = False
        self.written = 0
        self.dropped = 0
        self._sink: _Sink | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the active file and start the writer thread.

        Raises:
            ArtifactError: the file cannot be created or opened.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.fmt == "sqlite":
                self._sink = _SqliteSink(self.path, self.rotate_rows)
            else:
                self._sink = _ParquetSink(self.path, self.rotate_rows)
        except (OSError, sqlite3.Error) as exc:
            raise ArtifactError(f"the prediction log cannot be opened: {exc}", path=self.path) from None
        self._thread = threading.Thread(target=self._run, name="tunesmith-predlog", daemon=True)
        self._thread.start()

    def write(self, record: LogRecord) -> bool:
        """Buffer ``record`` for writing; ``False`` (and counted as dropped) when the buffer is full."""
        n = max(1, record.n_rows)
        size = record.size()
        with self._cond:
            if (
                self._closing
                or self._buffered_rows + n > self.buffer_rows
                or self._buffered_bytes + size > self.buffer_bytes
            ):
                self.dropped += 1
                dropped = True
            else:
                self._buffer.append(record)
                self._buffered_rows += n
                self._buffered_bytes += size
                self._accepted += 1
                dropped = False
                # Wake the writer only for the first record: later ones ride along.
                if len(self._buffer) == 1:
                    self._cond.notify_all()
        if dropped and self._on_dropped is not None:
            self._on_dropped(1)
        return not dropped

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record accepted so far is on disk (and readable); ``False`` on timeout."""
        until = time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            self._flush_wanted = True
            self._cond.notify_all()
            while self._done < target or self._flush_wanted:
                left = until - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return self._done >= target
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered, close the file and stop the writer thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the prediction log did not finish writing within %.0fs", timeout)

    def _run(self) -> None:
        sink = self._sink
        assert sink is not None
        while True:
            with self._cond:
                if not self._buffer and not self._closing and not self._flush_wanted:
                    self._cond.wait(self.flush_interval_s)
                records, self._buffer = self._buffer, []
                self._buffered_rows = 0
                self._buffered_bytes = 0
                closing, flush = self._closing, self._flush_wanted
            if records:
                self._write(sink, records)
            if flush or closing:
                self._guard(sink.flush)
            with self._cond:
                self._done += len(records)
                if flush:
                    self._flush_wanted = False
                self._cond.notify_all()
            if closing and not records:
                self._guard(sink.close)
                return
            if not records and not flush:
                # Idle: Parquet writes a pending row group once it is old enough.
                self._guard(lambda: sink.write([]))

    def _write(self, sink: _Sink, records: list[LogRecord]) -> None:
        try:
            sink.write(records)
        except Exception as exc:  # a full disk must not take the server down; count and go on
            self.dropped += len(records)
            if self._on_dropped is not None:
                self._on_dropped(len(records))
            logger.warning("prediction log: %d records dropped: %s", len(records), exc)
            return
        self.written += len(records)
        if self._on_written is not None:
            self._on_written(len(records))

    @staticmethod
    def _guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            logger.warning("prediction log: %s", exc)
