"""All SQL of the profile service. The caller owns the transaction."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import astuple, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from crm_shared.contracts import segment_rules as rules
from crm_shared.contracts.events import Event
from crm_shared.contracts.segment_rules import (
    ATTRIBUTE_PREFIX,
    AllOf,
    AnyOf,
    Bought,
    FieldIn,
    Lifetime,
    LifetimeFigure,
    Measure,
    MeasureBetween,
    NotRule,
    Rfm,
    Rule,
)
from crm_shared.runtime.db import ONE_ID, columns, matching
from crm_shared.runtime.packed import UnnestColumns
from profile_service import analytics, complaints, identity, opinions, segments
from profile_service.catalogue import CategoryRow
from profile_service.commerce import (
    CancellationRow,
    CommerceRows,
    CurrencyTotals,
    LineRow,
    OrderRow,
    RefundRow,
)
from profile_service.lifetime import (
    CurrencyModel,
    FittedVersion,
    ModelInUse,
    Prediction,
    PurchaseHistory,
    PurchaseParameters,
    Scored,
    SpendParameters,
)
from profile_service.projection import (
    CONTACT_FIELDS,
    CustomerRecord,
    LapseCandidate,
    Membership,
    PurchaseDelta,
    identifier_claims,
)
from profile_service.references import IdentifierReference, normalised_identifier


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
        field_sources=row["field_sources"],
    )


async def save_customers(conn: asyncpg.Connection, records: Collection[CustomerRecord]) -> None:
    """Write the records (one per customer) and their identifiers, one statement each."""
    if not records:
        return
    await conn.execute(
        """
        INSERT INTO customers (customer_id, name, email, phone, country, attributes, identifiers,
                               field_times, registered_at, updated_at, field_sources)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::jsonb[], $7::jsonb[], $8::jsonb[], $9::timestamptz[],
                             $10::timestamptz[], $11::jsonb[])
        ON CONFLICT (customer_id) DO UPDATE SET
            name = EXCLUDED.name, email = EXCLUDED.email, phone = EXCLUDED.phone,
            country = EXCLUDED.country, attributes = EXCLUDED.attributes,
            identifiers = EXCLUDED.identifiers, field_times = EXCLUDED.field_times,
            registered_at = EXCLUDED.registered_at, updated_at = EXCLUDED.updated_at,
            field_sources = EXCLUDED.field_sources
        """,
        [r.customer_id for r in records],
        *([r.contact.get(name) for r in records] for name in CONTACT_FIELDS),
        [dict(r.attributes) for r in records],
        [dict(r.identifiers) for r in records],
        [dict(r.field_times) for r in records],
        [r.registered_at for r in records],
        [r.updated_at for r in records],
        [dict(r.field_sources) for r in records],
    )
    # Each record's claims replace its earlier ones: a value it moved away from stops finding it.
    claims = [claim for r in records for claim in identifier_claims(r)]
    await conn.execute(
        "DELETE FROM customer_identifiers WHERE customer_id = ANY($1::text[])",
        [r.customer_id for r in records],
    )
    if claims:
        await conn.execute(
            """
            INSERT INTO customer_identifiers (system, value, customer_id, claimed_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
            """,
            *columns(claims, "system", "value", "customer_id", "claimed_at"),
        )


_TOTALS_ROWS_FIELDS = (
    "orders", "refunds", "items", "gross_revenue", "refunded", "first_purchase_at",
    "last_purchase_at", "orders_partition",
)  # fmt: skip
_TOTALS_ROWS = UnnestColumns.named(
    ("customer_id", *_TOTALS_ROWS_FIELDS),
    orders="bigint",
    refunds="bigint",
    items="bigint",
    gross_revenue="numeric",
    refunded="numeric",
    first_purchase_at="timestamptz",
    last_purchase_at="timestamptz",
    orders_partition="int",
)


async def add_purchases(conn: asyncpg.Connection, deltas: Mapping[str, PurchaseDelta]) -> None:
    if not deltas:
        return
    ids = list(deltas)
    values = [deltas[i] for i in ids]
    await conn.execute(
        f"""
        INSERT INTO purchase_totals AS t ({_TOTALS_ROWS.names}) {_TOTALS_ROWS.select}
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
        *_TOTALS_ROWS.arguments([ids, *columns(values, *_TOTALS_ROWS_FIELDS)]),
    )


_IN_MERGES = "EXISTS (SELECT 1 FROM merge_statements m WHERE m.customer_id = $1 OR m.other_id = $1)"
"""Whether the record $1 was ever merged with another (it may belong to a person of several)."""
_ALIASED = """(
    EXISTS (SELECT 1 FROM identifier_aliases a WHERE a.record_id = $1)
    OR EXISTS (SELECT 1 FROM customer_identifiers i JOIN identifier_aliases a USING (system, value)
               WHERE i.customer_id = $1))"""
"""Whether the record $1 is an alias, or claims an identifier an alias names."""


async def in_a_person(conn: asyncpg.Connection, customer_id: str) -> bool:
    """Whether the record may belong to a person of several records (merges, aliases): if
    not, it is a person of its own, with no more to look up."""
    found: bool = await conn.fetchval(f"SELECT {_IN_MERGES} OR {_ALIASED}", customer_id)
    return found


_CUSTOMER_VIEW = f"""
    SELECT $1::text AS customer_id, c.name, c.email, c.phone, c.country, c.attributes,
           c.identifiers, c.registered_at, c.updated_at, c.field_times, c.field_sources,
           (c.customer_id IS NOT NULL) AS registered,
           (p.customer_id IS NOT NULL) AS purchased,
           {_IN_MERGES} AS in_merges, {_ALIASED} AS aliased
    FROM (SELECT $1::text AS id) AS wanted
    LEFT JOIN customers c ON c.customer_id = wanted.id
    LEFT JOIN purchase_totals p ON p.customer_id = wanted.id
"""
"""The record $1 (NULL fields when it has none), and whether it is known and in a person."""


def _known_view(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The record's columns of a _CUSTOMER_VIEW row, or None when the customer is unknown."""
    if row is None or not (row["registered"] or row["purchased"] or row["in_merges"]):
        return None
    return {name: value for name, value in row.items() if name not in _PURCHASES_COLUMNS}


async def customer_view(conn: asyncpg.Connection, customer_id: str) -> dict[str, Any] | None:
    """The customer record, whether it belongs to a person of several records (merges,
    aliases), or None when the customer is unknown."""
    return _known_view(await conn.fetchrow(_CUSTOMER_VIEW, customer_id))


async def find_by_identifier(conn: asyncpg.Connection, system: str, value: str) -> str | None:
    """The customer whose claim on the identifier (value normalised) is the newest by event
    time."""
    found: str | None = await conn.fetchval(
        """
        SELECT customer_id FROM customer_identifiers WHERE system = $1 AND value = $2
        ORDER BY claimed_at DESC, customer_id LIMIT 1
        """,
        system,
        normalised_identifier(system, value),
    )
    return found


async def save_aliases(
    conn: asyncpg.Connection, aliases: Mapping[str, IdentifierReference]
) -> list[str]:
    """Remember which identifier each alias record (a subject naming one) names; the aliases
    not known before."""
    if not aliases:
        return []
    rows = await conn.fetch(
        """
        INSERT INTO identifier_aliases (record_id, system, value)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
        ON CONFLICT DO NOTHING RETURNING record_id
        """,
        list(aliases),
        [reference.system for reference in aliases.values()],
        [reference.value for reference in aliases.values()],
    )
    return [row["record_id"] for row in rows]


async def alias_holders(
    conn: asyncpg.Connection, aliases: Collection[str] | None = None
) -> dict[str, str]:
    """Alias record -> the customer holding the identifier it names (the newest claim, as
    find_by_identifier; the alias's own claim aside), for these aliases or (None) every one. An
    alias whose identifier nobody holds is left out: it is a person of its own until claimed."""
    query = """
        SELECT a.record_id, h.customer_id
        FROM identifier_aliases a
        CROSS JOIN LATERAL (
            SELECT i.customer_id FROM customer_identifiers i
            WHERE i.system = a.system AND i.value = a.value AND i.customer_id <> a.record_id
            ORDER BY i.claimed_at DESC, i.customer_id LIMIT 1
        ) h
    """
    if aliases is None:
        rows = await conn.fetch(query)
    else:
        among = f"WITH {_WANTED} {query} WHERE a.record_id IN (SELECT id FROM wanted)"
        rows = await conn.fetch(among, list(aliases))
    return {row["record_id"]: row["customer_id"] for row in rows}


async def aliases_claimed_by(conn: asyncpg.Connection, ids: Collection[str]) -> list[str]:
    """The alias records naming an identifier that one of these records claims (whether its
    claim is the newest: alias_holders says)."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT a.record_id FROM customer_identifiers i
        JOIN identifier_aliases a USING (system, value)
        WHERE i.customer_id = ANY($1::text[])
        """,
        list(ids),
    )
    return [row["record_id"] for row in rows]


_WANTED = "wanted AS (SELECT DISTINCT unnest($1::text[]) AS id)"
"""The ids of $1 as a table: joined, many ids are looked up by index (or hashed) instead of each
row being compared with the whole array, as `= ANY($1)` does once PostgreSQL scans the table."""


async def merge_statements_about(
    conn: asyncpg.Connection, ids: Collection[str]
) -> list[identity.MergeStatement]:
    """The merge and unmerge statements about these records (each merged into, or split off
    from, its subject)."""
    rows = await conn.fetch(
        f"WITH {_WANTED} SELECT m.* FROM wanted w JOIN merge_statements m ON m.other_id = w.id"
        " ORDER BY m.at, m.event_id",
        list(ids),
    )
    return [identity.MergeStatement(**dict(row)) for row in rows]


