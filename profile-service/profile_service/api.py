"""Profile read API: the customer-centred memory, one customer at a time.

python -m profile_service.api
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from pydantic import BaseModel

from crm_shared.runtime.http import (
    connection,
    create_api,
    database_lifespan,
    model_response,
    pool_of,
    serve,
)
from profile_service import store
from profile_service.config import MIGRATIONS, ProfileSettings

Conn = Annotated[asyncpg.Connection, Depends(connection)]
CustomerIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]


class PurchaseTotals(BaseModel):
    orders: int
    refunds: int
    items: int
    gross_revenue: Decimal
    refunded: Decimal
    net_revenue: Decimal
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None


class CustomerProfile(BaseModel):
    customer_id: str
    registered: bool
    name: str | None
    email: str | None
    phone: str | None
    country: str | None
    attributes: dict[str, str]
    identifiers: dict[str, str]
    registered_at: datetime | None
    updated_at: datetime | None
    purchases: PurchaseTotals


class IdentifierMatch(BaseModel):
    system: str
    value: str
    customer_id: str


def _profile(view: dict[str, Any]) -> CustomerProfile:
    gross = view["gross_revenue"] or Decimal(0)
    refunded = view["refunded"] or Decimal(0)
    return CustomerProfile(
        customer_id=view["customer_id"],
        registered=view["registered"],
        name=view["name"],
        email=view["email"],
        phone=view["phone"],
        country=view["country"],
        attributes=view["attributes"] or {},
        identifiers=view["identifiers"] or {},
        registered_at=view["registered_at"],
        updated_at=view["updated_at"],
        purchases=PurchaseTotals(
            orders=view["orders"] or 0,
            refunds=view["refunds"] or 0,
            items=view["items"] or 0,
            gross_revenue=gross,
            refunded=refunded,
            net_revenue=gross - refunded,
            first_purchase_at=view["first_purchase_at"],
            last_purchase_at=view["last_purchase_at"],
        ),
    )


def create_app(settings: ProfileSettings | None = None) -> FastAPI:
    settings = settings or ProfileSettings()
    app = create_api(
        "profile",
        "Profile service",
        database_lifespan(settings, MIGRATIONS),
        "The customer record, identifiers and purchase totals, folded from customer events.",
        service_token=settings.platform.service_token,
    )

    @app.get("/customers/{customer_id}", response_model=CustomerProfile)
    async def get_customer(customer_id: CustomerIdPath, request: Request) -> Response:
        """The customer's record: contact fields, attributes, identifiers and purchase totals."""
        async with pool_of(request).acquire() as conn:
            view = await store.customer_view(conn, customer_id)
        if view is None:
            raise HTTPException(
                404, f"customer {customer_id!r} is not known to the profile service"
            )
        return model_response(_profile(view))

    @app.get("/identifiers/{system}/{value}", response_model=IdentifierMatch)
    async def find_customer(
        system: Annotated[str, Path(min_length=1, max_length=80)],
        value: Annotated[str, Path(min_length=1, max_length=320)],
        conn: Conn,
    ) -> IdentifierMatch:
        """Which customer another system knows by this id (unified identity)."""
        customer_id = await store.find_by_identifier(conn, system, value)
        if customer_id is None:
            raise HTTPException(404, f"no customer has {system} id {value!r}")
        return IdentifierMatch(system=system, value=value, customer_id=customer_id)

    from profile_service import analytics_api  # imported here: it imports this module's types

    # Its routes as the app's own: this FastAPI wraps an included router in one opaque route.
    app.router.routes.extend(analytics_api.router.routes)
    from profile_service import segments_api

    app.router.routes.extend(segments_api.router.routes)
    return app


if __name__ == "__main__":
    serve(create_app, ProfileSettings(), "profile-api")
