"""What an image estimator reads: a folder of class sub-folders, a table (file or DataFrame)
with an image-path column, image paths, or a numpy array of images, decoded at the model's size."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from tunesmith.data.images import (
    DecodeReport,
    decode_images,
    images_from_array,
    is_image_file,
    list_images,
    read_image_folder,
    resolve_image_paths,
)
from tunesmith.data.io import file_sha256, read_table
from tunesmith.data.schema import label_string
from tunesmith.errors import DataError
from tunesmith.estimators.image.settings import ImageConfig

ImageInput = Any  # a folder, a table (file or DataFrame) with a path column, image paths, or a numpy array

EXAMPLE_ROWS = 20
"""Row numbers kept per reason in a drop report."""


class Loaded:
    """Images decoded at the model's size, with labels and where each came from.

    ``file`` is the table file or folder read (None for arrays and DataFrames).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        rows: np.ndarray,
        report: DecodeReport | None,
        ignored_files: int = 0,
        file: str | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.rows = rows
        self.report = report
        self.ignored_files = ignored_files
        self.file = file

    def dropped(self) -> dict[str, Any]:
        """Rows left out, by reason, in the shape of the text kind's drop report."""
        skipped = self.report.skipped if self.report is not None else []
        total = self.report.n_total if self.report is not None else len(self.images)
        rows = [row for row, _, _ in skipped[:EXAMPLE_ROWS]]
        summary = f"dropped {len(skipped)} of {total} rows"
        if skipped:
            shown = ", ".join(map(str, rows[:5])) + (", ..." if len(skipped) > 5 else "")
            summary += f": {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''} (row {shown})"
        return {
            "total_rows_in": total,
            "rows_out": len(self.images),
            "dropped_total": len(skipped),
            "unreadable_image": len(skipped),
            "example_rows": {"unreadable_image": rows},
            "summary": summary,
        }

    def sha256(self) -> str:
        """SHA-256 of the table file read, or else of the decoded images and their labels."""
        if self.file is not None and Path(self.file).is_file():
            return file_sha256(self.file)
        digest = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
        for value in self.labels if self.labels is not None else ():
            digest.update(label_string(value).encode("utf-8") + b"\0")
        return digest.hexdigest()


def _table_base(cfg: ImageConfig, default: Path) -> Path:
    return Path(cfg.root).resolve() if cfg.root else default


