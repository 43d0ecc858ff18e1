"""The gateway: the one public entry for client apps. API keys with scopes, rate limits, the
customer 360 composed from the services, the timeline, and event ingestion into Kafka.

python -m gateway_service.api
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Request, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, TypeAdapter

from crm_shared.contracts.events import Channel, DepartmentCode
from crm_shared.contracts.timeline import TimelineEventType, TimelineFilter, TimelineKind
from crm_shared.runtime.http import (
    Lifespan,
    add_customer_read,
    create_api,
    database_lifespan,
    path_and_query,
    path_customer_id,
    serve,
)
from gateway_service import composition, ingest, metrics, store, upstream
from gateway_service.auth import (
    CUSTOMERS_READ,
    EVENTS_WRITE,
    Forbidden,
    KeyCache,
    StoredKey,
    Unauthorized,
    check_key,
    check_scope,
    parse_key,
    presented_key,
)
from gateway_service.config import GatewaySettings
from gateway_service.producer import EventProducer
from gateway_service.ratelimit import RateLimiter
from gateway_service.upstream import Services, UpstreamFailure

CustomerIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]
JSON = "application/json"
TIMELINE_MAX_PAGE = 200
"""The longest timeline page the interaction service gives."""
TIMELINE_CURSOR_FORMAT = "timeline-cursor"
"""OpenAPI format of a page cursor: opaque, valid only as a previous page's next_cursor."""
TimelineCursor = Annotated[
    str,
    Field(min_length=1, max_length=1024, json_schema_extra={"format": TIMELINE_CURSOR_FORMAT}),
]

BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer crm_<key id>_<secret>")
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The API key, instead of Authorization"
)


KEY_SECURITY: dict[str, Any] = {
    "security": [{API_KEY_HEADER.scheme_name: []}, {BEARER.scheme_name: []}]
}
"""The `openapi_extra` of a DirectRoute that admits the key itself (`admitted`): the security
`require`'s dependencies document."""


