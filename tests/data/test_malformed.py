"""Malformed input files: each one reads correctly or ends in a one-line DataError, never a stack trace.

The corpus lives in ``tests/assets/malformed`` (tiny committed files; ``make_corpus.py`` there
documents how the byte-level ones were made).
"""

from __future__ import annotations

import bz2
import gzip
import io
import random
import warnings
from pathlib import Path

import pandas as pd
import pytest

from tests.cli.test_cli import run_cli
from tunesmith.cli import main
from tunesmith.data import io as data_io
from tunesmith.data import io_memory
from tunesmith.data.io import DataWarning, read_table
from tunesmith.data.schema import infer_schema
from tunesmith.data.validate import prepare_frame
from tunesmith.errors import ConfigError, DataError, TunesmithError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CORPUS = ASSETS / "malformed"
CORPUS_FILES = sorted(p.name for p in CORPUS.iterdir() if p.suffix != ".py" and not p.name.startswith("."))
EXPECTED = {
    "utf8_bom.csv",
    "utf16.csv",
    "latin1.csv",
    "nul_bytes.csv",
    "unterminated_quote.csv",
    "mixed_types.csv",
    "mixed_line_endings.csv",
    "blank_lines.csv",
    "truncated.jsonl",
    "empty.jsonl",
    "header_only.csv",
    "truncated.csv.gz",
    "truncated.parquet",
    "binary.csv",
    "ragged.csv",
}


def _error(path: Path, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as info:
        read_table(path, **kwargs)  # type: ignore[arg-type]
    return info.value


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_corpus_is_complete_and_small() -> None:
    assert set(CORPUS_FILES) == EXPECTED
    for name in CORPUS_FILES:
        assert (CORPUS / name).stat().st_size < 5000, name


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_never_an_uncaught_exception(name: str) -> None:
    """Every corpus file gives a frame or a tunesmith error naming the file, on one line."""
    path = CORPUS / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        try:
            df = read_table(path)
        except TunesmithError as err:
            assert isinstance(err, DataError)
            assert name in str(err)
            assert "\n" not in str(err)
            assert err.hint, "every error says what to do"
        except Exception as err:  # pragma: no cover - the failure this test exists for
            pytest.fail(f"{name}: uncaught {type(err).__name__}: {err}")
        else:
            assert isinstance(df, pd.DataFrame) and len(df) > 0
            for limit in (1, 2):
                # The max_rows path reads differently (streaming); it must behave as well.
                assert len(read_table(path, max_rows=limit)) == limit


# --- files that read -----------------------------------------------------------------------------


def test_utf8_bom() -> None:
    df = read_table(CORPUS / "utf8_bom.csv")
    assert list(df.columns) == ["text", "label"]
    assert not any("\ufeff" in c for c in df.columns)
    assert len(df) == 6 and df.loc[1, "text"] == "dull, far too long"


def test_utf16_with_bom_is_detected() -> None:
    df = read_table(CORPUS / "utf16.csv")
    assert list(df.columns) == ["text", "label"]
    assert df["text"].tolist()[:2] == ["café scene was great", "naïve, clichéd script"]
    assert len(df) == 5
    with pytest.warns(DataWarning, match="first 2 rows"):
        assert len(read_table(CORPUS / "utf16.csv", max_rows=2)) == 2


def test_mixed_line_endings() -> None:
    df = read_table(CORPUS / "mixed_line_endings.csv")
    assert len(df) == 6
    assert df["label"].tolist() == ["positive", "negative"] * 3
    assert df.loc[2, "text"] == "two\r\nlines"  # a line break inside quotes is kept as written
    assert df.loc[5, "text"] == "boring"


def test_blank_lines_are_skipped() -> None:
    df = read_table(CORPUS / "blank_lines.csv")
    assert df["text"].tolist() == ["a warm and funny film", "dull", "great cast", "the plot makes no sense"]


def test_lines_of_spaces_are_blank_too(tmp_path: Path) -> None:
    # pandas skips them; the row count and row numbers in errors must agree with it.
    df = read_table(_write(tmp_path, "s.csv", "text,label\na,b\n   \n\t\nc,d\n"))
    assert df["text"].tolist() == ["a", "c"]
    err = _error(_write(tmp_path, "r.csv", "text,label\na,b\n  \nc,d,e\n"))
    assert err.row == 2


def test_mixed_types_are_reported_with_column_and_row() -> None:
    with pytest.warns(DataWarning) as record:
        df = read_table(CORPUS / "mixed_types.csv")
    assert len(df) == 8 and bool(df["rating"].isna().iloc[5])  # "n/a" is a missing marker
    (note,) = [w.message for w in record.list if isinstance(w.message, DataWarning)]
    assert isinstance(note, DataWarning)
    assert note.column == "rating" and note.row == 4
    assert "'abc'" in str(note) and "mixed_types.csv, row 4, column 'rating'" in str(note)

    # As a regression target the stray value is an error naming the same row and column.
    schema = infer_schema(df, "rating", text_column="text", task="regression")
    with pytest.raises(DataError) as info:
        prepare_frame(df, schema, file=CORPUS / "mixed_types.csv")
    err = info.value
    assert err.row == 4 and err.column == "rating"
    assert "'abc'" in str(err) and "not a number" in str(err)


def test_mixed_types_in_jsonl(tmp_path: Path) -> None:
    lines = "".join(f'{{"x": {i}, "text": "hi"}}\n' for i in range(6)) + '{"x": "oops", "text": "hi"}\n'
    with pytest.warns(DataWarning, match=r"row 7, column 'x'.*'oops'"):
        read_table(_write(tmp_path, "m.jsonl", lines))


def test_text_and_label_columns_raise_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        read_table(ASSETS / "reviews.csv")
        read_table(ASSETS / "reviews.jsonl")


# --- files that are refused ------------------------------------------------------------------------


def test_latin1_names_row_column_and_fix() -> None:
    err = _error(CORPUS / "latin1.csv")
    assert err.row == 2 and err.column == "text"
    assert "latin1.csv, row 2, column 'text'" in str(err) and "utf-8" in str(err) and "byte offset" in str(err)
    assert err.hint and "encoding" in err.hint and "UTF-8" in err.hint
    df = read_table(CORPUS / "latin1.csv", encoding="latin-1")
    assert df.loc[1, "text"] == "café scene was great"


def test_nul_bytes() -> None:
    err = _error(CORPUS / "nul_bytes.csv")
    assert err.row == 3 and err.column == "text"
    assert "NUL" in err.message and "line 4" in err.message and "nul_bytes.csv" in str(err)
    assert err.hint and "remove" in err.hint


def test_nul_bytes_in_header_and_jsonl(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "h.csv", b"te\x00xt,label\na,b\n"))
    assert err.row is None and "header" in err.message
    err = _error(_write(tmp_path, "n.jsonl", b'{"text": "a"}\n\n{"text": "a\x00b"}\n'))
    assert err.row == 2 and "line 3" in err.message


