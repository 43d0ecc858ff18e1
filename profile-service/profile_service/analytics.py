"""Analysis across customers: RFM scores and segments, top customers, the OLAP cube's
dimensions. Pure: no I/O; the store computes the population-wide figures in SQL.

RFM (docs/decisions.md): recency, frequency and monetary value per customer and currency over
the active population (customers with an order in that currency); each scored 1-5 by quintile,
1 + floor(5 x percent rank), ties sharing a score; recency by the replayable clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

CHAMPIONS = "champions"
LOYAL = "loyal"
POTENTIAL_LOYALISTS = "potential loyalists"
NEW = "new"
PROMISING = "promising"
NEED_ATTENTION = "need attention"
ABOUT_TO_SLEEP = "about to sleep"
AT_RISK = "at risk"
CANNOT_LOSE_THEM = "cannot lose them"
HIBERNATING = "hibernating"
LOST = "lost"
RFM_SEGMENTS = (
    CHAMPIONS,
    LOYAL,
    POTENTIAL_LOYALISTS,
    NEW,
    PROMISING,
    NEED_ATTENTION,
    ABOUT_TO_SLEEP,
    AT_RISK,
    CANNOT_LOSE_THEM,
    HIBERNATING,
    LOST,
)

SCORES = range(1, 6)


def quintile_score(percent_rank: float) -> int:
    """The 1-5 score of a percent rank (0 = lowest, 1 = highest): 1 + floor(5 x rank), at most
    5. Mirrors the SQL of migrations/005_rfm.sql (tests compare them)."""
    return min(5, 1 + math.floor(5 * percent_rank))


def frequency_monetary(f: int, m: int) -> int:
    """The mean of the F and M scores, halves rounded up: how much a customer is worth."""
    return (f + m + 1) // 2


def rfm_segment(r: int, f: int, m: int) -> str:
    """The named segment of R, F, M scores (1-5): a grid of R against the F-M mean.

    R \\ FM   1-2                 3                 4                 5
    5        new (FM 1),         potential         champions         champions
             potential (FM 2)    loyalists
    4        promising (FM 1),   potential         loyal             loyal
             potential (FM 2)    loyalists
    3        about to sleep      need attention    loyal             loyal
    2        hibernating         at risk           at risk           cannot lose them
    1        lost                at risk           at risk           cannot lose them
    """
    if not (r in SCORES and f in SCORES and m in SCORES):
        raise ValueError(f"scores must be 1-5, got R={r} F={f} M={m}")
    fm = frequency_monetary(f, m)
    if r >= 4:
        if fm == 1:
            return NEW if r == 5 else PROMISING
        if fm <= 3:
            return POTENTIAL_LOYALISTS
        return CHAMPIONS if r == 5 else LOYAL
    if r == 3:
        return ABOUT_TO_SLEEP if fm <= 2 else NEED_ATTENTION if fm == 3 else LOYAL
    if fm == 5:
        return CANNOT_LOSE_THEM
    if fm >= 3:
        return AT_RISK
    return HIBERNATING if r == 2 else LOST


def segment_table() -> list[tuple[int, int, int, str]]:
    """Every (R, F, M) with its segment: the rule as data, for SQL to join with."""
    return [(r, f, m, rfm_segment(r, f, m)) for r in SCORES for f in SCORES for m in SCORES]


@dataclass(frozen=True)
class Measures:
    """One customer's raw RFM measures in one currency."""

    recency_days: Decimal
    frequency: int
    monetary: Decimal


def percent_ranks(values: Sequence[Decimal | int]) -> list[float]:
    """PostgreSQL's percent_rank for each value, ascending: (rank - 1) / (n - 1), ties sharing
    the lowest rank; 0 for a population of one."""
    ordered = sorted(values)
    first_index: dict[Decimal | int, int] = {}
    for index, value in enumerate(ordered):
        first_index.setdefault(value, index)
    span = len(values) - 1
    return [first_index[value] / span if span else 0.0 for value in values]


def rfm_scores(population: Mapping[str, Measures]) -> dict[str, tuple[int, int, int]]:
    """The (R, F, M) scores of each customer of a population (one currency): the reference the
    store's SQL is tested against. A shorter recency scores higher."""
    ids = list(population)
    recency = percent_ranks([-population[i].recency_days for i in ids])
    frequency = percent_ranks([population[i].frequency for i in ids])
    monetary = percent_ranks([population[i].monetary for i in ids])
    return {
        customer: (quintile_score(r), quintile_score(f), quintile_score(m))
        for customer, r, f, m in zip(ids, recency, frequency, monetary, strict=True)
    }


DEFAULT_TOP_SHARE = Decimal("0.25")

CUBE_DIMENSIONS = ("segment", "rfm_segment", "country", "channel", "month")
"""What the cube may be broken down by: the segments the customer is a member of (operators' and
the built-in ones: a customer in two counts in both), the RFM segment, the customer's country,
the order's sales channel and the month (UTC) of the order or refund."""


class UnknownDimension(ValueError):
    """A requested cube dimension is not one of CUBE_DIMENSIONS."""


def cube_dimensions(requested: Sequence[str]) -> tuple[str, ...]:
    """The requested dimensions, checked, without repeats, in the order asked."""
    unknown = [name for name in requested if name not in CUBE_DIMENSIONS]
    if unknown:
        raise UnknownDimension(
            f"unknown cube dimension(s) {', '.join(map(repr, unknown))}: "
            f"choose among {', '.join(CUBE_DIMENSIONS)}"
        )
    return tuple(dict.fromkeys(requested))


@dataclass(frozen=True)
class ParetoPoint:
    population_share: Decimal
    revenue_share: Decimal


def pareto_curve(
    active: int, revenue: Decimal, running_at: Mapping[int, Decimal], points: int
) -> list[ParetoPoint]:
    """`points` points of the Pareto curve: at the best ceil(i x active / points) customers,
    the share of revenue they bring. `running_at` holds the running revenue at those ranks among
    the customers with a positive revenue; a rank past them has all of it."""
    if active == 0 or revenue <= 0:
        return []
    curve = []
    for i in range(1, points + 1):
        rank = math.ceil(i * active / points)
        running = running_at.get(rank, revenue)
        curve.append(ParetoPoint(round(Decimal(rank) / active, 4), round(running / revenue, 4)))
    return curve
