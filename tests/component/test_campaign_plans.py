"""Campaign plans on real PostgreSQL: the planning job cuts a campaign into ranges and plans them
in any order, each marked planned with its chunk, so a plan interrupted mid-way resumes without
planning anyone twice, and two planners share the ranges; a planned chunk is written out as
rows once, when its first message is due and the sender needs rows, and a cancelled campaign's
chunks never are; the sender's claim renders the narrow rows once, with the recipient's name,
recommendations and signed links, and cancels only the message whose template fails."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from broadcast_service import campaigns, planning, rendering, store
from broadcast_service.config import MIGRATIONS
from broadcast_service.templates import Links
from broadcast_service.worker import REBUILD_RULES
from crm_shared.contracts.events import (
    CAMPAIGN_DEFINED,
    CampaignTarget,
    build_event,
    validate_event,
)
from crm_shared.ops.rebuild import compare
from crm_shared.runtime import shadow
from crm_shared.runtime.db import connect_in_schema, open_pool
from crm_shared.runtime.links import read_link
from tests.campaign_reference import message_id, write_out_plans

pytestmark = pytest.mark.component

AT = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
LINKS = Links("a-secret-for-the-component-tests", "https://crm.example.com")
EMAIL = {
    "channel": "email",
    "subject": "Picks for {{ name }}",
    "text": "{% for p in recommendations %}{{ p.description }}\n{% endfor %}"
    "{{ 10 // (name | length) }} Unsubscribe: {{ unsubscribe_url }}",
}
CUSTOMERS = 25


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """Customers C01..C25 in segment 'vip', e-mail with a confirmed marketing consent, named
    (C07 with an empty name, which the template divides by), C01 with a recommendation."""
    pool = await open_pool(fresh_dsn, MIGRATIONS, 2)
    async with pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO segment_memberships
            SELECT 'C' || lpad(c::text, 2, '0'), 'vip', true, 1, $1, 't', 's' || c
            FROM generate_series(1, $2) AS c
            """,
            AT,
            CUSTOMERS,
        )
        await conn.execute(
            """
            INSERT INTO channel_preferences (customer_id, channels, timezone, settings, set_at,
                                             source, event_id)
            SELECT customer_id, ARRAY['email'], 'UTC', '[{"channel": "email"}]', $1, 't',
                   customer_id
            FROM segment_memberships
            """,
            AT,
        )
        await conn.execute(
            """
            INSERT INTO consents (customer_id, purpose, channel, granted, state, capture_method,
                                  changed_at, source, event_id)
            SELECT customer_id, 'marketing', '*', true, 'granted', 'double_opt_in', $1, 't',
                   'k' || customer_id
            FROM segment_memberships
            """,
            AT,
        )
        await conn.execute(
            """
            INSERT INTO customer_contacts (customer_id, name, email, changed_at)
            SELECT customer_id, CASE WHEN customer_id = 'C07' THEN '' ELSE 'Ada' END,
                   customer_id || '@example.com', $1
            FROM segment_memberships
            """,
            AT,
        )
        await conn.execute(
            "INSERT INTO customer_recommendations VALUES ('C01', $1, '[]', 1, $2)",
            [{"product_id": "P7", "description": "Blue teapot", "reason": "you liked cups"}],
            AT,
        )
    try:
        yield pool
    finally:
        await pool.close()


async def _mark_planning(conn: asyncpg.Connection, **overrides: Any) -> campaigns.Campaign:
    definition = {
        "name": "Spring",
        "purpose": "marketing",
        "target": {"segment": "vip"},
        "templates": [EMAIL],
        "include_recommendations": True,
        "throttle_per_second": 10,
    } | overrides
    event = build_event(CAMPAIGN_DEFINED, "spring", definition, source="test", time=AT)
    campaign = campaigns.campaign_from(validate_event(event))
    await store.save_campaigns(conn, [campaigns.started_if_due(campaign)])
    return campaign


class Crash(Exception):
    pass


def _crash(chunk: planning.ChunkPlanned) -> None:
    raise Crash  # the worker dies once a chunk has committed


