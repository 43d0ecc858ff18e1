"""Unified identity on real PostgreSQL (no Kafka): an identifier two customers claim belongs to
the newer claim by event time, whatever order and batches the events are processed in, and a
customer who moves to another value no longer answers to the old one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_shared.contracts.events import build_event
from profile_service import store
from profile_service.worker import PROJECTION
from tests.component.partition_logs import folded_in_batches, interleaved

pytestmark = pytest.mark.component

DAY0 = datetime(2024, 3, 1, tzinfo=UTC)


def _customer(kind: str, customer: str, day: int, identifiers: dict[str, str]) -> dict[str, Any]:
    return build_event(
        f"crm.customer.{kind}.v1",
        customer,
        {"identifiers": identifiers},
        source="pos",
        time=DAY0 + timedelta(days=day),
        event_id=f"{customer}-{kind}-{day}",
    )


# Partition 0 holds A, partition 1 holds B (a customer's events share a partition, by key).
LOGS = {
    0: [
        _customer("registered", "A", 1, {"email": "shared@x.test", "loyalty": "L-1"}),
        _customer("updated", "A", 5, {"loyalty": "L-2"}),  # A's card replaced: L-1 is stale
    ],
    1: [
        _customer("registered", "B", 3, {"email": "shared@x.test"}),  # newer claim than A's
        _customer("updated", "B", 4, {"loyalty": "L-1"}),  # the old card given to B
    ],
}

EXPECTED = {
    ("email", "shared@x.test"): "B",
    ("loyalty", "L-1"): "B",
    ("loyalty", "L-2"): "A",
    ("loyalty", "L-9"): None,
}


@pytest.mark.parametrize(("size", "reverse"), [(1, False), (1, True), (3, False), (100, True)])
async def test_identifiers_follow_event_time_whatever_the_processing_order(
    size: int, reverse: bool
) -> None:
    logs = {p: list(reversed(log)) if reverse else log for p, log in LOGS.items()}
    if reverse:  # B's partition first as well
        logs = dict(reversed(list(logs.items())))
    async with (
        folded_in_batches(PROJECTION, interleaved(logs, "crm.customers"), size) as pool,
        pool.acquire() as conn,
    ):
        found = {key: await store.find_by_identifier(conn, *key) for key in EXPECTED}
    assert found == EXPECTED


async def test_a_customer_moving_away_leaves_the_value_to_the_remaining_claim() -> None:
    """A claimed the e-mail first, B later; when B moves to another address, A has it again."""
    logs = {
        0: [_customer("registered", "A", 1, {"email": "shared@x.test"})],
        1: [
            _customer("registered", "B", 3, {"email": "shared@x.test"}),
            _customer("updated", "B", 6, {"email": "b@x.test"}),
        ],
    }
    async with (
        folded_in_batches(PROJECTION, interleaved(logs, "crm.customers"), 1) as pool,
        pool.acquire() as conn,
    ):
        assert await store.find_by_identifier(conn, "email", "shared@x.test") == "A"
        assert await store.find_by_identifier(conn, "email", "b@x.test") == "B"
