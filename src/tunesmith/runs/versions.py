"""A local model registry: numbered versions of one model, a champion alias, and a way back.

A registry is a folder::

    REGISTRY/
      registry.json        what it holds: the model's kind, task and labels (set by the first version)
      aliases.json         the champion and the champions before it (for rollback)
      versions/v0001/      a copy of the model folder, exactly as saved
      versions/v0001.json  its record: number, weights hash, status, when, where from, notes

Every change is made under an exclusive lock on ``REGISTRY/.lock`` (POSIX ``flock``: several
processes on one machine, or machines sharing a file system whose locks work across them) and
written atomically: a model folder is copied into a temporary sibling and renamed into place,
and a version exists only once its record is written, so a killed copy leaves nothing a reader
sees. Which version serves is held in one file, ``aliases.json``, written in one atomic step:
a version's status follows from it (``champion`` while it serves, ``retired`` once it served,
``candidate`` before), except ``rejected``, which its record keeps (kept for inspection, never
promoted, never rolled back to).

:class:`Registry` is what promotion, rollback, the gate and the command line use of a registry;
:class:`ModelRegistry` is the folder one, and ``tunesmith.runs.mlflow_registry`` keeps the same
versions in an MLflow model registry (``open_registry`` there picks one from a location).
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunesmith.errors import ArtifactError
from tunesmith.runs.artifacts import AtomicDirectory, atomic_write_json
from tunesmith.runs.fingerprint import model_version

REGISTRY_FILE = "registry.json"
ALIASES_FILE = "aliases.json"
LOCK_FILE = ".lock"
FORMAT = "tunesmith-registry"
STATUSES = ("candidate", "champion", "retired", "rejected")
_VERSION_DIR = re.compile(r"^v(\d{4,})$")
MLFLOW_SCHEME = "mlflow:"


@dataclass(frozen=True)
class Version:
    """One registered model: ``number``, its folder, the hash of its weights, and its record."""

    number: int
    path: Path
    model_version: str
    status: str
    created: str
    source: str | None = None
    kind: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "path": str(self.path),
            "model_version": self.model_version,
            "status": self.status,
            "created": self.created,
            "source": self.source,
            "kind": self.kind,
            "notes": self.notes,
        }


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot be read: {exc}", path=path, hint="Restore it from a backup") from None
    if not isinstance(data, dict):
        raise ArtifactError("is not a JSON object", path=path)
    return data


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder/.lock`` (created with the folder) while the body runs."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class Registry(Protocol):
    """The operations every registry offers, with the semantics of :class:`ModelRegistry`.

    ``path`` is the folder on this machine under which the versions' folders lie (a server
    that mounts it elsewhere reads them relative to it); ``location`` names the registry in
    messages.
    """

    path: Path
    location: str

    def identity(self) -> dict[str, Any] | None: ...

    def versions(self) -> list[Version]: ...

    def get(self, number: int) -> Version: ...

    def aliases(self) -> dict[str, Any]: ...

    def champion(self) -> Version | None: ...

    def register(
        self, model: str | os.PathLike[str], *, notes: Mapping[str, Any] | None = None, status: str = "candidate"
    ) -> Version: ...

    def annotate(self, number: int, **notes: Any) -> Version: ...

    def reject(self, number: int, reason: str) -> Version: ...

    def promote(self, number: int, *, before_commit: Callable[[Version], None] | None = None) -> Version: ...

    def rollback(self, *, before_commit: Callable[[Version], None] | None = None) -> Version: ...


def model_identity(folder: Path) -> dict[str, Any]:
    """What a registry's versions must share: kind, task and labels of ``tunesmith.json``."""
    meta_file = folder / "tunesmith.json"
    if not meta_file.is_file() and (folder / "personalize.json").is_file():
        raise ArtifactError(
            "is an adapter store of tunesmith personalize, which loads only over its shared model; "
            "a registry holds models that load on their own",
            path=folder,
            hint="Register the shared model, keep the store beside it, and refit the store with "
            "`tunesmith refit STORE NEW_DATA --base MODEL -o NEW_STORE`",
        )
    if not meta_file.is_file():
        raise ArtifactError(
            "is not a tunesmith model folder (no tunesmith.json)", path=folder, hint="Give a folder written by save()"
        )
    meta = _read_json(meta_file)
    labels = meta.get("labels")
    return {
        "kind": str(meta.get("kind") or "text"),
        "task": meta.get("task"),
        "labels": [str(x) for x in labels] if isinstance(labels, list) else None,
    }


