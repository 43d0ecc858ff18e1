"""Trending goods: purchases decayed with their age, for everyone, per country and per segment.

Pure: no I/O, time comes from the events. A purchase at event time t weighs 2^-(age / half-life)
at any later instant. Kept as one number per (scope, product) in log space against a fixed epoch,
log_score = ln(sum over purchases of 2^((t - EPOCH) / half-life)): adding a purchase is a
log-add-exp, which never overflows (the weights themselves would: 2^1350 by 2026 with a 7-day
half-life), and the ranking at any instant is the order of log_score, so it needs no clock and a
replay gives the same one. A purchase counts in the scope of everyone, of its order's country
(when the order names one) and of each segment its customer is in when its batch is folded.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from crm_shared.contracts.events import Event, SegmentEntered, SegmentLeft
from recommendation_service.projection import Purchase

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
"""Where log weights are measured from: any fixed instant gives the same ranking."""
SECONDS_PER_DAY = 86_400.0
DEFAULT_HALF_LIFE_DAYS = 7.0
EVERYONE = ""
"""The scope every purchase counts in."""
RANK_DECIMALS = 9
"""log_score is compared rounded to this many decimals: sums of the same purchases folded in
other batches differ in their last bits, and must not reorder ties (broken by product id)."""
_TINY = -50.0
"""Below this difference of logs the smaller term changes nothing a double can hold."""

Scoped = tuple[str, str]
"""(scope, product_id)"""


def country_scope(country: str) -> str:
    return f"country:{country}"


def segment_scope(segment: str) -> str:
    return f"segment:{segment}"


def log_weight(time: datetime, half_life_days: float) -> float:
    """ln of 2^((time - EPOCH) / half-life): one purchase's term in log space."""
    half_lives = (time - EPOCH).total_seconds() / (half_life_days * SECONDS_PER_DAY)
    return half_lives * math.log(2.0)


def log_add(a: float, b: float) -> float:
    """ln(e^a + e^b) without forming either (the store's SQL computes the same)."""
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(max(low - high, _TINY)))


def decayed_score(log_score: float, at: datetime, half_life_days: float) -> float:
    """The decayed purchases a log_score stands for, as of `at` (its newest purchase or later)."""
    return math.exp(min(log_score - log_weight(at, half_life_days), 700.0))


@dataclass(frozen=True, slots=True)
class TrendDelta:
    """What a batch adds to one (scope, product): its log-summed weights, purchases, newest."""

    log_score: float
    purchases: int
    last_bought_at: datetime


def trend_deltas(
    batch: Iterable[Purchase],
    segments_of: Mapping[str, Collection[str]],
    half_life_days: float,
) -> dict[Scoped, TrendDelta]:
    """Each purchase's weight added to every scope it counts in; `segments_of` gives each
    customer's segments at the fold. Sorted by event time first, so the sums of one batch do not
    depend on its order."""
    deltas: dict[Scoped, TrendDelta] = {}
    for purchase in sorted(batch, key=lambda p: (p.time, p.customer_id, p.product_id)):
        weight = log_weight(purchase.time, half_life_days)
        scopes = [EVERYONE]
        if purchase.country is not None:
            scopes.append(country_scope(purchase.country))
        scopes.extend(segment_scope(s) for s in sorted(segments_of.get(purchase.customer_id, ())))
        for scope in scopes:
            key = (scope, purchase.product_id)
            before = deltas.get(key)
            deltas[key] = (
                TrendDelta(weight, 1, purchase.time)
                if before is None
                else TrendDelta(
                    log_add(before.log_score, weight),
                    before.purchases + 1,
                    max(before.last_bought_at, purchase.time),
                )
            )
    return deltas


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