@pytest.mark.parametrize("connections", [1, 2])
async def test_a_plan_interrupted_between_chunks_resumes_and_plans_nobody_twice(
    pool: asyncpg.Pool, connections: int
) -> None:
    planner = planning.Planner(chunk_size=10, connections=connections)
    async with pool.acquire() as conn:
        await _mark_planning(conn)
    with pytest.raises(ExceptionGroup) as crashed:
        await planning.plan_due(pool, planner, _crash)
    assert crashed.group_contains(Crash)
    resumed = await planning.plan_due(pool, planner)
    if connections == 1:  # the second chunk, then the last
        assert resumed == 2
    else:  # the other connection may have written the second chunk before it was stopped
        assert resumed in (1, 2)
    async with pool.acquire() as conn:
        assert await write_out_plans(conn) == 25
        rows = await conn.fetch(
            "SELECT customer_id, not_before, body_text FROM outbound_messages ORDER BY not_before"
        )
        view = await conn.fetchrow("SELECT * FROM campaigns WHERE campaign_id = 'spring'")
        reasons = await conn.fetch("SELECT reason, recipients FROM campaign_reasons")
    assert sorted(r["customer_id"] for r in rows) == [f"C{n:02}" for n in range(1, 26)]
    # The throttle numbers the messages across chunks: one every 0.1 s, none twice.
    assert [r["not_before"] for r in rows] == [AT + timedelta(seconds=n / 10) for n in range(25)]
    assert all(r["body_text"] is None for r in rows)  # rendered when claimed
    assert (view["state"], view["planned_at"], view["plan_messages"]) == ("planned", AT, 25)
    assert [(r["reason"], r["recipients"]) for r in reasons] == [(campaigns.PLANNED, 25)]
    assert await planning.plan_due(pool, planner) == 0


async def test_a_cancellation_stops_a_plan_between_chunks(pool: asyncpg.Pool) -> None:
    planner = planning.Planner(chunk_size=10, connections=1)
    async with pool.acquire() as conn:
        await _mark_planning(conn)
    with pytest.raises(ExceptionGroup):
        await planning.plan_due(pool, planner, _crash)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE campaigns SET state = 'cancelled'")
    assert await planning.plan_due(pool, planner) == 0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT sum(messages) FROM plan_chunks") == 10


async def test_a_plan_begun_under_the_old_cursor_resumes_after_it(pool: asyncpg.Pool) -> None:
    """Migration 011 keeps a plan begun before ranges as one planned range up to its cursor:
    planning resumes after it, with the throttle's numbering where it stopped."""
    async with pool.acquire() as conn:
        await _mark_planning(conn)
        await conn.execute("INSERT INTO plan_ranges VALUES ('spring', 0, NULL, 'C12', true)")
        await conn.execute("UPDATE campaigns SET plan_messages = 12")
    planner = planning.Planner(chunk_size=10, connections=2)
    assert await planning.plan_due(pool, planner) == 2  # C13-C22, C23-C25
    async with pool.acquire() as conn:
        assert await write_out_plans(conn) == 13
        rows = await conn.fetch(
            "SELECT customer_id, not_before FROM outbound_messages ORDER BY not_before"
        )
        ranges = await conn.fetch("SELECT number, after, last FROM plan_ranges ORDER BY number")
    assert sorted(r["customer_id"] for r in rows) == [f"C{n:02}" for n in range(13, 26)]
    assert [r["not_before"] for r in rows] == [
        AT + timedelta(seconds=n / 10) for n in range(12, 25)
    ]
    assert [tuple(r) for r in ranges] == [(0, None, "C12"), (1, "C12", "C22"), (2, "C22", None)]


async def test_a_campaign_whose_ranges_are_all_planned_is_marked_planned(
    pool: asyncpg.Pool,
) -> None:
    """A forced rebuild whose fold makes a campaign due that the live one had planned carries
    its planned ranges, not its state (its rebuild rules' job columns): it is marked planned
    again, and nobody is planned twice."""
    async with pool.acquire() as conn:
        await _mark_planning(conn)
        await conn.execute("INSERT INTO plan_ranges VALUES ('spring', 0, NULL, NULL, true)")
    assert await planning.plan_due(pool, planning.Planner(chunk_size=10, connections=2)) == 0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT state FROM campaigns") == "planned"
        assert await conn.fetchval("SELECT count(*) FROM plan_chunks") == 0