def test_unterminated_quote_names_the_row_it_opens_in() -> None:
    err = _error(CORPUS / "unterminated_quote.csv")
    assert err.row == 2
    assert "quote" in err.message and "never closed" in err.message and "line 3" in err.message
    assert err.hint and '""' in err.hint


def test_truncated_jsonl_names_the_line() -> None:
    err = _error(CORPUS / "truncated.jsonl")
    assert err.row == 5
    assert "line 5" in err.message and "truncated" in err.message and "truncated.jsonl" in str(err)


def test_empty_and_header_only() -> None:
    err = _error(CORPUS / "empty.jsonl")
    assert "empty.jsonl" in str(err) and "file is empty" in err.message
    err = _error(CORPUS / "header_only.csv")
    assert "header_only.csv" in str(err) and "only a header" in err.message


def test_truncated_gzip() -> None:
    err = _error(CORPUS / "truncated.csv.gz")
    assert "truncated.csv.gz" in str(err) and "truncated" in err.message and "gzip" in err.message


def test_corrupt_compressed_data(tmp_path: Path) -> None:
    body = b"text,label\n" + b"some words here,positive\n" * 400
    data = bytearray(gzip.compress(body * 10))
    for i in range(len(data) // 3, len(data) // 3 + 20):
        data[i] ^= 0x5A
    err = _error(_write(tmp_path, "c.csv.gz", bytes(data)))
    assert "c.csv.gz" in str(err) and "gzip" in err.message
    compressed = bz2.compress(body)
    err = _error(_write(tmp_path, "t.csv.bz2", compressed[: len(compressed) // 2]))
    assert "truncated" in err.message


def test_truncated_parquet() -> None:
    err = _error(CORPUS / "truncated.parquet")
    assert "truncated.parquet" in str(err) and "not a complete Parquet file" in err.message


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "t.parquet", "text,label\na,b\n"))
    assert "not a Parquet file" in err.message and "text" in err.message


def test_binary_under_a_text_name() -> None:
    err = _error(CORPUS / "binary.csv")
    assert "binary.csv" in str(err) and "does not look like a CSV file" in err.message and "PNG" in err.message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 40, "ZIP archive"),
        (gzip.compress(b"text,label\na,b\n"), "gzip"),
        (bytes(range(256)) * 4, "binary data"),
    ],
)
def test_other_binary_content(tmp_path: Path, data: bytes, expected: str) -> None:
    err = _error(_write(tmp_path, "x.csv", data))
    assert "does not look like a CSV file" in err.message and expected in err.message


