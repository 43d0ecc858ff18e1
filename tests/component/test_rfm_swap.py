"""The RFM scores swapped in on a real PostgreSQL: a refresh leaves exactly what the scoring view
computes, under the same table and index names; a statement prepared before it reads the new
scores; two refreshes at once take turns; and a refresh that cannot get its swap lock gives up,
leaving the old scores and nothing half-built."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.events import build_event
from profile_service import store
from profile_service.worker import PROJECTION
from tests.component.partition_logs import folded_in_batches, interleaved

pytestmark = pytest.mark.component

DAY0 = datetime(2024, 1, 1, tzinfo=UTC)
COMPUTED = "SELECT * FROM rfm_scores_computed ORDER BY currency, customer_id"


def placed(customer: str, order: str, day: int, price: str) -> dict[str, Any]:
    lines = [{"product_id": "P1", "quantity": 1, "unit_price": price}]
    return build_event(
        "crm.order.placed.v1",
        customer,
        {"order_id": order, "lines": lines},
        source="shop",
        time=DAY0 + timedelta(days=day),
        event_id=order,
    )


LOGS = {
    0: [placed("c1", "o1", 0, "10.00"), placed("c2", "o2", 1, "20.00")],
    1: [placed("c3", "o3", 2, "30.00"), placed("c1", "o4", 3, "5.00")],
}


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with folded_in_batches(PROJECTION, interleaved(LOGS, "crm.orders"), 10) as pool:
        yield pool


async def stored_scores(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT * FROM rfm_scores ORDER BY currency, customer_id")
    return [tuple(row) for row in rows]


async def leftover_next_table(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('rfm_scores_next') IS NOT NULL"))


async def test_a_refresh_leaves_what_the_scoring_computes_under_the_same_names(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        assert await stored_scores(conn) == []  # folded, not refreshed yet
        await store.refresh_rfm(conn)
        computed = await conn.fetch(COMPUTED)
        assert len(computed) == 3
        assert await stored_scores(conn) == [tuple(row) for row in computed]
        indexes = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = $1", "rfm_scores"
        )
        assert {row["indexname"] for row in indexes} == {"rfm_scores_key", "rfm_scores_customer"}
        assert not await leftover_next_table(conn)


async def test_a_statement_prepared_before_a_refresh_reads_the_new_scores(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as reader, pool.acquire() as refresher:
        counted = await reader.prepare("SELECT count(*) FROM rfm_scores")
        assert await counted.fetchval() == 0
        await store.refresh_rfm(refresher)
        assert await counted.fetchval() == 3


async def test_two_refreshes_at_once_take_turns(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as first, pool.acquire() as second:
        await asyncio.gather(store.refresh_rfm(first), store.refresh_rfm(second))
        assert len(await stored_scores(first)) == 3
        assert not await leftover_next_table(first)


async def test_a_refresh_that_cannot_swap_gives_up_and_keeps_the_old_scores(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as reader, pool.acquire() as refresher:
        await store.refresh_rfm(refresher)
        before = await stored_scores(refresher)
        await refresher.execute("UPDATE orders SET amount = amount * 2")
        assert [tuple(row) for row in await refresher.fetch(COMPUTED)] != before
        async with reader.transaction():
            await reader.fetch("SELECT * FROM rfm_scores")  # a long read holds the old table
            with pytest.raises(asyncpg.LockNotAvailableError):
                await store.refresh_rfm(refresher)
        assert await stored_scores(refresher) == before
        assert not await leftover_next_table(refresher)
