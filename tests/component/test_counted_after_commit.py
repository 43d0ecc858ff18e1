"""What a fold counts is counted once the batch commits: a batch that fails after its fold and is
folded again (event by event to isolate poison, or whole after a serialization failure) counts
each event once. The interaction projection's real fold through the BatchProjector, on real
PostgreSQL, no Kafka; the failure is injected after the real fold has run and counted."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import pytest
from prometheus_client import REGISTRY

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import build_event, encode_event
from crm_shared.runtime.projector import BatchProjector, RawRecord
from interaction_service.worker import PROJECTION
from tests.component.partition_logs import failing_after

pytestmark = pytest.mark.component

POISON = "contact-poison"


def contact(offset: int, event_id: str) -> RawRecord:
    """A logged phone call of its own customer, at `offset` of crm.contacts partition 0."""
    customer = f"C-{event_id}"
    document = build_event(
        "crm.contact.logged.v1",
        customer,
        {
            "channel": "phone",
            "direction": "inbound",
            "department": "Customer Service",
            "topic": "late parcel",
            "outcome": "Call-Back",
        },
        source="call-centre",
        time=datetime(2024, 5, 1, 10, offset, tzinfo=UTC),
        event_id=event_id,
    )
    return RawRecord("crm.contacts", 0, offset, customer.encode(), encode_event(document))


def contacts_counted() -> float:
    return (
        REGISTRY.get_sample_value("crm_interaction_timeline_entries_total", {"kind": "contact"})
        or 0.0
    )


async def test_a_batch_folded_again_event_by_event_counts_each_event_once(
    interaction_pool: asyncpg.Pool,
) -> None:
    letters: list[DeadLetter] = []

    async def keep(sent: Sequence[DeadLetter]) -> None:
        letters.extend(sent)

    projection = dataclasses.replace(
        PROJECTION, fold=failing_after(PROJECTION.fold, POISON, ValueError, when=2)
    )
    projector = BatchProjector(projection, interaction_pool, keep)
    await projector.reload_positions()
    before = contacts_counted()
    await projector.process([contact(0, "contact-a"), contact(1, POISON), contact(2, "contact-b")])
    assert [letter.reason.split(":")[0] for letter in letters] == ["processing failed"]
    assert contacts_counted() - before == 2
    assert await interaction_pool.fetchval("SELECT count(*) FROM timeline") == 2


async def test_a_batch_retried_after_a_serialization_failure_counts_each_event_once(
    interaction_pool: asyncpg.Pool,
) -> None:
    async def no_dead_letters(letters: Sequence[DeadLetter]) -> None:
        raise AssertionError(f"unexpected dead letters: {letters}")

    projection = dataclasses.replace(
        PROJECTION, fold=failing_after(PROJECTION.fold, POISON, asyncpg.SerializationError, when=1)
    )
    projector = BatchProjector(
        projection, interaction_pool, no_dead_letters, max_backoff_seconds=0.1
    )
    await projector.reload_positions()
    before = contacts_counted()
    await projector.process([contact(0, "contact-c"), contact(1, POISON)])
    assert contacts_counted() - before == 2
    assert await interaction_pool.fetchval("SELECT count(*) FROM timeline") == 2
