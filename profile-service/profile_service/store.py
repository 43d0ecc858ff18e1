"""All SQL of the profile service. The caller owns the transaction."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from crm_shared.runtime.db import columns
from profile_service.projection import (
    CONTACT_FIELDS,
    CustomerRecord,
    LapseCandidate,
    Membership,
    PurchaseDelta,
)


async def lock_customers(
    conn: asyncpg.Connection, ids: Collection[str]
) -> dict[str, CustomerRecord]:
    """The stored records of these customers, locked until the batch commits."""
    rows = await conn.fetch(
        "SELECT * FROM customers WHERE customer_id = ANY($1::text[]) FOR UPDATE", list(ids)
    )
    return {row["customer_id"]: _record(row) for row in rows}


def _record(row: Mapping[str, Any]) -> CustomerRecord:
    return CustomerRecord(
        customer_id=row["customer_id"],
        contact={name: row[name] for name in CONTACT_FIELDS if row[name] is not None},
        attributes=row["attributes"],
        identifiers=row["identifiers"],
        field_times=row["field_times"],
        registered_at=row["registered_at"],
        updated_at=row["updated_at"],
    )


async def save_customers(conn: asyncpg.Connection, records: Collection[CustomerRecord]) -> None:
    """Write the records (one per customer) and their identifiers, one statement each."""
    if not records:
        return
    await conn.execute(
        """
        INSERT INTO customers (customer_id, name, email, phone, country, attributes, identifiers,
                               field_times, registered_at, updated_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::jsonb[], $7::jsonb[], $8::jsonb[], $9::timestamptz[],
                             $10::timestamptz[])
        ON CONFLICT (customer_id) DO UPDATE SET
            name = EXCLUDED.name, email = EXCLUDED.email, phone = EXCLUDED.phone,
            country = EXCLUDED.country, attributes = EXCLUDED.attributes,
            identifiers = EXCLUDED.identifiers, field_times = EXCLUDED.field_times,
            registered_at = EXCLUDED.registered_at, updated_at = EXCLUDED.updated_at
        """,
        [r.customer_id for r in records],
        *([r.contact.get(name) for r in records] for name in CONTACT_FIELDS),
        [dict(r.attributes) for r in records],
        [dict(r.identifiers) for r in records],
        [dict(r.field_times) for r in records],
        [r.registered_at for r in records],
        [r.updated_at for r in records],
    )
    # An identifier claimed by two records of the batch goes to the later one, as row-by-row
    # upserts in this order would give (one statement may not update a row twice).
    owners = {
        (system, value): r.customer_id for r in records for system, value in r.identifiers.items()
    }
    if owners:
        await conn.execute(
            """
            INSERT INTO customer_identifiers (system, value, customer_id)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
            ON CONFLICT (system, value) DO UPDATE SET customer_id = EXCLUDED.customer_id
            """,
            [system for system, _ in owners],
            [value for _, value in owners],
            list(owners.values()),
        )


async def add_purchases(conn: asyncpg.Connection, deltas: Mapping[str, PurchaseDelta]) -> None:
    if not deltas:
        return
    ids = list(deltas)
    values = [deltas[i] for i in ids]
    await conn.execute(
        """
        INSERT INTO purchase_totals AS t (customer_id, orders, refunds, items, gross_revenue,
                                          refunded, first_purchase_at, last_purchase_at,
                                          orders_partition)
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                             $5::text[]::numeric[], $6::text[]::numeric[], $7::timestamptz[],
                             $8::timestamptz[], $9::int[])
        ON CONFLICT (customer_id) DO UPDATE SET
            orders_partition = coalesce(EXCLUDED.orders_partition, t.orders_partition),
            orders = t.orders + EXCLUDED.orders,
            refunds = t.refunds + EXCLUDED.refunds,
            items = t.items + EXCLUDED.items,
            gross_revenue = t.gross_revenue + EXCLUDED.gross_revenue,
            refunded = t.refunded + EXCLUDED.refunded,
            first_purchase_at = LEAST(t.first_purchase_at, EXCLUDED.first_purchase_at),
            last_purchase_at = GREATEST(t.last_purchase_at, EXCLUDED.last_purchase_at)
        """,
        ids,
        *columns(values, "orders", "refunds", "items"),
        # Money as text: PostgreSQL parses it for less than asyncpg's binary numeric encoding.
        [str(d.gross_revenue) for d in values],
        [str(d.refunded) for d in values],
        *columns(values, "first_purchase_at", "last_purchase_at", "orders_partition"),
    )


async def customer_view(conn: asyncpg.Connection, customer_id: str) -> dict[str, Any] | None:
    """The customer record with purchase totals, or None when the customer is unknown."""
    row = await conn.fetchrow(
        """
        SELECT $1::text AS customer_id, c.name, c.email, c.phone, c.country, c.attributes,
               c.identifiers, c.registered_at, c.updated_at,
               p.orders, p.refunds, p.items, p.gross_revenue, p.refunded,
               p.first_purchase_at, p.last_purchase_at,
               (c.customer_id IS NOT NULL) AS registered, (p.customer_id IS NOT NULL) AS purchased
        FROM (SELECT $1::text AS id) AS wanted
        LEFT JOIN customers c ON c.customer_id = wanted.id
        LEFT JOIN purchase_totals p ON p.customer_id = wanted.id
        """,
        customer_id,
    )
    if row is None or not (row["registered"] or row["purchased"]):
        return None
    return dict(row)


async def find_by_identifier(conn: asyncpg.Connection, system: str, value: str) -> str | None:
    found: str | None = await conn.fetchval(
        "SELECT customer_id FROM customer_identifiers WHERE system = $1 AND value = $2",
        system,
        value,
    )
    return found


def _membership(row: Mapping[str, Any], segment: str) -> Membership | None:
    if row["version"] is None:
        return None
    return Membership(row["customer_id"], segment, row["member"], row["version"], row["changed_at"])


async def advance_clocks(
    conn: asyncpg.Connection, clocks: Mapping[tuple[str, int], datetime]
) -> None:
    """Move each partition's clock forward to its newest tick (never back)."""
    if clocks:
        await conn.execute(
            """
            INSERT INTO partition_clocks AS c (topic, partition, now)
            SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[])
            ON CONFLICT (topic, partition) DO UPDATE SET now = GREATEST(c.now, EXCLUDED.now)
            """,
            [topic for topic, _ in clocks],
            [partition for _, partition in clocks],
            list(clocks.values()),
        )