async def batch_persons(
    conn: asyncpg.Connection, ids: Collection[str], claimants: Collection[str]
) -> tuple[dict[str, str], set[str]]:
    """Record -> person for those of these records that belong to a person of several, and
    those of the `claimants` that claim an identifier an alias names: what a batch asks on every
    run, in one statement."""
    rows = await conn.fetch(
        f"""
        WITH {_WANTED}
        SELECT p.record_id, p.person_id FROM wanted w JOIN person_records p ON p.record_id = w.id
        UNION ALL
        SELECT DISTINCT i.customer_id, NULL FROM customer_identifiers i
        JOIN identifier_aliases a USING (system, value) WHERE i.customer_id = ANY($2::text[])
        """,
        list(ids),
        list(claimants),
    )
    grouped = {row[0]: row[1] for row in rows if row[1] is not None}
    return grouped, {row[0] for row in rows if row[1] is None}


async def lock_person_records(conn: asyncpg.Connection) -> None:
    """Hold the record -> person map until the batch commits: folds that change it (replicas
    folding other partitions) take turns, each seeing the other's statements and claims."""
    await conn.execute("LOCK TABLE person_records IN EXCLUSIVE MODE")


_MAY_STAND = """m.merged AND NOT EXISTS (
    SELECT 1 FROM merge_statements n
    WHERE n.other_id = m.other_id AND (n.at, n.event_id) > (m.at, m.event_id))"""
"""The merge statement m is the newest about the record it merges (identity.standing_links
applies it unless it would close a cycle)."""


async def person_neighbours(conn: asyncpg.Connection, ids: Collection[str]) -> set[str]:
    """The records one step from these among those that may be one person with them: a merge
    that may stand either way (the newest statement about a record, when a merge), the folded
    person map either way, and an alias and the claimants of the identifier it names either
    way. Superseded statements and unmerges connect nothing."""
    rows = await conn.fetch(
        f"""
        WITH {_WANTED}
        SELECT m.other_id AS id FROM wanted w JOIN merge_statements m ON m.customer_id = w.id
              WHERE {_MAY_STAND}
        UNION SELECT m.customer_id FROM wanted w JOIN merge_statements m ON m.other_id = w.id
              WHERE {_MAY_STAND}
        UNION SELECT p.person_id FROM wanted w JOIN person_records p ON p.record_id = w.id
        UNION SELECT p.record_id FROM wanted w JOIN person_records p ON p.person_id = w.id
        UNION SELECT i.customer_id FROM wanted w JOIN identifier_aliases a ON a.record_id = w.id
              JOIN customer_identifiers i ON (i.system, i.value) = (a.system, a.value)
        UNION SELECT a.record_id FROM wanted w JOIN customer_identifiers i ON i.customer_id = w.id
              JOIN identifier_aliases a ON (a.system, a.value) = (i.system, i.value)
        """,
        list(ids),
    )
    return {row["id"] for row in rows}


async def save_person_records(
    conn: asyncpg.Connection, before: Mapping[str, str], after: Mapping[str, str]
) -> None:
    """Write the rows of the record -> person map that differ from `before`."""
    gone = [record for record in before if record not in after]
    changed = {r: p for r, p in after.items() if before.get(r) != p}
    if gone:
        await conn.execute("DELETE FROM person_records WHERE record_id = ANY($1::text[])", gone)
    if changed:
        await conn.execute(
            """
            INSERT INTO person_records AS t (record_id, person_id)
            SELECT * FROM unnest($1::text[], $2::text[])
            ON CONFLICT (record_id) DO UPDATE SET person_id = EXCLUDED.person_id
            """,
            list(changed),
            list(changed.values()),
        )


async def persons_of(conn: asyncpg.Connection, ids: Collection[str]) -> dict[str, str]:
    """Record -> person for those of these records that belong to a person of several."""
    rows = await conn.fetch(
        f"WITH {_WANTED} SELECT p.record_id, p.person_id"
        " FROM wanted w JOIN person_records p ON p.record_id = w.id",
        list(ids),
    )
    return {row["record_id"]: row["person_id"] for row in rows}


async def records_of_persons(
    conn: asyncpg.Connection, persons: Collection[str]
) -> dict[str, list[str]]:
    """Each person's records, its own id first (a person of one record: itself alone)."""
    found: dict[str, list[str]] = {person: [person] for person in persons}
    rows = await conn.fetch(
        "SELECT record_id, person_id FROM person_records"
        " WHERE person_id = ANY($1::text[]) AND record_id <> person_id ORDER BY record_id",
        list(persons),
    )
    for row in rows:
        found[row["person_id"]].append(row["record_id"])
    return found


async def persons_of_several(conn: asyncpg.Connection) -> list[str]:
    """Every person made of several records."""
    rows = await conn.fetch("SELECT DISTINCT person_id FROM person_records ORDER BY person_id")
    return [row["person_id"] for row in rows]


async def persons_in_partitions(
    conn: asyncpg.Connection, partitions: Collection[int]
) -> list[tuple[str, int]]:
    """(person, crm.orders partition) of the persons of several records with a record whose
    purchases are in one of these partitions."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT r.person_id, t.orders_partition FROM person_records r
        JOIN purchase_totals t ON t.customer_id = r.record_id
        WHERE t.orders_partition = ANY($1::int[]) ORDER BY 1, 2
        """,
        list(partitions),
    )
    return [(row["person_id"], row["orders_partition"]) for row in rows]


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
    members of the segment, persons of several records aside (segment_fold.on_persons)."""
    rows = await conn.fetch(
        """
        SELECT t.customer_id, t.last_purchase_at, m.member, m.version, m.changed_at
        FROM purchase_totals t
        LEFT JOIN segment_memberships m ON m.customer_id = t.customer_id AND m.segment = $1
        WHERE t.orders_partition = $2 AND t.last_purchase_at <= $3 AND m.member IS NOT TRUE
          AND NOT EXISTS (SELECT 1 FROM person_records r WHERE r.record_id = t.customer_id)
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


# --- commerce: orders, lines, refunds, cancellations ---------------------------------------------

_FIRST_WINS = (
    "WHERE (EXCLUDED.{time}, EXCLUDED.source, EXCLUDED.event_id) < (t.{time}, t.source, t.event_id)"
)
"""The guard of a business id's upsert: the earlier event by (time, source, id) is kept, as in
commerce._precedence."""


_ORDER_ROWS = UnnestColumns.named(
    OrderRow._fields, placed_at="timestamptz", amount="numeric", line_count="int", items="bigint"
)
_LINE_ROWS = UnnestColumns.named(
    LineRow._fields, line_no="int", quantity="int", unit_price="numeric"
)
"""The commerce rows' columns, in OrderRow's and LineRow's order."""


async def save_commerce(conn: asyncpg.Connection, rows: CommerceRows) -> None:
    """Write a batch's commerce rows, one statement per table."""
    if rows.orders:
        await conn.execute(
            f"""
            INSERT INTO orders AS t ({_ORDER_ROWS.names}) {_ORDER_ROWS.select}
            ON CONFLICT (customer_id, order_id) DO UPDATE SET
                source = EXCLUDED.source, event_id = EXCLUDED.event_id,
                placed_at = EXCLUDED.placed_at, channel = EXCLUDED.channel,
                currency = EXCLUDED.currency, amount = EXCLUDED.amount,
                line_count = EXCLUDED.line_count, items = EXCLUDED.items,
                country = EXCLUDED.country
            """
            + _FIRST_WINS.format(time="placed_at"),
            *_ORDER_ROWS.arguments(list(zip(*rows.orders, strict=True))),
        )
    if rows.lines:
        await conn.execute(
            f"""
            INSERT INTO order_lines ({_LINE_ROWS.names}) {_LINE_ROWS.select}
            ON CONFLICT DO NOTHING
            """,
            *_LINE_ROWS.arguments(list(zip(*rows.lines, strict=True))),
        )
    if rows.refunds:
        await conn.execute(
            """
            INSERT INTO refunds AS t (customer_id, refund_id, source, event_id, refunded_at,
                                      order_id, currency, amount, line_count, items, reason)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                 $5::timestamptz[], $6::text[], $7::text[],
                                 $8::text[]::numeric[], $9::int[], $10::bigint[], $11::text[])
            ON CONFLICT (customer_id, refund_id) DO UPDATE SET
                source = EXCLUDED.source, event_id = EXCLUDED.event_id,
                refunded_at = EXCLUDED.refunded_at, order_id = EXCLUDED.order_id,
                currency = EXCLUDED.currency, amount = EXCLUDED.amount,
                line_count = EXCLUDED.line_count, items = EXCLUDED.items, reason = EXCLUDED.reason
            """
            + _FIRST_WINS.format(time="refunded_at"),
            *columns(rows.refunds, "customer_id", "refund_id", "source", "event_id"),
            *columns(rows.refunds, "refunded_at", "order_id", "currency"),
            [str(row.amount) for row in rows.refunds],
            *columns(rows.refunds, "line_count", "items", "reason"),
        )
    if rows.cancellations:
        await conn.execute(
            """
            INSERT INTO order_cancellations AS t (customer_id, order_id, source, event_id,
                                                  cancelled_at, reason)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                 $5::timestamptz[], $6::text[])
            ON CONFLICT (customer_id, order_id) DO UPDATE SET
                source = EXCLUDED.source, event_id = EXCLUDED.event_id,
                cancelled_at = EXCLUDED.cancelled_at, reason = EXCLUDED.reason
            """
            + _FIRST_WINS.format(time="cancelled_at"),
            *columns(
                rows.cancellations,
                "customer_id",
                "order_id",
                "source",
                "event_id",
                "cancelled_at",
                "reason",
            ),
        )


