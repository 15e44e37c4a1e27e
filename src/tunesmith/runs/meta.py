"""One metadata format for every model folder: ``tunesmith.json``.

Every kind writes the same common fields through :func:`model_meta` (format and its one
version number, kind, task, labels, resolved settings, test metrics, baselines, data
fingerprint, package version, creation time) and adds its own fields beside them; every
loader reads them through :func:`read_model_meta`, which checks the common fields and
accepts the older per-kind layouts (version 1) so folders saved before still load.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunesmith._version import __version__
from tunesmith.errors import ArtifactError
from tunesmith.runs.trust import SafeFolder, field

MODEL_FILE = "tunesmith.json"
FORMAT = "tunesmith-model"
FORMAT_VERSION = 2
"""The one version number of ``tunesmith.json``, shared by every kind."""
READABLE_VERSIONS = (1, 2)
"""Versions this release reads: 1 is the per-kind layout written before the common fields."""

COMMON_FIELDS = (
    "format",
    "format_version",
    "kind",
    "task",
    "labels",
    "settings",
    "metrics",
    "baselines",
    "data",
    "tunesmith_version",
    "created",
)


def model_meta(
    kind: str,
    task: str,
    *,
    labels: Sequence[Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    baselines: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The ``tunesmith.json`` of a model folder: the common fields, then the kind's own ``fields``.

    A kind's own field may not reuse a common field's name (it would be silently shadowed).
    """
    clash = sorted(set(fields) & set(COMMON_FIELDS))
    if clash:
        raise ValueError(f"kind fields {clash} reuse common metadata fields")
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "task": task,
        "labels": list(labels) if labels is not None else None,
        "settings": dict(settings or {}),
        "metrics": dict(metrics or {}),
        "baselines": dict(baselines or {}),
        "data": dict(data or {}),
        "tunesmith_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(fields)
    return meta


def read_model_meta(folder: SafeFolder, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``tunesmith.json`` of an opened folder with its common fields checked.

    ``format_version`` must be one this release reads; ``kind`` a string (absent in version 1
    text folders, where it means text). Kind loaders check their own fields after this.

    Raises:
        ArtifactError: naming the file and the field that is wrong.
    """
    file = Path(folder.root) / MODEL_FILE
    data = dict(meta) if meta is not None else folder.read_json(MODEL_FILE)
    check_common(data, file=file)
    return data


def check_common(data: Mapping[str, Any], *, file: str | os.PathLike[str]) -> int:
    """Check the common fields of a ``tunesmith.json`` already read; return its ``format_version``.

    Every reader of model metadata (the estimators' loaders and the ONNX predictors) calls
    this, so a folder is refused for the same reason, in the same words, whichever door opens it.
    """
    version = field(data, "format_version", int, file=file, default=1)
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"field 'format_version' is {version}; this tunesmith reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}",
            path=file,
            hint="Load it with the tunesmith release that saved it, or save the model again",
        )
    field(data, "kind", str, file=file, default="text")
    if version >= 2:
        fmt = field(data, "format", str, file=file)
        if fmt != FORMAT:
            raise ArtifactError(f"field 'format' is {fmt!r}, not {FORMAT!r}", path=file)
        for name in ("settings", "metrics", "baselines", "data"):
            field(data, name, dict, file=file, default={})
    return int(version)
