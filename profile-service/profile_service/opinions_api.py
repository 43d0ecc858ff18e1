"""What customers tell of the brand and its competitors: one customer's statements, and the
counts across customers (what is disliked, which competitors are bought and why, why people did
not buy)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel

from crm_shared.runtime.http import model_response
from profile_service import store
from profile_service.api import Conn, CustomerIdPath
from profile_service.opinions import OpinionKind, OpinionRow

router = APIRouter()


class CustomerOpinions(BaseModel):
    customer_id: str
    opinions: list[OpinionRow]


class OpinionCount(BaseModel):
    kind: OpinionKind
    topic: str
    """The aspect disliked, the competitor's brand (its most frequent spelling), or the reason
    for not buying."""
    statements: int
    customers: int
    reasons: dict[str, int]
    """For competitor purchases: the reasons given, with how often."""


class OpinionSummary(BaseModel):
    since: datetime | None
    until: datetime | None
    counts: list[OpinionCount]


@router.get("/customers/{customer_id}/opinions", response_model=CustomerOpinions)
async def customer_opinions(customer_id: CustomerIdPath, conn: Conn) -> Response:
    """What the customer dislikes, which competitors they buy from and why they did not buy,
    newest first, with where each statement came from."""
    rows = await store.opinions_of(conn, customer_id)
    if not rows:
        raise HTTPException(404, f"customer {customer_id!r} has stated no opinion")
    return model_response(CustomerOpinions(customer_id=customer_id, opinions=rows))


@router.get("/analytics/opinions", response_model=OpinionSummary)
async def opinion_summary(
    conn: Conn,
    since: Annotated[datetime | None, Query(description="Statements from this time on")] = None,
    until: Annotated[datetime | None, Query(description="Statements before this time")] = None,
) -> Response:
    """Across customers: how many stated each dislike, bought each competitor (and why) and gave
    each reason for not buying; most customers first. A period that ends before it starts holds
    nothing."""
    for bound in (since, until):
        if bound is not None and bound.tzinfo is None:
            raise HTTPException(422, "since and until need a UTC offset, e.g. 2026-01-01T00:00Z")
    rows = await store.opinion_counts(conn, since, until)
    return model_response(
        OpinionSummary(since=since, until=until, counts=[OpinionCount(**row) for row in rows])
    )
