"""What the monitor watches, in one shape for every kind of model.

:class:`Spec` names the input columns by type (numeric, categorical, text, image) and the
model's task and classes; :func:`derive_features` turns text and images into numeric
features a test can compare (length, words, out-of-vocabulary share; image size, brightness,
contrast, edges); :func:`log_rows` expands a prediction log (one record per request) into one
row per predicted input with its outputs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import DataError

WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
VOCAB_SIZE = 50_000
PROBA_PREFIX = "proba:"
PREDICTION = "prediction"
LOG_COLUMNS = ("timestamp", "request_id", "row", "model_version")


@dataclass
class Spec:
    """Input columns by type, the target, and the model's task and classes."""

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    image: list[str] = field(default_factory=list)
    target: str | None = None
    task: str | None = None  # "classification" | "regression" | "ranking" | None (no outputs)
    classes: list[str] | None = None
    vocab: dict[str, list[str]] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)  # columns left out: every value differs (row ids)

    @property
    def inputs(self) -> list[str]:
        return [*self.numeric, *self.categorical, *self.text, *self.image]

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric,
            "categorical": self.categorical,
            "text": self.text,
            "image": self.image,
            "target": self.target,
            "task": self.task,
            "classes": self.classes,
            "ids_left_out": self.ids,
        }


def infer_spec(
    frame: pd.DataFrame,
    *,
    target: str | None,
    exclude: Sequence[str] = (),
    text: Sequence[str] | None = None,
    max_categories: int = 50,
) -> Spec:
    """Column types from the data: numbers are numeric, long free text is text, the rest categorical."""
    spec = Spec(target=target)
    skip = {target, *exclude, *LOG_COLUMNS}
    for col in frame.columns:
        if col in skip or str(col).startswith(PROBA_PREFIX) or col == PREDICTION:
            continue
        s = frame[col]
        if _looks_like_id(s):
            spec.ids.append(str(col))
            continue
        if text is not None and col in text:
            spec.text.append(str(col))
        elif pd.api.types.is_bool_dtype(s):
            spec.categorical.append(str(col))
        elif pd.api.types.is_numeric_dtype(s):
            spec.numeric.append(str(col))
        elif len(s) and isinstance(s.dropna().iloc[0] if s.notna().any() else None, np.ndarray):
            spec.image.append(str(col))
        elif text is None and _looks_like_text(s, max_categories):
            spec.text.append(str(col))
        else:
            spec.categorical.append(str(col))
    return spec


def _looks_like_id(s: pd.Series) -> bool:
    """Whole numbers or short strings, every one different: a row id, not something to compare."""
    if len(s) < 20 or s.isna().any() or s.nunique() != len(s):
        return False
    if pd.api.types.is_integer_dtype(s):
        return True
    if s.dtype == object or pd.api.types.is_string_dtype(s):
        return bool(s.astype(str).str.count(r"\s+").max() == 0)
    return False


