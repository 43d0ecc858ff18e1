"""Recommendation read API: popular and trending products, "also bought", similar products and
per-customer recommendations (those two narrowed by the catalogue on request).

python -m recommendation_service.api
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter

from crm_shared.contracts.events import (
    MAX_UNIT_PRICE,
    CategoryName,
    ConsentState,
    CountryCode,
    ProductId,
    SegmentName,
)
from crm_shared.runtime.http import (
    add_customer_read,
    connection,
    create_api,
    database_lifespan,
    error_response,
    path_and_query,
    pool_of,
    serve,
)
from recommendation_service import serving, store, trending
from recommendation_service.catalogue import CatalogueFilter, InvalidFilter, topped_up
from recommendation_service.config import MIGRATIONS, RecommendationSettings
from recommendation_service.consent import personalisation_allowed
from recommendation_service.projection import Strategy
from recommendation_service.published import popular_document

Conn = Annotated[asyncpg.Connection, Depends(connection)]
JSON = "application/json"
Limit = Annotated[int, Query(ge=1, le=100, description="How many products to return")]


class CatalogueQuery(BaseModel):
    """A request's catalogue filter; any condition leaves out products the catalogue does not
    know."""

    category: CategoryName | None = Field(None, description="Only this category")
    min_price: Decimal | None = Field(
        None, ge=0, le=MAX_UNIT_PRICE, decimal_places=4, description="Lowest price, in `currency`"
    )
    max_price: Decimal | None = Field(
        None, ge=0, le=MAX_UNIT_PRICE, decimal_places=4, description="Highest price, in `currency`"
    )
    currency: str | None = Field(
        None, pattern=r"^[A-Z]{3}$", description="Only goods priced in it (GBP with a price)"
    )
    available: bool | None = Field(
        None, description="Only goods in stock (true) or out of stock (false)"
    )

    def wanted(self) -> CatalogueFilter:
        """The filter; a range no price fits is an InvalidFilter (a ValueError), which the app
        answers with a 422 and its reason (`create_app`)."""
        return CatalogueFilter(
            self.category, self.min_price, self.max_price, self.currency, self.available
        )


class PicksQuery(CatalogueQuery):
    """A customer's top picks: how many, and the catalogue filter."""

    limit: int = Field(10, ge=1, le=serving.PICKS_KEPT, description="How many products to return")


async def catalogue_filter(query: Annotated[CatalogueQuery, Query()]) -> CatalogueFilter:
    """The catalogue filter of a request. Async though it waits for nothing: FastAPI runs a
    plain function dependency in a worker thread, a hand-off that cost about a tenth of a top-10
    request's CPU."""
    return query.wanted()


Filter = Annotated[CatalogueFilter, Depends(catalogue_filter)]
PICKS_QUERY = TypeAdapter(PicksQuery)


class ProductStats(BaseModel):
    product_id: str
    description: str | None
    orders: int
    quantity: int
    buyers: int
    views: int


class PopularProducts(BaseModel):
    products: list[ProductStats]


class CoPurchased(BaseModel):
    product_id: str
    description: str | None
    co_buyers: int
    similarity: float
    """Cosine of the two products' sets of buyers: co-buyers / sqrt(buyers x other's buyers)."""


class AlsoBought(BaseModel):
    product: ProductStats
    also_bought: list[CoPurchased]


class PickReason(BaseModel):
    kind: serving.ReasonKind
    product_id: str | None = Field(
        description="bought-together: the product it goes with; bought-after: the product it "
        "often follows"
    )
    text: str


class RecommendedProduct(BaseModel):
    product_id: str
    description: str | None
    score: float
    reason: PickReason


class ModelStamp(BaseModel):
    """The model version an answer comes from; null before the first training."""

    version: int | None
    trained_at: datetime | None


class CustomerRecommendations(BaseModel):
    customer_id: str
    strategy: Strategy
    model: ModelStamp
    recommendations: list[RecommendedProduct]


