"""Profile read API of segments: operator segments' definitions and sizes, a segment's members
page by page, a customer's segments. Definitions are written by publishing events (the gateway's
POST /v1/segments), never here.

Mounted by profile_service.api's create_app, whose parameter types it shares.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel

from crm_shared.contracts.events import RESERVED_SEGMENTS, SegmentName
from crm_shared.runtime.http import model_response
from profile_service import store
from profile_service.api import Conn, CustomerIdPath, find_person

SegmentPath = Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[a-z0-9_.-]+$")]
MAX_PAGE = 1000

router = APIRouter()


class SegmentDefinition(BaseModel):
    segment: SegmentName
    description: str | None
    rule: dict[str, Any]
    """As the operator wrote it (crm_shared.contracts.segment_rules), with defaults filled in."""
    retired: bool
    time_dependent: bool
    """Evaluated again when the clock ticks (windows, recency, RFM)."""
    changed_at: datetime
    members: int


class Member(BaseModel):
    customer_id: str
    version: int
    since: datetime


class MembersPage(BaseModel):
    segment: str
    members: list[Member]
    next_cursor: str | None
    """Pass as `cursor` for the next page; null on the last page."""


class SegmentSize(BaseModel):
    segment: str
    members: int


class Membership(BaseModel):
    segment: str
    version: int
    since: datetime


async def _known(conn: asyncpg.Connection, segment: str) -> None:
    """404 unless the segment is an operator's or the platform's own."""
    if segment not in RESERVED_SEGMENTS and not await store.segment_definitions(conn, segment):
        raise HTTPException(404, f"no segment {segment!r} has been defined")


@router.get("/segments", response_model=list[SegmentDefinition])
async def list_segments(conn: Conn) -> list[SegmentDefinition]:
    """Every operator segment, retired ones too, with its rule and member count."""
    return [SegmentDefinition(**row) for row in await store.segment_definitions(conn)]


@router.get("/segments/{segment}", response_model=SegmentDefinition)
async def get_segment(segment: SegmentPath, conn: Conn) -> Response:
    """One operator segment's definition and member count."""
    rows = await store.segment_definitions(conn, segment)
    if not rows:
        raise HTTPException(404, f"no segment {segment!r} has been defined")
    return model_response(SegmentDefinition(**rows[0]))


@router.get("/segments/{segment}/size", response_model=SegmentSize)
async def get_segment_size(segment: SegmentPath, conn: Conn) -> SegmentSize:
    """How many customers the segment holds now."""
    await _known(conn, segment)
    return SegmentSize(segment=segment, members=await store.segment_size(conn, segment))


@router.get("/segments/{segment}/members", response_model=MembersPage)
async def get_segment_members(
    segment: SegmentPath,
    conn: Conn,
    cursor: Annotated[
        str | None, Query(max_length=128, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Response:
    """A page of the segment's members in customer id order, with when each entered."""
    await _known(conn, segment)
    rows = await store.segment_members(conn, segment, cursor, limit + 1)
    page = [Member(**row) for row in rows[:limit]]
    next_cursor = page[-1].customer_id if len(rows) > limit else None
    return model_response(MembersPage(segment=segment, members=page, next_cursor=next_cursor))


class CustomerMemberships(BaseModel):
    customer_id: str
    segments: list[Membership]


@router.get("/customers/{customer_id}/segments", response_model=CustomerMemberships)
async def get_customer_segments(customer_id: CustomerIdPath, conn: Conn) -> Response:
    """The segments the customer is in now (operator segments and the platform's own): those
    of the person the record belongs to, whose id answers."""
    if await store.customer_view(conn, customer_id) is None:
        raise HTTPException(404, f"customer {customer_id!r} is not known to the profile service")
    person = await find_person(conn, customer_id)
    rows = await store.customer_segments(conn, person.person_id)
    return model_response(
        CustomerMemberships(customer_id=person.person_id, segments=[Membership(**r) for r in rows])
    )
