"""A new operator segment over a million customers: how long its first evaluation takes.

    ./crm bench-segments [--customers 1000000] [--repeat 3]

Fills a scratch profile database straight in SQL, as bench/analytics.py does (its customers,
orders, refunds and clocks, plus one line per order), then times, for a rule that reads the
profile, revenue, a time window over products and the RFM scores:

- the evaluation: the compiled SQL selecting every matching customer (best of `repeat`);
- the whole fold of the definition event: evaluation, the memberships written and one derived
  segment-entered event per member built and written to the outbox, in one transaction (once,
  rolled back, so each run starts from no members).

Wall time (PostgreSQL does most of the work); one line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime

import asyncpg

from bench.analytics import FILL, best_of
from crm_shared.contracts.events import SEGMENT_DEFINED, build_event, encode_event, parse_event
from crm_shared.runtime import outbox
from crm_shared.runtime.db import open_pool
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


async def main(customers: int, repeat: int) -> None:
    base = os.environ.get("CRM_PG_DSN_BASE")
    if not base:
        sys.exit("set CRM_PG_DSN_BASE (./crm bench-segments does)")
    scratch = "crm_profile_segmentsbench"
    admin = await asyncpg.connect(f"{base}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    await admin.close()
    pool = await open_pool(f"{base}/{scratch}", MIGRATIONS, 2)
    try:
        async with pool.acquire() as conn:
            started = time.perf_counter()
            for statement in FILL:
                await conn.execute(statement, customers)
            await conn.execute(LINES)
            await conn.execute("REFRESH MATERIALIZED VIEW rfm_scores")
            await conn.execute("VACUUM ANALYZE")
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
            print(f"the segment holds {members:,} of {customers:,} customers")
            seconds = await best_of(repeat, lambda: store.matching_customers(conn, rule))
            print(f"{'evaluation of a new segment (SQL)':52} {seconds:8.2f} s")

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
