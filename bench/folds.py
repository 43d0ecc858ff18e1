"""The batch path of each projection without Kafka or faust: decode, claim, fold, commit.

    ./crm bench-folds [--events 40000 | --retail] [--merges N,...] [--batch 1000] [projection ...]

Feeds the workload's records (or, with `--retail`, the UCI Online Retail file as the demo
loader publishes it) straight to each service's BatchProjector (or to those named),
into a scratch database per projection, and prints records/s, the CPU time of this process
per record (decode, fold and statements in Python) and that of the PostgreSQL server (the
benchmark's own, so nearly all of it is the fold's statements). Set beside
`bench/pipeline.py`'s end-to-end figure it shows how much of the time is the stream processor
and how much is ours.

`--merges N` adds persons of several records to the workload: after every N-th event a merge of
two customers seen so far (a quarter of the time an unmerge of a standing merge instead), and
one order in N names its customer by an e-mail some customer registered with (an alias), so
that the profile's fold meets who-is-one-person changes in most batches. Several values fold
one case each, in turn (0: the workload as it is), e.g. `--merges 0,100,10 profile`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from bench.processes import postmaster_pid, tree_seconds
from bench.scratch import drop_database, fresh_pool
from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import build_event, encode_event
from crm_shared.contracts.topics import topic_for
from crm_shared.ops import platform
from crm_shared.ops.demo.load import default_data_path
from crm_shared.ops.demo.retail import load_retail
from crm_shared.ops.demo.workload import Workload
from crm_shared.runtime.projector import BatchProjector, Projection, RawRecord


async def no_dead_letters(letters: Sequence[DeadLetter]) -> None:
    raise AssertionError(f"the workload produced {len(letters)} invalid records")


def with_persons(events: Iterable[dict[str, Any]], every: int, seed: int) -> list[dict[str, Any]]:
    """The events with merges, unmerges and aliases (see the module's docstring): a merge or
    unmerge statement after every `every`-th event, dated a second after it, and the
    `every`-th order after each statement re-addressed to a registered e-mail."""
    r = random.Random(seed)
    found: list[dict[str, Any]] = []
    customers: list[str] = []
    emails: list[str] = []
    standing: list[tuple[str, str]] = []
    for n, event in enumerate(events, 1):
        kind, data = event["type"], event["data"]
        if kind in ("crm.customer.registered.v1", "crm.customer.updated.v1") and data.get("email"):
            emails.append(data["email"])
        elif kind == "crm.order.placed.v1" and emails and n % every == every // 2:
            event = {**event, "subject": f"email:{r.choice(emails)}"}
        found.append(event)
        customers.append(event["subject"])
        if n % every or len(customers) < 2:
            continue
        at = datetime.fromisoformat(event["time"]) + timedelta(seconds=1)
        if standing and r.random() < 0.25:
            kept, other = standing.pop(r.randrange(len(standing)))
            kind, data = "crm.customer.unmerged.v1", {"customer_id": other}
        else:
            kept, other = r.sample(customers, 2)
            if kept == other:
                continue
            standing.append((kept, other))
            kind, data = "crm.customer.merged.v1", {"merged_customer_id": other}
        found.append(build_event(kind, kept, data, source="bench", time=at, event_id=f"m-{n}"))
    return found


async def measure(
    projection: Projection, dsn_base: str, events: list[dict[str, Any]], batch: int
) -> tuple[int, float, float, float]:
    scratch = f"crm_{projection.name}_foldbench"
    pool = await fresh_pool(dsn_base, scratch, projection.migrations, 4)
    topics = {topic.name for topic in projection.topics}
    records = [
        RawRecord(topic_for(str(e["type"])), 0, n, str(e["subject"]).encode(), encode_event(e))
        for n, e in enumerate(events)
        if topic_for(str(e["type"])) in topics
    ]
    projector = BatchProjector(projection, pool, no_dead_letters)
    postmaster = await postmaster_pid(pool)
    # The workload held in memory is the bench's, not the worker's: out of the collector's sight,
    # a full collection costs what it would in a worker holding one batch, not a walk over
    # 40,000 events charged to whichever fold allocates at that moment.
    gc.collect()
    gc.freeze()
    started, cpu_started = time.perf_counter(), time.process_time()
    pg_started = tree_seconds(postmaster)
    for start in range(0, len(records), batch):
        await projector.process(records[start : start + batch])
        if start // batch % 10 == 9:
            done = start + batch
            print(f"[bench]   {done:,} of {len(records):,} records", file=sys.stderr, flush=True)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    pg_cpu = tree_seconds(postmaster) - pg_started
    gc.unfreeze()
    await pool.close()
    await drop_database(dsn_base, scratch)
    return len(records), elapsed, cpu, pg_cpu


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument(
        "--retail",
        action="store_true",
        help="fold the UCI Online Retail file's events instead of the workload",
    )
    parser.add_argument(
        "--merges",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[0],
        metavar="N,...",
        help="one merge or unmerge statement and one order naming an e-mail per N events"
        " (0: none); one case per value",
    )
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("projections", nargs="*", help="only these (default: every projection)")
    args = parser.parse_args()
    dsn_base = os.environ["CRM_PG_DSN_BASE"]
    if args.retail:
        data = default_data_path()
        if data is None:
            parser.error("the UCI file was not found (set $CRM_DEMO_DATA)")
        print(f"[bench] reading {data} ...", file=sys.stderr, flush=True)
        events = load_retail(data).events
    else:
        events = list(Workload(seed=2, prefix="fold").events(args.events))
    for every in args.merges:
        case = with_persons(events, every, seed=3) if every else events
        label = f" (1 merge or unmerge per {every} events)" if every else ""
        for service in platform.projections():
            if args.projections and service.name not in args.projections:
                continue
            projection = service.load_projection()
            print(f"[bench] folding into {service.name}{label} ...", file=sys.stderr, flush=True)
            count, seconds, cpu, pg_cpu = await measure(projection, dsn_base, case, args.batch)
            print(
                f"{service.name:15} {count:7,} records in {seconds:5.1f} s "
                f"= {count / seconds:8,.0f} records/s, {cpu / count * 1e6:5.1f} µs of our CPU "
                f"and {pg_cpu / count * 1e6:5.1f} µs of PostgreSQL's each{label}",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
