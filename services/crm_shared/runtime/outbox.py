"""Derived events, exactly once with the view: the transactional outbox and its relay.

A fold returns the events it derives (crm_shared.runtime.derived); the projector writes them to the
`outbox` table in the transaction that changes the view and moves the consumed positions. The
worker's relay takes the oldest rows out of the table, publishes them in order (acks=all) and
commits, so a row is gone once Kafka has it. A derived event's id comes from the event that caused
it, so a relay that publishes again after a crash, or a rebuild that derives the same events
again, produces duplicates that consumers drop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from operator import itemgetter

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from crm_shared.runtime import metrics
from crm_shared.runtime.db import TRANSIENT_ERRORS, columns
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.packed import UnnestColumns

log = logging.getLogger(__name__)

_RELAY_LOCK = 7412
"""Advisory lock: one relay at a time per database, so derived events leave in seq order."""


_OUTBOX_FIELDS = ("topic", "key", "value", "event_id", "type")
_OUTBOX_ROWS = UnnestColumns.named(_OUTBOX_FIELDS, key="bytea", value="bytea")


async def write(conn: asyncpg.Connection, derived: Sequence[Derived]) -> None:
    """Add derived events to the outbox; the caller's transaction holds the view change."""
    if derived:
        await conn.execute(
            f"INSERT INTO outbox ({_OUTBOX_ROWS.names}) {_OUTBOX_ROWS.select}",
            *_OUTBOX_ROWS.arguments(columns(derived, *_OUTBOX_FIELDS)),
        )


TAKE_OLDEST_SQL = (
    "DELETE FROM outbox WHERE seq = ANY(ARRAY(SELECT seq FROM outbox ORDER BY seq LIMIT $1))"
    " RETURNING seq, topic, key, value, event_id, type"
)
"""Deleting what is published, in the transaction that publishes it, leaves one dead version a
row; marking rows sent and pruning them later left two, and kept minutes of sent rows in the
table for autovacuum to walk (decisions.md, "The outbox deletes what it publishes").

The oldest seqs are gathered first (`= ANY(ARRAY(...))`) and their rows then found by the
primary key. Written as `seq IN (SELECT ...)`, the planner may join the chosen seqs to a scan
of the whole table, which it prices from statistics taken when the outbox was nearly empty: a
backlog and its dead rows then made every take read all of it (244 ms a take, 40 % of a core in
the interaction's database at 2,000 events/s, and a backlog that fed itself;
docs/performance.md)."""

Send = Callable[[Sequence[Derived]], Awaitable[None]]
"""Publishes to Kafka and returns once every record is acknowledged (acks=all)."""


def producer_send(producer: AIOKafkaProducer) -> Send:
    """`Send` through an aiokafka producer (acks=all): every record queued, then every ack
    awaited, so a batch costs one wait, not one per record."""

    async def send(derived: Sequence[Derived]) -> None:
        sends = [await producer.send(item.topic, item.value, key=item.key) for item in derived]
        await asyncio.gather(*sends)

    return send


class OutboxRelay:
    """Publishes a projection's outbox to Kafka, oldest first; woken when a batch derives."""

    def __init__(
        self,
        projection: str,
        pool: asyncpg.Pool,
        send: Send,
        *,
        batch_size: int = 500,
        idle_seconds: float = 1.0,
        report_seconds: float = 5.0,
    ) -> None:
        self.projection = projection
        self.pool = pool
        self.send = send
        self.batch_size = batch_size
        self.idle_seconds = idle_seconds
        self.report_seconds = report_seconds
        self.report_due = 0.0
        self.wake = asyncio.Event()

    async def relay_once(self) -> int:
        """Publish up to one batch of the oldest events and delete them; how many were sent.

        The rows are deleted in a transaction that commits only after Kafka acknowledged them: a
        failed send leaves them in place, and a crash after the send publishes them again, which
        consumers drop by id.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RELAY_LOCK):
                return 0  # another replica relays this database
            rows = sorted(await conn.fetch(TAKE_OLDEST_SQL, self.batch_size), key=itemgetter(0))
            if not rows:
                return 0
            derived = [
                Derived(row["topic"], row["key"], row["value"], row["event_id"], row["type"])
                for row in rows
            ]
            await self.send(derived)
        for event_type in {d.type for d in derived}:
            metrics.OUTBOX_PUBLISHED.labels(self.projection, event_type).inc(
                sum(d.type == event_type for d in derived)
            )
        return len(rows)

    async def report(self) -> None:
        """Export the backlog and the age of its oldest event.

        The count reads the whole table, dead rows included: under load the relay's deletes
        leave up to a minute of them before autovacuum, and a count after every pass cost 5 ms
        each, ten times a second (`report_when_due` spaces them)."""
        async with self.pool.acquire() as conn:
            backlog, oldest_age = await conn.fetchrow(
                "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)),"
                " 0) FROM outbox"
            )
        metrics.OUTBOX_BACKLOG.labels(self.projection).set(backlog)
        metrics.OUTBOX_OLDEST_AGE.labels(self.projection).set(float(oldest_age))

    async def report_when_due(self) -> None:
        """`report`, at most once every `report_seconds`."""
        now = time.monotonic()
        if now >= self.report_due:
            self.report_due = now + self.report_seconds
            await self.report()

    async def run(self, transient: tuple[type[BaseException], ...]) -> None:
        """Relay until cancelled; transient failures (Kafka or the database away) are retried.
        The backlog is reported on its own schedule, also while the relay catches up or fails:
        the oldest event's age is what the stuck-outbox alert watches."""
        delay = 0.1
        while True:
            self.wake.clear()  # a batch deriving from now on wakes the wait below
            try:
                more_waiting = await self.relay_once() == self.batch_size
                delay = 0.1
            except transient as error:
                log.warning("outbox relay failed, retrying", extra={"error": repr(error)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                more_waiting = True  # retry at once
            try:
                await self.report_when_due()
            except transient as error:
                log.warning("outbox backlog not reported", extra={"error": repr(error)})
            if more_waiting:
                continue
            try:
                async with asyncio.timeout(self.idle_seconds):
                    await self.wake.wait()
            except TimeoutError:
                pass


@asynccontextmanager
async def relaying(
    projection: str, pool: asyncpg.Pool, bootstrap: str, client_id: str
) -> AsyncIterator[OutboxRelay]:
    """An outbox relay with a Kafka producer of its own, relaying until the block ends: for a
    process beside the worker that derives events (the sender, a jobs process). Several relays
    of one database take turns (one relays at a time), so the events still leave in order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        client_id=client_id,
    )
    await producer.start()
    relay = OutboxRelay(projection, pool, producer_send(producer))
    task = asyncio.create_task(relay.run((*TRANSIENT_ERRORS, KafkaError)))
    try:
        yield relay
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
