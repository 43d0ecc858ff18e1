"""The timeline of one customer with 10,000 touchpoints: query latency, and the fold rate.

    ./crm bench-timeline [--touchpoints 10000] [--others 40000] [--requests 400]

Folds a customer with `--touchpoints` touchpoints of every kind (contacts of v1 and v2 on every
channel and department, feedback, orders, sessions, message outcomes, consents), among
`--others` touchpoints of other customers, through the interaction projection's batch path
(decode, claim, fold, commit: as bench/folds.py, without Kafka) into a scratch database, and
prints the fold rate (events/s and this process's CPU per event, PostgreSQL's share apart) and
the projection's share of the end-to-end target of 10,000 events/s (issue "Speed"). Then it asks
the interaction API (in process, through ASGI: FastAPI, the cursor and the SQL, no network) for
a first page, a filtered page, a page 9,000 entries deep by cursor, a page as of a past
instant and the late arrivals since an instant, `--requests` times each, and prints p50/p99
against the target: p99 under 20 ms, and the CPU a read costs (this process, which runs the
API and the client, plus the PostgreSQL backends, from /proc): less noisy than the latency on
a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from bench.folds import no_dead_letters
from bench.processes import CLOCK_TICKS, cpu_ticks
from bench.scratch import drop_database, fresh_pool
from crm_shared.contracts.events import build_event, encode_event
from crm_shared.contracts.topics import topic_for
from crm_shared.ops.demo.workload import Workload
from crm_shared.runtime.projector import BatchProjector, RawRecord
from interaction_service.api import create_app
from interaction_service.config import InteractionSettings
from interaction_service.events import TOPICS
from interaction_service.worker import PROJECTION

TARGET_P99_MS = 20.0
END_TO_END_EVENTS_PER_SECOND = 10_000
CUSTOMER = "bench-timeline-10k"
CHANNELS = ("phone", "email", "chat", "meeting", "mail", "store", "web", "app", "sms")
DEPARTMENTS = ("support", "sales", "billing", "after-sales", "key-accounts", "legal")
OUTCOMES = ("resolved", "escalated", "transferred", "refused", "no_answer", "sale")
START = datetime(2023, 1, 1, tzinfo=UTC)


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def touchpoint(n: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """The n-th touchpoint of a customer: a mix of every kind the timeline holds."""
    draw = n % 10
    if draw < 4:
        return "crm.contact.logged.v2", {
            "channel": rng.choice(CHANNELS),
            "direction": rng.choice(("inbound", "outbound")),
            "department": rng.choice(DEPARTMENTS),
            "employee_id": f"E{rng.randrange(40)}",
            "topic": rng.choice(("delivery", "invoice", "renewal", "return")),
            "outcome": rng.choice(OUTCOMES),
        }
    if draw == 4:
        return "crm.contact.logged.v1", {
            "channel": "phone",
            "direction": "inbound",
            "department": "Customer Service",
            "topic": "late parcel",
            "outcome": "Refused",
        }
    if draw == 5:
        return "crm.feedback.given.v1", {"score": rng.randint(1, 5), "kind": "comment"}
    if draw == 6:
        line = {"product_id": f"P{rng.randrange(500)}", "quantity": 1, "unit_price": "12.50"}
        return "crm.order.placed.v1", {"order_id": f"O{n}", "lines": [line]}
    if draw == 7:
        return "crm.session.recorded.v1", {"session_id": f"S{n}", "pages_viewed": 5}
    if draw == 8:
        return "crm.message.outcome.recorded.v1", {
            "message_id": f"M{n}",
            "campaign_id": "spring",
            "channel": "email",
            "purpose": "marketing",
            "outcome": rng.choice(("sent", "delivered", "opened", "clicked", "bounced")),
        }
    return "crm.consent.granted.v1", {"purpose": "marketing"}


def records(touchpoints: int, others: int) -> Iterator[RawRecord]:
    """The big customer's touchpoints among other customers', each recorded by the log a
    little after it happened (2 % of them days late), in the order the log recorded them."""
    rng = random.Random(8)
    big = [(CUSTOMER, n) for n in range(touchpoints)]
    small = [(f"bench-timeline-{n % max(1, others // 10)}", n) for n in range(others)]
    mixed = big + small
    rng.shuffle(mixed)
    step = timedelta(days=365) / max(1, touchpoints)
    for offset, (customer, n) in enumerate(mixed):
        event_type, data = touchpoint(n, rng)
        time_ = START + n * step if customer == CUSTOMER else START + rng.random() * timedelta(365)
        delay = timedelta(days=rng.randint(1, 30)) if rng.random() < 0.02 else timedelta(seconds=30)
        document = build_event(
            event_type, customer, data, source="bench", time=time_, event_id=f"{customer}-{n}"
        )
        recorded = int((time_ + delay).timestamp() * 1000)
        yield RawRecord(
            topic_for(event_type),
            0,
            offset,
            customer.encode(),
            encode_event(document),
            (),
            recorded,
        )


def interaction_share() -> float:
    """The fraction of the workload's events that travel on the interaction service's topics."""
    names = {topic.name for topic in TOPICS}
    sample = list(Workload(seed=2, prefix="share").events(20_000))
    return sum(topic_for(str(e["type"])) in names for e in sample) / len(sample)


async def fold(
    dsn_base: str, scratch: str, batch: list[RawRecord], size: int
) -> tuple[float, float]:
    """Wall-clock seconds and this process's CPU seconds to fold the batch, `size` at a time."""
    pool = await fresh_pool(dsn_base, scratch, PROJECTION.migrations, 4)
    projector = BatchProjector(PROJECTION, pool, no_dead_letters)
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(batch), size):
        await projector.process(batch[start : start + size])
        if start // size % 10 == 0:
            say(f"folded {start + size:,} of {len(batch):,}")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # The steady state a timeline is read in: no autovacuum of the bulk load during the reads.
    await pool.execute("VACUUM ANALYZE timeline")
    await pool.close()
    return elapsed, cpu


