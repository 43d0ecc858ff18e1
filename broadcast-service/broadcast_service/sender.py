"""Broadcast sender: sends the planned messages through the adapter of their channel, exactly once
as far as the ledger can tell, and publishes what became of them.

python -m broadcast_service.sender

A process of its own (not a job of the worker), so that sending scales and fails apart from
folding: several senders share the work by claiming rows with FOR UPDATE SKIP LOCKED. Each
message goes through the ledger in `outbound_messages`:

1. claim: a campaign's planned chunk whose first message is due is written out as rows when
   fewer than a claim's worth are due (`store.take_due_chunk`), then the due rows are locked,
   checked again against the customer's current consents (cancelled or postponed when refused)
   and marked 'sending' with this sender's id and a lease,
   in one commit, before any adapter is called;
2. start: just before its adapter call, the message is marked started and its attempt counted;
   the send waits for that commit, and at most as many messages as the adapter has connections
   are started and not yet recorded;
3. send: through the adapter, at most `send_rate` a second;
4. record: 'sent', planned again with backoff, or 'failed', with the outcome events written to the
   outbox in the same commit (so an event is published if and only if the step is recorded).

One writer task commits the start marks and the records together (group commit), so a message
costs a share of a commit rather than one. The next batch is claimed while the current one is
sent (`send_due`), so the connections do not wait for claims.

A claim whose lease ended is resolved by `delivery.expired_claim`: never started, it is planned
again; started on a channel whose provider dedupes, it is sent again with the same
Idempotency-Key; a started e-mail may have arrived, so it is recorded as failed (interrupted)
and never sent twice (see docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import uvloop
from prometheus_client import start_http_server

from broadcast_service import delivery, metrics, rendering, store
from broadcast_service.adapters import Adapter, SmtpAdapter, WebhookAdapter
from broadcast_service.config import MIGRATIONS, SenderSettings
from broadcast_service.decision import sends_since
from broadcast_service.delivery import (
    DEDUPED_CHANNELS,
    INTERRUPTED_REASON,
    ExpiredClaim,
    NextStep,
    OutboundMessage,
    Result,
    SendResult,
)
from broadcast_service.mail import MailIdentity
from broadcast_service.projection import RecentSend
from crm_shared.contracts.events import Channel
from crm_shared.runtime import memory, outbox
from crm_shared.runtime.db import TRANSIENT_ERRORS, open_pool
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.logs import configure_logging
from crm_shared.runtime.metrics import count, counted_on_commit
from crm_shared.runtime.outbox import relaying

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
GROUP_COMMIT_LINGER_SECONDS = 0.003
"""How long the ledger writer waits for more to commit: a few ms of latency a message buys a
commit (six statements) shared by many messages instead of a few, on the sender and PostgreSQL."""
QUEUE_REPORT_SECONDS = 5.0


class Throttle:
    """At most `rate` starts a second, evenly spaced (0: no limit)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1 / rate if rate > 0 else 0.0
        self.clock = clock
        self.next_slot = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = self.clock()
        slot = max(now, self.next_slot)
        self.next_slot = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(frozen=True, slots=True)
class Attempt:
    message: OutboundMessage
    result: SendResult


Commit = Callable[[list[str], list[Attempt]], Awaitable[set[str]]]
"""Commits start marks and finished attempts in one transaction; returns the messages started."""


