"""Personalised serving (``serve --adapters``): per-row routing, reporting, and refusals, on a tiny model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from tests.cli.test_cli import cli
from tests.conftest import make_reviews
from tests.serve.test_serve import _fit, _settings, serving
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.export.runtime import Prediction
from tunesmith.personalize import AdapterStore, HeadAdapter
from tunesmith.personalize.personalizer import Personalizer
from tunesmith.serve import ServeSettings, run_server
from tunesmith.serve.recommend import load_served_model

TEXTS = ["great fun movie", "awful boring movie", "best film i love it", "a dull dull film"]


def _put(store: AdapterStore, key: str, n_features: int, *, seed: int, used: bool) -> None:
    """A hand-made adapter whose correction is far from zero, so its rows differ from the shared model's."""
    adapter = HeadAdapter(n_features, 2, 2, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        adapter.B.copy_(3.0 * torch.randn(2, 2, generator=gen))
        adapter.c.copy_(torch.tensor([2.0, -2.0]) if seed % 2 else torch.tensor([-2.0, 2.0]))
    level = key.split(":", 1)[0]
    store.put(key, adapter.tensors(), {"level": level, "kind": "head", "used": used, "rows_train": 20})


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fit(tmp_path_factory.mktemp("pserve") / "model", seed=0)


@pytest.fixture(scope="module")
def store(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pstore") / "store"
    p = Personalizer(shared, folder, user_column="user", segment_column="region", min_rows=1000, progress=False)
    data = make_reviews(16, seed=3, users=True).assign(region="north")
    # Every user and segment has too few rows: no adapter is trained, but the store's settings
    # are written; the adapters are then put by hand so the test knows what each one does.
    p.fit(data)
    n_features = p.shared_outputs(data.head(1))[0].shape[1]
    _put(p.store, "user:alice", n_features, seed=1, used=True)
    _put(p.store, "user:bob", n_features, seed=2, used=False)  # lost its validation: never answers
    _put(p.store, "segment:region=north", n_features, seed=3, used=True)
    _put(p.store, "user:7", n_features, seed=5, used=True)
    return folder


@pytest.fixture(scope="module")
def client(shared: Path, store: Path) -> Iterator[TestClient]:
    with serving(shared, adapters=store) as c:
        yield c


ROWS: list[Any] = [
    {"text": TEXTS[0], "user": "alice", "region": "south"},
    {"text": TEXTS[1], "user": "bob", "region": "north"},
    {"text": TEXTS[2], "user": "carol", "region": "south"},
    {"text": TEXTS[3]},
    {"text": TEXTS[0], "region": "north"},
    TEXTS[1],
    {"text": TEXTS[2], "user": 7, "region": None},
]


def test_a_batch_of_many_users_is_routed_and_reported_per_row(client: TestClient) -> None:
    r = client.post("/v1/predict", json={"inputs": ROWS})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    served = [(p["served_by"]["level"], p["served_by"]["adapter"], p.get("user_known", "absent")) for p in preds]
    assert served == [
        ("user", "user:alice", True),
        ("segment", "segment:region=north", False),  # bob's adapter is unused: his segment answers
        ("shared", None, False),  # carol has no adapter, nor has her segment
        ("shared", None, "absent"),  # no user, no segment
        ("segment", "segment:region=north", "absent"),
        ("shared", None, "absent"),  # a bare string names nobody
        ("user", "user:7", True),  # integer ids route like their string form
    ]
    assert all(set(p) - {"user_known"} == {"label", "probabilities", "served_by"} for p in preds)
    # probabilities off: the routing report stays
    r = client.post("/v1/predict", json={"inputs": ROWS[0], "probabilities": False})
    assert r.json()["predictions"] == [
        {"label": preds[0]["label"], "served_by": {"level": "user", "adapter": "user:alice"}, "user_known": True}
    ]


def test_adapted_rows_match_the_offline_personalizer(client: TestClient, shared: Path, store: Path) -> None:
    preds = client.post("/v1/predict", json={"inputs": ROWS[:3]}).json()["predictions"]
    offline, levels = Personalizer.from_store(store, base=shared).predict_routed(pd.DataFrame(ROWS[:3]))
    assert levels == ["user", "segment", "shared"]
    served = np.array([[p["probabilities"]["neg"], p["probabilities"]["pos"]] for p in preds])
    np.testing.assert_allclose(served, offline, atol=1e-5)
    # the adapters really changed the answer, or this test would prove nothing
    plain = client.post("/v1/predict", json={"inputs": [{"text": TEXTS[0]}]}).json()["predictions"][0]
    assert abs(plain["probabilities"]["pos"] - preds[0]["probabilities"]["pos"]) > 0.05


def test_shared_rows_match_the_plain_server(client: TestClient, shared: Path) -> None:
    mine = client.post("/v1/predict", json={"inputs": ROWS}).json()["predictions"]
    with serving(shared) as plain_client:
        plain = plain_client.post("/v1/predict", json={"inputs": [TEXTS[2], TEXTS[3], TEXTS[1]]}).json()
    assert all("served_by" not in p and "user_known" not in p for p in plain["predictions"])
    for got, want in zip([mine[2], mine[3], mine[5]], plain["predictions"], strict=True):
        assert got["label"] == want["label"]
        for name, value in want["probabilities"].items():
            assert got["probabilities"][name] == pytest.approx(value, abs=1e-5)


def test_metadata_reports_the_store(client: TestClient, store: Path, shared: Path) -> None:
    meta = client.get("/v1/metadata").json()
    assert meta["backend"] == "torch" and meta["task"] == "binary"
    assert meta["personalization"] == {
        "store": str(store),
        "adapters": 4,
        "user_adapters": {"total": 3, "used": 2},
        "segment_adapters": {"total": 1, "used": 1},
        "user_column": "user",
        "segment_column": "region",
    }
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"served_by", "user_known"} <= set(schema["PredictionOut"]["properties"])
    assert schema["ServedByOut"]["properties"]["level"]["enum"] == ["user", "segment", "shared"]


def test_bad_ids_and_unknown_fields_are_422_naming_the_field(client: TestClient) -> None:
    r = client.post("/v1/predict", json={"inputs": [{"text": "fine"}, {"text": "fine", "user": ["a"]}]})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "inputs", 1, "user"] and "string or an integer" in detail["msg"]
    r = client.post("/v1/predict", json={"inputs": {"text": "fine", "user": 1.5}})
    assert r.status_code == 422
    r = client.post("/v1/predict", json={"inputs": {"text": "fine", "user": "alice", "colour": "red"}})
    assert r.status_code == 422 and "unknown field 'colour'" in r.json()["detail"][0]["msg"]