_COMMERCE_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("orders", OrderRow._fields),
    ("order_lines", LineRow._fields),
    ("refunds", RefundRow._fields),
    ("order_cancellations", CancellationRow._fields),
)
"""Each commerce table and its columns: its row type's fields, in order."""


async def append_commerce(conn: asyncpg.Connection, rows: CommerceRows) -> None:
    """Append rows whose ids no row holds yet (commerce.split_new), one COPY per table: a
    rebuild's bulk path, without the upserts' conflict checks."""
    batches: tuple[Sequence[Any], ...] = (rows.orders, rows.lines, rows.refunds, rows.cancellations)
    for (table, names), found in zip(_COMMERCE_TABLES, batches, strict=True):
        if found:
            await conn.copy_records_to_table(table, records=found, columns=names)


async def lock_categories(
    conn: asyncpg.Connection, product_ids: Collection[str]
) -> dict[str, CategoryRow]:
    """The stored category rows of these products, locked until the transaction ends."""
    rows = await conn.fetch(
        "SELECT product_id, category, recorded_at, source, event_id FROM product_categories"
        " WHERE product_id = ANY($1::text[]) ORDER BY product_id FOR UPDATE",
        list(product_ids),
    )
    return {row["product_id"]: CategoryRow(*row.values()) for row in rows}


async def save_categories(conn: asyncpg.Connection, rows: Collection[CategoryRow]) -> None:
    """Write products' categories; the guard keeps a newer row (catalogue.CategoryRow.order),
    should another transaction have written one since the lock."""
    if rows:
        await conn.execute(
            """
            INSERT INTO product_categories AS t (product_id, category, recorded_at, source,
                                                 event_id)
            SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[],
                                 $5::text[])
            ON CONFLICT (product_id) DO UPDATE SET
                category = EXCLUDED.category, recorded_at = EXCLUDED.recorded_at,
                source = EXCLUDED.source, event_id = EXCLUDED.event_id
            WHERE (t.recorded_at, t.source, t.event_id)
                < (EXCLUDED.recorded_at, EXCLUDED.source, EXCLUDED.event_id)
            """,
            *columns(rows, "product_id", "category", "recorded_at", "source", "event_id"),
        )


async def buyers_in_persons(conn: asyncpg.Connection, product_ids: Collection[str]) -> list[str]:
    """The records of persons of several records that bought one of these products."""
    rows = await conn.fetch(
        "SELECT DISTINCT l.customer_id FROM order_lines l"
        " JOIN person_records p ON p.record_id = l.customer_id"
        " WHERE l.product_id = ANY($1::text[]) ORDER BY 1",
        list(product_ids),
    )
    return [row["customer_id"] for row in rows]


_PURCHASES = """
    SELECT currency, sum(orders)::bigint AS orders, sum(gross_revenue) AS gross_revenue,
           sum(refunded) AS refunded, sum(net_revenue) AS net_revenue,
           min(first_purchase_at) AS first_purchase_at, max(last_purchase_at) AS last_purchase_at,
           sum(refunds)::bigint AS refunds, sum(items)::bigint AS items,
           (SELECT count(*) FROM order_cancellations WHERE customer_id {match}) AS cancelled
    FROM (SELECT NULL) AS always  -- one row even without purchases: the cancellations' count
    LEFT JOIN customer_currency_totals ON customer_id {match}
    GROUP BY currency ORDER BY currency
"""
"""Its `{match}`: db.matching, so that one record's read keeps its plan."""
_ONE_RECORD = _PURCHASES.format(match=ONE_ID)
"""One record's, as the profile read's statement below embeds it."""


async def purchases_of(
    conn: asyncpg.Connection, ids: Sequence[str]
) -> tuple[list[CurrencyTotals], int]:
    """The purchases of these records (one customer, or a person's records) per currency, and
    how many of their orders were cancelled, in one read."""
    match, argument = matching(ids)
    return _purchases(await conn.fetch(_PURCHASES.format(match=match), argument))


def _purchases(rows: Sequence[Mapping[str, Any]]) -> tuple[list[CurrencyTotals], int]:
    """The totals per currency and the cancelled orders of _PURCHASES' rows (one at least)."""
    totals = [
        CurrencyTotals(**{name: row[name] for name in _TOTALS_COLUMNS})
        for row in rows
        if row["currency"] is not None
    ]
    return totals, rows[0]["cancelled"]


_TOTALS_COLUMNS = [field.name for field in fields(CurrencyTotals)]
_PURCHASES_COLUMNS = {*_TOTALS_COLUMNS, "cancelled"}

_VIEW_WITH_PURCHASES = f"""
    WITH one_record AS ({_CUSTOMER_VIEW}), purchases AS ({_ONE_RECORD})
    SELECT * FROM one_record CROSS JOIN purchases ORDER BY purchases.currency
"""
"""The record $1 once per currency it bought in (once at least): the profile read's one
round trip. Nothing clashes: the record's columns and _PURCHASES' have different names."""


async def customer_view_with_purchases(
    conn: asyncpg.Connection, customer_id: str
) -> tuple[dict[str, Any] | None, list[CurrencyTotals], int]:
    """customer_view and purchases_of of the one record, in one statement: what the profile
    read needs of a customer who is a person of its own (most are)."""
    rows = await conn.fetch(_VIEW_WITH_PURCHASES, customer_id)
    return (_known_view(rows[0]), *_purchases(rows))


OrderDimension = Literal["channel", "country", "category"]
_ORDER_DIMENSIONS: dict[OrderDimension, tuple[str, str]] = {
    "channel": ("o.channel", ""),
    "country": ("o.country", ""),
    "category": (
        "c.category",
        " JOIN order_lines l USING (customer_id, order_id, source, event_id)"
        " JOIN product_categories c ON c.product_id = l.product_id",
    ),
}
"""Each dimension's column and the joins that reach it (fixed text, never the caller's)."""


async def order_counts(
    conn: asyncpg.Connection, ids: Sequence[str], by: OrderDimension
) -> dict[str, int]:
    """How many of these records' orders (not cancelled) came through each channel, went to
    each country (orders that name one), or had a line of each category (lines of products the
    catalogue gives one; an order of two categories counts for both)."""
    column, joins = _ORDER_DIMENSIONS[by]
    match, argument = matching(ids)
    rows = await conn.fetch(
        f"""
        SELECT {column} AS value, count(DISTINCT (o.customer_id, o.order_id))::int AS orders
        FROM orders o{joins}
        WHERE o.customer_id {match} AND {column} IS NOT NULL AND {_NOT_CANCELLED}
        GROUP BY 1
        """,
        argument,
    )
    return {row["value"]: row["orders"] for row in rows}


# --- analysis across customers: RFM, top customers, the cube -------------------------------------


async def projection_mark(conn: asyncpg.Connection) -> tuple[int, datetime | None]:
    """What changes whenever the fold applies something (consumed offsets) or time moves (the
    newest tick): the RFM scores need a refresh only when it moved."""
    row = await conn.fetchrow(
        "SELECT (SELECT coalesce(sum(next_offset), 0) FROM consumer_positions)::bigint AS offsets,"
        " (SELECT max(now) FROM partition_clocks) AS newest_tick"
    )
    assert row is not None
    return row["offsets"], row["newest_tick"]


RFM_SWAP_LOCK_TIMEOUT = "2s"
"""How long the swap may wait for the readers of the old scores; past it, this refresh is
given up and the next one tries again."""


async def refresh_rfm(conn: asyncpg.Connection) -> None:
    """Recompute every RFM score into a new table and swap it in, in one transaction: readers
    keep the old scores meanwhile and wait only for the swap. A concurrent refresh of a view
    diffed the old rows against the new and rewrote nearly all of them (recency moves with the
    clock), 5 to 7 times the scoring's cost. The sorts get the memory to stay off disk."""
    async with conn.transaction():
        await conn.execute(
            f"""
            SET LOCAL work_mem = '128MB';
            LOCK TABLE rfm_scores IN EXCLUSIVE MODE;  -- one refresh at a time; reads go on
            CREATE TABLE rfm_scores_next AS SELECT * FROM rfm_scores_computed;
            CREATE UNIQUE INDEX rfm_scores_next_key ON rfm_scores_next (currency, customer_id);
            CREATE INDEX rfm_scores_next_customer ON rfm_scores_next (customer_id);
            ANALYZE rfm_scores_next;
            SET LOCAL lock_timeout = '{RFM_SWAP_LOCK_TIMEOUT}';
            DROP TABLE rfm_scores;
            ALTER TABLE rfm_scores_next RENAME TO rfm_scores;
            ALTER INDEX rfm_scores_next_key RENAME TO rfm_scores_key;
            ALTER INDEX rfm_scores_next_customer RENAME TO rfm_scores_customer;
            """
        )


def _segment_rule() -> list[list[Any]]:
    """The RFM segment rule as four arrays, for SQL to join with (unnest)."""
    table = analytics.segment_table()
    return [[row[i] for row in table] for i in range(4)]


_SEGMENTS = "unnest($1::int[], $2::int[], $3::int[], $4::text[]) AS rule(r, f, m, segment)"


async def rfm_of(conn: asyncpg.Connection, customer_id: str) -> list[dict[str, Any]]:
    """The customer's RFM measures, scores and segment in each currency they bought in."""
    rows = await conn.fetch(
        f"""
        SELECT s.currency, s.recency_days, s.frequency, s.monetary, s.last_purchase_at, s.as_of,
               s.r, s.f, s.m, rule.segment
        FROM rfm_scores s JOIN {_SEGMENTS} USING (r, f, m)
        WHERE s.customer_id = $5 ORDER BY s.currency
        """,
        *_segment_rule(),
        customer_id,
    )
    return [dict(row) for row in rows]


