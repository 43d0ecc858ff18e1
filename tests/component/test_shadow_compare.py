"""The comparison held under the lock, on a real PostgreSQL: fingerprints scoped to the catch-up's
customers see their rows only (tables without a customer column whole), and applied ids are
compared before or since a time. Each projection's rebuild rules name tables and columns its
migrations create."""

from __future__ import annotations

import pytest

from broadcast_service.config import MIGRATIONS as BROADCAST_MIGRATIONS
from broadcast_service.worker import PROJECTION as BROADCAST
from broadcast_service.worker import REBUILD_RULES as BROADCAST_RULES
from crm_shared.runtime import shadow
from crm_shared.runtime.db import connect_in_schema, open_pool
from crm_shared.runtime.projector import Projection
from interaction_service.worker import PROJECTION as INTERACTION
from profile_service.config import MIGRATIONS
from profile_service.worker import PROJECTION as PROFILE
from profile_service.worker import REBUILD_RULES as PROFILE_RULES
from recommendation_service.config import MIGRATIONS as RECOMMENDATION_MIGRATIONS
from recommendation_service.worker import PROJECTION as RECOMMENDATION
from recommendation_service.worker import REBUILD_RULES as RECOMMENDATION_RULES

SHADOW = shadow.SHADOW_SCHEMA


@pytest.mark.parametrize("projection", [PROFILE, INTERACTION, BROADCAST, RECOMMENDATION])
async def test_every_table_and_column_the_rebuild_rules_name_exists(
    fresh_dsn: str, projection: Projection
) -> None:
    """A misspelt or renamed table would set nothing apart, silently: a job's output compared
    and the rebuild refusing to switch, or a ledger not carried."""
    pool = await open_pool(fresh_dsn, projection.migrations, 1)
    try:
        rows = await pool.fetch(
            "SELECT table_name, array_agg(column_name::text) AS columns"
            " FROM information_schema.columns WHERE table_schema = 'public' GROUP BY table_name"
        )
    finally:
        await pool.close()
    schema = {row["table_name"]: set(row["columns"]) for row in rows}
    named = projection.rebuild_rules.named()
    assert named, "every projection's rules name something"
    missing = {
        table: sorted(columns - schema.get(table, set()))
        for table, columns in named.items()
        if table not in schema or not columns <= schema[table]
    }
    assert missing == {}


async def test_scoped_fingerprints_see_only_those_customers_rows(fresh_dsn: str) -> None:
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
            f"UPDATE {SHADOW}.purchase_totals SET orders = 9 WHERE customer_id = 'b'"
        )
        await builder.execute(
            f"INSERT INTO {SHADOW}.partition_clocks (topic, partition, now)"
            " VALUES ('crm.orders', 0, now())"
        )
        live = await shadow.fingerprints(builder, "public", PROFILE_RULES, ["a"])
        rebuilt = await shadow.fingerprints(builder, SHADOW, PROFILE_RULES, ["a"])
        assert live["purchase_totals"] == rebuilt["purchase_totals"]
        assert live["purchase_totals"].rows == 1
        # A table without customer_id is compared whole, whoever the scope names.
        assert live["partition_clocks"] != rebuilt["partition_clocks"]
        scoped_live = await shadow.fingerprints(builder, "public", PROFILE_RULES, ["b"])
        scoped_rebuilt = await shadow.fingerprints(builder, SHADOW, PROFILE_RULES, ["b"])
        assert scoped_live["purchase_totals"] != scoped_rebuilt["purchase_totals"]
        nobody = await shadow.fingerprints(builder, SHADOW, PROFILE_RULES, [])
        assert nobody["purchase_totals"].rows == 0
    finally:
        await pool.close()
        await builder.close()


async def test_applied_ids_missing_before_or_since_a_time(fresh_dsn: str) -> None:
    pool = await open_pool(fresh_dsn, MIGRATIONS, 2)
    builder = await connect_in_schema(fresh_dsn, SHADOW)
    try:
        await shadow.create_shadow(builder, SHADOW, MIGRATIONS)
        insert = "INSERT INTO public.applied_events (source, id, type, event_time)"
        await builder.execute(insert + " VALUES ('s', 'before', 't', now())")
        since = await shadow.oldest_transaction_start(builder)
        await builder.execute(insert + " VALUES ('s', 'after', 't', now())")
        await builder.execute(
            f"{insert.replace('public', SHADOW)} VALUES ('s', 'after', 't', now())"
        )
        assert await shadow.applied_ids_missing(builder, "public", SHADOW) == 1
        missing_before = await shadow.applied_ids_missing(
            builder, "public", SHADOW, applied_before=since
        )
        missing_since = await shadow.applied_ids_missing(
            builder, "public", SHADOW, applied_since=since
        )
        assert (missing_before, missing_since) == (1, 0)
    finally:
        await pool.close()
        await builder.close()


