"""Broadcast read API: how each customer wants to be reached, and whether to contact them now.

python -m broadcast_service.api
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from broadcast_service import projection, store
from broadcast_service.config import MIGRATIONS, BroadcastSettings
from broadcast_service.delivery_api import add_delivery_routes
from crm_shared.runtime.http import (
    connection,
    create_api,
    database_lifespan,
    model_response,
    pool_of,
    serve,
)

Conn = Annotated[asyncpg.Connection, Depends(connection)]
CustomerIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]


class QuietHours(BaseModel):
    start: str
    end: str
    timezone: str


class ConsentView(BaseModel):
    purpose: str
    channel: str = Field(description="A channel, or '*' for every channel")
    granted: bool
    changed_at: datetime


class CustomerPreferences(BaseModel):
    customer_id: str
    channels: list[str]
    quiet_hours: QuietHours | None
    preferences_set_at: datetime | None
    consents: list[ConsentView]


class ConsentHistoryEntry(BaseModel):
    purpose: str
    channel: str
    granted: bool
    occurred_at: datetime
    source: str
    event_id: str


class SegmentMembershipView(BaseModel):
    segment: str
    member: bool
    version: int = Field(description="How many times the membership changed")
    changed_at: datetime


class ChannelCheck(BaseModel):
    channel: str
    consent: projection.ConsentState
    scope: str | None


class ContactDecision(BaseModel):
    customer_id: str
    purpose: str
    at: datetime
    contact: bool
    channel: str | None
    reason: str
    quiet_until: datetime | None
    checks: list[ChannelCheck]


def _preferences_view(
    customer_id: str,
    preferences: projection.ChannelPreferences | None,
    consents: list[projection.Consent],
) -> CustomerPreferences:
    quiet = preferences.quiet_hours if preferences else None
    return CustomerPreferences(
        customer_id=customer_id,
        channels=list(preferences.channels) if preferences else [],
        quiet_hours=None
        if quiet is None
        else QuietHours(
            start=f"{quiet.start:%H:%M}", end=f"{quiet.end:%H:%M}", timezone=quiet.timezone
        ),
        preferences_set_at=preferences.set_at if preferences else None,
        consents=[
            ConsentView(
                purpose=c.purpose, channel=c.channel, granted=c.granted, changed_at=c.changed_at
            )
            for c in consents
        ],
    )


def _unknown(customer_id: str) -> HTTPException:
    return HTTPException(
        404, f"customer {customer_id!r} has no preferences or consents in the broadcast service"
    )


def create_app(settings: BroadcastSettings | None = None) -> FastAPI:
    settings = settings or BroadcastSettings()
    app = create_api(
        "broadcast",
        "Broadcast service",
        database_lifespan(settings, MIGRATIONS),
        "How each customer wants to be reached and what they consent to, folded from preference "
        "and consent events; and whether and how to contact them now.",
        service_token=settings.platform.service_token,
    )

    @app.get("/customers/{customer_id}/preferences", response_model=CustomerPreferences)
    async def get_preferences(customer_id: CustomerIdPath, request: Request) -> Response:
        """The customer's preferred channels, quiet hours and current consents."""
        async with pool_of(request).acquire() as conn:
            preferences, consents = await store.preferences_and_consents(conn, customer_id)
        if preferences is None and not consents:
            raise _unknown(customer_id)
        return model_response(_preferences_view(customer_id, preferences, consents))

    @app.get("/customers/{customer_id}/consent-history", response_model=list[ConsentHistoryEntry])
    async def get_consent_history(
        customer_id: CustomerIdPath,
        conn: Conn,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[ConsentHistoryEntry]:
        """Every consent granted or revoked by the customer, newest first."""
        history = await store.history_of(conn, customer_id, limit)
        if not history and not await store.is_known(conn, customer_id):
            raise _unknown(customer_id)
        return [
            ConsentHistoryEntry(
                purpose=c.purpose,
                channel=c.channel,
                granted=c.granted,
                occurred_at=c.changed_at,
                source=c.source,
                event_id=c.event_id,
            )
            for c in history
        ]

    @app.get("/customers/{customer_id}/segments", response_model=list[SegmentMembershipView])
    async def get_segments(customer_id: CustomerIdPath, conn: Conn) -> list[SegmentMembershipView]:
        """The segments the profile service announced the customer in or out of (campaign
        targets); empty when it announced none."""
        return [
            SegmentMembershipView(
                segment=m.segment,
                member=m.member,
                version=m.version_number,
                changed_at=m.changed_at,
            )
            for m in await store.memberships_of(conn, customer_id)
        ]

    @app.get("/customers/{customer_id}/decision", response_model=ContactDecision)
    async def get_decision(
        customer_id: CustomerIdPath,
        conn: Conn,
        purpose: Annotated[str, Query(min_length=1, max_length=80, pattern=r"\S")],
        at: Annotated[datetime | None, Query(description="RFC 3339; default now")] = None,
    ) -> ContactDecision:
        """Whether and on which channel the customer may be contacted for a purpose at a time."""
        if at is not None and at.tzinfo is None:
            raise HTTPException(422, "at must carry a UTC offset, e.g. 2024-05-01T10:00:00Z")
        when = at or datetime.now(UTC)
        preferences, consents = await store.preferences_and_consents(conn, customer_id)
        if preferences is None and not consents:
            raise _unknown(customer_id)
        decision = projection.contact_decision(preferences, consents, purpose, when)
        return ContactDecision(
            customer_id=customer_id,
            purpose=projection.normalise_purpose(purpose),
            at=when,
            contact=decision.contact,
            channel=decision.channel,
            reason=decision.reason,
            quiet_until=decision.quiet_until,
            checks=[
                ChannelCheck(channel=c.channel, consent=c.consent, scope=c.scope)
                for c in decision.checks
            ],
        )

    add_delivery_routes(app)
    return app


if __name__ == "__main__":
    serve(create_app, BroadcastSettings(), "broadcast-api")
