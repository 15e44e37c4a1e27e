"""Serving a recommender: /v1/recommend and friends against a tiny fitted EASE model (no mocks)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from tunesmith.export.runtime import model_version
from tunesmith.recsys.recommender import Recommender
from tunesmith.serve import ServeSettings, create_app, read_prediction_log

ADMIN = "admin-secret"


def block_log(seed: int = 0) -> pd.DataFrame:
    """Three groups of users, each drawing from its own third of 30 items."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(30):
        group = u % 3
        picks = rng.choice(np.arange(group * 10, group * 10 + 10), size=6, replace=False)
        rows += [{"user_id": f"u{u}", "item_id": f"i{i}", "timestamp": t} for t, i in enumerate(picks)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_rec")
    first = Recommender("ease", model_params={"l2": 10.0}).fit(block_log()).save(root / "rec")
    second = Recommender("ease", model_params={"l2": 50.0}).fit(block_log(1)).save(root / "rec2")
    classifier = root / "clf"
    classifier.mkdir()
    (classifier / "tunesmith.json").write_text(json.dumps({"task": "binary", "format_version": 1}))
    return {"rec": first, "rec2": second, "clf": classifier}


@contextmanager
def serving(model: Path, **options: Any) -> Iterator[TestClient]:
    base: dict[str, Any] = {"backend": "torch", "threads": 1, "api_key": None, "admin_token": ADMIN}
    with TestClient(create_app(model, ServeSettings(**{**base, **options}))) as client:
        until = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < until, "never ready"
            time.sleep(0.01)
        yield client


@pytest.fixture(scope="module")
def client(folders: dict[str, Path]) -> Iterator[TestClient]:
    with serving(folders["rec"]) as c:
        yield c


def test_recommend_by_user_matches_the_recommender(client: TestClient, folders: dict[str, Path]) -> None:
    rec = Recommender.load(folders["rec"])
    r = client.post("/v1/recommend", json={"user": "u0", "k": 5, "exclude": ["i1"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == model_version(folders["rec"])
    assert body["source"] == "user"
    assert body["items"] == rec.recommend("u0", k=5, exclude=["i1"])
    history = set(block_log().query("user_id == 'u0'")["item_id"])
    assert not {x["item"] for x in body["items"]} & (history | {"i1"})


def test_recommend_by_history_overrides_the_user(client: TestClient, folders: dict[str, Path]) -> None:
    rec = Recommender.load(folders["rec"])
    r = client.post("/v1/recommend", json={"user": "u0", "history": ["i20", "i21", 7, "ghost"], "k": 30})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "history"
    assert body["items"] == rec.recommend(history=["i20", "i21"], k=30)
    assert {"i20", "i21"}.isdisjoint(x["item"] for x in body["items"])
    assert len(body["items"]) == 28  # the catalogue ran out before k
    # An unknown user with a history is fine: the history is what counts.
    assert client.post("/v1/recommend", json={"user": "nobody", "history": ["i3"]}).status_code == 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"user": "nobody"}, "user"),
        ({}, "user"),
        ({"user": "u0", "k": 0}, "k"),
        ({"user": "u0", "k": 1001}, "k"),
        ({"user": "u0", "k": "5"}, "k"),
        ({"history": "i3"}, "history"),
        ({"history": []}, "history"),
        ({"user": ["u0"]}, "user"),
        ({"user": "u0", "exclude": [1.5]}, "exclude"),
        ({"user": "u0", "extra": 1}, "extra"),
    ],
)
def test_bad_requests_are_422_naming_the_field(client: TestClient, payload: dict[str, Any], field: str) -> None:
    r = client.post("/v1/recommend", json=payload)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(field in d["loc"] for d in detail), detail
    if payload == {"user": "nobody"}:
        assert "history" in detail[0]["msg"]  # the hint: send a history instead


def test_metadata_and_endpoints_of_a_recommender(client: TestClient, folders: dict[str, Path]) -> None:
    meta = client.get("/v1/metadata").json()
    assert meta["task"] == "recommendation" and meta["model"] == "ease"
    assert (meta["n_users"], meta["n_items"]) == (30, 30)
    assert "ndcg@10" in meta["metrics"] and meta["model_version"] == model_version(folders["rec"])
    assert client.get("/ready").json() == {"status": "ready", "model_version": meta["model_version"]}
    assert client.get("/live").status_code == 200
    assert client.post("/v1/predict", json={"inputs": "text"}).status_code == 404
    assert 'tunesmith_http_requests_total{endpoint="/v1/recommend",status="200"}' in client.get("/metrics").text
    assert "/v1/recommend" in client.get("/openapi.json").json()["paths"]


def test_api_key_is_required(folders: dict[str, Path]) -> None:
    with serving(folders["rec"], api_key="k3y") as c:
        assert c.post("/v1/recommend", json={"user": "u0"}).status_code == 401
        assert c.post("/v1/recommend", json={"user": "u0"}, headers={"x-api-key": "k3y"}).status_code == 200


def test_reload_same_task_and_refused_other_task(folders: dict[str, Path]) -> None:
    auth = {"authorization": f"Bearer {ADMIN}"}
    with serving(folders["rec"]) as c:
        old = model_version(folders["rec"])
        r = c.post("/admin/reload", json={"path": str(folders["clf"])}, headers=auth)
        assert r.status_code == 422 and "recommendation" in r.json()["detail"]
        assert r.json()["model_version"] == old
        assert c.post("/v1/recommend", json={"user": "u0"}).json()["model_version"] == old
        r = c.post("/admin/reload", json={"path": str(folders["rec2"])}, headers=auth)
        assert r.status_code == 200 and r.json()["reloaded"], r.text
        new = model_version(folders["rec2"])
        assert new != old and c.get("/v1/metadata").json()["model_version"] == new
        answer = c.post("/v1/recommend", json={"user": "u3", "k": 3}).json()
        assert answer["model_version"] == new
        assert answer["items"] == Recommender.load(folders["rec2"]).recommend("u3", k=3)


def test_recommend_requests_are_logged(folders: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "log.sqlite"
    with serving(folders["rec"], prediction_log=str(log)) as c:
        assert c.post("/v1/recommend", json={"user": "u0", "k": 2}).status_code == 200
        assert c.post("/v1/recommend", json={"user": "nobody"}).status_code == 422
    df = read_prediction_log(log)
    assert df["status"].tolist() == [200, 422]
    assert df["inputs"].iloc[0][0]["user"] == "u0"
    assert len(df["outputs"].iloc[0][0]["items"]) == 2
