"""The ASGI gate of the prediction server: authentication, body limits, early 503, request metrics.

:class:`Gate` is one pure-ASGI middleware that runs before FastAPI routes a request.
Everything it checks happens before the body is read, so refusals cost next to nothing: a
missing or wrong API key (``/v1/``) or admin token (``/admin/``), a ``Content-Length`` over
``max_body_bytes`` (refused unread, the connection closed), a full queue or a draining
server (503 with Retry-After). A body sent without a length is counted as it arrives and
cut off at the limit.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException

from tunesmith.serve.schemas import dumps

if TYPE_CHECKING:
    from tunesmith.serve.state import ServerState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ENDPOINTS = frozenset(
    {
        "/v1/predict",
        "/v1/recommend",
        "/v1/metadata",
        "/live",
        "/ready",
        "/metrics",
        "/admin/reload",
        "/openapi.json",
        "/docs",
    }
)


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes", headers={"connection": "close"})


def _secret_ok(given: bytes | None, secret: bytes) -> bool:
    return given is not None and hmac.compare_digest(given, secret)


async def _send_json(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Gate:
    """Pure ASGI middleware: auth, body limit, early 503, request metrics.

    Everything here happens before the body is read, so refusals cost next to nothing.
    (Starlette's BaseHTTPMiddleware would add a task and a stream per request.)
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.max_body = state.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        started = time.monotonic()
        scope["tunesmith.started"] = started
        path: str = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        state.in_flight += 1
        ticket = None
        try:
            refusal = self._screen(scope, path)
            if refusal is not None:
                code, reason, payload, headers = refusal
                state.metrics.rejections.labels(reason).inc()
                await _send_json(send_status, code, payload, headers)
                return
            if path == state.model_endpoint and state.batcher is not None:
                ticket = scope["tunesmith.ticket"] = state.batcher.arrive()
            await self.app(scope, self._limited(scope, receive), send_status)
        finally:
            if ticket is not None and state.batcher is not None:
                state.batcher.leave(ticket)
            state.in_flight -= 1
            state.metrics.request(endpoint, status, time.monotonic() - started)

    def _screen(self, scope: Scope, path: str) -> tuple[int, str, Any, list[tuple[bytes, bytes]]] | None:
        state = self.state
        length: bytes | None = None
        bearer: bytes | None = None
        api_key: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"authorization":
                if value[:7].lower() == b"bearer ":
                    bearer = value[7:].strip()
            elif key == b"x-api-key":
                api_key = value.strip()
        challenge = [(b"www-authenticate", b"Bearer")]
        if path.startswith("/v1/") and state.api_key is not None:
            if not (_secret_ok(api_key, state.api_key) or _secret_ok(bearer, state.api_key)):
                return 401, "unauthorized", {"detail": "a valid API key is required (X-API-Key header)"}, challenge
        elif path.startswith("/admin/") and state.admin_token is not None and not _secret_ok(bearer, state.admin_token):
            return 401, "unauthorized", {"detail": "a valid admin token is required (Authorization: Bearer)"}, challenge
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return 400, "invalid", {"detail": "Content-Length is not a number"}, []
            if too_big:
                # Refused without reading the body; the connection closes so the rest of it is
                # not read either.
                detail = {"detail": f"the request body is larger than {self.max_body} bytes"}
                return 413, "body_too_large", detail, [(b"connection", b"close")]
        batcher = state.batcher
        if path == state.model_endpoint and batcher is not None:
            if batcher.draining:
                return 503, "shutting_down", {"detail": "the server is shutting down"}, [(b"retry-after", b"1")]
            if batcher.full():
                retry = str(batcher.retry_after()).encode()
                return 503, "queue_full", {"detail": "the prediction queue is full"}, [(b"retry-after", retry)]
        return None

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return receive
        for key, _value in scope["headers"]:
            if key == b"content-length":
                return receive  # already checked; the server enforces the length it announced
        limit = self.max_body
        metrics = self.state.metrics
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    metrics.rejections.labels("body_too_large").inc()
                    raise _BodyTooLarge(limit)
            return message

        return receive_limited
