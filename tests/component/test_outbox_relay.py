"""The outbox relay on a real PostgreSQL: it publishes the oldest events in order and deletes them
in the same transaction, a send that fails leaves every row for the next pass, the backlog it
reports is what is left (also while Kafka is away, at most once every `report_seconds`), a backlog
is taken by its primary key, not by scanning the table, and the migration drops the rows an older
relay had marked sent."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest
from prometheus_client import REGISTRY

from crm_shared.runtime.db import apply_migrations
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.outbox import TAKE_OLDEST_SQL, OutboxRelay, write
from interaction_service.worker import PROJECTION
from tests.component.plans import explained

pytestmark = pytest.mark.component

OUTBOX_MIGRATION = "crm_shared/003_outbox_deleted_when_sent.sql"


def derived(n: int) -> Derived:
    return Derived("crm.journeys", b"C-1", b"{}", f"derived-{n}", "crm.journey.stage.changed.v1")


class Kafka:
    """Records what the relay sends; fails every send while `down`."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.down = False

    async def send(self, batch: Sequence[Derived]) -> None:
        if self.down:
            raise ConnectionError("broker away")
        self.sent.extend(item.event_id for item in batch)


async def left_in_outbox(interaction_pool: asyncpg.Pool) -> list[str]:
    return [
        row["event_id"]
        for row in await interaction_pool.fetch("SELECT event_id FROM outbox ORDER BY seq")
    ]


async def test_the_oldest_events_are_published_in_order_and_deleted(
    interaction_pool: asyncpg.Pool,
) -> None:
    async with interaction_pool.acquire() as conn:
        await write(conn, [derived(n) for n in range(3)])
        await write(conn, [derived(n) for n in range(3, 5)])
    kafka = Kafka()
    relay = OutboxRelay("interaction", interaction_pool, kafka.send, batch_size=3)
    assert await relay.relay_once() == 3
    assert kafka.sent == ["derived-0", "derived-1", "derived-2"]
    assert await left_in_outbox(interaction_pool) == ["derived-3", "derived-4"]
    assert await relay.relay_once() == 2
    assert await relay.relay_once() == 0
    assert kafka.sent == [f"derived-{n}" for n in range(5)]
    assert await left_in_outbox(interaction_pool) == []


async def test_a_failed_send_leaves_every_row_for_the_next_pass(
    interaction_pool: asyncpg.Pool,
) -> None:
    async with interaction_pool.acquire() as conn:
        await write(conn, [derived(n) for n in range(4)])
    kafka = Kafka()
    kafka.down = True
    relay = OutboxRelay("interaction", interaction_pool, kafka.send, batch_size=3)
    with pytest.raises(ConnectionError):
        await relay.relay_once()
    assert await left_in_outbox(interaction_pool) == [f"derived-{n}" for n in range(4)]
    kafka.down = False
    assert await relay.relay_once() == 3
    assert await relay.relay_once() == 1
    assert kafka.sent == [f"derived-{n}" for n in range(4)]


async def test_a_backlog_is_taken_by_its_primary_key_whatever_the_statistics_say(
    interaction_pool: asyncpg.Pool,
) -> None:
    """Statistics taken while the outbox was nearly empty, then a backlog of thousands of rows
    (a relay behind its fold): the take still finds its rows by the primary key, in the plan
    made for its limit and in the generic plan, and relays the oldest first."""
    async with interaction_pool.acquire() as conn:
        await write(conn, [derived(n) for n in range(300)])
        await conn.execute("ANALYZE outbox")
        await write(conn, [derived(n) for n in range(300, 20_000)])
        plan = await explained(conn, TAKE_OLDEST_SQL, 500)
        await conn.execute(f"PREPARE take_oldest(int) AS {TAKE_OLDEST_SQL}")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        generic = await explained(conn, "EXECUTE take_oldest(500)")
        await conn.execute("DEALLOCATE take_oldest")
    for text in (plan, generic):
        assert "Seq Scan" not in text, text
        assert "Index Scan using outbox_pkey on outbox" in text, text
    kafka = Kafka()
    relay = OutboxRelay("interaction", interaction_pool, kafka.send, batch_size=500)
    assert await relay.relay_once() == 500
    assert kafka.sent == [f"derived-{n}" for n in range(500)]