def require(scope: str) -> Callable[..., Awaitable[StoredKey]]:
    """A dependency admitting only a working, non-throttled API key that grants `scope`."""

    async def guard(
        request: Request,
        _api_key: Annotated[str | None, Security(API_KEY_HEADER)],
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> StoredKey:
        return await admitted(request, scope)

    return guard


async def admitted(request: Request, scope: str) -> StoredKey:
    """The request's API key if it works, is not throttled and grants `scope`; otherwise the
    HTTPException to answer (401, 429, 403). Routes ask through `require`, a DirectRoute
    (crm_shared.runtime.http) directly."""
    api_key = request.headers.get(API_KEY_HEADER.model.name)
    try:
        presented = parse_key(presented_key(request.headers.get("Authorization"), api_key))
        key = check_key(presented, await _stored_key(request, presented.key_id))
    except Unauthorized as error:
        raise HTTPException(
            401, str(error), headers={"WWW-Authenticate": error.challenge}
        ) from None
    limiter: RateLimiter = request.app.state.rate_limiter
    retry_after = limiter.check(key.key_id, time.monotonic())
    if retry_after:
        raise HTTPException(
            429,
            f"rate limit exceeded for API key {key.key_id} "
            f"({limiter.rate:g} requests/s, bursts of {limiter.burst}); "
            f"retry after {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    try:
        check_scope(key, scope)
    except Forbidden as error:
        raise HTTPException(403, str(error)) from None
    return key


async def _stored_key(request: Request, key_id: str) -> StoredKey | None:
    """The key as stored, from the cache while it is fresh, else from the database."""
    cache: KeyCache = request.app.state.key_cache
    now = time.monotonic()
    stored = cache.get(key_id, now)
    if stored is None:
        async with request.app.state.pool.acquire() as conn:
            stored = await store.find_key(conn, key_id)
        if stored is not None:
            cache.put(stored, now)
    return stored


CustomersReader = Annotated[StoredKey, Depends(require(CUSTOMERS_READ))]
EventsWriter = Annotated[StoredKey, Depends(require(EVENTS_WRITE))]


class MissingPart(BaseModel):
    part: str
    reason: str = Field(
        description="'not found', 'timeout after 2.0 s', 'unavailable: ...' or 'error: ...'"
    )


class Customer360(BaseModel):
    customer_id: str
    profile: dict[str, Any] | None = Field(description="From the profile service")
    timeline: dict[str, Any] | None = Field(description="The 20 latest interactions")
    contact_summary: dict[str, Any] | None = Field(description="Contacts and feedback in sum")
    preferences: dict[str, Any] | None = Field(description="Channels, quiet hours and consents")
    recommendations: dict[str, Any] | None = Field(description="The 10 best next products")
    missing: list[MissingPart] = Field(description="Parts that are empty, and why")


class TimelinePage(BaseModel):
    customer_id: str
    items: list[dict[str, Any]] = Field(
        description="Touchpoints, as the interaction service gives them"
    )
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at the end")
    as_of: datetime = Field(
        description="Every page of this read shows the entries recorded by this instant"
    )


class Problem(BaseModel):
    where: str = Field(description="The part of the request, e.g. query.limit")
    problem: str


class ErrorDetail(BaseModel):
    status: int
    message: str = Field(description="What went wrong, for a person to read")
    request_id: str = Field(description="Also in the X-Request-ID header; quote it in reports")
    details: list[Problem] | None = Field(
        default=None, description="Each problem of an invalid request (422)"
    )


class ErrorBody(BaseModel):
    """The platform's one error shape (crm_shared.runtime.http.error_response)."""

    error: ErrorDetail


ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "The body cannot be read, e.g. it is not UTF-8"},
    401: {
        "description": "No API key, or one that is malformed, unknown or revoked",
        "headers": {
            "WWW-Authenticate": {
                "description": "The Bearer challenge (RFC 6750)",
                "schema": {"type": "string"},
            }
        },
    },
    403: {"description": "The API key lacks the scope this operation needs"},
    404: {"description": "The customer is unknown"},
    409: {
        "description": "The request conflicts with what is known, e.g. merging away an "
        "identified person without force"
    },
    422: {"description": "The request is invalid: `details` says where"},
    429: {
        "description": "The API key exceeded its rate limit",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before the next request",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
    502: {"description": "The service behind the gateway answered with an error"},
    503: {"description": "The service behind the gateway cannot be reached"},
    504: {"description": "The service behind the gateway did not answer in time"},
}
"""What each error status of the gateway means; every one has the body ErrorBody."""


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of the error statuses an operation really gives."""
    return {status: {"model": ErrorBody, **ERRORS[status]} for status in statuses}


GUARDED = (401, 403, 422, 429)
"""What every operation behind an API key may answer: no key, no scope, bad request, throttled."""


class EventBatch(BaseModel):
    events: list[Any] = Field(
        min_length=1,
        max_length=ingest.MAX_BATCH,
        description=f"1 to {ingest.MAX_BATCH} CloudEvents 1.0 envelopes (JSON objects)",
    )


class AcceptedEvent(BaseModel):
    index: int
    id: str
    status: Literal["accepted"] = "accepted"
    topic: str


class RejectedEvent(BaseModel):
    index: int
    id: str | None
    status: Literal["rejected"] = "rejected"
    reason: str


class IngestResponse(BaseModel):
    accepted: int
    rejected: int
    results: list[AcceptedEvent | RejectedEvent] = Field(description="One per event, in order")


def _ingest_response(result: ingest.IngestResult) -> IngestResponse:
    return IngestResponse(
        accepted=result.accepted,
        rejected=result.rejected,
        results=[
            AcceptedEvent(index=r.index, id=r.id, topic=r.topic)
            if isinstance(r, ingest.Accepted)
            else RejectedEvent(index=r.index, id=r.id, reason=r.reason)
            for r in result.results
        ],
    )


async def get_customer(request: Request) -> Response:
    """The customer 360 from every service; what a service cannot give is listed in missing."""
    # A DirectRoute (the busiest read): the key first, as FastAPI solved the guard before the
    # path, then the path; FastAPI's dependency solving was about 40 % of the route's own time.
    await admitted(request, CUSTOMERS_READ)
    customer_id = path_customer_id(request)
    services: Services = request.app.state.services
    outcomes = await services.customer_360(customer_id, request.state.request_id)
    try:
        view = composition.compose(customer_id, outcomes)
    except composition.CustomerUnknown as error:
        raise HTTPException(404, str(error)) from None
    return Response(composition.render(view), media_type=JSON)


class TimelineQuery(BaseModel):
    """A timeline page's query parameters, validated in one go (the route is a DirectRoute)."""

    limit: int | None = Field(None, ge=1, le=TIMELINE_MAX_PAGE, description="Entries a page (50)")
    cursor: TimelineCursor | None = Field(
        None, description="The next_cursor of the previous page, as it was given"
    )
    kind: TimelineFilter[TimelineKind] = Field(
        None, description="Only these kinds; repeat for several"
    )
    order: Literal["desc", "asc"] | None = Field(None, description="By event time (desc)")
    event_type: TimelineFilter[TimelineEventType] = Field(
        None, description="Only these event types, e.g. crm.contact.logged.v2; repeat"
    )
    channel: TimelineFilter[Channel] = Field(
        None, description="Only these channels; repeat for several"
    )
    department: TimelineFilter[DepartmentCode] = Field(
        None, description="Only these department codes (lower-case slugs), e.g. support"
    )
    occurred_from: datetime | None = Field(
        None, alias="from", description="Event time at or after (RFC 3339)"
    )
    occurred_to: datetime | None = Field(
        None, alias="to", description="Event time before (RFC 3339)"
    )
    recorded_after: datetime | None = Field(
        None, description="Only entries recorded after this instant: what arrived late"
    )
    as_of: datetime | None = Field(
        None, description="The timeline as it was recorded at this instant (default: now)"
    )

    def params(self) -> dict[str, Any]:
        """The query given, as the interaction service's parameters (times in RFC 3339)."""
        given = self.model_dump(by_alias=True, exclude_none=True)
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in given.items()
        }


TIMELINE_QUERY = TypeAdapter(TimelineQuery)
TIMELINE_FILTERS = ("kind", "event_type", "channel", "department")
"""The timeline's repeatable parameters (?kind=order&kind=refund)."""


