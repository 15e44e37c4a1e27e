"""Request and response models of the prediction server, and the row schema of the served model.

The OpenAPI document is a contract that API fuzzers (and clients) hold the server to: every
body the document calls valid must be accepted, every other one refused with a documented 4xx
whose body matches the documented error schema. So the rows of ``POST /v1/predict`` are not
described generically but from the model being served (:class:`RowSpec`): its columns, their
types, which of them are required, and text that must hold a non-blank character, with
``additionalProperties: false``. :meth:`RowSpec.check` enforces the parts of that schema the
model's own row validation does not (the types of numeric and categorical columns, finite
numbers), so the document and the behaviour agree.

Error bodies are always ``{"detail": ...}``: a message, or a list of ``{type, loc, msg,
input}`` for an invalid request. :func:`json_safe` makes any echoed input representable in
strict JSON (``NaN``, ``Infinity`` and numbers beyond the float range are not JSON).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, WithJsonSchema

from tunesmith.errors import DataError
from tunesmith.serve.settings import Backend, Precision

if TYPE_CHECKING:
    from tunesmith.serve.batcher import ServedModel

# What str.strip() removes (str.isspace()), spelled out so the schema's pattern means the same
# in every regex dialect (ECMA-262, Python, Rust): their "\s" classes differ (\x1c-\x1f, \x85,
# \ufeff), and a text the server calls blank must never match the schema's non-blank pattern.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
NON_BLANK = "[^" + "".join(f"\\u{ord(c):04x}" for c in WHITESPACE) + "]"
"""JSON Schema pattern (unanchored) of a text holding at least one character that is not whitespace."""

MAX_PATH_CHARS = 4096
"""Longest model folder path a reload accepts (PATH_MAX on Linux)."""


# --- errors ----------------------------------------------------------------------------------


class ValidationIssue(BaseModel):
    """One reason a request is invalid, in FastAPI's format; ``loc`` names the field."""

    type: str = Field(..., description="Kind of error (missing, value_error, json_invalid, ...).")
    loc: list[str | int] = Field(..., description='Where: ["body", "inputs", 1, "text"] is field text of row 1.')
    msg: str = Field(..., description="What is wrong, in words.")
    input: Any = Field(default=None, description="The value that was refused (non-finite numbers as strings).")


class ErrorOut(BaseModel):
    """An error: ``detail`` is a message, or a list of issues for an invalid request (422)."""

    detail: str | list[ValidationIssue]


# --- prediction ---------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    """One row or a batch of rows to predict.

    The OpenAPI document replaces the ``inputs`` schema with the served model's rows
    (:meth:`RowSpec.request_schema`).
    """

    model_config = ConfigDict(extra="forbid")

    inputs: Annotated[
        Any,
        WithJsonSchema({"anyOf": [{"type": "object", "minProperties": 1}, {"type": "array", "minItems": 1}]}),
    ] = Field(..., description="A row (object of column values, or a bare string) or a list of rows.")
    # Strict: 0, "no" or "false" are not booleans, and the schema says boolean.
    probabilities: StrictBool = Field(default=True, description="Include class probabilities in each prediction.")


class ServedByOut(BaseModel):
    """Which model answered a row of a personalised server (``--adapters``)."""

    level: Literal["user", "segment", "shared"] = Field(
        ..., description="user: the row's user's adapter; segment: its segment's; shared: the shared model."
    )
    adapter: str | None = Field(
        default=None, description="Key of the adapter that answered (user:ID or segment:COLUMN=VALUE); null: shared."
    )


class PredictionOut(BaseModel):
    """One row's prediction: ``label`` (+ ``probabilities``) for classes, ``value`` for regression."""

    label: Any = Field(default=None, description="Predicted class (classification).")
    probabilities: dict[str, float | None] | None = Field(
        default=None,
        description="Probability of each class; sums to 1. null where the model's output is not a number (inputs "
        "far outside what it was trained on).",
    )
    value: float | None = Field(
        default=None, description="Predicted value (regression); null where the model's output is not a number."
    )
    served_by: ServedByOut | None = Field(
        default=None, description="Personalised servers only: the adapter (or shared model) that answered the row."
    )
    user_known: bool | None = Field(
        default=None,
        description="Personalised servers only, for a row that named a user: true if the user's own adapter "
        "answered; false if the user has no adapter in use, so the row fell back to its segment or the shared model.",
    )


