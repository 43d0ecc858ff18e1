"""The broadcast API's campaign routes: campaigns with their reasons and progress, and the dry
run (reach and reasons for not sending, written nowhere). Defining and cancelling a campaign
are events the gateway publishes; this API only reads.

Mounted by broadcast_service.api's create_app.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query
from pydantic import BaseModel, Field

from broadcast_service import planning, store
from broadcast_service.campaigns import campaign_from
from broadcast_service.decision import ContactPolicy
from crm_shared.contracts.events import CAMPAIGN_DEFINED, CampaignDefined, Event
from crm_shared.runtime.http import connection

Conn = Annotated[asyncpg.Connection, Depends(connection)]
CampaignIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]
MESSAGE_STATES = ("planned", "sending", "sent", "failed", "cancelled")


class ReasonCount(BaseModel):
    reason: str
    planned: bool = Field(description="Whether these recipients were given a message")
    recipients: int


class ChannelProgress(BaseModel):
    """The campaign's messages on one channel, by state in outbound_messages."""

    channel: str
    planned: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    cancelled: int = 0


class CampaignView(BaseModel):
    campaign_id: str
    name: str
    kind: str
    purpose: str
    state: str = Field(
        description="scheduled, planning (being planned, chunk by chunk), planned or cancelled"
    )
    send_at: datetime
    defined_at: datetime
    planned_at: datetime | None
    plan_seconds: float | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    recipients: int = Field(description="Recipients decided when planned")
    messages: int = Field(description="Messages planned")
    reasons: list[ReasonCount]
    progress: list[ChannelProgress]
    definition: dict[str, Any]


class DryRun(BaseModel):
    at: datetime
    recipients: int = Field(description="Everyone the target names now")
    reach: int = Field(description="Recipients who would get a message")
    reasons: list[ReasonCount] = Field(description="Recipients per decision reason, most first")


def _view(row: Mapping[str, Any]) -> CampaignView:
    progress: dict[str, ChannelProgress] = {}
    for channel, state, count in row["progress"]:
        setattr(progress.setdefault(channel, ChannelProgress(channel=channel)), state, count)
    reasons = [ReasonCount(reason=r, planned=p, recipients=n) for r, p, n in row["reasons"]]
    return CampaignView(
        campaign_id=row["campaign_id"],
        name=row["name"],
        kind=row["kind"],
        purpose=row["purpose"],
        state=row["state"],
        send_at=row["send_at"],
        defined_at=row["defined_at"],
        planned_at=row["planned_at"],
        plan_seconds=row["plan_seconds"],
        cancelled_at=row["cancelled_at"],
        cancel_reason=row["cancel_reason"],
        recipients=sum(r.recipients for r in reasons),
        messages=sum(r.recipients for r in reasons if r.planned),
        reasons=reasons,
        progress=list(progress.values()),
        definition=row["definition"],
    )


def add_routes(app: FastAPI, batch_size: int, policy: ContactPolicy) -> None:
    """Mount the campaign routes; dry runs decide `batch_size` recipients per set of queries,
    under the company's contact policy."""
    router = APIRouter()

    @router.get("/campaigns", response_model=list[CampaignView])
    async def list_campaigns(
        conn: Conn, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[CampaignView]:
        """The newest campaigns first, each with its reasons and progress by channel."""
        return [_view(row) for row in await store.campaign_rows(conn, None, limit)]

    @router.get("/campaigns/{campaign_id}", response_model=CampaignView)
    async def get_campaign(campaign_id: CampaignIdPath, conn: Conn) -> CampaignView:
        """One campaign: definition, state, recipients per reason, messages by channel and state."""
        rows = await store.campaign_rows(conn, campaign_id, 1)
        if not rows:
            raise HTTPException(404, f"no campaign {campaign_id!r} in the broadcast service")
        return _view(rows[0])

    @router.post("/campaigns/dry-run", response_model=DryRun)
    async def dry_run(
        definition: CampaignDefined,
        conn: Conn,
        at: Annotated[
            datetime | None, Query(description="Decide as of; default send_at, or now")
        ] = None,
    ) -> DryRun:
        """Who a campaign would reach and why the others would not: nothing is written."""
        if at is not None and at.tzinfo is None:
            raise HTTPException(422, "at must carry a UTC offset, e.g. 2024-05-01T10:00:00Z")
        when = at or definition.send_at or datetime.now(UTC)
        campaign = campaign_from(
            Event("dry-run", "dry-run", CAMPAIGN_DEFINED, "dry-run", when, definition)
        )
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            reasons = await planning.dry_run(conn, campaign, when, batch_size, policy)
        planned = planning.PLANNED_REASONS
        return DryRun(
            at=when,
            recipients=sum(reasons.values()),
            reach=sum(n for reason, n in reasons.items() if reason in planned),
            reasons=[
                ReasonCount(reason=reason, planned=reason in planned, recipients=n)
                for reason, n in reasons.most_common()
            ],
        )

    app.router.routes.extend(router.routes)
