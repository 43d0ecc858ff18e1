"""Operator-defined segments: what a customer's facts say about a rule, and how membership moves.
Pure: no I/O; `now` is the customer's replayable clock, never the wall clock.

`matches` is the reference meaning of the rule language (crm_shared.contracts.segment_rules);
the store compiles the same rules into SQL for evaluations over many customers, and the tests
compare the two on the same data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter

from crm_shared.contracts import segment_rules as rules
from crm_shared.contracts.events import Event
from crm_shared.contracts.segment_rules import (
    AllOf,
    AnyOf,
    Bought,
    FieldIn,
    Lifetime,
    LifetimeFigure,
    Measure,
    MeasureBetween,
    NotRule,
    Rfm,
    Rule,
)
from crm_shared.runtime.derived import Derived
from profile_service import analytics
from profile_service.projection import Membership, change_membership, segment_event

RULE = TypeAdapter[Rule](Rule)
"""Reads a stored rule back (it was validated when its definition was folded)."""
SECONDS_PER_DAY = 86400
MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class OrderFact:
    order_id: str
    placed_at: datetime
    channel: str
    currency: str
    amount: Decimal


@dataclass(frozen=True)
class LineFact:
    """A line of the kept placement of an order."""

    order_id: str
    product_id: str
    description: str | None
    category: str | None = None
    """The product's category in the catalogue as folded now (None: it has none)."""


@dataclass(frozen=True)
class RefundFact:
    order_id: str | None
    refunded_at: datetime
    currency: str
    amount: Decimal


@dataclass(frozen=True)
class LifetimePrediction:
    """What the model in use predicts for the customer in one currency (as stored)."""

    probability_alive: float
    expected_purchases: float
    expected_spend: float


def lifetime_figure(prediction: LifetimePrediction, figure: LifetimeFigure) -> float:
    """One figure of a prediction, computed as the SQL of store._CompiledRule computes it."""
    if figure == LifetimeFigure.PROBABILITY_ALIVE:
        return prediction.probability_alive
    if figure == LifetimeFigure.CHURN_PROBABILITY:
        return 1 - prediction.probability_alive
    if figure == LifetimeFigure.EXPECTED_PURCHASES:
        return prediction.expected_purchases
    return prediction.expected_purchases * prediction.expected_spend


@dataclass(frozen=True)
class CustomerFacts:
    """What the profile knows of one customer that a rule can ask about."""

    customer_id: str
    profile: Mapping[str, str] = field(default_factory=dict)
    """Contact fields by name and attributes as 'attributes.<key>'; absent fields are absent."""
    orders: Sequence[OrderFact] = ()
    lines: Sequence[LineFact] = ()
    refunds: Sequence[RefundFact] = ()
    cancellations: Mapping[str, datetime] = field(default_factory=dict)
    """When each cancelled order was cancelled, by order id."""
    rfm: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    """(R, F, M) per currency, as the RFM scores were last refreshed."""
    lifetime: Mapping[str, LifetimePrediction] = field(default_factory=dict)
    """The lifetime-value model's predictions per currency, by the version in use."""
    complaints: Sequence[datetime] = ()
    """When each of the customer's complaint cases was first opened."""
    now: datetime | None = None
    """The clock of the customer's crm.orders partition (None before its first tick)."""


def profile_of(contact: Mapping[str, str | None], attributes: Mapping[str, str]) -> dict[str, str]:
    """A record's fields as rules name them: contact fields by name, attributes with their
    prefix; absent fields are absent."""
    profile = {name: value for name, value in contact.items() if value is not None}
    profile.update({rules.ATTRIBUTE_PREFIX + key: value for key, value in attributes.items()})
    return profile


def _own_order(record: str, order_id: str) -> str:
    """An order id made unique across a person's records (each record numbers its own)."""
    return f"{len(record)}:{record}:{order_id}"


