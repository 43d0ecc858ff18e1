"""The gateway's merge and unmerge requests (scope customers:merge). A request becomes a
`crm.customer.merged.v1` or `crm.customer.unmerged.v1` event on crm.customers, which the profile
service folds; the answer is 202 with the event's id, since the merge shows once it is folded.

Like PostHog, a record that is an identified person (an e-mail, a phone, ids in other systems,
as the profile service reports it) is merged away only when the request says `force`, and ids
such as "null" or "0" are never merged (the event contract refuses them).

Mounted by gateway_service.api's create_app, whose guards and types it shares.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from crm_shared.contracts.events import (
    CUSTOMER_MERGED,
    CUSTOMER_UNMERGED,
    CustomerId,
)
from gateway_service import metrics
from gateway_service.api import GUARDED, CustomerIdPath, errors, require
from gateway_service.auth import CUSTOMERS_MERGE, StoredKey
from gateway_service.commands import publish_command
from gateway_service.upstream import Services, UpstreamFailure, customer_path

CustomersMerger = Annotated[StoredKey, Depends(require(CUSTOMERS_MERGE))]
SOURCE = "gateway-service"
"""The source of the merge events the gateway publishes for its callers."""

router = APIRouter()


class MergeRequest(BaseModel):
    customer_id: CustomerId = Field(description="The record to merge into the path's customer")
    reason: str | None = Field(default=None, max_length=300)
    force: bool = Field(
        default=False, description="Merge it away even when it is an identified person"
    )


class MergeAccepted(BaseModel):
    event_id: str
    type: str
    customer_id: str
    other_customer_id: str


async def _identified_by(request: Request, customer_id: str) -> list[str]:
    """What identifies the record, by the profile service (nothing when it does not know it)."""
    services: Services = request.app.state.services
    path = customer_path("/customers/{customer_id}/merges", customer_id)
    try:
        answer = await services.get("profile", path, {}, request.state.request_id)
    except UpstreamFailure as failure:
        metrics.UPSTREAM_REQUESTS.labels("merges", failure.outcome.label).inc()
        raise HTTPException(
            503, f"the profile service cannot say whether {customer_id!r} is identified now"
        ) from None
    metrics.UPSTREAM_REQUESTS.labels("merges", "found").inc()
    if answer.status == 404:
        return []
    if answer.status != 200:
        raise HTTPException(502, f"the profile service failed (HTTP {answer.status})")
    identified: list[str] = json.loads(answer.content)["identified_by"]
    return identified


async def _publish(
    request: Request, event_type: str, customer_id: str, data: dict[str, Any]
) -> MergeAccepted:
    event_id = f"{event_type}:{uuid.uuid4().hex}"
    await publish_command(request, event_type, customer_id, data, SOURCE, event_id)
    other = data.get("merged_customer_id") or data["customer_id"]
    return MergeAccepted(
        event_id=event_id, type=event_type, customer_id=customer_id, other_customer_id=other
    )


@router.post(
    "/v1/customers/{customer_id}/merges",
    response_model=MergeAccepted,
    status_code=202,
    responses=errors(*GUARDED, 400, 409, 422, 502, 503),
)
async def merge_customer(
    customer_id: CustomerIdPath, merge: MergeRequest, request: Request, _key: CustomersMerger
) -> MergeAccepted:
    """Merge another record into this customer: its history counts here until it is unmerged.
    An identified record (e-mail, phone, ids in other systems) needs `force`."""
    if merge.customer_id == customer_id:
        raise HTTPException(422, "a customer cannot be merged into itself")
    identified = await _identified_by(request, merge.customer_id)
    if identified and not merge.force:
        raise HTTPException(
            409,
            f"customer {merge.customer_id!r} is an identified person ({', '.join(identified)}); "
            "merging it away needs force=true",
        )
    data = {"merged_customer_id": merge.customer_id, "reason": merge.reason}
    return await _publish(request, CUSTOMER_MERGED, customer_id, data)


@router.delete(
    "/v1/customers/{customer_id}/merges/{other_customer_id}",
    response_model=MergeAccepted,
    status_code=202,
    responses=errors(*GUARDED, 422, 503),
)
async def unmerge_customer(
    customer_id: CustomerIdPath,
    other_customer_id: CustomerIdPath,
    request: Request,
    _key: CustomersMerger,
) -> MergeAccepted:
    """Split a merged record off again: it is a person of its own, with its own history."""
    data = {"customer_id": other_customer_id, "reason": "unmerged through the gateway"}
    return await _publish(request, CUSTOMER_UNMERGED, customer_id, data)