@pytest.mark.parametrize("meanwhile", list(store.NotPlanned))
async def test_a_range_planned_meanwhile_is_skipped_and_a_cancelled_campaign_stops(
    pool: asyncpg.Pool, meanwhile: store.NotPlanned
) -> None:
    """Between reading a campaign's ranges and writing one, another planner may plan that range
    (this planner goes on with the others) or the campaign may be cancelled (it stops)."""
    planner = planning.Planner(chunk_size=10, connections=1)
    async with pool.acquire() as conn:
        campaign = await _mark_planning(conn)
        read = planning._signature_read(campaign, campaign.send_at, planner.chunk_size)
        ranges = await store.ranges_to_plan(conn, campaign, read)
        if meanwhile is store.NotPlanned.RANGE_PLANNED:
            await conn.execute("UPDATE plan_ranges SET planned = true WHERE number = 0")
        else:
            await conn.execute("UPDATE campaigns SET state = 'cancelled'")
        async with conn.transaction():
            assert await store.lock_planning(conn, "spring", 0) is meanwhile
    plan = planning._CampaignPlan(campaign, read, ranges, planner)
    written = await planning._plan_chunks(pool, plan, None)
    async with pool.acquire() as conn:
        messages = await conn.fetchval("SELECT coalesce(sum(messages), 0) FROM plan_chunks")
        state = await conn.fetchval("SELECT state FROM campaigns")
    if meanwhile is store.NotPlanned.RANGE_PLANNED:  # C11-C20 and C21-C25
        assert (written, messages, state) == (2, 15, "planned")
    else:
        assert (written, messages, state, plan.stopped) == (0, 0, "cancelled", True)


async def test_a_failed_range_surfaces_its_own_error_not_its_failed_release(
    pool: asyncpg.Pool,
) -> None:
    """The planner's connection dies while it writes a chunk: the error that surfaces is the
    chunk's, not the failed release of its range that follows (the session's end releases it)."""
    async with pool.acquire() as conn:
        await _mark_planning(conn)
        await conn.execute(
            """
            CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$;
            CREATE TRIGGER die BEFORE INSERT ON plan_chunks FOR EACH ROW EXECUTE FUNCTION die();
            """
        )
    with pytest.raises(ExceptionGroup) as failed:
        await planning.plan_due(pool, planning.Planner(chunk_size=10, connections=1))
    (error,) = failed.value.exceptions
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert "_plan_range" in frames and "release_range" not in frames, frames
    async with pool.acquire() as conn:
        await conn.execute("DROP TRIGGER die ON plan_chunks")
    assert await planning.plan_due(pool, planning.Planner(chunk_size=10, connections=1)) == 3


