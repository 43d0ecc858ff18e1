"""Rebuild a projection from the log while the live one keeps serving, then switch over.

    ./crm rebuild PROJECTION [--force]         (python -m crm_shared.ops.rebuild PROJECTION)

1. A shadow schema beside the live one gets the projection's migrations, unlogged.
2. The projection's topics are replayed into it in bulk from their first offsets to the end
   offsets seen at start (large batches read straight from the partitions, no consumer group);
   then it follows the live worker's positions, while the live projection keeps serving.
3. Every table's row count and checksum are compared with the live one as a snapshot shows
   it, the shadow folded to exactly the positions in that snapshot (the live worker goes on).
4. The live worker's writes are held (its next transaction waits on a table lock), the shadow
   catches up to exactly the live positions, and what that catch-up could change is compared
   (the rows of its customers and of those the projection relates to them, e.g. the other
   records of their persons; the ids applied since the snapshot). Equal: the schemas are renamed in
   the same transaction (live -> retired_<time>, shadow -> live) and the live worker's waiting
   statement lands in the new tables. Different (in 3 or 4): the differences are printed,
   nothing is switched, the exit code is 1 (--force switches anyway, e.g. after a fix of the
   folds that was meant to change the view).

Progress goes to stderr; the outcome and the rate to stdout. The retired schema is kept for a
look back; `DROP SCHEMA <name> CASCADE` frees its space.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import IO

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from crm_shared.ops import platform
from crm_shared.runtime import shadow
from crm_shared.runtime.bulk import UNREAD_INDEXES, BulkFolder, RebuildFailed
from crm_shared.runtime.db import connect_in_schema
from crm_shared.runtime.logs import configure_logging
from crm_shared.runtime.projector import RawRecord
from crm_shared.runtime.service import Service
from crm_shared.runtime.shadow import Fingerprint

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]

REBUILD_LOCK = 7413
"""Advisory lock: one rebuild of a projection's database at a time."""
DEFAULT_BATCH_RECORDS = 20_000
MAX_FETCH_BYTES = 64 * 1024 * 1024


EXAMPLES_PER_SIDE = 3
"""Rows shown per side of a table that differs: enough to see what differs, short in a log."""


@dataclass(frozen=True)
class Difference:
    table: str
    detail: str
    examples: tuple[str, ...] = ()
    """A few rows found on one side only, each prefixed with its side."""

    def __str__(self) -> str:
        return f"{self.table}: {self.detail}" + "".join(f"\n      {e}" for e in self.examples)


def compare(
    live: Mapping[str, Fingerprint], rebuilt: Mapping[str, Fingerprint], missing_applied: int
) -> list[Difference]:
    """Where the rebuilt tables differ from the live ones; empty when the switch is safe."""
    found: list[Difference] = []
    for table in sorted(live.keys() | rebuilt.keys()):
        before, after = live.get(table), rebuilt.get(table)
        if before is None or after is None:
            where = "the shadow" if before is None else "the live schema"
            found.append(Difference(table, f"only in {where}"))
        elif before.columns != after.columns:
            found.append(
                Difference(
                    table,
                    f"columns differ: live ({', '.join(before.columns)}), "
                    f"rebuilt ({', '.join(after.columns)})",
                )
            )
        elif before.rows != after.rows:
            found.append(
                Difference(table, f"rows differ: live {before.rows}, rebuilt {after.rows}")
            )
        elif before.checksum != after.checksum:
            found.append(
                Difference(
                    table,
                    f"checksums differ over {before.rows} rows: "
                    f"live {before.checksum}, rebuilt {after.checksum}",
                )
            )
    if missing_applied:
        found.append(
            Difference(
                "applied_events",
                f"{missing_applied} event ids the live projection applied are not in the rebuild",
            )
        )
    return found