async def segment_sizes(conn: asyncpg.Connection) -> dict[tuple[str, str], int]:
    """How many customers each RFM segment holds, per currency."""
    rows = await conn.fetch(
        f"""
        SELECT s.currency, rule.segment, count(*)::int AS customers
        FROM rfm_scores s JOIN {_SEGMENTS} USING (r, f, m)
        GROUP BY s.currency, rule.segment
        """,
        *_segment_rule(),
    )
    return {(row["currency"], row["segment"]): row["customers"] for row in rows}


async def top_customers(
    conn: asyncpg.Connection, currency: str, share: Decimal, points: int
) -> dict[str, Any]:
    """The smallest set of customers whose net revenue reaches `share` of the total (the best
    first), their share of the active population, and `points` points of the Pareto curve
    (population share -> revenue share, best customers first)."""
    row = await conn.fetchrow(
        """
        WITH ranked AS (
            SELECT row_number() OVER w AS rank, sum(monetary) OVER w AS running
            FROM rfm_scores WHERE currency = $1 AND monetary > 0
            WINDOW w AS (ORDER BY monetary DESC, customer_id ROWS UNBOUNDED PRECEDING)
        ),
        population AS (
            SELECT count(*) AS active, coalesce(sum(monetary) FILTER (WHERE monetary > 0), 0)
                   AS revenue, max(as_of) AS as_of
            FROM rfm_scores WHERE currency = $1
        )
        SELECT p.active, p.revenue, p.as_of,
               (SELECT min(rank) FROM ranked WHERE running >= $2 * p.revenue) AS top,
               (SELECT coalesce(array_agg(rank ORDER BY rank), '{}') FROM ranked
                WHERE rank IN (SELECT ceil(g * p.active::numeric / $3)
                               FROM generate_series(1, $3) AS g)) AS ranks,
               (SELECT coalesce(array_agg(running ORDER BY rank), '{}') FROM ranked
                WHERE rank IN (SELECT ceil(g * p.active::numeric / $3)
                               FROM generate_series(1, $3) AS g)) AS runnings
        FROM population p
        """,
        currency,
        share,
        points,
    )
    assert row is not None
    found = dict(row)
    found["running_at"] = dict(zip(found.pop("ranks"), found.pop("runnings"), strict=True))
    return found


_CUBE_EXPRESSIONS = {
    "segment": "m.segment",
    "rfm_segment": "coalesce(rule.segment, 'unscored')",
    "country": "coalesce(person_country.country, c.country, 'unknown')",
    "channel": "coalesce(f.channel, 'unknown')",
    "month": "to_char(f.at AT TIME ZONE 'UTC', 'YYYY-MM')",
}
"""The SQL of each cube dimension, in the order of the cube's GROUPING bits (segment: 16)."""
_SEGMENT_BIT = 1 << (len(_CUBE_EXPRESSIONS) - 1)


def _rolled_up_bit(dimension: str) -> int:
    return 1 << (len(_CUBE_EXPRESSIONS) - 1 - list(_CUBE_EXPRESSIONS).index(dimension))


_PERSONS = """
    WITH person_facts AS (
        SELECT coalesce(p.person_id, r.customer_id) AS person_id, r.*
        FROM revenue_facts r LEFT JOIN person_records p ON p.record_id = r.customer_id
    ),
    person_countries AS (
        SELECT DISTINCT ON (p.person_id) p.person_id, c.country
        FROM person_records p JOIN customers c ON c.customer_id = p.record_id
        WHERE c.country IS NOT NULL
        ORDER BY p.person_id, c.field_times ->> 'country' DESC,
                 coalesce(c.field_sources ->> 'country', '') DESC,
                 c.customer_id <> p.person_id DESC, c.customer_id DESC
    ),
    person_segments AS (
        SELECT m.customer_id AS person_id, m.segment FROM segment_memberships m WHERE m.member
    )"""
"""The facts, countries and segments of persons (person_records): a person's country is taken
from its records as identity.combined_record takes it (the newest by event time, then source);
segment members are persons already (a record merged away is a member of none)."""


async def refresh_cube(conn: asyncpg.Connection) -> None:
    """Recompute every cell of every currency's cube in one transaction (readers see the old
    cube or the new one): persons, orders and net revenue, refunds dated when refunded and a
    refund naming no known order on channel 'unknown'. Reads the RFM scores and the persons:
    refresh them first.

    A person may be in several segments, so the cells of one segment come from the facts of
    its members (a second CUBE), and every other cell from all facts: rolled up over segments,
    nobody counts twice.

    Its cost is the sorts of the grouping sets and of each cell's distinct persons: they compare
    bytes (COLLATE "C": the same groups and counts, as equality does not depend on the order),
    not the database's locale. JIT is off: when the planner took facts x memberships for
    millions of rows (memberships not analysed yet), it spent 1.9-2.6 s compiling a query over
    100,000 facts (docs/performance.md, "The profile's periodic burst")."""
    others = ", ".join(f'({e}) COLLATE "C"' for e in list(_CUBE_EXPRESSIONS.values())[1:])
    facts = f"""
        FROM person_facts f
        LEFT JOIN customers c ON c.customer_id = f.person_id
        LEFT JOIN person_countries person_country ON person_country.person_id = f.person_id
        LEFT JOIN rfm_scores s ON s.customer_id = f.person_id AND s.currency = f.currency
        LEFT JOIN {_SEGMENTS} ON rule.r = s.r AND rule.f = s.f AND rule.m = s.m"""
    measures = 'count(DISTINCT f.person_id COLLATE "C"), sum(f.orders), sum(f.revenue), now()'
    async with conn.transaction():
        await conn.execute("SET LOCAL work_mem = '128MB'")
        await conn.execute("SET LOCAL jit = off")
        await conn.execute("DELETE FROM computed_revenue_cube")
        await conn.execute(
            f"""
            INSERT INTO computed_revenue_cube (currency, rolled_up, segment, rfm_segment, country,
                                               channel, month, customers, orders, revenue,
                                               computed_at)
            {_PERSONS}
            SELECT f.currency, {_SEGMENT_BIT} + GROUPING({others}), NULL, {others}, {measures}
            {facts}
            GROUP BY f.currency, CUBE ({others})
            UNION ALL
            SELECT f.currency, GROUPING({others}), m.segment, {others}, {measures}
            {facts}
            JOIN person_segments m ON m.person_id = f.person_id
            GROUP BY f.currency, m.segment, CUBE ({others})
            """,
            *_segment_rule(),
        )


async def cube(
    conn: asyncpg.Connection, currency: str, dimensions: Sequence[str]
) -> list[dict[str, Any]]:
    """The cells of the precomputed cube over these dimensions (CUBE of them: a dimension rolled
    up is None and True in `rolled_up`), as of the last refresh_cube. A currency without facts
    has a grand total of zeros."""
    unknown = set(dimensions) - set(_CUBE_EXPRESSIONS)
    if unknown:
        raise ValueError(f"unknown cube dimensions {sorted(unknown)}")
    always_rolled_up = sum(_rolled_up_bit(d) for d in _CUBE_EXPRESSIONS if d not in dimensions)
    order = ", ".join([*(f"{d} NULLS FIRST" for d in dimensions), "rolled_up"])
    rows = await conn.fetch(
        f"""
        SELECT segment, rfm_segment, country, channel, month, rolled_up, customers, orders,
               revenue, computed_at
        FROM computed_revenue_cube
        WHERE currency = $1 AND rolled_up & $2 = $2
        ORDER BY {order}
        """,
        currency,
        always_rolled_up,
    )
    if not rows:
        return [
            {
                **dict.fromkeys(dimensions),
                "rolled_up": [True] * len(dimensions),
                "customers": 0,
                "orders": 0,
                "revenue": Decimal(0),
                "computed_at": None,
            }
        ]
    return [
        {
            **{d: row[d] for d in dimensions},
            "rolled_up": [bool(row["rolled_up"] & _rolled_up_bit(d)) for d in dimensions],
            "customers": row["customers"],
            "orders": row["orders"],
            "revenue": row["revenue"],
            "computed_at": row["computed_at"],
        }
        for row in rows
    ]


async def save_opinions(conn: asyncpg.Connection, rows: Sequence[opinions.OpinionRow]) -> None:
    """Store a batch's statements; one seen before (same event) is left as it is."""
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO customer_opinions (customer_id, event_id, kind, topic, topic_key, reason,
                                       competitor, about, comment, captured_via, source,
                                       stated_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                             $11::text[], $12::timestamptz[])
        ON CONFLICT DO NOTHING
        """,
        *columns(rows, "customer_id", "event_id", "kind", "topic"),
        [opinions.brand_key(row.topic) for row in rows],
        *columns(rows, "reason", "competitor", "about", "comment", "captured_via", "source"),
        [row.stated_at for row in rows],
    )


async def save_complaints(
    conn: asyncpg.Connection, rows: Sequence[complaints.ComplaintRow]
) -> None:
    """Store a batch's complaint openings: a case keeps its earliest opening, whatever the order
    the announcements are folded in."""
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO complaints AS t (customer_id, case_id, opened_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
        ON CONFLICT (customer_id, case_id) DO UPDATE SET opened_at = excluded.opened_at
        WHERE excluded.opened_at < t.opened_at
        """,
        *columns(rows, "customer_id", "case_id", "opened_at"),
    )


