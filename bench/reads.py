"""The read path through the gateway: the customer 360 and the timeline under concurrent load.

    ./crm bench-reads [--events 40000] [--seconds 15] [--concurrency 20] [--only TARGET ...]

Starts every process of the platform on the bench's own broker, database and ports, publishes a
workload, waits until the projections hold it and their periodic jobs (the RFM scores, the
recommendation jobs) have caught up, as on a demo platform at rest, then drives the gateway with
wrk (C, one thread, `--concurrency` keep-alive connections; bench/reads.lua spreads the requests
over the customers who bought) for `--seconds` per target, with an API key and a rate limit
high enough to stay out of the way (the limiter still runs). Prints requests/s and latency
percentiles beside the gateway's health check (the floor of what one request costs), and the CPU
each process spent per request, read from /proc before and after: less noisy than requests/s on
a shared machine.
Targets (issue "Speed"): the 360 at 500 requests/s with p99 <= 50 ms, the timeline at
1,000 requests/s with p99 <= 25 ms. Each of the two is then also driven at exactly its target
rate on a fixed schedule (bench/fixed_rate.lua, `--paced-connections` connections), which is
what its p99 is about: the closed loop measures the tail of a queue at whatever rate saturates
the machine. The profile's own reads (purchases, RFM, segments) are measured in the closed loop,
and the profile's record (its part of the 360) on the profile's API itself
(`--only "profile record"`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.pipeline import encoded, publish, say, wait_caught_up
from bench.processes import cpu_seconds, infrastructure
from crm_shared.ops import launcher, platform
from crm_shared.ops.demo.workload import Workload

PROJECTIONS = tuple(service.name for service in platform.projections())
ORDER = "crm.order.placed.v1"
LUA_SCRIPT = Path(__file__).with_name("reads.lua")
PACING_SCRIPT = Path(__file__).with_name("fixed_rate.lua")
PORT_SHIFT = 15_000 + 100 * int(os.environ.get("CRM_TEST_SLOT", "0"))
"""The bench's processes listen on their default port + this (+100 a CRM_TEST_SLOT, so that
checkouts bench side by side): clear of a running demo (the defaults), of the test slots
(+10,000 + 100 a slot) and of Linux's ephemeral ports."""
TARGETS = {
    "health check": "/healthz",
    "customer 360": "/v1/customers/{id}",
    "timeline page": "/v1/customers/{id}/timeline?limit=20",
    "purchases": "/v1/customers/{id}/purchases",
    "RFM": "/v1/customers/{id}/rfm",
    "segments": "/v1/customers/{id}/segments",
}
"""The 360 and the timeline are the speed issue's targets; purchases, RFM and segments are the
profile API's own reads (the profile issue asks for their p99 at load)."""
RATE_TARGETS = {"customer 360": (500, 50.0), "timeline page": (1_000, 25.0)}
"""The speed issue's read targets: at least this many requests/s, p99 at most this many ms.
A closed loop of 20 connections says how many requests/s the platform serves at most; its p99
is a queue's (Little's law: 20 connections at 1,500 requests/s wait 13 ms on average), so each
target is also driven at its own rate on a fixed schedule, where the p99 is the latency at the
rate the target names."""
SERVICE_TARGETS = {"profile record": ("profile-api", "/customers/{id}")}
"""Reads of one service's API itself, with the service token, past the gateway: what that
service and PostgreSQL spend on their part of the 360 (the profile's record and purchases)."""


@dataclass(frozen=True)
class LoadResult:
    """What wrk measured for one target (bench/reads.lua's last line)."""

    requests: int
    seconds: float
    not_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Paced:
    """One target driven at a fixed rate: wrk's figures, the slots that started late, the load
    average around the run and the CPU ms each process spent per request."""

    rate: float
    """The requests/s asked for."""
    result: LoadResult
    late: int
    """Requests that fell due while every connection was busy and started late: wrk times a
    request from when it is sent, so its percentiles leave out how late they started."""
    late_max_ms: float
    load_average: tuple[float, float]
    cpu_ms_per_request: dict[str, float]
    wrk_cpu_ms_per_request: float

    def line(self) -> str:
        r = self.result
        return (
            f"{r.rate:7,.0f} requests/s   p50 {r.p50_ms:6.2f} ms   p99 {r.p99_ms:6.2f} ms   "
            f"max {r.max_ms:7.1f} ms   ({r.not_2xx} not 2xx, {r.socket_errors} socket errors; "
            f"{self.late} started late, at most {self.late_max_ms:.1f} ms; load average "
            f"{self.load_average[0]:.1f} to {self.load_average[1]:.1f})"
        )

    def figures(self) -> dict[str, Any]:
        """JSON-ready: a closed-loop target's keys and the pacing's."""
        return {
            "rate_asked": self.rate,
            **load_figures(self.result, self.cpu_ms_per_request, self.wrk_cpu_ms_per_request),
            "max_ms": self.result.max_ms,
            "late": self.late,
            "late_max_ms": self.late_max_ms,
        }


