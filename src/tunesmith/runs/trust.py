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
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import pickletools
import stat
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple

from tunesmith.errors import ArtifactError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CODE_SUFFIXES",
    "MAX_FILES",
    "MAX_JSON_BYTES",
    "ChildRun",
    "SafeFolder",
    "TensorInfo",
    "check_state_shapes",
    "field",
    "load_safetensors",
    "malformed",
    "open_model",
    "open_regular",
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

MAX_PATH_CHARS = 1024
"""Longest relative path accepted from a file's field."""

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
"""safetensors' own limit on its JSON header."""

CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".pyd", ".so", ".dylib", ".dll", ".sh", ".exe"})
"""Suffixes of files that hold code; a folder tunesmith loads never needs one."""

UNSAFE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".ckpt", ".npy", ".npz"})
"""Suffixes of formats that can carry pickled (code-running) objects: torch, joblib, NumPy."""

_PICKLE_HINT = "tunesmith models hold only safetensors and JSON; re-save it with the estimator's save()"
_UNTRUSTED_HINT = "Only load folders written by tunesmith; ask whoever sent it to re-save it"

# Opcodes that import or call something: a pickle that uses them runs code when loaded.
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"})
_IMPORT_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST"})
_PICKLE_SCAN_BYTES = 1 << 20


# --- paths -------------------------------------------------------------------------------------


def safe_relative(value: Any, *, file: str | os.PathLike[str], field: str) -> PurePosixPath:
    """``value`` as a relative path that cannot leave its folder, or an :class:`ArtifactError`.

    Refused: a non-string, an empty or over-long path, a NUL byte, an absolute path (POSIX
    or Windows, with a drive), a backslash, and any ``..`` component.
    """
    where = f"field {field!r}"
    if not isinstance(value, str):
        raise ArtifactError(f"{where} must be a relative path string, got {_json_name(value)}", path=file)
    if not value or len(value) > MAX_PATH_CHARS:
        raise ArtifactError(
            f"{where} must be a relative path of 1 to {MAX_PATH_CHARS} characters, got {len(value)}", path=file
        )
    shown = value if len(value) <= 80 else value[:77] + "..."
    if "\x00" in value or "\\" in value:
        raise ArtifactError(f"{where} holds a NUL or backslash: {shown!r}", path=file, hint=_UNTRUSTED_HINT)
    rel = PurePosixPath(value)
    if rel.is_absolute() or (len(value) > 1 and value[1] == ":"):
        raise ArtifactError(
            f"{where} is an absolute path {shown!r}; a folder may only name files inside itself",
            path=file,
            hint=_UNTRUSTED_HINT,
        )
    if any(part == ".." for part in rel.parts):
        raise ArtifactError(
            f"{where} leaves the folder through '..' ({shown!r}); a folder may only name files inside itself",
            path=file,
            hint=_UNTRUSTED_HINT,
        )
    return rel


def open_regular(path: Path, *, limit: int | None, shown: str) -> int:
    """A file descriptor of a regular file, never following a link and never blocking on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArtifactError(f"{shown} is a symbolic link", path=path, hint=_UNTRUSTED_HINT) from None
        if exc.errno == errno.ENOENT:
            raise ArtifactError(f"{shown} is missing", path=path) from None
        raise ArtifactError(f"{shown} cannot be opened: {exc.strerror or exc}", path=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(
                f"{shown} is not a regular file ({_kind_of(st.st_mode)})", path=path, hint=_UNTRUSTED_HINT
            )
        if limit is not None and st.st_size > limit:
            raise ArtifactError(
                f"{shown} is {st.st_size:,} bytes, over the {limit:,}-byte limit for this file",
                path=path,
                hint=_UNTRUSTED_HINT,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def read_limited(path: str | os.PathLike[str], *, limit: int, shown: str | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (no link, FIFO or device is opened)."""
    p = Path(path)
    fd = open_regular(p, limit=limit, shown=shown or p.name)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:  # the file grew while being read
        raise ArtifactError(f"{shown or p.name} is over the {limit:,}-byte limit", path=p)
    return data


class _NonFinite(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text[:40])
    return value


def parse_json(data: bytes, *, path: str | os.PathLike[str], shown: str) -> Any:
    """JSON from bytes; a malformed file is an :class:`ArtifactError` with the line and column.

    Strict JSON only: ``NaN``, ``Infinity`` and numbers too large for a float (``1e999``) are
    refused, since range checks on such values pass silently (every comparison with NaN is false).
    """
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise ArtifactError(
            f"{shown} holds the non-finite number {exc.args[0]}; JSON numbers must be finite", path=path
        ) from None
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{shown} is not UTF-8 text (byte {exc.start})", path=path) from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{shown} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", path=path
        ) from None
    except RecursionError:
        raise ArtifactError(f"{shown} nests too deeply to be a tunesmith file", path=path) from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise ArtifactError(f"{shown} is not valid JSON: {str(exc)[:120]}", path=path) from None