def test_utf16_without_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, "u.csv", "text,label\nhi,a\nyo,b\n".encode("utf-16-le"))
    err = _error(path)
    assert "UTF-16-LE" in err.message and err.hint and "utf-16-le" in err.hint
    assert read_table(path, encoding="utf-16-le")["text"].tolist() == ["hi", "yo"]


def test_ragged_row() -> None:
    err = _error(CORPUS / "ragged.csv")
    assert err.row == 3 and "3 fields but the header has 2" in err.message and "ragged.csv" in str(err)


def test_field_longer_than_csv_default_limit(tmp_path: Path) -> None:
    long_text = "word " * 40_000  # 200 KB, over csv's default 128 KiB field limit
    df = read_table(_write(tmp_path, "long.csv", f'text,label\n"{long_text}",a\nshort,b\n'))
    assert df.loc[0, "text"] == long_text and len(df) == 2


# --- max_rows ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["reviews.csv", "reviews.tsv", "reviews.jsonl", "reviews.parquet"])
def test_max_rows_reads_the_first_rows(name: str) -> None:
    full = read_table(ASSETS / name)
    with pytest.warns(DataWarning, match=r"read only the first 7 rows"):
        head = read_table(ASSETS / name, max_rows=7)
    pd.testing.assert_frame_equal(head, full.iloc[:7])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert len(read_table(ASSETS / name, max_rows=40)) == 40  # everything read: no warning


