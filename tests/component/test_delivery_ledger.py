"""The sender's ledger on real PostgreSQL: what a sender that died mid-batch leaves behind, and how
the next sender resolves it once the lease ends (no adapter is called: only the ledger is read)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from broadcast_service import store
from broadcast_service.adapters import Adapter
from broadcast_service.campaigns import PlannedMessage
from broadcast_service.config import MIGRATIONS, SenderSettings
from broadcast_service.delivery import INTERRUPTED_REASON, OutboundMessage, Result, SendResult
from broadcast_service.projection import ChannelPreferences, ChannelSetup, Consent
from broadcast_service.sender import Sender, build_adapters
from crm_shared.runtime.db import open_pool

pytestmark = pytest.mark.component

T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=300)
CUSTOMERS = ("C-mailed", "C-queued", "C-texted")


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(fresh_dsn, MIGRATIONS, 4)
    long_ago = T - timedelta(days=30)
    async with pool.acquire() as conn:
        await store.save_preferences(
            conn,
            [
                ChannelPreferences(
                    c,
                    (ChannelSetup("email", f"{c}@example.com"), ChannelSetup("sms", "+44 7700")),
                    "UTC",
                    long_ago,
                    "web",
                    c,
                )
                for c in CUSTOMERS
            ],
        )
        await store.save_consents(
            conn,
            [
                Consent(c, "marketing", "*", "granted", long_ago, "web", c, "double_opt_in")
                for c in CUSTOMERS
            ],
        )
        await store.add_messages(
            conn,
            [
                _planned("C-mailed", "email", "mailed@example.com"),
                _planned("C-queued", "email", "queued@example.com"),
                _planned("C-texted", "sms", "+44 7700 900123"),
            ],
        )
    try:
        yield pool
    finally:
        await pool.close()


def _planned(customer: str, channel: str, address: str) -> PlannedMessage:
    return PlannedMessage(
        message_id=f"spring.{customer}",
        campaign_id="spring",
        customer_id=customer,
        channel=channel,
        address=address,
        purpose="marketing",
        subject="Spring picks",
        body_text="Hello",
        body_html=None,
        not_before=T - timedelta(minutes=1),
    )


@pytest.fixture
async def adapters(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Adapter]]:
    monkeypatch.setenv("CRM_LINK_SECRET", "link-secret-for-tests-0123456789")
    made = build_adapters(SenderSettings())
    try:
        yield made
    finally:
        for adapter in {id(a): a for a in made.values()}.values():
            await adapter.close()


def _sender(pool: asyncpg.Pool, adapters: dict[str, Adapter], at: datetime) -> Sender:
    return Sender(pool, adapters, SenderSettings(), now=lambda: at)


async def _ledger(pool: asyncpg.Pool) -> dict[str, tuple[str, int, str | None]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT message_id, state, attempts, last_error FROM outbound_messages"
        )
    return {r["message_id"]: (r["state"], r["attempts"], r["last_error"]) for r in rows}


async def test_a_dead_senders_claims_are_replanned_resent_or_given_up_once_the_lease_ends(
    pool: asyncpg.Pool, adapters: dict[str, Adapter]
) -> None:
    dead = _sender(pool, adapters, T)
    claimed = await dead.claim()
    assert sorted(m.customer_id for m in claimed) == list(CUSTOMERS)
    # It died with the e-mail to C-mailed and the SMS to C-texted on the wire; C-queued waited.
    async with pool.acquire() as conn:
        started = await store.mark_started(
            conn, ["spring.C-mailed", "spring.C-texted"], dead.identity, T, T + LEASE
        )
    assert started == {"spring.C-mailed", "spring.C-texted"}

    survivor = _sender(pool, adapters, T + LEASE - timedelta(seconds=1))
    await survivor.recover()
    assert await survivor.claim() == []  # still leased: neither resolved nor claimed again

    survivor = _sender(pool, adapters, T + LEASE + timedelta(seconds=1))
    await survivor.recover()
    assert await _ledger(pool) == {
        "spring.C-mailed": ("failed", 1, INTERRUPTED_REASON),  # may have arrived: never again
        "spring.C-queued": ("planned", 0, None),  # nothing went out
        "spring.C-texted": ("planned", 1, None),  # the provider dedupes: sent again
    }
    async with pool.acquire() as conn:
        outcomes = await conn.fetch("SELECT message_id, outcome, reason FROM message_outcomes")
        events = await conn.fetch("SELECT type, key FROM outbox")
        results = await store.campaign_results(conn, "spring")
        # The dead sender, had it lived on, could neither start nor record what it lost.
        assert not await store.mark_started(conn, ["spring.C-queued"], dead.identity, T, T + LEASE)
    assert [tuple(r) for r in outcomes] == [("spring.C-mailed", "failed", INTERRUPTED_REASON)]
    assert [tuple(r) for r in events] == [("crm.message.outcome.recorded.v1", b"C-mailed")]
    assert results == {"email": {"failed": 1}}

    again = await survivor.claim()
    assert sorted(m.message_id for m in again) == ["spring.C-queued", "spring.C-texted"]
    async with pool.acquire() as conn:
        assert not await store.finish_attempts(
            conn, ["spring.C-texted"], ["sent"], [None], [None], [None], T, dead.identity
        )
        # Stopping (SIGTERM) before starting them: planned again at once, not after the lease.
        await store.release_unstarted(conn, survivor.identity)
    ledger = await _ledger(pool)
    assert (ledger["spring.C-queued"], ledger["spring.C-texted"]) == (
        ("planned", 0, None),
        ("planned", 1, None),
    )


async def test_a_claim_held_when_its_campaign_was_cancelled_is_not_sent_when_it_comes_back(
    pool: asyncpg.Pool, adapters: dict[str, Adapter]
) -> None:
    """The fold cancels a cancelled campaign's planned rows; those a sender held at that moment
    come back as planned (a lease ended, or a retry) and are cancelled at their next claim."""
    dead = _sender(pool, adapters, T)
    assert len(await dead.claim()) == len(CUSTOMERS)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO campaigns (campaign_id, name, kind, purpose, definition, send_at, state,"
            " defined_at, source, event_id, cancelled_at, cancel_reason) VALUES ('spring',"
            " 'Spring', 'campaign', 'marketing', '{}', $1, 'cancelled', $1, 'test', 'e-1', $1,"
            " 'wrong offer')",
            T,
        )
        assert await store.cancel_messages(conn, "spring") == 0  # all held by the sender
    survivor = _sender(pool, adapters, T + LEASE + timedelta(seconds=1))
    await survivor.recover()  # none started: all planned again
    assert await survivor.claim() == []
    assert await _ledger(pool) == {
        f"spring.{c}": ("cancelled", 0, "campaign cancelled") for c in CUSTOMERS
    }


async def test_outcomes_counted_by_several_sessions_add_up_in_the_campaigns_results(
    pool: asyncpg.Pool,
) -> None:
    """Each session counts into a shard of its own (senders do not wait for each other's
    commits on one row); the results are their sum."""
    async with pool.acquire() as first, pool.acquire() as second:
        claimed = await store.claim_due(first, T, 10)
        mailed = [m for m in claimed if m.channel == "email"]
        await store.add_outcomes(first, mailed[:1], ["sent"], [None], T)
        await store.add_outcomes(second, mailed[1:], ["sent"], [None], T)
        await store.add_outcomes(second, mailed, ["sent", "delivered"], [None, None], T)
        assert await store.campaign_results(first, "spring") == {
            "email": {"sent": 2, "delivered": 1}
        }


class _HeldAdapter:
    """One connection whose send waits until let go: a message stays on the wire meanwhile."""

    connections = 1

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.on_the_wire = asyncio.Event()
        self.let_go = asyncio.Event()

    async def send(self, message: OutboundMessage) -> SendResult:
        self.sent.append(message.message_id)
        self.on_the_wire.set()
        await self.let_go.wait()
        return SendResult(Result.SENT, "accepted")

    async def close(self) -> None:
        pass


async def _sending_one_at_a_time(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, adapter: _HeldAdapter
) -> tuple[Sender, asyncio.Task[None]]:
    """A sender claiming batches of one, running until its first message is on the wire."""
    monkeypatch.setenv("CRM_LINK_SECRET", "link-secret-for-tests-0123456789")
    monkeypatch.setenv("CRM_BROADCAST_CLAIM_BATCH", "1")
    sender = Sender(pool, {"email": adapter, "sms": adapter}, SenderSettings(), now=lambda: T)
    running = asyncio.create_task(sender.run())
    await asyncio.wait_for(adapter.on_the_wire.wait(), 10)
    return sender, running


async def test_the_next_batch_is_claimed_while_one_is_sent_and_a_stop_releases_it(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldAdapter()
    sender, running = await _sending_one_at_a_time(pool, monkeypatch, held)

    async def claimed_by_the_sender() -> int:
        async with pool.acquire() as conn:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM outbound_messages WHERE claimed_by = $1",
                    sender.identity,
                )
            )

    for _ in range(100):  # the next batch of one is claimed while the first is on the wire
        if await claimed_by_the_sender() >= 2:
            break
        await asyncio.sleep(0.05)
    assert await claimed_by_the_sender() >= 2
    sender.stop()
    held.let_go.set()
    await asyncio.wait_for(running, 10)
    ledger = await _ledger(pool)
    assert len(held.sent) == 1  # stopped: nothing more started
    assert ledger.pop(held.sent[0]) == ("sent", 1, None)
    assert set(ledger.values()) == {("planned", 0, None)}  # released at once, never started
    assert await claimed_by_the_sender() == 1  # only the one sent keeps its sender


class _BrokenSecondAdapter(_HeldAdapter):
    """Two connections: the first message waits on the wire until let go, the second raises
    (an adapter's bug: adapters return results for what they expect)."""

    connections = 2

    async def send(self, message: OutboundMessage) -> SendResult:
        if not self.sent:
            return await super().send(message)
        self.sent.append(message.message_id)
        raise RuntimeError("adapter bug")


async def test_a_send_that_raises_lets_the_one_in_flight_finish_and_be_recorded(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = _BrokenSecondAdapter()
    _, running = await _sending_one_at_a_time(pool, monkeypatch, adapter)
    for _ in range(100):  # the next batch's send fails while the first is on the wire
        if len(adapter.sent) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(adapter.sent) >= 2
    adapter.let_go.set()
    with pytest.raises(RuntimeError, match="adapter bug"):
        await asyncio.wait_for(running, 10)
    ledger = await _ledger(pool)
    assert ledger[adapter.sent[0]] == ("sent", 1, None)  # finished and recorded before the error
