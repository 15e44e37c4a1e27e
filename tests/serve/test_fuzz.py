"""Property-based API tests: schemathesis runs against the served OpenAPI document.

The engine (in-process over ASGI against a real tiny text model, lifespan included; the
examples, coverage and fuzzing phases with a fixed seed; every one of schemathesis' checks)
lives in :mod:`tests.serve._schemathesis_engine`, which the reliability benchmark runs too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tunesmith.serve import ServeSettings, create_app

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from tests.serve._schemathesis_engine import (  # noqa: E402
    ADMIN,
    API_KEY,
    config,
    fit_text_model,
    served_schema,
    text_settings,
)
from tests.serve._schemathesis_engine import run as run_engine  # noqa: E402

# What the document holds for a text model served with an admin token.
OPERATIONS = {
    "POST /v1/predict",
    "GET /v1/metadata",
    "GET /live",
    "GET /ready",
    "GET /metrics",
    "POST /admin/reload",
}
REC_OPERATIONS = (OPERATIONS - {"POST /v1/predict"}) | {"POST /v1/recommend"}


@pytest.fixture(scope="module")
def fuzz_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text model that also reads a numeric and a categorical column."""
    return fit_text_model(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture
def api(fuzz_model: Path) -> Iterator[Any]:
    """The served document of a fresh app, whose lifespan ends with the test."""
    with served_schema(fuzz_model, text_settings(), config()) as schema:
        yield schema


@pytest.fixture(scope="module")
def fuzz_recommender(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EASE recommender: 30 users in three groups, each drawing 6 of its own 10 items."""
    from tunesmith.recsys.recommender import Recommender

    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):
        picks = rng.choice(np.arange(u % 3 * 10, u % 3 * 10 + 10), size=6, replace=False)
        rows += [{"user_id": f"u{u}", "item_id": f"i{i}", "timestamp": t} for t, i in enumerate(picks)]
    root = tmp_path_factory.mktemp("fuzz_rec")
    return Recommender("ease", model_params={"l2": 10.0}).fit(pd.DataFrame(rows)).save(root / "rec")


@pytest.fixture
def rec_api(fuzz_recommender: Path) -> Iterator[Any]:
    """The document of a recommender served with an API key too (so the checks try requests without it)."""
    options: dict[str, Any] = {"backend": "torch", "threads": 1, "api_key": API_KEY, "admin_token": ADMIN}
    settings = ServeSettings(**options, model_nice=0)
    run_config = config(data_dependent=("/v1/recommend",))
    # The admin token and the API key travel in one header each: Authorization and X-API-Key.
    run_config["headers"]["X-API-Key"] = API_KEY
    with served_schema(fuzz_recommender, settings, run_config) as schema:
        yield schema


def test_the_document_lists_every_operation(api: Any) -> None:
    labels = {result.ok().label for result in api.get_all_operations()}
    assert labels == OPERATIONS


def test_schemathesis_finds_nothing(api: Any) -> None:
    cases = _run(api)
    assert set(cases) == OPERATIONS and min(cases.values()) > 0, cases
    assert cases["POST /v1/predict"] >= 80, cases


def test_schemathesis_finds_nothing_in_a_recommender_behind_an_api_key(rec_api: Any) -> None:
    cases = _run(rec_api)
    assert set(cases) == REC_OPERATIONS and min(cases.values()) > 0, cases


def _run(schema: Any) -> Counter[str]:
    """The cases per operation of a schemathesis run (examples, coverage, fuzzing); fails on any failure."""
    from schemathesis.engine import Status

    result = run_engine(schema)
    assert not result.failures, "\n\n".join(result.failures)
    assert result.server_errors == 0 and result.schema_violations == 0, result.failed_checks
    for phase in ("examples", "coverage", "fuzzing"):
        assert result.phases.get(phase) == Status.SUCCESS, result.phases
    return result.cases


def test_the_recommend_body_is_what_the_document_says(fuzz_recommender: Path) -> None:
    from fastapi.testclient import TestClient

    options: dict[str, Any] = {"backend": "torch", "threads": 1, "api_key": None, "admin_token": None}
    settings = ServeSettings(**options, model_nice=0)
    with TestClient(create_app(fuzz_recommender, settings)) as client:
        body = client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]
        assert body["additionalProperties"] is False
        assert [branch["required"] for branch in body["anyOf"]] == [["user"], ["history"]]
        for example in body["examples"]:  # valid for any recommender: no user of the training log
            assert client.post("/v1/recommend", json=example).status_code == 200, example
        # JSON has one kind of number, and the document's integer includes 5.0.
        assert client.post("/v1/recommend", json={"user": "u0", "k": 5.0}).status_code == 200
        assert client.post("/v1/recommend", json={"history": ["i1", 3.0], "exclude": [7.0]}).status_code == 200
        for invalid in ({}, {"user": None}, {"user": "u0", "k": 2.5}, {"user": 1.5}, {"user": "u0", "top": 1}):
            r = client.post("/v1/recommend", json=invalid)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body", (invalid, r.text)
