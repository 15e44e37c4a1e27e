"""The readers behind :func:`~tunesmith.data.io.read_table`: delimited text (CSV, TSV), JSON and
JSON Lines, and Parquet, with errors that name the 1-based data row; mixed-type notes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pandas as pd

from tunesmith.data.io_encoding import _binary_kind, _control_fraction
from tunesmith.data.io_formats import (
    _SEPARATOR,
    _SNIFF,
    Compression,
    DataWarning,
    _csv_reader,
    _csv_records,
    _is_blank,
    _json_lines,
    _open_binary,
    _read_errors,
    _supported_text,
)
from tunesmith.errors import DataError


def _head_bytes(path: Path, compression: Compression | None, fmt: str, max_rows: int) -> tuple[bytes, bool]:
    """The bytes of the header and the first ``max_rows`` records, and whether more follow.

    Reads only as far as needed. The structure characters (quotes, separators, newlines) are
    ASCII, so latin-1 (one character per byte) finds the records of any ASCII-compatible
    encoding and gives back the exact bytes.
    """
    wanted = max_rows + 1 if fmt in _SEPARATOR else max_rows
    with _read_errors(path, compression), _open_binary(path, compression) as f:
        if fmt not in _SEPARATOR:  # JSON Lines: one record per non-blank line
            lines: list[bytes] = []
            count = 0
            for line in f:
                if line.strip():
                    if count == wanted:
                        return b"".join(lines), True
                    count += 1
                lines.append(line)
            return b"".join(lines), False
        consumed: list[str] = []
        with io.TextIOWrapper(cast(BinaryIO, f), encoding="latin-1", newline="") as text:

            def tracked() -> Iterator[str]:
                for line in text:
                    consumed.append(line)
                    yield line

            count, end, begin = 0, 0, 0
            try:
                for _record in _csv_reader(tracked(), _SEPARATOR[fmt]):
                    raw = "".join(consumed[begin:])
                    begin = len(consumed)
                    if _is_blank(raw, _SEPARATOR[fmt]):
                        continue
                    if count == wanted:
                        return "".join(consumed[:end]).encode("latin-1"), True
                    count += 1
                    end = len(consumed)
            except csv.Error as e:
                raise DataError(f"cannot parse the file: {e}", file=path, hint="Check its separator and quoting") from e
        return "".join(consumed).encode("latin-1"), False


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
    records = (record for _, record in _csv_records(text, sep, path))
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
    unclosed = short is not None and short[0] == last and any("\n" in v or "\r" in v for v in short[1])
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
    last_row, last_line = 0, 1
    for row, (line, record) in enumerate(_csv_records(text, sep, path)):
        if row and len(record) > len(header):
            return DataError(
                f"row has {len(record)} fields but the header has {len(header)}",
                file=path,
                row=row,
                hint=f"Quote values that contain the separator ({name}) or remove the extra field",
            )
        last_row, last_line = row, line
    if "EOF inside string" in detail:
        # The unclosed quote swallows everything after it into the last record: it opens there.
        return DataError(
            f"a quote opened in this row (line {last_line}) is never closed, so the rest of the file became one value",
            file=path,
            row=last_row or None,
            hint='Close the quote; a quote inside a quoted value is written twice ("")',
        )
    return DataError(f"cannot parse the file: {detail.strip()}", file=path, hint="Check its separator and quoting")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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
            ends_early = e.pos >= len(text.rstrip())
            raise DataError(
                f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
                + (" (the file ends there: it looks truncated)" if ends_early else ""),
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
        return _frame(records, text, path)
    rows: list[dict[str, Any]] = []
    last_line = max((number for number, _ in _json_lines(text)), default=0)
    # The file was cut mid-line (an interrupted download or write) when its last line has no newline.
    cut = not text.endswith("\n")
    for row, (number, line) in enumerate(_json_lines(text), start=1):
        where = f"line {number}: " if number != row else ""
        try:
            record = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as e:
            if cut and number == last_line:
                raise DataError(
                    f"line {number}, the last, ends in the middle of a record ({e.msg}): the file looks truncated",
                    file=path,
                    row=row,
                    hint="Get a complete copy of the file, or delete its incomplete last line",
                ) from e
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
    return _frame(rows, text, path)


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _frame(records: list[dict[str, Any]], text: str, path: Path) -> pd.DataFrame:
    """The records as a frame; a string that is not valid Unicode is an error at its row and key."""
    # JSON can escape one half of a surrogate pair ("\\ud800"): no text encoding holds that
    # string, so pandas fails on it (or keeps it, in a column of mixed types, for later to fail).
    if _SURROGATE_ESCAPE.search(text):
        for row, record in enumerate(records, start=1):
            for key, value in record.items():
                if _has_surrogate([key, value]):
                    raise DataError(
                        "a string holds an unpaired surrogate escape (like \\ud800), which is not valid Unicode",
                        file=path,
                        row=row,
                        column=key if not _has_surrogate(key) else None,
                        hint="Escapes of characters beyond U+FFFF come in pairs; fix the program that wrote the file",
                    )
    return pd.DataFrame(records)


def _check_parquet_file(path: Path) -> None:
    """Refuse, before pyarrow sees it, a file that is not Parquet or lacks its footer."""
    size = path.stat().st_size
    with _read_errors(path, None), path.open("rb") as f:
        head = f.read(_SNIFF)
        tail = b""
        if size >= 8:
            f.seek(-4, os.SEEK_END)
            tail = f.read(4)
    if not head.startswith(b"PAR1"):
        kind = _binary_kind(head)
        if kind is not None:
            what = f"it looks like {kind[0]}"
        elif _control_fraction(head) < 0.01:
            what = "it looks like text (CSV or JSON?)"
        else:
            what = "it does not start with the Parquet signature PAR1"
        raise DataError(
            f"not a Parquet file: {what}",
            file=path,
            hint=f"Rename it to match its content or pass format=...; supported: {_supported_text()}",
        )
    if size < 12 or tail != b"PAR1":
        raise DataError(
            f"not a complete Parquet file: it ends after {size} bytes, without the footer every Parquet file ends with",
            file=path,
            hint="It was probably cut off while being written, copied or downloaded; write or download it again",
        )


def _read_parquet(path: Path, max_rows: int | None = None) -> tuple[pd.DataFrame, bool]:
    """(frame, whether rows were left unread)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError("reading Parquet needs pyarrow", file=path, hint="pip install pyarrow") from e
    try:
        if max_rows is None:
            return _valid(pq.read_table(path), path).to_pandas(), False
        pf = pq.ParquetFile(path)
        batches = []
        count = 0
        for batch in pf.iter_batches(batch_size=min(max_rows, 65536)):
            batches.append(batch)
            count += batch.num_rows
            if count >= max_rows:
                break
        table = pa.Table.from_batches(batches, schema=pf.schema_arrow).slice(0, max_rows)
        return _valid(table, path).to_pandas(), pf.metadata.num_rows > max_rows
    except DataError:
        raise
    except Exception as e:
        # pyarrow raises a handful of unrelated types (ArrowInvalid, OSError, ...) for one cause,
        # some with a multi-line message (thrift's) that would break the one-line error.
        detail = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in " ".join(str(e).split()))
        raise DataError(
            f"cannot read the file as Parquet: {detail or type(e).__name__}",
            file=path,
            hint="The file may be truncated or not Parquet; export it again",
        ) from e


