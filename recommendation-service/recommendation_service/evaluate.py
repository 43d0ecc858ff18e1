"""Evaluate the recommenders offline on the UCI Online Retail file, split by time.

    python -m recommendation_service.evaluate [--split 2011-09-01] [--until DAY] [--sample N]
        [--ease NAME=VALUE ...] [--als NAME=VALUE ...] [--sweep] [--data PATH]

Reads and cleans the file as the demo loader does (crm_shared.ops.demo.retail), trains every
recommender on what happened before the split and prints, as a Markdown table, how well each
one's top 10 foresaw the goods new to each customer that they bought afterwards. Progress goes
to stderr.

`--until` ends the evaluated window before the test split, so that parameters can be chosen on
a validation split (e.g. --split 2011-07-01 --until 2011-09-01) and only reported on the test
split. `--ease`/`--als` change a model parameter for this run. `--sweep` prints instead the
served blend under every weighting of `evaluation.SWEEP_VALUES`, its parts fitted and scored
once.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from crm_shared.ops.demo import retail
from crm_shared.ops.demo.load import DATA_ENV, add_data_argument
from crm_shared.ops.rebuild import ProgressBar
from recommendation_service import evaluation
from recommendation_service.models import AlsParameters, EaseParameters, Recommender

DEFAULT_SPLIT = date(2011, 9, 1)
Parameters = TypeVar("Parameters", AlsParameters, EaseParameters)


def assignment(text: str) -> tuple[str, str]:
    """NAME=VALUE, as given to --ease and --als."""
    name, equals, value = text.partition("=")
    if not equals or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def with_assignments(defaults: Parameters, assigned: Sequence[tuple[str, str]]) -> Parameters:
    """The parameters with the assigned fields changed, each value read as its default's type;
    an unknown name is a ValueError."""
    known = {field.name for field in fields(defaults)}
    changes: dict[str, Any] = {}
    for name, value in assigned:
        if name not in known:
            raise ValueError(f"unknown parameter {name!r} (one of {', '.join(sorted(known))})")
        changes[name] = type(getattr(defaults, name))(value)
    return replace(defaults, **changes)


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
        "--until",
        type=date.fromisoformat,
        help="evaluate only purchases before this day (UTC): a validation window that ends "
        "where the test split begins (default: everything after the split)",
    )
    for model, example in (("ease", "regularization=100"), ("als", "factors=32")):
        parser.add_argument(
            f"--{model}",
            type=assignment,
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"a {model.upper()} parameter for this run (models), e.g. {example}",
        )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="print the blend under every weighting of its parts instead of the models' table",
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
    if args.until is not None and args.until <= args.split:
        parser.error("--until must be after --split")
    try:
        args.ease = with_assignments(EaseParameters(), args.ease)
        args.als = with_assignments(AlsParameters(), args.als)
    except ValueError as error:
        parser.error(str(error))
    return args


def stage(text: str) -> None:
    print(f"[evaluate] {text}", file=sys.stderr, flush=True)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def run(args: argparse.Namespace) -> str:
    """The report: what was evaluated, then the models' table (or with --sweep the blend's)."""
    started = time.monotonic()
    stage(f"reading and cleaning {args.data}")
    data = retail.load_retail(args.data)
    if args.sample is not None:
        data = retail.limit_customers(data, args.sample)
    found = evaluation.interactions(data.events)
    until = None if args.until is None else midnight(args.until)
    split = evaluation.split(found, midnight(args.split), until)
    if not split.relevant:
        raise SystemExit(f"no customer bought before and after {args.split}: nothing to evaluate")
    models = evaluation.train(
        found, split, args.als, args.ease, lambda name: stage(f"training {name}")
    )
    table = sweep_table(models, split) if args.sweep else models_table(models, split)
    relevant = sum(map(len, split.relevant.values()))
    return "\n".join(
        [
            f"Split at {args.split}: trained on {len(split.past.customers):,} customers and "
            f"{len(split.past.products):,} goods; evaluated on the {len(split.relevant):,} "
            f"customers who bought goods new to them afterwards"
            + (f" until {args.until}" if args.until else "")
            + f" ({relevant:,} relevant customer-product pairs, "
            f"{relevant / len(split.relevant):.1f} each)"
            + (f"; sample of the first {args.sample:,} customers" if args.sample else "")
            + f"; {args.ease}; {args.als}. {time.monotonic() - started:.0f} s.",
            "",
            table,
        ]
    )


def models_table(models: Sequence[Recommender], split: evaluation.Split) -> str:
    figures = []
    for model in models:
        bar = ProgressBar(sys.stderr, f"scoring {model.name:<10}", len(split.relevant))
        figures.append(evaluation.evaluate(model, split, bar.update))
        bar.update(len(split.relevant), final=True)
    return evaluation.report(figures)


def sweep_table(models: Sequence[Recommender], split: evaluation.Split) -> str:
    stage("scoring the baseline and the blend's parts")
    baseline = evaluation.evaluate(models[0], split)
    parts = evaluation.cache_parts({model.name: model for model in models}, split)
    grid = evaluation.weightings(evaluation.scoring_parts(parts))
    bar = ProgressBar(sys.stderr, "weightings", len(grid))
    found = evaluation.sweep(parts, split, grid, bar.update)
    bar.update(len(grid), final=True)
    return evaluation.sweep_report(found, baseline)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
