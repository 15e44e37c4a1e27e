"""The trust boundary of every folder tunesmith loads: model folders, adapter stores, exports.

A folder handed to :func:`tunesmith.load`, ``tunesmith predict`` or ``tunesmith serve`` may
come from anyone. Opening it through :class:`SafeFolder` guarantees, before any library sees
a byte of it:

- **No code**: no pickle (any protocol, any suffix, inside a zip or after a safetensors
  header), no Python source or compiled module, no configuration that names custom code
  (``auto_map``); tunesmith's own loaders pass ``trust_remote_code=False`` and
  ``local_files_only=True`` so no library ever asks on the terminal.
- **Nothing outside**: every entry is a regular file or a folder; symbolic links, FIFOs,
  devices and sockets are refused wherever they are, and every path named inside a file
  (:meth:`SafeFolder.file`) is relative, free of ``..`` and stays inside.
- **Bounded resources**: the folder's file count and size are capped, JSON files are read
  only up to a size cap, and safetensors headers are parsed without reading the tensors so
  declared shapes can be checked against them before anything is allocated
  (:func:`check_state_shapes`).

Every refusal is an :class:`~tunesmith.errors.ArtifactError` naming the file and, where it
applies, the field.

The checks live in :mod:`~tunesmith.runs.json_strict` (strict JSON, typed fields),
:mod:`~tunesmith.runs.safe_paths` (paths and plain reads), :mod:`~tunesmith.runs.safetensors_check`
(weights files) and :mod:`~tunesmith.runs.isolate` (native libraries in a child process); every
name stays importable from here.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickletools
import stat
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ArtifactError
from tunesmith.runs.isolate import ChildRun, run_isolated, signal_name
from tunesmith.runs.json_strict import UNTRUSTED_HINT as _UNTRUSTED_HINT
from tunesmith.runs.json_strict import _json_name, _json_type, field, malformed, parse_json
from tunesmith.runs.safe_paths import MAX_PATH_CHARS, _kind_of, open_regular, read_limited, safe_relative
from tunesmith.runs.safetensors_check import (
    MAX_SAFETENSORS_HEADER,
    TensorInfo,
    check_state_shapes,
    load_safetensors,
    meta_shapes,
    read_safetensors_header,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "CODE_SUFFIXES",
    "MAX_FILES",
    "MAX_JSON_BYTES",
    "MAX_PATH_CHARS",
    "MAX_SAFETENSORS_HEADER",
    "MODEL_KINDS",
    "UNSAFE_SUFFIXES",
    "ChildRun",
    "SafeFolder",
    "TensorInfo",
    "check_state_shapes",
    "field",
    "load_safetensors",
    "malformed",
    "meta_shapes",
    "open_model",
    "open_regular",
    "parse_json",
    "pickle_reason",
    "read_json_file",
    "read_limited",
    "read_safetensors_header",
    "refuse_custom_code",
    "run_isolated",
    "safe_relative",
    "signal_name",
]

MAX_FILES = 10_000
"""Most entries (files and folders) a loaded folder may hold."""

MAX_JSON_BYTES = 64 * 1024 * 1024
"""Largest JSON file read from a folder (tokenizers of large vocabularies reach tens of MB)."""

CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".pyd", ".so", ".dylib", ".dll", ".sh", ".exe"})
"""Suffixes of files that hold code; a folder tunesmith loads never needs one."""

UNSAFE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".ckpt", ".npy", ".npz"})
"""Suffixes of formats that can carry pickled (code-running) objects: torch, joblib, NumPy."""

_PICKLE_HINT = "tunesmith models hold only safetensors and JSON; re-save it with the estimator's save()"

# Opcodes that import or call something: a pickle that uses them runs code when loaded.
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"})
_IMPORT_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST"})
_PICKLE_SCAN_BYTES = 1 << 20


def read_json_file(path: str | os.PathLike[str], *, limit: int = MAX_JSON_BYTES, expect: type | None = dict) -> Any:
    """A JSON file read through :func:`read_limited`; ``expect`` checks the top-level type."""
    p = Path(path)
    value = parse_json(read_limited(p, limit=limit), path=p, shown=p.name)
    if expect is not None and not isinstance(value, expect):
        raise ArtifactError(f"{p.name} must hold a JSON {_json_type(expect)}, got {_json_name(value)}", path=p)
    return value


# --- custom code in Hugging Face configurations -------------------------------------------------------

_FILE_KEYS = ("_file", "_files", "_path", "_dir")
# Written by transformers into every configuration as a record of where it came from; a load
# from a folder never opens them.
_INFO_KEYS = frozenset({"_name_or_path", "name_or_path"})
_LABEL_MAPS = frozenset({"id2label", "label2id"})


def refuse_custom_code(config: Mapping[str, Any], *, file: str | os.PathLike[str]) -> None:
    """Refuse a transformers configuration that names custom code or files elsewhere.

    ``auto_map`` (and ``custom_pipelines``) make transformers import Python files from the
    folder; any ``*_file``/``*_files``/``*_path`` entry would make it read another path
    than the folder's own files, which tunesmith never writes. Nested configurations (a
    text config inside a composite one, a special token's settings) are checked the same
    way; label maps (``id2label``, ``label2id``) hold user names, not settings, and are not.
    """
    for key in ("auto_map", "custom_pipelines"):
        if config.get(key):
            raise ArtifactError(
                f"field {key!r} names custom code; tunesmith never runs code from a model folder",
                path=file,
                hint=_UNTRUSTED_HINT,
            )
    for key, value in config.items():
        if key in _INFO_KEYS:
            continue
        if isinstance(key, str) and key.endswith(_FILE_KEYS) and value not in (None, "", [], {}):
            raise ArtifactError(
                f"field {key!r} names a file ({str(value)[:80]!r}); a loaded folder's files are found by their "
                "standard names only",
                path=file,
                hint=_UNTRUSTED_HINT,
            )
        if isinstance(value, dict) and key not in _LABEL_MAPS:
            refuse_custom_code(value, file=file)


# --- pickles and code ------------------------------------------------------------------------------------


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _pickle_program(data: bytes) -> str | None:
    """Why ``data`` begins a pickle that imports and calls something, or None.

    Parses opcodes from the start (any protocol, with or without the 0x80 header) for as long
    as they are valid; text formats fail within a few bytes, while a pickle that would run code
    shows an import opcode followed by a call or build.
    """
    seen_import = False
    try:
        for op, _arg, _pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in _IMPORT_OPCODES:
                seen_import = True
            elif seen_import and name in _CODE_OPCODES:
                return f"its content is a pickle program (opcode {name} after an import)"
            if name == "STOP":
                break
    except Exception:  # genops raises ValueError and friends on the first non-pickle byte
        return None
    return None


def pickle_reason(path: Path, fd: int | None = None) -> str | None:
    """Why the file at ``path`` holds (or may hold) a pickle or an archive, or None when it does not."""
    suffix = path.suffix.lower()
    if suffix in UNSAFE_SUFFIXES:
        return f"its suffix {suffix} is a pickle-capable format"
    try:
        if fd is None:
            with path.open("rb") as fh:
                return _content_reason(path, fh.fileno())
        return _content_reason(path, fd)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path.name!r}: {exc.strerror or exc}", path=path) from None


def _content_reason(path: Path, fd: int) -> str | None:
    size = os.fstat(fd).st_size
    head = os.pread(fd, _PICKLE_SCAN_BYTES, 0)
    # A zip's directory sits at its end, so a file can start as anything and still open as a zip
    # (torch.load reads it that way): look at the tail too.
    tail = os.pread(fd, 65_557, max(0, size - 65_557)) if size > len(head) else head
    if head.startswith(b"PK\x03\x04") or b"PK\x05\x06" in tail:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = None
        if names is not None:
            pickled = [n for n in names if n.lower().endswith((".pkl", ".pickle"))]
            if pickled:
                return f"it is a zip archive holding {pickled[0]!r} (the torch.save format)"
            return "it is a zip archive; a tunesmith folder holds no archives"
    if _looks_like_safetensors(head, size):
        return _safetensors_tail(path)
    if len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5:
        return f"its content starts with a pickle protocol {head[1]} header"
    if head.startswith(b"\x93NUMPY"):
        return "its content is a NumPy array file, which can hold pickled objects"
    return _pickle_program(head)


def _safetensors_tail(path: Path) -> str | None:
    """Why a file that starts like safetensors is not only that (bytes after its tensors, a bad header)."""
    try:
        read_safetensors_header(path)
    except ArtifactError as exc:
        return exc.message
    return None


# --- the folder ------------------------------------------------------------------------------------------


class SafeFolder:
    """A folder opened for loading, after the whole tree passed the trust checks.

    Use :meth:`open`; then read through :meth:`file`, :meth:`read_json`, :meth:`tensors` and
    :meth:`header`, which accept only relative paths inside the folder.
    """

    def __init__(self, root: Path, files: Mapping[str, int]) -> None:
        self.root = root
        self.files = dict(files)
        """Relative POSIX path -> size, of every regular file found by the scan."""

    def __repr__(self) -> str:
        return f"SafeFolder({str(self.root)!r}, {len(self.files)} files)"

    def __fspath__(self) -> str:
        # An opened folder stands wherever a folder path is taken, so a loader handed one by a
        # caller that already scanned it (open_model) does not scan the tree again.
        return str(self.root)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        marker: str | None = "tunesmith.json",
        what: str = "model folder",
        hint: str = "Pass the folder written by `tunesmith fit` or the estimator's save()",
        max_files: int = MAX_FILES,
    ) -> SafeFolder:
        """Scan ``path`` and return it opened, or raise an :class:`ArtifactError` saying why not.

        The folder itself may be reached through a link (that is the user's choice of path);
        nothing inside it may be one.
        """
        given = Path(path)
        if len(os.fsencode(given)) > 4096:
            raise ArtifactError(f"the {what} path is {len(str(given)):,} characters long; no such folder", hint=hint)
        try:
            st = os.stat(given)
        except FileNotFoundError:
            raise ArtifactError(f"no {what} here", path=_short(given), hint=hint) from None
        except OSError as exc:
            raise ArtifactError(
                f"cannot open the {what}: {exc.strerror or exc}", path=_short(given), hint=hint
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(
                f"{_short(given)!r} is not a folder ({_kind_of(st.st_mode)})", path=_short(given), hint=hint
            )
        root = given.resolve()
        if marker is not None:
            try:
                mst = os.lstat(root / marker)
            except FileNotFoundError:
                raise ArtifactError(
                    f"the folder holds no {marker}, so it is not a tunesmith {what}", path=given, hint=hint
                ) from None
            if not stat.S_ISREG(mst.st_mode):
                raise ArtifactError(
                    f"{marker} is {_kind_of(mst.st_mode)}, not a regular file", path=given, hint=_UNTRUSTED_HINT
                )
        files = _scan(root, given, max_files=max_files)
        return cls(root, files)

    # --- reading -----------------------------------------------------------------------------------

    def file(
        self,
        rel: Any,
        *,
        source: str | None = None,
        field_name: str | None = None,
        required: bool = True,
    ) -> Path | None:
        """The path of the regular file ``rel`` inside the folder.

        ``rel`` may come from a file's field: name that file as ``source`` and the field as
        ``field_name`` so a refusal says where the bad path came from. With ``required=False``
        a missing file gives ``None``.
        """
        where = self.root / source if source else self.root
        rel_path = safe_relative(rel, file=where, field=field_name or "path")
        key = rel_path.as_posix()
        if key.startswith("./"):
            key = key[2:]
        if key not in self.files:
            full = self.root / rel_path
            with contextlib.suppress(OSError):
                st = os.lstat(full)
                if not stat.S_ISREG(st.st_mode):
                    raise ArtifactError(f"{key} is {_kind_of(st.st_mode)}", path=self.root, hint=_UNTRUSTED_HINT)
            if required:
                named = f" (named by field {field_name!r} of {source})" if field_name and source else ""
                raise ArtifactError(f"{key} is missing{named}", path=self.root)
            return None
        return self.root / rel_path

    def has(self, rel: str) -> bool:
        """Whether the regular file ``rel`` is in the folder (as found by the scan)."""
        return rel in self.files

    def read_bytes(self, rel: str, *, limit: int = MAX_JSON_BYTES) -> bytes:
        """The bytes of ``rel`` (at most ``limit``)."""
        path = self.file(rel)
        assert path is not None
        return read_limited(path, limit=limit, shown=rel)

    def read_text(self, rel: str, *, limit: int = MAX_JSON_BYTES) -> str:
        """The UTF-8 text of ``rel`` (at most ``limit`` bytes)."""
        data = self.read_bytes(rel, limit=limit)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ArtifactError(f"{rel} is not UTF-8 text (byte {exc.start})", path=self.root / rel) from None

    def read_json(self, rel: str, *, limit: int = MAX_JSON_BYTES, expect: type | None = dict) -> Any:
        """The JSON value in ``rel``; ``expect`` checks its top-level type."""
        path = self.root / rel
        value = parse_json(self.read_bytes(rel, limit=limit), path=path, shown=rel)
        if expect is not None and not isinstance(value, expect):
            raise ArtifactError(f"{rel} must hold a JSON {_json_type(expect)}, got {_json_name(value)}", path=path)
        return value

    def header(self, rel: str) -> dict[str, TensorInfo]:
        """The safetensors header of ``rel`` (names, dtypes, shapes), read without the tensors."""
        path = self.file(rel)
        assert path is not None
        return read_safetensors_header(path, shown=rel)

    def tensors(self, rel: str, *, expected: Mapping[str, Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
        """The tensors of ``rel`` on the CPU; with ``expected``, shapes are checked before reading them."""
        path = self.file(rel)
        assert path is not None
        return load_safetensors(path, shown=rel, expected=expected)


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 200 else text[:197] + "..."


def _scan(root: Path, shown: Path, *, max_files: int) -> dict[str, int]:
    """Walk ``root`` without following links; refuse anything that is not a plain file or folder."""
    files: dict[str, int] = {}
    count = 0
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise ArtifactError(f"cannot list {prefix or '.'}: {exc.strerror or exc}", path=shown) from None
        for entry in entries:
            count += 1
            if count > max_files:
                raise ArtifactError(
                    f"the folder holds over {max_files:,} entries; a tunesmith folder holds a few dozen",
                    path=shown,
                    hint=_UNTRUSTED_HINT,
                )
            rel = prefix + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:  # removed or renamed since it was listed (a folder being written)
                raise ArtifactError(f"{rel} cannot be examined: {exc.strerror or exc}", path=shown) from None
            if stat.S_ISDIR(st.st_mode):
                stack.append((Path(entry.path), rel + "/"))
                continue
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactError(
                    f"{rel} is {_kind_of(st.st_mode)}; a loaded folder may hold only regular files and folders",
                    path=shown,
                    hint=_UNTRUSTED_HINT,
                )
            suffix = Path(entry.name).suffix.lower()
            if suffix in CODE_SUFFIXES:
                raise ArtifactError(
                    f"{rel} is code ({suffix}); tunesmith never runs code from a loaded folder and refuses folders "
                    "that carry it",
                    path=shown,
                    hint=_UNTRUSTED_HINT,
                )
            fd = open_regular(Path(entry.path), limit=None, shown=rel)
            try:
                reason = pickle_reason(Path(entry.path), fd)
                if reason is None and suffix == ".safetensors":
                    read_safetensors_header(Path(entry.path), shown=rel)
            finally:
                os.close(fd)
            if reason:
                raise ArtifactError(
                    f"refusing to load a folder with an unsafe file {rel!r} ({reason}); pickles and archives "
                    "can run arbitrary code when loaded",
                    path=shown,
                    hint=_PICKLE_HINT,
                )
            files[rel] = st.st_size
    return files


MODEL_KINDS = ("text", "image", "tabular", "recommender")
"""The ``kind`` values a model folder's ``tunesmith.json`` may hold (absent means text)."""


def open_model(path: str | os.PathLike[str]) -> tuple[SafeFolder, dict[str, Any]]:
    """The one entry every model loader goes through: the folder scanned and its metadata read.

    Returns the opened folder and ``tunesmith.json`` (a JSON object whose ``kind``, when
    present, is one of :data:`MODEL_KINDS`). Kind loaders read every further file through the
    returned :class:`SafeFolder`; given a :class:`SafeFolder` (a folder this load opened
    already), it is not scanned again.
    """
    folder = path if isinstance(path, SafeFolder) else SafeFolder.open(path)
    meta = folder.read_json("tunesmith.json")
    field(meta, "kind", str, default="text", choices=MODEL_KINDS, file=folder.root / "tunesmith.json")
    return folder, meta
