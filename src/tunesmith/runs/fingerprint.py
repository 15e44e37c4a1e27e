"""Content fingerprints of model folders: the version a server reports, the key an adapter store keeps.

Ground level, so the estimators (a personaliser records its shared model's fingerprint) and
the export and serving layers hash a folder's weights the same way.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tunesmith.errors import ArtifactError
from tunesmith.runs.trust import open_regular


def file_sha256(path: Path) -> str:
    """SHA-256 of a regular file, read never through a link and never blocking on a FIFO."""
    fd = open_regular(path, limit=None, shown=path.name)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_version(folder: Path) -> str:
    """A short content hash of the weights: two folders with the same version hold the same model."""
    weights = Path(folder) / "model.safetensors"
    if not weights.is_file():
        raise ArtifactError("model.safetensors is missing", path=folder, hint="Give a folder written by save()")
    return file_sha256(weights)[:12]


def saved_version(folder: str | os.PathLike[str] | None) -> str | None:
    """:func:`model_version` of the folder a model was saved to or loaded from; None for a model
    only in memory, or a folder that no longer holds its weights (a refit's parent record)."""
    if folder is None:
        return None
    try:
        return model_version(Path(folder))
    except ArtifactError:
        return None
