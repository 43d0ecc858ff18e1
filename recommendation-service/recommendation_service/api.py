"""Recommendation read API: popular products, "also bought", and per-customer recommendations.

python -m recommendation_service.api
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from pydantic import BaseModel

from crm_shared.contracts.events import CustomerId, ProductId
from crm_shared.runtime.http import (
    connection,
    create_api,
    database_lifespan,
    model_response,
    pool_of,
    serve,
)
from recommendation_service import projection, store
from recommendation_service.config import MIGRATIONS, RecommendationSettings
from recommendation_service.projection import Strategy

Conn = Annotated[asyncpg.Connection, Depends(connection)]
Limit = Annotated[int, Query(ge=1, le=100, description="How many products to return")]


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


class RecommendedProduct(BaseModel):
    product_id: str
    description: str | None
    score: float
    co_buyers: int
    viewed: bool


class CustomerRecommendations(BaseModel):
    customer_id: str
    strategy: Strategy
    recommendations: list[RecommendedProduct]


def _stats(row: dict[str, Any]) -> ProductStats:
    return ProductStats.model_validate(row)


def create_app(settings: RecommendationSettings | None = None) -> FastAPI:
    settings = settings or RecommendationSettings()
    app = create_api(
        "recommendation",
        "Recommendation service",
        database_lifespan(settings, MIGRATIONS),
        "Personalised product recommendations from orders and product views: "
        '"customers who bought X also bought Y".',
        service_token=settings.platform.service_token,
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

    @app.get("/customers/{customer_id}/recommendations", response_model=CustomerRecommendations)
    async def recommendations(
        customer_id: CustomerId, request: Request, limit: Limit = 10
    ) -> Response:
        """Products to offer this customer; the popular ones when their purchases say nothing.
        On the customer 360's path: the pool is taken in the handler and the answer serialised
        once (`pool_of`, `model_response`)."""
        async with pool_of(request).acquire() as conn:
            personal = await store.recommended_for(conn, customer_id, limit, projection.Ranking())
            popular = (
                []
                if personal
                else await store.popular_products(conn, limit, not_bought_by=customer_id)
            )
        if personal:
            return model_response(
                CustomerRecommendations(
                    customer_id=customer_id,
                    strategy="co-purchase",
                    recommendations=[RecommendedProduct.model_validate(row) for row in personal],
                )
            )
        return model_response(
            CustomerRecommendations(
                customer_id=customer_id,
                strategy="popular",
                recommendations=[
                    RecommendedProduct(
                        product_id=row["product_id"],
                        description=row["description"],
                        score=float(row["buyers"]),
                        co_buyers=0,
                        viewed=False,
                    )
                    for row in popular
                ],
            )
        )

    return app


if __name__ == "__main__":
    serve(create_app, RecommendationSettings(), "recommendation-api")
