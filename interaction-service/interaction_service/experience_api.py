"""The voice of the customer and the journey: a customer's ratings and journey (with its moments
of truth), and across customers the trends, the experience dimensions and the stage counts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel

from crm_shared.contracts.events import JourneyStage, Measure, RatedItem, RatedKind, TouchpointName
from crm_shared.contracts.topics import ORDERS
from crm_shared.runtime.http import model_response
from interaction_service import experience, journey, store
from interaction_service.api import Conn, CustomerIdPath
from interaction_service.experience import (
    Figures,
    GroupBy,
    Period,
    Rating,
    TouchpointDimensions,
    TrendPoint,
)

router = APIRouter()
MAX_RATINGS = 500


class RatingItem(BaseModel):
    source: str
    event_id: str
    occurred_at: datetime
    measure: Measure
    score: int
    kind: str
    channel: str
    touchpoint: str
    department: str | None
    about: RatedItem | None
    comment: str | None
    dimensions: dict[str, int]


def _item(rating: Rating) -> RatingItem:
    return RatingItem(
        source=rating.source,
        event_id=rating.event_id,
        occurred_at=rating.occurred_at,
        measure=rating.measure,
        score=rating.score,
        kind=rating.kind,
        channel=rating.channel,
        touchpoint=rating.touchpoint,
        department=rating.department,
        about=rating.about,
        comment=rating.comment,
        dimensions=dict(rating.dimensions),
    )


class CustomerFeedback(BaseModel):
    customer_id: str
    figures: Figures
    """Over the ratings listed."""
    ratings: list[RatingItem]


class StageChange(BaseModel):
    version: int
    from_stage: JourneyStage | None
    to_stage: JourneyStage
    trigger: str
    changed_at: datetime


class MomentOfTruth(BaseModel):
    at: datetime
    rated: RatedItem
    satisfaction: RatingItem | None
    """The first rating linked to it, else the first within 7 days after it."""


class CustomerJourney(BaseModel):
    customer_id: str
    stage: JourneyStage
    entered_at: datetime
    as_of: datetime
    """The clock of the customer's order partition (or the entry time, when later)."""
    time_in_stage_seconds: float
    orders: int
    last_order_at: datetime | None
    promoter: bool
    first_purchase: MomentOfTruth | None
    first_service_contact: MomentOfTruth | None
    transitions: list[StageChange]


class Trends(BaseModel):
    by: GroupBy
    period: Period
    points: list[TrendPoint]


class Dimensions(BaseModel):
    touchpoints: list[TouchpointDimensions]


class StageCounts(BaseModel):
    customers: int
    stages: dict[JourneyStage, int]


def _moment(
    at: datetime | None, kind: RatedKind, item_id: str | None, ratings: list[Rating]
) -> MomentOfTruth | None:
    if at is None or item_id is None:
        return None
    rated = RatedItem(kind=kind, id=item_id)
    found = experience.satisfaction_after(at, rated, ratings)
    return MomentOfTruth(at=at, rated=rated, satisfaction=None if found is None else _item(found))


def _aware(value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(422, "since and until need a UTC offset, e.g. 2026-01-01T00:00Z")


@router.get("/customers/{customer_id}/feedback", response_model=CustomerFeedback)
async def customer_feedback(
    customer_id: CustomerIdPath,
    conn: Conn,
    limit: Annotated[int, Query(ge=1, le=MAX_RATINGS)] = 50,
) -> Response:
    """The customer's CSAT, NPS and effort scores, newest first, with what each rates, and the
    figures over them."""
    ratings = await store.ratings_of(conn, customer_id, limit)
    if not ratings:
        raise HTTPException(404, f"customer {customer_id!r} has given no feedback")
    counts = experience.count_scores([(r.measure, r.score) for r in ratings])
    return model_response(
        CustomerFeedback(
            customer_id=customer_id,
            figures=experience.figures(counts),
            ratings=[_item(r) for r in ratings],
        )
    )


@router.get("/customers/{customer_id}/journey", response_model=CustomerJourney)
async def customer_journey(customer_id: CustomerIdPath, conn: Conn) -> Response:
    """The customer's journey stage, since when and for how long by the clock, every stage
    change, and the moments of truth (first purchase, first service contact) with the
    satisfaction that followed each."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        found = await store.journey_of(conn, customer_id)
        if found is None or found.stage is None or found.entered_at is None:
            raise HTTPException(404, f"customer {customer_id!r} has no journey yet")
        changes = await store.transitions_of(conn, customer_id)
        ratings = await store.ratings_of(conn, customer_id, MAX_RATINGS)
        clock = await store.clock_of(conn, ORDERS.name, found.order_partition)
    as_of = found.entered_at if clock is None or clock < found.entered_at else clock
    in_stage = journey.time_in_stage(found, as_of)
    return model_response(
        CustomerJourney(
            customer_id=customer_id,
            stage=found.stage,
            entered_at=found.entered_at,
            as_of=as_of,
            time_in_stage_seconds=0.0 if in_stage is None else in_stage.total_seconds(),
            orders=found.orders,
            last_order_at=found.last_order_at,
            promoter=found.promoter,
            first_purchase=_moment(
                found.first_order_at, RatedKind.ORDER, found.first_order_id, ratings
            ),
            first_service_contact=_moment(
                found.first_contact_at, RatedKind.CONTACT, found.first_contact_id, ratings
            ),
            transitions=[StageChange(**change) for change in changes],
        )
    )


@router.get("/experience/trends", response_model=Trends)
async def experience_trends(
    conn: Conn,
    by: GroupBy = "touchpoint",
    period: Period = "month",
    since: Annotated[datetime | None, Query(description="Ratings from this time on")] = None,
    until: Annotated[datetime | None, Query(description="Ratings before this time")] = None,
) -> Response:
    """NPS, mean CSAT and mean effort per touchpoint, department or channel and per period
    (UTC days, weeks from Monday, months), with their counts."""
    _aware(since)
    _aware(until)
    rows = await store.trend_counts(conn, by, period, since, until)
    return model_response(Trends(by=by, period=period, points=experience.trend(rows)))


@router.get("/experience/dimensions", response_model=Dimensions)
async def experience_dimensions(
    conn: Conn,
    touchpoint: Annotated[TouchpointName | None, Query()] = None,
) -> Response:
    """Per touchpoint: the mean score (1-5) of each experience dimension (reliability,
    efficiency, convenience, integrity) and of the functional and emotional ones together."""
    rows = await store.dimension_counts(conn, touchpoint)
    return model_response(Dimensions(touchpoints=experience.dimension_summary(rows)))


@router.get("/journey/stages", response_model=StageCounts)
async def journey_stages(conn: Conn) -> Response:
    """How many customers are in each journey stage."""
    counts = await store.stage_counts(conn)
    stages = {stage: counts.get(stage.value, 0) for stage in JourneyStage}
    return model_response(StageCounts(customers=sum(stages.values()), stages=stages))