class PredictResponse(BaseModel):
    """Predictions in the order of the request's rows (always a list, also for one row)."""

    model_version: str = Field(..., description="Version of the model that made these predictions.")
    backend: str = Field(..., description="onnx or torch.")
    precision: str = Field(..., description="fp32 or int8.")
    predictions: list[PredictionOut]


# --- probes ---------------------------------------------------------------------------------------


class LiveOut(BaseModel):
    """The process runs."""

    status: Literal["alive"]


class ReadyOut(BaseModel):
    """Readiness: ``ready`` (200) or why not (503)."""

    status: Literal["ready", "starting", "draining", "failed"]
    model_version: str | None = Field(default=None, description="The model serving (ready only).")
    detail: str | None = Field(default=None, description="Why the warm-up failed (failed only).")


# --- reload -------------------------------------------------------------------------------------


class ReloadRequest(BaseModel):
    """What to load; every field defaults to what is serving now (the same folder, re-read)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PATH_CHARS,
        # A NUL cannot be in a file name; refused here rather than by the operating system.
        pattern=r"^[^\u0000]*$",
        description="Model folder on the server's disk.",
    )
    backend: Backend | None = Field(default=None, description="onnx or torch.")
    precision: Precision | None = Field(default=None, description="auto, fp32 or int8 (onnx).")
    model_version: str | None = Field(
        default=None, min_length=1, max_length=128, description="Version to report; default: a hash of the weights."
    )


class ReloadOut(BaseModel):
    """Outcome of a reload: what serves now, and why a failed reload failed."""

    reloaded: bool
    model_version: str = Field(..., description="The version serving after this call.")
    backend: str
    precision: str
    previous_version: str | None = None
    seconds: float | None = None
    detail: str | list[ValidationIssue] | None = Field(
        default=None,
        description="Why the reload failed (the old model keeps serving): a message, or the invalid fields of the "
        "request body.",
    )


# --- the rows of the served model -------------------------------------------------------------------

_TEXT = {"type": "string", "pattern": NON_BLANK}
_NUMBER = {"type": ["number", "null"], "description": "A number; null: missing."}
_CATEGORY = {"type": ["string", "number", "boolean", "null"], "description": "A category; null: missing."}
_ID = {"type": ["string", "integer", "null"], "description": "Routing id (user or segment); null: unknown."}


@dataclass(frozen=True)
class RowSpec:
    """The rows a served model reads: what the OpenAPI document promises and the server enforces.

    ``shape`` is ``text`` (a fine-tuned text model: at least one non-blank text column), ``image``
    (one base64 field), ``tabular`` (any subset of the columns; a missing one is imputed) or
    ``free`` (unknown: any non-empty object).
    """

    shape: Literal["text", "image", "tabular", "free"]
    text_columns: tuple[str, ...] = ()
    numeric_columns: tuple[str, ...] = ()
    categorical_columns: tuple[str, ...] = ()
    id_columns: tuple[str, ...] = ()
    image_field: str | None = None

    @classmethod
    def of(cls, predictor: ServedModel) -> RowSpec:
        """The spec of a loaded predictor, from its ``input_schema`` (and routing columns)."""
        schema_of = getattr(predictor, "input_schema", None)
        schema = schema_of() if callable(schema_of) else None
        if not isinstance(schema, dict):
            return cls("free")
        if isinstance(schema.get("image_field"), str):
            return cls("image", image_field=schema["image_field"])

        def columns(key: str) -> tuple[str, ...]:
            value = schema.get(key) or []
            return tuple(str(c) for c in value) if isinstance(value, list) else ()

        text, numeric, categorical = columns("text_columns"), columns("numeric_columns"), columns("categorical_columns")
        known = {*text, *numeric, *categorical}
        # Personalised servers accept the store's routing columns in every row.
        routing = [getattr(predictor, c, None) for c in ("user_column", "segment_column", "item_column")]
        ids = tuple(c for c in routing if isinstance(c, str) and c and c not in known)
        # A text model has a token budget; a tabular one reads any subset of its columns.
        shape: Literal["text", "tabular"] = "text" if "max_tokens" in schema and text else "tabular"
        return cls(shape, text, numeric, categorical, ids)

    # --- the document ----------------------------------------------------------------------------

    def row_schema(self) -> dict[str, Any]:
        """JSON Schema of one row."""
        if self.shape == "free":
            return {"type": "object", "minProperties": 1, "description": "Column values (see /v1/metadata)."}
        if self.shape == "image":
            field = self.image_field or "image"
            image = {
                "type": "string",
                "minLength": 1,
                "contentEncoding": "base64",
                "description": "The image file's bytes (PNG, JPEG, ...) in base64.",
            }
            obj = {"type": "object", "properties": {field: image}, "required": [field], "additionalProperties": False}
            return {"anyOf": [obj, image]}
        props: dict[str, Any] = {}
        for col in self.text_columns:
            props[col] = {"type": ["string", "null"], "description": "Text; null: none."}
        for col in self.numeric_columns:
            props[col] = dict(_NUMBER)
        for col in self.categorical_columns:
            props[col] = dict(_CATEGORY)
        for col in self.id_columns:
            props[col] = dict(_ID)
        obj = {"type": "object", "properties": props, "additionalProperties": False}
        if self.shape == "tabular":
            obj["description"] = "Column values; a column left out counts as missing."
            return obj
        texts = self.text_columns
        if len(texts) == 1:
            props[texts[0]] = {**_TEXT, "description": "The text (not blank)."}
            obj["required"] = [texts[0]]
            bare = {**_TEXT, "description": f"The text of column {texts[0]!r} alone."}
            return {"anyOf": [obj, bare]}
        # Several text columns: any of them may be left out or null, as long as one holds text.
        obj["anyOf"] = [{"required": [c], "properties": {c: _TEXT}} for c in texts]
        obj["description"] = f"At least one of {', '.join(texts)} holds text that is not blank."
        return obj

    def request_schema(self, max_rows: int) -> dict[str, Any]:
        """JSON Schema of the ``POST /v1/predict`` body: one row or 1..``max_rows`` rows."""
        row = self.row_schema()
        schema: dict[str, Any] = {
            "type": "object",
            "title": "PredictRequest",
            "description": "One row or a batch of rows to predict.",
            "properties": {
                "inputs": {
                    "anyOf": [row, {"type": "array", "items": row, "minItems": 1, "maxItems": max_rows}],
                    "description": "A row or a list of rows (see /v1/metadata input_schema).",
                },
                "probabilities": {
                    "type": "boolean",
                    "default": True,
                    "description": "Include class probabilities in each prediction.",
                },
            },
            "required": ["inputs"],
            "additionalProperties": False,
        }
        if self.shape == "text":
            # Examples are tried by API testers as they stand, so they name this model's columns.
            example = "great fun movie"
            one = {c: example for c in self.text_columns}
            examples: list[Any] = [{"inputs": one}, {"inputs": [one, one], "probabilities": False}]
            if len(self.text_columns) == 1:
                examples.append({"inputs": [example, "boring and bad"]})
            schema["examples"] = examples
        return schema

    # --- the server's side of it -----------------------------------------------------------------

    def check(self, rows: list[Any], single: bool) -> list[dict[str, Any]] | None:
        """The 422 detail for the first value of a numeric or categorical column the schema refuses, or None.

        The model checks the rest (unknown fields, texts, routing ids, images) and words its own
        errors; what it would turn into text or coerce silently is refused here, so a request
        the document calls invalid is never answered 200. A routing id sent as an integral
        float (``7.0``) is made the integer it is, in place, as the document's ``integer`` allows.
        """
        if not (self.numeric_columns or self.categorical_columns or self.id_columns):
            return None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                continue
            for col in self.id_columns:
                value = row.get(col)
                # JSON Schema's integer includes 5.0 (JSON has one kind of number): the id 5.
                if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                    row[col] = int(value)
            for col in self.numeric_columns:
                value = row.get(col)
                if value is not None and not _finite_number(value):
                    what = "a finite number" if _is_number(value) else "a number or null"
                    return _issue(rows, i, single, col, f"must be {what}, got {_shown(value)}", value)
            for col in self.categorical_columns:
                value = row.get(col)
                if value is None or isinstance(value, (str, bool)) or _finite_number(value):
                    continue
                what = "a finite number" if _is_number(value) else "a string, a number, a boolean or null"
                return _issue(rows, i, single, col, f"must be {what}, got {_shown(value)}", value)
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_number(value: Any) -> bool:
    """An int or float (not a boolean) that a model can use as a float."""
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        # Beyond the float range a model cannot use it as a number.
        try:
            return math.isfinite(float(value))
        except OverflowError:
            return False
    return False


def _shown(value: Any) -> str:
    if _is_number(value):
        return "a number beyond the float range" if isinstance(value, int) else str(json_safe(value))
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _issue(rows: list[Any], i: int, single: bool, col: str, msg: str, value: Any) -> list[dict[str, Any]]:
    loc: list[Any] = ["body", "inputs"] if single else ["body", "inputs", i]
    where = "inputs" if single else f"inputs[{i}]"
    return [{"type": "value_error", "loc": [*loc, col], "msg": f"{where}.{col} {msg}", "input": json_safe(value)}]


# --- strict JSON ------------------------------------------------------------------------------------

_MAX_ECHO_DEPTH = 32


def json_safe(value: Any, *, non_finite: Literal["text", "null"] = "text", _depth: int = 0) -> Any:
    """``value`` with everything strict JSON cannot hold made representable.

    ``NaN`` and the infinities become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
    (to echo a refused input back), or ``null`` with ``non_finite="null"`` (a model output that
    is not a number); integers too long to print become a short note; anything that is not a
    JSON type becomes its ``str``; nesting deeper than 32 levels is cut.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if non_finite == "null":
            return None
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int):
        # Python refuses to print integers of more than 4300 digits (about 14,000 bits).
        return value if value.bit_length() <= 14_000 else "an integer too long to show"
    if _depth >= _MAX_ECHO_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {str(k): json_safe(v, non_finite=non_finite, _depth=_depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, non_finite=non_finite, _depth=_depth + 1) for v in value]
    return str(value)


