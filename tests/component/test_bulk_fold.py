"""A rebuild's bulk fold on real PostgreSQL (no Kafka): folded into a shadow schema in large
batches, with the commerce rows of new ids appended by COPY, the profile's tables hold exactly
what the live fold wrote, row for row (every table's count and checksum)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.events import build_event
from crm_shared.runtime import shadow
from crm_shared.runtime.bulk import BulkFolder
from crm_shared.runtime.db import connect_in_schema
from crm_shared.runtime.projector import RawRecord
from profile_service.worker import PROJECTION
from tests.component.partition_logs import failing_after, folded_in_batches, interleaved
from tests.component.test_profile_commerce import LOGS, _placed, _records

pytestmark = pytest.mark.component

SHADOW = shadow.SHADOW_SCHEMA
DAY0 = datetime(2024, 5, 1, tzinfo=UTC)


@asynccontextmanager
async def _shadow_of(pool: asyncpg.Pool) -> AsyncIterator[tuple[asyncpg.Connection, BulkFolder]]:
    """A fresh shadow schema in the pool's database, and a bulk folder into it."""
    database = await pool.fetchval("SELECT current_database()")
    builder = await connect_in_schema(
        f"{os.environ['CRM_PG_DSN_BASE']}/{database}", SHADOW, synchronous_commit="off"
    )
    try:
        await shadow.create_shadow(builder, SHADOW, PROJECTION.migrations)
        yield builder, BulkFolder(PROJECTION, builder, consumer="profile-test")
    finally:
        await builder.close()


async def _bulk_folded_beside_live(records: Sequence[RawRecord], size: int) -> list[str]:
    """The records folded live one by one into `public` and in bulk batches of `size` into the
    shadow of the same database; the tables whose fingerprints differ (with both fingerprints)."""
    async with folded_in_batches(PROJECTION, records, 1) as pool, _shadow_of(pool) as (_, folder):
        for start in range(0, len(records), size):
            batch = records[start : start + size]
            await folder.fold(await folder.decode(batch), len(batch))
        async with pool.acquire() as conn:
            live = await shadow.fingerprints(conn, "public", PROJECTION.rebuild_rules)
            rebuilt = await shadow.fingerprints(conn, SHADOW, PROJECTION.rebuild_rules)
    assert "orders" in live and "order_lines" in live
    return [
        f"{table}: {live.get(table)} != {rebuilt.get(table)}"
        for table in sorted(live.keys() | rebuilt.keys())
        if live.get(table) != rebuilt.get(table)
    ]


@pytest.mark.parametrize(("size", "reverse"), [(1000, False), (3, False), (1000, True), (4, True)])
async def test_a_bulk_fold_leaves_every_table_as_the_live_fold_does(
    size: int, reverse: bool
) -> None:
    assert await _bulk_folded_beside_live(_records(reverse), size) == []


async def test_an_order_id_placed_again_earlier_in_a_later_batch_replaces_the_appended_row() -> (
    None
):
    """The first batch appends O9 placed on day 8; a later batch places O9 again on day 2 (an
    earlier event wins): the upsert, not the append, must take it, as live."""
    logs = {0: [_placed("Z", "O9", 8, "10"), *LOGS[0], _placed("Z", "O9", 2, "3", "4")]}
    records = interleaved(logs, "crm.orders")
    assert await _bulk_folded_beside_live(records, 2) == []


def _event(kind: str, subject: str, day: int, data: dict[str, Any]) -> dict[str, Any]:
    at = DAY0 + timedelta(days=day)
    return build_event(kind, subject, data, source="shop", time=at, event_id=f"{kind}-{day}")


def _order(subject: str, day: int) -> dict[str, Any]:
    line = {"product_id": "P", "quantity": 1, "unit_price": "10"}
    return _event("crm.order.placed.v1", subject, day, {"order_id": f"o{day}", "lines": [line]})


@pytest.mark.parametrize("poisoned", [False, True])
async def test_a_catch_up_watches_the_records_its_persons_share(poisoned: bool) -> None:
    """Before the catch-up: visitor2 merged into visitor, visitor into ann; carl holds
    carl@x.test, which orders named. The catch-up: an order of visitor2 (the person ann is
    evaluated again) and bob taking carl@x.test (its alias leaves carl for bob). The records
    whose rows may change without being named must be watched, also when the catch-up holds an
    event that fails to fold (its batch is folded again event by event)."""
    customers = [
        _event("crm.customer.registered.v1", "ann", 1, {"email": "ann@x.test"}),
        _event("crm.customer.merged.v1", "visitor", 2, {"merged_customer_id": "visitor2"}),
        _event("crm.customer.merged.v1", "ann", 3, {"merged_customer_id": "visitor"}),
        _event("crm.customer.registered.v1", "carl", 4, {"email": "carl@x.test"}),
        _event("crm.customer.registered.v1", "bob", 5, {"email": "bob@x.test"}),
        _event("crm.customer.updated.v1", "bob", 9, {"email": "carl@x.test"}),
    ]
    orders = [_order("visitor2", 6), _order("email:carl@x.test", 7), _order("visitor2", 8)]
    before = [*interleaved({0: customers[:5]}, "crm.customers")]
    before += interleaved({0: orders[:2]}, "crm.orders")
    catch_up = [*interleaved({0: orders}, "crm.orders")[2:]]
    catch_up += interleaved({0: customers}, "crm.customers")[5:]
    poison = _order("zed", 10)
    if poisoned:
        catch_up += interleaved({0: [*orders, poison]}, "crm.orders")[3:]
    async with (
        folded_in_batches(PROJECTION, [], 1) as pool,
        _shadow_of(pool) as (builder, folder),
    ):
        await folder.fold(await folder.decode(before), len(before))
        folder.fold_batch = failing_after(folder.fold_batch, poison["id"], ValueError, when=2)
        folder.watch()
        await folder.fold(await folder.decode(catch_up), len(catch_up))
        persons = dict(await builder.fetch("SELECT record_id, person_id FROM person_records"))
    assert persons["email:carl@x.test"] == "bob"  # the catch-up moved the alias
    assert folder.tally.failed == ([poison["id"]] if poisoned else [])
    assert folder.touched is not None
    assert {"visitor2", "bob"} < folder.touched  # named by the catch-up's events
    assert {"ann", "visitor", "carl", "email:carl@x.test"} <= folder.touched
