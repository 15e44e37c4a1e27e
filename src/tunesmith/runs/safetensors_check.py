"""safetensors files checked before a byte of tensor data is read: exact header, exact tiling,
nothing after the last tensor, names and shapes as the metadata's architecture expects.

Part of the trust boundary (:mod:`tunesmith.runs.trust` re-exports every name here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from tunesmith.errors import ArtifactError
from tunesmith.runs.json_strict import UNTRUSTED_HINT as _UNTRUSTED_HINT
from tunesmith.runs.json_strict import parse_json
from tunesmith.runs.safe_paths import open_regular

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_SAFETENSORS_HEADER",
    "TensorInfo",
    "check_state_shapes",
    "load_safetensors",
    "meta_shapes",
    "read_safetensors_header",
]

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
"""safetensors' own limit on its JSON header."""


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
