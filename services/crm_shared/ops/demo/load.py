"""Publish the demo data set: the UCI invoices as events, synthetic CRM facts, dead letters and
a newsletter to the lapsed customers.

    python -m crm_shared.ops.demo.load [--data PATH] [--bootstrap HOST:PORT]
                                   [--limit-customers N] [--seed 7]

Event ids are derived from the data, so running it again publishes the same events, which
every consumer deduplicates. Topics must exist first (`python -m crm_shared.ops.bootstrap`).
"""

from __future__ import annotations

import argparse
import heapq
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from crm_shared.contracts.sdk import EventPublisher
from crm_shared.ops.demo import event_order, newsletter, retail, synthetic
from crm_shared.runtime.config import PlatformSettings
from crm_shared.runtime.logs import configure_logging

log = logging.getLogger("crm.demo.load")

DATA_FILE = Path("shared") / "data" / "online_retail.csv.gz"
DATA_ENV = "CRM_DEMO_DATA"
PROGRESS_EVERY_SECONDS = 5.0
REPO_ROOT = Path(__file__).resolve().parents[4]


def default_data_path() -> Path | None:
    """`$CRM_DEMO_DATA`, else shared/data/online_retail.csv.gz in the repo root or above it."""
    if DATA_ENV in os.environ:
        return Path(os.environ[DATA_ENV])
    for folder in (REPO_ROOT, *REPO_ROOT.parents):
        if (folder / DATA_FILE).is_file():
            return folder / DATA_FILE
    return None


class _Failures:
    """Counts sends the broker refused; kafka-python reports them on its sender thread."""

    def __init__(self) -> None:
        self.count = 0
        self.first: BaseException | None = None

    def record(self, error: BaseException) -> None:
        self.count += 1
        self.first = self.first or error


class _Progress:
    """Logs sent/total and the rate every few seconds, so a long load is visibly alive."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.started = time.monotonic()
        self._next_report = self.started + PROGRESS_EVERY_SECONDS

    def tick(self) -> None:
        self.sent += 1
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + PROGRESS_EVERY_SECONDS
            log.info(
                "progress %d/%d",
                self.sent,
                self.total,
                extra={"sent": self.sent, "total": self.total, "per_second": round(self.rate())},
            )

    def rate(self) -> float:
        return self.sent / max(time.monotonic() - self.started, 1e-9)


def _listed(counts: Counter[str]) -> str:
    """`a: 3, b: 1`, largest first, for the one-line summary."""
    return ", ".join(f"{name}: {n}" for name, n in counts.most_common()) or "none"


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """`--data`, the UCI file: every command that reads it finds it the same way."""
    parser.add_argument(
        "--data",
        type=Path,
        default=default_data_path(),
        help=f"the UCI CSV (default: ${DATA_ENV} or found above the repo)",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m crm_shared.ops.demo.load",
        description="Publish the UCI Online Retail invoices and synthetic CRM facts to Kafka.",
    )
    add_data_argument(parser)
    parser.add_argument(
        "--bootstrap",
        default=PlatformSettings().kafka_bootstrap,
        help="Kafka bootstrap servers, HOST:PORT",
    )
    parser.add_argument(
        "--limit-customers",
        type=int,
        metavar="N",
        help="only the first N customers by first invoice, for a quick demo",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic facts")
    args = parser.parse_args(argv)
    if args.data is None or not args.data.is_file():
        parser.error(f"data file not found: {args.data or DATA_FILE} (use --data or ${DATA_ENV})")
    if args.limit_customers is not None and args.limit_customers < 1:
        parser.error("--limit-customers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("demo-loader", PlatformSettings().log_level)
    try:
        # connect first: a wrong address fails at once, not after the transform
        with EventPublisher(args.bootstrap, source=retail.DEAD_LETTER_CONSUMER) as publisher:
            return load(publisher, args.data, args.limit_customers, args.seed)
    except KafkaError as error:
        log.error("cannot publish to %s: %r", args.bootstrap, error)
        return 1


def demo_events(data: retail.RetailData, seed: int, loaded_at: datetime) -> list[dict[str, Any]]:
    """Every envelope to publish, in publishing order: the invoices and the synthetic facts by
    event time, then the demo newsletter to the lapsed customers (sent a few minutes later)."""
    generated = synthetic.generate(data.customers, data.products, seed=seed)
    return [*heapq.merge(data.events, generated, key=event_order), newsletter.definition(loaded_at)]


def load(publisher: EventPublisher, data_path: Path, limit: int | None, seed: int) -> int:
    """Transform, publish in event-time order, dead-letter the rejections; 0 when all landed."""
    started = time.monotonic()
    log.info("transforming %s", data_path)
    data = retail.load_retail(data_path)
    if limit is not None:
        data = retail.limit_customers(data, limit)
    events = demo_events(data, seed, datetime.now(UTC))
    log.info(
        "transformed in %.1f s: %d events, %d dead letters",
        time.monotonic() - started,
        len(events),
        len(data.rejections),
    )
    published: Counter[str] = Counter()
    dead_lettered: Counter[str] = Counter()
    failures = _Failures()
    progress = _Progress(len(events) + len(data.rejections))
    for document in events:
        publisher.publish_document(document).add_errback(failures.record)
        published[document["type"]] += 1
        progress.tick()
    for rejection in data.rejections:
        publisher.dead_letter(rejection.letter).add_errback(failures.record)
        dead_lettered[rejection.kind.value] += rejection.lines
        progress.tick()
    publisher.flush()
    if failures.count:
        log.error(
            "%d records were not accepted by Kafka, first: %r", failures.count, failures.first
        )
        return 1
    print(
        f"published {sum(published.values())} events ({_listed(published)}); "
        f"dead-lettered {sum(dead_lettered.values())} source rows in {len(data.rejections)} "
        f"records ({_listed(dead_lettered)}); {progress.rate():.0f} records/s, "
        f"{time.monotonic() - started:.1f} s in all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
