"""What an adapter file of a store must hold: its kind and the shapes of its tensors, from its header.

A store may come from anyone, so every adapter file's safetensors header is checked against
the shapes an adapter of the shared model has (:func:`adapter_shapes`) before any tensor is
read: a declared rank or item count cannot make tunesmith allocate more than the file holds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tunesmith.errors import ArtifactError
from tunesmith.personalize.head import MAX_ADAPTER_RANK
from tunesmith.runs.trust import TensorInfo

__all__ = ["ADAPTER_KINDS", "JOINT_KEY", "MAX_ITEMS", "STORE_HINT", "AdapterDims", "adapter_shapes"]

ADAPTER_KINDS = ("head", "lora", "joint")
JOINT_KEY = "joint:shared"
"""The store key of what all joint adapters of a store share (projection, global weights, item tables)."""
MAX_ITEMS = 10_000_000
"""Most items the item tables of a store's joint adapters may hold."""
STORE_HINT = "Retrain the adapter (tunesmith personalize --users) or rebuild the store with tunesmith personalize"
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class AdapterDims:
    """The widths an adapter of one shared model must have.

    ``features`` and ``outputs``: a head adapter's ``A`` is ``features x r``, its ``B``
    ``r x outputs``. ``inner`` and ``hidden``: a LoRA adapter's ``A`` is ``inner x r``, its
    ``B`` ``r x hidden`` (``None`` when the shared model has no block a LoRA adapter fits).
    """

    features: int
    outputs: int
    inner: int | None = None
    hidden: int | None = None


def adapter_shapes(
    header: Mapping[str, TensorInfo], dims: AdapterDims | None, *, file: str | os.PathLike[str]
) -> tuple[str, dict[str, tuple[int, ...]]]:
    """The kind of the adapter a safetensors header describes and the shapes its tensors must have.

    Checks the header alone (names, floating-point dtypes, rank within ``[0 or 1,
    MAX_ADAPTER_RANK]``) and, with ``dims``, every width against the shared model's; without
    ``dims`` the tensors need only agree with each other.

    Raises:
        ArtifactError: naming ``file`` and the tensor that does not fit.
    """
    names = set(header)
    if names == {"A", "B", "c"}:
        kind = "head"
    elif names == {"A", "B", "scale"}:
        kind = "lora"
    elif names in ({"u", "c"}, {"W", "G", "b", "Q", "E", "Y"}):
        return _joint_shapes(header, dims, file=file)
    else:
        raise ArtifactError(
            f"holds the tensors {sorted(names)[:8]}; an adapter holds A, B and c (head), A, B and scale (LoRA), "
            "u and c (joint), or W, G, b, Q, E and Y (what joint adapters share)",
            path=file,
            hint=STORE_HINT,
        )
    for name in sorted(names):
        if header[name].dtype not in _FLOAT_DTYPES:
            raise ArtifactError(
                f"tensor {name!r} is {header[name].dtype}; adapter tensors are floating point",
                path=file,
                hint=STORE_HINT,
            )
    for name in ("A", "B"):
        if len(header[name].shape) != 2:
            raise ArtifactError(
                f"tensor {name!r} has shape {list(header[name].shape)}; an adapter's {name} is a matrix",
                path=file,
                hint=STORE_HINT,
            )
    a, b = header["A"].shape, header["B"].shape
    rank = a[1]
    low = 0 if kind == "head" else 1
    if not low <= rank <= MAX_ADAPTER_RANK:
        raise ArtifactError(
            f"tensor 'A' declares rank {rank:,}; a {kind} adapter's rank is {low} to {MAX_ADAPTER_RANK}",
            path=file,
            hint=STORE_HINT,
        )
    expected: dict[str, tuple[int, ...]]
    if kind == "head":
        d, k = (dims.features, dims.outputs) if dims is not None else (a[0], b[1])
        expected = {"A": (d, rank), "B": (rank, k), "c": (k,)}
    else:
        if dims is not None and (dims.inner is None or dims.hidden is None):
            raise ArtifactError(
                "holds a LoRA adapter, but the shared model has no BERT-like feed-forward block for it",
                path=file,
                hint=STORE_HINT,
            )
        inner, hidden = (dims.inner, dims.hidden) if dims is not None else (a[0], b[1])
        assert inner is not None and hidden is not None
        expected = {"A": (inner, rank), "B": (rank, hidden), "scale": ()}
    _check_shapes(header, expected, f"a {kind} adapter of rank {rank}", dims, file)
    return kind, expected


def _check_shapes(
    header: Mapping[str, TensorInfo],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
    dims: AdapterDims | None,
    file: str | os.PathLike[str],
) -> None:
    """Every tensor of ``header`` has the shape ``expected`` of it, or an ArtifactError names the first that has not."""
    for name, shape in expected.items():
        got = tuple(header[name].shape)
        if got != shape:
            whose = "for this shared model " if dims is not None else ""
            raise ArtifactError(
                f"tensor {name!r} has shape {list(got)}, but {what} {whose}has {list(shape)}",
                path=file,
                hint=STORE_HINT,
            )


def _joint_shapes(
    header: Mapping[str, TensorInfo], dims: AdapterDims | None, *, file: str | os.PathLike[str]
) -> tuple[str, dict[str, tuple[int, ...]]]:
    """:func:`adapter_shapes` of a joint user vector (``u``, ``c``) or of what joint adapters share."""
    for name, info in header.items():
        if info.dtype not in _FLOAT_DTYPES:
            raise ArtifactError(
                f"tensor {name!r} is {info.dtype}; adapter tensors are floating point", path=file, hint=STORE_HINT
            )
    shared = "W" in header
    lead, dims_named = ("W", ("W", "G", "Q", "E")) if shared else ("u", ("u",))
    for name in dims_named:
        if len(header[name].shape) != 2:
            raise ArtifactError(
                f"tensor {name!r} has shape {list(header[name].shape)}; a joint adapter's {name} is a matrix",
                path=file,
                hint=STORE_HINT,
            )
    rank = header[lead].shape[1] if shared else header[lead].shape[0]
    if not 1 <= rank <= MAX_ADAPTER_RANK:
        raise ArtifactError(
            f"tensor {lead!r} declares rank {rank:,}; a joint adapter's rank is 1 to {MAX_ADAPTER_RANK}",
            path=file,
            hint=STORE_HINT,
        )
    bias = header["b" if shared else "c"].shape
    if len(bias) != 1:
        raise ArtifactError(
            f"tensor {'b' if shared else 'c'!r} has shape {list(bias)}; a joint adapter's bias is a vector",
            path=file,
            hint=STORE_HINT,
        )
    k = dims.outputs if dims is not None else int(bias[0])
    expected: dict[str, tuple[int, ...]]
    if shared:
        d = dims.features if dims is not None else header["W"].shape[0]
        m = header["Q"].shape[0]
        if m > MAX_ITEMS:
            raise ArtifactError(
                f"tensor 'Q' declares {m:,} items; a joint adapter holds at most {MAX_ITEMS:,}",
                path=file,
                hint=STORE_HINT,
            )
        expected = {"W": (d, rank), "G": (d, k), "b": (k,), "Q": (m, rank), "E": (m, k), "Y": (m, rank, k)}
    else:
        expected = {"u": (rank, k), "c": (k,)}
    _check_shapes(header, expected, f"a joint adapter of rank {rank}", dims, file)
    return ("joint_shared" if shared else "joint"), expected
