"""Reading and writing tables (CSV, TSV, Parquet, JSONL) with errors that name the row.

Every problem a user can cause with an input file raises :class:`~tunesmith.errors.DataError`
whose location names the file and, where it applies, the **1-based data row** (the header is
not counted, blank lines are skipped, so row ``n`` is ``df.iloc[n - 1]``) and the column.
Malformed files - a wrong encoding, NUL bytes, an unclosed quote, a truncated download, a
binary file under a text name, a file too large for memory - end in such an error, never in
a stack trace. Problems that do not stop reading (a stray string in a numeric column, rows
left unread by ``max_rows``) are reported as a :class:`DataWarning`.

The work is split by concern: :mod:`~tunesmith.data.io_formats` (formats, compression,
opening), :mod:`~tunesmith.data.io_encoding` (encoding sniffing),
:mod:`~tunesmith.data.io_memory` (the memory guard) and :mod:`~tunesmith.data.io_readers`
(the readers).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from tunesmith.data.io_encoding import _ascii_compatible, _check_nul, _decode, _resolve_encoding, _sniff_text
from tunesmith.data.io_formats import (
    _CHUNK,
    _SEPARATOR,
    SUPPORTED_FORMATS,
    Compression,
    DataWarning,
    _check_max_rows,
    _check_readable,
    _peek,
    _read_bytes,
    detect_format,
)
from tunesmith.data.io_memory import _check_memory
from tunesmith.data.io_readers import (
    _check_parquet_file,
    _finish,
    _head_bytes,
    _mixed_type_notes,
    _read_delimited,
    _read_json,
    _read_parquet,
)
from tunesmith.errors import DataError
from tunesmith.runs.fingerprint import file_sha256 as safe_file_sha256

# The readers, encoding sniffing and memory guard live in io_formats, io_encoding, io_memory
# and io_readers; this module is the entry point and keeps the public names where they were.
__all__ = [
    "SUPPORTED_FORMATS",
    "Compression",
    "DataWarning",
    "detect_format",
    "file_sha256",
    "read_table",
    "write_table",
]


def read_table(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    encoding: str | None = None,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """Read a CSV, TSV, Parquet or JSONL file into a DataFrame.

    The format comes from ``format`` (one of :data:`SUPPORTED_FORMATS`, or ``"json"``) or the
    suffix: ``.csv``, ``.tsv``, ``.parquet``/``.pq``, ``.jsonl``/``.ndjson`` and ``.json`` (an
    array of records, or one object per line); text formats may be compressed (``.gz``,
    ``.bz2``, ``.xz``). Text is decoded with ``encoding``; by default UTF-8 (with or without
    byte-order mark), or UTF-16/UTF-32 when the file starts with their byte-order mark. Empty
    cells, JSON ``null`` and pandas' default missing markers (``NA``, ``n/a``, ``null``, ``NaN``,
    ...) become missing values; blank lines are skipped; column names are stripped of
    surrounding whitespace.

    ``max_rows`` reads only the first rows (after the header), and only as much of the file as
    they need, so it also samples files too large for memory; a :class:`DataWarning` says so
    when rows were left unread. Without it, a file whose reading would need more than 80% of
    the available memory (estimated from its size, before reading) is refused.

    Raises :class:`DataError` (naming the file, the 1-based data row - header excluded, blank
    lines skipped - and the column where they apply) for: a missing file or a directory, an
    empty file or one with only a header, a row with more or fewer fields than the header, a
    quote never closed, bytes that are not valid in ``encoding``, NUL bytes, binary content
    under a text name, a line that is not a JSON object or is cut off, truncated or corrupt
    compressed data, an incomplete or unreadable Parquet file, a file too large for memory, a
    duplicate column name and an unknown format. Issues a :class:`DataWarning` (not an error)
    for a column of numbers with a few values that are not numbers, naming the first one's row.
    """
    p = Path(path)
    limit = _check_max_rows(max_rows)
    _check_readable(p)
    fmt, compression = detect_format(p, format)
    more = False
    if fmt == "parquet":
        _check_parquet_file(p)
        if limit is None:
            _check_memory(p, fmt, compression)
        df, more = _read_parquet(p, limit)
    else:
        head = _peek(p, compression)
        codec, shown = _resolve_encoding(head, encoding, p)
        _sniff_text(head, p, fmt, codec)
        json_array = fmt == "json" and head.lstrip().startswith(b"[")
        if limit is not None and _ascii_compatible(codec) and not json_array:
            raw, more = _head_bytes(p, compression, fmt, limit)
        else:
            _check_memory(p, fmt, compression)
            raw = _read_bytes(p, compression)
        text = _decode(raw, p, fmt, codec, shown)
        _check_nul(text, p, fmt)
        if not text.strip():
            raise DataError("file has no data rows (it holds only whitespace)", file=p)
        df = _read_delimited(text, p, fmt) if fmt in _SEPARATOR else _read_json(text, p, fmt)
    if limit is not None and len(df) > limit:
        df, more = df.iloc[:limit], True
    df = _finish(df, p, fmt)
    notes = _mixed_type_notes(df, p)
    if more:
        notes.insert(0, DataWarning(f"read only the first {limit} rows (max_rows={limit})", file=p))
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return df


def write_table(df: pd.DataFrame, path: str | os.PathLike[str], *, format: str | None = None) -> Path:
    """Write ``df`` as CSV, TSV, Parquet, JSONL or JSON (by ``format`` or suffix), atomically.

    The table goes to a temporary file beside ``path`` that then replaces it, so a reader never
    sees half a file and a failed write leaves any old file in place. Missing parent folders
    are created; the index is not written. Returns the path written.
    """
    p = Path(path)
    fmt, compression = detect_format(p, format)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt in _SEPARATOR:
            df.to_csv(tmp, sep=_SEPARATOR[fmt], index=False, compression=compression)
        elif fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", lines=fmt == "jsonl", force_ascii=False, compression=compression)
        os.replace(tmp, p)
    except OSError as e:
        raise DataError(f"cannot write the file: {e.strerror or e}", file=p) from e
    finally:
        tmp.unlink(missing_ok=True)
    return p


def frame_sha256(df: pd.DataFrame) -> str:
    """Hex SHA-256 of a DataFrame's values, row by row (its index left out)."""
    hashed = pd.util.hash_pandas_object(df, index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()


def data_sha256(data: Any, df: pd.DataFrame) -> str:
    """SHA-256 of the data file ``data``, or of ``df``'s values when the data came as a DataFrame."""
    if isinstance(data, (str, os.PathLike)):
        # read as a model folder's files are: never through a link, never blocking on a FIFO
        return safe_file_sha256(Path(data))
    return frame_sha256(df)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (so any size fits in memory)."""
    p = Path(path)
    if not p.is_file():
        _check_readable(p)
    digest = hashlib.sha256()
    with p.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
