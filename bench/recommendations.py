"""The served recommendations: a customer's top 10 at a fixed request rate, straight from the
recommendation service and through the gateway, and how soon a purchase changes similar items.

    ./crm bench-recommendations [--rate 1000] [--seconds 15] [--sample N] [--data PATH]
                                [--target service|gateway ...] [--top-10-only]

Starts the recommendation worker, its jobs process, its API and the gateway on the bench's own
broker, database and ports, publishes the UCI Online Retail orders and refunds (`--sample N`: the
first N customers), waits until the worker holds them and a model version trained on all of them
is swapped in with every customer's picks, then:

- top 10: wrk (C, one thread, `--connections` keep-alive connections; bench/fixed_rate.lua)
  sends `--rate` requests/s on a fixed schedule for `--seconds`, spread over the customers who
  bought, first to the service, then to the gateway (`--target` picks one). A request due while
  every connection is busy starts late and is counted so (wrk times a request from when it is
  sent). Prints the achieved rate, p50/p99/max, errors, the load average and the CPU each process
  spent per request (from /proc; less noisy than latency on a shared machine), wrk's included;
- freshness: once the neighbour job has computed the whole catalogue (no product marked) and
  the picks job every customer's picks,
  `--purchases` times, a new customer buys a product that others bought, and the product's
  similar items are polled every 20 ms until they change: from publishing to the changed
  answer (median and p95), with the neighbour job's runs meanwhile and the CPU per run of the
  jobs process and the worker (from /proc; they do little else while one purchase at a time
  arrives).
  `--freshness-only` skips the training and the top 10, `--top-10-only` this.

Targets (issue 9, "Served fast"): top-10 p99 <= 5 ms at 1,000 requests/s; a purchase changes the
similar-item results within 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import recommendation_swap
from bench.pipeline import encoded, publish, say, wait_caught_up
from bench.processes import cpu_seconds
from bench.reads import (
    Paced,
    bench_env,
    cpu_line,
    create_key,
    measured_processes,
    paced_load,
    recommendations_computed,
)
from crm_shared.contracts.sdk import EventPublisher
from crm_shared.ops import launcher
from crm_shared.ops.demo import retail
from crm_shared.ops.demo.load import DATA_ENV, add_data_argument
from recommendation_service.evaluation import ORDER_PLACED, ORDER_REFUNDED

PROCESSES = ("recommendation-worker", "recommendation-jobs", "recommendation-api", "gateway-api")
TOP_10 = {
    "service": "/customers/{id}/recommendations?limit=10",
    "gateway": "/v1/customers/{id}/recommendations?limit=10",
}
POLL_SECONDS = 0.02
GIVE_UP_SECONDS = 120
"""A purchase whose change takes longer is counted at this (a machine that busy says enough)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser)
    parser.add_argument("--sample", type=int, help="only the first N customers of the file")
    parser.add_argument("--rate", type=float, default=1000, help="requests/s (1000)")
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds a target")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds a target")
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="wrk's keep-alive connections (64): a request due while all are busy starts late",
    )
    parser.add_argument(
        "--target",
        dest="targets",
        action="append",
        choices=list(TOP_10),
        help="top 10 from this target only (repeatable; default: the service, then the gateway)",
    )
    parser.add_argument("--purchases", type=int, default=20, help="freshness measurements")
    parser.add_argument(
        "--bestsellers", type=int, default=3, help="freshness of the N most bought products"
    )
    parser.add_argument(
        "--freshness-only",
        action="store_true",
        help="measure only how soon a purchase changes similar items (no training, no top 10)",
    )
    parser.add_argument(
        "--top-10-only", action="store_true", help="measure only the top 10 (no freshness)"
    )
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--swap",
        action="store_true",
        help="only time model swaps on a scratch database (bench/recommendation_swap.py)",
    )
    parser.add_argument(
        "--refused-every",
        type=int,
        default=0,
        help="with --swap: every K-th customer revokes consent to personalisation",
    )


