"""A store of per-user and per-segment adapters beside one shared model.

One safetensors file per adapter, named by a hash of its key (user and segment ids may hold
any character), plus ``index.json`` with each adapter's kind, size, training rows and
validation scores. Adapters are added, replaced and deleted one at a time; every write is
atomic (temporary file, then rename), so a reader sees the old adapter or the new one.
The index records the fingerprint of the shared model the adapters were trained on, and
the store refuses to open against any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.runs.artifacts import atomic_write_json, json_safe, load_tensors, save_tensors

INDEX = "index.json"
STORE_FORMAT = 1
LEVELS = ("user", "segment")


def adapter_key(level: str, value: Any, column: str | None = None) -> str:
    """The store key of a user's adapter (``user:42``) or a segment's (``segment:region=north``)."""
    if level not in LEVELS:
        raise ConfigError(f"must be one of {', '.join(LEVELS)}, got {level!r}", key="level")
    if level == "segment":
        if not column:
            raise ConfigError("a segment adapter needs its column name", key="segment_column")
        return f"segment:{column}={value}"
    return f"user:{value}"


@dataclass(frozen=True)
class Route:
    """Which model answers a request: ``level`` is ``"user"``, ``"segment"`` or ``"shared"``."""

    level: str
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "key": self.key}


class AdapterStore:
    """Adapters of one shared model, kept in ``folder``.

    Parameters
    ----------
    folder:
        Where the index and the adapter files live (created on first write).
    base_fingerprint:
        Identifies the shared model. A store written for another model is refused.
    """

    def __init__(self, folder: str | os.PathLike[str], base_fingerprint: str) -> None:
        self.folder = Path(folder)
        self.base_fingerprint = base_fingerprint
        self._index: dict[str, Any] = {"format": STORE_FORMAT, "base_fingerprint": base_fingerprint, "adapters": {}}
        self._stamp: tuple[int, int] | None = None
        self._deferred = False
        self._unlink: list[str] = []
        self._read_index()

    def _index_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.folder / INDEX).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Re-read the index if another writer changed it since; ``True`` if it did.

        Cheap (one ``stat``): a server calls it before each batch, so adapters added,
        replaced or deleted by ``tunesmith personalize --users`` serve without a restart.
        """
        if self._index_stamp() == self._stamp:
            return False
        self._read_index()
        return True

    def _read_index(self) -> None:
        path = self.folder / INDEX
        stamp = self._index_stamp()
        base_fingerprint = self.base_fingerprint
        if path.is_file():
            try:
                index = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ArtifactError(f"{INDEX} cannot be read: {exc}", path=self.folder) from None
            if index.get("format") != STORE_FORMAT or not isinstance(index.get("adapters"), dict):
                raise ArtifactError(f"{INDEX} is not an adapter store of format {STORE_FORMAT}", path=self.folder)
            if index.get("base_fingerprint") != base_fingerprint:
                raise ArtifactError(
                    "these adapters were trained on a different shared model",
                    path=self.folder,
                    hint="Use the shared model they were built for, or retrain them with tunesmith personalize",
                )
            self._index = index
        self._stamp = stamp

    # --- reading ---------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self._index["adapters"]

    def __len__(self) -> int:
        return len(self._index["adapters"])

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._index["adapters"]))

    def info(self, key: str) -> dict[str, Any]:
        """What the index records about ``key`` (kind, bytes, rows, validation scores, whether it is used)."""
        try:
            return dict(self._index["adapters"][key])
        except KeyError:
            raise KeyError(f"no adapter {key!r} in the store") from None

    def load(self, key: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors."""
        entry = self.info(key)
        return load_tensors(self.folder / entry["file"])

    def route(self, user: Any = None, segment: Any = None, *, segment_column: str | None = None) -> Route:
        """The user's adapter if it exists and is used, else the segment's, else the shared model."""
        candidates = []
        if user is not None:
            candidates.append(("user", adapter_key("user", user)))
        if segment is not None and segment_column:
            candidates.append(("segment", adapter_key("segment", segment, segment_column)))
        for level, key in candidates:
            entry = self._index["adapters"].get(key)
            if entry is not None and entry.get("used", True):
                return Route(level, key)
        return Route("shared")

    # --- writing ---------------------------------------------------------------------------

    @staticmethod
    def _file_name(key: str) -> str:
        return "adapters/" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24] + ".safetensors"

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Add or replace one adapter (its file first, then the index that points to it)."""
        rel = self._file_name(key)
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, tensors, {"format": "tunesmith-adapter", "key": key})
        entry = {**json_safe(dict(meta)), "file": rel, "bytes": path.stat().st_size, "updated": _now()}
        self._index["adapters"][key] = entry
        self._write_index()

    def delete(self, key: str) -> None:
        """Remove one adapter; the others are untouched."""
        entry = self._index["adapters"].pop(key, None)
        if entry is None:
            raise KeyError(f"no adapter {key!r} in the store")
        if self._deferred:
            self._unlink.append(entry["file"])  # after the index stops naming it
        else:
            self._write_index()
            (self.folder / entry["file"]).unlink(missing_ok=True)

    @contextmanager
    def deferred(self) -> Iterator[AdapterStore]:
        """Write the index once, when the block ends, instead of after every ``put`` and ``delete``.

        For training many adapters: rewriting an index of thousands of entries after each one
        costs more than training them. Adapter files are still written at once and files of
        deleted adapters removed only after the index is written, so until the block ends a
        reader sees the previous index: the same users routed as before, a retrained adapter
        possibly already with its new weights. If the block fails, the index is still written
        for what was done.
        """
        if self._deferred:
            yield self
            return
        self._deferred = True
        try:
            yield self
        finally:
            self._deferred = False
            self._write_index()
            for rel in self._unlink:
                if rel not in {e["file"] for e in self._index["adapters"].values()}:
                    (self.folder / rel).unlink(missing_ok=True)
            self._unlink.clear()

    def _write_index(self) -> None:
        if self._deferred:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / INDEX, self._index)
        self._stamp = self._index_stamp()

    def summary(self) -> dict[str, Any]:
        """Counts by level and whether used, and the mean adapter size in bytes."""
        entries = list(self._index["adapters"].values())
        out: dict[str, Any] = {"adapters": len(entries)}
        for level in LEVELS:
            mine = [e for e in entries if e.get("level") == level]
            out[level] = {"total": len(mine), "used": sum(1 for e in mine if e.get("used", True))}
        out["mean_bytes"] = sum(e["bytes"] for e in entries) / len(entries) if entries else 0.0
        return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