async def test_the_backlog_reported_is_what_is_left(interaction_pool: asyncpg.Pool) -> None:
    async with interaction_pool.acquire() as conn:
        await write(conn, [derived(n) for n in range(5)])
    relay = OutboxRelay("outbox-test", interaction_pool, Kafka().send, batch_size=2)
    await relay.relay_once()
    await relay.report()
    labels = {"projection": "outbox-test"}
    assert REGISTRY.get_sample_value("crm_outbox_backlog", labels) == 3
    age = REGISTRY.get_sample_value("crm_outbox_oldest_age_seconds", labels)
    assert age is not None and age > 0


async def test_the_backlog_is_reported_while_kafka_is_away(interaction_pool: asyncpg.Pool) -> None:
    """The alert on a stuck outbox watches the oldest event's age: it must grow while every
    send fails, not stay at what the last successful pass saw."""
    async with interaction_pool.acquire() as conn:
        await write(conn, [derived(n) for n in range(2)])
    await interaction_pool.execute("UPDATE outbox SET created_at = now() - interval '2 minutes'")
    kafka = Kafka()
    kafka.down = True
    relay = OutboxRelay("outbox-away", interaction_pool, kafka.send)
    labels = {"projection": "outbox-away"}
    relaying = asyncio.create_task(relay.run((ConnectionError,)))
    try:
        for _ in range(50):
            if REGISTRY.get_sample_value("crm_outbox_backlog", labels) is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
    assert REGISTRY.get_sample_value("crm_outbox_backlog", labels) == 2
    assert (REGISTRY.get_sample_value("crm_outbox_oldest_age_seconds", labels) or 0) >= 120
    assert kafka.sent == []
    assert await left_in_outbox(interaction_pool) == ["derived-0", "derived-1"]


async def test_the_backlog_is_reported_while_the_relay_catches_up(
    interaction_pool: asyncpg.Pool,
) -> None:
    async with interaction_pool.acquire() as conn:
        await write(conn, [derived(n) for n in range(6)])
    labels = {"projection": "outbox-catching-up"}
    seen: list[float | None] = []

    async def send(batch: Sequence[Derived]) -> None:
        seen.append(REGISTRY.get_sample_value("crm_outbox_backlog", labels))

    relay = OutboxRelay(
        "outbox-catching-up", interaction_pool, send, batch_size=2, report_seconds=0
    )
    relaying = asyncio.create_task(relay.run((ConnectionError,)))
    try:
        for _ in range(50):
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.1)
    finally:
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
    assert seen[:3] == [None, 4, 2]  # what the previous full pass left, reported before the next


async def test_reports_are_spaced_by_report_seconds(interaction_pool: asyncpg.Pool) -> None:
    spaced = OutboxRelay("outbox-spaced", interaction_pool, Kafka().send, report_seconds=3600)
    labels = {"projection": "outbox-spaced"}
    await spaced.report_when_due()
    assert REGISTRY.get_sample_value("crm_outbox_backlog", labels) == 0
    async with interaction_pool.acquire() as conn:
        await write(conn, [derived(n) for n in range(3)])
    await spaced.report_when_due()
    assert REGISTRY.get_sample_value("crm_outbox_backlog", labels) == 0  # not due yet
    await OutboxRelay(
        "outbox-spaced", interaction_pool, Kafka().send, report_seconds=0
    ).report_when_due()
    assert REGISTRY.get_sample_value("crm_outbox_backlog", labels) == 3


async def test_the_migration_drops_the_rows_marked_sent_before_it(
    interaction_pool: asyncpg.Pool,
) -> None:
    """An outbox as the relay that marked rows sent left it (002_outbox): its sent rows go, its
    unsent ones stay, in order."""
    async with interaction_pool.acquire() as conn:
        await conn.execute("DELETE FROM schema_migrations WHERE name = $1", OUTBOX_MIGRATION)
        await conn.execute("ALTER TABLE outbox ADD COLUMN sent_at timestamptz")
        await conn.execute("CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL")
        await write(conn, [derived(n) for n in range(4)])
        await conn.execute(
            "UPDATE outbox SET sent_at = now() WHERE event_id IN ('derived-0', 'derived-2')"
        )
        assert await apply_migrations(conn, PROJECTION.migrations) == [OUTBOX_MIGRATION]
    assert await left_in_outbox(interaction_pool) == ["derived-1", "derived-3"]
    columns = await interaction_pool.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'outbox'"
    )
    assert "sent_at" not in {row["column_name"] for row in columns}