async def top_10(
    args: argparse.Namespace,
    env: Mapping[str, str],
    customers: Sequence[str],
    key: str,
) -> dict[str, Paced]:
    """Each target at the fixed rate: latencies, and CPU ms per request of every process."""
    bases = {
        "service": f"http://127.0.0.1:{launcher.BY_NAME['recommendation-api'].port(env)}",
        "gateway": f"http://127.0.0.1:{launcher.BY_NAME['gateway-api'].port(env)}",
    }
    tokens = {"service": env["CRM_SERVICE_TOKEN"], "gateway": key}
    measured = measured_processes(env)
    figures: dict[str, Paced] = {}
    with tempfile.TemporaryDirectory() as folder:
        ids_file = Path(folder) / "customers.txt"
        ids_file.write_text("\n".join(customers) + "\n")
        for target in args.targets or TOP_10:
            url, template = bases[target], TOP_10[target]
            say(
                f"top 10 from the {target}: {args.warmup:g} s warm-up at {args.rate:g}/s, "
                f"then {args.seconds:g} s measured"
            )
            figures[target] = await paced_load(
                url,
                tokens[target],
                ids_file,
                template,
                rate=args.rate,
                connections=args.connections,
                seconds=args.seconds,
                warmup=args.warmup,
                measured=measured,
            )
            say(f"{target}: {figures[target].line()}")
            say(f"{target}: {cpu_line(figures[target].cpu_ms_per_request)}")
    return figures


async def neighbour_job_runs(env: Mapping[str, str]) -> tuple[float, float]:
    """(runs that found marks, their seconds in all) from the jobs process's metrics."""
    url = f"http://127.0.0.1:{launcher.BY_NAME['recommendation-jobs'].port(env)}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    found = dict(
        line.rsplit(" ", 1)
        for line in text.splitlines()
        if line.startswith("crm_recommendation_neighbour_job_seconds_")
    )
    return (
        float(found["crm_recommendation_neighbour_job_seconds_count"]),
        float(found["crm_recommendation_neighbour_job_seconds_sum"]),
    )


async def freshness(
    env: Mapping[str, str], pool: asyncpg.Pool, products: Sequence[str], name: str
) -> dict[str, Any]:
    """Publish-to-change seconds of one purchase of each product in turn (median, p95, max),
    and the neighbour job's runs meanwhile: how many, their wall seconds, and the CPU seconds
    per run of the jobs process, the worker and PostgreSQL (all backends: the polling reads'
    too)."""
    postgres = measured_processes(env)["postgres"]
    measured = {
        name: launcher.running_pid(launcher.BY_NAME[f"recommendation-{name}"], env) or 0
        for name in ("jobs", "worker")
    }
    measured["postgres"] = postgres

    def spent() -> dict[str, float]:
        """CPU seconds so far; PostgreSQL's with its backends that have exited (reaped)."""
        cpu = cpu_seconds(measured)
        cpu["postgres"] += reaped_children_cpu(postgres)
        return cpu

    runs_before, job_seconds_before = await neighbour_job_runs(env)
    cpu_before = spent()
    changes = await similar_changes(env, products, name)
    runs_after, job_seconds_after = await neighbour_job_runs(env)
    cpu_after = spent()
    runs = max(runs_after - runs_before, 1.0)
    ordered = sorted(changes)
    return {
        "purchases": len(changes),
        "p50": statistics.median(changes),
        "p95": ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.95) - 1)],
        "max": ordered[-1],
        "job_runs": int(runs_after - runs_before),
        "job_seconds_per_run": (job_seconds_after - job_seconds_before) / runs,
        "cpu_seconds_per_run": {
            process: (cpu_after[process] - cpu_before[process]) / runs for process in measured
        },
    }