def load_images(
    cfg: ImageConfig,
    X: ImageInput,
    y: Any,
    size: int,
    resize: str,
    *,
    need_labels: bool,
    progress: bool,
    target: str | None = None,
    root: Path | None = None,
    on_error: str | None = None,
) -> Loaded:
    """Decode ``X`` at ``size`` pixels with its labels (``y``, or the table's ``target`` column).

    Raises:
        DataError: no path or label column, a label missing, an image unreadable (unless
            ``on_error`` is ``skip``), or a path leaving ``root``; naming the file, row and column.
    """
    label_column = target or cfg.target
    if isinstance(X, np.ndarray) or (isinstance(X, list) and X and isinstance(X[0], np.ndarray)):
        images = images_from_array(np.asarray(X), size, resize="squash")
        labels = None if y is None else np.asarray(y)
        if labels is not None and len(labels) != len(images):
            raise DataError(f"y has {len(labels)} labels for {len(images)} images", hint="Give one label per image")
        if need_labels and labels is None:
            raise DataError("images given as an array need labels: pass y", hint="fit(X, y)")
        return Loaded(images, labels, np.arange(1, len(images) + 1), None)
    file: str | None = None
    if isinstance(X, (str, os.PathLike)) and Path(X).is_dir():
        frame = read_image_folder(X, label_column=label_column, path_column=cfg.path_column)
        paths = frame[cfg.path_column].astype(str).tolist()
        file = str(X)
    elif isinstance(X, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in X):
        frame = pd.DataFrame({cfg.path_column: [str(p) for p in X]})
        paths = resolve_image_paths(frame, cfg.path_column, root or _table_base(cfg, Path.cwd().resolve()))
    else:
        if isinstance(X, pd.DataFrame):
            frame = X
            base = _table_base(cfg, Path.cwd().resolve())
        else:
            file = str(X)
            frame = read_table(X)
            base = _table_base(cfg, Path(X).resolve().parent)
        if cfg.path_column not in frame.columns:
            raise DataError(
                f"no image-path column {cfg.path_column!r}",
                file=file,
                column=cfg.path_column,
                hint=f"Columns: {', '.join(map(str, frame.columns))}; set path_column",
            )
        paths = resolve_image_paths(frame, cfg.path_column, base, file=file)
    labels_all: np.ndarray | None = None
    if y is not None:
        labels_all = np.asarray(y)
        if len(labels_all) != len(paths):
            raise DataError(
                f"y has {len(labels_all)} labels for {len(paths)} images", file=file, hint="Give one label per image"
            )
    elif label_column in frame.columns:
        labels_all = frame[label_column].to_numpy()
    if need_labels and labels_all is None:
        raise DataError(f"no label column {label_column!r}", file=file, column=label_column, hint="Set target")
    rows = np.arange(1, len(paths) + 1)
    images, kept, report = decode_images(
        paths,
        size,
        on_error=cast(Literal["raise", "skip"], on_error or cfg.on_error),
        resize=cast(Literal["crop", "squash"], resize),
        progress=progress,
        rows=rows.tolist(),
        file=file,
    )
    labels = labels_all[kept] if labels_all is not None else None
    if labels is not None and need_labels:
        missing = pd.isna(pd.Series(labels))
        if missing.any():
            first = int(rows[kept][np.argmax(missing.to_numpy())])
            raise DataError("missing label", file=file, row=first, column=label_column, hint="Label every image")
    return Loaded(images, labels, rows[kept], report, int(frame.attrs.get("ignored_files", 0)), file=file)


def load_for_prediction(cfg: ImageConfig, X: ImageInput, size: int, resize: str) -> np.ndarray:
    """Decoded images to predict, one per input, in input order.

    A single image file or a folder (every image under it, sorted) is accepted besides the
    forms :func:`load_images` takes. An unreadable image is an error here whatever
    ``on_error`` says (that setting is for training data): predictions must line up with inputs.
    """
    root = None
    if isinstance(X, (str, os.PathLike)) and Path(X).is_file() and is_image_file(X):
        X = [Path(X).resolve()]
        root = X[0].parent
    elif isinstance(X, (str, os.PathLike)) and Path(X).is_dir():
        root = Path(X).resolve()
        X = list_images(root)
    loaded = load_images(cfg, X, None, size, resize, need_labels=False, progress=False, root=root, on_error="raise")
    return loaded.images


def label_values(labels: Sequence[str], original: np.ndarray) -> list[Any]:
    """The original value behind each label string (``1`` for ``"1"``; floats that are whole become ints)."""
    by_label: dict[str, Any] = {}
    for value in pd.Series(original).dropna().unique():
        key = str(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            key, value = str(int(value)), int(value)
        by_label.setdefault(key, value.item() if isinstance(value, np.generic) else value)
    return [by_label.get(lbl, lbl) for lbl in labels]


def encode_labels(loaded: Loaded, index_of: dict[str, int], what: str, column: str) -> np.ndarray:
    """Class indices of ``loaded``'s labels; a label training never saw is a :class:`DataError`."""
    assert loaded.labels is not None
    out = []
    for i, v in enumerate(loaded.labels):
        name = label_string(v)
        if name not in index_of:
            raise DataError(
                f"{what} label {name!r} never occurs in the training data",
                row=int(loaded.rows[i]),
                column=column,
                hint=f"Known labels: {', '.join(index_of)}",
            )
        out.append(index_of[name])
    return np.asarray(out, dtype=np.int64)
