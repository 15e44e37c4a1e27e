"""Reading and writing tables: formats, and errors that name the file, row and column."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from tunesmith.data.io import SUPPORTED_FORMATS, file_sha256, read_table, write_table
from tunesmith.errors import DataError

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _error(path: Path, **kwargs: str) -> DataError:
    with pytest.raises(DataError) as info:
        read_table(path, **kwargs)
    return info.value


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("name", ["reviews.csv", "reviews.tsv", "reviews.jsonl", "reviews.parquet"])
def test_reads_every_format_alike(name: str) -> None:
    df = read_table(ASSETS / name)
    assert list(df.columns) == ["review_id", "text", "label", "user"]
    assert len(df) == 40
    assert df.loc[0, "text"] == "Loved it, a warm and funny film!"
    assert set(df["label"]) == {"positive", "negative"}
    assert df["review_id"].tolist() == list(range(1001, 1041))


def test_supported_formats_constant() -> None:
    assert SUPPORTED_FORMATS == ("csv", "tsv", "parquet", "jsonl")


def test_bom_is_dropped_from_first_column_name() -> None:
    df = read_table(ASSETS / "bom.csv")
    assert list(df.columns) == ["text", "label"]
    assert df["text"].tolist() == ["nice film", "awful film"]


def test_compressed_and_json_variants(tmp_path: Path) -> None:
    body = b"text,label\nhi there,a\nyo,b\n"
    for name, data in [("a.csv.gz", gzip.compress(body)), ("a.csv.bz2", bz2.compress(body))]:
        assert read_table(_write(tmp_path, name, data))["text"].tolist() == ["hi there", "yo"]
    lines = b'{"text": "x", "label": 1}\n\n{"text": "y", "label": 0}\n'
    assert read_table(_write(tmp_path, "a.jsonl.gz", gzip.compress(lines)))["label"].tolist() == [1, 0]
    assert len(read_table(_write(tmp_path, "lines.json", lines))) == 2
    records = read_table(_write(tmp_path, "records.json", b'[{"text": "x", "label": 1}, {"text": "y"}]'))
    assert records["text"].tolist() == ["x", "y"]
    assert records["label"].isna().tolist() == [False, True]
    tsv_named_txt = read_table(_write(tmp_path, "data.txt", "text\tlabel\na\tb\n"), format="tsv")
    assert list(tsv_named_txt.columns) == ["text", "label"]


def test_column_names_are_stripped_and_empty_cells_missing(tmp_path: Path) -> None:
    df = read_table(_write(tmp_path, "s.csv", " text , label\nhello,\n,b\n"))
    assert list(df.columns) == ["text", "label"]
    assert df["label"].isna().tolist() == [True, False]
    assert df["text"].isna().tolist() == [False, True]


def test_other_encoding_can_be_named() -> None:
    df = read_table(ASSETS / "latin1.csv", encoding="latin-1")
    assert df.loc[2, "text"] == "café scene was great"


# --- errors --------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    err = _error(tmp_path / "nope.csv")
    assert "nope.csv" in str(err) and "not found" in str(err)
    assert err.hint and "path" in err.hint.lower()


def test_directory(tmp_path: Path) -> None:
    err = _error(tmp_path)
    assert "directory" in str(err) and str(tmp_path) in str(err)


def test_empty_file() -> None:
    err = _error(ASSETS / "empty.csv")
    assert "empty.csv" in str(err) and "empty" in err.message


def test_header_only() -> None:
    err = _error(ASSETS / "header_only.csv")
    assert "header_only.csv" in str(err) and "no data rows" in str(err)


def test_ragged_row_named() -> None:
    err = _error(ASSETS / "ragged.csv")
    assert err.row == 4
    assert "ragged.csv" in str(err) and "row 4" in str(err) and "3 fields" in str(err)


def test_ragged_counts_data_rows_not_lines(tmp_path: Path) -> None:
    # A blank line and a quoted newline make file lines and data rows differ.
    err = _error(_write(tmp_path, "r.csv", 'text,label\n\na,b\n\nc,"d\ne"\nf,g,h\n'))
    assert err.row == 3


def test_every_row_one_field_too_many(tmp_path: Path) -> None:
    # pandas would silently use column 1 as the index (or drop the last field); we refuse.
    err = _error(_write(tmp_path, "r.tsv", "text\tlabel\na\tb\tc\nd\te\tf\n"))
    assert err.row == 1 and "r.tsv" in str(err)


def test_unclosed_quote(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "q.csv", 'text,label\na,b\n"unclosed,c\nd,e\n'))
    assert err.row == 2 and "quote" in err.message


def test_undecodable_bytes_name_row_and_column() -> None:
    err = _error(ASSETS / "latin1.csv")
    assert err.row == 3 and err.column == "text"
    assert "latin1.csv" in str(err) and "row 3" in str(err) and "utf-8" in str(err)
    assert err.hint and "encoding" in err.hint


def test_undecodable_header(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "h.csv", b"te\xffxt,label\na,b\n"))
    assert err.row is None and "header" in err.message


def test_undecodable_jsonl_line(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "u.jsonl", b'{"text": "x"}\n{"text": "y\xff"}\n'))
    assert err.row == 2 and "u.jsonl" in str(err)


def test_bad_json_line() -> None:
    err = _error(ASSETS / "bad_json.jsonl")
    assert err.row == 3
    assert "bad_json.jsonl" in str(err) and "row 3" in str(err) and "JSON" in str(err)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "l.jsonl", '{"text": "x"}\n\n[1, 2]\n'))
    assert err.row == 2 and "line 3" in err.message and "object" in err.message


def test_bad_json_array(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "a.json", '[{"text": "x"}, 3]'))
    assert err.row == 2
    err = _error(_write(tmp_path, "b.json", '[{"text": "x"},'))
    assert "invalid JSON" in err.message


def test_unreadable_parquet(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "bad.parquet", b"PAR1 this is not parquet"))
    assert "bad.parquet" in str(err) and "Parquet" in err.message


def test_corrupt_gzip(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "bad.csv.gz", b"not gzip at all"))
    assert "bad.csv.gz" in str(err) and "decompress" in err.message


@pytest.mark.parametrize("name", ["data.xlsx", "data", "data.parquet.gz"])
def test_unknown_format_names_supported_ones(tmp_path: Path, name: str) -> None:
    err = _error(_write(tmp_path, name, "text,label\na,b\n"))
    assert name in str(err)
    assert "csv" in str(err) and "parquet" in str(err)


def test_unknown_explicit_format(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "d.csv", "a\n1\n"), format="xlsx")
    assert "xlsx" in err.message and err.hint and "jsonl" in err.hint


def test_duplicate_column_names(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "d.csv", "text,label, text\na,b,c\n"))
    assert err.column == "text" and "more than once" in err.message
    err = _error(_write(tmp_path, "d.jsonl", '{"text": 1, "text": 2}\n'))
    assert err.column == "text" and err.row == 1


def test_whitespace_only_file(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "w.csv", "  \n\n "))
    assert "no data rows" in err.message


# --- writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["o.csv", "o.tsv", "o.parquet", "o.jsonl", "o.json", "o.csv.gz", "o.jsonl.gz"])
def test_write_read_round_trip(tmp_path: Path, name: str) -> None:
    df = pd.DataFrame({"text": ["a", "b, c", 'é"q\nnew line'], "n": [1.0, 2.5, None]})
    path = write_table(df, tmp_path / "sub" / name)
    back = read_table(path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    # Atomic write: nothing but the final file is left behind.
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [name]


def test_write_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    write_table(pd.DataFrame({"a": [1]}), path)
    write_table(pd.DataFrame({"a": [2, 3]}), path)
    assert read_table(path)["a"].tolist() == [2, 3]


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = json.dumps({"x": list(range(1000))}).encode() * 50
    path = _write(tmp_path, "blob.json", data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(DataError, match="not found"):
        file_sha256(tmp_path / "missing.bin")


def test_row_with_too_few_fields_named(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("text,label,year\ngood film,positive,2001\nbad film,negative\n")
    err = _error(path)
    assert "short.csv" in str(err) and "row 2" in str(err) and "2 fields but the header has 3" in str(err)
