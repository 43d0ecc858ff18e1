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
from collections.abc import Mapping
from typing import Any

import asyncpg

from bench.pipeline import encoded, publish, say, wait_caught_up
from bench.processes import postmaster_pid, tree_seconds
from crm_shared.ops import launcher, platform
from crm_shared.ops.demo.workload import Workload
from crm_shared.ops.rebuild import DEFAULT_BATCH_RECORDS, Rebuild


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = [service.name for service in platform.projections()]
    parser.add_argument(
        "--events", type=int, default=100_000, help="published first; 0: rebuild what is there"
    )
    parser.add_argument("--projection", choices=names, default="profile")
    parser.add_argument("--batch-records", type=int, default=DEFAULT_BATCH_RECORDS)
    parser.add_argument("--seed", type=int, default=7)


async def run(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """The projection's worker started, the workload published and folded, then the rebuild;
    the figures as a JSON-ready dict."""
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
        postmaster = await postmaster_pid(pool)
        await pool.close()
        say(f"live worker caught up after {live_seconds:.1f} s; rebuilding")
        rebuild = Rebuild(service, batch_records=args.batch_records, wait_seconds=120)
        cpu_before, pg_before = time.process_time(), tree_seconds(postmaster)
        outcome = await rebuild.run(force=False, progress=sys.stderr)
        cpu_seconds = time.process_time() - cpu_before
        pg_seconds = tree_seconds(postmaster) - pg_before
    finally:
        launcher.stop(worker, env)
    return {
        "projection": service.name,
        "records": outcome.replayed,
        "seconds": outcome.replay_seconds,
        "rate": outcome.replayed / outcome.replay_seconds if outcome.replay_seconds else 0.0,
        "held_seconds": outcome.held_seconds,
        # CPU per 10,000 records, whole command (replay, follow, compare, switch): less noisy
        # than the rate on a shared machine. PostgreSQL's is its whole server's, so it
        # includes the live worker's queries.
        "python_cpu_per_10k": cpu_seconds * 10_000 / max(outcome.replayed, 1),
        "postgres_cpu_per_10k": pg_seconds * 10_000 / max(outcome.replayed, 1),
        "switched": outcome.switched,
        "differences": [str(difference) for difference in outcome.differences],
        "report": outcome.report,
        # The live worker's rate over the same records, when it folded them as they came.
        "live_rate": outcome.replayed / live_seconds if records else None,
    }


def show(report: Mapping[str, Any]) -> None:
    print(report["report"])
    print(
        f"CPU per 10,000 records: rebuild (Python) {report['python_cpu_per_10k']:.2f} s, "
        f"PostgreSQL {report['postgres_cpu_per_10k']:.2f} s"
    )
    if report["live_rate"] is not None:
        print(
            f"for comparison, the live worker folded the same records as they were published: "
            f"{report['live_rate']:,.0f} records/s"
        )
    for difference in report["differences"]:
        print(f"  differs: {difference}")
    print("switched" if report["switched"] else "NOT switched")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_arguments(parser)
    report = await run(parser.parse_args(), {**os.environ, "CRM_LOG_LEVEL": "WARNING"})
    show(report)


if __name__ == "__main__":
    asyncio.run(main())
