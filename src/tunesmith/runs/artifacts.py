"""Safe, atomic model folders: JSON and safetensors only, written whole or not at all.

Loading a pickle runs arbitrary code, so a tunesmith model folder never holds one and
:func:`check_safe_model_dir` refuses any folder that does, judged both by file suffix
and by content (a renamed pickle is still a pickle). Every file is written to a
temporary name and renamed into place, and a whole model folder is built in a
temporary sibling folder and renamed at the end (:class:`AtomicDirectory`), so an
interrupted save never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from tunesmith.errors import ArtifactError
from tunesmith.runs.trust import UNSAFE_SUFFIXES, SafeFolder, load_safetensors

if TYPE_CHECKING:
    import torch

__all__ = [
    "MODEL_INFO_FILE",
    "UNSAFE_SUFFIXES",
    "AtomicDirectory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_safe_model_dir",
    "fsync_dir",
    "json_safe",
    "load_tensors",
    "save_tensors",
]

MODEL_INFO_FILE = "tunesmith.json"
"""The file every tunesmith model folder holds; also marks a folder as safe to overwrite."""

_FILE_MODE = 0o644
_DIR_MODE = 0o755


# --- JSON ------------------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that :func:`json.dumps` accepts with ``allow_nan=False``.

    NaN and ±inf become ``None``; numpy scalars and arrays (and torch tensors) become
    Python numbers and lists; tuples and sets become lists; dictionary keys become
    strings; paths become strings; enums their value; dates ISO strings. Other objects
    are left alone, so :func:`json.dumps` still fails loudly on them.
    """
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, float):  # includes numpy.float64, a float subclass
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, Mapping):
        return {(k if isinstance(k, str) else str(json_safe(k))): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [json_safe(v) for v in items]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return json_safe(obj.value)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    # numpy scalars/arrays and torch tensors, without importing either here
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        obj = obj.detach().cpu()
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return json_safe(obj.item())
    return obj


# --- atomic files ----------------------------------------------------------------------------


def fsync_dir(folder: Path) -> None:
    """Persist a rename (POSIX); a no-op where directories cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never a part.

    The data goes to a temporary file in the same folder, is flushed to disk and then
    renamed over ``path``. Missing parent folders are created. Returns the path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; model folders are meant to be shared
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``json_safe(obj)`` as JSON (sorted keys, indent 2, no NaN) atomically."""
    text = json.dumps(json_safe(obj), sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


class AtomicDirectory:
    """Build a folder in a temporary sibling and rename it into place on success.

    ::

        with AtomicDirectory("model", overwrite=False) as tmp:
            (tmp / "tunesmith.json").write_text("{}")

    The body writes into ``tmp`` (a :class:`~pathlib.Path`). When it returns, ``tmp`` is
    renamed to the final path; when it raises, ``tmp`` is deleted and an existing
    final folder is left untouched.

    Args:
        final_path: the folder to create.
        overwrite: replace an existing folder. The old one is moved aside first and
            deleted only after the new one is in place.
        marker: with ``overwrite``, an existing *non-empty* folder is replaced only if
            it holds this file, so that ``overwrite=True`` on a wrong path (``.``, a
            home folder) cannot delete unrelated data. ``None`` disables the check.

    Raises:
        ArtifactError: the folder exists and ``overwrite`` is false, the path is a
            file, or the existing folder does not hold ``marker``.
    """

    def __init__(
        self,
        final_path: str | os.PathLike[str],
        overwrite: bool = False,
        *,
        marker: str | None = MODEL_INFO_FILE,
    ) -> None:
        self.final = Path(final_path)
        self.overwrite = overwrite
        self.marker = marker
        self.tmp: Path | None = None

    def _check_target(self) -> None:
        final = self.final
        if not (final.exists() or final.is_symlink()):
            return
        if not final.is_dir() or final.is_symlink():
            raise ArtifactError("already exists and is not a folder", path=final, hint="Choose another folder")
        if not self.overwrite:
            raise ArtifactError("already exists", path=final, hint="pass overwrite=True or choose another folder")
        if self.marker and not (final / self.marker).is_file() and any(final.iterdir()):
            raise ArtifactError(
                f"refusing to overwrite a folder that holds no {self.marker} (it does not look like one "
                "tunesmith wrote)",
                path=final,
                hint="Choose a new or empty folder",
            )

    def __enter__(self) -> Path:
        # fail before the (possibly long) body runs, not only after it
        self._check_target()
        parent = self.final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=parent))
        except OSError as exc:
            raise ArtifactError(
                f"cannot create a folder here: {exc.strerror or exc}",
                path=self.final,
                hint="Choose a writable location",
            ) from None
        return self.tmp

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        tmp = self.tmp
        assert tmp is not None, "AtomicDirectory used without entering it"
        self.tmp = None
        if exc_type is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        try:
            self._check_target()
            _fsync_tree(tmp)
            os.chmod(tmp, _DIR_MODE)  # mkdtemp makes 0700 folders
            final = self.final
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                aside = old / final.name
                os.rename(final, aside)
                try:
                    os.rename(tmp, final)
                except BaseException:
                    os.rename(aside, final)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
            fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return False


def _fsync_tree(folder: Path) -> None:
    """Flush every file in ``folder`` so the final rename never exposes unwritten data."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


# --- safety checks ---------------------------------------------------------------------------


def check_safe_model_dir(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a tunesmith model folder that is safe to load; return it as a Path.

    The checks are :meth:`tunesmith.runs.trust.SafeFolder.open`'s: no pickle (any protocol,
    by suffix or content, inside a zip or after a safetensors header), no code, and nothing
    but regular files and folders (no links, FIFOs or devices). Loaders that read files
    should use the :class:`~tunesmith.runs.trust.SafeFolder` it returns instead.

    Raises:
        ArtifactError: the folder is missing, lacks ``tunesmith.json``, or holds such a file.
    """
    return SafeFolder.open(path).root


# --- tensors ---------------------------------------------------------------------------------


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` to a safetensors file, atomically.

    Tensors are moved to the CPU and made contiguous; tensors that share memory with
    another (tied weights) or view part of a larger buffer are cloned, because
    safetensors stores each tensor's own bytes. Metadata values are stringified.
    """
    from safetensors.torch import save_file

    target = Path(path)
    seen: set[int] = set()
    clean: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if t.numel():
            seen.add(ptr)
        clean[str(name)] = t
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(clean, tmp_name, metadata=meta or None)
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return target


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU once its header passed :func:`~tunesmith.runs.trust.load_safetensors`.

    Raises:
        ArtifactError: the file is missing, a link, not a regular file or not valid safetensors.
    """
    source = Path(path)
    if not (source.is_file() or source.is_symlink()):
        raise ArtifactError(
            "weights file is missing",
            path=source,
            hint="Pass the folder written by `tunesmith fit` or FineTuner.save",
        )
    return load_safetensors(source)