def person_facts(
    person_id: str, parts: Sequence[CustomerFacts], profile: Mapping[str, str]
) -> CustomerFacts:
    """The facts of a person of several records: every record's orders, lines, refunds,
    cancellations and complaints together (order ids kept apart per record), the person's
    combined profile, its RFM scores (computed per person, under its id), and the newest clock
    among its records' partitions."""
    nows = [part.now for part in parts if part.now is not None]
    return CustomerFacts(
        person_id,
        profile,
        orders=[
            replace(o, order_id=_own_order(p.customer_id, o.order_id))
            for p in parts
            for o in p.orders
        ],
        lines=[
            replace(line, order_id=_own_order(p.customer_id, line.order_id))
            for p in parts
            for line in p.lines
        ],
        refunds=[
            replace(r, order_id=r.order_id and _own_order(p.customer_id, r.order_id))
            for p in parts
            for r in p.refunds
        ],
        cancellations={
            _own_order(p.customer_id, order): at
            for p in parts
            for order, at in p.cancellations.items()
        },
        rfm=next((p.rfm for p in parts if p.customer_id == person_id), {}),
        lifetime=next((p.lifetime for p in parts if p.customer_id == person_id), {}),
        complaints=[at for p in parts for at in p.complaints],
        now=max(nows, default=None),
    )


def rfm_triples(spec: rules.RfmSpec) -> list[tuple[int, int, int]]:
    """Every (R, F, M) the condition accepts: the score bounds and the named segments."""
    return [
        (r, f, m)
        for r, f, m, segment in analytics.segment_table()
        if spec.min_r <= r <= spec.max_r
        and spec.min_f <= f <= spec.max_f
        and spec.min_m <= m <= spec.max_m
        and (spec.segments is None or segment in spec.segments)
    ]


def window_start(now: datetime | None, days: int | None) -> datetime | None:
    """The earliest time a window of `days` holds (None: no window)."""
    return None if days is None or now is None else now - timedelta(days=days)


def _in_window(at: datetime, now: datetime | None, days: int | None) -> bool:
    if days is None:
        return True
    start = window_start(now, days)
    return start is not None and at >= start


def _live_orders(facts: CustomerFacts, condition: MeasureBetween) -> list[OrderFact]:
    """The orders not cancelled that the condition's currency, channel and window select."""
    return [
        order
        for order in facts.orders
        if order.order_id not in facts.cancellations
        and condition.currency in (None, order.currency)
        and condition.channel in (None, order.channel)
        and _in_window(order.placed_at, facts.now, condition.within_days)
    ]


def _net_refunds(facts: CustomerFacts, condition: MeasureBetween) -> Decimal:
    """Money refunded in the currency (not of cancelled orders); with a channel, only refunds of
    a known order of that currency placed through it (as revenue_facts dates and files them)."""
    channels = {(o.order_id, o.currency): o.channel for o in facts.orders}
    return sum(
        (
            refund.amount
            for refund in facts.refunds
            if refund.currency == condition.currency
            and (refund.order_id is None or refund.order_id not in facts.cancellations)
            and (
                condition.channel is None
                or channels.get((refund.order_id or "", refund.currency)) == condition.channel
            )
            and _in_window(refund.refunded_at, facts.now, condition.within_days)
        ),
        Decimal(0),
    )


def measure_value(facts: CustomerFacts, condition: MeasureBetween) -> Decimal | None:
    """The measured value (None when there is none: no purchase, or no clock for a recency)."""
    measure = condition.measure
    if measure == Measure.ORDERS:
        return Decimal(len(_live_orders(facts, condition)))
    if measure == Measure.GROSS_REVENUE:
        return sum((o.amount for o in _live_orders(facts, condition)), Decimal(0))
    if measure == Measure.NET_REVENUE:
        gross = sum((o.amount for o in _live_orders(facts, condition)), Decimal(0))
        return gross - _net_refunds(facts, condition)
    if measure == Measure.REFUNDS:
        return Decimal(
            sum(
                1
                for refund in facts.refunds
                if condition.currency in (None, refund.currency)
                and _in_window(refund.refunded_at, facts.now, condition.within_days)
            )
        )
    if measure in (Measure.CANCELLATIONS, Measure.COMPLAINTS):
        dates = (
            facts.cancellations.values() if measure == Measure.CANCELLATIONS else facts.complaints
        )
        return Decimal(sum(1 for at in dates if _in_window(at, facts.now, condition.within_days)))
    orders = _live_orders(facts, condition)
    if not orders or facts.now is None:
        return None
    elapsed = (facts.now - max(o.placed_at for o in orders)) // MICROSECOND
    return Decimal(elapsed) / Decimal(1_000_000)  # seconds; bounds are compared in seconds


def _between(value: Decimal | None, condition: MeasureBetween) -> bool:
    if value is None:
        return False
    scale = SECONDS_PER_DAY if condition.measure == Measure.DAYS_SINCE_LAST_PURCHASE else 1
    low = condition.at_least
    high = condition.at_most
    return (low is None or value >= low * scale) and (high is None or value <= high * scale)


