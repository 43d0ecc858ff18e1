"""End-to-end benchmark: events/s through all four projections, freshness, and a minimal baseline.

    python -m bench.pipeline [--events 200000] [--rate 2000] [--seconds 20] [--warm-up 20000]

The first phase of `./crm bench` (bench/full.py), on the private broker and database it
starts. A warm-up (`warm_up`: the broker's JIT, the first models) and four phases, progress
shown:
1. throughput: publish N events (the workload mix, ~450 bytes each) as fast as possible while the
   four workers run; the clock stops when every projection has applied everything on its topics;
2. freshness: publish at a fixed rate, each event's time the moment it falls due (`live`); per
   projection p50/p99 of (commit time - event time), the commit time being PostgreSQL's own for
   each applied_events row (track_commit_timestamp): the moment a reader can first see the event;
3. alone: each projection dropped and rebuilt from offset 0 by its worker with no other worker
   running (records/s from its first commit to the end of its topics);
4. baseline: a minimal pipeline on the same machine and the same records (aiokafka getmany +
   json decode + COPY into PostgreSQL): the reference each worker's rate is divided by.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition

from bench.processes import CpuMeter, infrastructure, per_event_line
from crm_shared.contracts.events import encode_event
from crm_shared.contracts.topics import EVENT_TOPICS, topic_for
from crm_shared.ops import launcher, platform
from crm_shared.ops.demo.workload import Workload
from crm_shared.runtime.service import Process

PROJECTIONS: dict[str, tuple[str, ...]] = {
    service.name: tuple(topic.name for topic in service.load_projection().topics)
    for service in platform.projections()
}
WORKERS = [
    process
    for service in platform.projections()
    for process in service.processes
    if process.component in ("worker", "jobs")
]
"""What folds the projections and keeps their precomputed results: each worker, and the
recommendation's jobs process (its similar products, model and picks)."""


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def end_offsets(bootstrap: str) -> dict[tuple[str, int], int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [
            KafkaTopicPartition(t.name, p)
            for t in EVENT_TOPICS
            for p in consumer.partitions_for_topic(t.name) or []
        ]
        return {
            (tp.topic, tp.partition): offset
            for tp, offset in consumer.end_offsets(partitions).items()
        }
    finally:
        consumer.close()


async def consumed(pool: asyncpg.Pool) -> dict[tuple[str, int], int]:
    """A projection's stored positions: the next offset it will read, per partition."""
    rows = await pool.fetch("SELECT topic, partition, next_offset FROM consumer_positions")
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def remaining(
    pools: dict[str, asyncpg.Pool], ends: dict[tuple[str, int], int]
) -> dict[str, int]:
    """Records on each projection's topics that it has not consumed yet."""
    left: dict[str, int] = {}
    for name, pool in pools.items():
        done = await consumed(pool)
        left[name] = sum(  # positions read after the ends may be past them
            max(end - done.get(tp, 0), 0) for tp, end in ends.items() if tp[0] in PROJECTIONS[name]
        )
    return left


async def wait_caught_up(pools: dict[str, asyncpg.Pool], bootstrap: str, started: float) -> float:
    ends = end_offsets(bootstrap)
    last_report = 0.0
    while True:
        left = await remaining(pools, ends)
        now = time.monotonic()
        if not any(left.values()):
            return now
        if now - last_report > 2:
            say(f"  catching up after {now - started:5.1f} s, still to apply: {left}")
            last_report = now
        await asyncio.sleep(0.05)


PACING_SECONDS = 0.02
"""A paced publisher's tick: what fell due since the last one goes out at once, in one produce
request (the producer does not linger). At 2,000/s over 192 partitions nearly every batch holds
one record whatever the tick, so the requests are what costs: a 5 ms tick cost the publisher
about 170 µs and the broker 67-84 µs an event, a 20 ms one 100-107 and 28-30, on the two cores
the benchmark measures (docs/performance.md). A record carries the moment it fell due (`live`),
so its wait for the tick counts in the freshness, as a producer's linger would."""


async def publish(
    bootstrap: str,
    records: Iterable[tuple[str, bytes, bytes]],
    total: int,
    started: float,
    rate: float = 0,
) -> None:
    """Publish with one aiokafka producer (acks=all, idempotent): kafka-python's producer tops
    out near 6,000 events/s on this machine and would measure itself, not the platform.
    With `rate`, records are paced to that many per second and drawn just before their send,
    those due sent together every PACING_SECONDS: a sleep per record was most of the publisher's
    CPU at 2,000/s, on the machine it measures (generating and encoding an event: 27 µs)."""
    kafka = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        max_batch_size=512 * 1024,
    )
    await kafka.start()
    try:
        pending = []
        unsent, n = iter(records), 0
        while True:
            if rate:
                delay = started + (n + 1) / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(max(delay, PACING_SECONDS))
            record = next(unsent, None)
            if record is None:
                break
            n, (topic, key, value) = n + 1, record
            pending.append(await kafka.send(topic, value=value, key=key))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
            if n % 50_000 == 0:
                say(f"  published {n:,}/{total:,} ({n / (time.monotonic() - started):,.0f}/s)")
        await asyncio.gather(*pending)
    finally:
        await kafka.stop()


