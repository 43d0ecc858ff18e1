"""The relay's pruning of sent outbox rows: those sent longer ago than `keep_sent` go, unsent and
recent ones stay, and the delete finds them through the sent-time index (it runs after every
relay pass, so a whole-table scan each time cost a sixth of the platform's PostgreSQL time)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import asyncpg
import pytest

from crm_shared.runtime.derived import Derived
from crm_shared.runtime.outbox import PRUNE_SENT_SQL, OutboxRelay, write
from interaction_service.worker import PROJECTION
from tests.component.pools import migrated_pool

pytestmark = pytest.mark.component


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(fresh_dsn, PROJECTION.migrations) as pool:
        yield pool


def derived(n: int) -> Derived:
    return Derived("crm.journeys", b"C-1", b"{}", f"derived-{n}", "crm.journey.stage.changed.v1")


async def ignore(sent: Sequence[Derived]) -> None:
    return None


async def test_sent_rows_older_than_kept_are_pruned_and_the_rest_stay(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await write(conn, [derived(n) for n in range(4)])
    await pool.execute(
        "UPDATE outbox SET sent_at = now() - interval '1 hour' WHERE event_id IN"
        " ('derived-0', 'derived-1')"
    )
    await pool.execute("UPDATE outbox SET sent_at = now() WHERE event_id = 'derived-2'")
    relay = OutboxRelay("interaction", pool, ignore, keep_sent=timedelta(minutes=10))
    await relay.report_and_prune()
    left = await pool.fetch("SELECT event_id, sent_at IS NULL AS unsent FROM outbox ORDER BY seq")
    assert [(row["event_id"], row["unsent"]) for row in left] == [
        ("derived-2", False),
        ("derived-3", True),
    ]


async def test_the_prune_reads_the_sent_time_index(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetch(f"EXPLAIN {PRUNE_SENT_SQL}", timedelta(minutes=10))
    shown = "\n".join(row[0] for row in plan)
    assert "Index Cond: (sent_at <" in shown, shown  # the bound reaches the index
