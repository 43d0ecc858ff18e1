"""The read path through the gateway: the customer 360 and the timeline under concurrent load.

    ./crm bench-reads [--events 40000] [--seconds 15] [--concurrency 20]

Starts every process of the platform on the bench's own broker and database, publishes a
workload, waits until the projections hold it, then asks the gateway for random customers'
360s and timeline pages from `--concurrency` clients for `--seconds` each, with an API key whose
rate limit is out of the way. Prints requests/s and latency percentiles, beside the gateway's
health check as the floor of what one request costs. Targets (issue "Speed"): the 360 at
500 requests/s with p99 <= 50 ms, the timeline at 1,000 requests/s with p99 <= 25 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import sys
import time
from collections.abc import Callable

import asyncpg
import httpx

from bench.pipeline import encoded, publish, say, wait_caught_up
from crm_shared.ops import launcher, platform
from crm_shared.ops.demo.workload import Workload

PROJECTIONS = tuple(service.name for service in platform.projections())
ORDER = "crm.order.placed.v1"


async def hammer(
    client: httpx.AsyncClient, path_of: Callable[[], str], seconds: float, concurrency: int
) -> tuple[float, list[float], int]:
    """Requests/s, every latency (ms) and the count of answers other than 200."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    failures = 0

    async def one_client() -> None:
        nonlocal failures
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = await client.get(path_of())
            latencies.append((time.perf_counter() - started) * 1000)
            failures += response.status_code != 200

    started = time.monotonic()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return len(latencies) / (time.monotonic() - started), latencies, failures


def percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=1000)[int(fraction * 1000) - 1] if values else 0.0


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    env = {
        **os.environ,
        "CRM_LOG_LEVEL": "WARNING",
        "CRM_SERVICE_TOKEN": secrets.token_urlsafe(32),
        "CRM_GATEWAY_RATE_PER_SECOND": "1000000",
        "CRM_GATEWAY_RATE_BURST": "1000000",
    }
    bootstrap, dsn_base = env["CRM_KAFKA_BOOTSTRAP"], env["CRM_PG_DSN_BASE"]
    processes = [p for p in launcher.PROCESSES if p.name != "clock"]
    say(f"starting {len(processes)} processes")
    for process in processes:
        launcher.start(process, env)
    try:
        launcher.wait_healthy(processes, env)
        workload = Workload(seed=args.seed, prefix="r")
        events = list(workload.events(args.events))
        # Customers every part of the answer knows: they bought (profile, timeline) and so on.
        customers = sorted({str(e["subject"]) for e in events if e["type"] == ORDER})
        say(f"publishing {len(events):,} events; {len(customers):,} customers bought")
        started = time.monotonic()
        await publish(bootstrap, encoded(events), len(events), started)
        pools = {
            name: await asyncpg.create_pool(f"{dsn_base}/crm_{name}", min_size=1, max_size=2)
            for name in PROJECTIONS
        }
        await wait_caught_up(pools, bootstrap, started)
        for pool in pools.values():
            await pool.close()
        result = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway_service.keys",
            "create",
            "--name",
            "bench",
            "--scopes",
            "customers:read",
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        key = (await result.communicate())[0].decode().strip()
        gateway = f"http://127.0.0.1:{launcher.BY_NAME['gateway-api'].port(env)}"
        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(
            base_url=gateway,
            headers={"Authorization": f"Bearer {key}"},
            limits=limits,
            timeout=30,
        ) as client:
            targets: dict[str, Callable[[], str]] = {
                "health check": lambda: "/healthz",
                "customer 360": lambda: f"/v1/customers/{random.choice(customers)}",
                "timeline page": lambda: (
                    f"/v1/customers/{random.choice(customers)}/timeline?limit=20"
                ),
            }
            rows = []
            for name, path_of in targets.items():
                say(f"{name}: {args.concurrency} clients for {args.seconds:g} s")
                rate, latencies, failures = await hammer(
                    client, path_of, args.seconds, args.concurrency
                )
                rows.append((name, rate, latencies, failures))
    finally:
        for process in reversed(processes):
            launcher.stop(process, env)
    print()
    print(
        f"gateway reads, {args.concurrency} concurrent clients (httpx, on the same 2 cores), "
        f"{len(customers):,} customers:"
    )
    for name, rate, latencies, failures in rows:
        print(
            f"  {name:14} {rate:8,.0f} requests/s   p50 {percentile(latencies, 0.5):6.1f} ms"
            f"   p99 {percentile(latencies, 0.99):6.1f} ms   ({failures} not 200)"
        )


if __name__ == "__main__":
    asyncio.run(main())