async def opinions_of(conn: asyncpg.Connection, customer_id: str) -> list[opinions.OpinionRow]:
    """A customer's statements, newest first."""
    rows = await conn.fetch(
        """
        SELECT customer_id, event_id, kind, topic, reason, competitor, about, comment,
               captured_via, source, stated_at
        FROM customer_opinions WHERE customer_id = $1
        ORDER BY stated_at DESC, event_id
        """,
        customer_id,
    )
    return [
        opinions.OpinionRow(**{**dict(row), "kind": opinions.OpinionKind(row["kind"])})
        for row in rows
    ]


async def opinion_counts(
    conn: asyncpg.Connection, since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    """Per kind and topic (brands grouped by `brand_key`): statements, distinct customers, the
    most frequent spelling, and the reasons given with their counts; most customers first."""
    rows = await conn.fetch(
        """
        WITH chosen AS (
            SELECT * FROM customer_opinions
            WHERE ($1::timestamptz IS NULL OR stated_at >= $1)
              AND ($2::timestamptz IS NULL OR stated_at < $2)
        ),
        reasons AS (
            SELECT kind, topic_key, jsonb_object_agg(reason, n) AS reasons
            FROM (SELECT kind, topic_key, reason, count(*) AS n FROM chosen
                  WHERE reason IS NOT NULL GROUP BY kind, topic_key, reason) r
            GROUP BY kind, topic_key
        )
        SELECT c.kind, mode() WITHIN GROUP (ORDER BY c.topic) AS topic,
               count(*) AS statements, count(DISTINCT c.customer_id) AS customers,
               coalesce(r.reasons, '{}'::jsonb) AS reasons
        FROM chosen c LEFT JOIN reasons r USING (kind, topic_key)
        GROUP BY c.kind, c.topic_key, r.reasons
        ORDER BY c.kind, customers DESC, statements DESC, topic
        """,
        since,
        until,
    )
    return [dict(row) for row in rows]


async def save_merge_statements(
    conn: asyncpg.Connection, statements: Sequence[identity.MergeStatement]
) -> None:
    """Keep a batch's merge and unmerge statements; one seen before is left as it is."""
    if not statements:
        return
    await conn.execute(
        """
        INSERT INTO merge_statements (customer_id, other_id, merged, reason, source, event_id, at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[],
                             $6::text[], $7::timestamptz[])
        ON CONFLICT DO NOTHING
        """,
        *columns(statements, "customer_id", "other_id", "merged", "reason", "source"),
        *columns(statements, "event_id", "at"),
    )


MAX_MERGE_DEPTH = 32
"""How far the statements around a record are followed: people merged from more records than
this are not expected (a runaway merge is refused by the API first)."""


async def merge_statements_around(
    conn: asyncpg.Connection, customer_id: str
) -> list[identity.MergeStatement]:
    """Every statement connecting records to this one, directly or through others."""
    rows = await conn.fetch(
        """
        WITH RECURSIVE related(id, depth) AS (
            SELECT $1::text, 0
            UNION
            SELECT CASE WHEN m.customer_id = r.id THEN m.other_id ELSE m.customer_id END,
                   r.depth + 1
            FROM related r
            JOIN merge_statements m ON r.id IN (m.customer_id, m.other_id)
            WHERE r.depth < $2
        )
        SELECT DISTINCT m.* FROM merge_statements m
        WHERE m.customer_id IN (SELECT id FROM related) OR m.other_id IN (SELECT id FROM related)
        ORDER BY m.at, m.event_id
        """,
        customer_id,
        MAX_MERGE_DEPTH,
    )
    return [identity.MergeStatement(**dict(row)) for row in rows]


async def records_of(conn: asyncpg.Connection, ids: Sequence[str]) -> dict[str, CustomerRecord]:
    match, argument = matching(ids)
    rows = await conn.fetch(f"SELECT * FROM customers WHERE customer_id {match}", argument)
    return {row["customer_id"]: _record(row) for row in rows}


# ----------------------------------------------------------------------------- lifetime value

_LIFETIME_FIT_LOCK = 7_0_0_7
"""Advisory lock key: one replica fits at a time, the others skip their turn."""


async def try_lifetime_fit_lock(conn: asyncpg.Connection) -> bool:
    """Take the session's fit lock unless another replica holds it (release_lifetime_fit_lock)."""
    taken: bool = await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LIFETIME_FIT_LOCK)
    return taken


async def release_lifetime_fit_lock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", _LIFETIME_FIT_LOCK)


async def purchase_histories(
    conn: asyncpg.Connection,
) -> tuple[list[PurchaseHistory], datetime | None]:
    """Every person's purchase days per currency (orders not cancelled; several orders on one
    UTC day are one purchase, their value net of the refunds naming them), the orders of a
    person's records together (person_records, as the RFM scores group them), measured
    against the clock of the person's crm.orders partition, else the newest tick, else the
    newest purchase (as the RFM scores are): repeat days, days from the first to the last and
    to the clock. Also the newest clock any was measured against."""
    async with conn.transaction():
        await conn.execute("SET LOCAL work_mem = '128MB'")
        rows = await conn.fetch(
            """
            WITH refunded AS (
                SELECT customer_id, order_id, currency, sum(amount) AS amount
                FROM refunds WHERE order_id IS NOT NULL GROUP BY 1, 2, 3
            ),
            days AS (
                SELECT coalesce(p.person_id, o.customer_id) AS customer_id, o.currency,
                       (o.placed_at AT TIME ZONE 'UTC')::date AS day,
                       sum(o.amount - coalesce(r.amount, 0))::float8 AS spend,
                       max(o.placed_at) AS last_at
                FROM orders o
                LEFT JOIN refunded r USING (customer_id, order_id, currency)
                LEFT JOIN person_records p ON p.record_id = o.customer_id
                WHERE NOT EXISTS (
                    SELECT 1 FROM order_cancellations c
                    WHERE c.customer_id = o.customer_id AND c.order_id = o.order_id
                )
                GROUP BY 1, 2, 3
            ),
            numbered AS (
                SELECT d.*, row_number() OVER (
                    PARTITION BY customer_id, currency ORDER BY day) AS nth
                FROM days d
            ),
            histories AS (
                SELECT customer_id, currency, count(*)::int - 1 AS repeat_purchases,
                       min(day) AS first_day, max(day) - min(day) AS span_days,
                       avg(spend) FILTER (WHERE nth > 1) AS mean_repeat_spend,
                       max(last_at) AS last_at
                FROM numbered GROUP BY 1, 2
            ),
            clocked AS (
                SELECT h.*, coalesce(
                           pc.now,
                           (SELECT max(now) FROM partition_clocks WHERE topic = 'crm.orders'),
                           max(h.last_at) OVER ()
                       ) AS as_of
                FROM histories h
                LEFT JOIN purchase_totals p ON p.customer_id = h.customer_id
                LEFT JOIN partition_clocks pc
                    ON pc.topic = 'crm.orders' AND pc.partition = p.orders_partition
            )
            SELECT customer_id, currency, repeat_purchases, span_days::float8 AS span_days,
                   greatest(span_days, extract(epoch FROM
                       as_of - (first_day::timestamp AT TIME ZONE 'UTC')) / 86400)::float8
                       AS age_days,
                   mean_repeat_spend, as_of
            FROM clocked
            """
        )
    histories = [
        PurchaseHistory(
            row["customer_id"],
            row["currency"],
            row["repeat_purchases"],
            row["span_days"],
            row["age_days"],
            row["mean_repeat_spend"],
        )
        for row in rows
    ]
    return histories, max((row["as_of"] for row in rows), default=None)


async def save_lifetime_model(
    conn: asyncpg.Connection, fitted: FittedVersion, request_ids: Collection[int]
) -> int:
    """Write a fitted version with its parameters and predictions, make it the current one, drop
    the older versions' predictions and mark the requests it answers, in one transaction."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE fitted_lifetime_models IN EXCLUSIVE MODE")
        version: int = await conn.fetchval(
            "INSERT INTO fitted_lifetime_models"
            " (version, fitted_at, as_of, horizon_days, fit_seconds, trigger, skipped)"
            " SELECT coalesce(max(version), 0) + 1, $1, $2, $3, $4, $5, $6::jsonb"
            " FROM fitted_lifetime_models RETURNING version",
            fitted.fitted_at,
            fitted.as_of,
            fitted.horizon_days,
            fitted.fit_seconds,
            fitted.trigger,
            fitted.skipped,
        )
        await conn.executemany(
            "INSERT INTO fitted_lifetime_parameters (version, currency, customers,"
            " repeat_customers, r, alpha, a, b, p, q, gamma)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            [
                (
                    version,
                    m.currency,
                    m.customers,
                    m.repeat_customers,
                    *astuple(m.purchases),
                    *astuple(m.spend),
                )
                for m in fitted.models
            ],
        )
        await conn.copy_records_to_table(
            "fitted_lifetime_predictions",
            columns=[
                "version",
                "customer_id",
                "currency",
                "repeat_purchases",
                "span_days",
                "age_days",
                "mean_repeat_spend",
                "probability_alive",
                "expected_purchases",
                "expected_spend",
            ],
            records=[
                (
                    version,
                    h.customer_id,
                    h.currency,
                    h.repeat_purchases,
                    h.span_days,
                    h.age_days,
                    h.mean_repeat_spend,
                    p.probability_alive,
                    p.expected_purchases,
                    p.expected_spend,
                )
                for h, p in fitted.predictions
            ],
        )
        await conn.execute("UPDATE fitted_lifetime_models SET current = false WHERE current")
        await conn.execute(
            "UPDATE fitted_lifetime_models SET current = true WHERE version = $1", version
        )
        await conn.execute("DELETE FROM fitted_lifetime_predictions WHERE version < $1", version)
        await conn.execute(
            "UPDATE fitted_lifetime_requests SET version = $1 WHERE id = ANY($2::bigint[])",
            version,
            list(request_ids),
        )
    return version


async def request_lifetime_refit(conn: asyncpg.Connection) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        "INSERT INTO fitted_lifetime_requests DEFAULT VALUES RETURNING id, requested_at"
    )
    return row


async def pending_lifetime_requests(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch("SELECT id FROM fitted_lifetime_requests WHERE version IS NULL")
    return [row["id"] for row in rows]


async def current_lifetime_model(conn: asyncpg.Connection) -> ModelInUse | None:
    """The current version's fit, its parameters per currency and the refits still waiting."""
    row = await conn.fetchrow(
        "SELECT version, fitted_at, as_of, horizon_days, fit_seconds, trigger, skipped,"
        " (SELECT count(*) FROM fitted_lifetime_requests WHERE version IS NULL) AS pending"
        " FROM fitted_lifetime_models WHERE current"
    )
    if row is None:
        return None
    parameters = await conn.fetch(
        "SELECT currency, customers, repeat_customers, r, alpha, a, b, p, q, gamma"
        " FROM fitted_lifetime_parameters WHERE version = $1 ORDER BY currency",
        row["version"],
    )
    return ModelInUse(
        version=row["version"],
        fitted_at=row["fitted_at"],
        as_of=row["as_of"],
        horizon_days=row["horizon_days"],
        fit_seconds=row["fit_seconds"],
        trigger=row["trigger"],
        skipped=row["skipped"],
        pending_refits=row["pending"],
        models=[
            CurrencyModel(
                p["currency"],
                PurchaseParameters(p["r"], p["alpha"], p["a"], p["b"]),
                SpendParameters(p["p"], p["q"], p["gamma"]),
                p["customers"],
                p["repeat_customers"],
            )
            for p in parameters
        ],
    )