def encoded(events: Sequence[dict[str, object]]) -> list[tuple[str, bytes, bytes]]:
    return [
        (topic_for(str(e["type"])), str(e["subject"]).encode(), encode_event(e)) for e in events
    ]


def live(workload: Workload, count: int, rate: float) -> Iterator[tuple[str, bytes, bytes]]:
    """`count` records of the workload for a publisher paced at `rate` a second from now
    (`publish`), each drawn when asked for. The n-th carries the moment it falls due on that
    schedule, not the moment it is drawn: what it waits for its tick, or for a publisher behind
    its schedule, counts in its freshness."""
    start = datetime.now(UTC)
    return (
        encoded([workload.event(start + timedelta(seconds=(n + 1) / rate))])[0]
        for n in range(count)
    )


def platform_meter(env: Mapping[str, str]) -> CpuMeter:
    """CPU of the workers and jobs processes, Kafka and PostgreSQL (and this process, the
    publisher)."""
    workers = {w.name: pid for w in WORKERS if (pid := launcher.running_pid(w, env))}
    return CpuMeter({**workers, **infrastructure(env)})


FIRST_MODELS = {
    "profile": "SELECT count(*) FROM fitted_lifetime_models WHERE current",
    "recommendation": "SELECT count(*) FROM current_model",
}
"""What a projection fits once, on its first data (then every 10 minutes, or every hour)."""
FIRST_MODELS_SECONDS = 600.0


WARM_UP_PACED_SECONDS = 10.0


async def warm_up(
    args: argparse.Namespace, pools: dict[str, asyncpg.Pool], env: Mapping[str, str]
) -> float:
    """Cold-start work out of the measured phases, as a platform that has run a while has it
    behind it: the broker's JIT compiling its hot paths (half of its CPU in its first minute),
    the first lifetime-value fit and the first recommendation model. Publishes `--warm-up`
    events at once, then WARM_UP_PACED_SECONDS at the freshness phase's rate (small produce
    requests and fetches that wait: paths a burst does not take, which the JIT otherwise
    compiles during that phase), waits until they are applied and the first models exist;
    returns the seconds."""
    started = time.monotonic()
    if args.warm_up:
        say(f"warm-up: publishing {args.warm_up:,} events, then waiting for the first models")
        bootstrap = env["CRM_KAFKA_BOOTSTRAP"]
        workload = Workload(seed=args.seed + 2, prefix="w")
        records = encoded(list(workload.events(args.warm_up)))
        await publish(bootstrap, records, len(records), started)
        paced = int(args.rate * WARM_UP_PACED_SECONDS)
        say(f"warm-up: {paced:,} events at {args.rate:,}/s")
        await publish(
            bootstrap, live(workload, paced, args.rate), paced, time.monotonic(), rate=args.rate
        )
        await wait_caught_up(pools, bootstrap, started)
        for name, query in FIRST_MODELS.items():
            while not await pools[name].fetchval(query):
                if time.monotonic() - started > FIRST_MODELS_SECONDS:
                    raise RuntimeError(f"no first {name} model within {FIRST_MODELS_SECONDS} s")
                say(f"  waiting for the first {name} model")
                await asyncio.sleep(2)
    return time.monotonic() - started


async def throughput(
    args: argparse.Namespace, pools: dict[str, asyncpg.Pool], env: Mapping[str, str]
) -> dict[str, Any]:
    say(f"phase 1: generating {args.events:,} events")
    workload = Workload(seed=args.seed, prefix="t")
    records = encoded(list(workload.events(args.events)))
    size = sum(len(r[2]) for r in records) / len(records)
    say(f"phase 1: publishing {args.events:,} events (mean {size:.0f} bytes), workers running")
    bootstrap, meter = env["CRM_KAFKA_BOOTSTRAP"], platform_meter(env)
    meter.start()
    started = time.monotonic()
    await publish(bootstrap, records, len(records), started)
    published = time.monotonic()
    say(
        f"  all published in {published - started:.1f} s "
        f"({len(records) / (published - started):,.0f}/s)"
    )
    finished = await wait_caught_up(pools, bootstrap, started)
    elapsed = finished - started
    return {
        "events": len(records),
        "bytes": size,
        "seconds": elapsed,
        "rate": len(records) / elapsed,
        "publish_rate": len(records) / (published - started),
        "cpu_seconds": meter.stop(),
    }


