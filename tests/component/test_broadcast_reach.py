"""The broadcast store on real PostgreSQL: v1 rows become v2 in migration 004, the v2 states
round-trip, the SQL guards keep what the pure rules keep, and one batch read loads everything
the contact decision needs for many customers."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import asyncpg
import pytest

from broadcast_service import store
from broadcast_service.config import MIGRATIONS
from broadcast_service.decision import contact_decision
from broadcast_service.projection import (
    ChannelPreferences,
    ChannelSetup,
    ComplaintHold,
    Consent,
    DetractorHold,
    DoNotContact,
    QuietWindow,
)
from crm_shared.runtime.db import open_pool
from tests.component.plans import plans_between, plans_made

pytestmark = pytest.mark.component

T = datetime(2024, 8, 1, 12, 0, tzinfo=UTC)


async def test_migration_004_reads_v1_rows_as_v2(fresh_dsn: str, tmp_path: Path) -> None:
    # The migrations before 004, under the folder name their owner is recorded by.
    before = tmp_path / "broadcast-service" / "migrations"
    before.mkdir(parents=True)
    for path in sorted(MIGRATIONS.glob("00[1-3]_*.sql")):
        shutil.copy(path, before / path.name)
    pool = await open_pool(fresh_dsn, before, 1)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO channel_preferences VALUES"
            " ('C1', '{web,sms,email}', '22:00', '07:00', 'Europe/London', $1, 's', 'e1'),"
            " ('C2', '{store}', NULL, NULL, NULL, $1, 's', 'e2')",
            T,
        )
        await conn.execute(
            "INSERT INTO consents VALUES ('C1', 'marketing', '*', false, $1, 's', 'e3')", T
        )
    await pool.close()
    pool = await open_pool(fresh_dsn, MIGRATIONS, 1)
    try:
        async with pool.acquire() as conn:
            reaches = await store.reaches_of(conn, ["C1", "C2"])
    finally:
        await pool.close()
    window = QuietWindow(time(22, 0), time(7, 0), "Europe/London")
    assert reaches["C1"].preferences == ChannelPreferences(
        "C1",
        (ChannelSetup("sms", quiet_hours=window), ChannelSetup("email", quiet_hours=window)),
        "Europe/London",
        T,
        "s",
        "e1",
    )
    assert reaches["C2"].preferences is not None and reaches["C2"].preferences.channels == ()
    assert [(c.state, c.capture_method) for c in reaches["C1"].consents.values()] == [
        ("revoked", "api")
    ]


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    opened = await open_pool(fresh_dsn, MIGRATIONS, 2)
    try:
        yield opened
    finally:
        await opened.close()


async def test_the_reach_of_a_batch_round_trips_and_decides(pool: asyncpg.Pool) -> None:
    setup = ChannelSetup(
        "email",
        "a@example.com",
        QuietWindow(time(21, 0), time(8, 0), "America/New_York"),
        2,
        5,
        T + timedelta(days=1),
    )
    preferences = ChannelPreferences("C1", (setup, ChannelSetup("sms", "+1")), "UTC", T, "s", "p")
    consent = Consent(
        "C1", "marketing", "*", "granted", T, "s", "c", "double_opt_in", "v3", "form 10.0.0.1"
    )
    entry = DoNotContact("C1", "sms", True, "legal", "court order", T, "s", "d")
    complaint = ComplaintHold("C2", "K1", True, T, "i", "k")
    score = DetractorHold("C2", "nps", 2, T, "i", "n")
    async with pool.acquire() as conn, conn.transaction():
        await store.save_preferences(conn, [preferences])
        await store.save_consents(conn, [consent])
        await store.add_history(conn, [consent])
        await store.save_do_not_contact(conn, [entry])
        await store.save_complaints(conn, [complaint])
        await store.save_detractors(conn, [score])
    async with pool.acquire() as conn:
        reaches = await store.reaches_of(conn, ["C1", "C2", "C3"])
        one_by_one = {c: await store.reach_of_customer(conn, c) for c in ("C1", "C2", "C3")}
        history = await store.history_of(conn, "C1", 10)
    assert one_by_one == reaches
    c1 = reaches["C1"]
    assert c1.preferences == preferences
    assert list(c1.consents.values()) == [consent]
    assert list(c1.do_not_contact.values()) == [entry]
    assert reaches["C2"].holds.open_complaints == ("K1",)
    assert reaches["C2"].holds.detractor == score
    assert reaches["C3"].preferences is None
    assert history == [consent]
    decision = contact_decision(c1, [], "marketing", T + timedelta(days=2))  # 08:00 in New York
    assert (decision.channel, decision.address) == ("email", "a@example.com")
    at_night = contact_decision(c1, [], "marketing", T + timedelta(days=2, hours=-1))
    assert at_night.codes == ("quiet_hours", "do_not_contact")


async def test_one_customers_reach_is_planned_once_per_connection(pool: asyncpg.Pool) -> None:
    """The preferences read (the customer 360's) and the decision API ask for one customer: their
    statement keeps the plan PostgreSQL makes without the customer after five reads, where the
    batch's statement (`unnest` of an array) was planned again for every read."""
    async with pool.acquire() as conn, conn.transaction():
        await store.save_preferences(
            conn,
            [
                ChannelPreferences(f"C{n}", (ChannelSetup("email"),), "UTC", T, "s", f"p{n}")
                for n in range(50)
            ],
        )
    async with pool.acquire() as conn:
        before = await plans_made(conn)
        reaches = [await store.reach_of_customer(conn, f"C{n}") for n in range(12)]
        after = await plans_made(conn)
    assert all(reach.preferences is not None for reach in reaches)
    [(generic, custom)] = plans_between(before, after, "channel_preferences")
    assert custom <= 5 and generic == 12 - custom


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            DoNotContact("C", "*", False, None, None, T, "zz", "z"),
            DoNotContact("C", "*", True, "bounced", None, T, "aa", "a"),
        ),
        (
            DoNotContact("C", "*", True, "bounced", None, T, "zz", "z"),
            DoNotContact("C", "*", False, None, None, T + timedelta(seconds=1), "aa", "a"),
        ),
    ],
    ids=["an entry beats its removal of the same instant", "time first"],
)
async def test_the_do_not_contact_guard_in_sql_keeps_what_the_pure_rule_keeps(
    pool: asyncpg.Pool, first: DoNotContact, second: DoNotContact
) -> None:
    for n, order in enumerate(((first, second), (second, first))):
        customer = f"C{n}"
        for entry in order:
            async with pool.acquire() as conn, conn.transaction():
                await store.save_do_not_contact(conn, [replace(entry, customer_id=customer)])
        async with pool.acquire() as conn:
            stored = await store.lock_do_not_contact(conn, [customer])
        newest = max(order, key=lambda e: e.version)
        assert stored[(customer, "*")] == replace(newest, customer_id=customer)


async def test_complaint_and_detractor_guards_keep_the_newest(pool: asyncpg.Pool) -> None:
    opened = ComplaintHold("C", "K", True, T, "i", "a")
    closed = ComplaintHold("C", "K", False, T + timedelta(minutes=1), "i", "b")
    old_score = DetractorHold("C", "csat", 1, T - timedelta(days=1), "i", "x")
    new_score = DetractorHold("C", "nps", 4, T, "i", "y")
    for complaint, score in ((closed, new_score), (opened, old_score)):  # newest first
        async with pool.acquire() as conn, conn.transaction():
            await store.save_complaints(conn, [complaint])
            await store.save_detractors(conn, [score])
    async with pool.acquire() as conn:
        assert await store.lock_complaints(conn, ["C"]) == {("C", "K"): closed}
        assert await store.lock_detractors(conn, ["C"]) == {"C": new_score}