async def with_examples(
    differences: Sequence[Difference],
    live_conn: asyncpg.Connection,
    live: str,
    shadow_conn: asyncpg.Connection,
    rules: shadow.RebuildRules,
    customers: Sequence[str] | None,
) -> list[Difference]:
    """Each table whose rows differ, with a few rows found on one side only (read by both
    connections as they stand: the caller keeps the live side's snapshot), so that an operator
    sees what differs and not only that something does."""
    explained: list[Difference] = []
    for difference in differences:
        if not difference.detail.startswith(("rows differ", "checksums differ")):
            explained.append(difference)
            continue
        table = difference.table
        live_digests, rebuilt_digests = await asyncio.gather(
            shadow.row_digests(live_conn, live, rules, table, customers),
            shadow.row_digests(shadow_conn, shadow.SHADOW_SCHEMA, rules, table, customers),
        )
        only_live = sorted((live_digests - rebuilt_digests).keys())[:EXAMPLES_PER_SIDE]
        only_rebuilt = sorted((rebuilt_digests - live_digests).keys())[:EXAMPLES_PER_SIDE]
        live_rows, rebuilt_rows = await asyncio.gather(
            shadow.rows_of_digests(live_conn, live, rules, table, only_live),
            shadow.rows_of_digests(shadow_conn, shadow.SHADOW_SCHEMA, rules, table, only_rebuilt),
        )
        examples = tuple(f"live only: {row}" for row in live_rows) + tuple(
            f"rebuilt only: {row}" for row in rebuilt_rows
        )
        explained.append(replace(difference, examples=examples))
    return explained


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def format_progress(done: int, total: int, seconds: float, width: int = 30) -> str:
    """One line of progress: a bar, done/total, the rate so far and the time left at that rate."""
    share = min(done / total, 1.0) if total else 1.0
    filled = int(share * width)
    rate = done / seconds if seconds > 0 else 0.0
    eta = format_duration((total - done) / rate) if rate > 0 and done < total else "--:--"
    if done >= total:
        eta = "0:00"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} records "
        f"{share:6.1%}  {rate:,.0f}/s  ETA {eta}"
    )


class ProgressBar:
    """Redraws one line on a terminal (a few times a second), or prints a line every few
    seconds to a log file."""

    def __init__(self, stream: IO[str], label: str, total: int) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.started = time.monotonic()
        self.shown_at = 0.0
        self.interactive = stream.isatty()

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown_at < (0.2 if self.interactive else 5.0):
            return
        self.shown_at = now
        line = f"{self.label} {format_progress(done, self.total, now - self.started)}"
        if self.interactive:
            self.stream.write(f"\r{line}" + ("\n" if final else ""))
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()


class LogReader:
    """Reads ranges of a projection's partitions straight from the broker (no consumer group)."""

    def __init__(self, bootstrap: str, topics: Sequence[str], batch_records: int) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.batch_records = batch_records
        self.partitions: list[TopicPartition] = []
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> tuple[Offsets, Offsets]:
        """Assign every partition; return the first and the end offsets of each."""
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=MAX_FETCH_BYTES // 4,
            fetch_max_bytes=MAX_FETCH_BYTES,
        )
        await self.consumer.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(list(self.topics))
        finally:
            await admin.close()
        self.partitions = sorted(
            TopicPartition(topic["topic"], partition["partition"])
            for topic in described
            for partition in topic["partitions"]
        )
        if not self.partitions:
            raise RebuildFailed(f"no partitions found for {', '.join(self.topics)}")
        self.consumer.assign(self.partitions)
        first = await self.consumer.beginning_offsets(self.partitions)
        end = await self.consumer.end_offsets(self.partitions)
        return _keyed(first), _keyed(end)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def read(self, start: Offsets, until: Offsets) -> AsyncIterator[list[RawRecord]]:
        """Batches of about batch_records records, from `start` up to (excluding) `until`."""
        consumer = self.consumer
        assert consumer is not None, "start() first"
        active = [tp for tp in self.partitions if start.get(_key(tp), 0) < until.get(_key(tp), 0)]
        consumer.pause(*self.partitions)
        for tp in active:
            consumer.seek(tp, start.get(_key(tp), 0))
        consumer.resume(*active)
        batch: list[RawRecord] = []
        while active:
            fetched = await consumer.getmany(
                *active, timeout_ms=1000, max_records=self.batch_records
            )
            for tp, records in fetched.items():
                end = until[_key(tp)]
                batch.extend(
                    RawRecord(
                        r.topic,
                        r.partition,
                        r.offset,
                        r.key,
                        r.value,
                        tuple(r.headers or ()),
                        r.timestamp,
                    )
                    for r in records
                    if r.offset < end
                )
            for tp in list(active):
                if await consumer.position(tp) >= until[_key(tp)]:
                    active.remove(tp)
                    consumer.pause(tp)
            if len(batch) >= self.batch_records or (batch and not active):
                yield batch
                batch = []