def reaped_children_cpu(pid: int) -> float:
    """CPU seconds of a process's children that have exited and been waited for (cutime +
    cstime): PostgreSQL's backends that closed during a measurement."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


async def products_to_buy(
    pool: asyncpg.Pool, purchases: int, bestsellers: int, seed: int
) -> dict[str, list[str]]:
    """A sample of ordinary products (2 to 50 buyers, with similar items), and the bestsellers
    (the most buyers: thousands of products bought with each)."""
    rows = await pool.fetch(
        "SELECT product_id FROM products WHERE goods AND buyers BETWEEN 2 AND 50"
        " AND EXISTS (SELECT 1 FROM similar_products s WHERE s.product_id = products.product_id)"
        " ORDER BY product_id"
    )
    top = await pool.fetch(
        "SELECT product_id FROM products WHERE goods ORDER BY buyers DESC, product_id LIMIT $1",
        bestsellers,
    )
    return {
        "ordinary": random.Random(seed).sample([row[0] for row in rows], purchases),
        "bestseller": [row[0] for row in top],
    }


async def similar_changes(
    env: Mapping[str, str], products: Sequence[str], name: str
) -> list[float]:
    """Seconds from publishing a purchase of each product (by a new customer) to the product's
    similar items changing."""
    service = f"http://127.0.0.1:{launcher.BY_NAME['recommendation-api'].port(env)}"
    headers = {"Authorization": f"Bearer {env['CRM_SERVICE_TOKEN']}"}
    seconds: list[float] = []
    async with aiohttp.ClientSession() as session:

        async def similar(product: str) -> bytes:
            url = f"{service}/products/{product}/similar?limit=10"
            async with session.get(url, headers=headers) as response:
                return await response.read()

        with EventPublisher(env["CRM_KAFKA_BOOTSTRAP"], source="bench") as publisher:
            for n, product in enumerate(products):
                before = await similar(product)
                customer = f"bench-fresh-{name}-{n}"
                started = time.perf_counter()
                publisher.publish(
                    ORDER_PLACED,
                    customer,
                    {
                        "order_id": f"{customer}-1",
                        "lines": [{"product_id": product, "quantity": 1, "unit_price": "1.00"}],
                    },
                    time=datetime.now(UTC),
                )
                publisher.flush()
                while await similar(product) == before:
                    if time.perf_counter() - started > GIVE_UP_SECONDS:
                        say(f"{product}'s similar items did not change in {GIVE_UP_SECONDS} s")
                        break
                    await asyncio.sleep(POLL_SECONDS)
                seconds.append(time.perf_counter() - started)
                say(
                    f"{name} purchase {n + 1}: {product}'s similar items changed "
                    f"in {seconds[-1]:.2f} s"
                )
    return seconds


async def trained_on_everything(pool: asyncpg.Pool) -> dict[str, Any]:
    """Ask for a version now (the trainer made one from what it had when the first orders came)
    and wait until it is served and every customer's picks are current."""
    request = await pool.fetchval(
        "INSERT INTO retrain_requests DEFAULT VALUES RETURNING request_id"
    )
    while True:
        version = await pool.fetchval(
            "SELECT version FROM retrain_requests WHERE request_id = $1", request
        )
        marked = await pool.fetchval("SELECT count(*) FROM dirty_customers")
        if version is not None and marked == 0:
            row = await pool.fetchrow(
                "SELECT version, metrics FROM model_versions WHERE version = $1", version
            )
            return {"version": row["version"], "metrics": json.loads(row["metrics"])}
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    if args.data is None or not args.data.is_file():
        raise SystemExit(f"data file not found: {args.data} (use --data or ${DATA_ENV})")
    bootstrap, dsn_base = env["CRM_KAFKA_BOOTSTRAP"], env["CRM_PG_DSN_BASE"]
    processes = [launcher.BY_NAME[name] for name in PROCESSES]
    say("reading the UCI Online Retail file")
    data = retail.load_retail(args.data)
    if args.sample:
        data = retail.limit_customers(data, args.sample)
    events = [e for e in data.events if e["type"] in (ORDER_PLACED, ORDER_REFUNDED)]
    customers = sorted({str(e["subject"]) for e in events if e["type"] == ORDER_PLACED})
    say(f"starting {', '.join(PROCESSES)}")
    for process in processes:
        launcher.start(process, env)
    try:
        launcher.wait_healthy(processes, env)
        say(f"publishing {len(events):,} orders and refunds of {len(customers):,} customers")
        started = time.monotonic()
        await publish(bootstrap, encoded(events), len(events), started)
        pool = await asyncpg.create_pool(f"{dsn_base}/crm_recommendation", min_size=1, max_size=2)
        try:
            await wait_caught_up({"recommendation": pool}, bootstrap, started)
            report: dict[str, Any] = {"customers": len(customers)}
            if not args.freshness_only:
                say("training a version on everything and computing every customer's picks")
                model = await trained_on_everything(pool)
                say(f"version {model['version']} served: {model['metrics']}")
                report["customers_with_picks"] = await pool.fetchval(
                    "SELECT count(*) FROM customer_picks"
                )
                report["model"] = model
                report["rate"], report["seconds"] = args.rate, args.seconds
                key = await create_key(env, "recommendations:read")
                report["top_10"] = await top_10(args, env, customers, key)
            if args.top_10_only:
                return report
            say("waiting for the neighbour and picks jobs to catch up with the load")
            report["catalogue_wait_seconds"] = await recommendations_computed(pool)
            report["similar_products"] = await pool.fetchval(
                "SELECT count(*) FROM similar_products"
            )
            chosen = await products_to_buy(pool, args.purchases, args.bestsellers, args.seed)
            report["similar_change_seconds"] = {}
            for kind, bought in chosen.items():
                say(f"freshness: {len(bought)} purchases of {kind} products")
                report["similar_change_seconds"][kind] = await freshness(env, pool, bought, kind)
        finally:
            await pool.close()
    finally:
        for process in reversed(processes):
            launcher.stop(process, env)
    return report


