"""``tunesmith promote`` and ``rollback`` switch a running server under load with no failed request."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_reviews
from tests.serve.test_process import Server
from tunesmith import FineTuner
from tunesmith.errors import ArtifactError
from tunesmith.runs.versions import ModelRegistry
from tunesmith.serve.swap import promote, rollback


def _model(folder: Path, seed: int, params: dict) -> Path:
    FineTuner(**{**params, "epochs": 2, "seed": seed}).fit(make_reviews(64, seed=seed), target="label").save(folder)
    return folder


def test_promote_and_rollback_swap_a_server_under_load(tmp_path: Path, fast_params: dict) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    first = reg.register(_model(tmp_path / "m1", 0, fast_params))
    second = reg.register(_model(tmp_path / "m2", 1, fast_params))
    broken_src = tmp_path / "broken"
    shutil.copytree(second.path, broken_src)
    (broken_src / "model.safetensors").write_bytes(b"not a tensor file")
    broken = reg.register(broken_src)
    reg.promote(first.number)
    srv = Server(first.path, "torch", "--threads", "1", env={"TUNESMITH_ADMIN_TOKEN": "adm"})
    statuses: list[int] = []
    stop = threading.Event()

    def more(n: int) -> None:
        # Let the clients send n more requests, so every swap happens under load.
        target = len(statuses) + n
        for _ in range(3000):
            if len(statuses) >= target:
                return
            stop.wait(0.01)

    def load() -> None:
        with httpx.Client(base_url=srv.base, timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.post("/v1/predict", json={"inputs": "great fun movie"}).status_code)

    try:
        srv.wait_ready()
        clients = [threading.Thread(target=load) for _ in range(4)]
        for c in clients:
            c.start()
        more(10)
        v, answer = promote(reg, second.number, server=srv.base, token="adm")
        assert v.number == second.number and answer is not None
        assert answer["model_version"] == second.model_version
        assert httpx.get(srv.base + "/v1/metadata").json()["model_version"] == second.model_version

        more(10)
        # A model the server cannot load: refused, the alias goes back, the champion keeps serving.
        with pytest.raises(ArtifactError, match="did not switch"):
            promote(reg, broken.number, server=srv.base, token="adm")
        assert reg.champion().number == second.number
        assert reg.get(broken.number).status == "candidate"

        more(10)
        back, answer = rollback(reg, server=srv.base, token="adm")
        assert back.number == first.number and answer["model_version"] == first.model_version
        more(10)
        stop.set()
        for c in clients:
            c.join()
    finally:
        stop.set()
        srv.stop()
    assert len(statuses) >= 40
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
