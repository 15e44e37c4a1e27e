"""The fields of a text model's ``tunesmith.json`` and the checks its readers share.

A text model folder is written through :func:`tunesmith.runs.meta.model_meta` (format
``tunesmith-model``, version 2, the common fields) plus the text fields listed in
:data:`TEXT_FIELDS`; folders of version 1 (the text layout before the common fields) still
load. :func:`check_text_meta` is the one check of those fields, used by
:meth:`FineTuner.load <tunesmith.estimators.text.FineTuner.load>` and by the PyTorch and
ONNX predictors of :mod:`tunesmith.export.runtime`. This module imports neither torch nor
transformers, so ONNX serving can check a folder without them.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tunesmith.data.normalize import NumericScaler
from tunesmith.data.quality import Preprocessing
from tunesmith.data.schema import Schema
from tunesmith.errors import ArtifactError, TunesmithError
from tunesmith.runs.meta import FORMAT_VERSION, READABLE_VERSIONS, check_common
from tunesmith.runs.trust import field

TEXT_FORMAT_VERSION = FORMAT_VERSION
"""The ``format_version`` a text model is saved with (the one version of every kind)."""

TEXT_READABLE_VERSIONS = READABLE_VERSIONS
"""Versions of a text model's ``tunesmith.json`` this release reads (1: before the common fields)."""

TEXT_FIELDS = (
    "schema",
    "label_values",
    "target_scaling",
    "preprocessing",
    "n_outputs",
    "backbone",
    "config",
    "training",
    "history",
    "environment",
)
"""The text kind's own fields, beside the common ones (``task``, ``labels``, ``metrics``, ...)."""

MAX_OUTPUTS = 1_000_000
"""Most outputs (classes) a saved model may declare; its head's shape must match too."""

MAX_POSITIONS = 1_048_576
"""Largest ``config.max_length`` a saved model may declare."""

TASKS = ("binary", "multiclass", "regression")
RETRAIN_HINT = "The folder is damaged or was not written by tunesmith; re-save or retrain the model"


@contextlib.contextmanager
def field_errors(file: str | os.PathLike[str], name: str) -> Iterator[None]:
    """Report what a loader refused in the value of field ``name`` of ``file`` as that field's fault.

    A :class:`~tunesmith.errors.ConfigError` (a saved setting that no longer validates), an
    :class:`ArtifactError` raised without a file, or a ``KeyError``/``TypeError``/
    ``ValueError`` met while using the value becomes one :class:`ArtifactError` naming
    ``file`` and the field.
    """
    try:
        yield
    except ArtifactError as exc:
        if exc.path is not None:
            raise
        raise ArtifactError(f"field {name!r}: {exc.message}", path=file, hint=exc.hint or RETRAIN_HINT) from None
    except TunesmithError as exc:
        raise ArtifactError(f"field {name!r} is invalid: {exc}", path=file, hint=RETRAIN_HINT) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ArtifactError(f"field {name!r} is malformed: {first}", path=file, hint=RETRAIN_HINT) from None


def _string_list(meta: Mapping[str, Any], name: str, *, file: Path, default: Any = None) -> list[str]:
    values = field(meta, name, list, file=file, default=default)
    if values is None:
        return []
    if len(values) > MAX_OUTPUTS:
        raise ArtifactError(f"field {name!r} holds {len(values):,} entries, over {MAX_OUTPUTS:,}", path=file)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ArtifactError(f"field {name!r}[{i}] must be a string, got {type(v).__name__}", path=file)
    return list(values)


def _check_version(meta: Mapping[str, Any], file: Path) -> None:
    field(meta, "format_version", int, file=file)  # a text folder always names its version
    if check_common(meta, file=file) >= 2:
        field(meta, "settings", dict, file=file)


