"""The batch mechanism every projection worker shares, apart from Kafka.

A batch of raw records is sorted (pure: `sort_batch`) into events to fold, dead letters and
ignored records; then one PostgreSQL transaction claims the events' ids, lets the service fold
the new ones, writes the events the fold derived to the outbox and moves the consumed positions.
A replayed or re-delivered record changes nothing: its offset is below the stored position or its
id is already claimed. A clock tick is a fold boundary: the events before it in the batch are
folded first, then the tick, then what follows, so a time rule sees the log's own order.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple, TypeVar

import asyncpg

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import (
    CE_HEADER_PREFIX,
    CLOCK_TICKED,
    EVENT_TYPES,
    MAX_FUTURE_SKEW,
    Event,
    InvalidEvent,
    RecordHeaders,
    build_event,
    check_not_future,
    decode_record,
    encode_event,
    record_type,
)
from crm_shared.contracts.topics import Topic
from crm_shared.runtime import metrics, outbox
from crm_shared.runtime.config import DEFAULT_BATCH_SIZE
from crm_shared.runtime.db import TRANSIENT_ERRORS, columns
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.packed import UnnestColumns
from crm_shared.runtime.shadow import RebuildRules

log = logging.getLogger(__name__)

T = TypeVar("T")
TopicPartition = tuple[str, int]
Fold = Callable[[asyncpg.Connection, Sequence[Event]], Awaitable[Sequence[Derived]]]
"""Folds events into the view in the caller's transaction; returns the events it derives. It
counts its work with `metrics.count`, which the projector applies once the batch is committed."""
Related = Callable[[asyncpg.Connection, Sequence[Event]], Awaitable[Collection[str]]]
SendDeadLetters = Callable[[Sequence[DeadLetter]], Awaitable[None]]

NOT_THE_EVENTS_FAULT: tuple[type[BaseException], ...] = (asyncpg.SyntaxOrAccessError,)
"""Failures no event can cause: a missing table or column, a type mismatch with the schema."""


FOLD_RANDOM_PAGE_COST = 1.1
"""The planner's cost of reading a page out of order, in a fold's transaction (PostgreSQL's
default, 4, prices a disk seek). A fold reads and locks its batch's keys in tables a projection
keeps in memory; priced as seeks, a batch of a few hundred keys made the planner scan whole
tables instead (the interaction's journeys, the profile's lapse states: two to three times the
fold's PostgreSQL CPU in batches of 200, docs/performance.md). SET LOCAL: the fold's statements
only, not the periodic jobs' scans of whole tables."""
FOLD_PLAN_CACHE_MODE = "auto"
"""How a fold's prepared statements are planned, in its transaction: PostgreSQL's default, a
generic plan once five custom ones showed it no worse. A fold runs the same set-based statements
every batch whatever its customers, so one plan a connection serves them; under a database's
`force_custom_plan` (the interaction's until its migration 009) every statement of every batch
was planned again: 16 % of the interaction fold's statement time in batches of 50
(docs/performance.md). Set in the fold's own transaction, it holds whatever a database's
defaults become."""
_FOLD_SETTINGS = (
    f"SET LOCAL random_page_cost = {FOLD_RANDOM_PAGE_COST};"
    f" SET LOCAL plan_cache_mode = {FOLD_PLAN_CACHE_MODE}"
)


async def plan_as_a_fold(conn: asyncpg.Connection) -> None:
    """First in a fold's transaction: FOLD_RANDOM_PAGE_COST and FOLD_PLAN_CACHE_MODE (one round
    trip). Every fold's transaction starts with it, the live batch's, an event's alone and a
    rebuild's (bulk.BulkFolder), so the claim of its events is planned like the fold."""
    await conn.execute(_FOLD_SETTINGS)


class ProjectionHalted(Exception):
    """Folding fails for reasons that are not the events' fault: consumption stops instead of
    dead-lettering everything while the positions advance."""


def systematic_failure(
    outcomes: Sequence[BaseException | None], streak: int, halt_after: int
) -> tuple[str | None, int]:
    """Why folding must halt (None: the failures are poison, dead-letter them), and the streak
    of consecutive failed events after these outcomes (one per event, None = applied)."""
    for error in outcomes:
        if error is None:
            streak = 0
            continue
        streak += 1
        what = f"{type(error).__name__}: {error}"[:500]
        if isinstance(error, NOT_THE_EVENTS_FAULT):
            return f"the projection's database does not fit its code ({what})", streak
        if streak >= halt_after:
            return f"{streak} events in a row failed to fold, the last with {what}", streak
    return None, streak


@dataclass(frozen=True)
class PeriodicJob:
    """Work a worker repeats beside the fold (e.g. refreshing precomputed results), on every
    replica, every `interval_seconds` but at most `duty` of the time: after a run of d seconds
    the next waits at least d / duty, so a job that grows with the data never starves the fold
    on a small machine. With `burst_seconds`, rest beyond that earns runs that need not wait,
    up to this many seconds of them: after a quiet spell a run starts at its next tick, while
    back-to-back runs are still held to `duty` (plus the burst once). A run that raises is
    logged; its work waits for the next run, which comes later after each failure in a row (2 s
    doubling to 5 minutes, reset by a success). Its database work goes through a background
    pool (crm_shared.runtime.db.open_pool): one server process a query, at a lower CPU priority
    than the fold's."""

    name: str
    interval_seconds: float
    run: Callable[[asyncpg.Pool], Awaitable[object]]
    duty: float = 1.0
    burst_seconds: float = 0.0


@dataclass(frozen=True)
class Projection:
    """What a service supplies: its name, what it reads and folds, and how it folds a batch."""

    name: str
    topics: tuple[Topic, ...]
    folds: frozenset[str]
    migrations: Path
    fold: Fold
    periodic: tuple[PeriodicJob, ...] = ()
    bulk_fold: Callable[[], Fold] | None = None
    """Makes the fold of one rebuild (crm_shared.runtime.bulk), where nobody else writes the
    shadow: the same view as `fold`, written more cheaply (e.g. COPY of new rows), holding
    what it needs to know across batches. None: a rebuild folds with `fold`."""
    related: Related | None = None
    """The customers besides the events' own whose rows folding these events may change (the
    profile's: the other records of the persons they belong to), as the database of the fold
    shows them. A rebuild asks its shadow before and after each batch of the final catch-up, so
    that the comparison under the lock covers their rows too. None: the events' customers."""
    read_only_indexes: tuple[str, ...] = ()
    """Indexes that only the API's reads use, never the fold: a rebuild fills its shadow without
    them and builds each once after the replay (a sort), not entry by entry for every row."""
    rebuild_rules: RebuildRules = field(default_factory=RebuildRules)
    """What a rebuild treats apart from the tables the fold writes (crm_shared.runtime.shadow):
    the jobs' tables, what the service did in the world, what does not replay exactly."""

    @functools.cached_property
    def skimmed_topics(self) -> frozenset[str]:
        """The topics that carry types this projection does not fold (clock ticks aside, which
        every worker reads): a record there is read for its type first (`sort_batch`)."""
        return frozenset(
            topic.name
            for topic in self.topics
            if set(topic.event_types) - self.folds - {CLOCK_TICKED}
        )


class RawRecord(NamedTuple):
    """One Kafka record as the projector reads it. A named tuple: one is made for every record
    a worker reads, and built from positions it costs a third of a frozen dataclass's keywords."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: RecordHeaders = ()
    timestamp_ms: int = -1
    """The record's Kafka timestamp (-1 when unknown), kept on its event as `log_time_ms`."""


@dataclass
class SortedBatch:
    events: list[Event] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    ignored_types: list[str] = field(default_factory=list)
    already_consumed: int = 0
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    newest_tick: datetime | None = None
    """Time of the newest clock tick read, folded or not (for the clock-lag metric)."""
    records: list[RawRecord] = field(default_factory=list)
    """The records sorted, kept to sort again when positions moved since (see `stale_for`)."""
    first_offsets: dict[TopicPartition, int] = field(default_factory=dict)

    def extend(self, later: SortedBatch) -> None:
        """Append a batch sorted after this one (records read later from the same consumer)."""
        self.events.extend(later.events)
        self.dead_letters.extend(later.dead_letters)
        self.ignored_types.extend(later.ignored_types)
        self.already_consumed += later.already_consumed
        for tp, offset in later.next_offsets.items():
            self.next_offsets[tp] = max(self.next_offsets.get(tp, 0), offset)
        for tp, offset in later.first_offsets.items():
            self.first_offsets[tp] = min(self.first_offsets.get(tp, offset), offset)
        if later.newest_tick is not None and (
            self.newest_tick is None or later.newest_tick > self.newest_tick
        ):
            self.newest_tick = later.newest_tick
        self.records.extend(later.records)

    def stale_for(self, positions: dict[TopicPartition, int]) -> bool:
        """Whether some records were sorted as new but are below the positions now stored
        (sorted before a commit or a seek moved them): then the batch must be sorted again."""
        return any(offset < positions.get(tp, 0) for tp, offset in self.first_offsets.items())


def sort_batch(
    records: Sequence[RawRecord],
    positions: dict[TopicPartition, int],
    folds: frozenset[str],
    consumer: str,
    *,
    now: datetime,
    max_future_skew: timedelta = MAX_FUTURE_SKEW,
    skimmed_topics: frozenset[str] = frozenset(),
) -> SortedBatch:
    """Classify records; no I/O. Records below a stored position were applied before.

    A record is dead-lettered when it does not decode to a valid event (either CloudEvents
    content mode), when its key is not its subject, or when it is dated after now + skew.
    On `skimmed_topics` a record is read for its type first: one of a known type that is not
    folded (nor a clock tick) is ignored without being decoded, so it is never dead-lettered
    here; the workers that fold its type judge it (docs/decisions.md).
    """
    with _collector_paused():
        return _sort(records, positions, folds, consumer, now, max_future_skew, skimmed_topics)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold Python's cyclic garbage collector while a batch decodes.

    Decoding allocates about twenty tracked objects an event (models, their dicts, tuples) that
    live until the batch commits, so the collector would run every few dozen events and walk the
    batch again each time: a quarter to a third of the decode's CPU. Decoding makes no cycles worth
    collecting at once; the collector runs as usual once the batch is sorted (the count of
    allocations carries over, so the next collection comes right after)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _sort(
    records: Sequence[RawRecord],
    positions: dict[TopicPartition, int],
    folds: frozenset[str],
    consumer: str,
    now: datetime,
    max_future_skew: timedelta,
    skimmed_topics: frozenset[str],
) -> SortedBatch:
    batch = SortedBatch(records=list(records))
    for record in records:
        tp = (record.topic, record.partition)
        if record.offset < positions.get(tp, 0):
            batch.already_consumed += 1
            continue
        batch.next_offsets[tp] = max(batch.next_offsets.get(tp, 0), record.offset + 1)
        batch.first_offsets.setdefault(tp, record.offset)
        if record.topic in skimmed_topics and record.value is not None:
            named = record_type(record.value, record.headers)
            if named in EVENT_TYPES and named not in folds and named != CLOCK_TICKED:
                batch.ignored_types.append(named)
                continue
        try:
            if record.value is None:
                raise InvalidEvent("empty record (no value)")
            event = decode_record(
                record.value, record.headers, record.partition, record.timestamp_ms
            )
            _check_key(record.key, event)
            check_not_future(event, now, max_future_skew)
        except InvalidEvent as problem:
            batch.dead_letters.append(
                DeadLetter(
                    value=record.value or b"",
                    key=record.key,
                    reason=str(problem),
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    consumer=consumer,
                    original_headers=record.headers,
                )
            )
            continue
        if event.type == CLOCK_TICKED and (
            batch.newest_tick is None or event.time > batch.newest_tick
        ):
            batch.newest_tick = event.time
        if event.type in folds:
            batch.events.append(event)
        else:
            batch.ignored_types.append(event.type)
    return batch


def _check_key(key: bytes | None, event: Event) -> None:
    """The key must be the subject: it keeps a customer's events in order, on one partition."""
    if key is None:
        raise InvalidEvent(f"message has no key: the key must be the subject {event.customer_id!r}")
    if key != event.customer_id.encode():
        raise InvalidEvent(f"message key {key[:128]!r} is not the subject {event.customer_id!r}")


_CLAIMED = UnnestColumns.named(("source", "id", "type", "event_time"), event_time="timestamptz")
CLAIM_SQL = f"""
INSERT INTO applied_events ({_CLAIMED.names}) {_CLAIMED.select}
ON CONFLICT DO NOTHING
RETURNING source, id
"""


SAVE_POSITIONS_SQL = """
INSERT INTO consumer_positions (topic, partition, next_offset)
SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
ON CONFLICT (topic, partition) DO UPDATE
SET next_offset = GREATEST(consumer_positions.next_offset, EXCLUDED.next_offset), updated_at = now()
"""


def runs_between_ticks(events: Sequence[Event]) -> list[Sequence[Event]]:
    """Split a batch into runs of ticks and runs of other events, in order: a tick is folded
    after every event before it and before every event after it."""
    runs: list[Sequence[Event]] = []
    start = 0
    for index in range(1, len(events) + 1):
        if index == len(events) or (events[index].type == CLOCK_TICKED) != (
            events[start].type == CLOCK_TICKED
        ):
            runs.append(events[start:index])
            start = index
    return runs


async def claim_new(conn: asyncpg.Connection, events: Sequence[Event]) -> list[Event]:
    """Record the events' ids; return only those never applied before, in batch order."""
    if not events:
        return []
    rows = await conn.fetch(
        CLAIM_SQL,
        *_CLAIMED.arguments([*columns(events, "source", "id", "type"), [e.time for e in events]]),
    )
    if len(rows) == len(events):
        return list(events)  # all new, and no id twice in the batch (the common case)
    fresh = {(row["source"], row["id"]) for row in rows}
    new: list[Event] = []
    for event in events:
        key = (event.source, event.id)
        if key in fresh:
            fresh.discard(key)  # the same id twice within one batch is applied once
            new.append(event)
    return new


async def save_positions(conn: asyncpg.Connection, next_offsets: dict[TopicPartition, int]) -> None:
    if next_offsets:
        await conn.execute(
            SAVE_POSITIONS_SQL,
            [tp[0] for tp in next_offsets],
            [tp[1] for tp in next_offsets],
            list(next_offsets.values()),
        )


async def load_positions(conn: asyncpg.Connection) -> dict[TopicPartition, int]:
    rows = await conn.fetch("SELECT topic, partition, next_offset FROM consumer_positions")
    return {(row["topic"], row["partition"]): row["next_offset"] for row in rows}


class BatchProjector:
    """Applies batches of one projection exactly once; never raises on bad data."""

    def __init__(
        self,
        projection: Projection,
        pool: asyncpg.Pool,
        send_dead_letters: SendDeadLetters,
        *,
        consumer: str | None = None,
        max_backoff_seconds: float = 5.0,
        on_derived: Callable[[], None] = lambda: None,
        halt_after: int = 10,
        halt_retry_seconds: float = 30.0,
        max_future_skew: timedelta = MAX_FUTURE_SKEW,
        max_batch: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.projection = projection
        self.halt_after = halt_after
        self.halt_retry_seconds = halt_retry_seconds
        self.halted: str | None = None
        """Why consumption is stopped, while it is (the worker's /healthz reports it)."""
        self.failure_streak = 0
        metrics.HALTED.labels(projection.name).set(0)  # the series exists before any halt
        self.on_derived = on_derived
        """Called after a commit that wrote derived events (wakes the outbox relay)."""
        self.pool = pool
        self.send_dead_letters = send_dead_letters
        self.consumer = consumer or projection.name
        self.positions: dict[TopicPartition, int] = {}
        self.max_backoff_seconds = max_backoff_seconds
        self.max_future_skew = max_future_skew
        self.max_batch = max_batch
        self._waiting: SortedBatch | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._taken = asyncio.Event()
        """Set when the commit in flight takes what waits, or ends."""

    async def reload_positions(self) -> dict[TopicPartition, int]:
        """Read the stored positions (on start and on every rebalance) and return them."""
        async with self.pool.acquire() as conn:
            self.positions = await load_positions(conn)
        return self.positions

    def sort(self, records: Sequence[RawRecord]) -> SortedBatch:
        """Decode and classify records against the positions known now (CPU only, no I/O)."""
        return sort_batch(
            records,
            self.positions,
            self.projection.folds,
            self.consumer,
            now=datetime.now(UTC),
            max_future_skew=self.max_future_skew,
            skimmed_topics=self.projection.skimmed_topics,
        )

    async def process(self, records: Sequence[RawRecord]) -> None:
        """Sort and apply one batch, start to end (tests and the fold benchmark)."""
        await self.apply(self.sort(records))

    async def feed(self, records: Sequence[RawRecord]) -> None:
        """The pipelined path: decode these records now, while the previous batch commits.

        Records gather while a commit is in flight (the batch grows with the load: greedy when
        records wait) and the commit, when done, takes them at once as the next batch; with
        nothing in flight they go at once (an idle projection is fresh). When max_batch records
        wait, this waits until the commit takes them. At most one batch commits at a time, so
        batches commit in the order they were read; the reader never polls for the commit's end.
        """
        if records:
            batch = self.sort(records)
            if self._waiting is None:
                self._waiting = batch
            else:
                self._waiting.extend(batch)
        if self._waiting is None:
            return
        if self._in_flight is not None and not self._in_flight.done():
            if len(self._waiting.records) < self.max_batch:
                return
            self._taken.clear()
            await self._taken.wait()
            if self._waiting is None:
                return
        await self.settle()
        batch, self._waiting = self._waiting, None
        if batch is not None:
            self._in_flight = asyncio.ensure_future(self._commit_gathered(batch))

    async def _commit_gathered(self, batch: SortedBatch) -> None:
        """Apply the batch, then whatever gathered meanwhile, until nothing waits. A reader
        waiting for room (`feed`) wakes when the records are taken, or when this ends, however
        it ends (then `feed` raises what it raised)."""
        try:
            while True:
                await self.apply(batch)
                if self._waiting is None:
                    return
                batch, self._waiting = self._waiting, None
                self._taken.set()
        finally:
            self._taken.set()

    async def settle(self) -> None:
        """Wait until the batch in flight is committed; raise what it raised."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            await in_flight

    async def abandon(self, wait_seconds: float = 2.0) -> None:
        """On shutdown: cancel the batch in flight and drop what waits, so that stopping never
        waits for a long batch (its transaction rolls back: the next start reads its records
        again from the stored positions); waits up to `wait_seconds` for the rollback."""
        waiting = self.forget_waiting()
        in_flight, self._in_flight = self._in_flight, None
        cancelled = in_flight is not None and not in_flight.done()
        if in_flight is not None and cancelled:
            in_flight.cancel()
            await asyncio.wait([in_flight], timeout=wait_seconds)
        log.info(
            "stopping: records not committed are left to the next start",
            extra={"projection": self.projection.name, "waiting": waiting, "cancelled": cancelled},
        )

    def forget_waiting(self) -> int:
        """Drop the records gathered but not committed (after a rebalance the reader seeks back
        to the stored positions and reads them again); returns how many."""
        dropped = len(self._waiting.records) if self._waiting is not None else 0
        self._waiting = None
        return dropped

    async def apply(self, batch: SortedBatch) -> None:
        """Dead letters first, then one transaction: claims, fold, outbox, positions."""
        started = time.perf_counter()
        name = self.projection.name
        if batch.stale_for(self.positions):
            batch = sort_batch(
                batch.records,
                self.positions,
                self.projection.folds,
                self.consumer,
                now=datetime.now(UTC),
                max_future_skew=self.max_future_skew,
                skimmed_topics=self.projection.skimmed_topics,
            )
        if batch.dead_letters:
            # Delivered before the positions move past them: a dead letter is never lost.
            await self._retrying(lambda: self.send_dead_letters(batch.dead_letters))
            for letter in batch.dead_letters:
                metrics.EVENTS_DEAD_LETTERED.labels(name, _type_of(letter)).inc()
                log.warning(
                    "record dead-lettered",
                    extra={
                        "reason": letter.reason,
                        "topic": letter.topic,
                        "partition": letter.partition,
                        "offset": letter.offset,
                    },
                )
        applied, derived = await self._commit_until_resumed(batch)
        for tp, offset in batch.next_offsets.items():
            self.positions[tp] = max(self.positions.get(tp, 0), offset)
        if derived:
            self.on_derived()
        if batch.newest_tick is not None:
            metrics.CLOCK_TIME.labels(name).set(batch.newest_tick.timestamp())
        self._count(batch, applied, len(batch.records), time.perf_counter() - started)

    async def _commit_until_resumed(self, batch: SortedBatch) -> tuple[list[Event], int]:
        """Commit the batch; while folding is halted, try again every halt_retry_seconds, so
        that a fixed database or a deployed fix resumes consumption where it stopped."""
        name = self.projection.name
        while True:
            try:
                result = await self._retrying(lambda: self._commit(batch))
            except ProjectionHalted as halt:
                if self.halted is None:
                    log.error("consumption halted", extra={"projection": name, "reason": str(halt)})
                self.halted = str(halt)
                metrics.HALTED.labels(name).set(1)
                await asyncio.sleep(self.halt_retry_seconds)
                continue
            if self.halted is not None:
                log.warning("consumption resumed", extra={"projection": name})
                self.halted = None
                metrics.HALTED.labels(name).set(0)
            return result

    async def _fold(self, conn: asyncpg.Connection, events: Sequence[Event]) -> int:
        """Fold run by run (ticks are boundaries) and put what the fold derives in the outbox;
        in the caller's transaction, whole batch or one event, after `plan_as_a_fold`."""
        derived: list[Derived] = []
        for run in runs_between_ticks(events):
            derived.extend(await self.projection.fold(conn, run))
        await outbox.write(conn, derived)
        return len(derived)

    async def _commit(self, batch: SortedBatch) -> tuple[list[Event], int]:
        """Apply the batch in one transaction; the applied events and how many were derived."""
        try:
            # What the fold counts (metrics.count) is counted once the batch is committed.
            with metrics.counted_on_commit():
                async with self.pool.acquire() as conn, conn.transaction():
                    await plan_as_a_fold(conn)
                    applied = await claim_new(conn, batch.events)
                    derived = await self._fold(conn, applied)
                    await save_positions(conn, batch.next_offsets)
            self.failure_streak = 0
            return applied, derived
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            log.exception("batch failed; applying its events one by one to isolate the bad one")
            return await self._commit_one_by_one(batch)

    async def _commit_one_by_one(self, batch: SortedBatch) -> tuple[list[Event], int]:
        """Isolate poison: apply each event alone. When the failures are systematic (see
        `systematic_failure`), halt without dead-lettering them or moving the positions; the
        events applied meanwhile are claimed, so the retry skips them."""
        applied: list[Event] = []
        derived = 0
        outcomes: list[Exception | None] = []
        for event in batch.events:
            try:
                with metrics.counted_on_commit():
                    async with self.pool.acquire() as conn, conn.transaction():
                        await plan_as_a_fold(conn)
                        fresh = await claim_new(conn, [event])
                        derived += await self._fold(conn, fresh)
                applied.extend(fresh)
                outcomes.append(None)
            except TRANSIENT_ERRORS:
                raise
            except Exception as error:
                outcomes.append(error)
        halt, streak = systematic_failure(outcomes, self.failure_streak, self.halt_after)
        if halt is not None:
            raise ProjectionHalted(halt)
        self.failure_streak = streak
        poison = [
            (event, error)
            for event, error in zip(batch.events, outcomes, strict=True)
            if error is not None
        ]
        if poison:
            await self.send_dead_letters([self._letter_for(event, err) for event, err in poison])
            for event, _ in poison:
                metrics.EVENTS_DEAD_LETTERED.labels(self.projection.name, event.type).inc()
        async with self.pool.acquire() as conn:
            await save_positions(conn, batch.next_offsets)
        return applied, derived

    def _letter_for(self, event: Event, error: Exception) -> DeadLetter:
        document = build_event(
            event.type,
            event.customer_id,
            event.data,
            source=event.source,
            time=event.time,
            event_id=event.id,
        )
        return DeadLetter(
            value=encode_event(document),
            key=event.customer_id.encode(),
            reason=f"processing failed: {type(error).__name__}: {error}"[:2000],
            topic="",
            partition=-1,
            offset=-1,
            consumer=self.consumer,
        )

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures (database or broker away) with backoff until they pass."""
        delay = 0.1
        while True:
            try:
                return await attempt()
            except TRANSIENT_ERRORS as error:
                metrics.BATCH_RETRIES.labels(self.projection.name).inc()
                log.warning(
                    "transient failure, retrying", extra={"error": repr(error), "delay": delay}
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_seconds)

    def _count(self, batch: SortedBatch, applied: list[Event], size: int, seconds: float) -> None:
        """Update metrics once per type, not once per event: labels() lookups are not free."""
        name = self.projection.name
        metrics.BATCH_SIZE.labels(name).observe(size)
        metrics.BATCH_DURATION.labels(name).observe(seconds)
        consumed = Counter(event.type for event in batch.events)
        ignored = Counter(batch.ignored_types)
        done = Counter(event.type for event in applied)
        for event_type, count in (consumed + ignored).items():
            metrics.EVENTS_CONSUMED.labels(name, event_type).inc(count)
        for event_type, count in ignored.items():
            metrics.EVENTS_IGNORED.labels(name, event_type).inc(count)
        for event_type, count in (consumed - done).items():
            metrics.EVENTS_DUPLICATE.labels(name, event_type).inc(count)
        for event_type, count in done.items():
            metrics.EVENTS_APPLIED.labels(name, event_type).inc(count)
        if not applied:
            return
        times = [event.time.timestamp() for event in applied]
        now = datetime.now(UTC).timestamp()
        metrics.observe_many(metrics.FRESHNESS.labels(name), [now - moment for moment in times])
        metrics.LAST_EVENT_TIME.labels(name).set(max(times))


_TYPE_FIELD = re.compile(rb'"type"\s*:\s*"([A-Za-z0-9_.]{1,128})"')


def _type_of(letter: DeadLetter) -> str:
    """Known event type of an undecodable record, for the metric label; else 'unknown'."""
    raw = dict(letter.original_headers).get(f"{CE_HEADER_PREFIX}type")  # binary mode
    if raw is None:
        match = _TYPE_FIELD.search(letter.value[:4096])
        raw = match.group(1) if match else b""
    found = raw.decode(errors="replace")
    return found if found in EVENT_TYPES else "unknown"
