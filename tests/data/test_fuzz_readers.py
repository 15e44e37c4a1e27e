"""Property-based tests of the data readers: any mutation of a valid file reads correctly or fails cleanly.

Each case starts from a valid file (CSV, TSV, gzip-compressed CSV, JSON Lines, a JSON array,
Parquet, or a small folder of class sub-folders of images), applies a few random mutations
(byte flips, truncation, inserted bytes, quotes, separators, newlines, NULs, byte-order marks,
invalid UTF-8, duplicated or missing header cells, wrong types, lines that are not JSON
objects, huge numbers, emptied files, a damaged Parquet footer, zero-byte, corrupt and
non-image files among the images ...) and reads the result. The property:

* the reader raises a :class:`~tunesmith.errors.TunesmithError` whose one-line message names
  the file (and a 1-based row, when it gives one, inside the file), or
* it returns a frame with every row of the file: as many rows as the file holds records,
  counted independently (the ``csv`` module, non-blank JSON lines, the Parquet footer), as
  many columns as the header, unique column names; for images, every file listed or counted
  as ignored and every listed image decoded or counted as skipped.

Any other exception, or a warning that is not a :class:`~tunesmith.data.io.DataWarning`, is a
failure. The mutation engine (:func:`mutate`, :func:`check_case`) is shared with
``bench/_reliability_fuzz.py``, which runs it over 10,000+ seeded cases.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import os
import random
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pytest

from tunesmith.data.images import decode_images, read_image_folder
from tunesmith.data.io import DataWarning, read_table
from tunesmith.errors import TunesmithError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FORMATS = ("csv", "tsv", "csv.gz", "jsonl", "json", "parquet", "images")

_TEXTS = [
    "great fun movie",
    'a "quoted" word, and a comma',
    "naïve café — ünïcode ✓",
    "line\nbreak inside",
    "tab\there",
    "",
    "  spaces  ",
    "null",
]

# Tokens the mutations insert: structure characters, byte-order marks, invalid UTF-8, numbers
# at the edge of every type, JSON values that are not objects.
_TOKENS: tuple[bytes, ...] = (
    b'"',
    b",",
    b"\t",
    b"\n",
    b"\r",
    b"\r\n",
    b"\x00",
    b'""',
    b'"\n"',
    codecs.BOM_UTF8,
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
    codecs.BOM_UTF32_LE,
    b"\xc3\x28",
    b"\xff",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\x80",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"null",
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"-1e-400",
    b"123456789012345678901234567890",
    b"9223372036854775808",
    b"true",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\x1a",
    b"\x0c",
    b"\xe2\x80\xa8",
    b" ",
    # whole lines: blank ones pandas skips, and quoted empty values it keeps
    b'\n""\n',
    b'\n"  "\n',
    b"\n \t \n",
    b'\n"" \n',
)

_NOT_OBJECTS = (b"[1, 2]", b'"text"', b"3", b"null", b"true", b"[]", b'[{"text": "x"}]', b"{}")
_WRONG_VALUES = ("abc", "1e999", "-0", "NaN", "", "true", "[1]", "99999999999999999999999", "1,5", "💥")


class Chooser(Protocol):
    """The source of every random choice of a mutation: hypothesis' draws, or a seeded generator."""

    def integer(self, low: int, high: int) -> int: ...

    def choice(self, options: Sequence[Any]) -> Any: ...


class RandomChooser:
    """Choices from :class:`random.Random` (the benchmark's seeded engine)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]


class DrawChooser:
    """Choices drawn by hypothesis (so it shrinks a failure to its simplest mutation)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return int(self.data.draw(st.integers(low, high)))

    def choice(self, options: Sequence[Any]) -> Any:
        return self.data.draw(st.sampled_from(list(options)))


# --------------------------------------------------------------------------- valid files


def base_frame(rows: int = 6) -> pd.DataFrame:
    """The table every valid file holds: text with quotes, commas and newlines, a label, numbers."""
    return pd.DataFrame(
        {
            "text": [_TEXTS[i % len(_TEXTS)] or "empty" for i in range(rows)],
            "label": ["pos" if i % 2 else "neg" for i in range(rows)],
            "stars": [float(i % 5) + 0.5 for i in range(rows)],
            "count": list(range(rows)),
        }
    )