async def lifetime_of(conn: asyncpg.Connection, customer_id: str) -> list[Scored]:
    """The predictions of a person (named by its id) by the current version, per currency."""
    rows = await conn.fetch(
        "SELECT m.version, m.fitted_at, m.as_of, m.horizon_days, p.currency,"
        " p.repeat_purchases, p.span_days, p.age_days, p.mean_repeat_spend,"
        " p.probability_alive, p.expected_purchases, p.expected_spend"
        " FROM fitted_lifetime_models m JOIN fitted_lifetime_predictions p"
        " ON p.version = m.version AND p.customer_id = $1"
        " WHERE m.current ORDER BY p.currency",
        customer_id,
    )
    return [
        Scored(
            row["version"],
            row["fitted_at"],
            row["as_of"],
            row["horizon_days"],
            PurchaseHistory(
                customer_id,
                row["currency"],
                row["repeat_purchases"],
                row["span_days"],
                row["age_days"],
                row["mean_repeat_spend"],
            ),
            Prediction(
                customer_id,
                row["currency"],
                row["probability_alive"],
                row["expected_purchases"],
                row["expected_spend"],
            ),
        )
        for row in rows
    ]


# --- operator segments: definitions, rules compiled to SQL, members -------------------------------


async def save_segment_definition(
    conn: asyncpg.Connection,
    event: Event,
    description: str | None,
    rule: Any,
    time_dependent: bool,
    retired: bool,
) -> bool:
    """Store a definition or retirement unless a newer one by (time, source, id) is stored;
    whether it was stored. A retirement keeps the rule it retires."""
    stored: str | None = await conn.fetchval(
        """
        INSERT INTO segment_definitions AS t (segment, description, rule, time_dependent, retired,
                                              changed_at, source, event_id)
        VALUES ($1, $2, coalesce($3::jsonb, '{}'), $4, $5, $6, $7, $8)
        ON CONFLICT (segment) DO UPDATE SET
            description = coalesce(EXCLUDED.description, t.description),
            rule = CASE WHEN EXCLUDED.retired THEN t.rule ELSE EXCLUDED.rule END,
            time_dependent = EXCLUDED.time_dependent AND NOT EXCLUDED.retired,
            retired = EXCLUDED.retired, changed_at = EXCLUDED.changed_at,
            source = EXCLUDED.source, event_id = EXCLUDED.event_id
        WHERE (EXCLUDED.changed_at, EXCLUDED.source, EXCLUDED.event_id)
              > (t.changed_at, t.source, t.event_id)
        RETURNING segment
        """,
        event.customer_id,
        description,
        rule,
        time_dependent,
        retired,
        event.time,
        event.source,
        event.id,
    )
    return stored is not None


async def active_segments(
    conn: asyncpg.Connection, *, timed_only: bool = False
) -> list[segments.Definition]:
    """The segments that are not retired (only those whose rules read time, if asked)."""
    rows = await conn.fetch(
        "SELECT segment, rule, time_dependent FROM segment_definitions"
        " WHERE NOT retired AND (time_dependent OR NOT $1) ORDER BY segment",
        timed_only,
    )
    return [segments.definition(r["segment"], r["rule"], r["time_dependent"]) for r in rows]


async def segment_members_locked(conn: asyncpg.Connection, segment: str) -> list[Membership]:
    """Every current member of a segment, locked until the batch commits."""
    rows = await conn.fetch(
        "SELECT customer_id, member, version, changed_at FROM segment_memberships"
        " WHERE segment = $1 AND member ORDER BY customer_id FOR UPDATE",
        segment,
    )
    return [
        Membership(r["customer_id"], segment, True, r["version"], r["changed_at"]) for r in rows
    ]


async def memberships_of(
    conn: asyncpg.Connection, customer_ids: Collection[str], names: Collection[str]
) -> dict[tuple[str, str], Membership]:
    """The memberships of these customers in these segments, by (customer, segment)."""
    rows = await conn.fetch(
        "SELECT customer_id, segment, member, version, changed_at FROM segment_memberships"
        " WHERE customer_id = ANY($1::text[]) AND segment = ANY($2::text[])",
        list(customer_ids),
        list(names),
    )
    return {
        (r["customer_id"], r["segment"]): Membership(
            r["customer_id"], r["segment"], r["member"], r["version"], r["changed_at"]
        )
        for r in rows
    }


async def customer_facts(
    conn: asyncpg.Connection, customer_ids: Collection[str], lines: Sequence[rules.BoughtSpec]
) -> dict[str, segments.CustomerFacts]:
    """What a rule can ask about these customers: of their order lines only those one of
    `lines` names (segments.bought_specs of the rules to evaluate): a wholesale customer has
    thousands, and reading them all for every batch of their orders stalled the fold."""
    ids = list(customer_ids)
    parts: dict[str, dict[str, Any]] = {i: {"customer_id": i} for i in ids}
    for row in await conn.fetch(
        f"WITH {_WANTED} SELECT customer_id, name, email, phone, country, attributes FROM customers"
        " WHERE customer_id IN (SELECT id FROM wanted)",
        ids,
    ):
        contact = {name: row[name] for name in CONTACT_FIELDS}
        parts[row["customer_id"]]["profile"] = segments.profile_of(contact, row["attributes"] or {})
    queries: dict[str, tuple[str, Callable[[Mapping[str, Any]], Any]]] = {
        "orders": (
            "SELECT customer_id, order_id, placed_at, channel, currency, amount FROM orders"
            " WHERE customer_id IN (SELECT id FROM wanted)",
            lambda r: segments.OrderFact(
                r["order_id"], r["placed_at"], r["channel"], r["currency"], r["amount"]
            ),
        ),
        "refunds": (
            "SELECT customer_id, order_id, refunded_at, currency, amount FROM refunds"
            " WHERE customer_id IN (SELECT id FROM wanted)",
            lambda r: segments.RefundFact(
                r["order_id"], r["refunded_at"], r["currency"], r["amount"]
            ),
        ),
        "cancellations": (
            "SELECT customer_id, order_id, cancelled_at FROM order_cancellations"
            " WHERE customer_id IN (SELECT id FROM wanted)",
            lambda r: (r["order_id"], r["cancelled_at"]),
        ),
        "complaints": (
            "SELECT customer_id, opened_at FROM complaints"
            " WHERE customer_id IN (SELECT id FROM wanted)",
            lambda r: r["opened_at"],
        ),
        "rfm": (
            "SELECT customer_id, currency, r, f, m FROM rfm_scores"
            " WHERE customer_id IN (SELECT id FROM wanted)",
            lambda r: (r["currency"], (r["r"], r["f"], r["m"])),
        ),
        "lifetime": (
            "SELECT p.customer_id, p.currency, p.probability_alive, p.expected_purchases,"
            f" p.expected_spend FROM {_CURRENT_PREDICTIONS}"
            " WHERE p.customer_id IN (SELECT id FROM wanted)",
            lambda r: (
                r["currency"],
                segments.LifetimePrediction(
                    r["probability_alive"], r["expected_purchases"], r["expected_spend"]
                ),
            ),
        ),
    }
    named = _CompiledRule(first_parameter=2)  # the lines' parameters follow the ids
    if lines:
        either = " OR ".join(f"({' AND '.join(named.named_lines(spec))})" for spec in lines)
        queries["lines"] = (
            "SELECT l.customer_id, l.order_id, l.product_id, l.description, c.category"
            " FROM order_lines l JOIN orders o USING (customer_id, order_id, source, event_id)"
            " LEFT JOIN product_categories c ON c.product_id = l.product_id"
            f" WHERE l.customer_id IN (SELECT id FROM wanted) AND ({either})",
            lambda r: segments.LineFact(
                r["order_id"], r["product_id"], r["description"], r["category"]
            ),
        )
    for part, (query, make) in queries.items():
        found: dict[str, list[Any]] = {}
        arguments = named.parameters if part == "lines" else []
        for row in await conn.fetch(f"WITH {_WANTED} {query}", ids, *arguments):
            found.setdefault(row["customer_id"], []).append(make(row))
        for customer_id, items in found.items():
            keyed = part in ("cancellations", "rfm", "lifetime")
            parts[customer_id][part] = dict(items) if keyed else items
    for row in await conn.fetch(
        f"""
        WITH {_WANTED}
        SELECT p.customer_id, pc.now FROM purchase_totals p
        JOIN partition_clocks pc ON pc.topic = 'crm.orders' AND pc.partition = p.orders_partition
        WHERE p.customer_id IN (SELECT id FROM wanted)
        """,
        ids,
    ):
        parts[row["customer_id"]]["now"] = row["now"]
    return {i: segments.CustomerFacts(**part) for i, part in parts.items()}


