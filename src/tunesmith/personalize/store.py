"""A store of per-user and per-segment adapters beside one shared model.

One safetensors file per adapter, named by a hash of its key (user and segment ids may hold
any character), plus ``index.json`` with each adapter's kind, size, training rows and
validation scores. Adapters are added, replaced and deleted one at a time; every write is
atomic (temporary file, then rename), so a reader sees the old adapter or the new one.
The index records the fingerprint of the shared model the adapters were trained on, and
the store refuses to open against any other.

A store may come from anyone (copied from another server, say), so every read of it goes
through the trust boundary of :mod:`tunesmith.runs.trust`, when it is opened and on each
:meth:`AdapterStore.refresh` while serving:

- the whole folder is scanned by :class:`~tunesmith.runs.trust.SafeFolder`: no links, FIFOs,
  devices, code or pickles anywhere in it;
- ``index.json`` is read with a size cap and every field is type-checked; each entry must name
  the file the store itself gives that key (``adapters/<hash>.safetensors``), found by the scan;
- each adapter's safetensors header is checked against the shapes an adapter of the shared
  model has (:func:`adapter_shapes`) before any tensor is read, so a declared rank cannot make
  tunesmith allocate more than the adapter's own file.

Files are only ever written inside the store and deleted by the name the store computes from
the key, never by a name read from ``index.json``. Every refusal is an
:class:`~tunesmith.errors.ArtifactError` naming the file and the field.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.personalize.head import MAX_ADAPTER_RANK
from tunesmith.personalize.shapes import (
    ADAPTER_KINDS,
    JOINT_KEY,
    MAX_ITEMS,
    STORE_HINT,
    AdapterDims,
    adapter_shapes,
)
from tunesmith.runs.artifacts import atomic_write_json, json_safe, save_tensors
from tunesmith.runs.trust import SafeFolder, field, read_limited, safe_relative

__all__ = [
    "ADAPTER_KINDS",
    "INDEX",
    "JOINT_KEY",
    "LEVELS",
    "MAX_ADAPTER_RANK",
    "MAX_ITEMS",
    "MAX_STORE_FILES",
    "AdapterDims",
    "AdapterStore",
    "Route",
    "adapter_key",
    "adapter_shapes",
    "open_store",
]

INDEX = "index.json"
STORE_FORMAT = 1
LEVELS = ("user", "segment")
ADAPTER_DIR = "adapters"

MAX_STORE_FILES = 250_000
"""Most entries a store folder may hold: one file per user, so far more than a model folder."""

RETRY_SECONDS = 1.0
"""How long :meth:`AdapterStore.refresh` waits before reading again an index it refused."""

_OPEN_HINT = "Give a folder written by tunesmith personalize"
_SCAN_HINT = (
    "An adapter store holds only index.json, personalize.json and adapters/*.safetensors written by "
    "tunesmith personalize; remove the entry or rebuild the store"
)
_FILE_NAME = re.compile(r"adapters/[0-9a-f]{24}\.safetensors")
_READ_TRIES = 4
_MAX_ADAPTER_HEADER = 1 << 20  # names, dtypes, shapes and the key: a few hundred bytes in practice


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


def open_store(path: str | os.PathLike[str], *, marker: str | None = None) -> SafeFolder:
    """The store folder ``path`` scanned by :class:`~tunesmith.runs.trust.SafeFolder` (with ``marker`` required).

    Raises:
        ArtifactError: no such folder, ``marker`` missing, or an entry that is a link, a FIFO,
            a device, code or a pickle anywhere in it.
    """
    try:
        return SafeFolder.open(path, marker=marker, what="adapter store", hint=_OPEN_HINT, max_files=MAX_STORE_FILES)
    except ArtifactError as exc:
        # The scan's hints speak of model folders; say what an adapter store holds instead.
        hint = exc.hint if exc.hint == _OPEN_HINT else _SCAN_HINT
        raise ArtifactError(exc.message, path=exc.path, hint=hint) from None


def _entry_field(entry: Any, name: str, types: type | tuple[type, ...], *, where: str, file: Path, **kw: Any) -> Any:
    """:func:`~tunesmith.runs.trust.field` of one index entry, the refusal naming the entry as well."""
    try:
        return field(entry, name, types, file=file, **kw)
    except ArtifactError as exc:
        # field() names the field from the entry down; keys may hold dots, so they are not part of `name`.
        message = re.sub(r"^field '([^']*)'", lambda m: f"field {where + '.' + m.group(1)!r}", exc.message, count=1)
        raise ArtifactError(message, path=file, hint=exc.hint) from None


def _positive_number(entry: Any, name: str, *, where: str, file: Path, zero: bool = False) -> None:
    """A finite number above zero (or at least zero), when the field is present."""
    value = _entry_field(entry, name, float, where=where, file=file, default=None)
    if value is not None and not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
        bound = "at least 0" if zero else "above 0"
        raise ArtifactError(f"field {where + '.' + name!r} must be a finite number {bound}, got {value!r}", path=file)


def _check_joint(
    entries: Mapping[str, Any], shapes: Mapping[str, Mapping[str, tuple[int, ...]]], safe: SafeFolder, file: Path
) -> None:
    """Joint vectors need the store's shared part, of their rank: one that does not fit it would fail
    the whole batch its rows are served in."""
    vectors = [k for k in entries if k != JOINT_KEY and "u" in shapes[k]]
    if vectors and JOINT_KEY not in entries:
        raise ArtifactError(
            f"field 'adapters[{_shown_key(vectors[0])!r}]' holds a joint adapter, but the store has no "
            f"{JOINT_KEY!r} entry (what joint adapters share)",
            path=file,
            hint=STORE_HINT,
        )
    if not vectors:
        return
    rank = shapes[JOINT_KEY]["W"][1]
    for key in vectors:
        if shapes[key]["u"][0] != rank:
            raise ArtifactError(
                f"field 'adapters[{_shown_key(key)!r}]': tensor 'u' has rank {shapes[key]['u'][0]}, but the "
                f"store's joint model has rank {rank}",
                path=safe.root / entries[key]["file"],
                hint=STORE_HINT,
            )


def _shown_key(key: str) -> str:
    return key if len(key) <= 60 else key[:57] + "..."


class AdapterStore:
    """Adapters of one shared model, kept in ``folder``.

    Parameters
    ----------
    folder:
        Where the index and the adapter files live (created on first write).
    base_fingerprint:
        Identifies the shared model. A store written for another model is refused.
    dims:
        The widths of the shared model's adapters: each adapter file's header is checked
        against them when the store is read and before an adapter is loaded. Without them
        only the tensors' agreement with each other is checked.

    Raises:
        ArtifactError: the folder or its index is refused (see the module's description).
    """

    def __init__(
        self, folder: str | os.PathLike[str], base_fingerprint: str, *, dims: AdapterDims | None = None
    ) -> None:
        self.folder = Path(folder)
        self.base_fingerprint = base_fingerprint
        self.dims = dims
        self._index: dict[str, Any] = self._empty()
        self._safe: SafeFolder | None = None
        self._stamp: tuple[int, ...] | None = None
        self._failed: tuple[tuple[int, ...] | None, float] | None = None
        self._deferred = False
        self._unlink: list[str] = []
        self._read_index()

    def _empty(self) -> dict[str, Any]:
        return {"format": STORE_FORMAT, "base_fingerprint": self.base_fingerprint, "adapters": {}}

    def _index_stamp(self) -> tuple[int, ...] | None:
        # lstat: a link in place of the index is seen as a change (and refused by the scan), never followed.
        try:
            st = os.lstat(self.folder / INDEX)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size

    def _tree_stamp(self) -> tuple[Any, ...]:
        """The index's stamp and the times the store and its adapters folder last had entries added or removed."""
        times: list[int | None] = []
        for path in (self.folder, self.folder / ADAPTER_DIR):
            try:
                times.append(os.stat(path).st_mtime_ns)
            except OSError:
                times.append(None)
        return (self._index_stamp(), *times)

    def refresh(self) -> bool:
        """Re-read the index if another writer changed it since; ``True`` if it did.

        Cheap when nothing changed (one ``lstat``): a server calls it before each batch, so
        adapters added, replaced or deleted by ``tunesmith personalize --users`` serve without
        a restart. A changed store is read through all the checks of a first open; if it is
        refused, the index read before stays in force and the refusal is raised (and tried
        again at most every :data:`RETRY_SECONDS` while the index stays the same).

        Raises:
            ArtifactError: the changed store is refused.
        """
        stamp = self._index_stamp()
        if stamp == self._stamp:
            return False
        failed = self._failed
        if failed is not None and failed[0] == stamp and time.monotonic() - failed[1] < RETRY_SECONDS:
            return False
        try:
            self._read_index()
        except ArtifactError:
            self._failed = (stamp, time.monotonic())
            raise
        self._failed = None
        return True

    def _read_index(self) -> None:
        """Scan the folder and read the index; on success only, they replace what was read before."""
        for attempt in range(_READ_TRIES):
            before = self._tree_stamp()
            try:
                safe, index = self._load()
            except ArtifactError:
                # A writer renaming or deleting files while the folder was scanned (a temporary
                # file gone before it was opened) does not make a bad store: read it again.
                if attempt + 1 < _READ_TRIES and self._tree_stamp() != before:
                    time.sleep(0.01 * (attempt + 1))
                    continue
                raise
            self._safe, self._index, self._stamp = safe, index, before[0]
            return

    def _load(self) -> tuple[SafeFolder | None, dict[str, Any]]:
        try:
            os.stat(self.folder)
        except FileNotFoundError:
            return None, self._empty()  # a new store: the folder is created on the first write
        except OSError as exc:
            raise ArtifactError(f"cannot open the adapter store: {exc.strerror or exc}", path=self.folder) from None
        safe = open_store(self.folder)
        if not safe.has(INDEX):
            if os.path.lexists(self.folder / INDEX):  # the scan took it for a folder
                raise ArtifactError(f"{INDEX} is a folder, not a file", path=self.folder, hint=_SCAN_HINT)
            return safe, self._empty()
        file = safe.root / INDEX
        data = safe.read_json(INDEX)
        fmt = field(data, "format", int, file=file)
        if fmt != STORE_FORMAT:
            raise ArtifactError(
                f"field 'format' is {fmt}: not an adapter store of format {STORE_FORMAT}",
                path=file,
                hint="Rebuild the store with this tunesmith version (tunesmith personalize)",
            )
        fingerprint = field(data, "base_fingerprint", str, file=file)
        if fingerprint != self.base_fingerprint:
            raise ArtifactError(
                "field 'base_fingerprint' is not the shared model's: these adapters were trained on a different "
                "shared model",
                path=file,
                hint="Use the shared model they were built for, or retrain them with tunesmith personalize",
            )
        adapters = field(data, "adapters", dict, file=file)
        entries: dict[str, Any] = {}
        shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, entry in adapters.items():
            entries[key], shapes[key] = self._checked_entry(key, entry, safe, file)
        _check_joint(entries, shapes, safe, file)
        return safe, {**data, "format": STORE_FORMAT, "base_fingerprint": fingerprint, "adapters": entries}

    def _check_entry(self, key: str, entry: Any, safe: SafeFolder, file: Path) -> dict[str, Any]:
        """One index entry, every field typed and its file the store's own, present and of the right shapes."""
        return self._checked_entry(key, entry, safe, file)[0]

    def _checked_entry(
        self, key: str, entry: Any, safe: SafeFolder, file: Path
    ) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
        """:meth:`_check_entry` and the shapes its file's header gives its tensors."""
        where = f"adapters[{_shown_key(key)!r}]"
        if not isinstance(entry, dict):
            raise ArtifactError(
                f"field {where!r} must be a JSON object, got {type(entry).__name__}", path=file, hint=STORE_HINT
            )
        raw = _entry_field(entry, "file", str, where=where, file=file)
        rel = safe_relative(raw, file=file, field=f"{where}.file").as_posix()
        version = _entry_field(entry, "id", str, where=where, file=file) if key == JOINT_KEY else None
        own = self._file_name(key, version)
        if rel != own:
            # Only the store's own name for the key: an index cannot point one user at another's
            # file, nor a delete at anything the store did not write.
            raise ArtifactError(
                f"field {where + '.file'!r} is {raw[:80]!r}, but the store names this adapter's file {own!r}",
                path=file,
                hint=STORE_HINT,
            )
        if not safe.has(own):
            raise ArtifactError(
                f"field {where + '.file'!r} names {own}, which is not in the store", path=file, hint=STORE_HINT
            )
        kind, shapes = adapter_shapes(safe.header(own), self.dims, file=safe.root / own)
        kw: dict[str, Any] = {"where": where, "file": file}
        if (kind == "joint_shared") != (key == JOINT_KEY):
            raise ArtifactError(
                f"field {where!r} holds {'what joint adapters share' if key != JOINT_KEY else 'a single adapter'}; "
                f"only {JOINT_KEY!r} holds the shared part of joint adapters",
                path=file,
                hint=STORE_HINT,
            )
        if key == JOINT_KEY:
            items = _entry_field(entry, "items", list, **kw)
            if len(items) != shapes["Q"][0] or not all(isinstance(v, str) for v in items):
                raise ArtifactError(
                    f"field {where + '.items'!r} must list {shapes['Q'][0]:,} item ids (strings), one per row of Q",
                    path=file,
                    hint=STORE_HINT,
                )
        _entry_field(entry, "kind", str, default=None, choices=ADAPTER_KINDS, **kw)
        _entry_field(entry, "level", str, default=None, choices=LEVELS, **kw)
        _entry_field(entry, "used", bool, default=True, **kw)
        for name in ("bytes", "rows_train", "rows_valid"):
            _entry_field(entry, name, int, default=0, low=0, **kw)
        _entry_field(entry, "updated", str, default=None, **kw)
        _entry_field(entry, "validation", dict, default=None, **kw)
        if _entry_field(entry, "settings", dict, default=None, **kw) is not None:
            _entry_field(entry, "settings.rank", int, default=None, low=0, high=MAX_ADAPTER_RANK, **kw)
            _entry_field(entry, "settings.steps", int, default=None, low=1, **kw)
            for name in ("alpha", "lr"):
                _positive_number(entry, f"settings.{name}", **kw)
            _positive_number(entry, "settings.l2", zero=True, **kw)
        return {**entry, "file": own}, shapes

    # --- reading ---------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self._index["adapters"]

    def __len__(self) -> int:
        """Adapters of users and segments (the shared part of joint adapters is not one)."""
        return len(self._index["adapters"]) - (JOINT_KEY in self._index["adapters"])

    def __iter__(self) -> Iterator[str]:
        """Keys of the users' and segments' adapters, sorted (``JOINT_KEY in store`` says if it has a shared part)."""
        return iter(sorted(k for k in self._index["adapters"] if k != JOINT_KEY))

    def info(self, key: str) -> dict[str, Any]:
        """What the index records about ``key`` (kind, bytes, rows, validation scores, whether it is used)."""
        try:
            return dict(self._index["adapters"][key])
        except KeyError:
            raise KeyError(f"no adapter {key!r} in the store") from None

    def load(self, key: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors (on the CPU).

        The file's header is checked against :func:`adapter_shapes` before a tensor is read:
        the file decides the kind (it is what will run, even if the index read is older than it).

        Raises:
            KeyError: no such adapter in the index.
            ArtifactError: the file is missing, refused or of the wrong shapes.
        """
        path, data, expected = self._read(key)
        try:
            from safetensors.torch import load as load_safetensors

            tensors = load_safetensors(data)
        except Exception as exc:  # safetensors raises its own error type for corrupt files
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise ArtifactError(f"cannot be read as safetensors: {first}", path=path, hint=STORE_HINT) from None
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != expected or not all(t.is_floating_point() for t in tensors.values()):
            raise ArtifactError("changed while it was read", path=path, hint="Try again")
        if "scale" in tensors:
            scale = float(tensors["scale"])
            if not (math.isfinite(scale) and scale > 0):
                raise ArtifactError(
                    f"tensor 'scale' is {scale}; a LoRA adapter's scale is a positive number",
                    path=path,
                    hint=STORE_HINT,
                )
        return tensors

    def _read(self, key: str) -> tuple[Path, bytes, dict[str, tuple[int, ...]]]:
        """The adapter file's path, its bytes and the shapes its checked header gives its tensors."""
        rel = self.info(key)["file"]
        safe = self._safe
        if safe is None:
            raise ArtifactError(f"{rel} is missing", path=self.folder, hint=STORE_HINT)
        path = safe.root / rel
        _, expected = adapter_shapes(safe.header(rel), self.dims, file=path)
        # The bytes are read through one no-follow, non-blocking open, at most what the checked
        # shapes justify, and parsed from memory: a file swapped since its header was read (for a
        # link, a FIFO or a larger file) is refused, never followed, waited on or allocated.
        limit = _MAX_ADAPTER_HEADER + 8 + 8 * sum(math.prod(shape) for shape in expected.values())
        return path, read_limited(path, limit=limit, shown=rel), expected

    def copy_into(self, folder: str | os.PathLike[str]) -> str:
        """Write this store, as this process read it, into the new (or empty) ``folder``; return its id.

        Each adapter file the index names is copied byte for byte (read as :meth:`load` reads
        it) and the index goes last. Nothing is written to this store's own folder. The id,
        ``sha256:`` and a digest of the shared model's fingerprint and each adapter's key, used
        flag and bytes, names what was copied (a refit records it as its parent).

        Raises:
            ArtifactError: ``folder`` holds anything, or an adapter file is refused or changed
                since the index was read.
        """
        target = Path(folder)
        if os.path.lexists(target) and (not target.is_dir() or target.is_symlink() or any(target.iterdir())):
            raise ArtifactError("is not a new, empty folder", path=target, hint="Copy the store into a new folder")
        (target / ADAPTER_DIR).mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(self.base_fingerprint.encode("utf-8"))
        for key in sorted(self._index["adapters"]):
            entry = self._index["adapters"][key]
            path, data, _ = self._read(key)
            if len(data) != entry.get("bytes", len(data)):
                raise ArtifactError("changed while the store was copied", path=path, hint="Try again")
            with open(target / entry["file"], "xb") as out:
                out.write(data)
            used = entry.get("used", True)
            digest.update(f"{key}\0{used}\0{hashlib.sha256(data).hexdigest()}\n".encode())
        atomic_write_json(target / INDEX, self._index)
        return "sha256:" + digest.hexdigest()

    def route(self, user: Any = None, segment: Any = None, *, segment_column: str | None = None) -> Route:
        """The user's adapter if it exists and is used, else the segment's, else the shared model."""
        candidates = []
        if user is not None:
            candidates.append(("user", adapter_key("user", user)))
        if segment is not None and segment_column:
            candidates.append(("segment", adapter_key("segment", segment, segment_column)))
        shared = self._index["adapters"].get(JOINT_KEY, {}).get("id")
        for level, key in candidates:
            entry = self._index["adapters"].get(key)
            # A joint vector of another shared part (left by an earlier fit) is not used: the
            # row falls back as if the user had none.
            stale = entry is not None and entry.get("kind") == "joint" and entry.get("joint") != shared
            if entry is not None and entry.get("used", True) and not stale:
                return Route(level, key)
        return Route("shared")

    # --- writing ---------------------------------------------------------------------------

    @staticmethod
    def _file_name(key: str, version: str | None = None) -> str:
        """The one file the store names for ``key``; what joint adapters share gets a file per version.

        A new shared part is written beside the old one, not over it: a reader of the old index
        keeps reading the shared part its user vectors were trained with until the new index names
        the new file (the old one is removed after that).
        """
        name = key if version is None else f"{key}\0{version}"
        return f"{ADAPTER_DIR}/" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:24] + ".safetensors"

    def _writable(self) -> SafeFolder:
        """The store's folder and its ``adapters/`` folder, created; refused if either is not a plain folder."""
        sub = self.folder / ADAPTER_DIR
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            sub.mkdir(exist_ok=True)
            st = os.lstat(sub)
        except OSError as exc:
            raise ArtifactError(
                f"cannot create {ADAPTER_DIR}/ in the adapter store: {exc.strerror or exc}", path=self.folder
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            # mkdir(exist_ok=True) accepts a link to a folder: writing through it would write elsewhere.
            raise ArtifactError(
                f"{ADAPTER_DIR} is not a plain folder; adapters are written only inside the store",
                path=self.folder,
                hint=_SCAN_HINT,
            )
        if self._safe is None:
            self._safe = SafeFolder(self.folder.resolve(), {})
        return self._safe

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Add or replace one adapter (its file first, then the index that points to it).

        The entry is checked as a reader would check it, so the store never writes an index
        it would refuse to read.
        """
        version = meta.get("id") if key == JOINT_KEY else None
        if key == JOINT_KEY and not isinstance(version, str):
            raise ConfigError("what joint adapters share needs its id", key="id")
        rel = self._file_name(key, version)
        old = self._index["adapters"].get(key, {}).get("file")
        safe = self._writable()
        path = self.folder / rel
        save_tensors(path, tensors, {"format": "tunesmith-adapter", "key": key})
        safe.files[rel] = os.lstat(path).st_size
        entry = {**json_safe(dict(meta)), "file": rel, "bytes": safe.files[rel], "updated": _now()}
        self._index["adapters"][key] = self._check_entry(key, entry, safe, self.folder / INDEX)
        if old is not None and old != rel:
            self._unlink.append(old)  # the previous shared part, once no index names it
        self._write_index()
        if not self._deferred:
            self._flush_unlinks()

    def delete(self, key: str) -> None:
        """Remove one adapter; the others are untouched.

        The file removed is the one the store names for ``key``, never a name read from the index.
        """
        entry = self._index["adapters"].pop(key, None)
        if entry is None:
            raise KeyError(f"no adapter {key!r} in the store")
        rel = self._file_name(key, entry.get("id") if key == JOINT_KEY else None)
        if self._deferred:
            self._unlink.append(rel)  # after the index stops naming it
        else:
            self._write_index()
            self._remove(rel)

    def _remove(self, rel: str) -> None:
        """Delete one adapter file of this store: inside ``adapters/`` only, never through a link."""
        if not _FILE_NAME.fullmatch(rel):
            raise ArtifactError(f"refusing to delete {rel!r}: not an adapter file of this store", path=self.folder)
        sub, name = rel.split("/")
        if self._safe is not None:
            self._safe.files.pop(rel, None)
        try:
            if os.unlink in os.supports_dir_fd and hasattr(os, "O_DIRECTORY"):
                # The adapters folder opened without following a link: what is unlinked is in the store.
                # (unlink never follows a link in its last component.)
                flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                try:
                    fd = os.open(self.folder / sub, flags)
                except FileNotFoundError:
                    return
                try:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fd)
                finally:
                    os.close(fd)
            else:  # no dir_fd (Windows): check the folder is not a link, then unlink by path
                if os.path.islink(self.folder / sub):
                    raise OSError(f"{sub} is a link")
                (self.folder / rel).unlink(missing_ok=True)
        except OSError as exc:
            raise ArtifactError(
                f"cannot delete {rel}: {exc.strerror or exc}", path=self.folder, hint=_SCAN_HINT
            ) from None

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
            self._flush_unlinks()

    def _flush_unlinks(self) -> None:
        """Remove the files waiting for the index to stop naming them."""
        named = {e["file"] for e in self._index["adapters"].values()}
        for rel in self._unlink:
            if rel not in named:
                self._remove(rel)
        self._unlink.clear()

    def _write_index(self) -> None:
        if self._deferred:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(f"cannot create the adapter store: {exc.strerror or exc}", path=self.folder) from None
        # Replacing index.json (a rename) replaces a link in its place, never what it points to.
        atomic_write_json(self.folder / INDEX, self._index)
        self._stamp = self._index_stamp()
        if self._safe is not None and self._stamp is not None:
            self._safe.files[INDEX] = self._stamp[-1]  # its size

    def summary(self) -> dict[str, Any]:
        """Counts by level and whether used, and the mean adapter size in bytes."""
        entries = [e for k, e in self._index["adapters"].items() if k != JOINT_KEY]
        out: dict[str, Any] = {"adapters": len(entries)}
        joint = self._index["adapters"].get(JOINT_KEY)
        if joint is not None:
            out["joint_shared_bytes"] = joint.get("bytes", 0)
        for level in LEVELS:
            mine = [e for e in entries if e.get("level") == level]
            out[level] = {"total": len(mine), "used": sum(1 for e in mine if e.get("used", True))}
        out["mean_bytes"] = sum(e.get("bytes", 0) for e in entries) / len(entries) if entries else 0.0
        return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
