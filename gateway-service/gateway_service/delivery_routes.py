"""The gateway's delivery routes: providers' delivery reports (scope deliveries:write) and each
campaign's results by channel and outcome (scope campaigns:read), as the broadcast service
records and answers them.

A report is validated here as the broadcast service validates it (the shared contract), so a
provider gets a 422 with the reasons from the gateway itself. Mounted by gateway_service.api's
create_app, whose guards and types it shares.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Request, Response

from crm_shared.contracts.delivery_reports import CampaignDelivery, DeliveryReport, ReportRecorded
from gateway_service.api import GUARDED, errors, require
from gateway_service.auth import DELIVERIES_WRITE, StoredKey
from gateway_service.campaign_routes import UPSTREAM, CampaignIdPath, CampaignsReader
from gateway_service.passthrough import passed_on

DeliveriesWriter = Annotated[StoredKey, Depends(require(DELIVERIES_WRITE))]
MessageIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:@+-]+$",
        description="The message's id, as the sender gave it to the provider",
    ),
]

router = APIRouter()


@router.post(
    "/v1/messages/{message_id}/reports",
    response_model=ReportRecorded,
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def report_delivery(
    message_id: MessageIdPath, report: DeliveryReport, request: Request, _key: DeliveriesWriter
) -> Response:
    """A provider's report on a message (delivered, opened, clicked, bounced, failed,
    unsubscribed, complained), recorded once and published as the message's outcome; a bounce,
    an unsubscribe or a complaint also stops contact. 404 for a message never planned."""
    path = f"/messages/{quote(message_id, safe='')}/reports"
    body = report.model_dump_json(exclude_none=True).encode()
    return await passed_on(request, "broadcast", "delivery_report", path, {}, "POST", body)


@router.get(
    "/v1/campaigns/{campaign_id}/delivery",
    response_model=CampaignDelivery,
    responses=errors(*GUARDED, *UPSTREAM),
)
async def campaign_delivery(
    campaign_id: CampaignIdPath, request: Request, _key: CampaignsReader
) -> Response:
    """What became of a campaign's messages, by channel and outcome (sent, delivered, opened,
    clicked, bounced, ...); empty channels for a campaign that sent nothing (yet)."""
    path = f"/campaigns/{quote(campaign_id, safe='')}/delivery"
    return await passed_on(request, "broadcast", "campaign_delivery", path)
