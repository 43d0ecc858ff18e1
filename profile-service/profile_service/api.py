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
from profile_service import identity, store
from profile_service.config import MIGRATIONS, ProfileSettings
from profile_service.projection import CONTACT_FIELDS

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


class FieldProvenance(BaseModel):
    """Where a field's value came from: the system that set it and the event time."""

    source: str | None
    set_at: datetime


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
    merged_ids: list[str] = []
    """Records merged into this person (their histories count here); `customer_id` names the
    person, so asking for a merged record answers with the person it belongs to."""
    provenance: dict[str, FieldProvenance] = {}
    """Per field ('email', 'attributes.tier', 'identifiers.pos'): which source set the value
    shown, and when (docs/decisions.md, attribute provenance)."""


class MergeHistory(BaseModel):
    customer_id: str
    person_id: str
    """The record naming the person this record belongs to now (itself when merged into none)."""
    members: list[str]
    identified_by: list[str]
    """What makes this record an identified person (merging it away must be asked for)."""
    statements: list[identity.MergeStatement]
    """Every merge and unmerge connecting this record to others, oldest first."""


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
        merged_ids=view.get("merged_ids", []),
        provenance={
            key: FieldProvenance(
                source=(view["field_sources"] or {}).get(key), set_at=datetime.fromisoformat(when)
            )
            for key, when in sorted((view["field_times"] or {}).items())
        },
    )


async def person_view(conn: asyncpg.Connection, customer_id: str) -> dict[str, Any]:
    """The view of the person a record belongs to: its records combined, their purchase totals
    added up (docs/decisions.md, merges)."""
    links = identity.standing_links(await store.merge_statements_around(conn, customer_id))
    root = identity.root_of(links, customer_id)
    members = identity.members_of(links, root)
    records = await store.records_of(conn, members)
    person = identity.combined_record(root, [records[m] for m in members if m in records])
    return {
        **(await store.purchase_totals_of(conn, members)),
        **{name: person.contact.get(name) for name in CONTACT_FIELDS},
        "customer_id": root,
        "registered": bool(records),
        "attributes": dict(person.attributes),
        "identifiers": dict(person.identifiers),
        "registered_at": person.registered_at,
        "updated_at": person.updated_at,
        "merged_ids": members[1:],
        "field_times": person.field_times,
        "field_sources": person.field_sources,
    }


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
            if view is not None and view["in_merges"]:
                view = await person_view(conn, customer_id)
        if view is None:
            raise HTTPException(
                404, f"customer {customer_id!r} is not known to the profile service"
            )
        return model_response(_profile(view))

    @app.get("/customers/{customer_id}/merges", response_model=MergeHistory)
    async def merge_history(customer_id: CustomerIdPath, conn: Conn) -> MergeHistory:
        """Who this record is one person with, what identifies it, and the merges and unmerges
        that decided it."""
        statements = await store.merge_statements_around(conn, customer_id)
        records = await store.records_of(conn, [customer_id])
        if not statements and customer_id not in records:
            raise HTTPException(
                404, f"customer {customer_id!r} is not known to the profile service"
            )
        links = identity.standing_links(statements)
        root = identity.root_of(links, customer_id)
        record = records.get(customer_id)
        return MergeHistory(
            customer_id=customer_id,
            person_id=root,
            members=identity.members_of(links, root),
            identified_by=identity.identified_by(record) if record else [],
            statements=statements,
        )

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

    # imported here: they import this module's types
    from profile_service import analytics_api, opinions_api

    # Their routes as the app's own: this FastAPI wraps an included router in one opaque route.
    app.router.routes.extend(analytics_api.router.routes)
    app.router.routes.extend(opinions_api.router.routes)
    from profile_service import lifetime_api

    app.router.routes.extend(lifetime_api.router.routes)
    from profile_service import segments_api

    app.router.routes.extend(segments_api.router.routes)
    return app


if __name__ == "__main__":
    serve(create_app, ProfileSettings(), "profile-api")
