"""The HTTP edge every API shares: request ids, route metrics, JSON errors, /metrics, /healthz,
and the service token that guards the services' internal APIs."""

from __future__ import annotations

import ctypes
import hmac
import importlib
import ipaddress
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError, ResponseValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_shared.contracts.events import CustomerId
from crm_shared.runtime import memory, metrics
from crm_shared.runtime.config import ServiceSettings
from crm_shared.runtime.db import open_pool
from crm_shared.runtime.logs import configure_logging

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# The only routes of a service API open without the service token: probes (the launcher, compose
# healthchecks) and Prometheus read them, and neither says anything about a customer.
OPEN_PATHS = frozenset({"/healthz", "/metrics"})
SERVICE_TOKEN_CHALLENGE = 'Bearer realm="crm-services"'
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")


def create_api(
    service: str,
    title: str,
    lifespan: Lifespan,
    description: str = "",
    *,
    service_token: SecretStr | None = None,
    check_responses: bool = False,
) -> FastAPI:
    """A FastAPI app with the platform's middleware, error format and operational endpoints.

    With a `service_token`, every route but OPEN_PATHS answers 401 unless the request presents
    it as `Authorization: Bearer <token>`: the services' APIs pass it, the gateway does not.
    With `check_responses` (CRM_CHECK_RESPONSES, which the test suite sets) its DirectRoutes
    check their answers against their response models.
    """
    # No OpenTelemetry here (metrics are Prometheus's): FastAPI's native telemetry, on by
    # default, otherwise asks for the global providers on every request.
    app = FastAPI(
        title=title,
        description=description,
        lifespan=lifespan,
        version="1",
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.check_responses = check_responses
    if service_token is not None:
        # Added before `Observe`, so `Observe` wraps it: a refusal has a request id and is
        # counted like any other answer.
        app.add_middleware(RequireServiceToken, token=service_token)
    app.add_middleware(Observe, service=service)

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
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


# Both middlewares are plain ASGI: @app.middleware("http") (BaseHTTPMiddleware) costs a task
# group and a pair of memory streams per request, about as much as a whole health check.


class Observe:
    """Gives every request an id (X-Request-ID, taken from the caller when it sends one, and
    returned), and counts it and its latency by route template, method and status."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _header(scope, _REQUEST_ID_KEY) or secrets.token_hex(16)
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_header = (_REQUEST_ID_KEY, request_id.encode("latin-1"))
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id_header]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, elapsed: float) -> None:
        """One counter and one histogram observation, their label children made once."""
        route = _route_template(scope)
        method = scope["method"]
        counted = self._counted.get((route, method, status))
        if counted is None:
            counted = self._counted[(route, method, status)] = metrics.HTTP_REQUESTS.labels(
                self.service, route, method, str(status)
            )
        timed = self._timed.get((route, method))
        if timed is None:
            timed = self._timed[(route, method)] = metrics.HTTP_LATENCY.labels(
                self.service, route, method
            )
        counted.inc()
        timed.observe(elapsed)


class RequireServiceToken:
    """Answers 401 to every request but OPEN_PATHS that does not present the service token."""

    def __init__(self, app: ASGIApp, token: SecretStr) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        problem = service_token_problem(_header(scope, b"authorization"), self.token)
        if problem is None:
            await self.app(scope, receive, send)
            return
        refusal = error_response(
            Request(scope), 401, problem, headers={"WWW-Authenticate": SERVICE_TOKEN_CHALLENGE}
        )
        await refusal(scope, receive, send)


_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (`name` in lower case), as sent."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def service_token_problem(authorization: str | None, token: SecretStr) -> str | None:
    """Why an Authorization header does not carry the service token, or None when it does."""
    scheme, _, presented = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return (
            "this API is internal to the platform: present the service token as "
            "'Authorization: Bearer <CRM_SERVICE_TOKEN>', or ask the gateway"
        )
    # Constant time, so that the answer's timing says nothing about how much of a guess matched.
    if not hmac.compare_digest(presented.strip().encode(), token.get_secret_value().encode()):
        return "the service token is not the one this API was given (CRM_SERVICE_TOKEN)"
    return None


def service_token_headers(token: SecretStr | None) -> dict[str, str]:
    """The headers that present the service token to a service's API (none without a token)."""
    return {} if token is None else {"Authorization": f"Bearer {token.get_secret_value()}"}


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


def model_response(model: BaseModel) -> Response:
    """The model as JSON, serialised once by pydantic. An endpoint that returns its model instead
    has FastAPI validate it again against the response model and encode it a second time; the
    decorator's response_model still documents the shape."""
    return Response(model.model_dump_json(), media_type="application/json")


def document_response(document: object) -> Response:
    """A document already in the response model's shape and types (rows as the database gives
    them, in the model's field order) as JSON, serialised by pydantic-core without building the
    models: a page of 20 timeline rows in about 45 µs against 110 µs validated first. What the
    model would refuse is not caught here but in the tests' response checks (`DirectRoute`)."""
    return Response(to_json(document), media_type="application/json")


Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    """A route FastAPI documents (its response model, `documented_parameters`) but does not
    solve: the endpoint takes the Request, validates its parameters itself (`parsed`) and returns
    a Response. FastAPI's request handler (dependency solving, response checks) cost about a
    tenth of a top-10 request even with the Request as its only parameter.

    The answer is checked against the response model only in an app built with
    `check_responses` (the tests): the check parses the whole answer again, and FastAPI itself
    never checks an endpoint that returns a Response. Checked, an answer with the route's status
    that does not fit is a ResponseValidationError, a 500, as in FastAPI; other statuses (an
    error passed on) are not the model's."""

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        answer: TypeAdapter[Any] = TypeAdapter(self.response_model)
        status = self.status_code or 200

        async def handle(request: Request) -> Response:
            response = await endpoint(request)
            if request.app.state.check_responses and response.status_code == status:
                check_answer(answer, response)
            return response

        return handle


def check_answer(answer: TypeAdapter[Any], response: Response) -> None:
    """Raise ResponseValidationError unless the response's JSON body fits `answer`."""
    try:
        answer.validate_json(bytes(response.body))
    except ValidationError as error:
        problems = [{**issue, "loc": ("response", *issue["loc"])} for issue in error.errors()]
        raise ResponseValidationError(problems, body=response.body) from None


def parsed(adapter: TypeAdapter[T], value: object, *where: str) -> T:
    """`value` validated by `adapter`, for a route that takes only the Request and validates its
    parameters in one go; a failure is the 422 FastAPI gives for its own parameters, each problem
    located under `where` (e.g. "query")."""
    try:
        return adapter.validate_python(value)
    except ValidationError as error:
        raise RequestValidationError(
            [{**issue, "loc": (*where, *issue["loc"])} for issue in error.errors()]
        ) from None


def query_values(request: Request, repeatable: Collection[str] = ()) -> dict[str, Any]:
    """The query for a DirectRoute's model: the last value of each parameter, as FastAPI reads
    one, and every value of the `repeatable` ones (?kind=a&kind=b) as a list."""
    params = request.query_params
    values: dict[str, Any] = dict(params)
    for name in repeatable:
        if name in values:
            values[name] = params.getlist(name)
    return values


CUSTOMER_ID: TypeAdapter[str] = TypeAdapter(CustomerId)
"""A customer id in a DirectRoute's path, read as the contract reads it."""


def path_customer_id(request: Request) -> str:
    """The DirectRoute's `{customer_id}`, validated (a 422 at `path.customer_id` otherwise)."""
    return parsed(CUSTOMER_ID, request.path_params["customer_id"], "path", "customer_id")


def path_and_query(
    request: Request, query: TypeAdapter[T], repeatable: Collection[str] = ()
) -> tuple[str, T]:
    """The DirectRoute's `{customer_id}` and its query (`query_values`), validated together: a
    bad path and a bad query are one 422 that lists both, as FastAPI answered."""
    problems: list[Any] = []
    customer_id: str = ""
    try:
        customer_id = path_customer_id(request)
    except RequestValidationError as error:
        problems.extend(error.errors())
    try:
        values = parsed(query, query_values(request, repeatable), "query")
    except RequestValidationError as error:
        problems.extend(error.errors())
    if problems:
        raise RequestValidationError(problems)
    return customer_id, values


def add_customer_read(
    router: APIRouter,
    path: str,
    endpoint: Endpoint,
    response_model: Any,
    query: TypeAdapter[Any] | None = None,
    *,
    openapi_extra: Mapping[str, Any] | None = None,
    **route: Any,
) -> None:
    """A GET DirectRoute on `router` for a path with `{customer_id}`; the document lists the
    customer id, the fields of `query` (when the read takes one), `openapi_extra`, and the 422
    FastAPI documents for a route with parameters (unless `responses` gives its own)."""
    responses: dict[int | str, dict[str, Any]] = {422: VALIDATION_ERROR}
    responses.update(route.pop("responses", None) or {})
    router.add_api_route(
        path,
        endpoint,
        methods=["GET"],
        response_model=response_model,
        responses=responses,
        openapi_extra=documented_parameters({"customer_id": CUSTOMER_ID}, query)
        | dict(openapi_extra or {}),
        route_class_override=DirectRoute,
        **route,
    )


VALIDATION_ERROR: dict[str, Any] = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}
"""The 422 FastAPI documents for every route with parameters; a DirectRoute declares none."""