# --- reading requests and writing answers ------------------------------------------------------

MAX_DETAIL_CHARS = 2000
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def dumps(payload: Any, *, non_finite: Literal["text", "null"] = "text") -> bytes:
    """Strict JSON: a NaN or an infinity is spelled as a string (an echoed input) or, with
    ``non_finite="null"``, as null (a model output that is not a number)."""
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        safe = json_safe(payload, non_finite=non_finite)
        return json.dumps(safe, separators=(",", ":"), allow_nan=False).encode()


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON (``application/json`` or ``application/*+json``)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors of a request body, located under ``body`` as FastAPI does."""
    out = []
    for err in exc.errors(include_url=False, include_context=False):
        item: dict[str, Any] = dict(err)
        item["loc"] = ("body", *err["loc"])
        if item.get("type") == "json_invalid":
            item.pop("input", None)
        out.append(item)
    return out


def request_rows(inputs: Any) -> tuple[list[Any], bool]:
    """The request rows as a list and whether the request sent a single row."""
    single = not isinstance(inputs, list)
    rows = [inputs] if single else inputs
    if not rows:
        raise RequestValidationError(
            [{"type": "too_short", "loc": ("body", "inputs"), "msg": "inputs must hold at least one row", "input": []}]
        )
    for i, row in enumerate(rows):
        where: tuple[Any, ...] = ("body", "inputs") if single else ("body", "inputs", i)
        if isinstance(row, dict):
            continue
        if isinstance(row, str):
            if row.strip():
                continue
            msg = "the text is empty"
        else:
            msg = f"a row must be an object of column values or a string, got {type(row).__name__}"
        raise RequestValidationError([{"type": "value_error", "loc": where, "msg": msg, "input": row}])
    return rows, single


def data_error_detail(exc: DataError, single: bool, rows: list[Any]) -> list[dict[str, Any]]:
    """The 422 detail of a row the model cannot read, located at the row and field."""
    loc: list[Any] = ["body", "inputs"]
    row = None
    if exc.row is not None:
        i = exc.row - 1
        if not single:
            loc.append(i)
        row = rows[i] if 0 <= i < len(rows) else None
    if exc.column is not None:
        loc.append(exc.column)
    msg = exc.message if not exc.hint else f"{exc.message}. {exc.hint}"
    return [{"type": "value_error", "loc": loc, "msg": msg, "input": row}]


def json_error(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    """``{"detail": detail}``; a detail that echoes inputs is made strict JSON first."""
    if not isinstance(detail, str):
        detail = json_safe(detail)
    return Response(dumps({"detail": detail}), status_code=status, media_type="application/json", headers=headers)


REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "The request's X-Request-ID (up to 64 characters of A-Za-z0-9._:-), or one made up.",
        "schema": {"type": "string"},
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "API key missing or wrong."},
    408: {"model": ErrorOut, "description": "The body did not arrive within request_timeout_s."},
    413: {"model": ErrorOut, "description": "Body larger than max_body_bytes, or more rows than max_rows_per_request."},
    415: {"model": ErrorOut, "description": "Content-Type is not application/json."},
    422: {"model": ErrorOut, "description": "Invalid request: detail lists {loc, msg} naming the row and field."},
    503: {
        "model": ErrorOut,
        "description": "Queue full or shutting down; retry after the Retry-After seconds.",
        "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}},
    },
    504: {"model": ErrorOut, "description": "The prediction did not finish within request_timeout_s."},
}
