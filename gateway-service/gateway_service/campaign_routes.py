"""The gateway's routes to campaigns and newsletters. Defining and cancelling one (scope
campaigns:write) publishes an event on crm.campaigns that the broadcast worker folds: the answer
is 202, and the plan follows at the campaign's send instant. A definition is validated here as
the worker will validate it, templates compiled included, so a broken template is a 422 now
rather than a dead letter later. Reading campaigns with their progress, and dry runs, need
campaigns:read; the broadcast service answers them.

Mounted by gateway_service.api's create_app, whose guards and types it shares.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from crm_shared.contracts.events import (
    CAMPAIGN_CANCELLED,
    CAMPAIGN_DEFINED,
    CampaignDefined,
    CampaignId,
)
from gateway_service.api import GUARDED, errors, require
from gateway_service.auth import CAMPAIGNS_READ, CAMPAIGNS_WRITE, StoredKey
from gateway_service.commands import publish_command
from gateway_service.passthrough import passed_on

CampaignsReader = Annotated[StoredKey, Depends(require(CAMPAIGNS_READ))]
CampaignsWriter = Annotated[StoredKey, Depends(require(CAMPAIGNS_WRITE))]
CampaignIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]
UPSTREAM = (502, 503, 504)

router = APIRouter()


class CampaignDefinition(CampaignDefined):
    """A campaign's definition; without campaign_id the gateway makes one."""

    campaign_id: CampaignId | None = Field(
        default=None, description="Defining an id again replaces its definition until planned"
    )


class CampaignCancellation(BaseModel):
    reason: str | None = Field(default=None, max_length=300)


class CampaignCommandAccepted(BaseModel):
    campaign_id: str
    event_id: str
    type: str
    status: str = "accepted"


async def _publish(
    request: Request, key: StoredKey, event_type: str, campaign_id: str, data: dict[str, Any]
) -> CampaignCommandAccepted:
    """Publish the campaign's event, keyed by the campaign."""
    source = f"gateway:{key.key_id}"
    event_id = await publish_command(request, event_type, campaign_id, data, source)
    return CampaignCommandAccepted(campaign_id=campaign_id, event_id=event_id, type=event_type)


@router.post(
    "/v1/campaigns",
    status_code=202,
    response_model=CampaignCommandAccepted,
    responses=errors(*GUARDED, 400, 503),
)
async def define_campaign(
    definition: CampaignDefinition, request: Request, key: CampaignsWriter
) -> CampaignCommandAccepted:
    """Define a campaign or newsletter: purpose, target (a segment or customer_ids), one
    template per channel (Jinja2: name, recommendations, new_products, unsubscribe_url, ...),
    send_at (default now), throttle. A template that does not compile is refused with why."""
    campaign_id = definition.campaign_id or str(uuid.uuid4())
    data = definition.model_dump(mode="json", exclude={"campaign_id"}, exclude_none=True)
    return await _publish(request, key, CAMPAIGN_DEFINED, campaign_id, data)


@router.delete(
    "/v1/campaigns/{campaign_id}",
    status_code=202,
    response_model=CampaignCommandAccepted,
    responses=errors(*GUARDED, 400, 503),
)
async def cancel_campaign(
    campaign_id: CampaignIdPath,
    request: Request,
    key: CampaignsWriter,
    cancellation: Annotated[CampaignCancellation | None, Body()] = None,
) -> CampaignCommandAccepted:
    """Cancel a campaign: what is not sent yet will not be."""
    data = {"reason": cancellation.reason if cancellation else None}
    return await _publish(request, key, CAMPAIGN_CANCELLED, campaign_id, data)


@router.post(
    "/v1/campaigns/dry-run",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 400, *UPSTREAM),
)
async def dry_run_campaign(
    definition: CampaignDefined,
    request: Request,
    _key: CampaignsReader,
    at: Annotated[
        datetime | None, Query(description="Decide as of, with a UTC offset; default send_at")
    ] = None,
) -> Response:
    """Who a campaign would reach now and why the others would not (reasons with counts);
    nothing is sent or planned."""
    params = {} if at is None else {"at": at.isoformat()}
    body = definition.model_dump_json(exclude_none=True).encode()
    return await passed_on(
        request, "broadcast", "campaign_dry_run", "/campaigns/dry-run", params, "POST", body
    )


@router.get(
    "/v1/campaigns", response_model=list[dict[str, Any]], responses=errors(*GUARDED, *UPSTREAM)
)
async def list_campaigns(
    request: Request, _key: CampaignsReader, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> Response:
    """The newest campaigns, each with recipients per reason and messages by channel and state."""
    return await passed_on(request, "broadcast", "campaigns", "/campaigns", {"limit": limit})


@router.get(
    "/v1/campaigns/{campaign_id}",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_campaign(
    campaign_id: CampaignIdPath, request: Request, _key: CampaignsReader
) -> Response:
    """One campaign: its definition, state, recipients per reason and progress by channel."""
    path = f"/campaigns/{quote(campaign_id, safe='')}"
    return await passed_on(request, "broadcast", "campaign", path)
