"""The gateway's routes to the profile service's purchase analysis: a customer's purchase summary,
RFM scores and stated opinions (scope customers:read), and the figures across customers, top
customers, the cube, the RFM segment sizes and the opinion counts (scope analytics:read). The
service's answers are passed on as they are; the gateway checks the parameters first, so that
its document says what is valid.

Mounted by gateway_service.api's create_app, whose guards and types it shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from gateway_service.api import GUARDED, CustomerIdPath, CustomersReader, errors, require
from gateway_service.auth import ANALYTICS_READ, StoredKey
from gateway_service.passthrough import passed_on
from gateway_service.upstream import customer_path

AnalyticsReader = Annotated[StoredKey, Depends(require(ANALYTICS_READ))]
CurrencyQuery = Annotated[
    str, Query(pattern=r"^[A-Z]{3}$", description="ISO 4217 code of the amounts (GBP)")
]
CubeDimension = Literal["segment", "rfm_segment", "country", "channel", "month"]
UPSTREAM = (502, 503, 504)

router = APIRouter()


async def _from_profile(
    request: Request, part: str, path: str, params: Mapping[str, Any] | None = None
) -> Response:
    """The profile service's answer as it is (200, 404, 422); 502/503/504 when it fails."""
    return await passed_on(request, "profile", part, path, params)


@router.get(
    "/v1/customers/{customer_id}/purchases",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_purchases(
    customer_id: CustomerIdPath, request: Request, _key: CustomersReader
) -> Response:
    """Orders, revenue net of refunds and cancellations, averages and favourites, per currency."""
    path = customer_path("/customers/{customer_id}/purchases", customer_id)
    return await _from_profile(request, "purchases", path)


@router.get(
    "/v1/customers/{customer_id}/rfm",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_rfm(customer_id: CustomerIdPath, request: Request, _key: CustomersReader) -> Response:
    """Recency, frequency, monetary value, their 1-5 scores and the RFM segment, per currency."""
    return await _from_profile(
        request, "rfm", customer_path("/customers/{customer_id}/rfm", customer_id)
    )


@router.get(
    "/v1/analytics/rfm-segments",
    response_model=list[dict[str, Any]],
    responses=errors(*GUARDED, *UPSTREAM),
)
async def get_rfm_segments(request: Request, _key: AnalyticsReader) -> Response:
    """How many customers each RFM segment holds, per currency."""
    return await _from_profile(request, "rfm_segments", "/analytics/rfm-segments")


@router.get(
    "/v1/analytics/top-customers",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, *UPSTREAM),
)
async def get_top_customers(
    request: Request,
    _key: AnalyticsReader,
    currency: CurrencyQuery = "GBP",
    share: Annotated[
        float, Query(gt=0, le=1, description="Share of net revenue to reach (0.25)")
    ] = 0.25,
    points: Annotated[int, Query(ge=2, le=100, description="Points of the Pareto curve")] = 20,
) -> Response:
    """The smallest set of customers bringing `share` of net revenue, their share of the active
    population, and the Pareto curve."""
    params = {"currency": currency, "share": share, "points": points}
    return await _from_profile(request, "top_customers", "/analytics/top-customers", params)


@router.get(
    "/v1/analytics/cube", response_model=dict[str, Any], responses=errors(*GUARDED, *UPSTREAM)
)
async def get_cube(
    request: Request,
    _key: AnalyticsReader,
    currency: CurrencyQuery = "GBP",
    by: Annotated[
        list[CubeDimension] | None, Query(description="Dimensions of the cube; repeat for several")
    ] = None,
) -> Response:
    """Customers, orders, net revenue and average order value for every combination of the
    chosen dimensions, with subtotals and the grand total."""
    params = {"currency": currency, "by": by or []}
    return await _from_profile(request, "cube", "/analytics/cube", params)


@router.get(
    "/v1/customers/{customer_id}/opinions",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_opinions(
    customer_id: CustomerIdPath, request: Request, _key: CustomersReader
) -> Response:
    """What the customer dislikes, which competitors they buy from and why they did not buy."""
    return await _from_profile(
        request, "opinions", customer_path("/customers/{customer_id}/opinions", customer_id)
    )


@router.get(
    "/v1/analytics/opinions",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 422, *UPSTREAM),
)
async def get_opinion_summary(
    request: Request,
    _key: AnalyticsReader,
    since: Annotated[datetime | None, Query(description="Statements from this time on")] = None,
    until: Annotated[datetime | None, Query(description="Statements before this time")] = None,
) -> Response:
    """Across customers: dislikes, competitor brands bought (and why) and reasons for not
    buying, each with how many customers stated it."""
    params = {k: v.isoformat() for k, v in (("since", since), ("until", until)) if v is not None}
    return await _from_profile(request, "opinion_summary", "/analytics/opinions", params)


@router.get(
    "/v1/customers/{customer_id}/merges",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_merges(
    customer_id: CustomerIdPath, request: Request, _key: CustomersReader
) -> Response:
    """The person this record belongs to, its records, what identifies it, and the merges and
    unmerges that decided it."""
    return await _from_profile(
        request, "merges", customer_path("/customers/{customer_id}/merges", customer_id)
    )
