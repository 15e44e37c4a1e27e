"""Which format a file is in, and opening it: suffixes, compression, readable checks, and
splitting text into records (CSV rows, JSON lines) for the readers and the error locator.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tunesmith.errors import ConfigError, DataError

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


_DECOMPRESS_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError)


_SEPARATOR = {"csv": ",", "tsv": "\t"}


_CHUNK = 1 << 20


_SNIFF = 8192  # bytes looked at to tell text from binary and to find a byte-order mark


class DataWarning(UserWarning):
    """A problem in an input file that does not stop reading it.

    Issued with :func:`warnings.warn`; carries ``file``, ``row``, ``column`` and ``hint`` like
    :class:`DataError`, and its text reads the same way (``file, row 4, column 'x': ...``).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.row = row
        self.column = column
        self.hint = hint
        super().__init__(str(DataError(message, file=file, row=row, column=column, hint=hint)))


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


def _check_max_rows(max_rows: int | None) -> int | None:
    if max_rows is None:
        return None
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
        raise ConfigError(f"must be a whole number of 1 or more, got {max_rows!r}", key="max_rows")
    return int(max_rows)


@contextmanager
def _read_errors(path: Path, compression: Compression | None) -> Iterator[None]:
    """Turn the errors of reading (and decompressing) ``path`` into :class:`DataError`."""
    try:
        yield
    except DataError:
        raise
    except PermissionError as e:
        raise DataError("cannot read the file: permission denied", file=path, hint="Check its permissions") from e
    except _DECOMPRESS_ERRORS as e:
        if compression is None:
            if isinstance(e, OSError):
                raise DataError(f"cannot read the file: {e.strerror or e}", file=path) from e
            raise
        if isinstance(e, EOFError) or "ended before the end-of-stream" in str(e):
            raise DataError(
                f"the {compression} data ends before its end marker: the file is truncated or corrupt",
                file=path,
                hint="It was probably cut off while downloading, copying or writing; get a complete copy",
            ) from e
        raise DataError(
            f"cannot decompress the file as {compression}: {e}",
            file=path,
            hint="The file may be corrupt or not really compressed; check the suffix matches its content",
        ) from e


@contextmanager
def _open_binary(path: Path, compression: Compression | None) -> Iterator[io.BufferedIOBase]:
    """The file's bytes as a stream, decompressed on the fly."""
    if compression == "gzip":
        with gzip.GzipFile(path, "rb") as gz:
            yield gz
    elif compression == "bz2":
        with bz2.BZ2File(path, "rb") as bz:
            yield bz
    elif compression == "xz":
        with lzma.LZMAFile(path, "rb") as xz:
            yield xz
    else:
        with path.open("rb") as f:
            yield f


def _read_bytes(path: Path, compression: Compression | None) -> bytes:
    with _read_errors(path, None):
        raw = path.read_bytes()
    if compression is None:
        return raw
    with _read_errors(path, compression):
        return _DECOMPRESS[compression](raw)


def _peek(path: Path, compression: Compression | None) -> bytes:
    """The first few KiB of the (decompressed) file."""
    with _read_errors(path, compression), _open_binary(path, compression) as f:
        return f.read(_SNIFF)


# A field may be as long as a whole text document; csv's default cap is 128 KiB.
_FIELD_LIMIT = 2**31 - 1


def _csv_reader(lines: Iterator[str] | io.StringIO, sep: str) -> Any:
    # Raised process-wide and never lowered, which is harmless: a field may be a long document.
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)
    return csv.reader(lines, delimiter=sep)


def _is_blank(raw: str, sep: str) -> bool:
    """Whether the raw text of a record is a blank line, which pandas skips.

    Judged on the text, not the parsed fields: pandas skips a line of nothing but spaces and
    tabs (spaces only when tab is the separator: a tab there separates empty values), yet
    keeps ``""`` or ``"  "`` (a quoted value), which the csv module parses alike.
    """
    return not raw.strip(" \t\r\n".replace(sep, ""))


def _csv_records(text: str, sep: str, path: Path | None = None) -> Iterator[tuple[int, list[str]]]:
    """(first line, record) of the non-blank records of CSV/TSV text, header first.

    The same quoting rules and blank-line skipping as pandas; line numbers are 1-based file lines.
    """
    consumed: list[str] = []

    def lines() -> Iterator[str]:
        # csv reads no further than the record it returns, so these are exactly its lines.
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line

    reader = _csv_reader(lines(), sep)
    start = 1
    try:
        for record in reader:
            if not _is_blank("".join(consumed), sep):
                yield start, record
            consumed.clear()
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(
            f"cannot parse the file near line {reader.line_num}: {e}",
            file=path,
            hint="Check its separator and quoting",
        ) from e


def _json_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of non-blank lines. Splits on \\n only: U+2028 may sit inside strings."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line