class SimilarProducts(BaseModel):
    product_id: str
    strategy: Literal["bought-together", "popular"]
    model: ModelStamp
    similar: list[RecommendedProduct]


class TrendingReason(BaseModel):
    kind: Literal["trending"]
    product_id: None
    text: str = Field(description='"trending", "trending in GB", "popular in your segment"')


class TrendingProduct(BaseModel):
    product_id: str
    description: str | None
    score: float = Field(
        description="Purchases less refunds, each decayed by its age as of `as_of`; above zero"
    )
    purchases: int
    last_bought_at: datetime
    reason: TrendingReason


class TrendingProducts(BaseModel):
    country: str | None
    segment: str | None
    half_life_days: float
    as_of: datetime | None = Field(description="The newest purchase among them (event time)")
    products: list[TrendingProduct]


class ModelVersion(BaseModel):
    version: int
    trained_at: datetime
    data_as_of: datetime = Field(description="Just after the newest purchase it was trained on")
    parameters: dict[str, Any]
    metrics: dict[str, Any]


class RetrainRequest(BaseModel):
    request_id: int
    requested_at: datetime
    version: int | None = Field(None, description="The version that answered it, once swapped in")
    answered_at: datetime | None = None


def _stats(row: dict[str, Any]) -> ProductStats:
    return ProductStats.model_validate(row)


def _stored_body(customer_id: str, found: dict[str, Any]) -> str:
    """The answer around the picks' JSON as PostgreSQL gave it: nothing is parsed again."""
    strategy = "personal" if found["personalised"] else "popular"
    return (
        f'{{"customer_id": {json.dumps(customer_id)}, "strategy": "{strategy}", '
        f'"model": {{"version": {found["version"]}, '
        f'"trained_at": "{found["trained_at"].isoformat()}"}}, '
        f'"recommendations": {found["picks"]}}}'
    )


def _model(version: int | None, trained_at: datetime | None) -> dict[str, Any]:
    """The model an answer was served under: `store.served_model`, or the served version a
    `store.customer_picks` read brings along."""
    return {"version": version, "trained_at": trained_at}


def _together_pick(row: dict[str, Any], product_id: str) -> dict[str, Any]:
    return {
        "product_id": row["product_id"],
        "description": row["description"],
        "score": row["similarity"],
        "reason": {
            "kind": "bought-together",
            "product_id": product_id,
            "text": f"bought together with {product_id} by {row['co_buyers']} customers",
        },
    }


def _narrowed(
    picks: Sequence[Mapping[str, Any]],
    popular: Sequence[Mapping[str, Any]],
    limit: int,
    excluded: Sequence[str] = (),
) -> list[Mapping[str, Any]]:
    """Filtered picks topped up with the popular goods that match, each with its reason."""
    return topped_up(picks, [popular_document(row) for row in popular], limit, excluded)