def test_non_personalised_predictions_are_unchanged() -> None:
    plain = Prediction(label="pos", probabilities={"pos": 1.0})
    assert plain.to_dict() == {"label": "pos", "probabilities": {"pos": 1.0}}
    assert Prediction(value=1.5).to_dict() == {"value": 1.5}


def test_a_store_of_another_model_is_refused_at_start(shared: Path, store: Path, tmp_path: Path, capsys: Any) -> None:
    other = _fit(tmp_path / "other", seed=1)
    with pytest.raises(ArtifactError, match="different shared model"):
        run_server(other, _settings(adapters=store, port=0))
    with pytest.raises(ArtifactError, match="different shared model"):
        run_server(other, _settings(adapters=store, port=0, workers=2))  # the parent's cheap check
    with pytest.raises(ArtifactError, match="holds no personalize.json"):
        run_server(shared, _settings(adapters=tmp_path, port=0))
    with pytest.raises(ArtifactError, match="no adapter store"):
        run_server(shared, _settings(adapters=tmp_path / "missing", port=0))
    code, _, err = cli(capsys, "serve", str(other), "--adapters", str(store), "--port", "0")
    assert code == 2 and "Traceback" not in err
    assert "different shared model" in err and len(err.strip().splitlines()) == 1


def test_onnx_with_adapters_is_refused(shared: Path, store: Path, capsys: Any) -> None:
    with pytest.raises(ConfigError, match="torch backend only"):
        ServeSettings.from_options(backend="onnx", adapters=store)
    with pytest.raises(ConfigError, match="torch backend only") as err:
        load_served_model(shared, backend="onnx", precision="auto", threads=1, version=None, adapters=store)
    assert err.value.key == "backend"
    code, _, err_text = cli(capsys, "serve", str(shared), "--adapters", str(store), "--backend", "onnx")
    assert code == 2 and "torch backend only" in err_text and "Traceback" not in err_text