async def timed(client: httpx.AsyncClient, params: dict[str, Any], requests: int) -> list[float]:
    """Milliseconds of each of `requests` reads of one page."""
    path = f"/customers/{CUSTOMER}/timeline"
    spent: list[float] = []
    for _ in range(requests):
        started = time.perf_counter()
        response = await client.get(path, params=params)
        spent.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return spent


async def backends(dsn: str) -> list[int]:
    """The PostgreSQL backends connected to the scratch database (the API's pool)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [row["pid"] for row in rows]


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of this process (the API and the client) and of the given backends."""
    return time.process_time() + sum(cpu_ticks(pid) for pid in pids) / CLOCK_TICKS


async def deep_cursor(client: httpx.AsyncClient, depth: int) -> str:
    """The cursor after the first `depth` entries, newest first."""
    params: dict[str, Any] = {"limit": 200}
    for _ in range(depth // 200):
        page = (await client.get(f"/customers/{CUSTOMER}/timeline", params=params)).json()
        params["cursor"] = page["next_cursor"]
    return str(params["cursor"])


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--touchpoints", type=int, default=10_000)
    parser.add_argument("--others", type=int, default=40_000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1_000)
    args = parser.parse_args()
    dsn_base = os.environ["CRM_PG_DSN_BASE"]
    scratch = "crm_interaction_timelinebench"
    say(f"building {args.touchpoints:,} touchpoints of one customer among {args.others:,} ...")
    batch = list(records(args.touchpoints, args.others))
    say("folding through the interaction projection's batch path ...")
    seconds, cpu = await fold(dsn_base, scratch, batch, args.batch)
    share = interaction_share()
    cpu_each = cpu / len(batch)
    needed = share * END_TO_END_EVENTS_PER_SECOND * cpu_each
    print(
        f"fold: {len(batch):,} events in {seconds:.1f} s = {len(batch) / seconds:,.0f} events/s, "
        f"{cpu_each * 1e6:.1f} µs of our CPU each\n"
        f"share: {share:.0%} of the workload's events reach the interaction service; at "
        f"{END_TO_END_EVENTS_PER_SECOND:,} events/s end to end its fold needs {needed:.2f} of a "
        f"core (our CPU) and {share * END_TO_END_EVENTS_PER_SECOND / (len(batch) / seconds):.2f} "
        "of this run's wall-clock rate"
    )
    settings = InteractionSettings(database_url=f"{dsn_base}/{scratch}")
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
    ):
        say("finding a cursor 9,000 entries deep ...")
        deep = await deep_cursor(client, min(9_000, args.touchpoints - 400))
        middle = (START + timedelta(days=182)).isoformat()
        lately = (START + timedelta(days=360)).isoformat()
        reads: dict[str, dict[str, Any]] = {
            "first page": {"limit": 50},
            "filtered page": {
                "limit": 50,
                "kind": "contact",
                "channel": "email",
                "department": "sales",
            },
            "deep cursor page": {"limit": 50, "cursor": deep},
            "as_of page": {"limit": 50, "as_of": middle},
            "late arrivals": {"limit": 50, "recorded_after": lately},
        }
        failed = False
        for name, params in reads.items():
            say(f"{args.requests} reads of the {name} ...")
            await timed(client, params, 20)  # warm the statement cache and the pool
            pids = await backends(settings.dsn)
            cpu_before = cpu_seconds(pids)
            spent = sorted(await timed(client, params, args.requests))
            cpu_each = (cpu_seconds(pids) - cpu_before) / args.requests
            p50 = statistics.median(spent)
            p99 = spent[min(len(spent) - 1, int(len(spent) * 0.99))]
            failed |= p99 > TARGET_P99_MS
            print(
                f"{name:17} p50 {p50:5.1f} ms  p99 {p99:5.1f} ms  "
                f"({'ok' if p99 <= TARGET_P99_MS else 'over'} the {TARGET_P99_MS:g} ms target), "
                f"CPU {cpu_each * 1000:4.1f} ms a read (API, client and PostgreSQL)"
            )
    await drop_database(dsn_base, scratch)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