@contextmanager
def collector_held() -> Iterator[None]:
    """Hold Python's cyclic garbage collector for a whole rebuild, not only while a batch
    decodes (projector.sort_batch): re-enabled after each batch, it walks the batch's events,
    alive until their fold commits, and the rebuild's ids in memory; a tenth of the replay's
    CPU. A rebuild makes few cycles, and it is a command that ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _key(tp: TopicPartition) -> tuple[str, int]:
    return (tp.topic, tp.partition)


def _keyed(offsets: Mapping[TopicPartition, int]) -> Offsets:
    return {_key(tp): offset for tp, offset in offsets.items()}


def _to_read(start: Offsets, until: Offsets) -> int:
    return sum(max(end - start.get(tp, 0), 0) for tp, end in until.items())


@dataclass
class Outcome:
    switched: bool
    differences: list[Difference]
    replayed: int
    replay_seconds: float
    held_seconds: float
    retired: str | None
    report: str


class Rebuild:
    """One rebuild of one projection: replay into the shadow, follow, compare, switch."""

    def __init__(self, service: Service, *, batch_records: int, wait_seconds: float) -> None:
        self.projection = service.load_projection()
        self.rules = self.projection.rebuild_rules
        self.settings = service.settings()
        self.batch_records = batch_records
        self.wait_seconds = wait_seconds
        self.reader = LogReader(
            self.settings.platform.kafka_bootstrap,
            [topic.name for topic in self.projection.topics],
            batch_records,
        )

    async def run(self, *, force: bool, progress: IO[str]) -> Outcome:
        dsn = self.settings.dsn
        admin = await asyncpg.connect(dsn)
        try:
            live = await shadow.live_schema(admin)
            if live is None:
                raise RebuildFailed(
                    f"{self.projection.name}'s database holds no projection yet: start its worker"
                )
            if not await admin.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK):
                raise RebuildFailed(f"another rebuild of {self.projection.name} is running")
            builder = await connect_in_schema(dsn, shadow.SHADOW_SCHEMA, synchronous_commit="off")
            try:
                with collector_held():
                    return await self._rebuild(admin, builder, live, force=force, progress=progress)
            finally:
                await builder.close()
        finally:
            await admin.close()

    async def _rebuild(
        self,
        admin: asyncpg.Connection,
        builder: asyncpg.Connection,
        live: str,
        *,
        force: bool,
        progress: IO[str],
    ) -> Outcome:
        name = self.projection.name
        await shadow.create_shadow(builder, shadow.SHADOW_SCHEMA, self.projection.migrations)
        deferred = await shadow.drop_indexes(
            builder, shadow.SHADOW_SCHEMA, (*self.projection.read_only_indexes, *UNREAD_INDEXES)
        )
        folder = BulkFolder(
            self.projection,
            builder,
            consumer=f"{name}-rebuild",
            max_future_skew=timedelta(seconds=self.settings.platform.max_future_skew_seconds),
        )
        try:
            first, end = await self.reader.start()
            started = time.monotonic()
            await self._replay(
                folder, first, end, ProgressBar(progress, name, _to_read(first, end))
            )
            replayed = folder.tally.records
            filled = time.monotonic()
            # Counted in the replay: the shadow is not ready to serve before.
            await shadow.make_durable(builder, shadow.SHADOW_SCHEMA)
            await shadow.create_indexes(builder, deferred)
            replay_seconds = time.monotonic() - started
            finish_seconds = time.monotonic() - filled
            await self._follow_live(admin, folder, live, progress)
            since, differences = await self._compare_unheld(admin, builder, folder, live, progress)
            retired = None
            held_seconds = 0.0
            if force or not differences:
                async with admin.transaction():
                    await shadow.hold_live_writes(admin, live, self.rules, self.wait_seconds)
                    held_from = time.monotonic()
                    folder.watch()
                    await self._catch_up_exactly(admin, folder, live, progress)
                    differences += await self._compare(
                        admin, builder, live, folder.touched, applied_since=since
                    )
                    if force or not differences:
                        retired = f"retired_{datetime.now(UTC):%Y%m%d_%H%M%S}"
                        await shadow.carry_unsent_outbox(admin, live, shadow.SHADOW_SCHEMA)
                        await shadow.carry_ledgers(admin, live, shadow.SHADOW_SCHEMA, self.rules)
                        await shadow.switch(admin, live, shadow.SHADOW_SCHEMA, retired)
                held_seconds = time.monotonic() - held_from
        finally:
            await self.reader.stop()
        tally = folder.tally
        report = (
            f"{name}: replayed {replayed:,} records in {replay_seconds:.1f} s "
            f"({replayed / max(replay_seconds, 1e-9):,.0f} records/s, of it {finish_seconds:.1f} s "
            f"making the tables durable and building {len(deferred)} deferred indexes); "
            f"in all {tally.records:,} "
            f"records, {tally.applied:,} events applied, {tally.duplicates:,} duplicates, "
            f"{tally.ignored:,} ignored, {tally.dead_letters:,} invalid (dead-lettered live)"
            + (f", {len(tally.failed)} failed to fold" if tally.failed else "")
            + f"; live writes held {held_seconds * 1000:,.0f} ms"
        )
        return Outcome(
            retired is not None,
            differences,
            replayed,
            replay_seconds,
            held_seconds,
            retired,
            report,
        )

    async def _replay(
        self, folder: BulkFolder, start: Offsets, until: Offsets, bar: ProgressBar
    ) -> None:
        """Fold the range batch by batch, decoding the next batch while one folds."""
        done = 0
        folding: asyncio.Task[None] | None = None
        try:
            async for records in self.reader.read(start, until):
                batch = await folder.decode(records)
                if folding is not None:
                    await folding
                folding = asyncio.create_task(folder.fold(batch, len(records)))
                done += len(records)
                bar.update(done)
            if folding is not None:
                await folding
        finally:
            if folding is not None and not folding.done():
                folding.cancel()
        bar.update(done, final=True)

    async def _follow_live(
        self, admin: asyncpg.Connection, folder: BulkFolder, live: str, progress: IO[str]
    ) -> None:
        """Catch up with the live worker without holding it, until less than a batch is left
        (waiting where the live worker is behind the shadow), so that the held phase is short."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            live_positions = await shadow.positions(admin, live)
            behind = _behind(live_positions, folder.positions)
            left = _to_read(folder.positions, live_positions)
            if not behind and left <= self.batch_records:
                return
            if behind and time.monotonic() > deadline:
                raise RebuildFailed(
                    f"the live worker did not reach the shadow's positions within "
                    f"{self.wait_seconds:.0f} s (is it running?): {sorted(behind)[:5]}"
                )
            if left > self.batch_records:
                target = {
                    tp: max(live_positions.get(tp, 0), pos) for tp, pos in folder.positions.items()
                }
                target |= {tp: pos for tp, pos in live_positions.items() if tp not in target}
                bar = ProgressBar(progress, "catching up", left)
                await self._replay(folder, folder.positions, target, bar)
            else:
                await asyncio.sleep(0.5)

    async def _compare_unheld(
        self,
        admin: asyncpg.Connection,
        builder: asyncpg.Connection,
        folder: BulkFolder,
        live: str,
        progress: IO[str],
    ) -> tuple[datetime, list[Difference]]:
        """Compare everything without holding the live writes: the live tables as one snapshot
        shows them, with the shadow folded up to exactly the positions in that snapshot. Returns
        the differences, and a time before which every live id in the snapshot was applied (what
        was applied since is compared while the writes are held)."""
        since = await shadow.oldest_transaction_start(admin)
        async with admin.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await shadow.positions(admin, live)
            await self._catch_up_to(folder, snapshot, "catching up to a snapshot", progress)
            live_prints, rebuilt_prints = await asyncio.gather(
                shadow.fingerprints(admin, live, self.rules),
                shadow.fingerprints(builder, shadow.SHADOW_SCHEMA, self.rules),
            )
            missing = await shadow.applied_ids_missing(
                builder, live, shadow.SHADOW_SCHEMA, applied_before=since
            )
            differences = compare(live_prints, rebuilt_prints, missing)
            return since, await with_examples(differences, admin, live, builder, self.rules, None)

    async def _compare(
        self,
        admin: asyncpg.Connection,
        builder: asyncpg.Connection,
        live: str,
        customers: set[str] | None,
        *,
        applied_since: datetime,
    ) -> list[Difference]:
        """While the live writes are held, after `_compare_unheld`: the rows of the customers
        the catch-up folded and of those the projection relates to them (BulkFolder.touched;
        every row when it folded a clock tick, or `customers` is None)."""
        scope = sorted(customers) if customers is not None else None
        # Two sessions, so that PostgreSQL reads both schemas side by side.
        live_prints, rebuilt_prints = await asyncio.gather(
            shadow.fingerprints(admin, live, self.rules, scope),
            shadow.fingerprints(builder, shadow.SHADOW_SCHEMA, self.rules, scope),
        )
        missing = await shadow.applied_ids_missing(
            admin, live, shadow.SHADOW_SCHEMA, applied_since=applied_since
        )
        differences = compare(live_prints, rebuilt_prints, missing)
        return await with_examples(differences, admin, live, builder, self.rules, scope)

    async def _catch_up_to(
        self, folder: BulkFolder, positions: Offsets, label: str, progress: IO[str]
    ) -> None:
        """Fold exactly up to these live positions (never behind the shadow's)."""
        behind = _behind(positions, folder.positions)
        if behind:
            raise RebuildFailed(f"the live positions went back: {sorted(behind)[:5]}")
        left = _to_read(folder.positions, positions)
        if left:
            await self._replay(
                folder, dict(folder.positions), positions, ProgressBar(progress, label, left)
            )

    async def _catch_up_exactly(
        self, admin: asyncpg.Connection, folder: BulkFolder, live: str, progress: IO[str]
    ) -> None:
        """With the live writes held: fold exactly up to the live positions."""
        live_positions = await shadow.positions(admin, live)
        await self._catch_up_to(folder, live_positions, "final catch-up", progress)


