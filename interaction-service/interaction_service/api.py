"""Interaction read API: a customer's contact history and contact summary.

python -m interaction_service.api
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from pydantic import BaseModel, Field, TypeAdapter

from crm_shared.contracts.events import DEPARTMENT_PATTERN, Channel
from crm_shared.contracts.timeline import TIMELINE_EVENT_TYPES, TimelineFilter
from crm_shared.runtime.http import (
    add_customer_read,
    connection,
    create_api,
    database_lifespan,
    document_response,
    model_response,
    path_and_query,
    pool_of,
    serve,
)
from interaction_service import cases_api, projection, store
from interaction_service.config import MIGRATIONS, InteractionSettings
from interaction_service.projection import Direction, Kind, TimelinePosition, TimelineQuery

Conn = Annotated[asyncpg.Connection, Depends(connection)]
CustomerIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]
MAX_PAGE = 200
DEPARTMENT_CODE = re.compile(DEPARTMENT_PATTERN)
MAX_DEPARTMENT_CHARS = 80


class TimelineItem(BaseModel):
    source: str
    event_id: str
    occurred_at: datetime
    recorded_at: datetime = Field(description="When the log recorded the event")
    kind: Kind
    event_type: str
    channel: str | None
    direction: Direction | None
    department: str | None = Field(description="A department code (contacts, cases, feedback)")
    employee_id: str | None
    topic: str | None
    outcome: str | None = Field(
        description="A contact outcome, a message outcome, a consent state (granted, pending, "
        "denied, revoked), do_not_contact / do_not_contact_lifted, or a case's step (opened, "
        "assigned, transferred, escalated, resolved, reopened, closed)"
    )
    summary: str
    details: dict[str, Any]


class TimelinePage(BaseModel):
    customer_id: str
    items: list[TimelineItem]
    next_cursor: str | None
    as_of: datetime = Field(
        description="Every page of this read shows the entries the log had recorded by then"
    )


class ContactSummary(BaseModel):
    customer_id: str
    touchpoints: int
    contacts: int
    inbound: int
    outbound: int
    refusals: int
    complaints: int
    feedback: int
    feedback_score_sum: int
    average_satisfaction: float | None
    first_contact_at: datetime | None
    last_contact_at: datetime | None
    first_touchpoint_at: datetime | None
    last_touchpoint_at: datetime | None


class InteractionOverview(BaseModel):
    timeline: TimelinePage = Field(description="The first page, newest first")
    contact_summary: ContactSummary | None = Field(description="null when none was folded yet")


def _unknown(customer_id: str) -> HTTPException:
    return HTTPException(
        404, f"customer {customer_id!r} has no recorded interactions in the interaction service"
    )


def _page(
    customer_id: str,
    rows: list[dict[str, Any]],
    limit: int,
    query: TimelineQuery,
    as_of: datetime,
) -> dict[str, Any]:
    """A TimelinePage of at most `limit` items from `limit` + 1 rows (the extra one says there
    is more), as a document: the rows are the table's columns in TimelineItem's order and types
    (`document_response`)."""
    positions = [TimelinePosition(r["occurred_at"], r["source"], r["event_id"]) for r in rows]
    return {
        "customer_id": customer_id,
        "items": rows[:limit],
        "next_cursor": projection.next_cursor(positions, limit, query, as_of),
        "as_of": as_of,
    }


def _aware(when: datetime | None, name: str) -> datetime | None:
    """A query time as UTC; a time without an offset is refused rather than guessed."""
    if when is None:
        return None
    if when.tzinfo is None:
        raise HTTPException(422, f"{name} must carry a UTC offset, e.g. 2024-05-01T10:00:00Z")
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise HTTPException(422, f"{name} is out of range") from None


def _timeline_query(
    kinds: list[Kind] | None,
    event_types: list[str] | None,
    channels: list[Channel] | None,
    departments: list[str] | None,
    occurred_from: datetime | None,
    occurred_to: datetime | None,
    recorded_after: datetime | None,
    newest_first: bool,
) -> TimelineQuery:
    """The query of a timeline request, or a 422 that says which filter is wrong."""
    unknown = sorted(set(event_types or ()) - TIMELINE_EVENT_TYPES)
    if unknown:
        raise HTTPException(
            422,
            f"event_type {unknown[0]!r} is not on timelines; one of {sorted(TIMELINE_EVENT_TYPES)}",
        )
    for code in departments or ():
        if len(code) > MAX_DEPARTMENT_CHARS or not DEPARTMENT_CODE.match(code):
            raise HTTPException(
                422, f"department {code[:100]!r} is not a department code (lower-case slug)"
            )
    return TimelineQuery(
        kinds=tuple(kinds or ()),
        event_types=tuple(event_types or ()),
        channels=tuple(channel.value for channel in channels or ()),
        departments=tuple(departments or ()),
        occurred_from=_aware(occurred_from, "from"),
        occurred_before=_aware(occurred_to, "to"),
        recorded_after=_aware(recorded_after, "recorded_after"),
        newest_first=newest_first,
    )


def _summary(customer_id: str, totals: projection.ContactTotals) -> ContactSummary:
    return ContactSummary(
        customer_id=customer_id,
        touchpoints=totals.touchpoints,
        contacts=totals.contacts,
        inbound=totals.inbound,
        outbound=totals.outbound,
        refusals=totals.refusals,
        complaints=totals.complaints,
        feedback=totals.feedback,
        feedback_score_sum=totals.feedback_score_sum,
        average_satisfaction=totals.average_satisfaction,
        first_contact_at=totals.first_contact_at,
        last_contact_at=totals.last_contact_at,
        first_touchpoint_at=totals.first_touchpoint_at,
        last_touchpoint_at=totals.last_touchpoint_at,
    )


class OverviewQuery(BaseModel):
    """The overview's query: how long its timeline page is."""

    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Entries of the first page (20)")


