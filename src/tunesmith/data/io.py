"""Reading and writing tables (CSV, TSV, Parquet, JSONL) with errors that name the row.

Every problem a user can cause with an input file raises :class:`~tunesmith.errors.DataError`
whose location names the file and, where it applies, the **1-based data row** (the header is
not counted, blank lines are skipped, so row ``n`` is ``df.iloc[n - 1]``) and the column.
Malformed files - a wrong encoding, NUL bytes, an unclosed quote, a truncated download, a
binary file under a text name, a file too large for memory - end in such an error, never in
a stack trace. Problems that do not stop reading (a stray string in a numeric column, rows
left unread by ``max_rows``) are reported as a :class:`DataWarning`.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import numpy as np
import pandas as pd

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
_ENCODING_HINT = (
    "Re-save the file as UTF-8, or read it with read_table(path, encoding=...) naming the encoding "
    "it was written in (often 'latin-1' or 'cp1252')"
)
_NUL_HINT = (
    "A text file holds no NUL bytes: they are left by an interrupted write or a binary export, or the "
    "file is UTF-16 read as UTF-8. Export the file again, or remove them (tr -d '\\000' < in > out)"
)
# A field may be as long as a whole text document; csv's default cap is 128 KiB.
_FIELD_LIMIT = 2**31 - 1

# Byte-order marks, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# File signatures of things that get saved under a .csv or .jsonl name by mistake.
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image", ""),
    (b"\xff\xd8\xff", "a JPEG image", ""),
    (b"GIF87a", "a GIF image", ""),
    (b"GIF89a", "a GIF image", ""),
    (b"%PDF-", "a PDF document", ""),
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx file is one)", "Export the sheet as CSV UTF-8"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office document (.xls)", "Export the sheet as CSV UTF-8"),
    (b"SQLite format 3\x00", "an SQLite database", "Export the table as CSV or Parquet"),
    (b"PAR1", "a Parquet file", "Rename it to .parquet or pass format='parquet'"),
    (b"ARROW1", "an Arrow/Feather file", "Convert it to Parquet"),
    (b"\x1f\x8b", "gzip-compressed data", "Add .gz to its name (data.csv.gz) so it is decompressed"),
    (b"BZh", "bz2-compressed data", "Add .bz2 to its name (data.csv.bz2) so it is decompressed"),  # + "?1AY&SY"
    (b"\xfd7zXZ\x00", "xz-compressed data", "Add .xz to its name (data.csv.xz) so it is decompressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "Decompress it first (zstd -d)"),
    (b"\x7fELF", "a program (ELF executable)", ""),
)
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13)) + b"\x7f"

# Memory guard: peak bytes while reading, per byte of (uncompressed) data, measured on review
# tables (short texts, a label, numbers) with this module's readers: CSV ~6x, JSONL ~8x, and
# Parquet ~4.5x its uncompressed column data. A file whose estimate exceeds this share of the
# available memory is refused before reading.
_TEXT_EXPANSION = {"csv": 6.5, "tsv": 6.5, "jsonl": 8.5, "json": 8.5}
_PARQUET_EXPANSION = 4.5
_UNKNOWN_COMPRESSION_RATIO = 6.0  # bz2/xz do not record the uncompressed size cheaply
_MEMORY_FRACTION = 0.8


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


# --- raw bytes: reading, decompressing, sniffing ------------------------------------------------


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


def _resolve_encoding(head: bytes, encoding: str | None, path: Path) -> tuple[str, str]:
    """(codec to decode with, name to show in messages).

    ``None`` means UTF-8, or UTF-16/UTF-32 when the file starts with their byte-order mark.
    UTF-8 always reads with an optional byte-order mark, which would otherwise end up glued to
    the first column's name.
    """
    if encoding is None:
        for bom, codec in _BOMS:
            if head.startswith(bom):
                return codec, codec.replace("-sig", "")
        return "utf-8-sig", "utf-8"
    try:
        name = codecs.lookup(encoding).name
    except LookupError as e:
        raise DataError(f"unknown encoding {encoding!r}", file=path, hint="Use e.g. 'utf-8' or 'latin-1'") from e
    return ("utf-8-sig" if name == "utf-8" else encoding), encoding


def _ascii_compatible(codec: str) -> bool:
    """True when the codec writes the CSV/JSON structure characters as single ASCII bytes."""
    sample = '\r\n\t ,"{}[]:'
    try:
        encoded = sample.encode(codec)
    except (UnicodeError, LookupError):
        return False
    return encoded.removeprefix(codecs.BOM_UTF8) == sample.encode("ascii")


def _control_fraction(data: bytes) -> float:
    """Share of bytes that are control characters never found in text (tab and newlines aside)."""
    if not data:
        return 0.0
    return (len(data) - len(data.translate(None, _CONTROL_BYTES))) / len(data)


def _binary_kind(head: bytes) -> tuple[str, str] | None:
    """(what the bytes look like, what to do) when they start with a known binary signature."""
    for magic, what, hint in _MAGIC:
        if not head.startswith(magic):
            continue
        # Short signatures that plain text could start with are checked further.
        if magic == b"BZh" and head[4:10] != b"1AY&SY":
            continue
        if magic == b"PAR1" and not (len(head) > 4 and head[4] < 32):
            continue
        return what, hint
    return None


def _utf16_without_bom(head: bytes) -> str | None:
    """'utf-16-le'/'utf-16-be' when ``head`` is ASCII-range text in UTF-16 without a byte-order mark."""
    sample = head[: len(head) - len(head) % 2]
    if len(sample) < 8:
        return None
    even, odd = sample[0::2], sample[1::2]
    zero_even, zero_odd = even.count(0) / len(even), odd.count(0) / len(odd)
    if zero_odd > 0.7 and zero_even < 0.1:
        return "utf-16-le"
    if zero_even > 0.7 and zero_odd < 0.1:
        return "utf-16-be"
    return None


def _not_text_error(path: Path, fmt: str, what: str, hint: str = "") -> DataError:
    return DataError(
        f"does not look like a {fmt.upper()} file: it looks like {what}",
        file=path,
        hint=hint or f"Check that this is the right file; supported: {_supported_text()}",
    )


def _sniff_text(head: bytes, path: Path, fmt: str, codec: str) -> None:
    """Refuse binary files (by signature) and BOM-less UTF-16 named as a text format."""
    kind = _binary_kind(head)
    if kind is not None:
        raise _not_text_error(path, fmt, *kind)
    if _ascii_compatible(codec):
        utf16 = _utf16_without_bom(head)
        if utf16 is not None:
            raise DataError(
                f"the file looks like {utf16.upper()} text without a byte-order mark, not UTF-8",
                file=path,
                hint=f"Re-save it as UTF-8, or read it with read_table(path, encoding={utf16!r})",
            )


def _decode(raw: bytes, path: Path, fmt: str, codec: str, shown: str) -> str:
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as e:
        if _control_fraction(raw[:_SNIFF]) >= 0.05:
            raise _not_text_error(
                path, fmt, "binary data (control bytes that text does not hold)", "Check that this is the right file"
            ) from e
        bad = raw[e.start : min(e.end, e.start + 4)]
        message = f"bytes {bad!r} at byte offset {e.start} are not valid {shown}"
        try:
            row, column = _locate(raw.decode(codec, errors="surrogateescape"), fmt, _has_escaped)
        except UnicodeError:
            row, column = None, None
        if row == 0:
            message = f"{message} (in the header)"
            row = None
        raise DataError(message, file=path, row=row, column=column, hint=_ENCODING_HINT) from e


def _has_escaped(value: str) -> bool:
    """True when ``value`` holds a byte that could not be decoded (see ``surrogateescape``)."""
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _check_nul(text: str, path: Path, fmt: str) -> None:
    """Refuse NUL characters: pandas would cut or keep them silently, and they mean damage."""
    first = text.find("\x00")
    if first < 0:
        return
    count = text.count("\x00")
    line = text.count("\n", 0, first) + 1
    # A lone surrogate cannot come out of a strict decode, so it marks the NULs unambiguously
    # (and older csv modules refuse NUL itself).
    row, column = _locate(text.replace("\x00", "\ud800"), fmt, lambda v: "\ud800" in v)
    where = " (in the header)" if row == 0 else ""
    raise DataError(
        f"the file holds {count} NUL byte(s) (\\x00), the first on line {line}{where}",
        file=path,
        row=row or None,
        column=column,
        hint=_NUL_HINT,
    )


def _locate(text: str, fmt: str, bad: Callable[[str], bool]) -> tuple[int | None, str | None]:
    """(data row, column) of the first value for which ``bad`` is true; row 0 means the header."""
    if fmt in _SEPARATOR:
        header: list[str] = []
        try:
            for i, (_, record) in enumerate(_csv_records(text, _SEPARATOR[fmt])):
                if i == 0:
                    header = record
                for j, value in enumerate(record):
                    if bad(value):
                        column = header[j].strip() if i > 0 and j < len(header) else None
                        return i, column
        except DataError:
            pass
        return None, None
    for i, (_, line) in enumerate(_json_lines(text), start=1):
        if bad(line):
            return i, None
    return None, None


# --- memory guard ------------------------------------------------------------------------------


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit (containers), or None without a limit."""
    for limit_file, usage_file, stat_file, inactive_key in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "inactive_file"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            "/sys/fs/cgroup/memory/memory.stat",
            "total_inactive_file",
        ),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is None or usage is None or limit >= 1 << 60:  # "max", or the "no limit" sentinel
            continue
        inactive = 0  # page cache the kernel can drop counts as free
        try:
            for line in Path(stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key and value.strip().isdigit():
                    inactive = int(value)
        except OSError:
            pass
        return max(limit - usage + inactive, 0)
    return None


def _available_memory() -> int | None:
    """Bytes of memory available to this process, or None when it cannot be told.

    psutil when installed, else ``MemAvailable`` from ``/proc/meminfo``, else ``os.sysconf``;
    capped by a cgroup (container) memory limit. Tests monkeypatch this function.
    """
    found: list[int] = []
    try:
        import psutil

        found.append(int(psutil.virtual_memory().available))
    except Exception:
        pass
    if not found:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
        except (OSError, ValueError, IndexError):
            pass
    if not found:
        with suppress(AttributeError, ValueError, OSError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    headroom = _cgroup_headroom()
    if headroom is not None:
        found.append(headroom)
    return min(found) if found else None


def _uncompressed_size(path: Path, compression: Compression | None, size: int) -> int:
    if compression is None:
        return size
    if compression == "gzip" and size >= 18:
        # The gzip trailer holds the uncompressed size modulo 4 GiB (of the last member only).
        # gzip adds at most a header and ~0.01% to data it cannot compress, so a value well
        # below the compressed size has wrapped around.
        with path.open("rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
        while isize + 65536 < 0.999 * size:
            isize += 1 << 32
        return isize
    return int(size * _UNKNOWN_COMPRESSION_RATIO)


def _memory_estimate(path: Path, fmt: str, compression: Compression | None) -> tuple[int, int, int]:
    """(bytes on disk, bytes of data once decompressed, estimated peak bytes to read it)."""
    size = path.stat().st_size
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        data = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        cells = meta.num_rows * meta.num_columns
        return size, data, int(size + _PARQUET_EXPANSION * data + 8 * cells)
    data = _uncompressed_size(path, compression, size)
    extra = size if compression is not None else 0
    return size, data, int(extra + _TEXT_EXPANSION[fmt] * data)


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _decompressed_more_than(path: Path, compression: Compression, limit: int) -> bool:
    """True when ``path`` decompresses to more than ``limit`` bytes; reads no further than that."""
    total = 0
    with _read_errors(path, compression), _open_binary(path, compression) as f:
        while chunk := f.read(_CHUNK):
            total += len(chunk)
            if total > limit:
                return True
    return False


def _check_memory(path: Path, fmt: str, compression: Compression | None) -> None:
    """Refuse a file whose reading would need more memory than there is, before reading it."""
    available = _available_memory()
    if available is None:
        return
    try:
        size, data, need = _memory_estimate(path, fmt, compression)
    except Exception:
        return  # an unreadable file is reported by the reader itself
    allowed = _MEMORY_FRACTION * available
    if need <= allowed:
        return
    if compression is not None:
        # The uncompressed size was a guess (and a truncated gzip's trailer is garbage): count it,
        # streaming, but only as far as what fits - a refused file is never decompressed whole.
        fits = max(int((allowed - size) / _TEXT_EXPANSION[fmt]), 0)
        if not _decompressed_more_than(path, compression, fits):
            return
        data = max(data, fits)
        need = max(need, int(size + _TEXT_EXPANSION[fmt] * data))
    on_disk = _human(size) + (f" ({_human(data)} uncompressed)" if data != size else "")
    raise DataError(
        f"the file is too large to read into memory: {on_disk}, about {_human(need)} while reading, "
        f"but only {_human(available)} of memory is available",
        file=path,
        hint="Read a sample with read_table(path, max_rows=N), split it into smaller files, keep only the "
        "columns you need (Parquet reads a fraction of the memory of CSV), or use a machine with more memory",
    )


# --- max_rows: reading only the head of a text file ---------------------------------------------


def _csv_reader(lines: Iterator[str] | io.StringIO, sep: str) -> Any:
    # Raised process-wide and never lowered, which is harmless: a field may be a long document.
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)
    return csv.reader(lines, delimiter=sep)


def _is_blank(record: list[str]) -> bool:
    # pandas skips empty lines and lines of only spaces/tabs; so do we, to number rows alike.
    return not record or (len(record) == 1 and not record[0].strip(" \t"))


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

            count, end = 0, 0
            try:
                for record in _csv_reader(tracked(), _SEPARATOR[fmt]):
                    if _is_blank(record):
                        continue
                    if count == wanted:
                        return "".join(consumed[:end]).encode("latin-1"), True
                    count += 1
                    end = len(consumed)
            except csv.Error as e:
                raise DataError(f"cannot parse the file: {e}", file=path, hint="Check its separator and quoting") from e
        return "".join(consumed).encode("latin-1"), False


# --- parsing -------------------------------------------------------------------------------------


def _csv_records(text: str, sep: str, path: Path | None = None) -> Iterator[tuple[int, list[str]]]:
    """(first line, record) of the non-blank records of CSV/TSV text, header first.

    The same quoting rules and blank-line skipping as pandas; line numbers are 1-based file lines.
    """
    reader = _csv_reader(io.StringIO(text, newline=""), sep)
    start = 1
    try:
        for record in reader:
            if not _is_blank(record):
                yield start, record
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(
            f"cannot parse the file near line {reader.line_num}: {e}",
            file=path,
            hint="Check its separator and quoting",
        ) from e


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
        return pd.DataFrame(records)
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
    return pd.DataFrame(rows)


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
            return pd.read_parquet(path), False
        pf = pq.ParquetFile(path)
        batches = []
        count = 0
        for batch in pf.iter_batches(batch_size=min(max_rows, 65536)):
            batches.append(batch)
            count += batch.num_rows
            if count >= max_rows:
                break
        table = pa.Table.from_batches(batches, schema=pf.schema_arrow).slice(0, max_rows)
        return table.to_pandas(), pf.metadata.num_rows > max_rows
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