def read_json_file(path: str | os.PathLike[str], *, limit: int = MAX_JSON_BYTES, expect: type | None = dict) -> Any:
    """A JSON file read through :func:`read_limited`; ``expect`` checks the top-level type."""
    p = Path(path)
    value = parse_json(read_limited(p, limit=limit), path=p, shown=p.name)
    if expect is not None and not isinstance(value, expect):
        raise ArtifactError(f"{p.name} must hold a JSON {_json_type(expect)}, got {_json_name(value)}", path=p)
    return value


def _json_type(t: type | tuple[type, ...]) -> str:
    names = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in types)


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    return _json_type(type(value)) if type(value) in (dict, list, str, int, float, bool) else type(value).__name__


# --- typed fields --------------------------------------------------------------------------------

_MISSING = object()


def field(
    data: Any,
    name: str,
    types: type | tuple[type, ...],
    *,
    file: str | os.PathLike[str],
    default: Any = _MISSING,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[Any] | None = None,
) -> Any:
    """``data[name]`` checked to be of ``types`` (and within ``[low, high]`` or ``choices``).

    ``name`` may be dotted (``"backbone.hidden_size"``). A missing field returns ``default``
    when one is given; otherwise, like any wrong type or value, it is an
    :class:`ArtifactError` naming the file and the field. Booleans never pass as numbers.
    """
    node = data
    parts = name.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            where = ".".join(parts[:i]) or "the top level"
            raise ArtifactError(f"field {where!r} must be a JSON object, got {_json_name(node)}", path=file)
        if part not in node:
            if default is not _MISSING:
                return default
            raise ArtifactError(f"field {name!r} is missing", path=file, hint=_UNTRUSTED_HINT)
        node = node[part]
    wanted = types if isinstance(types, tuple) else (types,)
    if float in wanted and int not in wanted:
        wanted = (*wanted, int)
    ok = isinstance(node, wanted) and not (isinstance(node, bool) and bool not in wanted)
    if not ok:
        if node is None and default is not _MISSING and type(None) not in wanted:
            return default
        raise ArtifactError(f"field {name!r} must be {_json_type(types)}, got {_json_name(node)}", path=file)
    if choices is not None and node not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ArtifactError(f"field {name!r} must be one of {allowed}, got {node!r}", path=file)
    numeric = isinstance(node, (int, float)) and not isinstance(node, bool)
    if numeric and ((low is not None and node < low) or (high is not None and node > high)):
        raise ArtifactError(f"field {name!r} must be within [{low}, {high}], got {node!r}", path=file)
    return node


