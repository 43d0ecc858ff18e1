"""How PostgreSQL plans the interaction API's timeline reads, on real PostgreSQL: a page and an
overview are planned once per connection (the customer 360's reads, migration 009), the plan
made without the customer walks an index in page order even for a customer with 10,000
touchpoints among thousands of others, and the pages whose filters no index serves in that
order are planned for their customer every time."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from crm_shared.runtime.db import open_pool
from interaction_service import store
from interaction_service.config import MIGRATIONS
from interaction_service.projection import TimelinePosition, TimelineQuery
from tests.component.plans import plans_between, plans_made
from tests.component.pools import migrated_pool

pytestmark = pytest.mark.component

NOW = datetime(2026, 6, 1, tzinfo=UTC)
HEAVY = "heavy"
READS = 12


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(fresh_dsn, MIGRATIONS, size=4) as pool:
        yield pool


async def _add_timelines(pool: asyncpg.Pool, heavy: int, others: int, each: int) -> None:
    """`heavy` touchpoints of one customer, `each` of `others` customers, of several kinds,
    channels and departments over a year; then statistics, as autovacuum would take them."""
    columns = (
        "source, event_id, customer_id, occurred_at, kind, event_type, channel, summary, "
        "details, recorded_at, direction, department"
    )
    values = (
        "'shop', {id}, {customer}, $1::timestamptz - {age}, "
        "(ARRAY['contact', 'order', 'session', 'message', 'feedback'])[1 + n % 5], "
        "'crm.contact.logged.v1', (ARRAY['email', 'phone', NULL])[1 + n % 3], 'seen', '{{}}', "
        "$1::timestamptz - {age} + interval '30 seconds', 'inbound', "
        "CASE WHEN n % 5 = 0 THEN 'support' END"
    )
    await pool.execute(
        f"INSERT INTO timeline ({columns}) SELECT "
        + values.format(id="'h' || n", customer=f"'{HEAVY}'", age="n * interval '50 minutes'")
        + " FROM generate_series(1, $2) AS n",
        NOW,
        heavy,
    )
    await pool.execute(
        f"INSERT INTO timeline ({columns}) SELECT "
        + values.format(id="'o' || n", customer="'C' || n % $3", age="n * interval '1 hour'")
        + " FROM generate_series(1, $2) AS n",
        NOW,
        others * each,
        others,
    )
    await pool.execute(
        "INSERT INTO contact_summary (customer_id, touchpoints, first_touchpoint_at,"
        " last_touchpoint_at) SELECT customer_id, count(*), min(occurred_at), max(occurred_at)"
        " FROM timeline GROUP BY customer_id"
    )
    await pool.execute("ANALYZE timeline; ANALYZE contact_summary")


SHAPES_IN_PAGE_ORDER = {
    "the newest first": (TimelineQuery(), None),
    "the oldest first": (TimelineQuery(newest_first=False), None),
    "a next page": (TimelineQuery(), TimelinePosition(NOW - timedelta(days=30), "shop", "h1")),
    "one kind": (TimelineQuery(kinds=("contact",)), None),
    "one channel": (TimelineQuery(channels=("email",)), None),
    "one department": (TimelineQuery(departments=("support",)), None),
    "a kind on a channel": (TimelineQuery(kinds=("contact",), channels=("email",)), None),
    "a period": (
        TimelineQuery(occurred_from=NOW - timedelta(days=200), occurred_before=NOW),
        None,
    ),
}
"""Page reads whose filters an index of the timeline serves in event-time order."""

SHAPES_FOR_THEIR_CUSTOMER = {
    "event types": TimelineQuery(event_types=("crm.contact.logged.v1",)),
    "two kinds": TimelineQuery(kinds=("contact", "order")),
    "recorded after": TimelineQuery(recorded_after=NOW - timedelta(days=2)),
}
"""Page reads no index serves in that order: a plan made without the customer may sort."""


async def test_a_page_and_an_overview_are_planned_once_per_connection(
    pool: asyncpg.Pool,
) -> None:
    await _add_timelines(pool, heavy=200, others=100, each=3)
    async with pool.acquire() as conn:
        before = await plans_made(conn)
        for n in range(READS):
            entries, summary = await store.overview(conn, f"C{n}", as_of=NOW, limit=21)
            assert summary is not None and len(entries) == 3
            page = await store.timeline_page(
                conn, f"C{n}", TimelineQuery(), as_of=NOW, after=None, limit=21
            )
            assert [row["event_id"] for row in page] == [row["event_id"] for row in entries]
        plans = plans_between(before, await plans_made(conn), "FROM timeline")
    assert len(plans) == 2, plans  # the overview's statement and the page's
    for generic, custom in plans:
        assert custom <= 5 and generic == READS - custom, plans


@pytest.mark.parametrize("shape", SHAPES_IN_PAGE_ORDER)
async def test_the_plan_made_without_the_customer_walks_an_index_in_page_order(
    pool: asyncpg.Pool, shape: str
) -> None:
    """Even for the customer with 10,000 touchpoints, whose statistics are not the others': it
    reads the page's rows only, rather than all of them and a sort."""
    await _add_timelines(pool, heavy=10_000, others=4_000, each=10)
    query, after = SHAPES_IN_PAGE_ORDER[shape]
    statement, arguments = store.page_statement(HEAVY, query, as_of=NOW, after=after, limit=21)
    assert not store.planned_for_its_customer(query)
    async with pool.acquire() as conn:
        await conn.execute(f"PREPARE page AS {statement}")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        # A generic plan does not depend on the values: NULLs stand in for them.
        nulls = ", ".join("NULL" for _ in arguments)
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE page({nulls})"))
        await conn.execute("DEALLOCATE page; RESET plan_cache_mode")
        rows = await store.timeline_page(conn, HEAVY, query, as_of=NOW, after=after, limit=21)
    assert "Sort" not in plan and "Index Scan" in plan and "$1" in plan, plan
    assert len(rows) == 21


