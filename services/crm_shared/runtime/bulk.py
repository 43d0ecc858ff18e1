"""Folding a projection in bulk, for a rebuild into a shadow schema no one else writes.

The live path (projector.BatchProjector) claims ids with one INSERT per batch, writes the outbox
and isolates poison batch by batch, because other replicas and re-deliveries share its tables.
A rebuild has the log to itself: it drops duplicates by id in memory, COPYs the ids it applied,
writes no outbox (the live projection published those derived events already, under the same
deterministic ids) and sends no dead letters (the live worker sent them when it met the records).
Ticks stay fold boundaries in log order, as in the live worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from crm_shared.contracts.events import CLOCK_TICKED, MAX_FUTURE_SKEW, ClockTicked, Event
from crm_shared.contracts.topics import topic_for
from crm_shared.runtime import metrics
from crm_shared.runtime.db import TRANSIENT_ERRORS
from crm_shared.runtime.projector import (
    NOT_THE_EVENTS_FAULT,
    Projection,
    RawRecord,
    SortedBatch,
    TopicPartition,
    plan_as_a_fold,
    runs_between_ticks,
    save_positions,
    sort_batch,
)

log = logging.getLogger(__name__)

DECODE_CHUNK = 1_000
"""Records decoded between two chances for the fold in flight to go on (about 25 ms of work)."""

UNREAD_INDEXES = ("applied_events_pkey", "applied_events_applied_at")
"""Indexes of the bookkeeping a bulk fold writes and never reads (it drops duplicates in memory,
`seen`): a rebuild fills its shadow without them and builds them after the replay, as it does
the projection's read-only indexes. A COPY of applied ids kept them entry by entry: a tenth of
the replay's PostgreSQL time."""


def in_tick_rounds(events: Sequence[Event]) -> list[Event]:
    """The same events, each partition's in its own order, interleaved so that the k-th tick of
    every partition falls in one run: the events before each partition's first tick, then those
    ticks, then the events up to their second tick, and so on.

    Any interleaving of partitions is one the live worker could have met (its batches mix
    partitions as they arrive), and a partition's time moves only with its own ticks; but a
    big batch read partition by partition would otherwise split into two runs per tick.
    """
    rounds: dict[tuple[str, int], int] = {}
    placed: list[tuple[int, Event]] = []
    for event in events:
        if isinstance(event.data, ClockTicked):
            stream = (event.data.topic, event.partition)
            done = rounds.get(stream, 0)
            placed.append((2 * done + 1, event))
            rounds[stream] = done + 1
        else:
            placed.append((2 * rounds.get((topic_for(event.type), event.partition), 0), event))
    placed.sort(key=lambda item: item[0])  # stable: each partition keeps its order
    return [event for _, event in placed]


class RebuildFailed(Exception):
    """The shadow cannot be built with this code and schema (not one event's fault)."""

    @classmethod
    def schema_mismatch(cls, error: BaseException) -> RebuildFailed:
        return cls(f"the projection's schema does not fit its code: {error}")


