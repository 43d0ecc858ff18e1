"""Every figure of the speed table (issue "Speed") in one run, on one broker and database.

    ./crm bench [--events 200000] [--rate 2000] [--seconds 20] [--reads-seconds 15]
                [--json PATH]

Runs the existing benchmarks one after the other, each with its processes on the bench's own
ports (bench/reads.py's bench_env):
1. bench/pipeline.py: end to end through the four projections, worker memory, freshness at a
   fixed rate, each worker alone from offset 0 and the minimal pipeline as the reference;
2. bench/rebuild.py: the profile rebuilt from offset 0 (everything phase 1 published) while its
   live worker runs;
3. bench/reads.py: the customer 360 and the timeline through the gateway, everything running.
Prints each phase's own report, then the table (figure, value, target, met), and writes every
figure to one JSON document with --json. `./crm soak` (30 minutes) is separate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import pipeline, reads, rebuild
from bench.processes import JIT

END_TO_END_TARGET = 10_000
ALONE_TARGET = 0.5
FRESHNESS_P99_TARGET_MS = 500
REBUILD_TARGET = 50_000
WORKER_RSS_TARGET_MIB = 300
LATE_SHARE_ALLOWED = 0.01
"""At a target's fixed rate, the share of requests that may start late (every connection busy):
wrk's percentiles leave out how late they started, so more would hide a queue."""


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    target: str
    met: bool


def rows(report: Mapping[str, Any]) -> list[Row]:
    """The speed table from the figures of one run (the JSON this module writes)."""
    flow = report["pipeline"]
    load, fresh = flow["end_to_end"], flow["freshness_ms"]
    projections = list(flow["alone"])
    ratios = {name: flow["alone"][name].get("ratio_to_minimal") for name in projections}
    p99s = {name: fresh[name]["p99"] for name in projections}
    rss = flow["worker_rss_mib"]
    rebuilt = report["rebuild"]
    per_event = {
        name: seconds / load["events"] * 1e6 for name, seconds in load["cpu_seconds"].items()
    }
    table = [
        Row(
            "end to end through all four projections",
            f"{load['rate']:,.0f} events/s ({load['events']:,} events), "
            f"{sum(per_event.values()):,.0f} µs of CPU an event "
            f"(of it the broker's JIT {per_event.get(JIT, 0):,.0f}; "
            f"2 cores at {END_TO_END_TARGET:,}/s: {2e6 / END_TO_END_TARGET:,.0f})",
            f">= {END_TO_END_TARGET:,} events/s",
            load["rate"] >= END_TO_END_TARGET,
        ),
        Row(
            "each worker alone on its topics / the minimal pipeline",
            ", ".join(
                f"{name} {'too few records' if ratio is None else f'{ratio:.2f}'}"
                for name, ratio in ratios.items()
            )
            + f" (minimal {flow['minimal_pipeline_rate']:,.0f} events/s)",
            f">= {ALONE_TARGET}",
            all(ratio is not None and ratio >= ALONE_TARGET for ratio in ratios.values()),
        ),
        Row(
            f"freshness p99 at {fresh['rate']:,} events/s, event time -> committed",
            ", ".join(f"{name} {p99:,.0f} ms" for name, p99 in p99s.items()),
            f"<= {FRESHNESS_P99_TARGET_MS} ms, each projection",
            all(p99 <= FRESHNESS_P99_TARGET_MS for p99 in p99s.values()),
        ),
        Row(
            f"rebuild the {rebuilt['projection']} from offset 0 ({rebuilt['records']:,} records)",
            f"{rebuilt['rate']:,.0f} records/s" + ("" if rebuilt["switched"] else ", NOT switched"),
            f">= {REBUILD_TARGET:,} records/s",
            rebuilt["switched"] and rebuilt["rate"] >= REBUILD_TARGET,
        ),
    ]
    for name, (rate_target, p99_target) in reads.RATE_TARGETS.items():
        table.append(read_row(name, report["reads"], rate_target, p99_target))
    table.append(
        Row(
            f"worker memory (RSS) after {load['events']:,} events",
            ", ".join(f"{name.removesuffix('-worker')} {mib:.0f} MiB" for name, mib in rss.items()),
            f"<= {WORKER_RSS_TARGET_MIB} MiB",
            all(mib <= WORKER_RSS_TARGET_MIB for mib in rss.values()),
        )
    )
    return table


def read_row(name: str, report: Mapping[str, Any], rate_target: int, p99_target: float) -> Row:
    """A gateway target's row: met when the closed loop serves at least the target rate and, at
    exactly that rate on a fixed schedule, the p99 is within its target with at most 1 % of the
    requests started late and every answer a 2xx."""
    most = report["targets"][name]
    paced = most["at_target_rate"]
    cpu = sum(paced["cpu_ms_per_request"].values())
    return Row(
        f"{name} through the gateway",
        f"at {rate_target:,}/s on a fixed schedule: p50 {paced['p50_ms']:.1f} ms, "
        f"p99 {paced['p99_ms']:.1f} ms, {paced['late']:,} started late, {cpu:.1f} ms CPU each; "
        f"at most {most['rate']:,.0f} requests/s with {report['concurrency']} connections "
        f"(p99 {most['p99_ms']:.1f} ms)",
        f">= {rate_target:,} requests/s, p99 <= {p99_target:g} ms",
        most["rate"] >= rate_target
        and paced["rate"] >= 0.98 * rate_target
        and paced["p99_ms"] <= p99_target
        and paced["late"] <= LATE_SHARE_ALLOWED * paced["requests"]
        and not most["not_2xx"]
        and not paced["not_2xx"],
    )


def show_table(table: list[Row]) -> None:
    widths = [max(len(getattr(row, name)) for row in table) for name in ("figure", "value")]
    for row in table:
        mark = "met" if row.met else "not yet"
        print(f"  {row.figure:{widths[0]}}  {row.value:{widths[1]}}  target {row.target} ({mark})")


def defaults(add_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """A phase's own options at their defaults."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([])


async def run(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The three phases; `args` holds bench/pipeline.py's options and --reads-seconds."""
    rebuild_args = defaults(rebuild.add_arguments)
    rebuild_args.events = 0  # the log phase 1 wrote is the one to rebuild from
    read_args = defaults(reads.add_arguments)
    read_args.seconds = args.reads_seconds
    report: dict[str, Any] = {"pipeline": await pipeline.run(args, env)}
    pipeline.say("rebuild: the profile from offset 0, its live worker running")
    report["rebuild"] = await rebuild.run(rebuild_args, env)
    pipeline.say("reads: the customer 360 and the timeline through the gateway")
    report["reads"] = await reads.run(read_args, env)
    return report


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    pipeline.add_arguments(parser)
    parser.add_argument(
        "--reads-seconds", type=float, default=15, help="wrk's measured seconds per read target"
    )
    parser.add_argument("--json", type=Path, help="also write every figure there as JSON")
    args = parser.parse_args()
    report = await run(args, reads.bench_env(os.environ))
    table = rows(report)
    report["table"] = [asdict(row) for row in table]
    print()
    pipeline.show(report["pipeline"])
    print()
    rebuild.show(report["rebuild"])
    print()
    reads.show(report["reads"])
    print("\nthe speed table (issue 6):")
    show_table(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