class GroupCommit:
    """The sender's one ledger writer: the start marks of the next sends and the records of the
    finished ones go into one commit, the next `linger` seconds after something is queued and the
    previous is done (so one commit carries many messages). A send waits for its start mark; a
    record is not waited for, but is queued before the next start of its connection, so it is
    committed no later than that."""

    def __init__(self, commit: Commit, linger: float = GROUP_COMMIT_LINGER_SECONDS) -> None:
        self.commit = commit
        self.linger = linger
        self.starts: dict[str, asyncio.Future[bool]] = {}
        self.finished: list[Attempt] = []
        self.pending = asyncio.Event()
        self.settled = asyncio.Event()
        self.settled.set()

    async def start(self, message_id: str) -> bool:
        """Whether the message may go now: its start mark is committed. False if this sender no
        longer holds it or the database failed: then it is left claimed, and its lease lapses."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.starts[message_id] = future
        self._wake()
        return await future

    def finish(self, attempt: Attempt) -> None:
        self.finished.append(attempt)
        self._wake()

    def _wake(self) -> None:
        self.settled.clear()
        self.pending.set()

    async def flush(self) -> None:
        """Until everything queued is committed."""
        await self.settled.wait()

    async def run(self) -> None:
        """Commit whatever is queued, again and again; a database away is waited for."""
        delay = 0.1
        while True:
            await self.pending.wait()
            await asyncio.sleep(self.linger)
            self.pending.clear()
            starts, self.starts = self.starts, {}
            finished, self.finished = self.finished, []
            if not starts and not finished:
                self.settled.set()
                continue
            try:
                started = await self.commit(list(starts), finished)
            except TRANSIENT_ERRORS as error:
                log.warning("sender cannot record, retrying", extra={"error": repr(error)})
                _answer(starts, set())
                self.finished[:0] = finished
                self.pending.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.1
            _answer(starts, started)
            if not self.pending.is_set():
                self.settled.set()


def _answer(starts: Mapping[str, asyncio.Future[bool]], started: set[str]) -> None:
    for message_id, future in starts.items():
        if not future.done():  # its send was cancelled meanwhile
            future.set_result(message_id in started)


class Sender:
    """Claims, sends and records; the pool, the adapters and the clock are given."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        adapters: Mapping[str, Adapter],
        settings: SenderSettings,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        jitter: Callable[[], float] = random.random,
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.adapters = adapters
        self.settings = settings
        self.now = now
        self.jitter = jitter
        self.on_recorded = on_recorded
        self.throttle = Throttle(settings.send_rate)
        self.policy = settings.contact_policy()
        self.stopping = asyncio.Event()
        self.identity = uuid.uuid4().hex
        """Whose claims these are: a sender records only messages it still holds."""
        by_adapter: dict[int, asyncio.Semaphore] = {}
        self.slots = {
            channel: by_adapter.setdefault(id(adapter), asyncio.Semaphore(adapter.connections))
            for channel, adapter in adapters.items()
        }
        """Messages started and not yet recorded, at most one per connection of the adapter:
        all that a crash can leave ambiguous."""
        self.ledger = GroupCommit(self._commit)

    def stop(self) -> None:
        """Claim and start nothing more; the messages on the wire are recorded, the rest of the
        batch is planned again at once, then `run` returns: a restart (SIGTERM) leaves nothing
        started and unrecorded, and waits for a few sends rather than a whole throttled batch."""
        self.stopping.set()

    async def claim(self) -> list[OutboundMessage]:
        """Lock the due messages, check them again, and mark those that may go 'sending'."""
        now = self.now()
        with counted_on_commit():  # a claim rolled back counts no cancellation
            async with self.pool.acquire() as conn, conn.transaction():
                return await self._claim(conn, now)

    async def _claim(self, conn: asyncpg.Connection, now: datetime) -> list[OutboundMessage]:
        """The claim, in the caller's transaction. A campaign's planned chunk is written out as
        rows here, when fewer than a claim's worth of rows are due."""
        await store.take_due_chunk(conn, now, self.settings.claim_batch)
        due = await store.claim_due(conn, now, self.settings.claim_batch)
        if not due:
            return []
        due = await rendering.render_claimed(conn, due, rendering.links_of(self.settings), now)
        customers = {message.customer_id for message in due}
        reaches = await store.reaches_of(conn, customers)
        sends = await store.recent_sends(conn, customers, sends_since(now))
        ready: list[OutboundMessage] = []
        held: list[tuple[OutboundMessage, delivery.SendVerdict]] = []
        for message in due:
            customer_sends = sends.setdefault(message.customer_id, [])
            verdict = delivery.send_time_check(
                message, reaches[message.customer_id], customer_sends, now, self.policy
            )
            if verdict.send:
                ready.append(message)
                # Counted at once: two campaigns' messages in one batch share the budget.
                customer_sends.append(RecentSend(message.channel, message.purpose, now))
            else:
                held.append((message, verdict))
        if held:
            await self._hold_back(conn, held, now)
        if ready:
            lease_until = now + timedelta(seconds=self.settings.lease_seconds)
            ids = [m.message_id for m in ready]
            await store.hold_claims(conn, ids, self.identity, lease_until)
        return ready

    async def _hold_back(
        self,
        conn: asyncpg.Connection,
        held: Sequence[tuple[OutboundMessage, delivery.SendVerdict]],
        now: datetime,
    ) -> None:
        """Refused at send time: postponed past quiet hours, or cancelled with the reason."""
        await store.hold_back(
            conn,
            [message.message_id for message, _ in held],
            ["planned" if v.wait_until else CANCELLED for _, v in held],
            [v.wait_until for _, v in held],
            [v.reason for _, v in held],
        )
        cancelled = [(message, v) for message, v in held if v.wait_until is None]
        if cancelled:
            await store.add_outcomes(
                conn,
                [message for message, _ in cancelled],
                [CANCELLED] * len(cancelled),
                [v.reason for _, v in cancelled],
                now,
            )
        for message, _ in cancelled:
            count(metrics.MESSAGES.labels(message.channel, CANCELLED))

    async def send_due(self) -> None:
        """Claim and send until nothing is due or the sender stops. The next batch is claimed
        while the current one is sent, and its sends queue for the connections behind the
        current one's, so no connection waits for a claim or for the end of a batch; the one
        ledger writer serves both batches."""
        writer = asyncio.create_task(self.ledger.run())
        sending = asyncio.create_task(self._send_claimed())
        try:
            done, _ = await asyncio.wait({writer, sending}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                writer.result()  # the writer failed for good: its error ends the sender
            sending.result()
        finally:
            sending.cancel()
            writer.cancel()

    async def _send_claimed(self) -> None:
        """Batches in turn, each claimed while the one before it is sent; returns once every
        message claimed is recorded (or left claimed). When a claim or a send fails, the sends
        in flight still finish and are recorded before the error goes on (a send cut short would
        be recorded as interrupted, never sent again); when cancelled (the sender stops or its
        ledger writer failed for good), they are cancelled too: what has not started stays
        claimed and its lease lapses (`delivery.expired_claim`)."""
        previous: asyncio.Future[list[None]] = asyncio.gather()
        current = previous
        claiming = asyncio.create_task(self._next_batch())
        try:
            while batch := await claiming:
                current = asyncio.gather(*map(self._attempt, batch))
                if self.throttle.interval:
                    # Throttled, a batch takes long: the next one claimed now would wait for it,
                    # and its leases, which run from the claim, could end before it starts.
                    await current
                claiming = asyncio.create_task(self._next_batch())
                await previous
                previous = current
            await previous
            await self.ledger.flush()
        except asyncio.CancelledError:
            for work in (claiming, previous, current):
                work.cancel()
            raise
        except Exception:
            claiming.cancel()  # rolled back, or left claimed
            await asyncio.gather(previous, current, return_exceptions=True)
            await self.ledger.flush()
            raise

    async def _next_batch(self) -> list[OutboundMessage]:
        """The claims whose lease ended resolved, then the next batch claimed (none once
        stopping)."""
        if self.stopping.is_set():
            return []
        await self.recover()
        return await self.claim()

    async def _attempt(self, message: OutboundMessage) -> None:
        adapter = self.adapters.get(message.channel)
        if adapter is None:
            result = SendResult(Result.PERMANENT, f"no adapter for {message.channel}")
            self.ledger.finish(Attempt(message, result))
            return
        async with self.slots[message.channel]:
            await self.throttle.wait()
            if self.stopping.is_set() or not await self.ledger.start(message.message_id):
                return  # left claimed and not started: planned again (see run and recover)
            started = time.perf_counter()
            result = await adapter.send(message)
            metrics.SEND_SECONDS.labels(message.channel).observe(time.perf_counter() - started)
            self.ledger.finish(Attempt(message, result))

    async def _commit(self, starts: list[str], finished: list[Attempt]) -> set[str]:
        """One group commit: the records of finished attempts and the next start marks."""
        now = self.now()
        async with self.pool.acquire() as conn, conn.transaction():
            steps, recorded = await self._record(conn, finished, now)
            started: set[str] = set()
            if starts:
                lease_until = now + timedelta(seconds=self.settings.lease_seconds)
                started = await store.mark_started(conn, starts, self.identity, now, lease_until)
        if finished:
            self.on_recorded()
            _count(finished, steps, recorded)
        return started

    async def _record(
        self, conn: asyncpg.Connection, attempts: Sequence[Attempt], now: datetime
    ) -> tuple[list[NextStep], set[str]]:
        """The ledger's last step and the outcome events, in the caller's transaction."""
        if not attempts:
            return [], set()
        settings = self.settings
        steps = [
            delivery.next_step(
                a.result,
                a.message.attempts + 1,  # counted by the start mark after the row was read
                settings.max_attempts,
                now,
                timedelta(seconds=settings.retry_base_seconds),
                timedelta(seconds=settings.retry_cap_seconds),
                self.jitter(),
            )
            for a in attempts
        ]
        recorded = await store.finish_attempts(
            conn,
            [a.message.message_id for a in attempts],
            [step.state for step in steps],
            [step.retry_at for step in steps],
            [None if a.result.result is Result.SENT else a.result.detail for a in attempts],
            [a.result.provider_reference for a in attempts],
            now,
            self.identity,
        )
        told = [
            (a, step)
            for a, step in zip(attempts, steps, strict=True)
            if step.outcome is not None and a.message.message_id in recorded
        ]
        new = await store.add_outcomes(
            conn,
            [a.message for a, _ in told],
            [str(step.outcome) for _, step in told],
            [a.result.detail for a, _ in told],
            now,
        )
        await outbox.write(conn, list(_events((told[i] for i in new), now)))
        return steps, recorded

    async def recover(self) -> None:
        """Resolve the claims whose lease ended, as `delivery.expired_claim` says: planned again,
        or failed as interrupted with its outcome event (an e-mail that may have arrived)."""
        now = self.now()
        async with self.pool.acquire() as conn, conn.transaction():
            expired = await store.take_expired_claims(
                conn, now, self.identity, self.settings.claim_batch
            )
            fates = [delivery.expired_claim(m.channel, started) for m, started in expired]
            again = [m.message_id for (m, _), f in zip(expired, fates, strict=True) if f.sends]
            if again:
                await store.plan_again(conn, again)
            interrupted = [
                Attempt(m, SendResult(Result.PERMANENT, INTERRUPTED_REASON))
                for (m, _), fate in zip(expired, fates, strict=True)
                if fate is ExpiredClaim.INTERRUPTED
            ]
            steps, recorded = await self._record(conn, interrupted, now)
        if interrupted:
            self.on_recorded()
            _count(interrupted, steps, recorded)
            log.warning(
                "e-mails interrupted mid-send by a sender that died, recorded as failed",
                extra={"messages": len(interrupted)},
            )
        for (message, _), fate in zip(expired, fates, strict=True):
            metrics.EXPIRED_CLAIMS.labels(message.channel, fate).inc()

    async def run(self) -> None:
        """Claim and send until stopped; a database away is waited for, not fatal."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await self.send_due()
                pause, delay = self.settings.idle_seconds, 0.5
            except TRANSIENT_ERRORS as error:
                log.warning(
                    "sender cannot reach the database, retrying", extra={"error": repr(error)}
                )
                pause, delay = delay, min(delay * 2, 10.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), pause)
        with contextlib.suppress(*TRANSIENT_ERRORS):  # or they go back when their lease ends
            async with self.pool.acquire() as conn:
                await store.release_unstarted(conn, self.identity)

    async def report_queue(self) -> None:
        """Export the queue depth every few seconds."""
        while True:
            try:
                async with self.pool.acquire() as conn:
                    metrics.SEND_QUEUE.set(await store.due_messages(conn, self.now()))
            except TRANSIENT_ERRORS:
                pass
            await asyncio.sleep(QUEUE_REPORT_SECONDS)


def _events(told: Iterable[tuple[Attempt, NextStep]], at: datetime) -> Iterable[Derived]:
    for attempt, step in told:
        yield from delivery.events_of_step(attempt.message, step, attempt.result.detail, at)


def _count(attempts: Sequence[Attempt], steps: Sequence[NextStep], recorded: set[str]) -> None:
    """Count the recorded attempts, one increment per channel and outcome rather than per
    message."""
    counted = Counter(
        (attempt.message.channel, step.outcome)
        for attempt, step in zip(attempts, steps, strict=True)
        if attempt.message.message_id in recorded
    )
    for (channel, outcome), messages in counted.items():
        if outcome is None:
            metrics.SEND_RETRIES.labels(channel).inc(messages)
        else:
            metrics.MESSAGES.labels(channel, outcome).inc(messages)


def _link_secret(settings: SenderSettings) -> str:
    secret = settings.platform.link_secret
    assert secret is not None  # SenderSettings refuses to be made without one
    return secret.get_secret_value()


def build_adapters(settings: SenderSettings) -> dict[str, Adapter]:
    """The adapter of every channel the sender can send on (post has none: nothing is printed)."""
    identity = MailIdentity(
        sender=settings.mail_from,
        message_id_domain=settings.message_id_domain,
        links_base_url=settings.platform.public_url,
        link_secret=_link_secret(settings),
    )
    mail = SmtpAdapter(
        identity,
        settings.smtp_host,
        settings.smtp_port,
        settings.smtp_connections,
        settings.smtp_timeout_seconds,
        lambda: datetime.now(UTC),
        settings.smtp_security(),
    )
    webhook = WebhookAdapter(
        settings.webhook_urls, settings.webhook_connections, settings.webhook_timeout_seconds
    )
    return {Channel.EMAIL: mail, **dict.fromkeys(sorted(DEDUPED_CHANNELS), webhook)}


async def serve(settings: SenderSettings) -> None:
    """The sender's composition root: pool, Kafka producer, outbox relay, adapters."""
    # Transactions only (the relay's lock too): no session state to reset between uses, so a
    # connection goes back to the pool without a round trip (one per group commit and claim).
    pool = await open_pool(settings.dsn, MIGRATIONS, settings.pool_size, reset_sessions=False)
    adapters = build_adapters(settings)
    bootstrap = settings.platform.kafka_bootstrap
    try:
        async with relaying("broadcast", pool, bootstrap, "crm-broadcast-sender") as relay:
            sender = Sender(pool, adapters, settings, on_recorded=relay.wake.set)
            for signum in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(signum, sender.stop)
            memory.freeze_startup_objects()
            log.info("sender starting", extra={"metrics_port": settings.sender_metrics_port})
            reports = asyncio.create_task(sender.report_queue())
            try:
                await sender.run()
                log.info("sender stopped after recording the messages in flight")
            finally:
                reports.cancel()
    finally:
        for adapter in {id(a): a for a in adapters.values()}.values():
            await adapter.close()
        await pool.close()


def main() -> None:
    settings = SenderSettings()
    configure_logging("broadcast-sender", settings.platform.log_level)
    start_http_server(settings.sender_metrics_port)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
