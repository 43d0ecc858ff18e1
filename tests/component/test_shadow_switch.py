"""The rebuild's switch on a real PostgreSQL: a live writer held by the lock lands in the new
tables, cached statements follow the rename, unsent derived events are carried, and the
fingerprints tell equal tables from different ones, showing the rows that differ."""

from __future__ import annotations

import asyncio

import asyncpg

from crm_shared.ops.rebuild import compare, with_examples
from crm_shared.runtime import shadow
from crm_shared.runtime.db import connect_in_schema, open_pool
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.outbox import write
from crm_shared.runtime.projector import claim_new
from profile_service.config import MIGRATIONS
from profile_service.worker import REBUILD_RULES as PROFILE_RULES
from recommendation_service.config import MIGRATIONS as RECOMMENDATION_MIGRATIONS
from recommendation_service.worker import REBUILD_RULES as RECOMMENDATION_RULES
from tests.unit.events_factory import order

SHADOW = shadow.SHADOW_SCHEMA


async def _count(conn: asyncpg.Connection, schema: str, table: str) -> int:
    count: int = await conn.fetchval(f"SELECT count(*) FROM {schema}.{table}")
    return count


async def test_a_writer_held_by_the_lock_lands_in_the_new_tables_after_the_switch(
    fresh_dsn: str,
) -> None:
    pool = await open_pool(fresh_dsn, MIGRATIONS, 2)
    builder = await connect_in_schema(fresh_dsn, SHADOW)
    admin = await asyncpg.connect(fresh_dsn)
    try:
        await shadow.create_shadow(builder, SHADOW, MIGRATIONS)
        await shadow.make_durable(builder, SHADOW)
        async with pool.acquire() as worker:
            await claim_new(worker, [order("c1", "o1", ("p", 1, "1.00"))])  # statement cached
            assert await worker.fetchval("SELECT count(*) FROM applied_events") == 1
            async with admin.transaction():
                await shadow.hold_live_writes(admin, "public", PROFILE_RULES, timeout_seconds=10)
                held = asyncio.create_task(claim_new(worker, [order("c1", "o2", ("p", 1, "1"))]))
                await asyncio.sleep(0.5)
                assert not held.done()  # the live writer waits on the lock
                await shadow.switch(admin, "public", SHADOW, "retired_test")
            assert len(await held) == 1
            # The same cached statement, prepared before the switch, reads the new table.
            assert await worker.fetchval("SELECT count(*) FROM applied_events") == 1
        assert await _count(admin, "public", "applied_events") == 1
        assert await _count(admin, "retired_test", "applied_events") == 1
        assert await admin.fetchval("SELECT id FROM public.applied_events") != (
            await admin.fetchval("SELECT id FROM retired_test.applied_events")
        )
    finally:
        await pool.close()
        await builder.close()
        await admin.close()


async def test_unsent_derived_events_move_with_their_sequence_numbers(fresh_dsn: str) -> None:
    pool = await open_pool(fresh_dsn, MIGRATIONS, 2)
    builder = await connect_in_schema(fresh_dsn, SHADOW)
    try:
        await shadow.create_shadow(builder, SHADOW, MIGRATIONS)
        derived = [Derived("crm.segments", b"c1", b"{}", f"d{n}", "t") for n in range(3)]
        async with pool.acquire() as conn:
            await write(conn, derived)
            await conn.execute("DELETE FROM outbox WHERE event_id = 'd0'")  # published
            assert await shadow.carry_unsent_outbox(conn, "public", SHADOW) == 2
            carried = await conn.fetch(f"SELECT seq, event_id FROM {SHADOW}.outbox ORDER BY seq")
            live = await conn.fetch("SELECT seq, event_id FROM outbox")
            assert [tuple(r) for r in carried] == sorted(tuple(r) for r in live)
            await builder.execute(
                "INSERT INTO outbox (topic, key, value, event_id, type)"
                " VALUES ('crm.segments', 'c1', '{}', 'next', 't')"
            )
            after = await builder.fetchval("SELECT seq FROM outbox WHERE event_id = 'next'")
            assert after > max(r["seq"] for r in carried)
    finally:
        await pool.close()
        await builder.close()


async def test_fingerprints_match_for_equal_rows_and_differ_when_one_changes(
    fresh_dsn: str,
) -> None:
    pool = await open_pool(fresh_dsn, MIGRATIONS, 2)
    builder = await connect_in_schema(fresh_dsn, SHADOW)
    try:
        await shadow.create_shadow(builder, SHADOW, MIGRATIONS)
        for schema in ("public", SHADOW):
            await builder.execute(
                f"INSERT INTO {schema}.purchase_totals (customer_id, orders)"
                " VALUES ('a', 1), ('b', 2)"
            )
            await builder.execute(
                f"INSERT INTO {schema}.consumer_positions (topic, partition, next_offset)"
                " VALUES ('crm.orders', 0, 5)"
            )
        await builder.execute(f"UPDATE {SHADOW}.consumer_positions SET updated_at = now() + '1h'")
        live = await shadow.fingerprints(builder, "public", PROFILE_RULES)
        rebuilt = await shadow.fingerprints(builder, SHADOW, PROFILE_RULES)
        assert live == rebuilt  # updated_at is bookkeeping, left out
        assert live["purchase_totals"].rows == 2
        assert {"outbox", "applied_events", "schema_migrations"}.isdisjoint(live)
        await builder.execute(
            f"UPDATE {SHADOW}.purchase_totals SET orders = 3 WHERE customer_id = 'b'"
        )
        changed = await shadow.fingerprints(builder, SHADOW, PROFILE_RULES)
        assert changed["purchase_totals"].rows == 2
        assert changed["purchase_totals"].checksum != live["purchase_totals"].checksum
        assert changed["customers"] == live["customers"]
    finally:
        await pool.close()
        await builder.close()


