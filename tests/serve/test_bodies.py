"""Hand-written hostile request bodies: huge, deeply nested, malformed, mis-typed, not UTF-8.

Each one gets an exact 4xx with a JSON error body that says what was wrong (never a 5xx, never
a hang), and the server answers a valid request right after. The cases schemathesis does not
generate (it sends schema-shaped JSON) are the point here; ``tests/serve/test_serve.py`` has
the size limits and NaN/Infinity cases on small bodies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from tests.serve._schemathesis_engine import fit_text_model
from tunesmith.serve import ServeSettings, create_app

ADMIN = "bodies-admin-token"
JSON = {"content-type": "application/json"}
ROW = {"text": "great fun movie", "stars": 4.0, "genre": "drama"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One server with the default limits (1 MiB bodies, 256 rows a request) for every case."""
    model = fit_text_model(tmp_path_factory.mktemp("bodies"))
    options: dict[str, Any] = {"backend": "torch", "threads": 1, "api_key": None, "admin_token": ADMIN}
    settings = ServeSettings(**options, model_nice=0)
    with TestClient(create_app(model, settings)) as c:
        yield c


def _post(client: TestClient, body: Any, headers: dict[str, str] | None = None, path: str = "/v1/predict") -> Any:
    started = time.monotonic()
    r = client.post(path, content=body, headers=JSON if headers is None else headers)
    assert time.monotonic() - started < 30, "the server took too long to refuse the body"
    return r


def _still_answers(client: TestClient) -> None:
    assert client.get("/ready").status_code == 200
    r = client.post("/v1/predict", json={"inputs": ROW})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text


def _error_json(r: Any) -> Any:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = json.loads(r.text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert set(body) == {"detail"} and body["detail"], body
    return body["detail"]


def _json_invalid(r: Any) -> str:
    """The message of a 422 that says the body is not valid JSON."""
    assert r.status_code == 422, (r.status_code, r.text[:500])
    detail = _error_json(r)
    assert isinstance(detail, list) and detail[0]["type"] == "json_invalid", detail
    return str(detail[0]["msg"])


# --- huge --------------------------------------------------------------------------------------


def test_a_50_mb_body_is_413_before_it_is_read(client: TestClient) -> None:
    big = b'{"inputs": ["' + b"x" * (50 << 20) + b'"]}'
    r = _post(client, big)
    assert r.status_code == 413, r.text[:300]
    assert "bytes" in _error_json(r)
    _still_answers(client)


def test_a_50_mb_body_sent_chunked_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ["'
        for _ in range(50):
            yield b"y" * (1 << 20)
        yield b'"]}'

    r = _post(client, chunks())
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413, r.text[:300]
    _still_answers(client)


@pytest.mark.parametrize("rows", [257, 100_000])
def test_many_rows_beyond_the_limit_are_413(client: TestClient, rows: int) -> None:
    body = json.dumps({"inputs": ["x"] * rows}).encode()
    assert len(body) < 1 << 20  # under the body limit: the row limit refuses it
    r = _post(client, body)
    assert r.status_code == 413, r.text[:300]
    assert f"inputs has {rows} rows" in _error_json(r) and "at most 256" in _error_json(r)
    _still_answers(client)


# --- deeply nested ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"inputs": ' + b"[" * 100_000,
        b'{"inputs": [' + b'{"text": ' * 50_000 + b'"x"' + b"}" * 50_000 + b"]}",
        b'{"inputs": {"text": "x", "extra": ' + b"[" * 300 + b"]" * 300 + b"}}",
    ],
    ids=["bare-arrays", "inputs-arrays", "unclosed", "objects", "300-levels-in-a-cell"],
)
def test_deeply_nested_json_is_422(client: TestClient, body: bytes) -> None:
    r = _post(client, body)
    assert r.status_code == 422, (r.status_code, r.text[:500])
    assert len(r.content) < 20_000, "the refused input is echoed back whole"
    _error_json(r)
    _still_answers(client)


# --- malformed JSON and bytes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" ",
        b"{",
        b'{"inputs": }',
        b'{"inputs": "a",}',
        b"{'inputs': 'a'}",
        b'{"inputs": "a"} {"inputs": "b"}',
        b'{"inputs": "a"}garbage',
        b"nul",
        b'{"inputs": "\\x"}',
        b'{"inputs": "\x00"}',
        b'{"inputs": "\\ud800"}',
        b'{"inputs": 1e999999999999999}',
    ],
)
def test_malformed_json_is_422(client: TestClient, body: bytes) -> None:
    r = _post(client, body)
    assert r.status_code == 422, (body, r.status_code, r.text[:500])
    _error_json(r)
    _still_answers(client)


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": "\xff\xfe bad bytes"}',
        b'{"inputs": "caf\xe9"}',  # latin-1
        b'{"inputs": "\xed\xa0\x80"}',  # a surrogate, UTF-8 encoded
        '{"inputs": "fine"}'.encode("utf-16"),
        b"\xff" * 1000,
    ],
)
def test_bytes_that_are_not_utf8_are_422(client: TestClient, body: bytes) -> None:
    assert "invalid" in _json_invalid(_post(client, body)).lower()
    _still_answers(client)


@pytest.mark.parametrize(
    "body",
    [b'{"inputs": NaN}', b'{"inputs": {"text": "x", "stars": Infinity}}', b'{"inputs": [-Infinity]}'],
)
def test_nan_and_infinity_literals_are_422(client: TestClient, body: bytes) -> None:
    r = _post(client, body)
    assert r.status_code == 422, r.text
    _error_json(r)
    _still_answers(client)


# --- content types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "json",
        "",
        "application/json\x7f",
    ],
)
def test_a_body_that_is_not_declared_json_is_415(client: TestClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    for path in ("/v1/predict", "/admin/reload"):
        auth = {"authorization": f"Bearer {ADMIN}"} if path == "/admin/reload" else {}
        r = _post(client, b'{"inputs": "fine"}', {**headers, **auth}, path=path)
        assert r.status_code == 415, (path, content_type, r.status_code, r.text)
        assert "application/json" in _error_json(r)
    _still_answers(client)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json;"])
def test_json_with_parameters_or_other_case_is_json(client: TestClient, content_type: str) -> None:
    r = _post(client, json.dumps({"inputs": ROW}).encode(), {"content-type": content_type})
    assert r.status_code == 200, r.text


# --- the reload endpoint ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{", b"[" * 100_000, b'{"model": "\xff"}', b'{"model": NaN}', b'"just a string"', b"[]"],
)
def test_reload_refuses_malformed_bodies_and_keeps_serving(client: TestClient, body: bytes) -> None:
    headers = {**JSON, "authorization": f"Bearer {ADMIN}"}
    r = _post(client, body, headers, path="/admin/reload")
    assert r.status_code == 422, (r.status_code, r.text[:500])
    assert r.json()["reloaded"] is False
    _still_answers(client)


def test_a_huge_reload_body_is_413(client: TestClient) -> None:
    headers = {**JSON, "authorization": f"Bearer {ADMIN}"}
    r = _post(client, b'{"model": "' + b"m" * (50 << 20) + b'"}', headers, path="/admin/reload")
    assert r.status_code == 413, r.text[:300]
    _still_answers(client)