async def test_the_send_ledger_is_carried_into_the_shadow_not_compared(fresh_dsn: str) -> None:
    """A replay cannot redo a send: the live ledger replaces whatever the shadow planned, so the
    rebuilt broadcast projection knows every message already sent."""
    pool = await open_pool(fresh_dsn, BROADCAST_MIGRATIONS, 2)
    builder = await connect_in_schema(fresh_dsn, SHADOW)
    try:
        await shadow.create_shadow(builder, SHADOW, BROADCAST_MIGRATIONS)
        row = (
            "INSERT INTO {schema}.outbound_messages (message_id, customer_id, channel, address,"
            " purpose, body_text, not_before, state, planned_at, sent_at)"
            " VALUES ('m1', 'c1', 'email', 'a@example.com', 'marketing', 'hi', now(), {state},"
            " now(), {sent})"
        )
        await builder.execute(row.format(schema="public", state="'sent'", sent="now()"))
        await builder.execute(row.format(schema=SHADOW, state="'planned'", sent="NULL"))
        live = await shadow.fingerprints(builder, "public", BROADCAST_RULES)
        assert "outbound_messages" not in live
        async with builder.transaction():
            assert await shadow.carry_ledgers(builder, "public", SHADOW, BROADCAST_RULES) == 1
        states = await builder.fetch(f"SELECT message_id, state FROM {SHADOW}.outbound_messages")
        assert [(r["message_id"], r["state"]) for r in states] == [("m1", "sent")]
    finally:
        await pool.close()
        await builder.close()


async def test_the_recommendation_jobs_tables_are_carried_with_their_numbers(
    fresh_dsn: str,
) -> None:
    """A replay does not train, pick or rank neighbours: the live model, picks, lists and marks
    replace the shadow's (which has every customer marked), and the numbers go on after both."""
    pool = await open_pool(fresh_dsn, RECOMMENDATION_MIGRATIONS, 2)
    builder = await connect_in_schema(fresh_dsn, SHADOW)
    try:
        await shadow.create_shadow(builder, SHADOW, RECOMMENDATION_MIGRATIONS)
        await builder.execute(
            "INSERT INTO public.model_versions (version, trained_at, data_as_of, parameters,"
            " metrics) VALUES (7, now(), now(), '{}', '{}');"
            " SELECT setval('public.model_version', 7);"
            " INSERT INTO public.current_model (version) VALUES (7);"
            " INSERT INTO public.customer_picks (customer_id, version, computed_at, picks)"
            " VALUES ('c1', 7, now(), '[]');"
            " INSERT INTO public.similar_products (product_id, other_product_id, co_buyers,"
            " similarity) VALUES ('p1', 'p2', 3, 0.5);"
            " INSERT INTO public.dirty_customers (customer_id) VALUES ('c2');"
            f" INSERT INTO {SHADOW}.dirty_customers (customer_id)"
            " SELECT 'c' || n FROM generate_series(1, 40) AS n"
        )
        live = await shadow.fingerprints(builder, "public", RECOMMENDATION_RULES)
        # computed by the jobs, not carried either: the neighbour job reads everything again
        assert "computed_neighbour_run" in await shadow.tables(builder, "public")
        assert not {
            "model_versions",
            "customer_picks",
            "dirty_customers",
            "computed_neighbour_run",
        } & set(live)
        async with builder.transaction():
            await shadow.hold_live_writes(
                builder, "public", RECOMMENDATION_RULES, timeout_seconds=10
            )
            assert await shadow.carry_ledgers(builder, "public", SHADOW, RECOMMENDATION_RULES) == 5
        picks = await builder.fetch(f"SELECT customer_id, version FROM {SHADOW}.customer_picks")
        assert [tuple(r) for r in picks] == [("c1", 7)]
        served = await builder.fetchval(f"SELECT version FROM {SHADOW}.current_model")
        marked = await builder.fetch(f"SELECT customer_id FROM {SHADOW}.dirty_customers")
        assert (served, [r["customer_id"] for r in marked]) == (7, ["c2"])
        assert await builder.fetchval(f"SELECT nextval('{SHADOW}.model_version')") == 8
        # the marks' numbers go on after the shadow's own (40 handed out in the replay)
        assert await builder.fetchval(f"SELECT nextval('{SHADOW}.dirty_customers_mark')") == 41
    finally:
        await pool.close()
        await builder.close()
