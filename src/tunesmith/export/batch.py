"""Batch scoring of files of any size: read in chunks, predict, append, with a progress bar.

Files up to ``stream_above`` bytes are read whole with :func:`~tunesmith.data.io.read_table`
(every malformed-file check applies); larger CSV, TSV, JSONL and Parquet files are streamed
chunk by chunk, so memory stays flat whatever the file size. Output is written to a
temporary file that replaces the target only when every row has been scored.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import DataError
from tunesmith.export.runtime import Predictor

STREAM_ABOVE = 64 * 1024 * 1024
STREAMABLE = ("csv", "tsv", "jsonl", "parquet")


@dataclass
class BatchResult:
    """Rows scored, rows that had no text (predicted from an empty text) and the output file."""

    rows: int
    empty_text_rows: int
    output: Path
    streamed: bool


def _chunks(path: Path, chunk_rows: int, stream_above: int) -> tuple[Iterator[pd.DataFrame], int, str, bool]:
    """``(chunks, total units, unit name, streamed)`` for the progress bar."""
    from tunesmith.data.io import detect_format, read_table

    fmt, compression = detect_format(path, None)
    size = path.stat().st_size if path.is_file() else 0
    if fmt not in STREAMABLE or compression is not None or size <= stream_above:
        df = read_table(path)
        return (df.iloc[i : i + chunk_rows] for i in range(0, len(df), chunk_rows)), len(df), "rows", False
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise DataError(f"unreadable Parquet file: {exc}", file=path) from None
        total = pf.metadata.num_rows
        return (b.to_pandas() for b in pf.iter_batches(batch_size=chunk_rows)), total, "rows", True
    return _text_chunks(path, fmt, chunk_rows), size, "bytes", True


def _text_chunks(path: Path, fmt: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    with path.open("rb") as fh:
        if fmt == "jsonl":
            reader: Any = pd.read_json(fh, lines=True, chunksize=chunk_rows, dtype=False)
        else:
            reader = pd.read_csv(fh, sep="," if fmt == "csv" else "\t", chunksize=chunk_rows, encoding="utf-8-sig")
        first_row = 1
        try:
            for chunk in reader:
                chunk.index = pd.RangeIndex(first_row, first_row + len(chunk))
                first_row += len(chunk)
                chunk.attrs["position"] = fh.tell()
                yield chunk
        except (ValueError, pd.errors.ParserError) as exc:
            raise DataError(
                f"cannot read the file after data row {first_row - 1}: {str(exc).splitlines()[0]}",
                file=path,
                hint="Check the file with tunesmith inspect",
            ) from None


class _Writer:
    """Appends chunks of a streamed input to a temporary file; ``commit`` renames it into place.

    Parquet needs one schema for the whole file, taken from the first chunk: a column empty
    in it becomes a string column, and integer input columns of text files become floats
    (a later chunk may hold a missing value there, which integers cannot). ``widen`` names
    the input columns of a text file, whose types the first chunk only suggests.
    """

    def __init__(self, path: Path, *, widen: set[str]) -> None:
        from tunesmith.data.io import detect_format

        self.path = path
        self.fmt, compression = detect_format(path, None)
        if self.fmt not in STREAMABLE or compression is not None:
            raise DataError(
                "a streamed (large) input is written as uncompressed CSV, TSV, JSONL or Parquet",
                file=path,
                hint="Give --output a .csv, .tsv, .jsonl or .parquet name",
            )
        self.widen = widen
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self.tmp = Path(name)
        self.parquet: Any = None
        self.schema: Any = None
        self.first = True

    def _parquet(self, df: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        if self.schema is None:
            fields = []
            for f in table.schema:
                kind = f.type
                # A column with no value yet (CSV reads it as floats) is most likely text.
                if pa.types.is_null(kind) or (f.name in self.widen and bool(df[f.name].isna().all())):
                    kind = pa.string()
                elif f.name in self.widen and pa.types.is_integer(kind):
                    kind = pa.float64()
                fields.append(pa.field(f.name, kind))
            self.schema = pa.schema(fields)
            self.parquet = pq.ParquetWriter(str(self.tmp), self.schema)
        try:
            table = table.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise DataError(
                f"a column changed type between chunks of the input ({str(exc).splitlines()[0]})",
                file=self.path,
                hint="Write CSV or JSONL output instead, or convert the input to Parquet first",
            ) from None
        self.parquet.write_table(table)

    def write(self, df: pd.DataFrame) -> None:
        if self.fmt == "parquet":
            self._parquet(df)
        elif self.fmt in ("csv", "tsv"):
            df.to_csv(self.tmp, sep="," if self.fmt == "csv" else "\t", index=False, header=self.first, mode="a")
        else:
            text = df.to_json(orient="records", lines=True, force_ascii=False) or ""
            if text and not text.endswith("\n"):
                text += "\n"
            with self.tmp.open("a", encoding="utf-8") as fh:
                fh.write(text)
        self.first = False

    def commit(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        self.tmp.unlink(missing_ok=True)


def predict_file(
    predictor: Predictor,
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    probabilities: bool = False,
    chunk_rows: int = 4096,
    stream_above: int = STREAM_ABOVE,
    progress: Callable[[int, int, str], Any] | None = None,
) -> BatchResult:
    """Score every row of ``data`` and write the input columns plus ``prediction`` to ``output``.

    With ``probabilities`` a ``proba_<label>`` column per class follows. ``progress`` is
    called as ``progress(done, total, unit)`` after each chunk (unit ``"rows"`` or ``"bytes"``).
    A text column the model needs and the file lacks is a :class:`DataError`; rows whose text
    is empty are predicted from an empty text and counted in the result.
    """
    from tunesmith.data.io import detect_format, write_table

    src, dst = Path(data), Path(output)
    detect_format(dst, None)  # an unknown output format fails before any work
    chunks, total, unit, streamed = _chunks(src, chunk_rows, stream_above)
    writer: _Writer | None = None
    kept: list[pd.DataFrame] = []
    rows = empty = 0
    # Image models need their path column; tabular models name missing columns themselves.
    text_columns = (
        list(getattr(predictor, "required_columns", None) or predictor.schema.text_columns)
        if hasattr(predictor, "schema")
        else list(getattr(predictor, "required_columns", []))
    )
    try:
        for chunk in chunks:
            if rows == 0:
                if text_columns:
                    _check_columns(chunk, text_columns, src)
                if streamed:
                    text_input = detect_format(src, None)[0] != "parquet"
                    writer = _Writer(dst, widen=set(map(str, chunk.columns)) if text_input else set())
            blank = np.ones(len(chunk), dtype=bool)
            for col in text_columns:
                if col in chunk.columns:
                    values = chunk[col]
                    blank &= (values.isna() | values.astype(str).str.strip().eq("")).to_numpy()
            empty += int(blank.sum())
            preds, proba = predictor.predict_frame(chunk)
            out = chunk.copy()
            out["prediction"] = preds
            if probabilities and proba is not None:
                for i, label in enumerate(predictor.labels):
                    out[f"proba_{label}"] = proba[:, i]
            if writer is not None:
                writer.write(out)
            else:
                kept.append(out)
            rows += len(chunk)
            if progress is not None:
                progress(int(chunk.attrs.get("position", rows)) if unit == "bytes" else rows, total, unit)
        if rows == 0:
            raise DataError("file has no data rows", file=src)
        if writer is not None:
            writer.commit()
        else:
            # Not streamed: the whole table fits in memory, and write_table writes every format
            # (JSON, compressed files) atomically.
            write_table(pd.concat(kept), dst)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return BatchResult(rows=rows, empty_text_rows=empty, output=dst, streamed=streamed)


def _check_columns(df: pd.DataFrame, text_columns: list[str], file: Path) -> None:
    if not any(c in df.columns for c in text_columns):
        raise DataError(
            f"column {text_columns[0]!r} used in training is missing",
            file=file,
            column=text_columns[0],
            hint=f"Columns present: {', '.join(map(str, df.columns))}",
        )