async def lapse_candidates(
    conn: asyncpg.Connection, segment: str, partition: int, cutoff: datetime
) -> list[LapseCandidate]:
    """Customers of a crm.orders partition who last bought at or before `cutoff` and are not
    members of the segment."""
    rows = await conn.fetch(
        """
        SELECT t.customer_id, t.last_purchase_at, m.member, m.version, m.changed_at
        FROM purchase_totals t
        LEFT JOIN segment_memberships m ON m.customer_id = t.customer_id AND m.segment = $1
        WHERE t.orders_partition = $2 AND t.last_purchase_at <= $3 AND m.member IS NOT TRUE
        ORDER BY t.customer_id
        """,
        segment,
        partition,
        cutoff,
    )
    return [
        LapseCandidate(row["customer_id"], row["last_purchase_at"], _membership(row, segment))
        for row in rows
    ]


async def lapse_states(
    conn: asyncpg.Connection, segment: str, customer_ids: Collection[str]
) -> dict[str, tuple[datetime | None, Membership | None]]:
    """(last purchase, membership) of the customers who have purchase totals."""
    rows = await conn.fetch(
        """
        SELECT t.customer_id, t.last_purchase_at, m.member, m.version, m.changed_at
        FROM purchase_totals t
        LEFT JOIN segment_memberships m ON m.customer_id = t.customer_id AND m.segment = $1
        WHERE t.customer_id = ANY($2::text[])
        """,
        segment,
        list(customer_ids),
    )
    return {
        row["customer_id"]: (row["last_purchase_at"], _membership(row, segment)) for row in rows
    }


async def partition_clocks(
    conn: asyncpg.Connection, topic: str, partitions: Collection[int]
) -> dict[int, datetime]:
    """The clock (newest tick's time) of each of the topic's partitions that has ticked."""
    rows = await conn.fetch(
        "SELECT partition, now FROM partition_clocks"
        " WHERE topic = $1 AND partition = ANY($2::int[])",
        topic,
        list(partitions),
    )
    return {row["partition"]: row["now"] for row in rows}


async def save_memberships(conn: asyncpg.Connection, changes: Collection[Membership]) -> None:
    """Write membership changes; a stored higher version is never overwritten."""
    if changes:
        await conn.execute(
            """
            INSERT INTO segment_memberships AS m (customer_id, segment, member, version, changed_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::int[], $5::timestamptz[])
            ON CONFLICT (customer_id, segment) DO UPDATE SET
                member = EXCLUDED.member, version = EXCLUDED.version,
                changed_at = EXCLUDED.changed_at
            WHERE m.version < EXCLUDED.version
            """,
            *columns(changes, "customer_id", "segment", "member", "version", "changed_at"),
        )


async def segments_of(conn: asyncpg.Connection, customer_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT segment FROM segment_memberships WHERE customer_id = $1 AND member ORDER BY 1",
        customer_id,
    )
    return [row["segment"] for row in rows]
