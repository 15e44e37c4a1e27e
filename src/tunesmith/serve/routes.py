"""The routes of ``tunesmith serve``: :func:`create_app` builds the FastAPI app for one model folder.

Endpoints: ``POST /v1/predict`` (a model of the ``predict`` serving style: text, image,
tabular) or ``POST /v1/recommend`` (a recommender, see :mod:`tunesmith.serve.recommend`),
``GET /v1/metadata``, ``GET /live``, ``GET /ready``, ``GET /metrics`` and, when an admin token
is set, ``POST /admin/reload``. See ``docs/serving.md`` for the request and response formats.

The per-request path is kept short because it is measured: the ASGI gate
(:class:`~tunesmith.serve.gate.Gate`) does authentication, body-size limits, cheap overload
rejection and metrics before FastAPI routes the request; the handler parses the body with
pydantic's JSON parser and hands the rows to the :class:`~tunesmith.serve.batcher.Batcher`,
which runs the model on its own thread. Nothing on the event loop touches pandas or the model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from tunesmith.errors import DataError
from tunesmith.serve.batcher import Answer, ClientGone, DeadlineExceeded, QueueFull, ServedModel, ShuttingDown
from tunesmith.serve.gate import Gate
from tunesmith.serve.metrics import METRICS_CONTENT_TYPE
from tunesmith.serve.predlog import LogRecord
from tunesmith.serve.recommend import (
    RecommendRequest,
    RecommendResponse,
    recommend_error_detail,
    recommend_request_schema,
    recommend_with_integral_floats,
    request_row,
)
from tunesmith.serve.schemas import (
    ERRORS,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    ErrorOut,
    LiveOut,
    PredictRequest,
    PredictResponse,
    ReadyOut,
    ReloadOut,
    ReloadRequest,
    RowSpec,
    body_errors,
    data_error_detail,
    dumps,
    is_json,
    json_error,
    request_rows,
)
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.state import ServerState

logger = logging.getLogger(__package__)


def create_app(
    model: str | os.PathLike[str],
    settings: ServeSettings,
    predictor: ServedModel | None = None,
    *,
    owns_process: bool = False,
) -> FastAPI:
    """The server app for the model folder ``model``.

    ``predictor`` is an already loaded :class:`~tunesmith.export.runtime.Predictor` for that
    folder (``run_server`` loads it up front so a bad model fails before the server starts);
    without it the app loads the model itself at start-up. The app takes ownership of the
    predictor and closes it on shutdown. ``owns_process`` (set by ``run_server``) allows
    process-wide tuning: lower priority for the model's threads (``model_nice``) and a frozen
    garbage-collector heap after warm-up.
    """
    state = ServerState(Path(model), settings, predictor, owns_process=owns_process)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="tunesmith prediction server",
        version="1",
        description="Predictions from a model fine-tuned with tunesmith. See docs/serving.md.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.tunesmith = state
    timeout = settings.request_timeout_s
    max_rows = settings.max_rows_per_request

    def log_request(
        rid: str,
        started: float,
        status: int,
        version: str,
        backend: str,
        rows: list[Any],
        *,
        outputs: list[dict[str, Any]] | None = None,
        error: str | None = None,
        nbytes: int = 0,
    ) -> None:
        if state.predlog is None and state.watch is None:
            return
        record = LogRecord(
            timestamp=time.time(),
            request_id=rid,
            model_version=version,
            backend=backend,
            status=status,
            latency_ms=round((time.monotonic() - started) * 1000.0, 3),
            inputs=rows,
            outputs=outputs,
            error=error,
            nbytes=nbytes,
        )
        state.log(record)

    def request_id(request: Request) -> str:
        rid = request.headers.get("x-request-id") or ""
        return rid if REQUEST_ID.match(rid) else uuid.uuid4().hex

    async def read_body(request: Request, started: float, rid: str) -> bytes | Response:
        """The JSON body, or the response that refuses it (415, 408, 499)."""
        if not is_json(request.headers.get("content-type")):
            return json_error(415, "send the body as JSON with Content-Type: application/json")
        try:
            # The deadline covers the upload too: a client trickling its body holds no slot forever.
            return await asyncio.wait_for(request.body(), timeout=max(0.0, started + timeout - time.monotonic()))
        except asyncio.TimeoutError:
            state.metrics.rejections.labels("timeout").inc()
            return json_error(408, f"the request body did not arrive within {timeout:g}s")
        except ClientDisconnect:
            # Hung up mid-upload: nobody reads an answer, but the attempt is counted and logged.
            state.metrics.rejections.labels("disconnected").inc()
            gone_early = "the client closed the connection before the request body arrived"
            if state.batcher is not None:
                serving = state.batcher.predictor
                log_request(rid, started, 499, serving.version, serving.backend, [], error=gone_early)
            return json_error(499, gone_early)

    async def run_model(
        request: Request,
        rows: list[Any],
        probabilities: bool,
        started: float,
        data_error: Callable[[DataError], list[dict[str, Any]]],
    ) -> Answer | tuple[int, str | None, Response]:
        """The batcher's answer, or (status, error to log, response) when there is none.

        ``data_error`` words the 422 detail of a row the model cannot read. A 503 refusal
        logs nothing: the request never reached the model.
        """
        batcher = state.batcher
        assert batcher is not None
        # Completes when the client hangs up (the body is read, so the next message is the
        # disconnect): its rows are then skipped instead of computed for nobody.
        gone = asyncio.ensure_future(request.receive())
        try:
            return await batcher.submit(
                rows,
                probabilities=probabilities,
                deadline=started + timeout,
                ticket=request.scope.get("tunesmith.ticket"),
                gone=gone,
            )
        except QueueFull as exc:
            state.metrics.rejections.labels("queue_full").inc()
            return 503, None, json_error(503, "the prediction queue is full", {"retry-after": str(exc.retry_after)})
        except ShuttingDown:
            state.metrics.rejections.labels("shutting_down").inc()
            return 503, None, json_error(503, "the server is shutting down", {"retry-after": "1"})
        except ClientGone:
            state.metrics.rejections.labels("disconnected").inc()
            error = "the client closed the connection before the prediction was done"
            return 499, error, json_error(499, error)
        except DeadlineExceeded:
            state.metrics.rejections.labels("timeout").inc()
            error = f"no prediction within the request timeout of {timeout:g}s"
            return 504, error, json_error(504, error)
        except DataError as exc:
            state.metrics.rejections.labels("invalid").inc()
            return 422, str(exc), json_error(422, data_error(exc))
        except Exception as exc:
            logger.exception("tunesmith: prediction failed")
            error = f"{type(exc).__name__}: {exc}"
            return 500, error, json_error(500, f"the prediction failed: {error}")
        finally:
            gone.cancel()

    def invalid(errors: list[dict[str, Any]]) -> Response:
        """422 for a request that is not valid; every refused input echoed in strict JSON."""
        state.metrics.rejections.labels("invalid").inc()
        return json_error(422, errors)

    async def predict(request: Request) -> Response:
        started: float = request.scope.get("tunesmith.started") or time.monotonic()
        rid = request_id(request)
        body = await read_body(request, started, rid)
        if isinstance(body, Response):
            return body
        try:
            req = PredictRequest.model_validate_json(body)
            rows, single = request_rows(req.inputs)
        except ValidationError as exc:
            return invalid(body_errors(exc))
        except RequestValidationError as exc:
            return invalid(list(exc.errors()))
        if len(rows) > max_rows:
            state.metrics.rejections.labels("too_many_rows").inc()
            return json_error(
                413, f"inputs has {len(rows)} rows; this server takes at most {max_rows} per request", None
            )
        issues = state.row_spec.check(rows, single)
        if issues is not None:
            return invalid(issues)
        assert state.batcher is not None
        # Reported when the request fails; a success reports the model that answered it.
        version, backend = state.batcher.predictor.version, state.batcher.predictor.backend
        outputs = None
        answer = await run_model(
            request, rows, req.probabilities, started, lambda exc: data_error_detail(exc, single, rows)
        )
        if isinstance(answer, Answer):
            status, error = 200, None
            outputs = answer.predictions
            version, backend = answer.model_version, answer.backend
            body_out = {
                "model_version": version,
                "backend": backend,
                "precision": answer.precision,
                "predictions": outputs,
            }
            # A model fed values far outside its training range can answer NaN: null, as documented.
            response = Response(dumps(body_out, non_finite="null"), media_type="application/json")
        else:
            status, error, response = answer
            if status == 503:
                return response
        response.headers["x-request-id"] = rid
        log_request(rid, started, status, version, backend, rows, outputs=outputs, error=error, nbytes=len(body))
        return response

    async def recommend(request: Request) -> Response:
        started: float = request.scope.get("tunesmith.started") or time.monotonic()
        rid = request_id(request)
        body = await read_body(request, started, rid)
        if isinstance(body, Response):
            return body
        try:
            req = RecommendRequest.model_validate_json(body)
        except ValidationError as exc:
            again = recommend_with_integral_floats(body)
            if again is None:
                return invalid(body_errors(exc))
            req = again
        if req.user is None and req.history is None:
            msg = "give a user id (user) or a list of item ids (history)"
            return invalid([{"type": "missing", "loc": ["body", "user"], "msg": msg, "input": None}])
        rows = [request_row(req)]
        assert state.batcher is not None
        version, backend = state.batcher.predictor.version, state.batcher.predictor.backend
        outputs = None
        answer = await run_model(request, rows, False, started, recommend_error_detail)
        if isinstance(answer, Answer):
            status, error = 200, None
            outputs = answer.predictions
            version, backend = answer.model_version, answer.backend
            out = outputs[0]
            body_out = {"model_version": version, "items": out["items"], "source": out["source"]}
            response = Response(dumps(body_out), media_type="application/json")
        else:
            status, error, response = answer
            if status == 503:
                return response
        response.headers["x-request-id"] = rid
        log_request(rid, started, status, version, backend, rows, outputs=outputs, error=error, nbytes=len(body))
        return response

    def route(path: str, summary: str, schema: type[BaseModel], response: type[BaseModel], handler: Any) -> None:
        # The body is read by the handler itself (to bound its size and time), so the request
        # schema is declared for the OpenAPI document only.
        app.post(
            path,
            summary=summary,
            response_model=response,
            responses={200: {"headers": REQUEST_ID_HEADER}, **ERRORS},
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema.__name__}"}}},
                }
            },
        )(handler)

    # The model's route, by the serving style of its kind (Kind.serving in the registry of kinds).
    model_routes: dict[str, tuple[str, str, type[BaseModel], type[BaseModel], Any]] = {
        "predict": ("/v1/predict", "Predict one row or a batch", PredictRequest, PredictResponse, predict),
        "recommend": (
            "/v1/recommend",
            "Top-k items for a user or a history",
            RecommendRequest,
            RecommendResponse,
            recommend,
        ),
    }
    route(*model_routes.get(state.serving, model_routes["predict"]))

    @app.get(
        "/v1/metadata",
        summary="Model and server metadata",
        response_model=dict[str, Any],
        responses={401: ERRORS[401]},
    )
    async def metadata() -> Response:
        return Response(dumps(state.metadata()), media_type="application/json")

    @app.get("/live", summary="200 while the process runs", response_model=LiveOut)
    async def live() -> Response:
        return Response(b'{"status":"alive"}', media_type="application/json")

    @app.get(
        "/ready",
        summary="200 once the model is warmed up; 503 before that and while draining",
        response_model=ReadyOut,
        responses={503: {"model": ReadyOut, "description": "Starting, draining, or the warm-up failed."}},
    )
    async def ready() -> Response:
        if state.ready:
            batcher = state.batcher
            version = batcher.predictor.version if batcher is not None else None
            return Response(dumps({"status": "ready", "model_version": version}), media_type="application/json")
        why = "draining" if state.draining else ("failed" if state.failure else "starting")
        payload: dict[str, Any] = {"status": why}
        if state.failure:
            payload["detail"] = state.failure
        return Response(dumps(payload), status_code=503, media_type="application/json")

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "The Prometheus text exposition format.",
                "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    if settings.admin_token is not None:

        @app.post(
            "/admin/reload",
            summary="Load a model version beside the serving one and switch over",
            response_model=ReloadOut,
            responses={
                401: {"model": ErrorOut, "description": "Admin token missing or wrong."},
                408: ERRORS[408],
                409: {"model": ReloadOut, "description": "Another reload is running; the old model keeps serving."},
                413: {"model": ErrorOut, "description": "Body larger than max_body_bytes."},
                415: ERRORS[415],
                422: {
                    "model": ReloadOut,
                    "description": "Invalid body (detail lists the fields), or the model cannot be loaded (detail "
                    "says why); the old model keeps serving.",
                },
            },
            openapi_extra={
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReloadRequest"}}},
                }
            },
        )
        async def reload(request: Request) -> Response:
            started: float = request.scope.get("tunesmith.started") or time.monotonic()
            try:
                body = await asyncio.wait_for(request.body(), timeout=max(0.0, started + timeout - time.monotonic()))
            except asyncio.TimeoutError:
                state.metrics.rejections.labels("timeout").inc()
                return json_error(408, f"the request body did not arrive within {timeout:g}s")
            except ClientDisconnect:
                state.metrics.rejections.labels("disconnected").inc()
                return json_error(499, "the client closed the connection before the request body arrived")
            if body.strip():
                if not is_json(request.headers.get("content-type")):
                    return json_error(415, "send the body as JSON with Content-Type: application/json")
                try:
                    req = ReloadRequest.model_validate_json(body)
                except ValidationError as exc:
                    state.metrics.rejections.labels("invalid").inc()
                    return state._reload_answer(422, body_errors(exc))
            else:
                req = ReloadRequest()
            return await state.reload(req)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler answers 500 when the refused input holds a NaN (its JSON is strict).
        state.metrics.rejections.labels("invalid").inc()
        return json_error(422, list(exc.errors()))

    app.openapi = _openapi(app, state)  # type: ignore[method-assign]
    app.add_middleware(Gate, state=state)
    return app


def _openapi(app: FastAPI, state: ServerState) -> Callable[[], dict[str, Any]]:
    """The document builder: the rows of ``/v1/predict`` are those of the model serving now."""
    settings = state.settings
    built: dict[RowSpec, dict[str, Any]] = {}

    def build() -> dict[str, Any]:
        spec = state.row_spec
        cached = built.get(spec)
        if cached is not None:
            return cached
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in (RecommendRequest if state.recommender else PredictRequest, ReloadRequest):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(model_schema.pop("$defs", {}))
            schemas[model.__name__] = model_schema
        if state.recommender:
            schemas["RecommendRequest"] = recommend_request_schema(schemas["RecommendRequest"])
        else:
            schemas["PredictRequest"] = spec.request_schema(settings.max_rows_per_request)
        schemes = components.setdefault("securitySchemes", {})
        paths = schema.get("paths", {})
        if settings.api_key is not None:
            schemes["ApiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            schemes["Bearer"] = {"type": "http", "scheme": "bearer"}
            for path in ("/v1/predict", "/v1/recommend", "/v1/metadata"):
                for op in paths.get(path, {}).values():
                    op["security"] = [{"ApiKey": []}, {"Bearer": []}]
        if settings.admin_token is not None:
            schemes["Bearer"] = {"type": "http", "scheme": "bearer"}
            for op in paths.get("/admin/reload", {}).values():
                op["security"] = [{"Bearer": []}]
        if not schemes:
            components.pop("securitySchemes")
        # One document per kind of rows: a reload to a model with other columns changes it.
        built.clear()
        built[spec] = schema
        app.openapi_schema = schema
        return schema

    return build