@contextlib.contextmanager
def malformed(file: str | os.PathLike[str], what: str = "this file") -> Iterator[None]:
    """Turn a malformed value met while reading ``file`` into one :class:`ArtifactError` line.

    A safety net around code that reads a file's fields: a missing key, a wrong type or a bad
    value deep in a loader is reported as the file being malformed, never as a traceback.
    """
    try:
        yield
    except ArtifactError:
        raise
    except KeyError as exc:
        raise ArtifactError(f"{what} lacks the field {exc.args[0]!r}", path=file, hint=_UNTRUSTED_HINT) from None
    except (TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ArtifactError(f"{what} is malformed: {first}", path=file, hint=_UNTRUSTED_HINT) from None


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


# --- safetensors headers ----------------------------------------------------------------------------

_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class TensorInfo(NamedTuple):
    """Dtype and shape of one tensor in a safetensors header."""

    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: str | os.PathLike[str], *, shown: str | None = None) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of a safetensors file, read without loading any tensor.

    The file must be exactly a header plus the tensors it declares: every tensor's byte range
    must match its shape and dtype, the ranges must tile the data without gaps or overlap, and
    nothing may follow them (a file that continues as a zip or anything else is refused).
    """
    p = Path(path)
    name = shown or p.name
    fd = open_regular(p, limit=None, shown=name)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(8)
        if len(raw) < 8:
            raise ArtifactError(f"{name} is too short to be a safetensors file", path=p)
        n = int.from_bytes(raw, "little")
        if n <= 1 or n > MAX_SAFETENSORS_HEADER or n > size - 8:
            raise ArtifactError(f"{name} has an impossible safetensors header length ({n:,} bytes)", path=p)
        header = parse_json(fh.read(n), path=p, shown=f"{name} (safetensors header)")
    if not isinstance(header, dict):
        raise ArtifactError(f"{name}: the safetensors header is not a JSON object", path=p)
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ArtifactError(f"{name}: __metadata__ must map names to strings", path=p)
            continue
        if not isinstance(entry, dict):
            raise ArtifactError(f"{name}: tensor {key!r} has no dtype/shape/offsets entry", path=p)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPE_BYTES:
            raise ArtifactError(f"{name}: tensor {key!r} has an unknown dtype {dtype!r}", path=p)
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise ArtifactError(f"{name}: tensor {key!r} has an invalid shape {shape!r}", path=p)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise ArtifactError(f"{name}: tensor {key!r} has invalid data offsets", path=p)
        begin, end = offsets
        numel = 1
        for d in shape:
            numel *= d
        if begin < 0 or end < begin or end > data_len or end - begin != numel * _DTYPE_BYTES[dtype]:
            raise ArtifactError(
                f"{name}: tensor {key!r} declares shape {shape} ({dtype}) but its bytes [{begin}, {end}) do not "
                f"match it or lie outside the file's {data_len:,} data bytes",
                path=p,
            )
        spans.append((begin, end, key))
        out[key] = TensorInfo(dtype, tuple(shape))
    spans.sort()
    cursor = 0
    for begin, end, key in spans:
        if begin != cursor:
            raise ArtifactError(f"{name}: tensor {key!r} overlaps another or leaves a gap before it", path=p)
        cursor = end
    if cursor != data_len:
        raise ArtifactError(
            f"{name} holds {data_len - cursor:,} bytes after its last tensor; a safetensors file holds nothing else",
            path=p,
            hint=_UNTRUSTED_HINT,
        )
    return out


def check_state_shapes(
    expected: Mapping[str, Sequence[int]],
    header: Mapping[str, TensorInfo],
    *,
    file: str | os.PathLike[str],
    strict: bool = True,
) -> None:
    """Refuse weights whose names or shapes differ from the architecture's.

    ``expected`` is the state dict shapes of the architecture the metadata describes (built on
    PyTorch's ``meta`` device: see :func:`meta_shapes`); comparing them with the header before
    the real model is built means a folder cannot make tunesmith allocate more than its weights.
    With ``strict`` the names must match exactly; otherwise only the names in both are compared.
    """
    for key, shape in expected.items():
        info = header.get(key)
        if info is None:
            if strict:
                raise ArtifactError(
                    f"weights lack the tensor {key!r} that the architecture in the metadata needs",
                    path=file,
                    hint=_UNTRUSTED_HINT,
                )
            continue
        if tuple(info.shape) != tuple(int(d) for d in shape):
            raise ArtifactError(
                f"the metadata describes tensor {key!r} as {list(shape)} but the weights hold {list(info.shape)}",
                path=file,
                hint=_UNTRUSTED_HINT,
            )
    if strict:
        extra = sorted(set(header) - set(expected))
        if extra:
            raise ArtifactError(
                f"weights hold tensor {extra[0]!r} that the architecture in the metadata does not have",
                path=file,
                hint=_UNTRUSTED_HINT,
            )


def meta_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """State dict shapes of the module ``build()`` makes, built on the ``meta`` device (no memory)."""
    import torch

    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


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


def load_safetensors(
    path: str | os.PathLike[str], *, shown: str | None = None, expected: Mapping[str, Sequence[int]] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file on the CPU, read only after its header passed the checks.

    The header is checked first (exact tiling, nothing after the last tensor, never a link or
    a FIFO: :func:`read_safetensors_header`); with ``expected``, names and shapes must match it
    (:func:`check_state_shapes`) before any tensor is read.
    """
    from safetensors.torch import load_file

    header = read_safetensors_header(path, shown=shown)
    if expected is not None:
        check_state_shapes(expected, header, file=path)
    try:
        return load_file(os.fspath(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise ArtifactError(
            f"cannot be read as safetensors: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            path=path,
            hint="The file is damaged or not a tunesmith weights file; re-save the model",
        ) from None


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


# --- native libraries in a child process ----------------------------------------------------------


class ChildRun(NamedTuple):
    """What a child process made of a file: its exit status and error output, or why it never exited."""

    returncode: int | None
    stderr: str
    failure: str | None


def run_isolated(
    code: str, args: Sequence[str], data: bytes, *, timeout: float, what: str, threads: int = 1
) -> ChildRun:
    """Run ``code`` in a fresh Python (``-I``: nothing imported from the working folder) fed ``data``.

    For native libraries that may abort, hang or allocate without bound on a bad file: the
    child takes the blow and the caller reads its exit. ``what`` completes "…in a separate
    process did not finish" for the timeout message.
    """
    import subprocess
    import sys

    env = {**os.environ, **dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), str(threads))}
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", code, *args],
            input=data,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ChildRun(None, "", f"{what} in a separate process did not finish within {timeout:.0f} s")
    except OSError as exc:
        return ChildRun(None, "", f"no separate process could be started to check it ({exc.strerror or exc})")
    return ChildRun(proc.returncode, proc.stderr.decode("utf-8", "replace"), None)


def signal_name(returncode: int) -> str:
    """The name of the signal that ended a child (``returncode`` < 0), e.g. ``SIGABRT``."""
    import signal

    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
