"""The batch path of each projection without Kafka or faust: decode, claim, fold, commit.

    ./crm bench-folds [--events 40000 | --retail] [--batch 1000] [projection ...]

Feeds the workload's records (or, with `--retail`, the UCI Online Retail file as the demo
loader publishes it) straight to each service's BatchProjector (or to those named),
into a scratch database per projection, and prints records/s and the CPU time of this process
per record: decode, fold and statements in Python, without PostgreSQL's share. Set beside
`bench/pipeline.py`'s end-to-end figure it shows how much of the time is the stream processor
and how much is ours.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Sequence

from bench.scratch import drop_database, fresh_pool
from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import encode_event
from crm_shared.contracts.topics import topic_for
from crm_shared.ops import platform
from crm_shared.ops.demo.load import default_data_path
from crm_shared.ops.demo.retail import load_retail
from crm_shared.ops.demo.workload import Workload
from crm_shared.runtime.projector import BatchProjector, Projection, RawRecord


async def no_dead_letters(letters: Sequence[DeadLetter]) -> None:
    raise AssertionError(f"the workload produced {len(letters)} invalid records")


async def measure(
    projection: Projection, dsn_base: str, events: list[dict[str, object]], batch: int
) -> tuple[int, float, float]:
    scratch = f"crm_{projection.name}_foldbench"
    pool = await fresh_pool(dsn_base, scratch, projection.migrations, 4)
    topics = {topic.name for topic in projection.topics}
    records = [
        RawRecord(topic_for(str(e["type"])), 0, n, str(e["subject"]).encode(), encode_event(e))
        for n, e in enumerate(events)
        if topic_for(str(e["type"])) in topics
    ]
    projector = BatchProjector(projection, pool, no_dead_letters)
    # The workload held in memory is the bench's, not the worker's: out of the collector's sight,
    # a full collection costs what it would in a worker holding one batch, not a walk over
    # 40,000 events charged to whichever fold allocates at that moment.
    gc.collect()
    gc.freeze()
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(records), batch):
        await projector.process(records[start : start + batch])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    gc.unfreeze()
    await pool.close()
    await drop_database(dsn_base, scratch)
    return len(records), elapsed, cpu


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
    for service in platform.projections():
        if args.projections and service.name not in args.projections:
            continue
        projection = service.load_projection()
        print(f"[bench] folding into {service.name} ...", file=sys.stderr, flush=True)
        count, seconds, cpu = await measure(projection, dsn_base, events, args.batch)
        print(
            f"{service.name:15} {count:7,} records in {seconds:5.1f} s "
            f"= {count / seconds:8,.0f} records/s, {cpu / count * 1e6:5.1f} µs of our CPU each"
        )


if __name__ == "__main__":
    asyncio.run(main())
