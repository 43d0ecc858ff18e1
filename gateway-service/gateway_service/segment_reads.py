"""The gateway's routes to operator segments. Defining and retiring a segment (scope
segments:write) publishes an event on crm.segment-definitions that the profile worker folds: the
answer is 202, and the segment's members follow within moments. Reading definitions, sizes,
members and a customer's segments needs segments:read; analytics:read does not grant it, as
member lists name customers while analytics are aggregates.

Mounted by gateway_service.api's create_app, whose guards and types it shares.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from pydantic import BaseModel

from crm_shared.contracts.events import (
    SEGMENT_DEFINED,
    SEGMENT_RETIRED,
    SegmentDefined,
)
from gateway_service.api import GUARDED, CustomerIdPath, errors, require
from gateway_service.auth import SEGMENTS_READ, SEGMENTS_WRITE, StoredKey
from gateway_service.commands import publish_command
from gateway_service.profile_reads import UPSTREAM, _from_profile
from gateway_service.upstream import customer_path

SegmentsReader = Annotated[StoredKey, Depends(require(SEGMENTS_READ))]
SegmentsWriter = Annotated[StoredKey, Depends(require(SEGMENTS_WRITE))]
SegmentPath = Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[a-z0-9_.-]+$")]

router = APIRouter()


class SegmentCommandAccepted(BaseModel):
    segment: str
    event_id: str
    type: str
    status: str = "accepted"


class SegmentRetirement(BaseModel):
    reason: str | None = None


async def _publish(
    request: Request, key: StoredKey, event_type: str, segment: str, data: dict[str, Any]
) -> SegmentCommandAccepted:
    """Publish the segment's event, keyed by the segment."""
    source = f"gateway:{key.key_id}"
    event_id = await publish_command(request, event_type, segment, data, source)
    return SegmentCommandAccepted(segment=segment, event_id=event_id, type=event_type)


@router.post(
    "/v1/segments",
    status_code=202,
    response_model=SegmentCommandAccepted,
    responses=errors(*GUARDED, 503),
)
async def define_segment(
    definition: SegmentDefined, request: Request, key: SegmentsWriter
) -> SegmentCommandAccepted:
    """Define a segment, or replace its rule: {"segment", "description", "rule"} (the rule
    language: crm_shared.contracts.segment_rules). An invalid rule is refused with the reason."""
    data = definition.model_dump(mode="json", by_alias=True, exclude_none=True)
    return await _publish(request, key, SEGMENT_DEFINED, definition.segment, data)


@router.delete(
    "/v1/segments/{segment}",
    status_code=202,
    response_model=SegmentCommandAccepted,
    responses=errors(*GUARDED, 400, 503),
)
async def retire_segment(
    segment: SegmentPath,
    request: Request,
    key: SegmentsWriter,
    retirement: Annotated[SegmentRetirement | None, Body()] = None,
) -> SegmentCommandAccepted:
    """Retire a segment: every member leaves it and it is no longer evaluated."""
    data = {"segment": segment, "reason": retirement.reason if retirement else None}
    return await _publish(request, key, SEGMENT_RETIRED, segment, data)


@router.get(
    "/v1/segments", response_model=list[dict[str, Any]], responses=errors(*GUARDED, *UPSTREAM)
)
async def list_segments(request: Request, _key: SegmentsReader) -> Response:
    """Every operator segment, retired ones too, with its rule and member count."""
    return await _from_profile(request, "segments", "/segments")


@router.get(
    "/v1/segments/{segment}",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_segment(segment: SegmentPath, request: Request, _key: SegmentsReader) -> Response:
    """One operator segment's definition and member count."""
    return await _from_profile(request, "segment", f"/segments/{segment}")


@router.get(
    "/v1/segments/{segment}/size",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_segment_size(
    segment: SegmentPath, request: Request, _key: SegmentsReader
) -> Response:
    """How many customers the segment holds now."""
    return await _from_profile(request, "segment_size", f"/segments/{segment}/size")


@router.get(
    "/v1/segments/{segment}/members",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_segment_members(
    segment: SegmentPath,
    request: Request,
    _key: SegmentsReader,
    cursor: Annotated[
        str | None, Query(max_length=128, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """A page of the segment's members in customer id order; follow next_cursor."""
    params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
    return await _from_profile(request, "segment_members", f"/segments/{segment}/members", params)


@router.get(
    "/v1/customers/{customer_id}/segments",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_customer_segments(
    customer_id: CustomerIdPath, request: Request, _key: SegmentsReader
) -> Response:
    """The segments the customer is in now, with when they entered."""
    path = customer_path("/customers/{customer_id}/segments", customer_id)
    return await _from_profile(request, "customer_segments", path)