def valid_bytes(fmt: str, rows: int = 6) -> bytes:
    """A valid file of format ``fmt`` (not ``images``) holding :func:`base_frame`."""
    df = base_frame(rows)
    if fmt in ("csv", "tsv", "csv.gz"):
        text = df.to_csv(index=False, sep="\t" if fmt == "tsv" else ",")
        return gzip.compress(text.encode(), mtime=0) if fmt == "csv.gz" else text.encode()
    if fmt == "jsonl":
        return df.to_json(orient="records", lines=True, force_ascii=False).encode()
    if fmt == "json":
        return df.to_json(orient="records", force_ascii=False).encode()
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _image_bytes(kind: str, seed: int) -> bytes:
    from PIL import Image

    im = Image.new("RGB", (6, 5), (seed * 40 % 256, 90, 200))
    buffer = io.BytesIO()
    im.save(buffer, format=kind)
    return buffer.getvalue()


def valid_image_folder() -> dict[str, bytes]:
    """Relative path -> bytes of a folder of two classes of two images each."""
    return {
        "cat/a.png": _image_bytes("PNG", 1),
        "cat/b.jpg": _image_bytes("JPEG", 2),
        "dog/c.png": _image_bytes("PNG", 3),
        "dog/sub/d.bmp": _image_bytes("BMP", 4),
    }


# --------------------------------------------------------------------------- mutations


def _position(data: bytes, c: Chooser) -> int:
    return c.integer(0, len(data))


def _flip(data: bytes, c: Chooser) -> bytes:
    if not data:
        return data
    i = c.integer(0, len(data) - 1)
    return data[:i] + bytes([data[i] ^ (1 << c.integer(0, 7))]) + data[i + 1 :]


def _set_byte(data: bytes, c: Chooser) -> bytes:
    if not data:
        return data
    i = c.integer(0, len(data) - 1)
    return data[:i] + bytes([c.integer(0, 255)]) + data[i + 1 :]


def _truncate(data: bytes, c: Chooser) -> bytes:
    return data[: _position(data, c)]


def _insert_token(data: bytes, c: Chooser) -> bytes:
    i = _position(data, c)
    return data[:i] + c.choice(_TOKENS) + data[i:]


def _insert_random(data: bytes, c: Chooser) -> bytes:
    i = _position(data, c)
    return data[:i] + bytes(c.integer(0, 255) for _ in range(c.integer(1, 8))) + data[i:]


def _delete(data: bytes, c: Chooser) -> bytes:
    i = _position(data, c)
    return data[:i] + data[i + c.integer(1, 16) :]


def _empty(data: bytes, c: Chooser) -> bytes:
    return c.choice((b"", b"\n", b" \n\n", codecs.BOM_UTF8, b"\r\n"))


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _duplicate_line(data: bytes, c: Chooser) -> bytes:
    lines = _lines(data)
    i = c.integer(0, len(lines) - 1)
    return b"\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])


def _drop_line(data: bytes, c: Chooser) -> bytes:
    lines = _lines(data)
    i = c.integer(0, len(lines) - 1)
    return b"\n".join(lines[:i] + lines[i + 1 :])


def _replace_line(data: bytes, c: Chooser) -> bytes:
    lines = _lines(data)
    i = c.integer(0, len(lines) - 1)
    lines[i] = c.choice((*_NOT_OBJECTS, b"", b"   ", b"{", b'{"text": 1e999999}', b'{"a": 1, "a": 2}'))
    return b"\n".join(lines)


def _header_cells(data: bytes, c: Chooser, sep: bytes) -> bytes:
    head, newline, rest = data.partition(b"\n")
    cells = head.split(sep)
    action = c.integer(0, 3)
    if action == 0 and cells:  # a duplicated column name
        cells[c.integer(0, len(cells) - 1)] = cells[c.integer(0, len(cells) - 1)]
    elif action == 1 and cells:  # a missing header cell
        del cells[c.integer(0, len(cells) - 1)]
    elif action == 2:  # an extra (maybe empty) one
        cells.insert(c.integer(0, len(cells)), c.choice((b"", b"extra", b'"', b"text", b" label ")))
    else:  # an empty name
        cells[c.integer(0, len(cells) - 1)] = b""
    return sep.join(cells) + newline + rest


def _wrong_value(data: bytes, c: Chooser, sep: bytes) -> bytes:
    """A cell of a data row replaced by a value of another type."""
    lines = _lines(data)
    if len(lines) < 2:
        return data
    i = c.integer(1, len(lines) - 1)
    cells = lines[i].split(sep)
    cells[c.integer(0, len(cells) - 1)] = c.choice(_WRONG_VALUES).encode()
    lines[i] = sep.join(cells)
    return b"\n".join(lines)