def _valid(table: Any, path: Path) -> Any:
    """``table``, once every column is checked in full (pyarrow reads text without checking its UTF-8)."""
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            column.validate(full=True)
        except Exception as e:
            detail = " ".join(str(e).split())
            raise DataError(
                f"the column holds invalid data ({detail})",
                file=path,
                column=name,
                hint="The file is corrupt (text that is not valid UTF-8); export it again",
            ) from e
    return table


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


def _numeric_mask(values: pd.Series) -> np.ndarray:
    """True where a value is a number or a string that reads as one (booleans are not numbers)."""
    numbers = pd.to_numeric(values, errors="coerce")
    is_bool = values.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
    return np.asarray(numbers.notna(), dtype=bool) & ~is_bool


def _mixed_type_notes(df: pd.DataFrame, path: Path) -> list[DataWarning]:
    """A warning per column of numbers holding a few values that are not (``"abc"`` among ``4.5``, ``3``)."""
    notes: list[DataWarning] = []
    for name in df.columns:
        column = df[name]
        if not (pd.api.types.is_object_dtype(column.dtype) or pd.api.types.is_string_dtype(column.dtype)):
            continue
        present = column[column.notna()]
        if len(present) < 3:
            continue
        try:
            if _numeric_mask(present.iloc[:1000]).mean() < 0.5:  # cheap look first: text columns end here
                continue
            numeric = _numeric_mask(present)
        except (TypeError, ValueError):  # lists or dicts from JSON
            continue
        bad = np.flatnonzero(~numeric)
        if len(bad) == 0 or len(present) - len(bad) < 4 * len(bad):
            continue
        values = [present.iloc[i] for i in bad[:3]]
        shown = ", ".join(repr(v) for v in values) + (", ..." if len(bad) > 3 else "")
        notes.append(
            DataWarning(
                f"{len(bad)} value(s) in a column of numbers are not numbers ({shown}), so it is read as text",
                file=path,
                row=int(present.index[bad[0]]) + 1,
                column=str(name),
                hint="If the column is numeric, fix or blank those values (an empty cell is a missing value)",
            )
        )
    return notes
