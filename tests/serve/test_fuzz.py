"""Property-based API tests: schemathesis runs against the served OpenAPI document.

The run is what ``schemathesis run`` does, in-process over ASGI against a real tiny text model
(lifespan included): the examples of the document, the coverage phase (boundary values and a
wrong type for every field, one at a time) and random fuzzing, schema-valid and schema-invalid,
for every operation, with a fixed seed and a bounded number of examples. Every response goes
through all of schemathesis' checks: no 5xx, a documented status code, content type and
headers, a body that matches the documented schema, valid data accepted and invalid data
refused.

(schemathesis' pytest integration, ``schema.parametrize`` on a fixture, does not run under
pytest 9, so the test drives its engine directly.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_reviews
from tunesmith import FineTuner
from tunesmith.serve import ServeSettings, create_app

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

ADMIN = "fuzz-admin-token"
MAX_ROWS = 8
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
API_KEY = "fuzz-api-key"
# schemathesis' statuses for refused invalid data, and 413: a batch over max_rows_per_request is
# refused as too large (a size limit, like the body's), and the document says so with maxItems.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]


def _config(*, data_dependent: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "seed": 20240611,
        # No .schemathesis/ folder of replayed failures in the working directory: every run is fresh.
        "cache": {"enabled": False},
        "headers": {"Authorization": f"Bearer {ADMIN}"},
        "generation": {"max-examples": 40, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            "negative_data_rejection": {"expected-statuses": REFUSALS},
        },
        # Whether a valid body succeeds can depend on data no schema holds (which folders load,
        # which users the training log has): _valid_body_outcome checks those bodies instead.
        "operations": [
            {"include-path": path, "checks": {"positive_data_acceptance": {"enabled": False}}}
            for path in ("/admin/reload", *data_dependent)
        ],
    }


@schemathesis.check
def _valid_body_outcome(ctx: Any, response: Any, case: Any) -> None:
    """A schema-valid body whose outcome depends on data is never refused as invalid.

    A reload loads (200), meets another reload (409), or names a folder that cannot be loaded
    (422 with a message; the old model keeps serving). A recommendation is made (200) or names
    a user the training log does not have (422 on ``user``, saying to send the history).
    """
    path = case.operation.path
    if path not in ("/admin/reload", "/v1/recommend") or case.meta is None:
        return
    if not case.meta.generation.mode.is_positive or response.status_code in (401, 413, 415):
        return  # invalid on purpose, or refused before the body was read
    body = response.json()
    if response.status_code == 200:
        assert path != "/admin/reload" or body["reloaded"] is True, body
        return
    if path == "/admin/reload":
        assert response.status_code in (409, 422), response.status_code
        assert body["reloaded"] is False and isinstance(body["detail"], str), body
        return
    assert response.status_code == 422, response.status_code
    (issue,) = body["detail"]
    assert issue["loc"] == ["body", "user"] and "unknown user" in issue["msg"], body


@pytest.fixture(scope="module")
def fuzz_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text model that also reads a numeric and a categorical column, so the document
    describes (and schemathesis sends) every kind of column."""
    root = tmp_path_factory.mktemp("fuzz")
    df = make_reviews(16).assign(stars=[float(i % 5) for i in range(16)], genre=["drama", "comedy"] * 8)
    params = {"backbone": "tiny-text", "epochs": 1, "batch_size": 8, "max_length": 32, "progress": False}
    fitted = FineTuner(**params, runs_dir=str(root / "runs"), num_threads=1, seed=0)
    return fitted.fit(df, target="label").save(root / "model")


@pytest.fixture
def api(fuzz_model: Path) -> Iterator[Any]:
    """The served document of a fresh app, whose lifespan ends with the test."""
    from schemathesis.python import asgi

    settings = ServeSettings(
        backend="torch", threads=1, api_key=None, admin_token=ADMIN, max_rows_per_request=MAX_ROWS, model_nice=0
    )
    app = create_app(fuzz_model, settings)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config.from_dict(_config()))
    finally:
        asgi.shutdown_lifespans()


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
    from schemathesis.python import asgi

    settings = ServeSettings(backend="torch", threads=1, api_key=API_KEY, admin_token=ADMIN, model_nice=0)
    app = create_app(fuzz_recommender, settings)
    config = _config(data_dependent=("/v1/recommend",))
    # The admin token and the API key travel in one header each: Authorization and X-API-Key.
    config["headers"]["X-API-Key"] = API_KEY
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config.from_dict(config))
    finally:
        asgi.shutdown_lifespans()


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
    from schemathesis.engine import Status, events, from_schema

    failures: list[str] = []
    cases: Counter[str] = Counter()
    phases: dict[str, Status] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases[event.label or "?"] += len(event.recorder.cases)
            if event.status in (Status.FAILURE, Status.ERROR):
                failures.extend(_describe(event))
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"{type(event).__name__}: {getattr(event, 'info', event)}")
        elif isinstance(event, events.PhaseFinished):
            phases[event.phase.name.value] = event.status
    assert not failures, "\n\n".join(failures)
    for phase in ("examples", "coverage", "fuzzing"):
        assert phases.get(phase) == Status.SUCCESS, phases
    return cases


def _describe(event: Any) -> Iterator[str]:
    from schemathesis.engine import Status

    recorder = event.recorder
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status != Status.FAILURE:
                continue
            case = recorder.cases[case_id].value
            response = recorder.interactions.get(case_id)
            answer = ""
            if response is not None and response.response is not None:
                answer = f" -> {response.response.status_code} {response.response.content[:300]!r}"
            failure = check.failure_info.failure if check.failure_info else None
            title = getattr(failure, "title", "") or check.name
            body = "" if type(case.body).__name__ == "NotSet" else f" body={case.body!r}"[:1000]
            yield f"[{event.phase.value}] {event.label}: {title}\n  {case.method} {case.path}{body}{answer}"


def test_the_recommend_body_is_what_the_document_says(fuzz_recommender: Path) -> None:
    from fastapi.testclient import TestClient

    settings = ServeSettings(backend="torch", threads=1, api_key=None, admin_token=None, model_nice=0)
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
