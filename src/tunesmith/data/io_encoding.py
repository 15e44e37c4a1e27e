"""Encoding sniffing of text tables: byte-order marks, binary files under a text name, NUL bytes,
bytes invalid in the encoding, each located at its data row.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path

from tunesmith.data.io_formats import _SEPARATOR, _SNIFF, _csv_records, _json_lines, _supported_text
from tunesmith.errors import DataError

_ENCODING_HINT = (
    "Re-save the file as UTF-8, or read it with read_table(path, encoding=...) naming the encoding "
    "it was written in (often 'latin-1' or 'cp1252')"
)


_NUL_HINT = (
    "A text file holds no NUL bytes: they are left by an interrupted write or a binary export, or the "
    "file is UTF-16 read as UTF-8. Export the file again, or remove them (tr -d '\\000' < in > out)"
)


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