def test_max_rows_on_compressed_and_broken_files(tmp_path: Path) -> None:
    body = "text,label\n" + "".join(f'"row {i}, quoted",{i % 2}\n' for i in range(50)) + "broken,row,here\n"
    path = _write(tmp_path, "d.csv.gz", gzip.compress(body.encode()))
    with pytest.warns(DataWarning):
        df = read_table(path, max_rows=3)
    assert df["text"].tolist() == ["row 0, quoted", "row 1, quoted", "row 2, quoted"]
    assert _error(path).row == 51  # the broken row is past max_rows above, found without it
    # A truncated gzip is refused whole, but its first rows read: max_rows stops before the cut.
    rows = "".join(f"review {i} {i * 7919 % 10007},{i % 3}\n" for i in range(20000))
    compressed = gzip.compress(("text,label\n" + rows).encode())
    cut = _write(tmp_path, "cut.csv.gz", compressed[: len(compressed) // 2])
    assert "truncated" in _error(cut).message
    with pytest.warns(DataWarning):
        assert read_table(cut, max_rows=2)["text"].tolist() == ["review 0 0", "review 1 7919"]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_max_rows_must_be_positive_whole_number(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_rows"):
        read_table(ASSETS / "reviews.csv", max_rows=bad)  # type: ignore[arg-type]


# --- memory guard ----------------------------------------------------------------------------------


def test_available_memory_is_known_here() -> None:
    available = io_memory._available_memory()
    assert available is None or available > 0


@pytest.mark.parametrize("name", ["reviews.csv", "reviews.jsonl", "reviews.parquet"])
def test_file_too_large_for_memory_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(io_memory, "_available_memory", lambda: 1000)
    err = _error(ASSETS / name)
    assert name in str(err) and "too large to read into memory" in err.message
    assert "1000 bytes" in err.message and "available" in err.message
    assert err.hint and "max_rows" in err.hint
    # A sample still reads, streaming only the rows it needs.
    with pytest.warns(DataWarning):
        assert len(read_table(ASSETS / name, max_rows=5)) == 5


def test_memory_guard_allows_what_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io_memory, "_available_memory", lambda: 1 << 30)
    assert len(read_table(ASSETS / "reviews.csv")) == 40
    monkeypatch.setattr(io_memory, "_available_memory", lambda: None)  # unknown: no guard
    assert len(read_table(ASSETS / "reviews.csv")) == 40


def test_far_larger_than_memory_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A sparse 64 GiB file: no disk used, and the guard must stop before any byte is read.
    path = tmp_path / "huge.csv"
    with path.open("wb") as f:
        f.write(b"text,label\n")
        f.truncate(64 << 30)

    def must_not_read(*args: object) -> bytes:
        raise AssertionError("read the whole file")

    monkeypatch.setattr(data_io, "_read_bytes", must_not_read)
    monkeypatch.setattr(io_memory, "_available_memory", lambda: 16 << 30)
    err = _error(path)
    assert "huge.csv" in str(err) and "64.0 GiB" in err.message and "16.0 GiB" in err.message


def test_compressed_size_is_counted_before_refusing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # bz2 keeps no uncompressed size, so the first estimate guesses (6x); a refusal is confirmed
    # by counting the decompressed bytes, streaming, only as far as what fits.
    rows = "".join(f"{random.Random(i).getrandbits(64):x},{i % 2}\n" for i in range(6000))
    body = ("text,label\n" + rows).encode()
    path = _write(tmp_path, "r.csv.bz2", bz2.compress(body))
    _, guessed, need = io_memory._memory_estimate(path, "csv", "bz2")
    assert guessed > 2 * len(body)  # random hex compresses poorly: the guess is far too high
    monkeypatch.setattr(io_memory, "_available_memory", lambda: int(need * 0.8))
    assert len(read_table(path)) == 6000
    monkeypatch.setattr(io_memory, "_available_memory", lambda: len(body))
    err = _error(path)
    assert "too large to read into memory" in err.message and "r.csv.bz2" in str(err)


def test_gzip_estimate_uses_the_stored_size(tmp_path: Path) -> None:
    body = b"text,label\n" + b"the same words again,positive\n" * 5000
    path = _write(tmp_path, "g.csv.gz", gzip.compress(body))
    size, data, need = io_memory._memory_estimate(path, "csv", "gzip")
    assert size == path.stat().st_size and data == len(body)
    assert need > 5 * len(body)


# --- command line ----------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nul_bytes.csv", "row 3"),
        ("unterminated_quote.csv", "never closed"),
        ("truncated.jsonl", "line 5"),
        ("truncated.parquet", "Parquet"),
        ("binary.csv", "PNG"),
        ("latin1.csv", "encoding"),
    ],
)
def test_cli_fit_on_malformed_file(capsys: pytest.CaptureFixture[str], name: str, expected: str) -> None:
    code, err = _cli(capsys, "fit", str(CORPUS / name), "--target", "label", "runs_dir=")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error:") and name in lines[0] and expected in lines[0]


def test_cli_mixed_types_regression_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(DataWarning):
        code, err = _cli(
            capsys,
            "fit",
            str(CORPUS / "mixed_types.csv"),
            "--target",
            "rating",
            "--task",
            "regression",
            "--text-column",
            "text",
            "runs_dir=",
        )
    assert code == 2 and "Traceback" not in err
    assert "row 4" in err and "'rating'" in err and "'abc'" in err


def test_cli_file_too_large(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io_memory, "_available_memory", lambda: 1000)
    code, err = _cli(capsys, "fit", str(ASSETS / "reviews.csv"), "--target", "label", "runs_dir=")
    assert code == 2 and "Traceback" not in err and "too large to read into memory" in err