def _contains(description: str | None, needle: str) -> bool:
    """SQL's strpos(lower(description), lower(needle)) > 0: a missing description has nothing."""
    return description is not None and needle in description.lower()


def _bought(facts: CustomerFacts, spec: rules.BoughtSpec) -> bool:
    orders = {o.order_id: o for o in facts.orders if o.order_id not in facts.cancellations}
    needle = spec.description_contains.lower() if spec.description_contains else None
    for line in facts.lines:
        order = orders.get(line.order_id)
        if (
            order is not None
            and (spec.product_ids is None or line.product_id in spec.product_ids)
            and (needle is None or _contains(line.description, needle))
            and (spec.categories is None or line.category in spec.categories)
            and _in_window(order.placed_at, facts.now, spec.within_days)
        ):
            return True
    return False


def matches(rule: Rule, facts: CustomerFacts) -> bool:
    """Whether the customer's facts satisfy the rule."""
    if isinstance(rule, AllOf):
        return all(matches(child, facts) for child in rule.all)
    if isinstance(rule, AnyOf):
        return any(matches(child, facts) for child in rule.any)
    if isinstance(rule, NotRule):
        return not matches(rule.not_, facts)
    if isinstance(rule, FieldIn):
        value = facts.profile.get(rule.field)
        return value is not None and value in rule.in_
    if isinstance(rule, MeasureBetween):
        return _between(measure_value(facts, rule), rule)
    if isinstance(rule, Bought):
        return _bought(facts, rule.bought)
    if isinstance(rule, Lifetime):
        return _lifetime_between(facts, rule.lifetime)
    assert isinstance(rule, Rfm)
    scores = facts.rfm.get(rule.rfm.currency)
    return scores is not None and scores in rfm_triples(rule.rfm)


def _lifetime_between(facts: CustomerFacts, spec: rules.LifetimeSpec) -> bool:
    """The figure within the bounds, compared as double precision like the SQL (a customer
    without a prediction in the currency has no figure)."""
    prediction = facts.lifetime.get(spec.currency)
    if prediction is None:
        return False
    value = lifetime_figure(prediction, spec.figure)
    low, high = spec.at_least, spec.at_most
    return (low is None or value >= float(low)) and (high is None or value <= float(high))


def bought_specs(rule: Rule) -> list[rules.BoughtSpec]:
    """The rule's "bought" conditions: evaluating it reads only the order lines one of them
    names by product, description or category (store.customer_facts loads no others)."""
    if isinstance(rule, Bought):
        return [rule.bought]
    return [spec for child in rules.children(rule) for spec in bought_specs(child)]


def lines_read(active: Sequence[Definition]) -> list[rules.BoughtSpec]:
    """The "bought" conditions of the active segments: the order lines their evaluation reads."""
    return [spec for definition in active for spec in bought_specs(definition.rule)]


def uses_categories(rule: Rule) -> bool:
    """Whether the rule asks which category a bought product is in: a reclassification of a
    product can move its buyers in or out."""
    return any(spec.categories is not None for spec in bought_specs(rule))


@dataclass(frozen=True)
class Definition:
    """An active operator segment."""

    segment: str
    rule: Rule
    time_dependent: bool


def definition(segment: str, stored_rule: Any, time_dependent: bool) -> Definition:
    return Definition(segment, RULE.validate_python(stored_rule), time_dependent)


def stored_rule(rule: Rule) -> Any:
    """The rule as JSON, as an operator writes it."""
    return RULE.dump_python(rule, mode="json", by_alias=True, exclude_none=True)


ENTERED_REASON = "matches the rule of segment {segment!r}"
LEFT_REASON = "no longer matches the rule of segment {segment!r}"
RETIRED_REASON = "segment {segment!r} was retired"


def reason(change: Membership) -> str:
    return (ENTERED_REASON if change.member else LEFT_REASON).format(segment=change.segment)


def moves(
    verdicts: Iterable[tuple[str, bool, Membership | None]], segment: str, at: datetime
) -> list[Membership]:
    """The membership changes of customers whose verdict differs from their membership."""
    changes = []
    for customer_id, member, current in verdicts:
        change = change_membership(current, customer_id, segment, member, at)
        if change is not None:
            changes.append(change)
    return changes


def announce(changes: Iterable[Membership], cause: Event, why: str | None = None) -> list[Derived]:
    """The derived events of membership changes, caused by `cause`."""
    return [
        segment_event(change, cause, why.format(segment=change.segment) if why else reason(change))
        for change in changes
    ]
