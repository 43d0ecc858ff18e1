"""Hand-written partition logs as a consumer might read them, for fold tests without Kafka."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import CLOCK_SUBJECT, Event, build_event, encode_event
from crm_shared.runtime.db import open_pool
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import BatchProjector, Fold, Projection, RawRecord


def orders_tick(partition: int, at: datetime) -> dict[str, Any]:
    """The clock's tick at `at` in one partition of crm.orders."""
    return build_event(
        "crm.clock.ticked.v1",
        CLOCK_SUBJECT,
        {"topic": "crm.orders", "partition": partition},
        source="crm-clock",
        time=at,
        event_id=f"tick:{at.isoformat()}:crm.orders:{partition}",
    )


def interleaved(logs: Mapping[int, Sequence[dict[str, Any]]], topic: str) -> list[RawRecord]:
    """The partitions' events interleaved offset by offset, each partition in its own order."""
    records = []
    for offset in range(max(len(log) for log in logs.values())):
        for partition, log in logs.items():
            if offset < len(log):
                event = log[offset]
                records.append(
                    RawRecord(
                        topic,
                        partition,
                        offset,
                        str(event["subject"]).encode(),
                        encode_event(event),
                    )
                )
    return records


def failing_after(fold: Fold, poison_id: str, fails: type[Exception], when: int) -> Fold:
    """`fold`, then `fails` raised, the first `when` times it folds the event `poison_id`:
    a failure after the fold has written and counted."""
    calls = 0

    async def fold_then_fail(
        conn: asyncpg.Connection, events: Sequence[Event]
    ) -> Sequence[Derived]:
        nonlocal calls
        derived = await fold(conn, events)
        if any(event.id == poison_id for event in events) and calls < when:
            calls += 1
            raise fails("failed after the fold")
        return derived

    return fold_then_fail


async def no_dead_letters(letters: Sequence[DeadLetter]) -> None:
    raise AssertionError(f"unexpected dead letters: {letters}")


async def fold_more(
    projection: Projection, pool: asyncpg.Pool, records: Sequence[RawRecord]
) -> None:
    """Fold records that continue the logs already folded into the pool, as a worker restarted
    from the stored positions would."""
    projector = BatchProjector(projection, pool, no_dead_letters)
    await projector.reload_positions()
    await projector.process(records)


@asynccontextmanager
async def folded_in_batches(
    projection: Projection, records: Sequence[RawRecord], size: int
) -> AsyncIterator[asyncpg.Pool]:
    """A fresh database of the projection fed the records in batches of `size` (any dead
    letter fails the test), dropped afterwards."""
    base = os.environ.get("CRM_PG_DSN_BASE")
    if not base:
        pytest.fail("component tests need PostgreSQL: run them with ./crm test")
    name = f"crm_component_{uuid.uuid4().hex[:12]}"
    pool = await open_pool(f"{base}/{name}", projection.migrations, 2)
    try:
        projector = BatchProjector(projection, pool, no_dead_letters)
        await projector.reload_positions()
        for start in range(0, len(records), size):
            await projector.process(records[start : start + size])
        yield pool
    finally:
        await pool.close()
        admin = await asyncpg.connect(f"{base}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
