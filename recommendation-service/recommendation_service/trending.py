"""Trending goods: purchases decayed with their age, for everyone, per country and per segment.

Pure: no I/O, time comes from the events. A purchase at event time t weighs 2^-(age / half-life)
at any later instant. Kept as one number per (scope, product) against a fixed epoch: the sum of
each purchase's `weight`, 2^((t - EPOCH) / half-life) as an integer (53 significant bits, the
rest zeros). Integers add exactly in any order, so a replay in other batch boundaries stores the
same sums to the last digit (a rebuild compares equal); PostgreSQL's numeric holds them whatever
their size (2^1350 by 2026 with a 7-day half-life, which a double cannot hold); and the ranking
at any instant is the order of the sums, so it needs no clock. A purchase counts in the scope of
everyone, of its order's country (when the order names one) and of each segment its customer is
in when its batch is folded. A refund counts against the same scopes (its own country, its
customer's segments at its fold): issue 9's negative signal. A cancelled order counts as not
bought: its cancellation takes back the weights it and the refunds naming it added, in the scopes
they counted in (projection.OrderEntry).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from crm_shared.contracts.events import Event, SegmentEntered, SegmentLeft
from recommendation_service.projection import Purchase

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
"""Where weights are measured from: any fixed instant before the data gives the same ranking."""
SECONDS_PER_DAY = 86_400.0
DEFAULT_HALF_LIFE_DAYS = 7.0
EVERYONE = ""
"""The scope every purchase counts in."""
MANTISSA_BITS = 52
"""A purchase at EPOCH weighs 2^52: the fraction of a half-life is kept to a double's precision,
and purchases up to 52 half-lives before the epoch still count."""

Scoped = tuple[str, str]
"""(scope, product_id)"""


def country_scope(country: str) -> str:
    return f"country:{country}"


def segment_scope(segment: str) -> str:
    return f"segment:{segment}"


def weight(time: datetime, half_life_days: float) -> int:
    """One purchase at `time`: 2^((time - EPOCH) / half-life) x 2^52, as an integer: the
    fraction of a half-life as a double's mantissa, shifted by the whole half-lives."""
    half_lives = (time - EPOCH).total_seconds() / (half_life_days * SECONDS_PER_DAY)
    whole = math.floor(half_lives)
    mantissa = round(math.exp2(half_lives - whole) * (1 << MANTISSA_BITS))
    return mantissa << whole if whole >= 0 else mantissa >> -whole


def decayed_score(score: int | Decimal, at: datetime, half_life_days: float) -> float:
    """The decayed purchases a stored sum stands for, as of `at` (integer division of Python
    ints is correctly rounded whatever their size)."""
    return int(score) / weight(at, half_life_days)


@dataclass(frozen=True, slots=True)
class TrendDelta:
    """What a batch adds to one (scope, product): its summed weights (refunds subtracted), its
    purchases, the newest (None when the batch only refunded it)."""

    score: int
    purchases: int
    last_bought_at: datetime | None


def trend_deltas(
    batch: Iterable[Purchase],
    refunded: Iterable[Purchase],
    segments_of: Mapping[str, Collection[str]],
    half_life_days: float,
) -> dict[Scoped, TrendDelta]:
    """Each purchase's weight added to, and each refund's subtracted from, every scope it counts
    in; `segments_of` gives each customer's segments at the fold (an item taken back by a
    cancellation brings its own). A refund weighs as a purchase at its own time, whatever the
    units: a refunded purchase ends below zero (the refund is the later, heavier one), a negative
    signal that decays like the others. An item's sign (`Purchase.sign`) says how it counts: one
    of a cancelled order only dates the row, one taken back undoes what it added. Built in place,
    one weight per event time (an order's lines share theirs): this runs for every purchase the
    fold sees."""
    weights: dict[datetime, int] = {}
    sums: dict[Scoped, list[Any]] = {}
    signed = [(purchase, purchase.sign, True) for purchase in batch]
    signed += [(refund, -refund.sign, False) for refund in refunded]
    for item, sign, bought in signed:
        added = weights.get(item.time)
        if added is None:
            added = weights[item.time] = weight(item.time, half_life_days)
        scopes = [EVERYONE]
        if item.country is not None:
            scopes.append(country_scope(item.country))
        segments = segments_of.get(item.customer_id, ()) if item.segments is None else item.segments
        scopes.extend(segment_scope(s) for s in segments)
        for scope in scopes:
            found = sums.setdefault((scope, item.product_id), [0, 0, None])
            found[0] += sign * added
            if bought:
                found[1] += sign
                if sign >= 0:
                    found[2] = item.time if found[2] is None else max(found[2], item.time)
    return {key: TrendDelta(*found) for key, found in sums.items()}


@dataclass(frozen=True, slots=True)
class SegmentChange:
    customer_id: str
    segment: str
    member: bool
    version: int


def latest_segment_changes(events: Iterable[Event]) -> dict[tuple[str, str], SegmentChange]:
    """The batch's newest membership change per (customer, segment): the highest version."""
    latest: dict[tuple[str, str], SegmentChange] = {}
    for event in events:
        data = event.data
        if not isinstance(data, SegmentEntered | SegmentLeft):
            continue
        found = SegmentChange(
            event.customer_id, data.segment, isinstance(data, SegmentEntered), data.version
        )
        key = (found.customer_id, found.segment)
        before = latest.get(key)
        if before is None or found.version > before.version:
            latest[key] = found
    return latest


def scope_of(country: str | None, segment: str | None) -> str:
    """The scope a trending request asks for (at most one of country and segment)."""
    if country is not None and segment is not None:
        raise ValueError("ask for a country or a segment, not both")
    if country is not None:
        return country_scope(country)
    if segment is not None:
        return segment_scope(segment)
    return EVERYONE


def reason_text(country: str | None, segment: str | None) -> str:
    """Why a trending product is shown, for people."""
    if country is not None:
        return f"trending in {country}"
    if segment is not None:
        return "popular in your segment"
    return "trending"
