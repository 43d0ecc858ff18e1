"""Evaluate the recommenders offline on the UCI Online Retail file, split by time.

    python -m recommendation_service.evaluate [--split 2011-09-01] [--sample N] [--data PATH]

Reads and cleans the file as the demo loader does (crm_shared.ops.demo.retail), trains every
recommender on what happened before the split and prints, as a Markdown table, how well each
one's top 10 foresaw the goods new to each customer that they bought afterwards. Progress goes
to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from crm_shared.ops.demo import retail
from crm_shared.ops.demo.load import DATA_ENV, add_data_argument
from crm_shared.ops.rebuild import ProgressBar
from recommendation_service import evaluation
from recommendation_service.models import AlsParameters, EaseParameters

DEFAULT_SPLIT = date(2011, 9, 1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m recommendation_service.evaluate",
        description="Train the recommenders before a date, score their top 10 after it.",
    )
    add_data_argument(parser)
    parser.add_argument(
        "--split",
        type=date.fromisoformat,
        default=DEFAULT_SPLIT,
        help="train on what was bought before this day (UTC), evaluate on the rest "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="only the first N customers by first invoice, for a quick run",
    )
    args = parser.parse_args(argv)
    if args.data is None or not args.data.is_file():
        parser.error(f"data file not found: {args.data} (use --data or ${DATA_ENV})")
    if args.sample is not None and args.sample < 1:
        parser.error("--sample must be at least 1")
    return args


def stage(text: str) -> None:
    print(f"[evaluate] {text}", file=sys.stderr, flush=True)


def run(data_path: Path, split_day: date, sample: int | None) -> str:
    """The report: what was evaluated, then the table."""
    started = time.monotonic()
    stage(f"reading and cleaning {data_path}")
    data = retail.load_retail(data_path)
    if sample is not None:
        data = retail.limit_customers(data, sample)
    found = evaluation.interactions(data.events)
    split_at = datetime(split_day.year, split_day.month, split_day.day, tzinfo=UTC)
    split = evaluation.split(found, split_at)
    if not split.relevant:
        raise SystemExit(f"no customer bought before and after {split_day}: nothing to evaluate")
    models = evaluation.train(
        found, split, AlsParameters(), EaseParameters(), lambda name: stage(f"training {name}")
    )
    figures = []
    for model in models:
        bar = ProgressBar(sys.stderr, f"scoring {model.name:<10}", len(split.relevant))
        figures.append(evaluation.evaluate(model, split, bar.update))
        bar.update(len(split.relevant), final=True)
    relevant = sum(map(len, split.relevant.values()))
    return "\n".join(
        [
            f"Split at {split_day}: trained on {len(split.past.customers):,} customers and "
            f"{len(split.past.products):,} goods; evaluated on the {len(split.relevant):,} "
            f"customers who bought goods new to them afterwards ({relevant:,} relevant "
            f"customer-product pairs, {relevant / len(split.relevant):.1f} each)"
            + (f"; sample of the first {sample:,} customers" if sample else "")
            + f". {time.monotonic() - started:.0f} s.",
            "",
            evaluation.report(figures),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(run(args.data, args.split, args.sample))
    return 0


if __name__ == "__main__":
    sys.exit(main())
