"""schemathesis' engine run in-process (ASGI) against a served tiny model, shared by the API fuzz
tests (``tests/serve/test_fuzz.py``) and the reliability benchmark (``bench/_reliability_fuzz.py``).

The run is what ``schemathesis run`` does: the examples of the document, the coverage phase
(boundary values and a wrong type for every field, one at a time) and random fuzzing,
schema-valid and schema-invalid, for every operation, with a fixed seed and a bounded number
of examples. Every response goes through all of schemathesis' checks: no 5xx, a documented
status code, content type and headers, a body that matches the documented schema, valid data
accepted and invalid data refused.

(schemathesis' pytest integration, ``schema.parametrize`` on a fixture, does not run under
pytest 9, so the engine is driven directly.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis

from tests.conftest import make_reviews
from tunesmith import FineTuner
from tunesmith.serve import ServeSettings, create_app

ADMIN = "fuzz-admin-token"
MAX_ROWS = 8
API_KEY = "fuzz-api-key"
SEED = 20240611
# schemathesis' statuses for refused invalid data, and 413: a batch over max_rows_per_request is
# refused as too large (a size limit, like the body's), and the document says so with maxItems.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
# The checks whose failure means a response the document does not describe.
CONFORMANCE_CHECKS = (
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
)


def config(*, data_dependent: tuple[str, ...] = (), max_examples: int = 40, seed: int = SEED) -> dict[str, Any]:
    """The schemathesis configuration of a run."""
    return {
        "seed": seed,
        # No .schemathesis/ folder of replayed failures in the working directory: every run is fresh.
        "cache": {"enabled": False},
        "headers": {"Authorization": f"Bearer {ADMIN}"},
        "generation": {"max-examples": max_examples, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            "negative_data_rejection": {"expected-statuses": REFUSALS},
        },
        # Whether a valid body succeeds can depend on data no schema holds (which folders load,
        # which users the training log has): valid_body_outcome checks those bodies instead.
        "operations": [
            {"include-path": path, "checks": {"positive_data_acceptance": {"enabled": False}}}
            for path in ("/admin/reload", *data_dependent)
        ],
    }


@schemathesis.check
def valid_body_outcome(ctx: Any, response: Any, case: Any) -> None:
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


def fit_text_model(root: Path) -> Path:
    """A tiny text model that also reads a numeric and a categorical column, so the document
    describes (and schemathesis sends) every kind of column. Returns its folder."""
    df = make_reviews(16).assign(stars=[float(i % 5) for i in range(16)], genre=["drama", "comedy"] * 8)
    params = {"backbone": "tiny-text", "epochs": 1, "batch_size": 8, "max_length": 32, "progress": False}
    fitted = FineTuner(**params, runs_dir=str(root / "runs"), num_threads=1, seed=0)
    return fitted.fit(df, target="label").save(root / "model")


def text_settings() -> ServeSettings:
    """How the text model is served: an admin token, at most ``MAX_ROWS`` rows a request."""
    # a dict, because mypy reads the pydantic model's fields without their defaults
    options: dict[str, Any] = {"backend": "torch", "threads": 1, "api_key": None, "admin_token": ADMIN}
    return ServeSettings(**options, max_rows_per_request=MAX_ROWS, model_nice=0)


@contextmanager
def served_schema(model: Path, settings: ServeSettings, run_config: dict[str, Any]) -> Iterator[Any]:
    """The served document of a fresh app, whose lifespan ends with the block."""
    from schemathesis.python import asgi

    app = create_app(model, settings)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config.from_dict(run_config))
    finally:
        asgi.shutdown_lifespans()


@dataclass
class RunResult:
    """What a run did: cases per operation, failures described, failed checks counted by name."""

    cases: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    failed_checks: Counter[str] = field(default_factory=Counter)
    phases: dict[str, Any] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        """Responses with a 5xx status."""
        return self.failed_checks["not_a_server_error"]

    @property
    def schema_violations(self) -> int:
        """Responses the document does not describe (body, status, content type or headers)."""
        return sum(self.failed_checks[name] for name in CONFORMANCE_CHECKS)


def run(schema: Any) -> RunResult:
    """Run schemathesis' engine (examples, coverage, fuzzing) over ``schema`` and collect what it found."""
    from schemathesis.engine import Status, events, from_schema

    result = RunResult()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            result.cases[event.label or "?"] += len(event.recorder.cases)
            if event.status in (Status.FAILURE, Status.ERROR):
                result.failures.extend(_describe(event, result.failed_checks))
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            result.failures.append(f"{type(event).__name__}: {getattr(event, 'info', event)}")
        elif isinstance(event, events.PhaseFinished):
            result.phases[event.phase.name.value] = event.status
    return result


def _describe(event: Any, failed: Counter[str]) -> Iterator[str]:
    from schemathesis.engine import Status

    recorder = event.recorder
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status != Status.FAILURE:
                continue
            failed[check.name] += 1
            case = recorder.cases[case_id].value
            response = recorder.interactions.get(case_id)
            answer = ""
            if response is not None and response.response is not None:
                answer = f" -> {response.response.status_code} {response.response.content[:300]!r}"
            failure = check.failure_info.failure if check.failure_info else None
            title = getattr(failure, "title", "") or check.name
            body = "" if type(case.body).__name__ == "NotSet" else f" body={case.body!r}"[:1000]
            yield f"[{event.phase.value}] {event.label}: {title}\n  {case.method} {case.path}{body}{answer}"