def test_cli_and_module_flags_set_the_store(
    shared: Path, store: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunesmith.serve.command as command
    from tunesmith.serve.__main__ import _parser

    seen: list[ServeSettings] = []
    monkeypatch.setattr(command, "run_server", lambda model, settings: seen.append(settings))
    code, _, err = cli(capsys, "serve", str(shared), "--adapters", str(store), "--workers", "2")
    assert code == 0, err
    settings = seen[0]
    # adapters alone pick the torch backend; the store travels to worker processes in the JSON
    assert settings.adapters == store and settings.backend == "torch"
    assert ServeSettings.from_json(settings.to_json()).adapters == store
    assert ServeSettings.from_options().adapters is None and ServeSettings.from_options().backend == "onnx"
    args = vars(_parser().parse_args([str(shared), "--adapters", str(store)]))
    args.pop("model")
    assert ServeSettings.from_options(**args).adapters == store


def test_reload_re_reads_the_store_and_refuses_onnx(shared: Path, store: Path, tmp_path: Path) -> None:
    mine = tmp_path / "store"
    shutil.copytree(store, mine)
    auth = {"Authorization": "Bearer admin-token"}
    row = {"text": TEXTS[0], "user": "carol"}
    with serving(shared, adapters=mine, admin_token="admin-token") as c:
        assert c.post("/v1/predict", json={"inputs": row}).json()["predictions"][0]["served_by"]["level"] == "shared"
        p = Personalizer.from_store(mine, base=shared)
        _put(p.store, "user:carol", p.shared_outputs(pd.DataFrame([row]))[0].shape[1], seed=9, used=True)
        r = c.post("/admin/reload", headers=auth, json={"backend": "onnx"})
        assert r.status_code == 422 and "torch backend only" in r.json()["detail"]
        assert c.post("/admin/reload", headers=auth).json()["reloaded"] is True
        pred = c.post("/v1/predict", json={"inputs": row}).json()["predictions"][0]
        assert pred["served_by"] == {"level": "user", "adapter": "user:carol"} and pred["user_known"] is True
        assert c.get("/v1/metadata").json()["personalization"]["adapters"] == 5


def test_lora_adapters_serve_rows_of_several_users_in_one_batch(shared: Path, tmp_path: Path) -> None:
    from tunesmith.personalize.lora import LoraAdapter

    folder = tmp_path / "lora_store"
    p = Personalizer(shared, folder, user_column="user", min_rows=1000, adapter_kind="lora", progress=False)
    p.fit(make_reviews(16, seed=3, users=True))  # too few rows: settings only, adapters put by hand
    dense = p._ffn.get_submodule("dense")
    for i, user in enumerate(("alice", "bob")):
        adapter = LoraAdapter(dense.in_features, dense.out_features, 4, seed=i)
        with torch.no_grad():
            adapter.B.copy_(torch.randn(4, dense.out_features, generator=torch.Generator().manual_seed(i)))
        p.store.put(f"user:{user}", adapter.tensors(), {"level": "user", "kind": "lora", "used": True})
    rows = [
        {"text": TEXTS[0], "user": "alice"},
        {"text": TEXTS[1], "user": "bob"},
        {"text": TEXTS[2], "user": "carol"},
        {"text": TEXTS[3], "user": "alice"},
    ]
    with serving(shared, adapters=folder) as c:
        preds = c.post("/v1/predict", json={"inputs": rows}).json()["predictions"]
        plain = c.post("/v1/predict", json={"inputs": [{"text": r["text"]} for r in rows]}).json()["predictions"]
    assert [pr["served_by"]["level"] for pr in preds] == ["user", "user", "shared", "user"]
    offline, levels = Personalizer.from_store(folder, base=shared).predict_routed(pd.DataFrame(rows))
    assert levels == ["user", "user", "shared", "user"]
    served = np.array([[pr["probabilities"]["neg"], pr["probabilities"]["pos"]] for pr in preds])
    np.testing.assert_allclose(served, offline, atol=1e-5)
    shared_only = np.array([[pr["probabilities"]["neg"], pr["probabilities"]["pos"]] for pr in plain])
    # carol falls back to the shared model; alice and bob's adapters change their answers
    np.testing.assert_allclose(served[2], shared_only[2], atol=1e-6)
    assert np.abs(served[[0, 1, 3]] - shared_only[[0, 1, 3]]).max() > 1e-3