async def freshness(
    args: argparse.Namespace, pools: dict[str, asyncpg.Pool], env: Mapping[str, str]
) -> tuple[dict[str, tuple[float, float, int]], dict[str, float]]:
    """Commit time - event time per projection (p50, p99, events), and the CPU seconds spent."""
    total = int(args.rate * args.seconds)
    say(f"phase 2: publishing {total:,} events at {args.rate:,}/s each stamped when due")
    workload = Workload(seed=args.seed + 1, prefix="f")
    since = datetime.now(UTC)
    bootstrap, meter = env["CRM_KAFKA_BOOTSTRAP"], platform_meter(env)
    meter.start()
    started = time.monotonic()
    await publish(bootstrap, live(workload, total, args.rate), total, started, rate=args.rate)
    await wait_caught_up(pools, bootstrap, started)
    spent = meter.stop()
    result: dict[str, tuple[float, float, int]] = {}
    for name, pool in pools.items():
        row = await pool.fetchrow(
            """
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99,
                   count(*) AS n
            FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - event_time) AS lag
                  FROM applied_events
                  WHERE source = 'bench' AND id LIKE 'f-%' AND event_time >= $1) AS measured
            """,
            since,
        )
        result[name] = (float(row["p50"] or 0) * 1000, float(row["p99"] or 0) * 1000, int(row["n"]))
    return result, spent


async def alone(name: str, env: dict[str, str], dsn_base: str, bootstrap: str) -> tuple[int, float]:
    """One projection rebuilt from offset 0 by its worker, with no other worker running (nor
    the jobs processes, whose work is not the fold's): the records it consumed per second,
    counted from its first commit to the end of its topics."""
    worker = launcher.BY_NAME[f"{name}-worker"]
    admin = await asyncpg.connect(f"{dsn_base}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "crm_{name}" WITH (FORCE)')
    await admin.close()
    launcher.start(worker, env)
    try:
        launcher.wait_healthy([worker], env)
        pool = await asyncpg.create_pool(f"{dsn_base}/crm_{name}", min_size=1, max_size=2)
        ends = {tp: end for tp, end in end_offsets(bootstrap).items() if tp[0] in PROJECTIONS[name]}
        total = sum(ends.values())
        first: tuple[float, int] | None = None
        last_report = time.monotonic()
        while True:
            done = sum(
                min(offset, ends.get(tp, 0)) for tp, offset in (await consumed(pool)).items()
            )
            now = time.monotonic()
            if first is None and done:
                first = (now, done)
            if done >= total:
                break
            if now - last_report > 2:
                say(f"  {name} alone: {done:,}/{total:,} records")
                last_report = now
            await asyncio.sleep(0.02)
        await pool.close()
    finally:
        launcher.stop(worker, env)
    assert first is not None
    return total - first[1], now - first[0]


async def baseline(bootstrap: str, dsn_base: str, expected: int) -> float:
    """aiokafka getmany + json.loads + COPY: what the machine does with no stream processor."""
    say(f"phase 3: minimal pipeline over the first {expected:,} records")
    conn = await asyncpg.connect(f"{dsn_base}/postgres")
    await conn.execute(
        "DROP TABLE IF EXISTS bench_baseline;"
        " CREATE UNLOGGED TABLE bench_baseline (id text, type text, subject text, time text)"
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for topic, p in end_offsets(bootstrap)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        done = 0
        started = time.monotonic()
        while done < expected:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            rows = []
            for records in batches.values():
                for record in records:
                    document = json.loads(record.value)
                    rows.append(
                        (document["id"], document["type"], document["subject"], document["time"])
                    )
            if rows:
                await conn.copy_records_to_table("bench_baseline", records=rows)
                done += len(rows)
        elapsed = time.monotonic() - started
    finally:
        await consumer.stop()
        await conn.execute("DROP TABLE bench_baseline")
        await conn.close()
    return done / elapsed


@contextlib.asynccontextmanager
async def workers_running(env: dict[str, str]) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    """The four workers (and the jobs processes) started and caught up with their topics; a
    pool per projection."""
    say("starting the four projection workers and the jobs processes")
    for worker in WORKERS:
        launcher.start(worker, env)
    pools: dict[str, asyncpg.Pool] = {}
    try:
        launcher.wait_healthy(WORKERS, env)
        for name in PROJECTIONS:
            pools[name] = await asyncpg.create_pool(
                f"{env['CRM_PG_DSN_BASE']}/crm_{name}", min_size=1, max_size=2
            )
        await wait_caught_up(pools, env["CRM_KAFKA_BOOTSTRAP"], time.monotonic())
        yield pools
    finally:
        for pool in pools.values():
            await pool.close()
        for worker in WORKERS:
            launcher.stop(worker, env)


def rss_mib(process: Process, env: dict[str, str]) -> float:
    pid = launcher.running_pid(process, env)
    if pid is None:
        return 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=2_000, help="events/s in the freshness phase")
    parser.add_argument("--seconds", type=int, default=20, help="length of the freshness phase")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--warm-up",
        type=int,
        default=20_000,
        help="events published before measuring (0: measure from a cold start)",
    )


