"""The gateway's routes to the recommendation service: a customer's precomputed picks and similar
items (both narrowed by the catalogue on request), "also bought", popular and trending goods, the
model served (scope recommendations:read), and a
retrain request (scope recommendations:train). Each answer carries the model version and its
training time, as the service gives it; the gateway checks the parameters first, so that its
document says what is valid.

Mounted by gateway_service.api's create_app, whose guards and types it shares.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field, TypeAdapter

from crm_shared.contracts.events import CategoryName, CountryCode, SegmentName
from crm_shared.runtime.http import (
    add_customer_read,
    path_and_query,
)
from gateway_service.api import GUARDED, KEY_SECURITY, admitted, errors, require
from gateway_service.auth import RECOMMENDATIONS_READ, RECOMMENDATIONS_TRAIN, StoredKey
from gateway_service.passthrough import passed_on
from gateway_service.upstream import customer_path

RecommendationsReader = Annotated[StoredKey, Depends(require(RECOMMENDATIONS_READ))]
RecommendationsTrainer = Annotated[StoredKey, Depends(require(RECOMMENDATIONS_TRAIN))]
ProductIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^/]+$")]
PICKS_KEPT = 50
"""The most picks the service keeps per customer (recommendation_service.serving.PICKS_KEPT)."""
UPSTREAM = (502, 503, 504)
PRICE_PATTERN = r"^(1000000(\.0{1,4})?|[0-9]{1,6}(\.[0-9]{1,4})?)$"
"""A price as the contract's Money reads it: 0 to 1000000, at most four decimals."""

router = APIRouter()


def _limit(most: int) -> Any:
    return Query(ge=1, le=most, description="How many products to return (10)")


def _product_path(template: str, product_id: str) -> str:
    return template.format(product_id=quote(product_id, safe=""))


class CatalogueQuery(BaseModel):
    """A request's catalogue filter, checked here so that the document says what is valid.
    Products the catalogue does not know never match a filter; a range no price fits is a 422
    (the service's)."""

    category: CategoryName | None = Field(None, description="Only this category")
    min_price: str | None = Field(
        None, pattern=PRICE_PATTERN, description="Lowest price, in `currency`"
    )
    max_price: str | None = Field(
        None, pattern=PRICE_PATTERN, description="Highest price, in `currency` (not below min)"
    )
    currency: str | None = Field(
        None, pattern=r"^[A-Z]{3}$", description="Only goods priced in it (GBP with a price)"
    )
    available: bool | None = Field(
        None, description="Only goods in stock (true) or out of stock (false)"
    )

    def params(self) -> dict[str, str]:
        """The filter as the service's query parameters (those given)."""
        given = {
            "category": self.category,
            "min_price": self.min_price,
            "max_price": self.max_price,
            "currency": self.currency,
            "available": None if self.available is None else str(self.available).lower(),
        }
        return {name: str(value) for name, value in given.items() if value is not None}


class PicksQuery(CatalogueQuery):
    """A customer's top picks: how many, and the catalogue filter."""

    limit: int = Field(10, ge=1, le=PICKS_KEPT, description="How many products to return (10)")


async def catalogue_params(query: Annotated[CatalogueQuery, Query()]) -> dict[str, str]:
    """The catalogue filter as the service's query parameters. Async so that FastAPI does not
    hand it to a worker thread (recommendation_service.api.catalogue_filter)."""
    return query.params()


CatalogueParams = Annotated[dict[str, str], Depends(catalogue_params)]
PICKS_QUERY = TypeAdapter(PicksQuery)


async def _from_recommendation(
    request: Request, part: str, path: str, params: dict[str, Any] | None = None
) -> Response:
    return await passed_on(request, "recommendation", part, path, params)


