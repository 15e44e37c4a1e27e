"""Writes the malformed-input corpus in this folder (run it from anywhere: ``python make_corpus.py``).

The files are committed; this script only documents how the byte-level ones were made and
regenerates them. Every file stays under 5 KB. ``tests/data/test_malformed.py`` says what
``read_table`` must do with each.
"""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent

ROWS = [
    ("a warm and funny film", "positive"),
    ("dull, far too long", "negative"),
    ("great cast and a good story", "positive"),
    ("the plot makes no sense", "negative"),
    ("lovely music", "positive"),
    ("boring boring boring", "negative"),
]


def csv_text(rows: list[tuple[str, str]] = ROWS, newline: str = "\n") -> str:
    lines = ["text,label"] + [f'"{t}",{lab}' if "," in t else f"{t},{lab}" for t, lab in rows]
    return newline.join(lines) + newline


def main() -> None:
    files: dict[str, bytes] = {}
    body = csv_text()
    files["utf8_bom.csv"] = b"\xef\xbb\xbf" + body.encode("utf-8")
    accented = [("café scene was great", "positive"), ("naïve, clichéd script", "negative"), *ROWS[:3]]
    files["utf16.csv"] = b"\xff\xfe" + csv_text(accented).encode("utf-16-le")
    # Latin-1: é is the single byte 0xE9, which is not valid UTF-8. First bad byte: data row 2.
    files["latin1.csv"] = csv_text([ROWS[0], *accented[:2], ROWS[1]]).encode("latin-1")
    # NUL bytes in the middle of data row 3 (as left by a crashed write or a bad export).
    lines = body.split("\n")
    lines[3] = "great cast\x00\x00\x00 and a good story,positive"
    files["nul_bytes.csv"] = "\n".join(lines).encode()
    # A quote opened in data row 2 and never closed: it swallows the rest of the file.
    files["unterminated_quote.csv"] = (
        b'text,label\na warm and funny film,positive\n"dull and far too long,negative\n'
        b"great cast,positive\nthe plot makes no sense,negative\n"
    )
    # A numeric column with one stray string ("abc", data row 4); "n/a" (row 6) is a missing marker.
    files["mixed_types.csv"] = (
        b"text,label,rating\n"
        b"a warm and funny film,positive,4.5\n"
        b'"dull, far too long",negative,1.5\n'
        b"great cast and a good story,positive,4\n"
        b"the plot makes no sense,negative,abc\n"
        b"lovely music,positive,5\n"
        b"boring boring boring,negative,n/a\n"
        b"fine acting,positive,3.5\n"
        b"weak ending,negative,2\n"
    )
    # CRLF header, then LF, CR and CRLF rows, and a quoted value holding a CRLF: 6 data rows.
    files["mixed_line_endings.csv"] = (
        b"text,label\r\n"
        b"a warm and funny film,positive\n"
        b"dull,negative\r"
        b'"two\r\nlines",positive\r\n'
        b"the plot makes no sense,negative\n"
        b"lovely music,positive\r"
        b"boring,negative\r\n"
    )
    # Blank lines (LF and CRLF) between and after rows: 4 data rows.
    files["blank_lines.csv"] = (
        b"text,label\n\na warm and funny film,positive\n\n\ndull,negative\r\n\r\n"
        b"great cast,positive\n\nthe plot makes no sense,negative\n\n\n"
    )
    jsonl = "".join(f'{{"text": "{t}", "label": "{lab}"}}\n' for t, lab in ROWS[:4]).encode()
    files["truncated.jsonl"] = jsonl + b'{"text": "lovely mus'
    files["empty.jsonl"] = b""
    files["header_only.csv"] = b"text,label\n"
    gz = gzip.compress(csv_text(ROWS * 8).encode(), mtime=0)
    files["truncated.csv.gz"] = gz[: len(gz) // 2]
    buf = io.BytesIO()
    pd.DataFrame(ROWS * 4, columns=["text", "label"]).to_parquet(buf, index=False)
    parquet = buf.getvalue()
    files["truncated.parquet"] = parquet[: len(parquet) // 2]
    # A PNG image renamed to .csv: the PNG signature and header chunk, then seeded random bytes.
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa"
    files["binary.csv"] = png + random.Random(0).randbytes(400)
    # Data row 3 has 3 fields; the header has 2 (an unquoted comma in the text).
    files["ragged.csv"] = (
        b'text,label\na warm and funny film,positive\n"dull, far too long",negative\n'
        b"great cast, good story,positive\nlovely music,positive\n"
    )
    for name, data in files.items():
        assert len(data) < 5000, name
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
