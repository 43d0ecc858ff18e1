"""Planning a campaign to a million customers: the contact decision of each (made once per
decision signature), one narrow row per recipient reached written to outbound_messages (messages
are rendered when the sender claims them, see broadcast_service.rendering).

    ./crm bench-campaign-plan [--customers 1000000] [--chunk 10000] [--connections 3]

Fills a scratch broadcast database straight in SQL (segment members, channel set-ups, some
with quiet hours or a weekly cap, confirmed consents for 90 % of them, names and registered
addresses, three recommendations each),
marks a campaign 'planning' as the fold does when it is due, then times
`broadcast_service.planning.plan_due`, the code the worker's planning job runs: chunks read on
`--connections` connections at once, a transaction per chunk written. Prints progress, the wall
time and the rate, and the CPU time of this process and of the PostgreSQL backends (on a shared
machine, compare CPU); then times writing the planned chunks out as rows, the senders' share.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.processes import process_seconds
from bench.scratch import fresh_pool
from broadcast_service import campaigns, planning, store
from broadcast_service.config import MIGRATIONS
from crm_shared.contracts.events import CAMPAIGN_DEFINED, build_event, validate_event

SEGMENT = "bench"
FILL = [
    """
    INSERT INTO segment_memberships (customer_id, segment, member, version, changed_at, source,
                                     event_id)
    SELECT 'c' || c, 'bench', true, 1, timestamptz '2025-01-01', 'bench', 's' || c
    FROM generate_series(1, $1) AS c
    """,
    """
    INSERT INTO channel_preferences (customer_id, channels, timezone, settings, set_at, source,
                                     event_id)
    SELECT 'c' || c, CASE WHEN c % 4 = 0 THEN ARRAY['sms', 'email'] ELSE ARRAY['email'] END,
           'Europe/Paris',
           CASE WHEN c % 4 = 0 THEN jsonb_build_array(jsonb_build_object('channel', 'sms'))
                ELSE '[]'::jsonb END
           || jsonb_build_array(jsonb_build_object(
                  'channel', 'email',
                  'quiet_start', CASE WHEN c % 10 = 0 THEN '21:00' END,
                  'quiet_end', CASE WHEN c % 10 = 0 THEN '08:00' END,
                  'quiet_timezone', CASE WHEN c % 10 = 0 THEN 'Europe/Paris' END,
                  'max_per_week', CASE WHEN c % 5 = 0 THEN 3 END)),
           timestamptz '2025-01-01', 'bench', 'p' || c
    FROM generate_series(1, $1) AS c
    """,
    """
    INSERT INTO consents (customer_id, purpose, channel, granted, state, capture_method,
                          changed_at, source, event_id)
    SELECT 'c' || c, 'marketing', '*', true, 'granted', 'double_opt_in',
           timestamptz '2025-01-01', 'bench', 'k' || c
    FROM generate_series(1, $1) AS c WHERE c % 10 <> 7
    """,
    """
    INSERT INTO customer_contacts (customer_id, name, email, phone, changed_at)
    SELECT 'c' || c, 'Customer ' || c, 'c' || c || '@example.com',
           CASE WHEN c % 8 = 0 THEN '+4477' || c END, timestamptz '2025-01-01'
    FROM generate_series(1, $1) AS c
    """,
    """
    INSERT INTO customer_recommendations (customer_id, picks, new_products, version, changed_at)
    SELECT 'c' || c,
           jsonb_build_array(
               jsonb_build_object('product_id', 'P' || c % 500, 'description',
                                  'Product ' || c % 500, 'reason', 'bought with your last order'),
               jsonb_build_object('product_id', 'P' || c % 300, 'description',
                                  'Product ' || c % 300, 'reason', 'popular near you'),
               jsonb_build_object('product_id', 'P' || c % 200, 'description',
                                  'Product ' || c % 200, 'reason', 'you viewed it')),
           '[{"product_id": "N1", "description": "New teapot", "reason": "new"}]'::jsonb,
           1, timestamptz '2025-01-01'
    FROM generate_series(1, $1) AS c
    """,
]

DEFINITION = {
    "name": "Spring newsletter",
    "kind": "newsletter",
    "purpose": "marketing",
    "target": {"segment": SEGMENT},
    "templates": [
        {
            "channel": "email",
            "subject": "{{ name }}, our picks for you",
            "text": "Hello {{ name }},\n{% for p in recommendations %}- {{ p.description }}"
            " ({{ p.reason }})\n{% endfor %}New: {% for p in new_products %}{{ p.description }}"
            "{% endfor %}\nUnsubscribe: {{ unsubscribe_url }}",
        },
        {"channel": "sms", "text": "{{ name }}: spring picks are in. Stop: {{ unsubscribe_url }}"},
    ],
    "include_recommendations": True,
    "throttle_per_second": 2000,
}


async def backends_cpu(conn: asyncpg.Connection) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to the bench's database."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend'"
    )
    return {row["pid"]: process_seconds(row["pid"]) for row in pids}


async def write_out(pool: asyncpg.Pool, at: datetime, messages: int) -> None:
    """Time what planning left to the senders: every chunk written out as its rows, a chunk a
    transaction, as a claim does when the chunk is due (`store.take_due_chunk`)."""
    until = at + timedelta(days=1)
    async with pool.acquire() as conn:
        backend = conn.get_server_pid()
        started, pg_cpu = time.perf_counter(), process_seconds(backend)
        written = 0
        while taken := await store.take_due_chunk(conn, until, messages + 1):
            written += taken
        seconds, pg_cpu = time.perf_counter() - started, process_seconds(backend) - pg_cpu
    print(
        f"written out {written:,} messages as rows (the senders' share, paid when due) in"
        f" {seconds:.2f} s; CPU {pg_cpu:.2f} s PostgreSQL ({1e6 * pg_cpu / written:.1f} µs a"
        " message)"
    )


async def main(customers: int, chunk: int, connections: int, profile: bool) -> None:
    base = os.environ.get("CRM_PG_DSN_BASE")
    if not base:
        sys.exit("set CRM_PG_DSN_BASE (./crm bench-campaign-plan does)")
    # The pool's backends are the planner's: their CPU is read before and after the plan.
    pool = await fresh_pool(base, "crm_broadcast_planbench", MIGRATIONS, connections)
    try:
        async with pool.acquire() as conn:
            started = time.perf_counter()
            for step, statement in enumerate(FILL, 1):
                print(f"filling ({step}/{len(FILL)}) ...", flush=True)
                await conn.execute(statement, customers)
            await conn.execute("VACUUM ANALYZE")
            print(f"filled {customers:,} customers in {time.perf_counter() - started:.1f} s")

            at = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
            event = build_event(CAMPAIGN_DEFINED, "bench", DEFINITION, source="bench", time=at)
            campaign = campaigns.campaign_from(validate_event(event))
            planner = planning.Planner(chunk, connections=connections)
            await store.save_campaigns(conn, [campaign])
            backend = conn.get_server_pid()
            started, own_cpu, pg_cpu = (
                time.perf_counter(),
                time.process_time(),
                process_seconds(backend),
            )
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                reasons = await planning.dry_run(conn, campaign, at, chunk)
            seconds = time.perf_counter() - started
            own_cpu, pg_cpu = time.process_time() - own_cpu, process_seconds(backend) - pg_cpu
            decided = sum(reasons.values())
            print(
                f"dry run (decisions only, nothing written) of {decided:,} recipients"
                f" in {seconds:.2f} s; CPU {own_cpu:.2f} s planner + {pg_cpu:.2f} s PostgreSQL"
                f" ({1e6 * (own_cpu + pg_cpu) / decided:.1f} µs a recipient)",
                flush=True,
            )
            await store.save_campaigns(conn, [campaigns.started_if_due(campaign)])

        total: Counter[str] = Counter()
        messages = 0
        shown = started = time.perf_counter()

        def progress(chunk: planning.ChunkPlanned) -> None:
            nonlocal shown, messages
            total.update(chunk.reasons)
            messages += chunk.messages
            if time.perf_counter() - shown >= 1 or chunk.finished:
                shown = time.perf_counter()
                print(
                    f"  {shown - started:5.1f} s: decided {total.total():,} of {customers:,}"
                    f" recipients, {messages:,} rows",
                    flush=True,
                )

        profiler = cProfile.Profile() if profile else None
        async with pool.acquire() as conn:
            before = await backends_cpu(conn)
        started, own_cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        chunks = await planning.plan_due(pool, planner, progress)
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        own_cpu = time.process_time() - own_cpu
        async with pool.acquire() as conn:
            after = await backends_cpu(conn)
        pg_cpu = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
        recipients = total.total()
        for reason, count in total.most_common():
            print(f"  {reason:40} {count:>10,}")
        print(
            f"planned a campaign to {recipients:,} customers ({messages:,} messages,"
            f" {chunks} chunks of {chunk:,}, {connections} connections) in {seconds:.2f} s:"
            f" {recipients / seconds:,.0f}"
            f" recipients/s; CPU {own_cpu:.2f} s planner + {pg_cpu:.2f} s PostgreSQL"
            f" ({1e6 * (own_cpu + pg_cpu) / recipients:.1f} µs a recipient)",
            flush=True,
        )
        await write_out(pool, at, messages)
    finally:
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=10_000, help="recipients per transaction")
    parser.add_argument(
        "--connections", type=int, default=3, help="chunks read at once, a connection each"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print where the planner's CPU goes (cProfile)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.customers, args.chunk, args.connections, args.profile))
