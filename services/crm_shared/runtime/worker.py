"""The faust edge of every projection worker: read topics in batches, hand them to BatchProjector.

A service's worker module is three lines: build its Projection, call `run_worker`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, NoReturn, cast

import asyncpg
import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from faust.exceptions import NotReady
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, ServiceT

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.topics import DEAD_LETTER
from crm_shared.runtime import memory, metrics, retention
from crm_shared.runtime.config import ServiceSettings
from crm_shared.runtime.db import TRANSIENT_ERRORS, open_pool
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.health import serve_metrics_and_health
from crm_shared.runtime.jobs import periodic_runner
from crm_shared.runtime.logs import configure_logging, logging_config
from crm_shared.runtime.outbox import OutboxRelay
from crm_shared.runtime.projector import (
    BatchProjector,
    Projection,
    RawRecord,
    load_positions,
)

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 8 * 1024 * 1024
FETCH_BYTES_PER_PARTITION = 256 * 1024
"""What one fetch brings of a partition at most. The consumer keeps each partition's fetched
data until its records are handed on, so a worker behind its topics holds up to this times its
partitions: with 8 MiB (the record limit, as before 2026-11-30) up to 672 MiB for the
interaction worker's 84, growing with a backlog (40 MiB in 46 responses six minutes into a
lagging soak). 256 KiB bounds that to 21 MiB, still about 47,000 records ahead (23 fetches of
`batch_size`). A larger record still comes whole: the broker returns a partition's first batch
whatever its size (KIP-74), as tests/integration/test_bad_input.py's 2 MiB event shows."""

FETCH_MIN_BYTES = 64 * 1024
FETCH_MAX_WAIT_MS = 100
"""The broker answers a fetch once this much is there or this long has passed: fuller fetches
under load (a fetch names every assigned partition, about as costly for the broker and the
client whether it brings one record or a thousand), at most this late when records trickle."""


REVOKE_WAIT_SECONDS = 5.0
"""How long a rebalance waits for the batch in flight (half the group's session timeout)."""
IDLE_POLL_SECONDS = 1.0
"""How long one look for records waits when none come (records end the wait at once)."""
KAFKA_COMMIT_SECONDS = 1.0
"""How often the database's positions are copied to the group's offsets in Kafka."""

FetchHandler = Callable[[Mapping[TP, Sequence[ConsumerRecord[bytes, bytes]]]], Awaitable[None]]


class BatchConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """faust's consumer thread, whose aiokafka consumer asks for fuller fetches. faust passes
    neither setting through, so they are set on the consumer it builds before it starts (the
    private attributes aiokafka gives its fetcher: tests/unit/test_faust_contract.py)."""

    def _create_worker_consumer(self, transport: aiokafka_driver.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class BatchConsumer(aiokafka_driver.Consumer):
    """faust's Kafka consumer, handing each whole fetch to the projection at once.

    faust keeps the app, the group membership, the fetching thread and the rebalance signals;
    what this replaces is its per-record path (an awaited callback, a stream queue, an event and
    an ack for every record), which cost more than our whole fold. It overrides the private
    `Consumer._drain_messages` (the loop faust's Fetcher runs) and calls the private
    `_wait_next_records` (one fetch, paused while a rebalance stops the flow), and commits with
    the private `_commit`: tests/unit/test_faust_contract.py fails when any of them changes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._positions_committed: dict[tuple[str, int], int] = {}
        self._positions_committed_at = 0.0

    async def commit_positions(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Copy positions the database holds to the group's offsets in Kafka, at most every
        KAFKA_COMMIT_SECONDS: lag tools see them, and faust's seek to committed offsets after a
        rebalance lands where we resume. The database stays the source of truth (ahead or equal).
        """
        now = time.monotonic()  # checked first: the reader calls this every few milliseconds
        if now - self._positions_committed_at < KAFKA_COMMIT_SECONDS or (
            positions == self._positions_committed
        ):
            return
        self._positions_committed = dict(positions)
        self._positions_committed_at = now
        await self._commit(
            {TP(topic, partition): offset for (topic, partition), offset in positions.items()}
        )

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        transport = cast(BatchTransport, self.transport)
        while not (self.should_stop or fetcher.should_stop):
            fetched, _ = await self._wait_next_records(IDLE_POLL_SECONDS)
            if not self.should_stop:
                await transport.handle_fetch(fetched or {})


class BatchTransport(aiokafka_driver.Transport):
    """faust's aiokafka transport with the batch consumer (set as `app.transport`)."""

    Consumer = BatchConsumer

    def __init__(
        self, app: faust.App, handle_fetch: FetchHandler, projector: BatchProjector
    ) -> None:
        super().__init__(app.conf.broker_consumer, app)
        self.handle_fetch = handle_fetch
        self.projector = projector


def group_id(projection: Projection) -> str:
    """The Kafka consumer group (and faust app id) of a projection's workers."""
    return f"crm-{projection.name}"


def build_app(
    projection: Projection, settings: ServiceSettings, loop: asyncio.AbstractEventLoop
) -> tuple[faust.App, BatchProjector]:
    """The faust app of one projection: one agent over its topics, resuming from PostgreSQL."""
    pool = loop.run_until_complete(
        open_pool(settings.dsn, projection.migrations, settings.pool_size)
    )
    loop.run_until_complete(
        rewind_group_to_database(
            settings.platform.kafka_bootstrap,
            group_id(projection),
            [topic.name for topic in projection.topics],
            pool,
        )
    )
    app = faust.App(
        group_id(projection),
        broker=f"kafka://{settings.platform.kafka_bootstrap}",
        loop=loop,
        value_serializer="raw",
        key_serializer="raw",
        autodiscover=False,
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=MAX_RECORD_BYTES + 64 * 1024,
        consumer_max_fetch_size=FETCH_BYTES_PER_PARTITION,
        broker_max_poll_records=settings.batch_size,
        # A replica that dies gives its partitions to the others within ~10 s, not faust's 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        store="memory://",
    )
    dead_letter_topic = app.topic(DEAD_LETTER.name)

    async def send_dead_letters(letters: Sequence[DeadLetter]) -> None:
        """Each letter is on the broker before the batch's positions move past its record."""
        await _send_acknowledged(
            dead_letter_topic.send(key=letter.key, value=letter.value, headers=letter.headers())
            for letter in letters
        )

    async def send_derived(derived: Sequence[Derived]) -> None:
        """Each derived event is on the broker before its outbox row is deleted. Through the
        producer itself, not a faust Topic: a Topic's send builds a pending message, a future and
        a sensor state per record, which cost more than the send (the interaction worker relays
        a journey change for about every other record it folds)."""
        producer = await app.maybe_start_producer()
        await _send_acknowledged(
            producer.send(item.topic, item.key, item.value, None, None, None) for item in derived
        )

    relay = OutboxRelay(projection.name, pool, send_derived)
    projector = BatchProjector(
        projection,
        pool,
        send_dead_letters,
        on_derived=relay.wake.set,
        halt_after=settings.halt_after_failures,
        halt_retry_seconds=settings.halt_retry_seconds,
        max_future_skew=timedelta(seconds=settings.platform.max_future_skew_seconds),
        max_batch=settings.batch_size,
    )

    async def read_fetch(fetched: Mapping[TP, Sequence[ConsumerRecord[bytes, bytes]]]) -> None:
        await projector.feed(
            [
                RawRecord(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.key,
                    record.value,
                    record.headers,
                    record.timestamp,
                )
                for records in fetched.values()
                for record in records
            ]
        )
        _report_lag(app, projection.name, projector.positions)
        await cast(BatchConsumer, app.consumer).commit_positions(projector.positions)

    app.transport = BatchTransport(app, read_fetch, projector)
    app.topics.add(app.topic(*(topic.name for topic in projection.topics)))

    async def relay_outbox() -> None:
        # NotReady: the producer stops before this task while the worker stops; the rows wait.
        await relay.run((*TRANSIENT_ERRORS, KafkaError, NotReady))

    app.task(relay_outbox)

    async def prune_bookkeeping() -> None:
        """Keep applied_events to the deduplication window, on every replica."""
        await retention.prune_outside_window(pool, projection.name, settings.dedup_window)

    app.timer(settings.prune_interval_seconds)(prune_bookkeeping)

    if projection.periodic:
        background = loop.run_until_complete(
            open_pool(settings.dsn, projection.migrations, settings.pool_size, background=True)
        )
    for job in projection.periodic:
        app.timer(job.interval_seconds, name=f"{projection.name}-{job.name}")(
            periodic_runner(job, background, projection.name)
        )

    async def finish_batch(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        """Let the batch in flight commit before the partitions go to another replica (bounded:
        a halted projection must not hold up the group; the claims keep a late commit exact)."""
        try:
            await asyncio.wait_for(asyncio.shield(projector.settle()), REVOKE_WAIT_SECONDS)
        except TimeoutError:
            log.warning(
                "batch still committing at rebalance", extra={"projection": projection.name}
            )

    async def resume_from_database(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        """On every rebalance, read each assigned partition again from its stored position
        (the start of the log when none is stored); what was gathered but not committed is
        read again from there."""
        assigned: set[TP] = args[0]
        dropped = projector.forget_waiting()
        positions = await projector.reload_positions()
        for tp in assigned:
            await app.consumer.seek(tp, positions.get((tp.topic, tp.partition), 0))
        log.info(
            "partitions assigned",
            extra={"count": len(assigned), "projection": projection.name, "reread": dropped},
        )

    async def abandon_batch(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        """Stopping (after the revocation's bounded wait): cancel what is still in flight rather
        than let it hold the stop and the event loop (exactly once: it rolls back)."""
        await projector.abandon()

    # mode types signal receivers as sync functions
    app.on_partitions_revoked.connect(finish_batch)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(resume_from_database)  # type: ignore[arg-type]
    app.on_before_shutdown.connect(abandon_batch)  # type: ignore[arg-type]
    return app, projector


async def _send_acknowledged(sends: Iterable[Awaitable[Awaitable[Any]]]) -> None:
    """Queue every record first, then wait for all of the broker's acks (acks=all)."""
    pending = [await send for send in sends]
    await asyncio.gather(*pending)


async def rewind_group_to_database(
    bootstrap: str, group_id: str, topics: Sequence[str], pool: asyncpg.Pool
) -> dict[tuple[str, int], int]:
    """Move the group's committed offsets back to the database's positions where they are ahead.

    Normally the database is ahead (it commits first). It is behind only when the projection was
    dropped or restored; then faust, which seeks to Kafka's committed offsets after a rebalance,
    would skip events. Run before the worker joins its group; returns the partitions rewound.
    """
    async with pool.acquire() as conn:
        positions = await load_positions(conn)
    committed = await committed_offsets(bootstrap, group_id)
    rewind = {
        tp: positions.get((tp.topic, tp.partition), 0)
        for tp, meta in committed.items()
        if tp.topic in topics and meta.offset > positions.get((tp.topic, tp.partition), 0)
    }
    if rewind:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(list(rewind))
            await consumer.commit(rewind)
        finally:
            await consumer.stop()
        log.warning(
            "database behind Kafka: replaying from the database's positions",
            extra={"group": group_id, "partitions": len(rewind)},
        )
    return {(tp.topic, tp.partition): offset for tp, offset in rewind.items()}


async def committed_offsets(
    bootstrap: str, group_id: str, wait_seconds: float = 60
) -> dict[TopicPartition, OffsetAndMetadata]:
    """The group's committed offsets; waits while a new broker is still creating its group
    coordinator (the offsets topic appears with the first group)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                committed: dict[
                    TopicPartition, OffsetAndMetadata
                ] = await admin.list_consumer_group_offsets(group_id)
                return committed
            except KafkaError as error:
                if not error.retriable or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await admin.close()


def _report_lag(app: faust.App, name: str, positions: dict[tuple[str, int], int]) -> None:
    consumer = app.consumer
    for (topic, partition), next_offset in positions.items():
        try:
            highwater = consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned to this worker (any more)
            continue
        if highwater is not None:
            metrics.CONSUMER_LAG.labels(name, topic, str(partition)).set(
                max(highwater - next_offset, 0)
            )


def run_worker(projection: Projection, settings: ServiceSettings) -> None:
    """Run one projection worker until SIGTERM/SIGINT; faust stops the stream after the batch."""
    configure_logging(f"{projection.name}-worker", settings.platform.log_level)
    allocator = memory.tune_allocator()  # before faust's consumer thread and the job threads
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app, projector = build_app(projection, settings, loop)
    serve_metrics_and_health(settings.worker_metrics_port, lambda: projector.halted)
    memory.freeze_startup_objects()  # faust's consumer and our pools, made after, are few
    log.info(
        "worker starting",
        extra={
            "projection": projection.name,
            "metrics_port": settings.worker_metrics_port,
            "allocator": allocator,
        },
    )
    try:
        BoundedStopWorker(
            app,
            loop=loop,
            loglevel=settings.platform.log_level,
            logging_config=logging_config(f"{projection.name}-worker", settings.platform.log_level),
            quiet=True,
        ).execute_from_commandline()
    except SystemExit as stopped:
        exit_now(stopped.code)


STOP_SECONDS = 8.0
"""At most this long from a stop signal to the process's end: the batch in flight gets
REVOKE_WAIT_SECONDS to commit, then is cancelled (see `abandon_batch`); whatever still holds the
stop after this (a step of a fold that does not yield, a query slow to cancel) is cut short as a
crash would be, which loses nothing (the positions are in the view's transaction)."""


class BoundedStopWorker(faust.Worker):
    """faust's worker, whose stop after SIGTERM or SIGINT ends the process within STOP_SECONDS.

    The deadline is armed in `_schedule_shutdown`, mode's private handler of those signals
    (tests/unit/test_faust_contract.py fails if it changes), run from the loop's signal callback:
    a thread ends the process when it expires, whatever the event loop is doing."""

    def _schedule_shutdown(self, signal: Any) -> None:
        deadline = threading.Timer(STOP_SECONDS, _stop_overran, args=(signal,))
        deadline.daemon = True
        deadline.start()
        super()._schedule_shutdown(signal)


def _stop_overran(signal: Any) -> None:
    log.error("worker still stopping after its deadline: exiting", extra={"signal": str(signal)})
    exit_now(1)


def exit_now(code: str | int | None) -> NoReturn:
    """End the process once faust has stopped, without waiting for threads: a periodic job's
    computation in a thread (a model fit, a neighbour list) cannot be interrupted, and the
    interpreter would wait for it at exit, a minute or more after SIGTERM. Its result was to be
    written by a transaction that will not come now, so nothing is lost; the job runs again at
    the next start."""
    if isinstance(code, str):
        print(code, file=sys.stderr)  # what SystemExit would have printed
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
