"""The HTTP edge every API shares: request ids, route metrics, JSON errors, /metrics, /healthz."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from crm_shared import metrics
from crm_shared.config import ServiceSettings
from crm_shared.db import open_pool
from crm_shared.logs import configure_logging

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
S = TypeVar("S", bound=ServiceSettings)


def create_api(service: str, title: str, lifespan: Lifespan, description: str = "") -> FastAPI:
    """A FastAPI app with the platform's middleware, error format and operational endpoints."""
    app = FastAPI(title=title, description=description, lifespan=lifespan, version="1")

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        request.state.request_id = request_id
        route = _route_template(request)
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
        finally:
            elapsed = time.perf_counter() - started
            metrics.HTTP_REQUESTS.labels(service, route, request.method, str(status)).inc()
            metrics.HTTP_LATENCY.labels(service, route, request.method).observe(elapsed)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(request, error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in issue["loc"]), "problem": issue["msg"]}
            for issue in error.errors()
        ]
        return error_response(request, 422, "the request is invalid", details=problems)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The one error shape of the platform: {"error": {"status", "message", "request_id", ...}}."""
    body: dict[str, Any] = {
        "status": status,
        "message": message,
        "request_id": getattr(request.state, "request_id", None),
    }
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=dict(headers or {}))


def _route_template(request: Request) -> str:
    """The route's path template, so that metrics are not labelled with customer ids."""
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


def database_lifespan(settings: ServiceSettings, migrations: Path) -> Lifespan:
    """Open (and migrate) the service's database on start-up; close the pool on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await open_pool(settings.dsn, migrations, settings.pool_size)
        try:
            yield
        finally:
            await app.state.pool.close()

    return lifespan


async def connection(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """FastAPI dependency: one pooled connection for the request."""
    async with request.app.state.pool.acquire() as conn:
        yield conn


def serve(factory: Callable[[S], FastAPI], settings: S, process_name: str) -> None:
    """Run an API built by `factory` with uvicorn on the settings' port, logging JSON lines."""
    configure_logging(process_name, settings.platform.log_level)
    uvicorn.run(
        factory(settings), host="0.0.0.0", port=settings.api_port, log_config=None, access_log=False
    )