class _CompiledRule:
    """A rule as SQL: a boolean expression over the scope row `s`, the joins it reads, and its
    parameters. Every value of the rule is a parameter; the text holds only fixed fragments."""

    def __init__(self, first_parameter: int) -> None:
        self.first_parameter = first_parameter
        self.parameters: list[Any] = []
        self.joins: list[str] = []
        self.reads_profile = False

    def parameter(self, value: Any, sql_type: str) -> str:
        self.parameters.append(value)
        return f"${self.first_parameter + len(self.parameters) - 1}::{sql_type}"

    def join(self, subquery: str) -> str:
        alias = f"l{len(self.joins)}"
        self.joins.append(f"LEFT JOIN ({subquery}) {alias} ON {alias}.customer_id = s.customer_id")
        return alias

    def window(self, column: str, days: int | None) -> list[str]:
        if days is None:
            return []
        return [f"{column} >= s.now - {self.parameter(days, 'int')} * interval '24 hours'"]

    def expression(self, rule: Rule) -> str:
        if isinstance(rule, AllOf | AnyOf):
            glue = " AND " if isinstance(rule, AllOf) else " OR "
            return "(" + glue.join(self.expression(c) for c in rules.children(rule)) + ")"
        if isinstance(rule, NotRule):
            return f"(NOT {self.expression(rule.not_)})"
        if isinstance(rule, FieldIn):
            self.reads_profile = True
            values = self.parameter(list(rule.in_), "text[]")
            if rule.field in CONTACT_FIELDS:  # a column name from the fixed list
                return f"coalesce(c.{rule.field} = ANY({values}), false)"
            key = self.parameter(rule.field.removeprefix(ATTRIBUTE_PREFIX), "text")
            return f"coalesce(c.attributes ->> {key} = ANY({values}), false)"
        if isinstance(rule, MeasureBetween):
            return self._between(self._measure(rule), rule)
        if isinstance(rule, Bought):
            alias = self.join(
                "SELECT DISTINCT o.customer_id FROM orders o"
                " JOIN segment_candidates s USING (customer_id)"
                " JOIN order_lines l USING (customer_id, order_id, source, event_id)"
                f" WHERE {' AND '.join(self._bought_where(rule.bought))}"
            )
            return f"({alias}.customer_id IS NOT NULL)"
        if isinstance(rule, Lifetime):
            alias = self.join(
                f"SELECT p.customer_id FROM {_CURRENT_PREDICTIONS}"
                " JOIN segment_candidates s USING (customer_id)"
                f" WHERE {self._lifetime_where(rule.lifetime)}"
            )
            return f"({alias}.customer_id IS NOT NULL)"
        assert isinstance(rule, Rfm)
        alias = self.join(
            "SELECT DISTINCT r.customer_id FROM rfm_scores r"
            " JOIN segment_candidates s USING (customer_id)"
            f" WHERE {self._rfm_where(rule.rfm)}"
        )
        return f"({alias}.customer_id IS NOT NULL)"

    def necessary(self, rule: Rule) -> list[str]:
        """Conditions over the scope row `s` that the rule implies (those of the conditions it
        requires of everyone: itself, or the members of a top-level `all`) that are cheap to
        test first: a selective one shrinks the candidates before the measures are summed."""
        found = []
        for condition in rule.all if isinstance(rule, AllOf) else (rule,):
            if isinstance(condition, FieldIn):
                found.append(
                    "EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id"
                    f" AND {self.expression(condition)})"
                )
            elif isinstance(condition, Bought):
                found.append(
                    "EXISTS (SELECT 1 FROM orders o"
                    " JOIN order_lines l USING (customer_id, order_id, source, event_id)"
                    " WHERE o.customer_id = s.customer_id"
                    f" AND {' AND '.join(self._bought_where(condition.bought))})"
                )
            elif isinstance(condition, Rfm):
                found.append(
                    "EXISTS (SELECT 1 FROM rfm_scores r WHERE r.customer_id = s.customer_id"
                    f" AND {self._rfm_where(condition.rfm)})"
                )
            elif isinstance(condition, Lifetime):
                found.append(
                    f"EXISTS (SELECT 1 FROM {_CURRENT_PREDICTIONS}"
                    " WHERE p.customer_id = s.customer_id"
                    f" AND {self._lifetime_where(condition.lifetime)})"
                )
        return found

    def _bought_where(self, spec: rules.BoughtSpec) -> list[str]:
        return [
            _NOT_CANCELLED,
            *self.window("o.placed_at", spec.within_days),
            *self.named_lines(spec),
        ]

    def named_lines(self, spec: rules.BoughtSpec) -> list[str]:
        """The conditions on an order line `l` of what the spec names (product, description,
        category); it always names one."""
        where = []
        if spec.product_ids is not None:
            where.append(f"l.product_id = ANY({self.parameter(list(spec.product_ids), 'text[]')})")
        if spec.description_contains is not None:
            needle = self.parameter(spec.description_contains, "text")
            where.append(f"strpos(lower(l.description), lower({needle})) > 0")
        if spec.categories is not None:
            where.append(
                "l.product_id IN (SELECT product_id FROM product_categories"
                f" WHERE category = ANY({self.parameter(list(spec.categories), 'text[]')}))"
            )
        return where

    def _rfm_where(self, spec: rules.RfmSpec) -> str:
        triples = segments.rfm_triples(spec)
        return (
            f"r.currency = {self.parameter(spec.currency, 'text')}"
            " AND (r.r, r.f, r.m) IN (SELECT * FROM unnest("
            f"{self.parameter([t[0] for t in triples], 'int[]')},"
            f" {self.parameter([t[1] for t in triples], 'int[]')},"
            f" {self.parameter([t[2] for t in triples], 'int[]')}))"
        )

    def _lifetime_where(self, spec: rules.LifetimeSpec) -> str:
        """The prediction `p` in the currency with its figure within the bounds, in double
        precision (segments.lifetime_figure computes the same)."""
        value = _LIFETIME_FIGURES[spec.figure]
        where = [f"p.currency = {self.parameter(spec.currency, 'text')}"]
        if spec.at_least is not None:
            where.append(f"{value} >= {self.parameter(float(spec.at_least), 'float8')}")
        if spec.at_most is not None:
            where.append(f"{value} <= {self.parameter(float(spec.at_most), 'float8')}")
        return " AND ".join(where)

    def _orders_where(self, rule: MeasureBetween) -> list[str]:
        where = [_NOT_CANCELLED]
        if rule.currency is not None:
            where.append(f"o.currency = {self.parameter(rule.currency, 'text')}")
        if rule.channel is not None:
            where.append(f"o.channel = {self.parameter(rule.channel, 'text')}")
        return where + self.window("o.placed_at", rule.within_days)

    def _measure(self, rule: MeasureBetween) -> str:
        """The measured value's SQL (NULL when there is none, as segments.measure_value)."""
        measure = rule.measure
        if measure in (Measure.ORDERS, Measure.GROSS_REVENUE, Measure.DAYS_SINCE_LAST_PURCHASE):
            alias = self.join(
                "SELECT o.customer_id, count(*) AS n, sum(o.amount) AS amount,"
                " max(o.placed_at) AS last"
                " FROM orders o JOIN segment_candidates s USING (customer_id)"
                f" WHERE {' AND '.join(self._orders_where(rule))} GROUP BY o.customer_id"
            )
            if measure == Measure.ORDERS:
                return f"coalesce({alias}.n, 0)"
            if measure == Measure.GROSS_REVENUE:
                return f"coalesce({alias}.amount, 0)"
            return f"(extract(epoch FROM s.now) - extract(epoch FROM {alias}.last))"
        if measure == Measure.NET_REVENUE:
            orders = self._orders_where(rule)
            currency = self.parameter(rule.currency, "text")
            refunds = [
                f"r.currency = {currency}",
                "NOT EXISTS (SELECT 1 FROM order_cancellations x"
                " WHERE x.customer_id = r.customer_id AND x.order_id = r.order_id)",
                *self.window("r.refunded_at", rule.within_days),
            ]
            if rule.channel is not None:
                refunds.append(f"o.channel = {self.parameter(rule.channel, 'text')}")
            alias = self.join(
                "SELECT customer_id, sum(amount) AS amount FROM ("
                " SELECT o.customer_id, o.amount"
                " FROM orders o JOIN segment_candidates s USING (customer_id)"
                f" WHERE {' AND '.join(orders)}"
                " UNION ALL"
                " SELECT r.customer_id, -r.amount"
                " FROM refunds r JOIN segment_candidates s USING (customer_id)"
                " LEFT JOIN orders o ON o.customer_id = r.customer_id"
                " AND o.order_id = r.order_id AND o.currency = r.currency"
                f" WHERE {' AND '.join(refunds)}) AS money GROUP BY customer_id"
            )
            return f"coalesce({alias}.amount, 0)"
        if measure == Measure.REFUNDS:
            where = ["true", *self.window("r.refunded_at", rule.within_days)]
            if rule.currency is not None:
                where.append(f"r.currency = {self.parameter(rule.currency, 'text')}")
            alias = self.join(
                "SELECT r.customer_id, count(*) AS n"
                " FROM refunds r JOIN segment_candidates s USING (customer_id)"
                f" WHERE {' AND '.join(where)} GROUP BY r.customer_id"
            )
            return f"coalesce({alias}.n, 0)"
        table, at = (
            ("order_cancellations", "cancelled_at")
            if measure == Measure.CANCELLATIONS
            else ("complaints", "opened_at")
        )
        where = ["true", *self.window(f"x.{at}", rule.within_days)]
        alias = self.join(
            f"SELECT x.customer_id, count(*) AS n FROM {table} x"
            " JOIN segment_candidates s USING (customer_id)"
            f" WHERE {' AND '.join(where)} GROUP BY x.customer_id"
        )
        return f"coalesce({alias}.n, 0)"

    def _between(self, value: str, rule: MeasureBetween) -> str:
        scale = segments.SECONDS_PER_DAY if rule.measure == Measure.DAYS_SINCE_LAST_PURCHASE else 1
        bounds = []
        if rule.at_least is not None:
            bounds.append(f"{value} >= {self.parameter(rule.at_least * scale, 'numeric')}")
        if rule.at_most is not None:
            bounds.append(f"{value} <= {self.parameter(rule.at_most * scale, 'numeric')}")
        return f"coalesce({' AND '.join(bounds)}, false)"


