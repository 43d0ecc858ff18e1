"""Profile read API: the customer-centred memory, one customer at a time.

python -m profile_service.api
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from pydantic import BaseModel

from crm_shared.runtime.http import (
    add_customer_read,
    connection,
    create_api,
    database_lifespan,
    model_response,
    path_customer_id,
    pool_of,
    serve,
)
from profile_service import commerce, identity, store
from profile_service.config import MIGRATIONS, ProfileSettings
from profile_service.projection import CONTACT_FIELDS, CustomerRecord

Conn = Annotated[asyncpg.Connection, Depends(connection)]
CustomerIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]


class PurchaseTotals(BaseModel):
    """What the person bought, by the rules of the purchase summary: counts add up across
    currencies, money only within one (`by_currency`); cancelled orders and the refunds of
    cancelled orders do not count."""

    orders: int
    refunds: int
    items: int
    cancelled_orders: int
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    by_currency: list[commerce.CurrencySummary]


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
    aliases: list[str] = []
    """Records of events that named this person by an identifier it holds (a subject such as
    `email:ann@example.com`): their histories count here too."""
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


def _profile(view: dict[str, Any], purchases: PurchaseTotals) -> CustomerProfile:
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
        purchases=purchases,
        merged_ids=view.get("merged_ids", []),
        aliases=view.get("aliases", []),
        provenance={
            key: FieldProvenance(
                source=(view["field_sources"] or {}).get(key), set_at=datetime.fromisoformat(when)
            )
            for key, when in sorted((view["field_times"] or {}).items())
        },
    )


@dataclass(frozen=True)
class Person:
    """The records that are one person: `records` (the person's id first) includes `aliases`."""

    person_id: str
    records: list[str]
    aliases: list[str]


async def find_person(conn: asyncpg.Connection, customer_id: str) -> Person:
    """The person a record belongs to, from the merges around it and the aliases its records
    hold (identity.person_of and person_records, over what concerns this record)."""
    if not await store.in_a_person(conn, customer_id):
        return Person(customer_id, [customer_id], [])
    holders = await store.alias_holders(conn, [customer_id])
    start = holders.get(customer_id, customer_id)
    links = identity.standing_links(await store.merge_statements_around(conn, start))
    root = identity.person_of(customer_id, links, holders)
    merged = identity.members_of(links, root)
    holders |= await store.alias_holders(conn, await store.aliases_claimed_by(conn, merged))
    records = identity.person_records(root, links, holders)
    return Person(root, records, [r for r in records if r in holders])


async def combined_record(conn: asyncpg.Connection, person: Person) -> tuple[CustomerRecord, bool]:
    """One customer record for the person, field by field from its records; and whether any
    of them was registered (has a record at all)."""
    records = await store.records_of(conn, person.records)
    found = [records[r] for r in person.records if r in records]
    return identity.combined_record(person.person_id, found), bool(found)


async def person_view(conn: asyncpg.Connection, customer_id: str) -> dict[str, Any]:
    """The view of the person a record belongs to: its records combined (docs/decisions.md,
    merges and identifier references)."""
    person = await find_person(conn, customer_id)
    combined, registered = await combined_record(conn, person)
    return {
        **{name: combined.contact.get(name) for name in CONTACT_FIELDS},
        "customer_id": person.person_id,
        "registered": registered,
        "attributes": dict(combined.attributes),
        "identifiers": dict(combined.identifiers),
        "registered_at": combined.registered_at,
        "updated_at": combined.updated_at,
        "merged_ids": [r for r in person.records[1:] if r not in person.aliases],
        "aliases": person.aliases,
        "field_times": combined.field_times,
        "field_sources": combined.field_sources,
    }


def purchase_totals(totals: Sequence[commerce.CurrencyTotals], cancelled: int) -> PurchaseTotals:
    """The purchase block, from the same facts as the purchase summary."""
    counts = commerce.counts_across(totals, cancelled)
    return PurchaseTotals(**vars(counts), by_currency=[commerce.summarise(t) for t in totals])


def create_app(settings: ProfileSettings | None = None) -> FastAPI:
    settings = settings or ProfileSettings()
    app = create_api(
        "profile",
        "Profile service",
        database_lifespan(settings, MIGRATIONS),
        "The customer record, identifiers and purchase totals, folded from customer events.",
        service_token=settings.platform.service_token,
        check_responses=settings.platform.check_responses,
    )

    async def get_customer(request: Request) -> Response:
        """The customer's record: contact fields, attributes, identifiers and purchase totals."""
        customer_id = path_customer_id(request)  # a DirectRoute: on the customer 360's path
        async with pool_of(request).acquire() as conn:
            view, totals, cancelled = await store.customer_view_with_purchases(conn, customer_id)
            if view is None:
                raise HTTPException(
                    404, f"customer {customer_id!r} is not known to the profile service"
                )
            if view["in_merges"] or view["aliased"]:  # a person of several records: rare
                view = await person_view(conn, customer_id)
                records = [view["customer_id"], *view["merged_ids"], *view["aliases"]]
                totals, cancelled = await store.purchases_of(conn, records)
        return model_response(_profile(view, purchase_totals(totals, cancelled)))

    add_customer_read(app.router, "/customers/{customer_id}", get_customer, CustomerProfile)

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