def _looks_like_text(s: pd.Series, max_categories: int) -> bool:
    sample = s.dropna().astype(str).head(2000)
    if not len(sample):
        return False
    words = sample.str.count(r"\s+") + 1
    return bool(words.mean() >= 4 and sample.nunique() > max(max_categories, len(sample) // 2))


def build_vocab(texts: pd.Series) -> list[str]:
    """The reference's most frequent lower-case words (at most 50,000)."""
    counts: Counter[str] = Counter()
    for t in texts.dropna().astype(str):
        counts.update(w.lower() for w in WORD.findall(t))
    return [w for w, _ in counts.most_common(VOCAB_SIZE)]


def text_features(texts: pd.Series, vocab: set[str]) -> dict[str, np.ndarray]:
    """Per row: characters, words, mean word length, out-of-vocabulary share, non-letter share.

    The out-of-vocabulary share (words the reference never used) rises with typos, new slang and
    text from another domain, which length alone misses.
    """
    n = len(texts)
    out = {k: np.full(n, np.nan) for k in ("chars", "words", "word_length", "oov", "non_letters")}
    for i, t in enumerate(texts.tolist()):
        if t is None or (isinstance(t, float) and np.isnan(t)):
            continue
        t = str(t)
        words = WORD.findall(t)
        out["chars"][i] = len(t)
        out["words"][i] = len(words)
        letters = sum(len(w) for w in words)
        out["word_length"][i] = letters / len(words) if words else 0.0
        out["oov"][i] = sum(w.lower() not in vocab for w in words) / len(words) if words else 0.0
        out["non_letters"][i] = 1.0 - letters / len(t) if t else 0.0
    return out


def image_features(images: pd.Series) -> dict[str, np.ndarray]:
    """Per image: height, width, channels, brightness, contrast and edge strength (0-1 scale)."""
    n = len(images)
    out = {k: np.full(n, np.nan) for k in ("height", "width", "channels", "brightness", "contrast", "edges")}
    for i, img in enumerate(images.tolist()):
        arr = as_image_array(img)
        if arr is None:
            continue
        scale = 255.0 if arr.dtype == np.uint8 or float(np.nanmax(arr, initial=0)) > 1.5 else 1.0
        gray = (arr.mean(axis=2) if arr.ndim == 3 else arr).astype(np.float64) / scale
        out["height"][i], out["width"][i] = gray.shape[:2]
        out["channels"][i] = arr.shape[2] if arr.ndim == 3 else 1
        out["brightness"][i] = float(gray.mean())
        out["contrast"][i] = float(gray.std())
        gy, gx = np.abs(np.diff(gray, axis=0)), np.abs(np.diff(gray, axis=1))
        out["edges"][i] = float((gy.mean() if gy.size else 0.0) + (gx.mean() if gx.size else 0.0))
    return out


def as_image_array(img: Any) -> np.ndarray | None:
    """An image as an array: arrays as they are; a path, or base64 of the file's bytes (as a request sends it)."""
    if isinstance(img, np.ndarray):
        return img
    if not isinstance(img, (str, bytes)) or not img:
        return None
    import base64
    import binascii
    import io
    import os

    from PIL import Image

    source: Any = img
    if isinstance(img, str) and not os.path.exists(img):
        try:
            source = io.BytesIO(base64.b64decode(img, validate=True))
        except (binascii.Error, ValueError):
            return None
    elif isinstance(img, bytes):
        source = io.BytesIO(img)
    try:
        with Image.open(source) as im:
            return np.asarray(im)
    except OSError:
        return None


@dataclass
class Derived:
    """Features the tests compare: name -> values, with each feature's type and source column."""

    values: dict[str, np.ndarray]
    kinds: dict[str, str]
    source: dict[str, str]


def category_text(s: pd.Series) -> np.ndarray:
    """Categorical values as text; a whole number reads the same from a file (3.0) and a request (3)."""
    missing = s.isna().to_numpy()
    if pd.api.types.is_float_dtype(s) or s.dtype == object:
        text = [whole_text(v) for v in s.tolist()]
    else:
        text = s.astype(str).tolist()
    return np.where(missing, "(missing)", np.asarray(text, dtype=object)).astype(object)


def whole_text(v: Any) -> str:
    """A value as text; a whole float reads like the integer it is (3.0 -> '3')."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def derive_features(frame: pd.DataFrame, spec: Spec) -> Derived:
    """The comparable features of ``frame``: tabular columns as they are, text and images derived."""
    values: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    source: dict[str, str] = {}
    for col in spec.numeric:
        values[col] = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        kinds[col], source[col] = "numeric", col
    for col in spec.categorical:
        values[col] = category_text(frame[col])
        kinds[col], source[col] = "categorical", col
    for col in spec.text:
        vocab = set(spec.vocab.get(col, ()))
        for name, v in text_features(frame[col], vocab).items():
            key = f"{col}.{name}"
            values[key], kinds[key], source[key] = v, "numeric", col
    for col in spec.image:
        for name, v in image_features(frame[col]).items():
            key = f"{col}.{name}"
            values[key], kinds[key], source[key] = v, "numeric", col
    return Derived(values, kinds, source)


def check_columns(frame: pd.DataFrame, spec: Spec, *, what: str, file: str | None) -> None:
    """Every input column of ``spec`` must be in ``frame``; the error names the missing ones.

    A recommender's inputs are figures made from its id columns, which are checked when made.
    """
    if spec.task == "ranking":
        return
    missing = [c for c in spec.inputs if c not in frame.columns]
    if missing:
        have = ", ".join(map(str, list(frame.columns)[:12]))
        raise DataError(
            f"the {what} lacks the model's input column(s) {', '.join(map(repr, missing))} (it has: {have})",
            file=file,
            column=missing[0],
            hint=f"Give {what} data with the columns the model was trained on",
        )


def log_rows(log: pd.DataFrame, spec: Spec, *, file: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per predicted input of a prediction log, with its outputs.

    Failed requests (status other than 200) carry no outputs and are left out, counted in the
    returned ``dropped`` mapping, as are rows whose output cannot be read.
    """
    dropped = {"failed_requests": 0, "rows_of_failed_requests": 0, "rows_without_outputs": 0}
    records: list[dict[str, Any]] = []
    # A request may send its one text (or image) as a bare string instead of an object.
    single = spec.text[0] if len(spec.text) == 1 else spec.image[0] if len(spec.image) == 1 else None
    for rec in log.itertuples(index=False):
        inputs: list[Any] = list(rec.inputs or [])  # type: ignore[arg-type]
        outputs: list[Any] = list(rec.outputs or [])  # type: ignore[arg-type]
        if rec.status != 200 or rec.outputs is None:
            dropped["failed_requests"] += 1
            dropped["rows_of_failed_requests"] += len(inputs)
            continue
        for j, (row, out) in enumerate(zip(inputs, outputs, strict=False)):
            if isinstance(row, str):
                if single is None:
                    raise DataError(
                        "the log holds bare strings as rows, but the model takes named columns",
                        file=file,
                        hint="Monitor this log with the model that served it",
                    )
                row = {single: row}
            elif spec.image and isinstance(row, dict) and len(row) == 1 and spec.image[0] not in row:
                # An image request names its one field "image"; the reference may call it "path".
                row = {spec.image[0]: next(iter(row.values()))}
            if not isinstance(row, dict) or not isinstance(out, dict):
                dropped["rows_without_outputs"] += 1
                continue
            item: dict[str, Any] = dict(row)
            item.update(timestamp=rec.timestamp, request_id=rec.request_id, row=j, model_version=rec.model_version)
            probabilities = out.get("probabilities")
            if isinstance(probabilities, dict):
                for label, p in probabilities.items():
                    item[PROBA_PREFIX + str(label)] = p
            if "label" in out:
                item[PREDICTION] = out["label"]
            elif "value" in out:
                item[PREDICTION] = out["value"]
            elif "items" in out:
                item[PREDICTION] = [i.get("item") for i in out["items"] if isinstance(i, dict)]
            records.append(item)
        extra = len(inputs) - len(outputs)
        if extra > 0:
            dropped["rows_without_outputs"] += extra
    return pd.DataFrame.from_records(records), dropped


def proba_matrix(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """The ``proba:<class>`` columns of ``frame`` in ``classes`` order, or None when absent."""
    cols = [PROBA_PREFIX + str(c) for c in classes]
    if not all(c in frame.columns for c in cols):
        return None
    return frame[cols].to_numpy(dtype=float)
