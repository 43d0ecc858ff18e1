"""The worker's pipelined path (BatchProjector.feed): records read while a batch commits are
committed next by that commit itself, as one batch, without the reader coming back; when
max_batch records wait, the reader waits until the commit takes them, not until they commit,
and gets the commit's error if it fails instead. The interaction projection's real fold, each
batch held at a gate, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import Event
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import BatchProjector, Fold, RawRecord
from interaction_service.worker import PROJECTION
from tests.component.partition_logs import no_dead_letters
from tests.component.test_counted_after_commit import contact
from tests.integration.helpers import eventually

pytestmark = pytest.mark.component

SECONDS = 10.0


@pytest.fixture
async def gate(interaction_pool: asyncpg.Pool) -> AsyncIterator[Gate]:
    """A gate opened for good at the end, so that a failing test never leaves a fold waiting
    (and the interaction_pool's close with it)."""
    held = Gate()
    yield held
    for _ in range(100):
        held.permits.put_nowait(None)


class Gate:
    """Wraps a fold so that each batch's fold waits for a permit; records the batches' sizes."""

    def __init__(self) -> None:
        self.permits: asyncio.Queue[None] = asyncio.Queue()
        self.sizes: list[int] = []

    async def folded(self) -> list[int]:
        return self.sizes

    def around(self, fold: Fold) -> Fold:
        async def gated(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
            self.sizes.append(len(events))
            await self.permits.get()
            return await fold(conn, events)

        return gated


async def first_batch_held(
    gate: Gate, interaction_pool: asyncpg.Pool, max_batch: int
) -> BatchProjector:
    """A projector whose first batch (one contact) is folding, held at the gate."""
    projection = dataclasses.replace(PROJECTION, fold=gate.around(PROJECTION.fold))
    projector = BatchProjector(projection, interaction_pool, no_dead_letters, max_batch=max_batch)
    await projector.reload_positions()
    await projector.feed([contact(0, "first")])
    await eventually(gate.folded, lambda sizes: sizes == [1], within=SECONDS)
    return projector


async def test_records_read_during_a_commit_are_committed_next_without_the_reader(
    interaction_pool: asyncpg.Pool, gate: Gate
) -> None:
    projector = await first_batch_held(gate, interaction_pool, max_batch=1_000)
    async with asyncio.timeout(SECONDS):  # gathering never waits for the commit in flight
        await projector.feed([contact(1, "second")])
        await projector.feed([contact(2, "third")])
    gate.permits.put_nowait(None)
    gate.permits.put_nowait(None)
    await eventually(  # no feed() in between: the commit took them
        lambda: interaction_pool.fetchval("SELECT count(*) FROM timeline"),
        lambda n: n == 3,
        within=SECONDS,
    )
    assert gate.sizes == [1, 2]
    assert projector.positions[("crm.contacts", 0)] == 3
    await projector.settle()


async def test_a_full_batch_waits_until_the_commit_takes_it_not_until_it_commits(
    interaction_pool: asyncpg.Pool, gate: Gate
) -> None:
    projector = await first_batch_held(gate, interaction_pool, max_batch=2)
    full = asyncio.ensure_future(projector.feed([contact(1, "second"), contact(2, "third")]))
    await asyncio.sleep(0.2)
    assert not full.done()
    gate.permits.put_nowait(None)
    async with asyncio.timeout(SECONDS):
        await full
    await eventually(gate.folded, lambda sizes: sizes == [1, 2], within=SECONDS)
    assert (
        await interaction_pool.fetchval("SELECT count(*) FROM timeline") == 1
    )  # the second still folds
    gate.permits.put_nowait(None)
    await projector.settle()
    assert await interaction_pool.fetchval("SELECT count(*) FROM timeline") == 3


async def test_a_full_batch_waiting_on_a_commit_that_fails_gets_its_error(
    interaction_pool: asyncpg.Pool,
) -> None:
    """The commit in flight fails (its dead letters cannot be sent) without taking what waits:
    the waiting reader wakes and raises its error instead of waiting for good."""
    permit = asyncio.Event()

    async def dead_letters_away(letters: Sequence[DeadLetter]) -> None:
        await permit.wait()
        raise RuntimeError("dead-letter topic away")

    projector = BatchProjector(PROJECTION, interaction_pool, dead_letters_away, max_batch=2)
    await projector.reload_positions()
    await projector.feed([RawRecord("crm.contacts", 0, 0, b"C-poison", b"not json")])
    full = asyncio.ensure_future(projector.feed([contact(1, "second"), contact(2, "third")]))
    await asyncio.sleep(0.2)
    assert not full.done()
    permit.set()
    async with asyncio.timeout(SECONDS):
        with pytest.raises(RuntimeError, match="dead-letter topic away"):
            await full
    assert await interaction_pool.fetchval("SELECT count(*) FROM timeline") == 0