@pytest.mark.parametrize("name", ["nul_bytes.csv", "truncated.parquet"])
def test_cli_process_prints_no_traceback(tmp_path: Path, name: str) -> None:
    proc = run_cli("fit", str(CORPUS / name), "--target", "label", "runs_dir=", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and name in lines[0]


# --- found by fuzzing (tests/data/test_fuzz_readers.py) -------------------------------------


def test_a_corrupt_parquet_page_header_is_one_printable_line(tmp_path: Path) -> None:
    # pyarrow's thrift errors span lines and can hold the raw byte they choked on.
    buffer = io.BytesIO()
    pd.DataFrame({"text": ["a", "b"], "label": [1, 2]}).to_parquet(buffer, index=False)
    raw = buffer.getvalue()
    err = _error(_write(tmp_path, "p.parquet", raw[:4] + b"\xff" * 4 + raw[8:]))
    assert "p.parquet" in str(err) and "cannot read the file as Parquet" in err.message
    assert str(err).isprintable(), repr(str(err))


@pytest.mark.parametrize(
    ("name", "data", "row", "column"),
    [
        ("s.jsonl", '{"text": "ok", "label": 1}\n{"text": "bad \\ud800 half", "label": 2}\n', 2, "text"),
        ("s.json", '[{"text": "ok"}, {"text": "ok"}, {"text": "\\udc00"}]', 3, "text"),
        # a column of mixed types, where pandas would have kept the string for later to fail on
        ("m.jsonl", '{"x": 1}\n{"x": "\\ud83d"}\n', 2, "x"),
        ("k.jsonl", '{"\\ud800": 1}\n', 1, None),
    ],
)
def test_an_unpaired_surrogate_escape_in_json(tmp_path: Path, name: str, data: str, row: int, column: str) -> None:
    err = _error(_write(tmp_path, name, data))
    assert name in str(err) and "unpaired surrogate" in err.message
    assert (err.row, err.column) == (row, column)
    # a pair of escapes is one character beyond U+FFFF, and reads
    ok = read_table(_write(tmp_path, "ok.jsonl", '{"text": "\\ud83d\\ude00"}\n'))
    assert ok["text"].tolist() == ["\U0001f600"]


def test_a_quoted_empty_line_is_a_row_not_a_blank_line(tmp_path: Path) -> None:
    # pandas skips a line of spaces but keeps "" (a quoted empty value); the row checks used to
    # skip both, so a short "" row was padded with missing values without a word.
    err = _error(_write(tmp_path, "q.csv", 'a,b\n1,2\n""\n3,4\n'))
    assert err.row == 2 and "1 fields but the header has 2" in err.message
    df = read_table(_write(tmp_path, "one.csv", 'a\n""\n  \n"  "\n1\n'))
    assert df["a"].tolist()[1:] == ["  ", "1"] and pd.isna(df["a"].iloc[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        sample = read_table(_write(tmp_path, "two.csv", 'a\n""\n \n1\n2\n'), max_rows=2)
    assert len(sample) == 2 and sample["a"].iloc[1] == 1
    err = _error(_write(tmp_path, "later.csv", 'a\n""\n1,2\n'))
    assert err.row == 2  # the "" row counts, so the rows after it are numbered as pandas numbers them


def test_a_line_of_tabs_in_a_tsv_is_a_row_of_empty_values(tmp_path: Path) -> None:
    # pandas skips a line of spaces, but in a TSV a tab separates (empty) values: such a line is
    # a row. It used to be skipped by the row checks, so its missing fields went unreported.
    err = _error(_write(tmp_path, "t.tsv", "a\tb\tc\n1\t2\t3\n \t \n"))
    assert err.row == 2 and "2 fields but the header has 3" in err.message
    df = read_table(_write(tmp_path, "ok.tsv", "a\tb\n1\t2\n\t\n  \n3\t4\n"))
    assert len(df) == 3 and df["a"].isna().tolist() == [False, True, False]


@pytest.mark.parametrize("max_rows", [None, 1])
def test_parquet_text_that_is_not_utf8_names_the_column(tmp_path: Path, max_rows: int | None) -> None:
    # pyarrow reads Parquet strings without checking their UTF-8; pandas then failed on them
    # with an ArrowException from inside the mixed-type check.
    buffer = io.BytesIO()
    pd.DataFrame({"n": [1, 2], "text": ["naïve", "fine"]}).to_parquet(buffer, index=False, compression=None)
    raw = buffer.getvalue()
    at = raw.index("naïve".encode()) + 3  # the second byte of ï
    err = _error(_write(tmp_path, "u.parquet", raw[:at] + b"\xff" + raw[at + 1 :]), max_rows=max_rows)
    assert "u.parquet" in str(err) and err.column == "text" and "UTF-8" in str(err)
