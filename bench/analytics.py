"""The profile's analysis across customers at scale: RFM refresh, top customers, the cube.

    ./crm bench-analytics [--customers 1000000] [--repeat 3]

Fills a scratch profile database straight in SQL (not through the folds: this measures the
read side) with `customers` customers of 1 to 5 orders each over two years, one in ten with a
refund, two in three members of a segment (half of them of a second too: the cube's
segment cells), then times the worker's RFM refresh and the API's queries. Prints one line per
figure: the best of `repeat` in wall time and the CPU a run of the PostgreSQL backend (the mean:
steadier than wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from bench.processes import process_seconds
from bench.scratch import fresh_pool
from profile_service import store
from profile_service.config import MIGRATIONS

FILL = [
    """
    INSERT INTO orders (customer_id, order_id, source, event_id, placed_at, channel, currency,
                        amount, line_count, items)
    SELECT 'c' || c, 'c' || c || '-' || k, 'bench', 'c' || c || '-' || k,
           timestamptz '2023-01-01' + ((c::bigint * 7919 + k * 104729) % 730) * interval '1 day',
           (ARRAY['web', 'store', 'phone'])[1 + (c + k) % 3], 'GBP',
           ((c * 31 + k * 17) % 500 + 5)::numeric, 1 + k % 4, 1 + k % 4
    FROM generate_series(1, $1) AS c, generate_series(1, 1 + (c % 5)) AS k
    """,
    """
    INSERT INTO refunds (customer_id, refund_id, source, event_id, refunded_at, order_id,
                         currency, amount, line_count, items)
    SELECT 'c' || c, 'r' || c, 'bench', 'r' || c, timestamptz '2025-01-05', 'c' || c || '-1',
           'GBP', 3, 1, 1
    FROM generate_series(10, $1, 10) AS c
    """,
    """
    INSERT INTO customers (customer_id, country, updated_at)
    SELECT 'c' || c, (ARRAY['United Kingdom', 'France', 'Germany', 'Spain'])[1 + c % 4], now()
    FROM generate_series(1, $1) AS c
    """,
    """
    INSERT INTO purchase_totals (customer_id, orders_partition, last_purchase_at)
    SELECT 'c' || c, c % 12, timestamptz '2024-12-31' FROM generate_series(1, $1) AS c
    """,
    """
    INSERT INTO partition_clocks (topic, partition, now)
    SELECT 'crm.orders', p, timestamptz '2025-01-10' FROM generate_series(0, 11) AS p
    WHERE $1::int > 0
    """,
    """
    INSERT INTO segment_memberships (customer_id, segment, member, version, changed_at)
    SELECT 'c' || c, segment, c % 7 <> 0, 1, now()
    FROM generate_series(1, $1) AS c,
         unnest(ARRAY[(ARRAY['vip', 'newsletter', NULL])[1 + c % 3],
                      CASE WHEN c % 3 = 0 THEN 'loyal' END]) AS segment
    WHERE segment IS NOT NULL
    """,
]


async def best_of(repeat: int, run: Callable[[], Awaitable[Any]]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    return min(times)


async def main(customers: int, repeat: int) -> None:
    base = os.environ.get("CRM_PG_DSN_BASE")
    if not base:
        sys.exit("set CRM_PG_DSN_BASE (./crm bench-analytics does)")
    pool = await fresh_pool(base, "crm_profile_analyticsbench", MIGRATIONS, 2)
    try:
        async with pool.acquire() as conn:
            started = time.perf_counter()
            for statement in FILL:
                await conn.execute(statement, customers)
            await conn.execute("VACUUM ANALYZE")
            orders = await conn.fetchval("SELECT count(*) FROM orders")
            seconds = time.perf_counter() - started
            print(f"filled {customers:,} customers, {orders:,} orders in {seconds:.1f} s")
            figures = {
                "RFM refresh (first)": lambda: store.refresh_rfm(conn),
                "RFM refresh (again, as the worker does)": lambda: store.refresh_rfm(conn),
                "RFM segment sizes": lambda: store.segment_sizes(conn),
                "one customer's RFM": lambda: store.rfm_of(conn, "c4242"),
                "one customer's purchase totals": lambda: store.purchases_of(conn, ["c4242"]),
                "top customers (25 %, 20 points)": lambda: store.top_customers(
                    conn, "GBP", Decimal("0.25"), 20
                ),
                "cube refresh (every currency, 32 grouping sets)": lambda: store.refresh_cube(conn),
                "cube read, grand total only": lambda: store.cube(conn, "GBP", ()),
                "cube read by segment x channel": lambda: store.cube(
                    conn, "GBP", ("rfm_segment", "channel")
                ),
                "cube read by all five dimensions": lambda: store.cube(
                    conn, "GBP", ("segment", "rfm_segment", "country", "channel", "month")
                ),
            }
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            for name, run in figures.items():
                cpu = process_seconds(backend)
                seconds = await best_of(repeat, run)
                cpu = (process_seconds(backend) - cpu) / repeat
                print(f"{name:48} {seconds * 1000:10.1f} ms  {cpu * 1000:8.0f} ms of CPU a run")
    finally:
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.customers, args.repeat))
