"""ONNX Runtime sessions for untrusted graphs: built first in a child process with capped memory.

:func:`onnx_session` is the one way tunesmith opens an ONNX graph (text, image and tabular
predictors, the export's parity checks). The graph is read once, must hold all its weights
(no external data), and is built and run once on a tiny input in a child process whose memory
is capped (:func:`_session_verdict`) before this process builds it. See ``docs/security.md``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.errors import ArtifactError
from tunesmith.runs.trust import read_limited, run_isolated, signal_name

MAX_GRAPH_BYTES = 2 * 1024**3
"""An ONNX file cannot exceed protobuf's 2 GiB; tunesmith never writes external data beside it."""


def default_threads() -> int:
    """Threads for one model: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _external_data(model: Any) -> str | None:
    """The name of the first tensor of an ONNX model whose data lives in another file, or None."""
    from onnx import AttributeProto, TensorProto

    def tensors_of(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            yield from nodes_tensors(node)

    def nodes_tensors(node: Any) -> Iterator[Any]:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            elif attr.type == AttributeProto.SPARSE_TENSORS:
                for sparse in attr.sparse_tensors:
                    yield sparse.values
                    yield sparse.indices
            elif attr.type == AttributeProto.GRAPH:
                yield from tensors_of(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from tensors_of(sub)

    def everything() -> Iterator[Any]:
        yield from tensors_of(model.graph)
        for function in model.functions:
            for node in function.node:
                yield from nodes_tensors(node)

    for tensor in everything():
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            return str(tensor.name) or "(unnamed)"
    return None


# The child process that builds a graph's session, and runs it once on a tiny input, before
# this process does (see onnx_session). Its address space is capped at what it held after
# importing ONNX Runtime plus the budget in argv[1]: an allocation beyond it fails there (or
# kills it), never here. It reports "[Fatal] <why>" on stderr and exits 3 when ONNX Runtime
# refuses the graph, 4 when the graph needs more memory than the cap.
_ORT_CHILD = """
import os, sys
budget = int(sys.argv[1])
data = sys.stdin.buffer.read()
import numpy as np
import onnxruntime as ort
try:
    import resource
    with open("/proc/self/statm") as fh:
        size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + budget, size + budget))
except (ImportError, OSError, ValueError):
    pass  # no cap where the platform has none; the parent's timeout still holds
def fail(code, what):
    print("[Fatal] " + what, file=sys.stderr)
    sys.exit(code)
def why(exc):
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    memory = isinstance(exc, MemoryError) or any(
        s in text for s in ("Failed to allocate", "bad_alloc", "bad allocation", "std::bad_array_new_length")
    )
    return (4 if memory else 3), text[:300]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
try:
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
except BaseException as exc:
    fail(*why(exc))
del data
kinds = {"float": np.float32, "double": np.float64, "float16": np.float16, "int64": np.int64, "int32": np.int32,
         "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
feeds = {}
for node in session.get_inputs():
    kind = kinds.get(str(node.type).removeprefix("tensor(").removesuffix(")"))
    if kind is None:
        sys.exit(0)  # an input this check cannot make up: the build alone was checked
    shape = [d if isinstance(d, int) and d > 0 else 2 for d in (node.shape or [])]
    try:
        feeds[node.name] = np.zeros(shape, kind)
    except BaseException as exc:
        fail(*why(exc))
try:
    session.run(None, feeds)
except BaseException as exc:
    code, text = why(exc)
    if code == 4:
        fail(code, text)
print("ok")
"""

_ORT_VERDICTS: dict[str, str | None] = {}
_ORT_VERDICT_LOCK = threading.Lock()


def _graph_budget(size: int) -> int:
    """Bytes of memory a session for a ``size``-byte graph may take beyond ONNX Runtime itself.

    A tunesmith graph's session (initializers copied, weights pre-packed) takes about twice
    the graph's size: MiniLM's 90 MB graph 175 MiB, its int8 graph 118 MiB.
    """
    return 64 * 1024**2 + 3 * size


def _session_verdict(data: bytes) -> str | None:
    """Why building a session for ``data`` failed in a child process (crash, memory, refusal), or None.

    The child builds the session as :func:`onnx_session` does and runs it once on a tiny
    input, with its memory capped at :func:`_graph_budget`; cached by the graph's SHA-256 for
    the life of the process, so a graph is checked once.
    """
    import signal

    digest = hashlib.sha256(data).hexdigest()
    with _ORT_VERDICT_LOCK:
        if digest in _ORT_VERDICTS:
            return _ORT_VERDICTS[digest]
    budget = _graph_budget(len(data))
    timeout = 8.0 + 30.0 * len(data) / 1024**3
    run = run_isolated(_ORT_CHILD, [str(budget)], data, timeout=timeout, what="building its ONNX Runtime session")
    verdict = run.failure
    if run.returncode:
        said = [ln for ln in run.stderr.splitlines() if ln.startswith("[Fatal]")]
        detail = said[-1].removeprefix("[Fatal]").strip()[:300] if said else ""
        if run.returncode == 4 or run.returncode == -signal.SIGKILL:
            verdict = (
                f"ONNX Runtime needs more than {budget / 1024**2:.0f} MiB to build its session "
                f"(the most a {len(data):,}-byte graph may take)"
            )
        elif run.returncode == 3 and detail:
            verdict = detail
        elif run.returncode < 0:
            verdict = f"ONNX Runtime crashed the process that built its session ({signal_name(run.returncode)})"
        else:
            verdict = f"ONNX Runtime failed in the process that built its session (exit status {run.returncode})"
    with _ORT_VERDICT_LOCK:
        _ORT_VERDICTS[digest] = verdict
    return verdict


def onnx_session(graph: Path, threads: int | None) -> Any:
    """An ONNX Runtime CPU session with ``threads`` compute threads; a bad graph is an :class:`ArtifactError`.

    The graph is read once (a regular file, never through a link) and must hold all its
    weights: a tensor stored as external data would make ONNX Runtime open another file,
    so such graphs are refused (tunesmith never writes them). The session is built from the
    bytes that were checked, so no path inside the graph is ever resolved. It is first built
    (and run once on a tiny input) in a child process with capped memory
    (:func:`_session_verdict`): a graph whose constant folding would allocate gigabytes, or
    that crashes ONNX Runtime, is refused there and never built here.
    """
    import onnx
    import onnxruntime as ort

    data = read_limited(graph, limit=MAX_GRAPH_BYTES, shown=f"{graph.parent.name}/{graph.name}")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends for a file that is not a graph
        raise ArtifactError(
            f"the ONNX graph cannot be loaded: {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}",
            path=graph,
            hint="Re-export the model with tunesmith export",
        ) from None
    external = _external_data(model)
    del model
    if external is not None:
        raise ArtifactError(
            f"the ONNX graph stores tensor {external!r} as external data in another file; tunesmith graphs hold "
            "all their weights and a loaded folder may not make it read other files",
            path=graph,
            hint="Re-export the model with tunesmith export",
        )
    verdict = _session_verdict(data)
    if verdict is not None:
        raise ArtifactError(
            f"the ONNX graph cannot be loaded: {verdict}",
            path=graph,
            hint="Re-export the model with tunesmith export",
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ArtifactError(
            f"the ONNX graph cannot be loaded: {(str(exc).splitlines() or [type(exc).__name__])[0][:300]}",
            path=graph,
            hint="Re-export the model with tunesmith export",
        ) from None
