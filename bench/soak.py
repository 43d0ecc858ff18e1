"""Soak: the four workers under a steady load for a long time; memory must stay flat, lag low.

    ./crm soak [--minutes 30] [--rate 2000] [--sample-seconds 30] [--json PATH]

Publishes the workload mix at `--rate` events/s (event time = when each falls due) for
`--minutes`, samples the RSS of each worker and jobs process and the records each projection has
yet to apply every `--sample-seconds`, and shows them as it goes. At the end it compares each
process's RSS over the last fifth of the run with the fifth after the warm-up (the first fifth):
the target is flat within +-10 % and at most 300 MiB.
Not part of the test suite: it takes half an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.pipeline import (
    PROJECTIONS,
    WORKERS,
    end_offsets,
    live,
    publish,
    remaining,
    rss_mib,
    say,
    workers_running,
)
from crm_shared.ops.demo.workload import Workload

MAX_RSS_MIB = 300
FLAT_WITHIN = 0.10


def drift(samples: list[float]) -> tuple[float, float, float]:
    """Mean RSS after the warm-up (second fifth of the samples), over the last fifth, and the
    relative change between them."""
    fifth = max(len(samples) // 5, 1)
    settled = statistics.fmean(samples[fifth : 2 * fifth] or samples)
    final = statistics.fmean(samples[-fifth:])
    return settled, final, (final - settled) / settled if settled else 0.0


def verdicts(
    rss: dict[str, list[float]], lag: dict[str, list[int]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each process's memory verdict (a worker or a jobs process) and each projection's lag
    (its worker's: a jobs process folds nothing, so it has none of its own)."""
    memory: dict[str, dict[str, Any]] = {}
    for process, samples in rss.items():
        settled, final, change = drift(samples)
        peak = max(samples)
        memory[process] = {
            "rss_settled_mib": settled,
            "rss_final_mib": final,
            "rss_change": change,
            "rss_peak_mib": peak,
            "flat": abs(change) <= FLAT_WITHIN and peak <= MAX_RSS_MIB,
        }
    behind = {name: {"max": max(counts), "last": counts[-1]} for name, counts in lag.items()}
    return {"memory": memory, "lag": behind}


async def sample(
    pools: dict[str, asyncpg.Pool],
    bootstrap: str,
    env: dict[str, str],
    until: float,
    every: float,
    rss: dict[str, list[float]],
    lag: dict[str, list[int]],
) -> None:
    started = time.monotonic()
    while time.monotonic() < until:
        await asyncio.sleep(every)
        left = await remaining(pools, await asyncio.to_thread(end_offsets, bootstrap))
        for worker in WORKERS:
            rss[worker.name].append(rss_mib(worker, env))
        for name, count in left.items():
            lag[name].append(count)
        say(
            f"  {(time.monotonic() - started) / 60:5.1f} min  RSS "
            + ", ".join(f"{w.name} {rss[w.name][-1]:.0f}" for w in WORKERS)
            + " MiB  lag "
            + ", ".join(f"{name} {left[name]:,}" for name in PROJECTIONS)
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=int, default=2_000)
    parser.add_argument("--sample-seconds", type=float, default=30)
    parser.add_argument("--json", type=Path, help="also write the figures there as JSON")
    args = parser.parse_args()
    env = {**os.environ, "CRM_LOG_LEVEL": "WARNING"}
    bootstrap = env["CRM_KAFKA_BOOTSTRAP"]
    rss: dict[str, list[float]] = {w.name: [] for w in WORKERS}
    lag: dict[str, list[int]] = {name: [] for name in PROJECTIONS}
    async with workers_running(env) as pools:
        total = int(args.rate * args.minutes * 60)
        say(f"publishing {total:,} events at {args.rate:,}/s for {args.minutes:g} min")
        workload = Workload(seed=11, prefix=f"soak-{int(time.time())}")
        started = time.monotonic()
        await asyncio.gather(
            publish(bootstrap, live(workload, total, args.rate), total, started, rate=args.rate),
            sample(
                pools, bootstrap, env, started + args.minutes * 60, args.sample_seconds, rss, lag
            ),
        )
    report = verdicts(rss, lag)
    print(f"\nsoak: {args.minutes:g} min at {args.rate:,} events/s")
    for process, memory in report["memory"].items():
        print(
            f"  {process:22} RSS {memory['rss_settled_mib']:5.0f} -> "
            f"{memory['rss_final_mib']:5.0f} MiB ({memory['rss_change']:+.1%}), "
            f"peak {memory['rss_peak_mib']:.0f} MiB: {'flat' if memory['flat'] else 'NOT flat'}"
        )
    for name, behind in report["lag"].items():
        print(f"  {name:22} behind by at most {behind['max']:,}, at the end {behind['last']:,}")
    if args.json:
        args.json.write_text(
            json.dumps({"minutes": args.minutes, "rate": args.rate, **report}, indent=2) + "\n"
        )


if __name__ == "__main__":
    asyncio.run(main())