def check_text_meta(meta: Mapping[str, Any], *, file: Path) -> None:
    """Refuse a text model's ``tunesmith.json`` whose fields a loader reads have a wrong type or value.

    Checked: ``format_version`` (1 or 2; version 2 also needs ``format`` and ``settings``),
    ``task``, ``schema`` (columns, target, task), ``labels`` and ``label_values``,
    ``n_outputs`` (1 to :data:`MAX_OUTPUTS`, equal to the number of labels or 1 for
    regression), ``target_scaling``, ``preprocessing``, ``config.max_length``, the
    ``backbone`` entry and the types of the report fields (``metrics``, ``history``, ...).
    Each refusal is an :class:`ArtifactError` naming ``file`` and the field.
    """
    _check_version(meta, file)
    task = field(meta, "task", str, file=file, choices=TASKS)
    field(meta, "schema", dict, file=file)
    field(meta, "schema.task", str, file=file, choices=(task,))
    field(meta, "schema.target", str, file=file)
    if not _string_list(meta, "schema.text_columns", file=file):
        raise ArtifactError("field 'schema.text_columns' names no column", path=file, hint=RETRAIN_HINT)
    for name in ("numeric_columns", "categorical_columns", "ignored_columns", "labels"):
        _string_list(meta, f"schema.{name}", file=file, default=None)
    labels = _string_list(meta, "labels", file=file, default=None)
    values = field(meta, "label_values", list, file=file, default=None) or []
    for i, v in enumerate(values):
        if not isinstance(v, (str, int, float, bool)):
            raise ArtifactError(f"field 'label_values'[{i}] must be a label, got {type(v).__name__}", path=file)
    n_outputs = field(meta, "n_outputs", int, file=file, low=1, high=MAX_OUTPUTS)
    wanted = 1 if task == "regression" else len(labels)
    if task != "regression" and len(labels) < 2:
        raise ArtifactError(f"field 'labels' must name at least 2 classes for a {task} model", path=file)
    if n_outputs != wanted:
        raise ArtifactError(
            f"field 'n_outputs' is {n_outputs} but a {task} model with {len(labels)} labels has {wanted}",
            path=file,
            hint=RETRAIN_HINT,
        )
    if field(meta, "target_scaling", dict, file=file, default=None) is not None:
        for name in ("mean", "std"):
            number = field(meta, f"target_scaling.{name}", float, file=file)
            if not math.isfinite(number):
                raise ArtifactError(f"field 'target_scaling.{name}' must be finite, got {number!r}", path=file)
    if field(meta, "preprocessing", dict, file=file, default=None) is not None:
        impute = field(meta, "preprocessing.impute", dict, file=file, default=None) or {}
        for col, v in impute.items():
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise ArtifactError(
                    f"field 'preprocessing.impute.{col}' must be a value, got {type(v).__name__}", path=file
                )
        scaler = field(meta, "preprocessing.scaler", dict, file=file, default=None)
        if scaler is not None:
            with field_errors(file, "preprocessing.scaler"):
                NumericScaler.from_dict(scaler)
    field(meta, "config", dict, file=file)
    field(meta, "config.max_length", int, file=file, low=1, high=MAX_POSITIONS, default=None)
    field(meta, "backbone", dict, file=file)
    field(meta, "backbone.name", str, file=file)
    field(meta, "backbone.fingerprint", str, file=file)
    field(meta, "backbone.weights", str, file=file, choices=("full", "base"))
    field(meta, "backbone.pooling", str, file=file, choices=("mean", "cls"))
    field(meta, "backbone.hidden_size", int, file=file, low=1, high=65_536, default=None)
    # Report fields: shown by /v1/metadata and the estimator's attributes, each of its own type.
    for name in ("metrics", "baselines", "training", "data"):
        field(meta, name, dict, file=file, default=None)
    field(meta, "history", list, file=file, default=None)
    for name in ("created", "tunesmith_version"):
        field(meta, name, str, file=file, default=None)


def saved_schema(meta: Mapping[str, Any], *, file: Path) -> Schema:
    """The :class:`~tunesmith.data.schema.Schema` of a checked ``tunesmith.json``; a bad one names field 'schema'."""
    with field_errors(file, "schema"):
        return Schema.from_dict(meta["schema"])


def saved_preprocessing(meta: Mapping[str, Any], *, file: Path) -> Preprocessing:
    """The :class:`~tunesmith.data.quality.Preprocessing` of a checked ``tunesmith.json``."""
    with field_errors(file, "preprocessing"):
        return Preprocessing.from_dict(meta.get("preprocessing"))
