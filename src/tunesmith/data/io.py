"""Reading and writing tables (CSV, TSV, Parquet, JSONL) with errors that name the row.

Every problem a user can cause with an input file raises :class:`~tunesmith.errors.DataError`
whose location names the file and, where it applies, the **1-based data row** (the header is
not counted, blank lines are skipped, so row ``n`` is ``df.iloc[n - 1]``) and the column.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from tunesmith.errors import DataError

SUPPORTED_FORMATS = ("csv", "tsv", "parquet", "jsonl")

# "json" is accepted too: a JSON array of records, or JSON Lines under a .json name.
_FORMATS_ACCEPTED = (*SUPPORTED_FORMATS, "json")
_SUFFIX_FORMAT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
Compression = Literal["gzip", "bz2", "xz"]
_COMPRESSION: dict[str, Compression] = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
_DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "bz2": bz2.decompress,
    "xz": lzma.decompress,
}
_SEPARATOR = {"csv": ",", "tsv": "\t"}
_CHUNK = 1 << 20
_ENCODING_HINT = (
    "Re-save the file as UTF-8, or read it with read_table(path, encoding=...) naming the encoding "
    "it was written in (often 'latin-1' or 'cp1252')"
)


def _supported_text() -> str:
    return ", ".join(SUPPORTED_FORMATS) + " (also .csv.gz, .csv.bz2, .jsonl.gz)"


def detect_format(path: str | os.PathLike[str], format: str | None = None) -> tuple[str, Compression | None]:
    """``(format, compression)`` of ``path``, from ``format`` when given, else from the suffix.

    ``compression`` is ``"gzip"``, ``"bz2"``, ``"xz"`` or ``None``. Parquet files carry their own
    compression, so ``.parquet.gz`` is refused. Raises :class:`DataError` for an unknown format.
    """
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    compression = _COMPRESSION.get(suffixes[-1]) if suffixes else None
    if compression is not None:
        suffixes = suffixes[:-1]
    if format is not None:
        fmt = format.lower().lstrip(".")
        if fmt in ("pq",):
            fmt = "parquet"
        elif fmt == "ndjson":
            fmt = "jsonl"
        if fmt not in _FORMATS_ACCEPTED:
            raise DataError(
                f"unknown format {format!r}",
                file=p,
                hint=f"Use one of: {', '.join(SUPPORTED_FORMATS)}",
            )
    else:
        fmt_or_none = _SUFFIX_FORMAT.get(suffixes[-1]) if suffixes else None
        if fmt_or_none is None:
            shown = "".join(p.suffixes) or "no suffix"
            raise DataError(
                f"cannot tell the file format from its name ({shown})",
                file=p,
                hint=f"Rename it or pass format=...; supported: {_supported_text()}",
            )
        fmt = fmt_or_none
    if fmt == "parquet" and compression is not None:
        raise DataError(
            "a compressed Parquet file is not supported (Parquet compresses internally)",
            file=p,
            hint=f"Decompress it first; supported: {_supported_text()}",
        )
    return fmt, compression


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(
            "file not found",
            file=path,
            hint=f"Check the path (relative paths start from {Path.cwd()})",
        )
    if path.is_dir():
        raise DataError("is a directory, not a file", file=path, hint="Give the path of a data file inside it")
    if path.stat().st_size == 0:
        raise DataError("file is empty (0 bytes)", file=path, hint="Check that the export or download finished")


def _read_bytes(path: Path, compression: Compression | None) -> bytes:
    try:
        raw = path.read_bytes()
    except PermissionError as e:
        raise DataError("cannot read the file: permission denied", file=path, hint="Check its permissions") from e
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", file=path) from e
    if compression is None:
        return raw
    try:
        return _DECOMPRESS[compression](raw)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        raise DataError(
            f"cannot decompress the file as {compression}: {e}",
            file=path,
            hint="The file may be truncated or not really compressed; check the suffix matches its content",
        ) from e


def _reading_encoding(encoding: str) -> str:
    # utf-8-sig reads plain UTF-8 too, and drops a byte-order mark that would otherwise end up
    # glued to the first column's name.
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


def _has_escaped(value: str) -> bool:
    """True when ``value`` holds a byte that could not be decoded (see ``surrogateescape``)."""
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _csv_records(text: str, sep: str) -> Iterator[list[str]]:
    """Non-blank records of CSV/TSV text, header first; the same quoting rules as pandas."""
    for record in csv.reader(io.StringIO(text, newline=""), delimiter=sep):
        if record:
            yield record


def _decode(raw: bytes, path: Path, fmt: str, encoding: str) -> str:
    enc = _reading_encoding(encoding)
    try:
        return raw.decode(enc)
    except LookupError as e:
        raise DataError(f"unknown encoding {encoding!r}", file=path, hint="Use e.g. 'utf-8' or 'latin-1'") from e
    except UnicodeDecodeError as e:
        bad = raw[e.start : min(e.end, e.start + 4)]
        message = f"bytes {bad!r} at byte offset {e.start} are not valid {encoding}"
        row, column = _locate_bad_bytes(raw.decode(enc, errors="surrogateescape"), fmt)
        if row == 0:
            message = f"{message} (in the header)"
            row = None
        raise DataError(message, file=path, row=row, column=column, hint=_ENCODING_HINT) from e


def _locate_bad_bytes(text: str, fmt: str) -> tuple[int | None, str | None]:
    """(data row, column) of the first undecodable byte; row 0 means the header."""
    if fmt in _SEPARATOR:
        header: list[str] = []
        for i, record in enumerate(_csv_records(text, _SEPARATOR[fmt])):
            if i == 0:
                header = record
            for j, value in enumerate(record):
                if _has_escaped(value):
                    column = header[j].strip() if i > 0 and j < len(header) else None
                    return i, column
        return None, None
    for i, line in enumerate(_json_lines(text), start=1):
        if _has_escaped(line[1]):
            return i, None
    return None, None


def _header_checks(header: list[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        key = name.strip().lstrip("\ufeff").strip()
        if not key:
            continue
        if key in seen:
            raise DataError(
                f"column name {key!r} appears more than once (columns {seen[key]} and {i})",
                file=path,
                column=key,
                hint="Rename one of them so every column name is unique",
            )
        seen[key] = i


def _read_delimited(text: str, path: Path, fmt: str) -> pd.DataFrame:
    sep = _SEPARATOR[fmt]
    records = _csv_records(text, sep)
    header = next(records, None)
    if header is None:
        raise DataError("file has no header and no data rows", file=path, hint="Check that it is the right file")
    _header_checks(header, path)
    # pandas pads a row with too few fields with missing values; that hides a broken row
    # (a lost separator shifts every later value), so it is an error like a row with too many.
    short: tuple[int, list[str]] | None = None
    last = 0
    for row, record in enumerate(records, start=1):
        last = row
        if short is None and len(record) < len(header):
            short = (row, record)
    # A quote never closed swallows the rest of the file into one short final record;
    # that is reported below as the unclosed quote it is.
    unclosed = short is not None and short[0] == last and any("\n" in v for v in short[1])
    if short is not None and not unclosed:
        raise DataError(
            f"row has {len(short[1])} fields but the header has {len(header)}",
            file=path,
            row=short[0],
            hint="Add the missing fields (an empty value still needs its separator, as in a,,c)",
        )
    try:
        with warnings.catch_warnings():
            # With index_col=False pandas only *warns* when every row has one field too many and
            # silently drops the extra; with the default it turns column 1 into the index. Both
            # lose data, so we treat the warning as the error it is.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(io.StringIO(text, newline=""), sep=sep, index_col=False)
    except (pd.errors.ParserError, pd.errors.ParserWarning) as e:
        raise _ragged_error(text, sep, header, path, str(e)) from e
    except pd.errors.EmptyDataError as e:
        raise DataError("file has no header and no data rows", file=path) from e


def _ragged_error(text: str, sep: str, header: list[str], path: Path, detail: str) -> DataError:
    """The error for a row pandas could not parse, with the row found by our own scan."""
    name = "tab" if sep == "\t" else repr(sep)
    last_row = 0
    for row, record in enumerate(_csv_records(text, sep)):
        if row and len(record) > len(header):
            return DataError(
                f"row has {len(record)} fields but the header has {len(header)}",
                file=path,
                row=row,
                hint=f"Quote values that contain the separator ({name}) or remove the extra field",
            )
        last_row = row
    if "EOF inside string" in detail:
        return DataError(
            "a quoted value is never closed (its quote opens in this row or before)",
            file=path,
            row=last_row or None,
            hint='Close the quote, or double quotes inside quoted values ("")',
        )
    return DataError(f"cannot parse the file: {detail.strip()}", file=path, hint="Check its separator and quoting")


def _json_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of non-blank lines. Splits on \\n only: U+2028 may sit inside strings."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)


def _read_json(text: str, path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as e:
            raise DataError(
                f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                file=path,
                hint="Fix the JSON, or write one JSON object per line (JSONL)",
            ) from e
        except _DuplicateKey as e:
            raise DataError(
                f"key {e.key!r} appears twice in one record", file=path, column=e.key, hint="Make keys unique"
            ) from e
        for row, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise DataError(
                    f"expected a JSON object, got {type(record).__name__}",
                    file=path,
                    row=row,
                    hint='Each record must be an object like {"text": ..., "label": ...}',
                )
        return pd.DataFrame(records)
    rows: list[dict[str, Any]] = []
    for row, (number, line) in enumerate(_json_lines(text), start=1):
        where = f"line {number}: " if number != row else ""
        try:
            record = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}invalid JSON: {e.msg} (char {e.colno})",
                file=path,
                row=row,
                hint="Each line must be one complete JSON object; fix or remove that line",
            ) from e
        except _DuplicateKey as e:
            raise DataError(
                f"{where}key {e.key!r} appears twice",
                file=path,
                row=row,
                column=e.key,
                hint="Make keys unique",
            ) from e
        if not isinstance(record, dict):
            raise DataError(
                f"{where}expected a JSON object, got {type(record).__name__}",
                file=path,
                row=row,
                hint='Each line must be an object like {"text": ..., "label": ...}',
            )
        rows.append(record)
    return pd.DataFrame(rows)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except ImportError as e:
        raise DataError("reading Parquet needs pyarrow", file=path, hint="pip install pyarrow") from e
    except Exception as e:
        # pyarrow raises a handful of unrelated types (ArrowInvalid, OSError, ...) for one cause.
        raise DataError(
            f"cannot read the file as Parquet: {e}",
            file=path,
            hint="The file may be truncated or not Parquet; export it again",
        ) from e


def _finish(df: pd.DataFrame, path: Path, fmt: str) -> pd.DataFrame:
    names = [str(c).lstrip("\ufeff").strip() for c in df.columns]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(
                f"column name {name!r} appears more than once",
                file=path,
                column=name,
                hint="Rename one of them so every column name is unique",
            )
        seen.add(name)
    df.columns = pd.Index(names)
    if len(df) == 0:
        only_header = bool(names) and fmt in _SEPARATOR
        raise DataError(
            "file has no data rows (only a header)" if only_header else "file has no data rows",
            file=path,
            hint="Check that the export finished and that this is the right file",
        )
    return df.reset_index(drop=True)


def read_table(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """Read a CSV, TSV, Parquet or JSONL file into a DataFrame.

    The format comes from ``format`` (one of :data:`SUPPORTED_FORMATS`, or ``"json"``) or the
    suffix: ``.csv``, ``.tsv``, ``.parquet``/``.pq``, ``.jsonl``/``.ndjson`` and ``.json`` (an
    array of records, or one object per line); text formats may be compressed (``.gz``,
    ``.bz2``, ``.xz``). Text is decoded with ``encoding`` (UTF-8 with or without byte-order
    mark by default). Empty cells, JSON ``null`` and pandas' default missing markers
    (``NA``, ``null``, ``NaN``, ...) become missing values; column names are stripped of
    surrounding whitespace.

    Raises :class:`DataError` (naming the file, the 1-based data row - header excluded, blank
    lines skipped - and the column where they apply) for: a missing file or a directory, an
    empty file or one with only a header, a row with more fields than the header, bytes that
    are not valid in ``encoding``, a line that is not a JSON object, an unreadable Parquet file,
    a duplicate column name and an unknown format.
    """
    p = Path(path)
    _check_readable(p)
    fmt, compression = detect_format(p, format)
    if fmt == "parquet":
        return _finish(_read_parquet(p), p, fmt)
    text = _decode(_read_bytes(p, compression), p, fmt, encoding)
    if not text.strip():
        raise DataError("file has no data rows (it holds only whitespace)", file=p)
    df = _read_delimited(text, p, fmt) if fmt in _SEPARATOR else _read_json(text, p, fmt)
    return _finish(df, p, fmt)


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