async def test_a_difference_shows_the_rows_found_on_one_side_only(fresh_dsn: str) -> None:
    pool = await open_pool(fresh_dsn, MIGRATIONS, 1)
    builder = await connect_in_schema(fresh_dsn, SHADOW)
    admin = await pool.acquire()
    try:
        await shadow.create_shadow(builder, SHADOW, MIGRATIONS)
        rows = {"public": "('a', 1), ('b', 2), ('c', 4)", SHADOW: "('a', 1), ('b', 3)"}
        for schema, values in rows.items():
            await admin.execute(
                f"INSERT INTO {schema}.purchase_totals (customer_id, orders) VALUES {values}"
            )
        live = await shadow.fingerprints(admin, "public", PROFILE_RULES)
        rebuilt = await shadow.fingerprints(builder, SHADOW, PROFILE_RULES)
        differences = compare(live, rebuilt, missing_applied=0)
        assert [d.table for d in differences] == ["purchase_totals"]
        (explained,) = await with_examples(
            differences, admin, "public", builder, PROFILE_RULES, None
        )
        # "<side>: (customer_id, ...) = (<customer>,...)": customer a is equal on both sides.
        shown = [(e.split(": ", 1)[0], e.split(" = (", 1)[1][0]) for e in explained.examples]
        assert shown == [("live only", "b"), ("live only", "c"), ("rebuilt only", "b")]
        assert explained.examples[0].startswith("live only: (customer_id, ")
        (scoped,) = await with_examples(differences, admin, "public", builder, PROFILE_RULES, ["c"])
        assert [e.split(" = (", 1)[1][0] for e in scoped.examples] == ["c"]
        assert str(scoped).startswith("purchase_totals: rows differ: live 3, rebuilt 2\n")
    finally:
        await pool.release(admin)
        await pool.close()
        await builder.close()


async def test_a_job_mid_write_finishes_and_a_job_after_lands_in_the_new_tables(
    fresh_dsn: str,
) -> None:
    """The recommendation jobs' outputs are locked before the live writes: a job that wrote
    picks and writes its outbox last finishes before the hold (no deadlock), and a job that
    starts during the hold waits at its first write and lands in the new tables."""
    pool = await open_pool(fresh_dsn, RECOMMENDATION_MIGRATIONS, 3)
    builder = await connect_in_schema(fresh_dsn, SHADOW)
    admin = await asyncpg.connect(fresh_dsn)
    picks = (
        "INSERT INTO customer_picks (customer_id, version, computed_at, picks)"
        " VALUES ($1, 1, now(), '[]')"
    )
    derived = [Derived("crm.recommendations", b"c1", b"{}", "picked", "t")]
    try:
        await builder.execute(
            "INSERT INTO public.model_versions (version, trained_at, data_as_of, parameters,"
            " metrics) VALUES (1, now(), now(), '{}', '{}')"
        )
        await shadow.create_shadow(builder, SHADOW, RECOMMENDATION_MIGRATIONS)
        await shadow.make_durable(builder, SHADOW)
        async with pool.acquire() as first, pool.acquire() as second:
            mid_write = first.transaction()
            await mid_write.start()
            await first.execute(picks, "c1")  # a picks run has written its lists

            async def switch() -> None:
                async with admin.transaction():
                    await shadow.hold_live_writes(
                        admin, "public", RECOMMENDATION_RULES, timeout_seconds=10
                    )
                    late = asyncio.create_task(second.execute(picks, "c2"))
                    await asyncio.sleep(0.5)
                    assert not late.done()  # a run begun during the hold waits
                    await shadow.carry_unsent_outbox(admin, "public", SHADOW)
                    await shadow.carry_ledgers(admin, "public", SHADOW, RECOMMENDATION_RULES)
                    await shadow.switch(admin, "public", SHADOW, "retired_test")
                await late

            switching = asyncio.create_task(switch())
            await asyncio.sleep(0.5)
            assert not switching.done()  # the switch waits for the run in flight
            await write(first, derived)  # which writes its outbox last, and commits
            await mid_write.commit()
            await asyncio.wait_for(switching, timeout=15)
        rows = await admin.fetch("SELECT customer_id FROM public.customer_picks ORDER BY 1")
        assert [r["customer_id"] for r in rows] == ["c1", "c2"]  # carried, and the late run's
        assert await _count(admin, "retired_test", "customer_picks") == 1
        assert await _count(admin, "public", "outbox") == 1  # the run's event, carried unsent
    finally:
        await pool.close()
        await builder.close()
        await admin.close()