def create_app(settings: RecommendationSettings | None = None) -> FastAPI:
    settings = settings or RecommendationSettings()
    app = create_api(
        "recommendation",
        "Recommendation service",
        database_lifespan(settings, MIGRATIONS),
        "Personalised product recommendations from orders and product views: "
        '"customers who bought X also bought Y".',
        service_token=settings.platform.service_token,
        check_responses=settings.platform.check_responses,
    )

    @app.exception_handler(InvalidFilter)
    async def invalid_filter(request: Request, problem: InvalidFilter) -> JSONResponse:
        """A catalogue filter nothing can match, from whichever route read it: a 422 that says
        why, as the request's own bad values are."""
        return error_response(request, 422, str(problem))

    def _allowed(state: str | None) -> bool:
        """Whether a customer's consent (None: never decided) allows personal picks."""
        return personalisation_allowed(
            ConsentState(state) if state is not None else None, settings.personalisation_default
        )

    @app.get("/products/popular", response_model=PopularProducts)
    async def popular(conn: Conn, limit: Limit = 10) -> PopularProducts:
        """The most bought goods (never postage, fees or vouchers): by distinct buyers, then
        quantity sold."""
        rows = await store.popular_products(conn, limit)
        return PopularProducts(products=[_stats(row) for row in rows])

    @app.get("/products/{product_id}/also-bought", response_model=AlsoBought)
    async def also_bought(product_id: ProductId, conn: Conn, limit: Limit = 10) -> AlsoBought:
        """Customers who bought this product also bought these, most similar first (cosine of
        their buyers; a refunded product's buyer no longer counts; precomputed: a purchase
        shows here within about two seconds)."""
        found = await store.product(conn, product_id)
        if found is None:
            raise HTTPException(
                404, f"product {product_id!r} is not known to the recommendation service"
            )
        rows = await store.also_bought(conn, product_id, limit)
        return AlsoBought(
            product=_stats(found), also_bought=[CoPurchased.model_validate(r) for r in rows]
        )

    async def recommendations(request: Request) -> Response:
        """The customer's picks, precomputed by the served model (the blend) and kept current
        after their own purchases and consents, each with its reason; popular goods they have not
        bought when the model has nothing for them, and popular goods alone (strategy `popular`)
        when they do not allow personalisation. On the customer 360's path: one row read,
        served as PostgreSQL's JSON text. With a catalogue filter, the picks that match, topped
        up with popular goods that match."""
        # Validated here in one go, the route a DirectRoute: FastAPI solving eight parameters
        # one by one cost about as much as the rest of the request (docs/performance.md).
        customer_id, query = path_and_query(request, PICKS_QUERY)
        wanted, limit = query.wanted(), query.limit
        if wanted.active:
            return await filtered_recommendations(customer_id, request, wanted, limit)
        async with pool_of(request).acquire() as conn:
            found = await store.customer_picks(conn, customer_id, limit)
            allowed = _allowed(found["consent"])
            # personal picks refused since they were computed are not served: the job replaces them
            stored = found["picks"] is not None and (allowed or not found["personalised"])
            if not stored:
                popular = await store.popular_products(
                    conn, limit, not_bought_by=customer_id if allowed else None
                )
        if stored:
            return Response(_stored_body(customer_id, found), media_type=JSON)
        body = {
            "customer_id": customer_id,
            "strategy": "popular",
            "model": _model(found["served_version"], found["served_trained_at"]),
            "recommendations": [popular_document(row) for row in popular],
        }
        return Response(json.dumps(body, default=datetime.isoformat), media_type=JSON)

    add_customer_read(
        app.router,
        "/customers/{customer_id}/recommendations",
        recommendations,
        CustomerRecommendations,
        PICKS_QUERY,
    )

    async def filtered_recommendations(
        customer_id: str, request: Request, wanted: CatalogueFilter, limit: int
    ) -> Response:
        async with pool_of(request).acquire() as conn:
            found = await store.customer_picks(conn, customer_id, 1)
            allowed = _allowed(found["consent"])
            personal = found["picks"] is not None and (allowed or not found["personalised"])
            picks = await store.filtered_picks(conn, customer_id, wanted, limit) if personal else []
            popular = await store.popular_matching(
                conn, wanted, limit + len(picks), not_bought_by=customer_id if allowed else None
            )
        personalised = bool(picks) and found["personalised"]
        body = {
            "customer_id": customer_id,
            "strategy": "personal" if personalised else "popular",
            "model": _model(found["served_version"], found["served_trained_at"]),
            "recommendations": _narrowed(picks, popular, limit),
        }
        return Response(json.dumps(body, default=datetime.isoformat), media_type=JSON)

    @app.get("/products/trending", response_model=TrendingProducts)
    async def trending_products(
        conn: Conn,
        country: Annotated[
            CountryCode | None, Query(description="Trending in this country (ISO 3166-1)")
        ] = None,
        segment: Annotated[
            SegmentName | None, Query(description="Popular among this segment's members")
        ] = None,
        limit: Limit = 10,
    ) -> TrendingProducts:
        """Goods by purchases decayed with their age (half-life in event time), for everyone,
        in one country or among one segment's members; never postage, fees or vouchers, nor
        what the catalogue says is out of stock."""
        try:
            scope = trending.scope_of(country, segment)
        except ValueError as problem:
            raise HTTPException(422, str(problem)) from None
        rows = await store.trending(conn, scope, limit)
        as_of = max((row["last_bought_at"] for row in rows), default=None)
        half_life = settings.trending_half_life_days
        reason = {
            "kind": "trending",
            "product_id": None,
            "text": trending.reason_text(country, segment),
        }
        return TrendingProducts(
            country=country,
            segment=segment,
            half_life_days=half_life,
            as_of=as_of,
            products=[
                TrendingProduct.model_validate(
                    {
                        **row,
                        "score": trending.decayed_score(row["score"], as_of, half_life),
                        "reason": reason,
                    }
                )
                for row in rows
                if as_of is not None
            ],
        )

    @app.get(
        "/products/{product_id}/similar",
        response_model=SimilarProducts,
        responses={404: {"description": "The product was never bought nor viewed"}},
    )
    async def similar(
        product_id: ProductId, conn: Conn, wanted: Filter, limit: Limit = 10
    ) -> Response:
        """Products bought together with this one, most similar first (cosine of their buyers,
        kept current by the neighbour job: a purchase shows here within about two seconds);
        popular goods when none is (a new product), each with its reason. With a catalogue
        filter, those that match, topped up with popular goods that match."""
        if await store.product(conn, product_id) is None:
            raise HTTPException(
                404, f"product {product_id!r} is not known to the recommendation service"
            )
        if wanted.active:
            matching = await store.also_bought_matching(conn, product_id, wanted, limit)
            popular = await store.popular_matching(conn, wanted, limit + len(matching) + 1)
            picks = [_together_pick(row, product_id) for row in matching]
            narrowed: dict[str, Any] = {
                "product_id": product_id,
                "strategy": "bought-together" if matching else "popular",
                "model": _model(*await store.served_model(conn)),
                "similar": _narrowed(picks, popular, limit, excluded=[product_id]),
            }
            return Response(json.dumps(narrowed, default=datetime.isoformat), media_type=JSON)
        together = await store.also_bought(conn, product_id, limit)
        popular = [] if together else await store.popular_products(conn, limit + 1)
        body = {
            "product_id": product_id,
            "strategy": "bought-together" if together else "popular",
            "model": _model(*await store.served_model(conn)),
            "similar": [_together_pick(row, product_id) for row in together]
            or [popular_document(row) for row in popular if row["product_id"] != product_id][
                :limit
            ],
        }
        return Response(json.dumps(body, default=datetime.isoformat), media_type=JSON)

    @app.get(
        "/model",
        response_model=ModelVersion,
        responses={404: {"description": "No model has been trained yet"}},
    )
    async def model(conn: Conn) -> ModelVersion:
        """The model version served: when it was trained, on what, with which parameters."""
        found = await store.current_model(conn)
        if found is None:
            raise HTTPException(404, "no model has been trained yet")
        return ModelVersion.model_validate(found)

    @app.post("/model/retrain", response_model=RetrainRequest, status_code=202)
    async def retrain(conn: Conn) -> RetrainRequest:
        """Ask for a new version now: the worker's trainer trains it in the background and swaps
        it in with every customer's picks; follow the request to see which version answered."""
        return RetrainRequest.model_validate(await store.request_retrain(conn))

    @app.get(
        "/model/retrain/{request_id}",
        response_model=RetrainRequest,
        responses={404: {"description": "No such request"}},
    )
    async def retrain_status(request_id: int, conn: Conn) -> RetrainRequest:
        """A retrain request: pending, or answered by the version it names."""
        found = await store.retrain_request(conn, request_id)
        if found is None:
            raise HTTPException(404, f"no retrain request {request_id}")
        return RetrainRequest.model_validate(found)

    return app


if __name__ == "__main__":
    serve(create_app, RecommendationSettings(), "recommendation-api")
