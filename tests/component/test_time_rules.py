"""A time rule replays exactly: the profile's "lapsed" segment, folded from orders and clock ticks
through the BatchProjector on real PostgreSQL (no Kafka), gives the same memberships and derives
the same events, under the same ids, whatever the batch boundaries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_shared.contracts.events import build_event
from crm_shared.runtime.projector import RawRecord
from profile_service.worker import PROJECTION
from tests.component.partition_logs import folded_in_batches, interleaved, orders_tick

pytestmark = pytest.mark.component

DAY0 = datetime(2024, 1, 1, tzinfo=UTC)


def _order(customer: str, day: int) -> dict[str, Any]:
    return build_event(
        "crm.order.placed.v1",
        customer,
        {
            "order_id": f"{customer}-{day}",
            "lines": [{"product_id": "P", "quantity": 1, "unit_price": "5"}],
        },
        source="shop",
        time=DAY0 + timedelta(days=day),
        event_id=f"{customer}-{day}",
    )


def _tick(partition: int, day: int) -> dict[str, Any]:
    return orders_tick(partition, DAY0 + timedelta(days=day))


# Each partition's log, in order. A and C live on partition 0, B on partition 1.
LOGS: dict[int, list[dict[str, Any]]] = {
    0: [
        _order("A", 0),
        _tick(0, 20),
        _order("C", 25),
        _tick(0, 31),  # A lapses (31 days), C does not (6)
        _order("A", 40),  # A comes back
        _tick(0, 56),  # C lapses (31 days), A does not (16)
        _tick(0, 71),  # A lapses again (31 days)
    ],
    1: [_order("B", 10), _tick(1, 31), _tick(1, 45)],  # B lapses at day 45 (35 days)
}
EXPECTED = {"A": (True, 3), "B": (True, 1), "C": (True, 1)}
"""(member, version): A entered, left and entered again."""


def _records() -> list[RawRecord]:
    """The two partitions as a consumer might see them: interleaved, each in its own order."""
    return interleaved(LOGS, "crm.orders")


async def _fold_in_batches_of(size: int) -> tuple[dict[str, tuple[bool, int]], list[Any]]:
    """Memberships and outbox of a fresh profile database fed the log in batches of `size`."""
    async with folded_in_batches(PROJECTION, _records(), size) as pool:
        rows = await pool.fetch(
            "SELECT customer_id, member, version FROM segment_memberships WHERE segment = 'lapsed'"
        )
        outbox = await pool.fetch("SELECT key, type, event_id, value FROM outbox ORDER BY seq")
        memberships = {r["customer_id"]: (r["member"], r["version"]) for r in rows}
        return memberships, [
            (
                r["key"].decode(),
                r["type"].split(".")[2],
                json.loads(r["value"])["data"]["version"],
                r["event_id"],
            )
            for r in outbox
        ]


async def test_the_lapse_rule_derives_the_same_events_whatever_the_batch_boundaries() -> None:
    one_by_one, derived = await _fold_in_batches_of(1)
    assert one_by_one == EXPECTED
    assert [change[:3] for change in derived] == [
        ("B", "entered", 1),  # partition 1's tick of day 45 is read before partition 0's of 31
        ("A", "entered", 1),  # day 31
        ("A", "left", 2),  # buys on day 40
        ("C", "entered", 1),  # day 56
        ("A", "entered", 3),  # day 71
    ]
    assert len({change[3] for change in derived}) == 5
    for size in (3, 7, len(_records())):
        memberships, again = await _fold_in_batches_of(size)
        assert memberships == EXPECTED, size
        assert sorted(again) == sorted(derived), f"batches of {size} derived other events"