def _json_wrong_value(data: bytes, c: Chooser) -> bytes:
    lines = _lines(data)
    i = c.integer(0, len(lines) - 1)
    value = c.choice((b'"abc"', b"1e999", b"null", b"[1, [2]]", b'{"x": {}}', b"-0", b"99999999999999999999999"))
    key = c.choice((b'"stars":', b'"count":', b'"text":', b'"label":'))
    start = lines[i].find(key)
    if start >= 0:
        end = start + len(key)
        stop = end
        while stop < len(lines[i]) and lines[i][stop : stop + 1] not in (b",", b"}"):
            stop += 1
        lines[i] = lines[i][:end] + value + lines[i][stop:]
    return b"\n".join(lines)


def _parquet_footer(data: bytes, c: Chooser) -> bytes:
    """Damage the footer: its length, its magic, or bytes of the metadata before it."""
    if len(data) < 12:
        return data
    action = c.integer(0, 2)
    if action == 0:
        length = c.choice((0, 1, 7, len(data), len(data) * 4, 2**31 - 1, 2**32 - 1))
        return data[:-8] + length.to_bytes(4, "little") + data[-4:]
    if action == 1:
        return data[:-4] + c.choice((b"PAR0", b"\x00\x00\x00\x00", b"PAR"))
    meta_len = int.from_bytes(data[-8:-4], "little")
    start = max(4, len(data) - 8 - meta_len)
    if start > len(data) - 9:
        return data
    i = c.integer(start, len(data) - 9)
    return data[:i] + bytes([c.integer(0, 255)]) + data[i + 1 :]


def _parquet_table(data: bytes, c: Chooser) -> bytes:
    """A valid Parquet file of an odd table: no rows, duplicate or odd names, nested, huge or null values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = c.integer(0, 4)
    kind = c.integer(0, 6)
    if kind == 0:
        table = pa.table([pa.array(range(n)), pa.array(range(n))], names=["a", c.choice(("a", " a", "\ufeffa"))])
    elif kind == 1:
        table = pa.table({c.choice(("", " ", "1", "\x00", "naïve")): pa.array(["x"] * n)})
    elif kind == 2:
        table = pa.table({"nested": pa.array([[1, 2], None, [], [3]][:n], type=pa.list_(pa.int64()))})
    elif kind == 3:
        table = pa.table({"big": pa.array([2**63 - 1, -(2**63), 0, 1][:n], type=pa.int64())})
    elif kind == 4:
        table = pa.table({"nothing": pa.nulls(n), "f": pa.array([float("nan"), float("inf"), 1e308, -0.0][:n])})
    elif kind == 5:
        table = pa.table({"struct": pa.array([{"x": 1}, {"x": None}, None, {"x": 2}][:n])})
    else:
        table = pa.table({"d": pa.array(["a", "b", "a", None][:n]).dictionary_encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


_BYTE_MUTATIONS: tuple[Callable[[bytes, Chooser], bytes], ...] = (
    _flip,
    _set_byte,
    _truncate,
    _insert_token,
    _insert_token,
    _insert_random,
    _delete,
    _empty,
    _duplicate_line,
    _drop_line,
)


def _mutations(fmt: str) -> list[Callable[[bytes, Chooser], bytes]]:
    found = list(_BYTE_MUTATIONS)
    if fmt in ("csv", "tsv"):
        sep = b"\t" if fmt == "tsv" else b","
        found += [lambda d, c: _header_cells(d, c, sep), lambda d, c: _wrong_value(d, c, sep)] * 2
    elif fmt in ("jsonl", "json"):
        found += [_replace_line, _json_wrong_value] * 2
    elif fmt == "parquet":
        found += [_parquet_footer, _parquet_footer, _parquet_table, _parquet_table]
    return found


def mutate(fmt: str, data: bytes, c: Chooser) -> tuple[bytes, list[str]]:
    """``data`` after 1 to 3 random mutations, and their names (for reports)."""
    names: list[str] = []
    if fmt == "csv.gz" and c.integer(0, 1):  # mutate the text inside, or the compressed bytes
        text, names = mutate("csv", gzip.decompress(data), c)
        return gzip.compress(text, mtime=0), [f"inner:{n}" for n in names]
    options = _mutations(fmt)
    for _ in range(c.integer(1, 3)):
        op = c.choice(options)
        data = op(data, c)
        names.append(getattr(op, "__name__", "op").strip("_"))
    return data, names


def mutate_folder(files: dict[str, bytes], c: Chooser) -> tuple[dict[str, bytes], list[str]]:
    """A folder of images after 1 to 3 random mutations (of the files, or of the folder)."""
    files = dict(files)
    names: list[str] = []
    for _ in range(c.integer(1, 3)):
        action = c.integer(0, 7)
        keys = sorted(files)
        if action <= 2 and keys:  # damage one image's bytes
            key = c.choice(keys)
            files[key], done = mutate("image", files[key], c)
            names.append(f"{key}:" + "+".join(done))
        elif action == 3 and keys:
            key = c.choice(keys)
            files[key] = b""
            names.append(f"{key}:zero-byte")
        elif action == 4:
            key = c.choice(("cat/notes.png", "dog/x.jpg", "cat/readme.txt", "root.png", "cat/.hidden.png"))
            files[key] = c.choice((b"not an image", b"", b"\x89PNG\r\n\x1a\n", b"GIF89a"))
            names.append(f"add:{key}")
        elif action == 5:
            key = c.choice(("bird/e.png", "bird/deep/f.gif"))
            files[key] = c.choice((_image_bytes("GIF", 5), b"garbage", _image_bytes("PNG", 6)[:20]))
            names.append(f"add:{key}")
        elif action == 6 and keys:
            key = c.choice(keys)
            del files[key]
            names.append(f"remove:{key}")
        else:
            key = c.choice(keys) if keys else "cat/a.png"
            files[key] = c.choice(_TOKENS) * c.integer(1, 40)
            names.append(f"{key}:replaced")
    return files, names


# --------------------------------------------------------------------------- the property


class FuzzFailure(AssertionError):
    """A case that broke the property; its message says how."""


@dataclass
class Outcome:
    """How a case ended: ``"read"`` or ``"error"`` (a clean typed error)."""

    kind: str
    rows: int = 0
    dropped: int = 0


def _suffix(fmt: str) -> str:
    return {"csv.gz": ".csv.gz", "json": ".json"}.get(fmt, f".{fmt}")


def _decoded(raw: bytes) -> str | None:
    for bom, codec in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if raw.startswith(bom):
            return raw.decode(codec)
    return raw.decode("utf-8")


def _count_records(text: str, sep: str) -> tuple[int, int]:
    """(data rows, header fields) of CSV text; a line of only spaces and tabs (but the separator)
    is not a record, a quoted empty value (``""``) is."""
    records: list[list[str]] = []
    lines = io.StringIO(text, newline="").readlines()
    taken = 0

    def feed() -> Any:
        nonlocal taken
        for line in lines:
            taken += 1
            yield line

    before = 0
    for record in csv.reader(feed(), delimiter=sep):
        raw = "".join(lines[before:taken])
        before = taken
        if raw.strip(" \t\r\n".replace(sep, "")):
            records.append(record)
    return len(records) - 1, len(records[0])


def expected_shape(fmt: str, raw: bytes, path: Path) -> tuple[int, int | None]:
    """(data rows, columns or None) the file holds, counted without pandas."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        return meta.num_rows, meta.num_columns
    text = _decoded(gzip.decompress(raw) if fmt == "csv.gz" else raw)
    assert text is not None
    if fmt in ("csv", "tsv", "csv.gz"):
        return _count_records(text, "\t" if fmt == "tsv" else ",")
    if fmt == "json" and text.lstrip().startswith("["):
        return len(json.loads(text)), None
    return sum(1 for line in text.split("\n") if line.strip()), None