def parse_wrk(output: str) -> LoadResult:
    """The figures from the JSON line bench/reads.lua prints when wrk is done."""
    line = next(text for text in reversed(output.splitlines()) if text.startswith("{"))
    figures = json.loads(line)
    return LoadResult(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        not_2xx=figures["not_2xx"],
        socket_errors=figures["socket_errors"],
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
    )


async def run_wrk(
    url: str,
    key: str,
    ids_file: Path,
    template: str,
    seconds: float,
    concurrency: int,
    script: Path = LUA_SCRIPT,
    *script_args: str,
) -> str:
    """wrk's output: one thread, `concurrency` keep-alive connections, `script` given the ids
    file, the path template and `script_args`."""
    wrk = await asyncio.create_subprocess_exec(
        "wrk",
        "--threads",
        "1",
        "--connections",
        str(concurrency),
        "--duration",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "--header",
        f"Authorization: Bearer {key}",
        "--script",
        str(script),
        url,
        "--",
        str(ids_file),
        template,
        *script_args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await wrk.communicate()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {err.decode()}")
    return out.decode()


def parse_pacing(output: str) -> tuple[int, float]:
    """(slots started late, the latest by ms) from bench/fixed_rate.lua's pacing line."""
    line = next(text for text in output.splitlines() if text.startswith('{"late"'))
    figures = json.loads(line)
    return figures["late"], figures["late_max_us"] / 1000


async def cpu_spent(
    measured: Mapping[str, int], load: Awaitable[str]
) -> tuple[str, dict[str, float], float]:
    """wrk's output of `load`, the CPU seconds each measured process spent meanwhile, and
    wrk's own."""
    before, wrk_before = cpu_seconds(measured), own_children_cpu()
    output = await load
    after = cpu_seconds(measured)
    spent = {name: after[name] - before[name] for name in measured}
    return output, spent, own_children_cpu() - wrk_before


async def paced_load(
    url: str,
    token: str,
    ids_file: Path,
    template: str,
    *,
    rate: float,
    connections: int,
    seconds: float,
    warmup: float,
    measured: Mapping[str, int],
) -> Paced:
    """`rate` requests/s on a fixed schedule over `connections` connections: `warmup` seconds
    unmeasured, then `seconds` measured."""
    pacing = (PACING_SCRIPT, f"{rate:g}")
    await run_wrk(url, token, ids_file, template, warmup, connections, *pacing)
    load_before = os.getloadavg()[0]
    output, spent, wrk_spent = await cpu_spent(
        measured, run_wrk(url, token, ids_file, template, seconds, connections, *pacing)
    )
    result = parse_wrk(output)
    late, late_max_ms = parse_pacing(output)
    cpu_ms_per_request, wrk_cpu_ms_per_request = per_request(result, spent, wrk_spent)
    return Paced(
        rate=rate,
        result=result,
        late=late,
        late_max_ms=late_max_ms,
        load_average=(load_before, os.getloadavg()[0]),
        cpu_ms_per_request=cpu_ms_per_request,
        wrk_cpu_ms_per_request=wrk_cpu_ms_per_request,
    )


def api_url(process: str, env: Mapping[str, str]) -> str:
    return f"http://127.0.0.1:{launcher.BY_NAME[process].port(env)}"


def measured_processes(env: Mapping[str, str]) -> dict[str, int]:
    """The APIs and PostgreSQL: what a read costs CPU in."""
    roots = {
        process.name: pid
        for process in launcher.PROCESSES
        if process.component == "api" and (pid := launcher.running_pid(process, env))
    }
    roots["postgres"] = infrastructure(env)["postgres"]
    return roots


def own_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_line(per_request: Mapping[str, float]) -> str:
    """CPU ms per request of each process that spent any, and in all."""
    spent = {name: ms for name, ms in per_request.items() if ms > 0}
    parts = "  ".join(f"{name.removesuffix('-api')} {ms:.2f}" for name, ms in spent.items())
    return f"CPU ms/request: {parts}  (all {sum(spent.values()):.2f})"


def bench_env(base: Mapping[str, str]) -> dict[str, str]:
    """The processes' environment: quiet logs, a service token, a limit out of the way, ports."""
    ports = {p.port_env: str(p.default_port + PORT_SHIFT) for p in launcher.PROCESSES}
    services = {
        f"CRM_GATEWAY_{p.service.upper()}_URL": f"http://127.0.0.1:{ports[p.port_env]}"
        for p in launcher.PROCESSES
        if p.component == "api" and p.service != "gateway"
    }
    return {
        **base,
        **ports,
        **services,
        "CRM_LOG_LEVEL": "WARNING",
        "CRM_SERVICE_TOKEN": secrets.token_urlsafe(32),
        "CRM_LINK_SECRET": secrets.token_hex(32),
        "CRM_GATEWAY_RATE_PER_SECOND": "1000000",
        "CRM_GATEWAY_RATE_BURST": "1000000",
    }


async def create_key(env: Mapping[str, str], scopes: str = "customers:read") -> str:
    result = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway_service.keys",
        "create",
        "--name",
        "bench",
        "--scopes",
        scopes,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
    )
    return (await result.communicate())[0].decode().strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds per target")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument(
        "--paced-connections",
        type=int,
        default=64,
        help="wrk's connections for a target at its fixed rate (64): a request due while all "
        "are busy starts late, and is counted so",
    )
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--only",
        action="append",
        choices=[*TARGETS, *SERVICE_TARGETS],
        metavar="TARGET",
        help="measure only this target (repeatable; default: every one)",
    )