OVERVIEW_QUERY = TypeAdapter(OverviewQuery)


class TimelineParams(BaseModel):
    """A timeline page's query, validated in one go (the route is a DirectRoute); the fields in
    the order FastAPI documented them as parameters."""

    limit: int = Field(50, ge=1, le=MAX_PAGE)
    cursor: str | None = None
    kind: TimelineFilter[Kind] = None
    event_type: TimelineFilter[str] = Field(None, description="Only these event types")
    channel: TimelineFilter[Channel] = None
    department: TimelineFilter[str] = Field(None, description="Department codes, e.g. support")
    occurred_from: datetime | None = Field(None, alias="from", description="Event time at or after")
    occurred_to: datetime | None = Field(None, alias="to", description="Event time before")
    recorded_after: datetime | None = Field(
        None, description="Only entries the log recorded after this instant (late arrivals)"
    )
    as_of: datetime | None = Field(
        None, description="The timeline as the log had recorded it then (default: now)"
    )
    order: Literal["desc", "asc"] = "desc"


TIMELINE_PARAMS = TypeAdapter(TimelineParams)
TIMELINE_FILTERS = ("kind", "event_type", "channel", "department")
"""The timeline's repeatable parameters (?kind=order&kind=refund)."""


def create_app(settings: InteractionSettings | None = None) -> FastAPI:
    settings = settings or InteractionSettings()
    app = create_api(
        "interaction",
        "Interaction service",
        database_lifespan(settings, MIGRATIONS),
        "Every touchpoint of a customer with the company (contacts, feedback, orders, refunds) "
        "and a contact summary, folded from contact and order events.",
        service_token=settings.platform.service_token,
        check_responses=settings.platform.check_responses,
    )

    async def get_timeline(request: Request) -> Response:
        """The customer's touchpoints in event-time order (newest first by default), filtered and
        paged; every page of one read is as of the first page's instant."""
        # A DirectRoute, as the overview: FastAPI solving the path and eleven query parameters
        # one by one cost about a tenth of a page.
        customer_id, params = path_and_query(request, TIMELINE_PARAMS, TIMELINE_FILTERS)
        limit, cursor = params.limit, params.cursor
        query = _timeline_query(
            params.kind,
            params.event_type,
            params.channel,
            params.department,
            params.occurred_from,
            params.occurred_to,
            params.recorded_after,
            newest_first=params.order == "desc",
        )
        requested_as_of = _aware(params.as_of, "as_of")
        after: TimelinePosition | None = None
        if cursor is None:
            read_as_of = requested_as_of or datetime.now(UTC)
        else:
            try:
                decoded = projection.decode_cursor(cursor)
            except projection.InvalidCursor as problem:
                raise HTTPException(
                    422, f"invalid cursor: {problem}; pass a next_cursor from a previous page as is"
                ) from None
            try:
                projection.check_cursor(decoded, query, requested_as_of)
            except projection.CursorMismatch as problem:
                raise HTTPException(400, str(problem)) from None
            after, read_as_of = decoded.position, decoded.as_of

        async def read_page(conn: asyncpg.Connection) -> list[dict[str, Any]]:
            return await store.timeline_page(
                conn, customer_id, query, as_of=read_as_of, after=after, limit=limit + 1
            )

        async with pool_of(request).acquire() as conn:
            rows = await read_page(conn)
            known = bool(rows)
            if not known:
                # Unknown customer, or a page past the end or a filter that matches nothing: ask
                # again, both questions in one snapshot, or a customer's first event committed
                # between them would give an empty page for a known customer instead of the
                # event or a 404. The common case, a page with rows, needs neither the second
                # read nor the transaction.
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    rows = await read_page(conn)
                    known = bool(rows) or await store.has_timeline(conn, customer_id)
        if not known:
            raise _unknown(customer_id)
        return document_response(_page(customer_id, rows, limit, query, read_as_of))

    add_customer_read(
        app.router, "/customers/{customer_id}/timeline", get_timeline, TimelinePage, TIMELINE_PARAMS
    )

    @app.get("/customers/{customer_id}/summary", response_model=ContactSummary)
    async def get_summary(customer_id: CustomerIdPath, conn: Conn) -> Response:
        """Contact counts, complaints, refusals and average satisfaction of one customer."""
        totals = await store.contact_summary(conn, customer_id)
        if totals is None:
            raise _unknown(customer_id)
        return model_response(_summary(customer_id, totals))

    async def get_overview(request: Request) -> Response:
        """The first timeline page and the contact summary in one answer (the customer 360's
        share, one call instead of two)."""
        # A DirectRoute: FastAPI's parameter solving was a tenth of this read.
        customer_id, overview_query = path_and_query(request, OVERVIEW_QUERY)
        limit = overview_query.limit

        as_of = datetime.now(UTC)
        async with pool_of(request).acquire() as conn:
            rows, totals = await store.overview(conn, customer_id, as_of=as_of, limit=limit + 1)
        if not rows and totals is None:
            raise _unknown(customer_id)
        # InteractionOverview as a document: its page is rows (`_page`).
        return document_response(
            {
                "timeline": _page(customer_id, rows, limit, TimelineQuery(), as_of),
                "contact_summary": None if totals is None else _summary(customer_id, totals),
            }
        )

    add_customer_read(
        app.router,
        "/customers/{customer_id}/overview",
        get_overview,
        InteractionOverview,
        OVERVIEW_QUERY,
    )

    cases_api.install(app)
    from interaction_service import experience_api  # imported here: it imports this module

    app.router.routes.extend(experience_api.router.routes)
    return app


if __name__ == "__main__":
    serve(create_app, InteractionSettings(), "interaction-api")