async def get_timeline(request: Request) -> Response:
    """A page of the customer's timeline, as the interaction service gives it: filtered by
    kind, event type, channel, department and period, as of an instant, paged by cursor.
    A cursor is valid only with the filters of the page that gave it (400 otherwise)."""
    # A DirectRoute, as the 360: the key, then the path, then the query in one go; FastAPI
    # solving the guard and eleven parameters cost more than the rest of the route.
    await admitted(request, CUSTOMERS_READ)
    customer_id, query = path_and_query(request, TIMELINE_QUERY, TIMELINE_FILTERS)
    services: Services = request.app.state.services
    try:
        answer, whole = await services.timeline_page(
            customer_id, query.params(), request.state.request_id
        )
    except UpstreamFailure as failure:
        raise HTTPException(
            504 if failure.outcome.label == "timeout" else 503,
            f"the interaction service cannot give the timeline now ({failure}); try again later",
        ) from None
    if answer.status in (200, 400, 404, 422) and whole:
        # The service's own bytes: it shaped them with its response model already.
        return Response(answer.content, status_code=answer.status, media_type=JSON)
    raise HTTPException(
        502,
        f"the interaction service failed to give the timeline (HTTP {answer.status})",
    )


def gateway_lifespan(settings: GatewaySettings) -> Lifespan:
    """The database (API keys), the Kafka producer and the HTTP clients, for the app's life."""
    database = database_lifespan(settings, store.MIGRATIONS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(database(app))
            events = EventProducer(settings)
            stack.push_async_callback(events.stop)
            await events.connect()  # when Kafka is down, it connects again on the next ingest
            app.state.services = await stack.enter_async_context(upstream.connect(settings))
            app.state.producer = events
            app.state.rate_limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
            app.state.key_cache = KeyCache(settings.key_cache_seconds)
            yield

    return lifespan


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    max_future_skew = timedelta(seconds=settings.platform.max_future_skew_seconds)
    app = create_api(
        "gateway",
        "CRM gateway",
        gateway_lifespan(settings),
        "The public entry of the CRM platform: the customer 360, the timeline and event "
        "ingestion, behind API keys with scopes and per-key rate limits.",
        check_responses=settings.platform.check_responses,
    )

    add_customer_read(
        app.router,
        "/v1/customers/{customer_id}",
        get_customer,
        Customer360,
        openapi_extra=KEY_SECURITY,
        responses=errors(*GUARDED, 404),
    )

    add_customer_read(
        app.router,
        "/v1/customers/{customer_id}/timeline",
        get_timeline,
        TimelinePage,
        TIMELINE_QUERY,
        openapi_extra=KEY_SECURITY,
        responses=errors(*GUARDED, 400, 404, 502, 503, 504),
    )

    @app.post("/v1/events", response_model=IngestResponse, responses=errors(*GUARDED, 400))
    async def post_events(batch: EventBatch, request: Request, key: EventsWriter) -> IngestResponse:
        """Validate up to 1000 events and publish the valid ones to Kafka; a result per event.

        An event is refused, with the reason, when it breaks its contract, claims a source the
        API key was not issued for, or is dated too far in the future."""
        plan = ingest.plan_batch(
            batch.events,
            sources=key.sources,
            now=datetime.now(UTC),
            max_skew=max_future_skew,
        )
        events: EventProducer = request.app.state.producer
        failures = await events.publish(plan.publish)
        result = ingest.settle(plan, failures)
        metrics.INGESTED_EVENTS.labels("accepted").inc(result.accepted)
        metrics.INGESTED_EVENTS.labels("rejected").inc(result.rejected)
        return _ingest_response(result)

    # imported here: they import this module's guards
    from gateway_service import merges, profile_reads

    # Their routes as the app's own: this FastAPI wraps an included router in one opaque route.
    app.router.routes.extend(profile_reads.router.routes)
    app.router.routes.extend(merges.router.routes)
    from gateway_service import lifetime_reads

    app.router.routes.extend(lifetime_reads.router.routes)
    from gateway_service import recommendation_reads  # likewise

    app.router.routes.extend(recommendation_reads.router.routes)
    from gateway_service import segment_reads

    app.router.routes.extend(segment_reads.router.routes)
    from gateway_service import case_routes

    app.router.routes.extend(case_routes.router.routes)
    from gateway_service import experience_reads

    app.router.routes.extend(experience_reads.router.routes)
    from gateway_service import preference_routes

    app.router.routes.extend(preference_routes.router.routes)
    from gateway_service import campaign_routes

    app.router.routes.extend(campaign_routes.router.routes)
    from gateway_service.centre_routes import centre_router

    app.router.routes.extend(centre_router(settings).routes)
    from gateway_service import delivery_routes

    app.router.routes.extend(delivery_routes.router.routes)
    from gateway_service.tracking_routes import tracking_router

    app.router.routes.extend(tracking_router(settings).routes)
    return app


if __name__ == "__main__":
    gateway_settings = GatewaySettings()
    serve(create_app, gateway_settings, "gateway-api", gateway_settings.api_processes)