@dataclass
class BulkTally:
    """What a bulk fold did, for the report at the end."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    ignored: int = 0
    dead_letters: int = 0
    failed: list[str] = field(default_factory=list)
    """Ids of events whose fold failed alone (the live worker dead-lettered them, or should)."""


class BulkFolder:
    """Folds batches of records into the schema of `conn` (its search_path), each in one
    transaction, resuming from and moving `positions`."""

    def __init__(
        self,
        projection: Projection,
        conn: asyncpg.Connection,
        *,
        consumer: str,
        max_future_skew: timedelta = MAX_FUTURE_SKEW,
    ) -> None:
        self.projection = projection
        self.fold_batch = projection.bulk_fold() if projection.bulk_fold else projection.fold
        self.conn = conn
        self.consumer = consumer
        self.max_future_skew = max_future_skew
        self.positions: dict[TopicPartition, int] = {}
        self.seen: set[tuple[str, str]] = set()
        self.tally = BulkTally()
        self.touched: set[str] | None = None
        """Customers of the events folded since `watch()` and those the projection relates to
        them (Projection.related); None: not watching, or a clock tick was folded (its fold may
        change any customer's rows)."""

    def watch(self) -> None:
        """From now on, collect in `touched` the customers whose rows the folds may change."""
        self.touched = set()

    def _note_touched(self, events: Sequence[Event], related: set[str]) -> None:
        if self.touched is None:
            return
        if any(event.type == CLOCK_TICKED for event in events):
            self.touched = None
        else:
            self.touched.update(event.customer_id for event in events)
            self.touched |= related

    async def _related(self, events: Sequence[Event]) -> set[str]:
        """While watching, the customers besides the events' own whose rows their fold may
        change, as the shadow stands now (Projection.related); asked before and after a fold."""
        related = self.projection.related
        if self.touched is None or related is None:
            return set()
        if any(event.type == CLOCK_TICKED for event in events):
            return set()  # every row is compared after a tick
        return set(await related(self.conn, events))

    async def decode(self, records: Sequence[RawRecord]) -> SortedBatch:
        """Sort and decode a batch a chunk at a time, yielding between chunks, so that the fold
        of the previous batch, waiting on PostgreSQL, goes on meanwhile."""
        whole = SortedBatch()
        for start in range(0, len(records), DECODE_CHUNK):
            part = sort_batch(
                records[start : start + DECODE_CHUNK],
                self.positions,
                self.projection.folds,
                self.consumer,
                now=datetime.now(UTC),
                max_future_skew=self.max_future_skew,
                skimmed_topics=self.projection.skimmed_topics,
            )
            whole.events.extend(part.events)
            whole.dead_letters.extend(part.dead_letters)
            whole.ignored_types.extend(part.ignored_types)
            for tp, offset in part.next_offsets.items():
                whole.next_offsets[tp] = max(whole.next_offsets.get(tp, 0), offset)
            await asyncio.sleep(0)
        return whole

    async def fold(self, batch: SortedBatch, records: int) -> None:
        """Fold a decoded batch of `records` records in one transaction; batches in log order."""
        fresh = self._first_sightings(in_tick_rounds(batch.events))
        try:
            applied, related = await self._in_transaction(batch, fresh, self._fold_runs)
        except TRANSIENT_ERRORS:
            raise
        except NOT_THE_EVENTS_FAULT as error:
            raise RebuildFailed.schema_mismatch(error) from error
        except Exception:
            log.exception("bulk batch failed; folding its events one by one to isolate the bad one")
            applied, related = await self._in_transaction(batch, fresh, self._fold_one_by_one)
        self.positions.update(batch.next_offsets)
        # Duplicates too: the live side may have applied them.
        self._note_touched(batch.events, related)
        self.tally.records += records
        self.tally.applied += len(applied)
        self.tally.duplicates += len(batch.events) - len(fresh)
        self.tally.ignored += len(batch.ignored_types)
        self.tally.dead_letters += len(batch.dead_letters)

    async def _in_transaction(
        self,
        batch: SortedBatch,
        fresh: Sequence[Event],
        fold: Callable[[Sequence[Event]], Awaitable[Sequence[Event]]],
    ) -> tuple[Sequence[Event], set[str]]:
        """One transaction: `fold` the fresh events, record those it applied and the positions;
        while watching, the customers related to the batch's events before and after the fold.
        Returns what was applied and those customers; counts only once it commits."""
        with metrics.counted_on_commit():
            async with self.conn.transaction():
                await plan_as_a_fold(self.conn)
                related = await self._related(batch.events)
                applied = await fold(fresh)
                await self._record(applied, batch.next_offsets)
                related |= await self._related(batch.events)
        return applied, related

    def _first_sightings(self, events: Sequence[Event]) -> list[Event]:
        """Events whose (source, id) this rebuild has not met before, in log order."""
        fresh: list[Event] = []
        for event in events:
            key = (event.source, event.id)
            if key not in self.seen:
                self.seen.add(key)
                fresh.append(event)
        return fresh

    async def _fold_runs(self, events: Sequence[Event]) -> Sequence[Event]:
        """Fold run by run, ticks being boundaries; what the fold derives is dropped (see the
        module's docstring). All of them are applied."""
        for run in runs_between_ticks(events):
            await self.fold_batch(self.conn, run)
        return events

    async def _fold_one_by_one(self, events: Sequence[Event]) -> list[Event]:
        """Each event in a savepoint of its own; those that fail are left out and counted."""
        applied: list[Event] = []
        for event in events:
            try:
                with metrics.counted_on_commit():  # a savepoint rolled back counts nothing
                    async with self.conn.transaction():
                        await self.fold_batch(self.conn, [event])
                applied.append(event)
            except TRANSIENT_ERRORS:
                raise
            except NOT_THE_EVENTS_FAULT as error:
                raise RebuildFailed.schema_mismatch(error) from error
            except Exception as error:
                log.warning("event failed to fold", extra={"id": event.id, "error": repr(error)})
                self.tally.failed.append(event.id)
                self.seen.discard((event.source, event.id))  # a later copy may fold, as live
        return applied

    async def _record(
        self, applied: Sequence[Event], next_offsets: dict[TopicPartition, int]
    ) -> None:
        """The applied ids in one COPY, and the positions, in the batch's transaction."""
        if applied:
            await self.conn.copy_records_to_table(
                "applied_events",
                records=[(e.source, e.id, e.type, e.time) for e in applied],
                columns=("source", "id", "type", "event_time"),
            )
        await save_positions(self.conn, next_offsets)
