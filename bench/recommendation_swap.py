"""How long a model swap takes on the UCI data: training, every customer's list, the published
events, without Kafka or faust.

    ./crm bench-recommendations --swap [--sample N] [--refused-every 10]

Folds the UCI Online Retail orders and refunds (and, with `--refused-every K`, a revocation of
consent to personalisation for every K-th customer) into a scratch recommendation database with
the worker's batch path, computes the similar products, then times two swaps with the worker's
own trainer (`train_model`): the first computes and publishes every customer's list (each one is
new), the second retrains on the same data, so lists are computed again but almost none change
and almost nothing is published. For each: wall time, the training's share (the version's
`training_seconds`), the rest (lists, outbox, the swap's statements), this process's CPU time
(threads included) and PostgreSQL's (every backend of the bench's server), and the events put
in the outbox.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.pipeline import say
from bench.processes import cpu_seconds
from bench.scratch import drop_database, fresh_pool
from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import build_event, encode_event
from crm_shared.contracts.topics import topic_for
from crm_shared.ops.demo import retail
from crm_shared.runtime.projector import BatchProjector, RawRecord
from recommendation_service import store
from recommendation_service.jobs import refresh_neighbours, train_model
from recommendation_service.worker import PROJECTION

SCRATCH = "crm_recommendation_swapbench"
BATCH = 1_000


async def _no_dead_letters(letters: Sequence[DeadLetter]) -> None:
    raise AssertionError(f"{len(letters)} records were refused: {letters[:1]}")


def _revocations(events: list[dict[str, Any]], every: int) -> list[dict[str, Any]]:
    """A revocation of consent to personalisation for every `every`-th customer, after all their
    orders."""
    customers = sorted({str(e["subject"]) for e in events})
    last = max(str(e["time"]) for e in events)
    return [
        build_event(
            "crm.consent.recorded.v2",
            customer,
            {"purpose": "personalisation", "state": "revoked", "capture_method": "import"},
            source="bench",
            time=datetime.fromisoformat(last) + timedelta(days=1),
            event_id=f"bench-revoked-{customer}",
        )
        for customer in customers[::every]
    ]


async def _swap(pool: asyncpg.Pool, postmaster: int) -> dict[str, Any]:
    async with pool.acquire() as conn:
        published_before = await conn.fetchval("SELECT count(*) FROM outbox")
        await store.request_retrain(conn)
    postgres_started = cpu_seconds({"postgres": postmaster})["postgres"]
    started, cpu_started = time.perf_counter(), time.process_time()
    version = await train_model(pool)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    postgres = cpu_seconds({"postgres": postmaster})["postgres"] - postgres_started
    async with pool.acquire() as conn:
        metrics = await conn.fetchval(
            "SELECT metrics FROM model_versions WHERE version = $1", version
        )
        published = await conn.fetchval("SELECT count(*) FROM outbox") - published_before
        customers = await conn.fetchval("SELECT count(*) FROM customer_picks")
    training = float(metrics["training_seconds"])
    return {
        "version": version,
        "wall_seconds": round(wall, 2),
        "training_seconds": training,
        "lists_and_swap_seconds": round(wall - training, 2),
        "cpu_seconds": round(cpu, 2),
        "postgres_cpu_seconds": round(postgres, 2),
        "customers_with_lists": customers,
        "events_published": published,
    }


async def run(args: argparse.Namespace, dsn_base: str, pg_dir: str) -> dict[str, Any]:
    if args.data is None or not args.data.is_file():
        raise SystemExit(f"data file not found: {args.data}")
    say("reading the UCI Online Retail file")
    data = retail.load_retail(args.data)
    if args.sample:
        data = retail.limit_customers(data, args.sample)
    events = [e for e in data.events if topic_for(str(e["type"])) == "crm.orders"]
    if args.refused_every:
        events += _revocations(events, args.refused_every)
    postmaster = int((Path(pg_dir) / "pg" / "postmaster.pid").read_text().split()[0])
    pool = await fresh_pool(dsn_base, SCRATCH, PROJECTION.migrations, 4)
    try:
        say(f"folding {len(events):,} events")
        projector = BatchProjector(PROJECTION, pool, _no_dead_letters)
        records = [
            RawRecord(topic_for(str(e["type"])), 0, n, str(e["subject"]).encode(), encode_event(e))
            for n, e in enumerate(events)
        ]
        for start in range(0, len(records), BATCH):
            await projector.process(records[start : start + BATCH])
        say("computing similar products")
        while await refresh_neighbours(pool):
            pass
        say("first swap: every customer's list is new")
        first = await _swap(pool, postmaster)
        say(f"  {first}")
        say("second swap: the same data")
        second = await _swap(pool, postmaster)
        say(f"  {second}")
    finally:
        await pool.close()
        await drop_database(dsn_base, SCRATCH)
    return {"events": len(events), "first_swap": first, "second_swap": second}
