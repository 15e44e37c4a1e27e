"""An ONNX graph is untrusted input: its session is built first in a child process with capped memory.

A graph whose constant folding would allocate gigabytes, a file that is not a graph, and a
graph that crashes ONNX Runtime are each one :class:`ArtifactError` naming the file, fast,
with this process's memory untouched.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import pytest

from tests.tamper import onnx_constant_bomb
from tunesmith.errors import ArtifactError
from tunesmith.export import session as ort_session
from tunesmith.export.session import onnx_session


def _graph(tmp_path: Path, data: bytes) -> Path:
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(data)
    return folder / "model.onnx"


def _small_graph() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "small", [x], [y])
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _peak_mib() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def test_constant_folding_bomb_is_refused_fast_with_bounded_memory(tmp_path: Path) -> None:
    data = onnx_constant_bomb(nodes=2)  # 2 x 1 GB of constant folding in under 400 bytes
    assert len(data) < 1000
    graph = _graph(tmp_path, data)
    own_before, children_before = _peak_mib()
    started = time.monotonic()
    with pytest.raises(ArtifactError) as info:
        onnx_session(graph, threads=1)
    elapsed = time.monotonic() - started
    own_after, children_after = _peak_mib()
    message = str(info.value)
    assert "model.onnx" in message and "MiB" in message and "\n" not in message, message
    assert elapsed < 10, elapsed
    # neither this process nor the child that built the session came near the gigabyte
    assert own_after - own_before < 150, (own_before, own_after)
    assert children_after < max(children_before, own_after) + 300, (children_before, children_after, own_after)


def test_garbage_protobuf_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_session, "_ORT_VERDICTS", {})
    rng = np.random.default_rng(0)
    for i, data in enumerate((b"\x08\x07\x12\xff\xff\xff\xff\x0fnot a graph", rng.bytes(4096), b"")):
        (tmp_path / str(i)).mkdir()
        with pytest.raises(ArtifactError) as info:
            onnx_session(_graph(tmp_path / str(i), data), threads=1)
        assert "model.onnx" in str(info.value) and "\n" not in str(info.value)


def test_a_graph_that_crashes_onnx_runtime_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for a graph that makes ONNX Runtime abort: the child dies by a signal.
    monkeypatch.setattr(ort_session, "_ORT_CHILD", "import os; os.abort()")
    monkeypatch.setattr(ort_session, "_ORT_VERDICTS", {})
    with pytest.raises(ArtifactError, match=r"crashed the process that built its session \(SIGABRT\)"):
        onnx_session(_graph(tmp_path, _small_graph()), threads=1)


def test_a_good_graph_is_checked_once_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_session, "_ORT_VERDICTS", {})
    graph = _graph(tmp_path, _small_graph())
    session = onnx_session(graph, threads=1)
    out = session.run(None, {"x": np.array([[-1.0, 0.0, 2.0]], dtype=np.float32)})[0]
    np.testing.assert_array_equal(out, [[0.0, 0.0, 2.0]])
    assert list(ort_session._ORT_VERDICTS.values()) == [None]
    # the second load reuses the verdict: no child process
    monkeypatch.setattr(ort_session, "_ORT_CHILD", "import os; os.abort()")
    onnx_session(graph, threads=1)