async def run(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """Every process started, a workload published and folded, each target driven by wrk; the
    figures as a JSON-ready dict. `env` comes from bench_env."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (deploy/local/infra.sh installs it)")
    bootstrap, dsn_base = env["CRM_KAFKA_BOOTSTRAP"], env["CRM_PG_DSN_BASE"]
    processes = [p for p in launcher.PROCESSES if p.name != "clock"]
    say(f"starting {len(processes)} processes")
    for process in processes:
        launcher.start(process, env)
    targets: dict[str, dict[str, Any]] = {}
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
        if not args.only or "RFM" in args.only:
            await wait_scored(pools["profile"], customers)
        say("waiting for the recommendation jobs to catch up with the load")
        await recommendations_computed(pools["recommendation"])
        for pool in pools.values():
            await pool.close()
        key = await create_key(env, "customers:read,segments:read")
        gateway = api_url("gateway-api", env)
        endpoints = {name: (gateway, key, path) for name, path in TARGETS.items()} | {
            name: (api_url(process, env), env["CRM_SERVICE_TOKEN"], path)
            for name, (process, path) in SERVICE_TARGETS.items()
        }
        measured = measured_processes(env)
        with tempfile.TemporaryDirectory() as folder:
            ids_file = Path(folder) / "customers.txt"
            ids_file.write_text("\n".join(customers) + "\n")
            for name in args.only or endpoints:
                url, token, template = endpoints[name]
                say(f"{name}: wrk, {args.concurrency} connections, {args.warmup:g} s warm-up")
                await run_wrk(url, token, ids_file, template, args.warmup, args.concurrency)
                say(f"{name}: measuring for {args.seconds:g} s")
                output, spent, wrk_spent = await cpu_spent(
                    measured,
                    run_wrk(url, token, ids_file, template, args.seconds, args.concurrency),
                )
                result = parse_wrk(output)
                targets[name] = target_figures(result, spent, wrk_spent)
                say(f"{name}: {result.rate:,.0f} requests/s, p99 {result.p99_ms:.1f} ms")
                if name in RATE_TARGETS:
                    rate = RATE_TARGETS[name][0]
                    say(f"{name}: {rate:,}/s on a fixed schedule, {args.warmup:g} s warm-up")
                    at_rate = await paced_load(
                        url,
                        token,
                        ids_file,
                        template,
                        rate=rate,
                        connections=args.paced_connections,
                        seconds=args.seconds,
                        warmup=args.warmup,
                        measured=measured,
                    )
                    targets[name]["at_target_rate"] = at_rate.figures()
                    say(f"{name}: {at_rate.line()}")
    finally:
        for process in reversed(processes):
            launcher.stop(process, env)
    return {
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "customers": len(customers),
        "targets": targets,
    }


CATCH_UP_WAIT_SECONDS = 300.0
"""How long a periodic job (the RFM refresh, the recommendation jobs) may trail the fold after
the load before the benchmark gives up."""


async def wait_scored(profile: asyncpg.Pool, customers: Sequence[str]) -> None:
    """Wait until the profile's periodic RFM refresh has scored every customer who bought: it
    runs at most a tenth of the time, so it may trail the fold by a minute after a bulk load,
    and the RFM target would measure "no score yet" answers."""
    started = time.monotonic()
    scoring = (
        "SELECT count(DISTINCT customer_id) FROM rfm_scores WHERE customer_id = ANY($1::text[])"
    )
    while (scored := await profile.fetchval(scoring, list(customers))) < len(customers):
        if time.monotonic() - started > CATCH_UP_WAIT_SECONDS:
            raise RuntimeError(f"RFM scored {scored:,} of {len(customers):,} customers in time")
        say(f"waiting for the RFM refresh: {scored:,} of {len(customers):,} customers scored")
        await asyncio.sleep(5)


async def recommendations_computed(recommendation: asyncpg.Pool) -> float:
    """Wait until the neighbour job has no product marked and the picks job no customer: after
    a load they recompute the similar lists and every buyer's picks, in a process of their own
    that would otherwise take its share of the cores from the reads measured (a demo platform
    at rest has none marked). Seconds waited."""
    started = time.monotonic()
    marked = "SELECT (SELECT count(*) FROM dirty_products) + (SELECT count(*) FROM dirty_customers)"
    told = started
    while remaining := await recommendation.fetchval(marked):
        now = time.monotonic()
        if now - started > CATCH_UP_WAIT_SECONDS:
            raise RuntimeError(f"the recommendation jobs still have {remaining:,} marks")
        if now - told >= 5:
            say(f"  {remaining:,} products and customers still marked")
            told = now
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def per_request(
    result: LoadResult, spent: Mapping[str, float], wrk_spent: float
) -> tuple[dict[str, float], float]:
    """The CPU ms each process (and wrk) spent per request, from the CPU seconds of the run."""
    requests = max(result.requests, 1)
    return (
        {name: seconds * 1000 / requests for name, seconds in spent.items()},
        wrk_spent * 1000 / requests,
    )


def load_figures(
    result: LoadResult, cpu_ms_per_request: Mapping[str, float], wrk_cpu_ms_per_request: float
) -> dict[str, Any]:
    """A load's figures, JSON-ready: wrk's, and the CPU ms per request of each process."""
    return {
        "rate": result.rate,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "requests": result.requests,
        "not_2xx": result.not_2xx,
        "socket_errors": result.socket_errors,
        "cpu_ms_per_request": dict(cpu_ms_per_request),
        "wrk_cpu_ms_per_request": wrk_cpu_ms_per_request,
    }


def target_figures(
    result: LoadResult, spent: Mapping[str, float], wrk_spent: float
) -> dict[str, Any]:
    """One closed-loop target's figures, from the CPU seconds its run cost."""
    return load_figures(result, *per_request(result, spent, wrk_spent))


def show(report: Mapping[str, Any]) -> None:
    print(
        f"gateway reads, wrk with {report['concurrency']} connections for "
        f"{report['seconds']:g} s each (on the same 2 cores), {report['customers']:,} customers:"
    )
    for name, figures in report["targets"].items():
        print(
            f"  {name:14} {figures['rate']:8,.0f} requests/s   p50 {figures['p50_ms']:6.1f} ms"
            f"   p99 {figures['p99_ms']:6.1f} ms   ({figures['not_2xx']} not 2xx, "
            f"{figures['socket_errors']} socket errors)"
        )
        print(
            f"  {'':14} {cpu_line(figures['cpu_ms_per_request'])}; "
            f"wrk {figures['wrk_cpu_ms_per_request']:.2f}"
        )
        if paced := figures.get("at_target_rate"):
            print(
                f"  {'':14} at {paced['rate_asked']:,.0f}/s on a fixed schedule: "
                f"{paced['rate']:,.0f} requests/s   p50 {paced['p50_ms']:6.1f} ms   "
                f"p99 {paced['p99_ms']:6.1f} ms   ({paced['late']} started late, at most "
                f"{paced['late_max_ms']:.1f} ms; {paced['not_2xx']} not 2xx)"
            )
            print(f"  {'':14} {cpu_line(paced['cpu_ms_per_request'])}")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_arguments(parser)
    report = await run(parser.parse_args(), bench_env(os.environ))
    print()
    show(report)


if __name__ == "__main__":
    asyncio.run(main())