async def test_a_page_no_index_serves_in_order_is_planned_for_its_customer_every_time(
    pool: asyncpg.Pool,
) -> None:
    await _add_timelines(pool, heavy=200, others=100, each=3)
    async with pool.acquire() as conn:
        before = await plans_made(conn)
        for query in SHAPES_FOR_THEIR_CUSTOMER.values():
            assert store.planned_for_its_customer(query)
            for n in range(READS):
                await store.timeline_page(conn, f"C{n}", query, as_of=NOW, after=None, limit=21)
        plans = plans_between(before, await plans_made(conn), "FROM timeline")
        mode = await conn.fetchval("SHOW plan_cache_mode")
    assert len(plans) == len(SHAPES_FOR_THEIR_CUSTOMER), plans
    assert all(made == (0, READS) for made in plans), plans
    assert mode == "auto"  # SET LOCAL: the connection goes back to the pool as it came


async def test_every_connection_of_a_pool_takes_the_defaults_its_migrations_leave(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """Migration 003 set the database's plan cache mode for new sessions and 009 resets it: each
    takes effect on every connection of the pool that migrated, the one that ran it included
    (open_pool renews them)."""
    until_003 = tmp_path / "interaction-service" / "migrations"
    until_003.mkdir(parents=True)
    for path in sorted(MIGRATIONS.glob("00[1-3]_*.sql")):
        shutil.copy(path, until_003 / path.name)
    for migrations, expected in ((until_003, "force_custom_plan"), (MIGRATIONS, "auto")):
        pool = await open_pool(fresh_dsn, migrations, 4)
        try:
            connections = [await pool.acquire() for _ in range(4)]
            modes = [await c.fetchval("SHOW plan_cache_mode") for c in connections]
            for connection in connections:
                await pool.release(connection)
        finally:
            await pool.close()
        assert modes == [expected] * 4