async def run(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Every phase; the figures as a JSON-ready dict."""
    bootstrap, dsn_base = env["CRM_KAFKA_BOOTSTRAP"], env["CRM_PG_DSN_BASE"]
    async with workers_running(env) as pools:
        warmed = await warm_up(args, pools, env)
        load = await throughput(args, pools, env)
        memory = {w.name: rss_mib(w, env) for w in WORKERS}
        fresh, fresh_cpu = await freshness(args, pools, env)
    solo: dict[str, dict[str, float]] = {}
    for name in PROJECTIONS:
        say(f"phase 3: {name} worker alone, from offset 0")
        records, seconds = await alone(name, env, dsn_base, bootstrap)
        solo[name] = {"records": records, "seconds": seconds}
    minimal = await baseline(bootstrap, dsn_base, int(load["events"]))
    for figures in solo.values():
        if figures["records"]:
            figures["rate"] = figures["records"] / figures["seconds"]
            figures["ratio_to_minimal"] = figures["rate"] / minimal
    return {
        "warm_up": {"events": args.warm_up, "seconds": warmed},
        "end_to_end": load,
        "minimal_pipeline_rate": minimal,
        "alone": solo,
        "freshness_ms": {
            "rate": args.rate,
            "seconds": args.seconds,
            "cpu_seconds": fresh_cpu,
            **{
                name: {"p50": p50, "p99": p99, "events": n} for name, (p50, p99, n) in fresh.items()
            },
        },
        "worker_rss_mib": memory,
    }


def show(report: dict[str, Any]) -> None:
    load, minimal, fresh = (
        report["end_to_end"],
        report["minimal_pipeline_rate"],
        report["freshness_ms"],
    )
    warm = report["warm_up"]
    print(f"warm-up: {warm['events']:,} events and the first models, {warm['seconds']:.1f} s")
    print(
        f"end to end, four projections: {load['events']:,} events of ~{load['bytes']:.0f} bytes "
        f"in {load['seconds']:.1f} s = {load['rate']:,.0f} events/s "
        f"(publishing alone: {load['publish_rate']:,.0f}/s)"
    )
    print("  " + per_event_line(load["cpu_seconds"], load["events"]))
    print(f"minimal pipeline (aiokafka getmany + json + COPY): {minimal:,.0f} events/s")
    print("each worker alone on its topics, from offset 0:")
    for name, figures in report["alone"].items():
        if "rate" not in figures:
            print(f"  {name:15} all its records came in one batch: too few to time")
            continue
        print(
            f"  {name:15} {figures['records']:8,} records in {figures['seconds']:5.1f} s "
            f"= {figures['rate']:8,.0f}/s -> worker/minimal = {figures['ratio_to_minimal']:.2f}"
        )
    print(
        f"freshness at {fresh['rate']:,} events/s for {fresh['seconds']} s "
        "(commit time - event time):"
    )
    for name in PROJECTIONS:
        row = fresh[name]
        print(
            f"  {name:15} p50 {row['p50']:7.1f} ms   p99 {row['p99']:7.1f} ms   "
            f"({row['events']:,} events)"
        )
    print("  " + per_event_line(fresh["cpu_seconds"], int(fresh["rate"] * fresh["seconds"])))
    print(
        "worker memory after phase 1 (RSS): "
        + ", ".join(f"{k} {v:.0f} MiB" for k, v in report["worker_rss_mib"].items())
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write the figures there as JSON")
    args = parser.parse_args()
    report = await run(args, {**os.environ, "CRM_LOG_LEVEL": "WARNING"})
    print()
    show(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