def _check_error(err: TunesmithError, path: Path) -> None:
    text = str(err)
    if path.name not in text:
        raise FuzzFailure(f"the error does not name the file: {text}")
    if not text.isprintable():
        raise FuzzFailure(f"the error is not one line of printable text: {text!r}")
    row = getattr(err, "row", None)
    if row is not None and (not isinstance(row, int) or row < 1):
        raise FuzzFailure(f"the error names row {row!r}, not a 1-based data row: {text}")


def _read_quietly(read: Callable[[], Any]) -> Any:
    """Call ``read`` with every warning but a DataWarning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", DataWarning)
        return read()


def check_table(fmt: str, raw: bytes, folder: Path, max_rows: int | None = None) -> Outcome:
    """Write ``raw`` as a ``fmt`` file in ``folder``, read it, and check the property."""
    path = folder / f"data{_suffix(fmt)}"
    path.write_bytes(raw)
    try:
        df = _read_quietly(lambda: read_table(path, max_rows=max_rows))
    except TunesmithError as err:
        _check_error(err, path)
        return Outcome("error")
    except Exception as err:
        raise FuzzFailure(f"{type(err).__name__}: {err}") from err
    if not isinstance(df, pd.DataFrame):
        raise FuzzFailure(f"read_table returned {type(df).__name__}")
    names = list(df.columns)
    if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise FuzzFailure(f"column names are not unique strings: {names!r}")
    try:
        rows, columns = expected_shape(fmt, raw, path)
    except Exception as err:
        if max_rows is not None and len(df) <= max_rows:
            return Outcome("read", rows=len(df))  # the damage may lie past the rows read
        raise FuzzFailure(f"read a file whose records cannot be counted ({type(err).__name__}: {err})") from err
    if max_rows is not None:
        rows = min(rows, max_rows)
    if len(df) != rows:
        raise FuzzFailure(f"read {len(df)} rows of {rows}: {rows - len(df)} dropped without a word")
    if columns is not None and df.shape[1] != columns:
        raise FuzzFailure(f"read {df.shape[1]} columns but the header has {columns}")
    return Outcome("read", rows=len(df))


def check_folder(files: dict[str, bytes], folder: Path, *, on_error: str) -> Outcome:
    """Write ``files`` under ``folder``, list and decode them, and check the property."""
    root = folder / "images"
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    root.mkdir(exist_ok=True)
    total = sum(len(names) for _, _, names in os.walk(root))
    try:
        df = _read_quietly(lambda: read_image_folder(root))
        images, kept, report = _read_quietly(
            lambda: decode_images(df["path"].tolist(), 8, on_error=on_error)  # type: ignore[arg-type]
        )
    except TunesmithError as err:
        file = getattr(err, "file", None)
        if not file or not Path(file).resolve().is_relative_to(root.resolve()) or file not in str(err):
            raise FuzzFailure(f"the error does not name a file in the folder: {err}") from err
        if not str(err).isprintable():
            raise FuzzFailure(f"the error is not one line of printable text: {str(err)!r}") from err
        return Outcome("error")
    except Exception as err:
        raise FuzzFailure(f"{type(err).__name__}: {err}") from err
    if len(df) + int(df.attrs["ignored_files"]) != total:
        raise FuzzFailure(f"{len(df)} images listed and {df.attrs['ignored_files']} ignored of {total} files")
    if report.n_kept + report.n_skipped != len(df) or len(images) != report.n_kept or len(kept) != report.n_kept:
        raise FuzzFailure(f"{report.n_kept} kept and {report.n_skipped} skipped of {len(df)} images")
    if on_error == "raise" and report.n_skipped:
        raise FuzzFailure("images skipped with on_error='raise'")
    return Outcome("read", rows=report.n_kept, dropped=report.n_skipped)


def check_case(fmt: str, c: Chooser, folder: Path) -> tuple[Outcome, list[str]]:
    """One fuzz case of ``fmt``: a mutated valid input, read and checked (:class:`FuzzFailure` if broken)."""
    if fmt == "images":
        files, names = mutate_folder(valid_image_folder(), c)
        on_error = c.choice(("skip", "raise"))
        return check_folder(files, folder, on_error=on_error), [*names, on_error]
    raw, names = mutate(fmt, valid_bytes(fmt), c)
    # A quarter of the cases read a sample, through the reader that stops early.
    max_rows = c.integer(1, 8) if c.integer(0, 3) == 0 else None
    return check_table(fmt, raw, folder, max_rows), [*names, f"max_rows={max_rows}"]


# --------------------------------------------------------------------------- the tests

_FAST = settings(
    max_examples=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("fmt", FORMATS)
@_FAST
@given(data=st.data())
def test_a_mutated_file_reads_correctly_or_fails_cleanly(fmt: str, data: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        check_case(fmt, DrawChooser(data), Path(folder))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@settings(_FAST, max_examples=1500)
@given(data=st.data())
def test_a_mutated_file_reads_correctly_or_fails_cleanly_long(fmt: str, data: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        check_case(fmt, DrawChooser(data), Path(folder))


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_valid_files_read_whole(fmt: str, tmp_path: Path) -> None:
    if fmt == "images":
        outcome = check_folder(valid_image_folder(), tmp_path, on_error="raise")
        assert (outcome.kind, outcome.rows) == ("read", 4)
    else:
        outcome = check_table(fmt, valid_bytes(fmt), tmp_path)
        assert (outcome.kind, outcome.rows) == ("read", 6)


def test_the_oracle_catches_a_silently_dropped_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The property can fail: a reader that loses a row is caught."""
    import tests.data.test_fuzz_readers as me

    monkeypatch.setattr(me, "read_table", lambda path: read_table(path).iloc[1:])
    with pytest.raises(FuzzFailure, match="dropped"):
        check_table("csv", valid_bytes("csv"), tmp_path)


def test_the_seeded_engine_is_reproducible(tmp_path: Path) -> None:
    first = [mutate("csv", valid_bytes("csv"), RandomChooser(7)) for _ in range(2)]
    assert first[0] == first[1]
