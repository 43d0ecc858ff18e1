"""Broadcast read API: how each customer wants to be reached, what they consent to, where they
must not be contacted, what holds promotions back, and whether to contact them now (and why).

python -m broadcast_service.api
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from broadcast_service import campaign_api, metrics, projection, store
from broadcast_service.config import MIGRATIONS, BroadcastSettings
from broadcast_service.decision import (
    CustomerReach,
    Decision,
    Reason,
    contact_decision,
    sends_since,
)
from broadcast_service.delivery_api import add_delivery_routes
from crm_shared.contracts.events import Channel, ContactPurpose
from crm_shared.runtime.http import (
    add_customer_read,
    connection,
    create_api,
    database_lifespan,
    model_response,
    path_customer_id,
    pool_of,
    serve,
)

Conn = Annotated[asyncpg.Connection, Depends(connection)]
CustomerIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]


class QuietHours(BaseModel):
    start: str
    end: str
    timezone: str = Field(description="The zone the window is read in (IANA name)")


class ChannelSetupView(BaseModel):
    channel: str
    address: str | None
    quiet_hours: QuietHours | None
    max_per_day: int | None
    max_per_week: int | None
    paused_until: datetime | None


class ConsentView(BaseModel):
    purpose: str
    channel: str = Field(description="A channel, or '*' for every channel")
    state: projection.ConsentStateName
    granted: bool
    changed_at: datetime
    source: str
    capture_method: str
    wording_version: str | None
    evidence: str | None


class DoNotContactView(BaseModel):
    channel: str = Field(description="A channel, or '*' for every channel")
    reason: str
    note: str | None
    listed_at: datetime
    source: str


class HoldsView(BaseModel):
    open_complaints: list[str] = Field(description="Case ids of the open complaints")
    detractor_measure: str | None
    detractor_score: int | None
    detractor_scored_at: datetime | None


class CustomerPreferences(BaseModel):
    customer_id: str
    channels: list[str] = Field(description="The channels in order of preference")
    timezone: str | None
    channel_setup: list[ChannelSetupView]
    preferences_set_at: datetime | None
    consents: list[ConsentView]
    do_not_contact: list[DoNotContactView]
    holds: HoldsView


class ConsentHistoryEntry(BaseModel):
    purpose: str
    channel: str
    state: projection.ConsentStateName
    granted: bool
    occurred_at: datetime
    source: str
    event_id: str
    capture_method: str
    wording_version: str | None
    evidence: str | None


class SegmentMembershipView(BaseModel):
    segment: str
    member: bool
    version: int = Field(description="How many times the membership changed")
    changed_at: datetime


class ReasonView(BaseModel):
    code: str = Field(description="e.g. allowed, no_consent, quiet_hours, daily_cap, detractor")
    text: str
    until: datetime | None = Field(description="When the reason stops applying, if by time")


class ChannelVerdictView(BaseModel):
    channel: str
    address: str | None
    allowed: bool
    reasons: list[ReasonView]
    possible_at: datetime | None = Field(description="When it may be used, if only delayed")


class ContactDecision(BaseModel):
    customer_id: str
    purpose: str
    at: datetime
    contact: bool
    channel: str | None
    address: str | None
    reason: str = Field(description="The decision in one line, for people")
    reasons: list[ReasonView] = Field(description="Reasons about the customer as a whole")
    channels: list[ChannelVerdictView] = Field(description="Every channel considered, in order")
    possible_at: datetime | None = Field(description="The earliest instant a channel may be used")


def _reason_view(reason: Reason) -> ReasonView:
    return ReasonView(code=reason.code, text=reason.text, until=reason.until)


def _setup_view(setup: projection.ChannelSetup) -> ChannelSetupView:
    quiet = setup.quiet_hours
    return ChannelSetupView(
        channel=setup.channel,
        address=setup.address,
        quiet_hours=None
        if quiet is None
        else QuietHours(
            start=f"{quiet.start:%H:%M}", end=f"{quiet.end:%H:%M}", timezone=quiet.timezone
        ),
        max_per_day=setup.max_per_day,
        max_per_week=setup.max_per_week,
        paused_until=setup.paused_until,
    )


def _consent_view(c: projection.Consent) -> ConsentView:
    return ConsentView(
        purpose=c.purpose,
        channel=c.channel,
        state=c.state,
        granted=c.granted,
        changed_at=c.changed_at,
        source=c.source,
        capture_method=c.capture_method,
        wording_version=c.wording_version,
        evidence=c.evidence,
    )


def _preferences_view(customer_id: str, reach: CustomerReach) -> CustomerPreferences:
    preferences = reach.preferences
    setups = preferences.channels if preferences else ()
    detractor = reach.holds.detractor
    consents = sorted(reach.consents.values(), key=lambda c: (c.purpose, c.channel.encode()))
    return CustomerPreferences(
        customer_id=customer_id,
        channels=[setup.channel for setup in setups],
        timezone=preferences.timezone if preferences else None,
        channel_setup=[_setup_view(setup) for setup in setups],
        preferences_set_at=preferences.set_at if preferences else None,
        consents=[_consent_view(c) for c in consents],
        do_not_contact=[
            DoNotContactView(
                channel=d.channel,
                reason=d.reason or "",
                note=d.note,
                listed_at=d.changed_at,
                source=d.source,
            )
            for d in sorted(reach.do_not_contact.values(), key=lambda d: d.channel.encode())
        ],
        holds=HoldsView(
            open_complaints=list(reach.holds.open_complaints),
            detractor_measure=detractor.measure if detractor else None,
            detractor_score=detractor.score if detractor else None,
            detractor_scored_at=detractor.scored_at if detractor else None,
        ),
    )


def _decision_view(customer_id: str, decision: Decision) -> ContactDecision:
    return ContactDecision(
        customer_id=customer_id,
        purpose=decision.purpose,
        at=decision.at,
        contact=decision.contact,
        channel=decision.channel,
        address=decision.address,
        reason=decision.reason,
        reasons=[_reason_view(r) for r in decision.reasons],
        channels=[
            ChannelVerdictView(
                channel=v.channel,
                address=v.address,
                allowed=v.allowed,
                reasons=[_reason_view(r) for r in v.reasons],
                possible_at=v.possible_at,
            )
            for v in decision.channels
        ],
        possible_at=decision.possible_at,
    )


def _known(reach: CustomerReach) -> bool:
    return bool(reach.preferences or reach.consents or reach.do_not_contact)


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
        check_responses=settings.platform.check_responses,
    )

    async def get_preferences(request: Request) -> Response:
        """The customer's channel set-up, consents with their evidence, do-not-contact entries
        and the holds on promotions (open complaints, latest detractor score)."""
        customer_id = path_customer_id(request)  # a DirectRoute: on the customer 360's path
        async with pool_of(request).acquire() as conn:
            reach = await store.reach_of_customer(conn, customer_id)
        if not _known(reach):
            raise _unknown(customer_id)
        return model_response(_preferences_view(customer_id, reach))

    add_customer_read(
        app.router, "/customers/{customer_id}/preferences", get_preferences, CustomerPreferences
    )

    @app.get("/customers/{customer_id}/consent-history", response_model=list[ConsentHistoryEntry])
    async def get_consent_history(
        customer_id: CustomerIdPath,
        conn: Conn,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[ConsentHistoryEntry]:
        """Every consent decision of the customer with its evidence, refusals included, newest
        first."""
        history = await store.history_of(conn, customer_id, limit)
        if not history and not await store.is_known(conn, customer_id):
            raise _unknown(customer_id)
        return [
            ConsentHistoryEntry(
                purpose=c.purpose,
                channel=c.channel,
                state=c.state,
                granted=c.granted,
                occurred_at=c.changed_at,
                source=c.source,
                event_id=c.event_id,
                capture_method=c.capture_method,
                wording_version=c.wording_version,
                evidence=c.evidence,
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

    policy = settings.contact_policy()

    @app.get("/customers/{customer_id}/decision", response_model=ContactDecision)
    async def get_decision(
        customer_id: CustomerIdPath,
        conn: Conn,
        purpose: ContactPurpose,
        channel: Annotated[Channel | None, Query(description="Ask about this channel only")] = None,
        at: Annotated[datetime | None, Query(description="RFC 3339; default now")] = None,
    ) -> ContactDecision:
        """Whether, when and on which channel the customer may be contacted for a purpose, with
        the reasons for every channel considered."""
        if at is not None and at.tzinfo is None:
            raise HTTPException(422, "at must carry a UTC offset, e.g. 2024-05-01T10:00:00Z")
        when = at or datetime.now(UTC)
        reach = await store.reach_of_customer(conn, customer_id)
        if not _known(reach):
            raise _unknown(customer_id)
        sends = await store.recent_sends(conn, [customer_id], sends_since(when))
        decision = contact_decision(
            reach,
            sends.get(customer_id, []),
            purpose.value,
            when,
            None if channel is None else channel.value,
            policy,
        )
        metrics.count_decision(decision)
        return _decision_view(customer_id, decision)

    campaign_api.add_routes(app, settings.plan_batch_size, settings.contact_policy())
    add_delivery_routes(app)
    return app


if __name__ == "__main__":
    serve(create_app, BroadcastSettings(), "broadcast-api")