def check_identity(known: Mapping[str, Any], new: Mapping[str, Any], source: object, location: str) -> None:
    """Refuse a model of another kind, task or label set than the registry at ``location`` holds."""
    for key in ("kind", "task", "labels"):
        if known.get(key) != new.get(key):
            raise ArtifactError(
                f"is a registry of {known.get('kind')} models ({key}: {known.get(key)!r}); "
                f"this model's {key} is {new.get(key)!r}",
                path=location,
                hint=f"Register {source} in a registry of its own",
            )


class AliasedRegistry(abc.ABC):
    """What both registries (a folder, MLflow) share: the champion alias, its history, promotion
    and rollback. A registry keeps ``{"champion", "history", "served"}`` (:meth:`aliases`) and
    writes a change with :meth:`_write_aliases`; changes run under the lock in ``path``.
    """

    path: Path
    location: str

    @abc.abstractmethod
    def versions(self) -> list[Version]: ...

    @abc.abstractmethod
    def get(self, number: int) -> Version: ...

    @abc.abstractmethod
    def aliases(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _write_aliases(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        """Make ``after`` the aliases (``before`` is what :meth:`aliases` read under the lock)."""

    def _check_new_status(self, status: str) -> None:
        if status not in ("candidate", "rejected"):
            raise ArtifactError(f"a new version is a candidate or rejected, not {status!r}", path=self.location)

    def champion(self) -> Version | None:
        """The version that serves now, or None before the first promotion."""
        number = self.aliases().get("champion")
        return None if number is None else self.get(int(number))

    def promote(self, number: int, *, before_commit: Callable[[Version], None] | None = None) -> Version:
        """Make version ``number`` the champion; the one before goes into the history.

        ``before_commit`` runs under the lock once the version is checked, before the alias
        changes (a server's hot reload): when it raises, nothing changes.

        Raises:
            ArtifactError: no such version, it was rejected, or (MLflow) its download does not match.
        """
        with locked(self.path):
            v = self.get(number)
            if v.status == "rejected":
                raise ArtifactError(
                    f"version {number} was rejected ({v.notes.get('rejected_because', 'no reason recorded')}) "
                    "and is never served",
                    path=self.location,
                )
            aliases = self.aliases()
            current = aliases.get("champion")
            if before_commit is not None:
                before_commit(v)
            if current == number:
                return v
            history = [int(n) for n in aliases.get("history") or []]
            if current is not None:
                history.append(int(current))
            served = sorted({*(int(n) for n in aliases.get("served") or []), number})
            self._write_aliases(aliases, {"champion": number, "history": history, "served": served})
            return self.get(number)

    def rollback(self, *, before_commit: Callable[[Version], None] | None = None) -> Version:
        """Make the latest earlier champion that is not rejected the champion again.

        Raises:
            ArtifactError: there is no earlier champion to go back to.
        """
        with locked(self.path):
            aliases = self.aliases()
            history = [int(n) for n in aliases.get("history") or []]
            rejected = {v.number for v in self.versions() if v.status == "rejected"}
            while history and history[-1] in rejected:
                history.pop()  # a version rejected since it served is never served again
            if not history:
                raise ArtifactError("has no earlier champion to roll back to", path=self.location)
            previous = self.get(history.pop())
            if before_commit is not None:
                before_commit(previous)
            served = aliases.get("served") or []
            self._write_aliases(aliases, {"champion": previous.number, "history": history, "served": served})
            return self.get(previous.number)


class ModelRegistry(AliasedRegistry):
    """The registry at ``path`` (created on the first :meth:`register`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if os.fspath(path).startswith(MLFLOW_SCHEME):
            # Path() would fold the URI's slashes and a later register() make a folder of it.
            raise ArtifactError(
                "names an MLflow registry, not a folder",
                path=path,
                hint="Open it with tunesmith.runs.mlflow_registry.open_registry()",
            )
        self.path = Path(path)
        self.location = str(self.path)
        self.versions_dir = self.path / "versions"
        if self.path.exists():
            if not self.path.is_dir():
                raise ArtifactError("is not a folder", path=self.path, hint="Give a registry folder")
            if not (self.path / REGISTRY_FILE).is_file() and any(p.name != LOCK_FILE for p in self.path.iterdir()):
                raise ArtifactError(
                    f"is not a model registry (no {REGISTRY_FILE})",
                    path=self.path,
                    hint="Give an empty or new folder, or a registry tunesmith made",
                )

    # --- locking ---------------------------------------------------------------------------

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.path)

    # --- reading ---------------------------------------------------------------------------

    def identity(self) -> dict[str, Any] | None:
        """The kind, task and labels every version shares, or None for an empty registry."""
        file = self.path / REGISTRY_FILE
        return _read_json(file) if file.is_file() else None

    def versions(self) -> list[Version]:
        """Every complete version, oldest first (a copy still being written is not one)."""
        if not self.versions_dir.is_dir():
            return []
        aliases = self.aliases()
        found = []
        for record in self.versions_dir.glob("v*.json"):
            match = _VERSION_DIR.match(record.stem)
            folder = self.versions_dir / record.stem
            if match and folder.is_dir():
                found.append(self._version(record, folder, aliases))
        return sorted(found, key=lambda v: v.number)

    def _version(self, record: Path, folder: Path, aliases: Mapping[str, Any]) -> Version:
        data = _read_json(record)
        number = int(data["number"])
        if data.get("status") == "rejected":
            status = "rejected"
        elif aliases.get("champion") == number:
            status = "champion"
        elif number in (aliases.get("served") or []):
            status = "retired"
        else:
            status = "candidate"
        return Version(
            number=number,
            path=folder,
            model_version=str(data["model_version"]),
            status=status,
            created=str(data["created"]),
            source=data.get("source"),
            kind=data.get("kind"),
            notes=dict(data.get("notes") or {}),
        )

    def get(self, number: int) -> Version:
        """Version ``number``.

        Raises:
            ArtifactError: there is no such version.
        """
        for v in self.versions():
            if v.number == number:
                return v
        known = ", ".join(str(v.number) for v in self.versions()) or "none"
        raise ArtifactError(f"has no version {number} (versions: {known})", path=self.path)

    def aliases(self) -> dict[str, Any]:
        """``{"champion": n or None, "history": [earlier champions, oldest first], "served": [all]}``."""
        file = self.path / ALIASES_FILE
        return _read_json(file) if file.is_file() else {"champion": None, "history": [], "served": []}

    # --- changing --------------------------------------------------------------------------

    def register(
        self, model: str | os.PathLike[str], *, notes: Mapping[str, Any] | None = None, status: str = "candidate"
    ) -> Version:
        """Copy the model folder ``model`` in as the next version.

        Raises:
            ArtifactError: ``model`` is no model folder, or one of another kind, task or
                label set than the registry holds (it says which).
        """
        self._check_new_status(status)
        source = Path(model)
        identity = model_identity(source)
        with self._locked():
            known = self.identity()
            if known is not None:
                check_identity(known, identity, source, self.location)
            number = 1 + max((v.number for v in self.versions()), default=0)
            # A copy left by a killed writer under this number is not a version: start afresh.
            leftover = self.versions_dir / f"v{number:04d}"
            if leftover.exists() and not (self.versions_dir / f"v{number:04d}.json").exists():
                shutil.rmtree(leftover)
            try:
                with AtomicDirectory(leftover, overwrite=False, marker=None) as tmp:
                    shutil.copytree(source, tmp, dirs_exist_ok=True, symlinks=False)
            except (OSError, shutil.Error) as exc:
                raise ArtifactError(f"cannot be copied into the registry: {exc}", path=source) from None
            if known is None:
                atomic_write_json(self.path / REGISTRY_FILE, {"format": FORMAT, "version": 1, **identity})
            record = {
                "number": number,
                # The hash of what was copied, not of a source that may change meanwhile.
                "model_version": model_version(leftover),
                "status": status,
                "created": _now(),
                "source": str(source.resolve()),
                "kind": identity["kind"],
                "notes": dict(notes or {}),
            }
            atomic_write_json(self.versions_dir / f"v{number:04d}.json", record)
            return self.get(number)

    def _write_record(self, number: int, *, rejected: bool | None = None, **notes: Any) -> None:
        record = self.versions_dir / f"v{number:04d}.json"
        data = _read_json(record)
        if rejected is not None:
            data["status"] = "rejected" if rejected else "candidate"
        if notes:
            data["notes"] = {**(data.get("notes") or {}), **notes}
        atomic_write_json(record, data)

    def annotate(self, number: int, **notes: Any) -> Version:
        """Add ``notes`` to version ``number``'s record (a gate decision, a data fingerprint)."""
        with self._locked():
            self.get(number)
            self._write_record(number, **notes)
            return self.get(number)

    def reject(self, number: int, reason: str) -> Version:
        """Mark version ``number`` rejected (kept, never promoted); the reason goes into its notes."""
        with self._locked():
            v = self.get(number)
            if v.status == "champion":
                raise ArtifactError(f"version {number} serves now; roll back before rejecting it", path=self.path)
            self._write_record(number, rejected=True, rejected_because=reason)
            return self.get(number)

    def _write_aliases(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / ALIASES_FILE, dict(after))