async def test_a_chunk_is_read_by_id_range_only_where_its_range_is_dense(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        campaign = await _mark_planning(conn)
        await conn.execute(
            "INSERT INTO segment_memberships VALUES ('C01', 'ends', true, 1, $1, 't', 'e1'),"
            " ('C25', 'ends', true, 1, $1, 't', 'e25')",
            AT,
        )
        everyone = store.SignatureRead(campaign.definition.target, "marketing", AT, 10)
        ends = store.SignatureRead(CampaignTarget(segment="ends"), "marketing", AT, 10)
        assert await store.range_ends(conn, everyone, None) == ["C10", "C20"]
        assert await store.range_ends(conn, everyone, "C03") == ["C13", "C23"]
        # A list is cut alike, each customer once.
        listed = CampaignTarget(customer_ids=("C05", "C01", "C09", "C01", "C03"))
        pairs = store.SignatureRead(listed, "marketing", AT, 2)
        assert await store.range_ends(conn, pairs, None) == ["C03", "C09"]
        assert await store.range_ends(conn, pairs, "C03") == ["C09"]
        assert await store.is_dense(conn, everyone, None, "C10")
        assert await store.is_dense(conn, everyone, "C20", None)
        # Two recipients 25 customers apart: read by id, not the 23 customers between them.
        assert await store.range_ends(conn, ends, None) == []
        assert not await store.is_dense(conn, ends, None, None)
        # A full chunk, one recipient in five customers: sparse too.
        spread = CampaignTarget(customer_ids=("C01", "C06", "C11", "C16", "C21"))
        fifths = store.SignatureRead(spread, "marketing", AT, 5)
        assert await store.range_ends(conn, fifths, None) == ["C21"]
        assert not await store.is_dense(conn, fifths, None, "C21")


async def test_two_planners_at_once_plan_each_recipient_once(
    pool: asyncpg.Pool, fresh_dsn: str
) -> None:
    """Two worker replicas planning the same campaign: each range is planned by one of them, and
    the throttle gives each message a slot of its own, in id order within a chunk."""
    async with pool.acquire() as conn:
        await _mark_planning(conn)
    replicas = await open_pool(fresh_dsn, MIGRATIONS, 5)
    try:
        planner = planning.Planner(chunk_size=4, connections=2)
        planned = await asyncio.gather(*(planning.plan_due(replicas, planner) for _ in range(2)))
        async with replicas.acquire() as conn:
            assert await write_out_plans(conn) == CUSTOMERS
            rows = await conn.fetch(
                "SELECT customer_id, not_before FROM outbound_messages ORDER BY customer_id"
            )
            view = await conn.fetchrow("SELECT * FROM campaigns")
            ranges = await conn.fetch("SELECT after, last, planned FROM plan_ranges")
    finally:
        await replicas.close()
    assert sum(planned) == CUSTOMERS // 4 + 1 == len(ranges)
    assert all(r["planned"] for r in ranges)
    assert [r["customer_id"] for r in rows] == [f"C{n:02}" for n in range(1, CUSTOMERS + 1)]
    slots = [AT + timedelta(seconds=n / 10) for n in range(CUSTOMERS)]
    assert sorted(r["not_before"] for r in rows) == slots
    for chunk in range(0, CUSTOMERS, 4):  # a range's recipients: C01-C04, C05-C08, ...
        times = [r["not_before"] for r in rows[chunk : chunk + 4]]
        assert times == sorted(times)
        assert times[-1] - times[0] == timedelta(seconds=(len(times) - 1) / 10)
    assert (view["state"], view["plan_messages"]) == ("planned", CUSTOMERS)


async def test_the_claim_renders_each_message_once_and_cancels_only_a_failing_one(
    pool: asyncpg.Pool,
) -> None:
    planner = planning.Planner(chunk_size=100, connections=1)
    async with pool.acquire() as conn:
        await _mark_planning(conn, throttle_per_second=None)
    await planning.plan_due(pool, planner)
    async with pool.acquire() as conn, conn.transaction():
        assert await store.take_due_chunk(conn, AT + timedelta(minutes=1), 100) == CUSTOMERS
        claimed = await store.claim_due(conn, AT + timedelta(minutes=1), 100)
        assert len(claimed) == CUSTOMERS and {m.body_text for m in claimed} == {""}
        ready = await rendering.render_claimed(conn, claimed, LINKS, AT)
    by_customer = {m.customer_id: m for m in ready}
    assert len(ready) == CUSTOMERS - 1 and "C07" not in by_customer
    ada = by_customer["C01"]
    assert ada.subject == "Picks for Ada"
    assert ada.body_text.startswith("Blue teapot\n3 Unsubscribe: https://crm.example.com/")
    claims = read_link(LINKS.secret or "", ada.body_text.rsplit("?token=", 1)[1])
    assert (claims.customer_id, claims.message_id) == ("C01", ada.message_id)
    assert by_customer["C02"].body_text.startswith("3 Unsubscribe: ")  # no recommendations
    async with pool.acquire() as conn:
        stored = await store.outbound_message(conn, ada.message_id)
        failed = await conn.fetchrow(
            "SELECT state, last_error FROM outbound_messages WHERE customer_id = 'C07'"
        )
        results = await store.campaign_results(conn, "spring")
        # Rendered once: a later claim (a retry) sends what was rendered, not a new rendering.
        again = await rendering.render_claimed(conn, [stored] if stored else [], LINKS, AT)
    assert stored is not None and stored.body_text == ada.body_text
    assert again == [stored]
    assert failed["state"] == "cancelled"
    assert failed["last_error"].startswith(campaigns.TEMPLATE_FAILED)
    assert results == {"email": {"cancelled": 1}}


async def test_a_chunk_is_written_out_once_when_due_and_when_the_sender_needs_rows(
    pool: asyncpg.Pool,
) -> None:
    # Throttled to 10 a second in chunks of 10: the chunks' first messages are due at AT,
    # AT + 1 s and AT + 2 s.
    async with pool.acquire() as conn:
        await _mark_planning(conn)
    assert await planning.plan_due(pool, planning.Planner(chunk_size=10, connections=1)) == 3
    second = AT + timedelta(seconds=1.5)
    async with pool.acquire() as conn, pool.acquire() as other:
        assert await conn.fetchval("SELECT count(*) FROM outbound_messages") == 0
        assert await store.take_due_chunk(conn, AT - timedelta(seconds=1), 100) == 0
        assert await store.take_due_chunk(conn, AT, 100) == 10
        assert await store.take_due_chunk(conn, AT, 100) == 0  # the next is not due yet
        assert await store.take_due_chunk(conn, second, 10) == 0  # 10 rows due: enough
        with pytest.raises(Crash):
            async with conn.transaction():
                assert await store.take_due_chunk(conn, second, 100) == 10
                raise Crash  # the sender dies before its claim commits: nothing written
        async with conn.transaction():
            assert await store.take_due_chunk(conn, second, 100) == 10
            # A second sender skips the chunk the first holds, rather than writing it again.
            assert await store.take_due_chunk(other, second, 100) == 0
        assert await store.take_due_chunk(other, AT + timedelta(seconds=3), 100) == 5
        assert await store.take_due_chunk(other, AT + timedelta(days=1), 100) == 0
        rows = await conn.fetch(
            "SELECT message_id, customer_id, not_before FROM outbound_messages ORDER BY customer_id"
        )
        assert await conn.fetchval("SELECT count(*) FROM plan_chunks") == 0
    assert [(r["message_id"], r["not_before"]) for r in rows] == [
        (message_id("spring", f"C{n:02}"), AT + timedelta(seconds=(n - 1) / 10))
        for n in range(1, CUSTOMERS + 1)
    ]


async def test_cancelling_cancels_the_rows_and_the_chunks_not_written_out(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await _mark_planning(conn)
    await planning.plan_due(pool, planning.Planner(chunk_size=10, connections=2))
    async with pool.acquire() as conn:
        assert await store.take_due_chunk(conn, AT, 100) == 10
        (view,) = await store.campaign_rows(conn, "spring", 1)
        assert [tuple(p) for p in view["progress"]] == [("email", "planned", 25)]
        async with conn.transaction():
            assert await store.cancel_messages(conn, "spring") == 25
        (view,) = await store.campaign_rows(conn, "spring", 1)
        assert [tuple(p) for p in view["progress"]] == [("email", "cancelled", 25)]
        assert await store.due_messages(conn, AT + timedelta(days=1)) == 0
        assert await store.take_due_chunk(conn, AT + timedelta(days=1), 100) == 0
        assert await conn.fetchval("SELECT count(*) FROM outbound_messages") == 10


FOLDED = (
    "segment_memberships",
    "channel_preferences",
    "consents",
    "customer_contacts",
    "customer_recommendations",
)
"""The fixture's tables, which a replay folds as the live worker did."""


async def test_a_rebuild_compares_a_planned_campaign_and_keeps_what_its_planning_did(
    pool: asyncpg.Pool, fresh_dsn: str
) -> None:
    """A replay leaves a planned campaign 'planning' (planning is the worker's job, not the
    fold's, and its plan is in the carried ledger): the comparison sees the live campaign as the
    fold left it, and the switch carries what its planning did (state, time, messages, reasons)."""
    async with pool.acquire() as conn:
        campaign = await _mark_planning(conn)
    await planning.plan_due(pool, planning.Planner(chunk_size=10, connections=1))
    builder = await connect_in_schema(fresh_dsn, shadow.SHADOW_SCHEMA)
    try:
        await shadow.create_shadow(builder, shadow.SHADOW_SCHEMA, MIGRATIONS)
        for table in FOLDED:
            await builder.execute(f"INSERT INTO {table} SELECT * FROM public.{table}")
        # The replay of its definition:
        await store.save_campaigns(builder, [campaigns.started_if_due(campaign)])
        live = await shadow.fingerprints(builder, "public", REBUILD_RULES)
        rebuilt = await shadow.fingerprints(builder, shadow.SHADOW_SCHEMA, REBUILD_RULES)
        assert compare(live, rebuilt, 0) == []
        async with builder.transaction():
            await shadow.carry_ledgers(builder, "public", shadow.SHADOW_SCHEMA, REBUILD_RULES)
        planned = {}
        for schema in ("public", shadow.SHADOW_SCHEMA):
            planned[schema] = (
                await builder.fetch(f"SELECT * FROM {schema}.campaigns"),
                await builder.fetch(f"SELECT * FROM {schema}.campaign_reasons"),
            )
        # Where the fold disagrees (a forced switch), the shadow's campaign stays as folded.
        await builder.execute("UPDATE campaigns SET state = 'cancelled', plan_messages = 0")
        async with builder.transaction():
            await shadow.carry_ledgers(builder, "public", shadow.SHADOW_SCHEMA, REBUILD_RULES)
        kept = await builder.fetchrow("SELECT state, plan_messages FROM campaigns")
    finally:
        await builder.close()
    (view,) = planned["public"][0]
    assert (view["state"], view["plan_messages"]) == ("planned", CUSTOMERS)
    assert view["plan_seconds"] > 0
    assert planned[shadow.SHADOW_SCHEMA] == planned["public"]
    assert tuple(kept) == ("cancelled", 0)