def show(report: Mapping[str, Any]) -> None:
    print(f"recommendations: {report['customers']:,} customers")
    if "model" in report:
        metrics = report["model"]["metrics"]
        print(
            f"  {report['customers_with_picks']:,} with precomputed picks, model version "
            f"{report['model']['version']} trained in {metrics['training_seconds']:.1f} s on "
            f"{metrics['purchases']:,} kept purchases; top 10 at {report['rate']:,.0f} "
            f"requests/s for {report['seconds']:g} s, wrk on a fixed schedule:"
        )
        for target, figures in report["top_10"].items():
            print(f"  {target:8} {figures.line()}")
            print(
                f"  {'':8} {cpu_line(figures.cpu_ms_per_request)}; wrk "
                f"{figures.wrk_cpu_ms_per_request:.2f}"
            )
    if "similar_change_seconds" not in report:
        return
    print(
        f"  {report['similar_products']:,} similar-product rows; "
        "a purchase changes the similar items"
    )
    for kind, change in report["similar_change_seconds"].items():
        print(
            f"  of {kind} products in {change['p50']:.2f} s (median of {change['purchases']}), "
            f"p95 {change['p95']:.2f} s, at most {change['max']:.2f} s; neighbour job meanwhile: "
            f"{change['job_runs']} runs, {change['job_seconds_per_run']:.3f} s each, CPU s a run: "
            + ", ".join(f"{p} {s:.3f}" for p, s in change["cpu_seconds_per_run"].items())
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args()
    if args.swap:
        report = await recommendation_swap.run(
            args, os.environ["CRM_PG_DSN_BASE"], os.environ["CRM_PG_DIR"]
        )
        print(json.dumps(report))
        return
    report = await run(args, bench_env(os.environ))
    print()
    show(report)


if __name__ == "__main__":
    asyncio.run(main())