async def get_recommendations(request: Request) -> Response:
    """The customer's personal top picks, each with its reason, and the model version and its
    training time; popular goods they have not bought when the model has nothing for them. With
    a catalogue filter, the picks that match topped up with popular goods that match."""
    # A DirectRoute, as the service's: the key first (FastAPI solved the guard before the
    # parameters), then the path and the query validated in one go.
    await admitted(request, RECOMMENDATIONS_READ)
    customer_id, query = path_and_query(request, PICKS_QUERY)
    path = customer_path("/customers/{customer_id}/recommendations", customer_id)
    params = {"limit": query.limit, **query.params()}
    return await _from_recommendation(request, "recommendations", path, params)


add_customer_read(
    router,
    "/v1/customers/{customer_id}/recommendations",
    get_recommendations,
    dict[str, Any],
    PICKS_QUERY,
    openapi_extra=KEY_SECURITY,
    responses=errors(*GUARDED, *UPSTREAM),
)


@router.get(
    "/v1/products/popular",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, *UPSTREAM),
)
async def get_popular(
    request: Request, _key: RecommendationsReader, limit: Annotated[int, _limit(100)] = 10
) -> Response:
    """The most bought goods (never postage, fees or vouchers): by buyers, then quantity."""
    return await _from_recommendation(request, "popular", "/products/popular", {"limit": limit})


@router.get(
    "/v1/products/{product_id}/similar",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_similar(
    product_id: ProductIdPath,
    request: Request,
    _key: RecommendationsReader,
    narrowed: CatalogueParams,
    limit: Annotated[int, _limit(100)] = 10,
) -> Response:
    """Products bought together with this one, each with its reason, and the model version;
    popular goods for a product nothing was bought with yet. With a catalogue filter, those that
    match topped up with popular goods that match."""
    path = _product_path("/products/{product_id}/similar", product_id)
    params = {"limit": limit, **narrowed}
    return await _from_recommendation(request, "similar", path, params)


@router.get(
    "/v1/products/trending",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, *UPSTREAM),
)
async def get_trending(
    request: Request,
    _key: RecommendationsReader,
    country: Annotated[
        CountryCode | None, Query(description="Trending in this country (ISO 3166-1)")
    ] = None,
    segment: Annotated[
        SegmentName | None,
        Query(description="Popular among this segment's members (not with a country)"),
    ] = None,
    limit: Annotated[int, _limit(100)] = 10,
) -> Response:
    """Goods by purchases decayed with their age, for everyone, in one country or among one
    segment's members (one of them at most), each with its reason ("trending in GB")."""
    given = {"country": country, "segment": segment}
    params = {"limit": limit, **{k: v for k, v in given.items() if v is not None}}
    return await _from_recommendation(request, "trending", "/products/trending", params)


@router.get(
    "/v1/products/{product_id}/also-bought",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_also_bought(
    product_id: ProductIdPath,
    request: Request,
    _key: RecommendationsReader,
    limit: Annotated[int, _limit(100)] = 10,
) -> Response:
    """The product's statistics and the products its buyers also bought, with their co-buyers
    and cosine similarity."""
    path = _product_path("/products/{product_id}/also-bought", product_id)
    return await _from_recommendation(request, "also_bought", path, {"limit": limit})


@router.get(
    "/v1/recommendations/model",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_model(request: Request, _key: RecommendationsReader) -> Response:
    """The model version served: its training time, parameters and figures."""
    return await _from_recommendation(request, "model", "/model")


@router.post(
    "/v1/recommendations/model/retrain",
    response_model=dict[str, Any],
    status_code=202,
    responses=errors(*GUARDED, *UPSTREAM),
)
async def post_retrain(request: Request, _key: RecommendationsTrainer) -> Response:
    """Ask for a new model version now: trained in the background and swapped in with every
    customer's picks; follow the request to see the version that answered it."""
    return await passed_on(request, "recommendation", "retrain", "/model/retrain", method="POST")


@router.get(
    "/v1/recommendations/model/retrain/{request_id}",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_retrain(
    request_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    request: Request,
    _key: RecommendationsTrainer,
) -> Response:
    """A retrain request: pending, or answered by the version it names."""
    return await _from_recommendation(request, "retrain", f"/model/retrain/{request_id}")
