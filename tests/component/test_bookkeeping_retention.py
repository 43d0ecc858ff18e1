"""applied_events stays bounded: ids leave after the deduplication window, duplicates inside it
are still dropped, and re-deliveries are caught by the positions whatever the window.

The profile projection's real fold through the BatchProjector, on real PostgreSQL, no Kafka.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import build_event, encode_event
from crm_shared.runtime.projector import BatchProjector, RawRecord
from crm_shared.runtime.retention import (
    PRUNE_CHUNK_ROWS,
    PRUNE_SQL,
    prune_applied_events,
    prune_outside_window,
)
from profile_service.config import ProfileSettings
from profile_service.worker import PROJECTION
from tests.component.plans import explained
from tests.component.pools import migrated_pool

pytestmark = pytest.mark.component

CUSTOMER = "C-retention"
WINDOW = ProfileSettings().dedup_window


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(fresh_dsn, PROJECTION.migrations) as pool:
        yield pool


@pytest.fixture
async def projector(pool: asyncpg.Pool) -> BatchProjector:
    async def no_dead_letters_expected(letters: Sequence[DeadLetter]) -> None:
        raise AssertionError(f"unexpected dead letters: {letters}")

    projector = BatchProjector(PROJECTION, pool, no_dead_letters_expected)
    await projector.reload_positions()
    return projector


def order(offset: int, event_id: str) -> RawRecord:
    """An order of one item at 10, as it would arrive at `offset` of crm.orders partition 0."""
    document = build_event(
        "crm.order.placed.v1",
        CUSTOMER,
        {"order_id": event_id, "lines": [{"product_id": "P", "quantity": 1, "unit_price": "10"}]},
        source="shop",
        time=datetime(2024, 5, 1, tzinfo=UTC),
        event_id=event_id,
    )
    return RawRecord("crm.orders", 0, offset, CUSTOMER.encode(), encode_event(document))


async def orders_folded(pool: asyncpg.Pool) -> int:
    folded: int = await pool.fetchval(
        "SELECT coalesce(max(orders), 0) FROM purchase_totals WHERE customer_id = $1", CUSTOMER
    )
    return folded


async def applied_ids(pool: asyncpg.Pool) -> set[str]:
    return {row["id"] for row in await pool.fetch("SELECT id FROM applied_events")}


async def make_older(pool: asyncpg.Pool, ids: Sequence[str], by: timedelta) -> None:
    """As if these events had been applied `by` earlier."""
    await pool.execute(
        "UPDATE applied_events SET applied_at = applied_at - $2::interval"
        " WHERE id = ANY($1::text[])",
        list(ids),
        by,
    )


def pruned_metric() -> float:
    value = REGISTRY.get_sample_value(
        "crm_applied_events_pruned_total", {"projection": PROJECTION.name}
    )
    return value or 0.0


async def test_a_republished_event_inside_the_window_is_dropped_after_pruning_too(
    pool: asyncpg.Pool, projector: BatchProjector
) -> None:
    await projector.process([order(0, "e1")])
    await make_older(pool, ["e1"], WINDOW - timedelta(hours=1))

    assert await prune_outside_window(pool, PROJECTION.name, WINDOW) == 0
    await projector.process([order(1, "e1")])  # same source and id, new offset

    assert await orders_folded(pool) == 1
    assert await applied_ids(pool) == {"e1"}


async def test_ids_older_than_the_window_are_pruned_and_ids_inside_it_kept(
    pool: asyncpg.Pool, projector: BatchProjector
) -> None:
    await projector.process([order(n, f"e{n}") for n in range(4)])
    await make_older(pool, ["e0", "e1"], WINDOW + timedelta(hours=1))
    await make_older(pool, ["e2"], WINDOW - timedelta(hours=1))
    before = pruned_metric()

    assert await prune_outside_window(pool, PROJECTION.name, WINDOW) == 2

    assert await applied_ids(pool) == {"e2", "e3"}
    assert pruned_metric() - before == 2
    assert await orders_folded(pool) == 4  # the view is not touched


async def test_pruning_goes_chunk_by_chunk_until_nothing_old_is_left(
    pool: asyncpg.Pool, projector: BatchProjector
) -> None:
    ids = [f"e{n}" for n in range(8)]
    await projector.process([order(n, event_id) for n, event_id in enumerate(ids)])
    await make_older(pool, ids[:7], WINDOW + timedelta(days=1))

    pruned = await prune_applied_events(pool, datetime.now(UTC) - WINDOW, chunk_rows=3)

    assert pruned == 7
    assert await applied_ids(pool) == {"e7"}


async def test_a_chunk_is_deleted_where_its_rows_lie_not_by_scanning_every_id(
    pool: asyncpg.Pool,
) -> None:
    """A long window holds many ids: each chunk finds its rows through the applied_at index and
    deletes them by address, however many ids the table holds."""
    await pool.execute(
        "INSERT INTO applied_events (source, id, type, event_time, applied_at)"
        " SELECT 'shop', 'e' || n, 'crm.order.placed.v1', now(),"
        "        now() - $2::interval - n * interval '1 second'"
        " FROM generate_series(1, $1) AS n",
        30_000,
        WINDOW,
    )
    await pool.execute(
        "UPDATE applied_events SET applied_at = now() WHERE id IN ('e1', 'e2', 'e3')"
    )  # inside the window
    await pool.execute("ANALYZE applied_events")
    before = datetime.now(UTC) - WINDOW

    plan = await explained(pool, PRUNE_SQL, before, PRUNE_CHUNK_ROWS)

    assert "Seq Scan" not in plan, plan
    assert "Tid Scan on applied_events" in plan, plan
    assert await prune_applied_events(pool, before) == 30_000 - 3  # six chunks
    assert await applied_ids(pool) == {"e1", "e2", "e3"}


async def test_once_pruned_a_redelivery_is_still_dropped_by_its_position(
    pool: asyncpg.Pool, projector: BatchProjector
) -> None:
    """The window's limit, on purpose: only a copy at a NEW offset, later than the window,
    is applied again; the same record read again is below the stored position."""
    await projector.process([order(0, "e1")])
    await make_older(pool, ["e1"], WINDOW + timedelta(hours=1))
    assert await prune_outside_window(pool, PROJECTION.name, WINDOW) == 1

    await projector.process([order(0, "e1")])  # a re-delivery: the same offset
    assert await orders_folded(pool) == 1

    await projector.process([order(1, "e1")])  # re-published after the window
    assert await orders_folded(pool) == 2


async def test_the_timers_call_prunes_by_the_configured_window(
    pool: asyncpg.Pool, projector: BatchProjector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_app's timer calls prune_outside_window with the service's dedup_window."""
    monkeypatch.setenv("CRM_PROFILE_DEDUP_WINDOW_DAYS", "1")
    settings = ProfileSettings()
    await projector.process([order(0, "old"), order(1, "recent")])
    await make_older(pool, ["old"], timedelta(days=2))
    await make_older(pool, ["recent"], timedelta(hours=12))

    assert await prune_outside_window(pool, PROJECTION.name, settings.dedup_window) == 1
    assert await applied_ids(pool) == {"recent"}