_CURRENT_PREDICTIONS = (
    "fitted_lifetime_predictions p"
    " JOIN fitted_lifetime_models m ON m.version = p.version AND m.current"
)
"""The predictions of the lifetime-value model in use, as `p`."""
_LIFETIME_FIGURES = {
    LifetimeFigure.PROBABILITY_ALIVE: "p.probability_alive",
    LifetimeFigure.CHURN_PROBABILITY: "(1 - p.probability_alive)",
    LifetimeFigure.EXPECTED_PURCHASES: "p.expected_purchases",
    LifetimeFigure.LIFETIME_VALUE: "(p.expected_purchases * p.expected_spend)",
}

_NOT_CANCELLED = (
    "NOT EXISTS (SELECT 1 FROM order_cancellations x"
    " WHERE x.customer_id = o.customer_id AND x.order_id = o.order_id)"
)

EVERYONE = (
    "SELECT customer_id FROM customers UNION SELECT customer_id FROM purchase_totals"
    " UNION SELECT customer_id FROM complaints UNION SELECT customer_id FROM customer_opinions"
    " UNION SELECT customer_id FROM merge_statements"
    " EXCEPT SELECT record_id FROM person_records"
)
"""The customers a rule is evaluated over: everyone the profile knows, whatever fact made it know
them (a complaint or an opinion alone, too). After a run of events every customer it touched is
evaluated (segment_fold.on_facts), so a definition folded after a customer's facts must reach
them as well: a replay, whose definitions fall elsewhere among the facts, gives the same
members. Persons of several records are left out: their records' facts are combined, in Python
(segment_fold.on_persons)."""
IN_PARTITIONS = (
    "SELECT customer_id FROM purchase_totals WHERE orders_partition = ANY($1::int[])"
    " EXCEPT SELECT record_id FROM person_records"
)
"""The customers whose time is these crm.orders partitions' clocks ($1), persons of several
records aside."""
BUYERS = (
    "SELECT customer_id FROM order_lines WHERE product_id = ANY($1::text[])"
    " EXCEPT SELECT record_id FROM person_records"
)
"""The customers that bought one of the products in $1 (any order line, kept or not), persons
of several records aside."""
AMONG = "SELECT DISTINCT unnest($1::text[]) AS customer_id"
"""The customers named in $1."""


async def _match(
    conn: asyncpg.Connection, rule: Rule, universe: str, arguments: Sequence[Any]
) -> tuple[str, list[Any]]:
    """Fill the temporary tables segment_scope (the universe's customers with their clocks) and
    segment_candidates (those passing the rule's cheap necessary conditions), with statistics,
    so that the planner sizes its joins right; then the `WITH matching` of the customers the
    rule holds for, and its parameters (from $1). Inside the caller's transaction."""
    # Compiling a rule's large plan costs seconds; and the row estimates of its joins (each
    # leaf joins the candidates to orders and lines on the same key) come out far too low, which
    # made nested loops over thousands of candidates quadratic: hash joins it is.
    await conn.execute("SET LOCAL jit = off")
    await conn.execute("SET LOCAL enable_nestloop = off")
    await conn.execute("DROP TABLE IF EXISTS pg_temp.segment_scope, pg_temp.segment_candidates")
    for table in ("segment_scope", "segment_candidates"):  # CREATE ... AS takes no parameters
        await conn.execute(
            f"CREATE TEMP TABLE {table} (customer_id text, orders_partition int, now timestamptz)"
            " ON COMMIT DROP"
        )
    await conn.execute(
        f"""
        INSERT INTO segment_scope
        SELECT u.customer_id, p.orders_partition, pc.now
        FROM ({universe}) u
        LEFT JOIN purchase_totals p ON p.customer_id = u.customer_id
        LEFT JOIN partition_clocks pc
            ON pc.topic = 'crm.orders' AND pc.partition = p.orders_partition
        """,
        *arguments,
    )
    prefilter = _CompiledRule(1)
    necessary = " AND ".join(["true", *prefilter.necessary(rule)])
    await conn.execute(
        f"INSERT INTO segment_candidates SELECT * FROM segment_scope s WHERE {necessary}",
        *prefilter.parameters,
    )
    await conn.execute("ANALYZE segment_scope, segment_candidates")
    compiled = _CompiledRule(1)
    where = compiled.expression(rule)
    profile = (
        "LEFT JOIN customers c ON c.customer_id = s.customer_id" if compiled.reads_profile else ""
    )
    sql = f"""
        WITH matching AS (
            SELECT s.customer_id FROM segment_candidates s {profile} {" ".join(compiled.joins)}
            WHERE {where}
        )
        """
    return sql, compiled.parameters


async def matching_customers(
    conn: asyncpg.Connection, rule: Rule, universe: str = EVERYONE, *arguments: Any
) -> list[str]:
    """Who the rule holds for among the universe (EVERYONE, or AMONG / IN_PARTITIONS with
    their argument), in customer order."""
    async with conn.transaction():
        sql, parameters = await _match(conn, rule, universe, arguments)
        rows = await conn.fetch(
            sql + "SELECT customer_id FROM matching ORDER BY customer_id", *parameters
        )
    return [row["customer_id"] for row in rows]


async def segment_verdicts(
    conn: asyncpg.Connection, segment: str, rule: Rule, universe: str = EVERYONE, *arguments: Any
) -> list[tuple[str, bool, Membership | None, int | None]]:
    """(customer, whether the rule holds, membership, crm.orders partition) of the customers
    of the universe whose membership of the segment the rule contradicts: those it holds for
    who are not members, and the members it no longer holds for."""
    async with conn.transaction():
        sql, parameters = await _match(conn, rule, universe, arguments)
        segment_parameter = f"${len(parameters) + 1}::text"
        rows = await conn.fetch(
            sql
            + f"""
            SELECT s.customer_id, s.orders_partition, true AS holds,
                   m.member, m.version, m.changed_at
            FROM matching x JOIN segment_candidates s USING (customer_id)
            LEFT JOIN segment_memberships m
                ON m.customer_id = x.customer_id AND m.segment = {segment_parameter}
            WHERE m.member IS NOT TRUE
            UNION ALL
            SELECT s.customer_id, s.orders_partition, false, m.member, m.version, m.changed_at
            FROM segment_memberships m JOIN segment_scope s USING (customer_id)
            WHERE m.segment = {segment_parameter} AND m.member
              AND NOT EXISTS (SELECT 1 FROM matching x WHERE x.customer_id = m.customer_id)
            ORDER BY 1
            """,
            *parameters,
            segment,
        )
    return [
        (r["customer_id"], r["holds"], _membership(r, segment), r["orders_partition"]) for r in rows
    ]


async def segment_definitions(
    conn: asyncpg.Connection, segment: str | None = None
) -> list[dict[str, Any]]:
    """Every operator segment's definition (or the one named) with its member count."""
    rows = await conn.fetch(
        """
        SELECT d.segment, d.description, d.rule, d.retired, d.time_dependent, d.changed_at,
               (SELECT count(*) FROM segment_memberships m
                WHERE m.segment = d.segment AND m.member)::bigint AS members
        FROM segment_definitions d WHERE $1::text IS NULL OR d.segment = $1
        ORDER BY d.segment
        """,
        segment,
    )
    return [dict(row) for row in rows]


async def segment_size(conn: asyncpg.Connection, segment: str) -> int:
    size: int = await conn.fetchval(
        "SELECT count(*) FROM segment_memberships WHERE segment = $1 AND member", segment
    )
    return size


async def segment_members(
    conn: asyncpg.Connection, segment: str, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """A page of a segment's members in customer order, after the cursor (a customer id)."""
    rows = await conn.fetch(
        """
        SELECT customer_id, version, changed_at AS since FROM segment_memberships
        WHERE segment = $1 AND member AND customer_id > coalesce($2, '')
        ORDER BY customer_id LIMIT $3
        """,
        segment,
        after,
        limit,
    )
    return [dict(row) for row in rows]


async def customer_segments(conn: asyncpg.Connection, customer_id: str) -> list[dict[str, Any]]:
    """The segments the customer is a member of, with when they entered and the version."""
    rows = await conn.fetch(
        """
        SELECT segment, version, changed_at AS since FROM segment_memberships
        WHERE customer_id = $1 AND member ORDER BY segment
        """,
        customer_id,
    )
    return [dict(row) for row in rows]