def documented_parameters(
    path: Mapping[str, TypeAdapter[Any]], query: TypeAdapter[Any] | None = None
) -> dict[str, Any]:
    """The `openapi_extra` of such a route: its path parameters and the fields of its query
    model (if it takes a query) as the OpenAPI parameters FastAPI would have documented from a
    signature."""
    schema = inlined(query.json_schema()) if query is not None else {"properties": {}}
    required = set(schema.get("required", ()))
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": adapter.json_schema()}
        for name, adapter in path.items()
    ] + [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": field,
            **({"description": field["description"]} if "description" in field else {}),
        }
        for name, field in schema["properties"].items()
    ]
    return {"parameters": parameters}


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON Schema with its `$defs` references replaced by the definitions: a
    parameter's schema sits in the OpenAPI document, where `#/$defs/...` points at nothing."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return resolve(definitions[reference.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _route_template(scope: Scope) -> str:
    """The route's path template, so that metrics are not labelled with customer ids."""
    route = scope.get("route")
    if route is None:  # refused before routing (service token): find the route it asked for
        for candidate in scope["app"].router.routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
    return str(getattr(route, "path", "unmatched"))


def database_lifespan(settings: ServiceSettings, migrations: Path) -> Lifespan:
    """Open (and migrate) the service's database on start-up; close the pool on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await open_pool(
            settings.dsn, migrations, settings.pool_size, reset_sessions=False
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    return lifespan


async def connection(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """FastAPI dependency: one pooled connection for the request."""
    async with request.app.state.pool.acquire() as conn:
        yield conn


def pool_of(request: Request) -> asyncpg.Pool:
    """The API's pool, for routes on the customer 360's path to acquire from in the handler:
    the generator dependency `connection` costs about 0.1 ms of FastAPI's machinery a request,
    half of what such a route costs in FastAPI."""
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine (listening there keeps an API on it; sending there keeps
    credentials on it); a name other than localhost may resolve to anything, so it does not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UnsafeExposure(ValueError):
    """An internal API was asked to listen beyond loopback with no service token to guard it."""


def check_exposure(settings: ServiceSettings) -> None:
    """Refuse to expose an internal API without the service token. The gateway is exempt: it is
    the public entry and guards itself with API keys."""
    if settings.PUBLIC_ENTRY or settings.platform.service_token is not None:
        return
    if not is_loopback(settings.api_host):
        raise UnsafeExposure(
            f"refusing to listen on {settings.api_host}:{settings.api_port} without a service "
            "token: anyone who reaches the port could read every customer. Set "
            "CRM_SERVICE_TOKEN (and give the gateway the same one), or keep the API on 127.0.0.1."
        )


AnyLifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def frozen_after_startup(lifespan: AnyLifespan) -> AnyLifespan:
    """`lifespan`, then the start-up objects frozen (`memory.freeze_startup_objects`): every full
    collection walked them all, a pause of every request in flight (docs/performance.md, "The
    read path's tail"). Only `serve` does this, so an app built in a test process collects as
    usual."""

    @asynccontextmanager
    async def frozen(app: Any) -> AsyncIterator[Any]:
        async with lifespan(app) as state:
            memory.freeze_startup_objects()
            yield state

    return frozen


def freeze_after_startup(app: FastAPI) -> FastAPI:
    """`app` with its lifespan wrapped by `frozen_after_startup`: Starlette runs the router's
    `lifespan_context` (a test starts an app through ASGI, so a change there fails it)."""
    app.router.lifespan_context = frozen_after_startup(app.router.lifespan_context)
    return app


_SPAWNED = (
    "CRM_SPAWNED_API_FACTORY",
    "CRM_SPAWNED_API_SETTINGS",
    "CRM_SPAWNED_API_NAME",
    "CRM_SPAWNED_API_PARENT",
)
"""What `serve` passes to the processes it starts for `spawned_app`: the factory and the settings
class by import path, the process name and its own pid."""
_PR_SET_PDEATHSIG = 1  # prctl's option, from linux/prctl.h


def serve(
    factory: Callable[[S], FastAPI], settings: S, process_name: str, processes: int = 1
) -> None:
    """Run an API built by `factory` with uvicorn on the settings' host and port, logging JSON
    lines; exit at once when that would expose an internal API without its token.

    With several `processes`, uvicorn's workers serve the port, each building its own app
    (`spawned_app`) and restarted by uvicorn should one die; their metrics are added up on
    /metrics (`metrics.shared_between_processes`). One process, at most a core, was the
    gateway's limit in the reads' tail (docs/decisions.md, "Two gateway processes")."""
    configure_logging(process_name, settings.platform.log_level)
    try:
        check_exposure(settings)
    except UnsafeExposure as error:
        log.critical("%s", error)
        raise SystemExit(2) from None
    server_options: dict[str, Any] = {
        "host": settings.api_host,
        "port": settings.api_port,
        "log_config": None,
        "access_log": False,
        "loop": "uvloop",  # the C event loop and HTTP parser: a request's fixed cost drops
        "http": "httptools",
    }
    if processes == 1:
        uvicorn.run(freeze_after_startup(factory(settings)), **server_options)
        return
    spawned = (_import_path(factory), _import_path(type(settings)), process_name, str(os.getpid()))
    os.environ.update(zip(_SPAWNED, spawned, strict=True))
    with metrics.shared_between_processes(process_name):
        uvicorn.run(f"{__name__}:spawned_app", factory=True, workers=processes, **server_options)


def spawned_app() -> FastAPI:
    """The app of one of `serve`'s several processes (uvicorn imports this by name in each): the
    settings read from the environment again, as `serve`'s were, and the app built by the same
    factory; on a clean stop its live gauges leave the shared metrics."""
    factory_path, settings_path, process_name, parent = (os.environ[name] for name in _SPAWNED)
    _stop_with_parent(int(parent))
    settings = _imported(settings_path)()
    configure_logging(process_name, settings.platform.log_level)
    app: FastAPI = freeze_after_startup(_imported(factory_path)(settings))
    lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def counted_out_after(app: Any) -> AsyncIterator[Any]:
        try:
            async with lifespan(app) as state:
                yield state
        finally:
            metrics.process_stopped()

    app.router.lifespan_context = counted_out_after
    return app


def _stop_with_parent(parent: int) -> None:
    """Have the kernel SIGTERM this process when its parent, uvicorn's supervisor, dies: killed
    with SIGKILL, it would leave its workers serving the port, and started again it could not
    bind it. Linux's prctl; elsewhere nothing."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request
        os.kill(os.getpid(), signal.SIGTERM)


def _import_path(named: Callable[..., Any]) -> str:
    return f"{named.__module__}:{named.__qualname__}"


def _imported(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
