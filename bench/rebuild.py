"""Rebuild benchmark: a projection rebuilt from N workload events while its live worker runs.

    ./crm bench-rebuild [--events 100000] [--projection profile]

Starts the projection's worker, publishes N events of the workload mix, waits until the worker
has folded them, then runs the rebuild (crm_shared.ops.rebuild) in this process and prints its
report: the replay's rate, what was applied, how long the live writes were held, and whether the
rebuilt tables equal the live ones; and, for comparison in the same run, the live worker's rate
over the same records (from the first publish until it caught up).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import asyncpg

from bench.pipeline import encoded, publish, say, wait_caught_up
from crm_shared.ops import launcher, platform
from crm_shared.ops.demo.workload import Workload
from crm_shared.ops.rebuild import DEFAULT_BATCH_RECORDS, Rebuild


async def main() -> None:
    names = [service.name for service in platform.projections()]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--projection", choices=names, default="profile")
    parser.add_argument("--batch-records", type=int, default=DEFAULT_BATCH_RECORDS)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, "CRM_LOG_LEVEL": "WARNING"}
    service = next(s for s in platform.projections() if s.name == args.projection)
    worker = launcher.BY_NAME[f"{service.name}-worker"]
    bootstrap = env["CRM_KAFKA_BOOTSTRAP"]
    say(f"starting {worker.name}, publishing {args.events:,} events")
    launcher.start(worker, env)
    try:
        launcher.wait_healthy([worker], env)
        records = encoded(list(Workload(seed=args.seed, prefix="r").events(args.events)))
        started = time.monotonic()
        await publish(bootstrap, records, len(records), started)
        pool = await asyncpg.create_pool(
            f"{env['CRM_PG_DSN_BASE']}/crm_{service.name}", min_size=1, max_size=1
        )
        live_seconds = await wait_caught_up({service.name: pool}, bootstrap, started) - started
        await pool.close()
        say(f"live worker caught up after {live_seconds:.1f} s; rebuilding")
        rebuild = Rebuild(service, batch_records=args.batch_records, wait_seconds=120)
        outcome = await rebuild.run(force=False, progress=sys.stderr)
    finally:
        launcher.stop(worker, env)
    print(outcome.report)
    print(
        f"for comparison, the live worker folded the same records as they were published: "
        f"{outcome.replayed / live_seconds:,.0f} records/s"
    )
    for difference in outcome.differences:
        print(f"  differs: {difference}")
    print("switched" if outcome.switched else "NOT switched")


if __name__ == "__main__":
    asyncio.run(main())
