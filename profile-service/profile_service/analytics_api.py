"""Profile read API across and about purchases: purchase summary, RFM, top customers, the cube.

Mounted by profile_service.api's create_app, whose parameter types it shares. Every amount is
in one currency (`currency`, default GBP): amounts in different currencies are never added.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from crm_shared.runtime.http import model_response
from profile_service import analytics, commerce, store
from profile_service.api import Conn, CustomerIdPath, combined_record, find_person

CurrencyQuery = Annotated[
    str, Query(pattern=r"^[A-Z]{3}$", description="ISO 4217 code of the amounts")
]

router = APIRouter()


class PurchaseSummary(BaseModel):
    customer_id: str
    by_currency: list[commerce.CurrencySummary]
    cancelled_orders: int
    favourite_channels: list[str]
    favourite_countries: list[str]
    """Where the orders went (those naming a country), most orders first; when none names one,
    the customer's own country, when known."""
    favourite_categories: list[str]
    """The catalogue categories (crm.catalogue) of the products in the orders not cancelled,
    most orders first; products the catalogue gives no category do not count."""


class RfmScore(BaseModel):
    currency: str
    recency_days: Decimal
    frequency: int
    monetary: Decimal
    last_purchase_at: datetime
    as_of: datetime
    r: int
    f: int
    m: int
    segment: str


class CustomerRfm(BaseModel):
    customer_id: str
    scores: list[RfmScore]


class ParetoPoint(BaseModel):
    population_share: Decimal
    revenue_share: Decimal


class TopCustomers(BaseModel):
    currency: str
    share: Decimal
    customers: int
    active_customers: int
    population_share: Decimal | None
    revenue: Decimal
    as_of: datetime | None
    pareto: list[ParetoPoint]


class CubeCell(BaseModel):
    segment: str | None = None
    rfm_segment: str | None = None
    country: str | None = None
    channel: str | None = None
    month: str | None = None
    rolled_up: list[str]
    customers: int
    orders: int
    revenue: Decimal
    average_order_value: Decimal | None


class Cube(BaseModel):
    currency: str
    dimensions: list[str]
    cells: list[CubeCell]
    computed_at: datetime | None = Field(
        description="When the worker computed these figures (it does after each refresh of the "
        "RFM scores); None: not yet, or no purchases in this currency"
    )


class SegmentSize(BaseModel):
    currency: str
    segment: str
    customers: int


@router.get("/customers/{customer_id}/purchases", response_model=PurchaseSummary)
async def purchase_summary(customer_id: CustomerIdPath, conn: Conn) -> Response:
    """Orders, revenue net of refunds and cancellations, averages and favourites, per currency,
    of the person the record belongs to (its merged and aliased records included)."""
    person = await find_person(conn, customer_id)
    totals, cancelled = await store.purchases_of(conn, person.records)
    if not totals and not cancelled:
        raise HTTPException(404, f"customer {customer_id!r} has no purchases")
    channels = await store.order_counts(conn, person.records, "channel")
    countries = commerce.favourites(await store.order_counts(conn, person.records, "country"))
    if not countries:
        country = (await combined_record(conn, person))[0].contact.get("country")
        countries = [country] if country else []
    summaries = [commerce.summarise(t) for t in totals]
    return model_response(
        PurchaseSummary(
            customer_id=person.person_id,
            by_currency=summaries,
            cancelled_orders=cancelled,
            favourite_channels=commerce.favourites(channels),
            favourite_countries=countries,
            favourite_categories=commerce.favourites(
                await store.order_counts(conn, person.records, "category")
            ),
        )
    )


@router.get("/customers/{customer_id}/rfm", response_model=CustomerRfm)
async def customer_rfm(customer_id: CustomerIdPath, conn: Conn) -> Response:
    """Recency, frequency, monetary value, their 1-5 scores and the RFM segment, per currency,
    of the person the record belongs to (as of the scores' last refresh, by the replayable
    clock)."""
    person = await find_person(conn, customer_id)
    rows = await store.rfm_of(conn, person.person_id)
    if not rows:
        raise HTTPException(404, f"customer {customer_id!r} has no RFM score (no order yet)")
    return model_response(
        CustomerRfm(customer_id=person.person_id, scores=[RfmScore(**row) for row in rows])
    )


@router.get("/analytics/rfm-segments", response_model=list[SegmentSize])
async def rfm_segments(conn: Conn) -> list[SegmentSize]:
    """How many customers each RFM segment holds, per currency."""
    sizes = await store.segment_sizes(conn)
    return [
        SegmentSize(currency=currency, segment=segment, customers=count)
        for (currency, segment), count in sorted(sizes.items())
    ]


@router.get("/analytics/top-customers", response_model=TopCustomers)
async def top_customers(
    conn: Conn,
    currency: CurrencyQuery = "GBP",
    share: Annotated[
        float, Query(gt=0, le=1, description="Share of net revenue to reach, e.g. 0.25")
    ] = float(analytics.DEFAULT_TOP_SHARE),
    points: Annotated[int, Query(ge=2, le=100, description="Points of the Pareto curve")] = 20,
) -> Response:
    """The smallest set of customers bringing `share` of net revenue, their share of the active
    population, and the Pareto curve (best customers first)."""
    wanted = Decimal(str(share))
    found = await store.top_customers(conn, currency, wanted, points)
    active, revenue = found["active"], found["revenue"]
    top = found["top"] or 0
    curve = analytics.pareto_curve(active, revenue, found["running_at"], points)
    return model_response(
        TopCustomers(
            currency=currency,
            share=wanted,
            customers=top,
            active_customers=active,
            population_share=round(Decimal(top) / active, 4) if active else None,
            revenue=revenue,
            as_of=found["as_of"],
            pareto=[ParetoPoint(**vars(point)) for point in curve],
        )
    )


@router.get("/analytics/cube", response_model=Cube)
async def olap_cube(
    conn: Conn,
    currency: CurrencyQuery = "GBP",
    by: Annotated[
        list[str] | None,
        Query(
            description="Dimensions among segment, rfm_segment, country, channel, month; "
            "repeat for several"
        ),
    ] = None,
) -> Response:
    """Customers, orders, net revenue and average order value for every combination of the
    chosen dimensions, with subtotals and the grand total (rolled-up dimensions listed), as the
    worker last computed them: a read is a lookup, however many facts there are."""
    try:
        dimensions = analytics.cube_dimensions(by or [])
    except analytics.UnknownDimension as problem:
        raise HTTPException(422, str(problem)) from None
    rows = await store.cube(conn, currency, dimensions)
    cells = []
    for row in rows:
        orders, revenue = row["orders"], row["revenue"]
        cells.append(
            CubeCell(
                **{d: row[d] for d in dimensions},
                rolled_up=[d for d, up in zip(dimensions, row["rolled_up"], strict=True) if up],
                customers=row["customers"],
                orders=orders,
                revenue=revenue,
                average_order_value=round(revenue / orders, 2) if orders else None,
            )
        )
    return model_response(
        Cube(
            currency=currency,
            dimensions=list(dimensions),
            cells=cells,
            computed_at=rows[0]["computed_at"],
        )
    )