def _behind(live: Offsets, rebuilt: Offsets) -> set[tuple[str, int]]:
    """Partitions where the live worker has not yet read as far as the shadow."""
    return {tp for tp, offset in rebuilt.items() if live.get(tp, 0) < offset}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    names = [service.name for service in platform.projections()]
    parser = argparse.ArgumentParser(prog="python -m crm_shared.ops.rebuild", description=__doc__)
    parser.add_argument("projection", choices=names)
    parser.add_argument(
        "--force", action="store_true", help="switch even when the rebuilt tables differ"
    )
    parser.add_argument("--batch-records", type=int, default=DEFAULT_BATCH_RECORDS)
    parser.add_argument(
        "--wait-seconds",
        type=float,
        default=300,
        help="how long to wait for the live worker to catch up, or for its batch in flight",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    service = next(s for s in platform.projections() if s.name == args.projection)
    configure_logging(f"{args.projection}-rebuild", "WARNING")
    rebuild = Rebuild(service, batch_records=args.batch_records, wait_seconds=args.wait_seconds)
    try:
        outcome = asyncio.run(rebuild.run(force=args.force, progress=sys.stderr))
    except (RebuildFailed, asyncpg.PostgresError, KafkaError, OSError) as error:
        # The live view is untouched: the switch is one transaction, and it did not commit.
        print(
            f"rebuild of {args.projection} failed: {type(error).__name__}: {error}", file=sys.stderr
        )
        return 2
    print(outcome.report)
    for difference in outcome.differences:
        print(f"  differs: {difference}")
    if outcome.switched:
        print(
            f"switched: {args.projection} now serves the rebuilt tables; the old ones are in "
            f"schema {outcome.retired} (DROP SCHEMA {outcome.retired} CASCADE frees them)"
        )
        return 0
    print(
        f"NOT switched: the rebuilt tables differ from the live ones (kept in schema "
        f"{shadow.SHADOW_SCHEMA}; --force switches anyway)"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
