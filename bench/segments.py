"""A new operator segment over a million customers: how long its first evaluation takes.

    ./crm bench-segments [--customers 1000000] [--repeat 3]

Fills a scratch profile database straight in SQL, as bench/analytics.py does (its customers,
orders, refunds and clocks, plus one line per order), then times, for a rule that reads the
profile, revenue, a time window over products and the RFM scores:

- the evaluation: the compiled SQL selecting every matching customer (best of `repeat`);
- the whole fold of the definition event: evaluation, the memberships written and one derived
  segment-entered event per member built and written to the outbox, in one transaction (once,
  rolled back, so each run starts from no members).

The evaluation is given as wall time and as the CPU time of the PostgreSQL backend that ran it
(read from /proc; parallel workers are turned off so that the backend does all the work): on a
machine that other processes share, the CPU time is the figure to compare. The fold is given as
wall time. Progress and one line
per figure are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.analytics import FILL
from bench.processes import process_seconds
from bench.scratch import fresh_pool
from crm_shared.contracts.events import SEGMENT_DEFINED, build_event, encode_event, parse_event
from crm_shared.runtime import outbox
from profile_service import segment_fold, store
from profile_service.config import MIGRATIONS

LINES = """
    INSERT INTO order_lines (customer_id, order_id, source, event_id, line_no, product_id,
                             description, quantity, unit_price)
    SELECT customer_id, order_id, source, event_id, 1, 'P' || (abs(hashtext(order_id)) % 500),
           'product', items, amount / items
    FROM orders
"""

RULE = {
    "all": [
        {"field": "country", "in": ["France", "Spain"]},
        {"measure": "net_revenue", "currency": "GBP", "at_least": 500},
        {"bought": {"product_ids": ["P1", "P2", "P3", "P4", "P5"], "within_days": 365}},
        {"not": {"rfm": {"currency": "GBP", "segments": ["lost", "hibernating"]}}},
    ]
}


async def timed(conn: asyncpg.Connection, run: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(wall seconds, backend CPU seconds) of one run."""
    pid = conn.get_server_pid()
    cpu, wall = process_seconds(pid), time.perf_counter()
    await run()
    return time.perf_counter() - wall, process_seconds(pid) - cpu


async def main(customers: int, repeat: int) -> None:
    base = os.environ.get("CRM_PG_DSN_BASE")
    if not base:
        sys.exit("set CRM_PG_DSN_BASE (./crm bench-segments does)")
    pool = await fresh_pool(base, "crm_profile_segmentsbench", MIGRATIONS, 2)
    try:
        async with pool.acquire() as conn:
            started = time.perf_counter()
            for step, statement in enumerate(FILL, 1):
                print(f"filling ({step}/{len(FILL) + 1}) ...", flush=True)
                await conn.execute(statement, customers)
            print(f"filling ({len(FILL) + 1}/{len(FILL) + 1}) ...", flush=True)
            await conn.execute(LINES)
            print("refreshing the RFM scores ...", flush=True)
            await store.refresh_rfm(conn)
            await conn.execute("VACUUM ANALYZE")
            await conn.execute("SET max_parallel_workers_per_gather = 0")
            orders = await conn.fetchval("SELECT count(*) FROM orders")
            seconds = time.perf_counter() - started
            print(f"filled {customers:,} customers, {orders:,} orders and lines in {seconds:.1f} s")

            event = parse_event(
                encode_event(
                    build_event(
                        SEGMENT_DEFINED,
                        "bench",
                        {"segment": "bench", "rule": RULE},
                        source="bench",
                        time=datetime(2025, 1, 10, tzinfo=UTC),
                    )
                )
            )
            rule = event.data.rule  # type: ignore[attr-defined]
            members = len(await store.matching_customers(conn, rule))
            print(f"the segment holds {members:,} of {customers:,} customers", flush=True)
            runs = [
                await timed(conn, lambda: store.matching_customers(conn, rule))
                for _ in range(repeat)
            ]
            wall, cpu = min(runs)
            print(f"{'evaluation of a new segment (SQL)':52} {wall:8.2f} s, CPU {cpu:.2f} s")

            transaction = conn.transaction()
            await transaction.start()
            started = time.perf_counter()
            derived = await segment_fold.on_definition(conn, event)
            await outbox.write(conn, derived)
            seconds = time.perf_counter() - started
            await transaction.rollback()
            print(
                f"{'fold of the definition, with ' + f'{len(derived):,} derived events':52}"
                f" {seconds:8.2f} s"
            )
    finally:
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.customers, args.repeat))
