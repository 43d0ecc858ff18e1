"""Commerce facts and the purchase summary. Pure: no I/O.

Each order, refund and cancellation becomes one row keyed by its business id (order, refund).
An id seen twice keeps its first event by (event time, source, event id), the order the SQL
guard applies too, so the stored rows are the same whatever the batches and the order of
arrival. Every figure (counts, revenue net of refunds, averages) is derived from those rows when
read, per currency: amounts in different currencies are never added together.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

from crm_shared.contracts.events import Event, OrderCancelled, OrderPlaced, OrderRefunded


class OrderRow(NamedTuple):
    """One row of `orders`, its fields the table's columns in order. The rows are named tuples:
    one per order line is built on the fold's hot path, and COPY takes them as they are."""

    customer_id: str
    order_id: str
    source: str
    event_id: str
    placed_at: datetime
    channel: str
    currency: str
    amount: Decimal
    line_count: int
    items: int
    country: str | None


class LineRow(NamedTuple):
    customer_id: str
    order_id: str
    source: str
    event_id: str
    line_no: int
    product_id: str
    description: str | None
    quantity: int
    unit_price: Decimal


class RefundRow(NamedTuple):
    customer_id: str
    refund_id: str
    source: str
    event_id: str
    refunded_at: datetime
    order_id: str | None
    currency: str
    amount: Decimal
    line_count: int
    items: int
    reason: str | None


class CancellationRow(NamedTuple):
    customer_id: str
    order_id: str
    source: str
    event_id: str
    cancelled_at: datetime
    reason: str | None


@dataclass
class CommerceRows:
    """What a batch writes: one row per business id (the first event wins), every line."""

    orders: list[OrderRow]
    lines: list[LineRow]
    refunds: list[RefundRow]
    cancellations: list[CancellationRow]


def _precedence(event: Event) -> tuple[datetime, str, str]:
    """Which of two events naming the same id is kept: the earlier by time, then source, id."""
    return (event.time, event.source, event.id)


Row = TypeVar("Row")


def _first_per_key(keyed: Iterable[tuple[tuple[str, str], Event, Row]]) -> list[Row]:
    kept: dict[tuple[str, str], tuple[tuple[datetime, str, str], Row]] = {}
    for key, event, row in keyed:
        rank = _precedence(event)
        found = kept.get(key)
        if found is None or rank < found[0]:
            kept[key] = (rank, row)
    return [row for _, row in kept.values()]


def commerce_rows(events: Iterable[Event]) -> CommerceRows:
    """The rows a batch's orders, refunds and cancellations write (other events are skipped)."""
    orders: list[tuple[tuple[str, str], Event, OrderRow]] = []
    lines: list[LineRow] = []
    refunds: list[tuple[tuple[str, str], Event, RefundRow]] = []
    cancellations: list[tuple[tuple[str, str], Event, CancellationRow]] = []
    for event in events:
        data = event.data
        who, source, eid = event.customer_id, event.source, event.id
        if type(data) is OrderPlaced:
            orders.append(
                (
                    (who, data.order_id),
                    event,
                    OrderRow(
                        who,
                        data.order_id,
                        source,
                        eid,
                        event.time,
                        data.channel.value,
                        data.currency,
                        data.total,
                        len(data.lines),
                        sum(line.quantity for line in data.lines),
                        data.country,
                    ),
                )
            )
            lines.extend(
                LineRow(
                    who,
                    data.order_id,
                    source,
                    eid,
                    number,
                    line.product_id,
                    line.description,
                    line.quantity,
                    line.unit_price,
                )
                for number, line in enumerate(data.lines, start=1)
            )
        elif type(data) is OrderRefunded:
            refunds.append(
                (
                    (who, data.refund_id),
                    event,
                    RefundRow(
                        who,
                        data.refund_id,
                        source,
                        eid,
                        event.time,
                        data.order_id,
                        data.currency,
                        data.total,
                        len(data.lines),
                        sum(line.quantity for line in data.lines),
                        data.reason,
                    ),
                )
            )
        elif type(data) is OrderCancelled:
            cancellations.append(
                (
                    (who, data.order_id),
                    event,
                    CancellationRow(who, data.order_id, source, eid, event.time, data.reason),
                )
            )
    return CommerceRows(
        _first_per_key(orders), lines, _first_per_key(refunds), _first_per_key(cancellations)
    )


@dataclass
class WrittenIds:
    """The business ids (and order lines) a rebuild has written so far: rows naming a new one
    can be appended, the others go through the first-wins upsert."""

    orders: set[tuple[str, str]] = field(default_factory=set)
    lines: set[tuple[str, str, str, str]] = field(default_factory=set)
    refunds: set[tuple[str, str]] = field(default_factory=set)
    cancellations: set[tuple[str, str]] = field(default_factory=set)


def _split(
    rows: Iterable[Row], key: Callable[[Row], Hashable], written: set[Any]
) -> tuple[list[Row], list[Row]]:
    """Rows whose key `written` lacked before this call, and the others (an order's lines share
    one key); the new keys are added to `written`."""
    new: list[Row] = []
    known: list[Row] = []
    added: set[Any] = set()
    for row in rows:
        found = key(row)
        if found in written:
            known.append(row)
        else:
            added.add(found)
            new.append(row)
    written |= added
    return new, known


def split_new(rows: CommerceRows, written: WrittenIds) -> tuple[CommerceRows, CommerceRows]:
    """A batch's rows as (those whose id nothing wrote before, the rest), recording the new ids
    in `written`. The same rows as `commerce_rows` gives: only how they are written differs."""
    orders = _split(rows.orders, lambda r: (r.customer_id, r.order_id), written.orders)
    lines = _split(
        rows.lines, lambda r: (r.customer_id, r.order_id, r.source, r.event_id), written.lines
    )
    refunds = _split(rows.refunds, lambda r: (r.customer_id, r.refund_id), written.refunds)
    cancellations = _split(
        rows.cancellations, lambda r: (r.customer_id, r.order_id), written.cancellations
    )
    return (
        CommerceRows(orders[0], lines[0], refunds[0], cancellations[0]),
        CommerceRows(orders[1], lines[1], refunds[1], cancellations[1]),
    )


@dataclass(frozen=True)
class CurrencyTotals:
    """One customer's purchases in one currency, as the store derives them from the facts."""

    currency: str
    orders: int
    gross_revenue: Decimal
    refunded: Decimal
    net_revenue: Decimal
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    refunds: int = 0
    items: int = 0
    """Items ordered less items refunded."""


@dataclass(frozen=True)
class PurchaseCounts:
    """What of a customer's purchases adds up across currencies: counts and dates, not money."""

    orders: int
    refunds: int
    items: int
    cancelled_orders: int
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None


def counts_across(totals: Sequence[CurrencyTotals], cancelled_orders: int) -> PurchaseCounts:
    """The counts and dates of the per-currency totals, added up (money stays per currency)."""
    firsts = [t.first_purchase_at for t in totals if t.first_purchase_at is not None]
    lasts = [t.last_purchase_at for t in totals if t.last_purchase_at is not None]
    return PurchaseCounts(
        orders=sum(t.orders for t in totals),
        refunds=sum(t.refunds for t in totals),
        items=sum(t.items for t in totals),
        cancelled_orders=cancelled_orders,
        first_purchase_at=min(firsts, default=None),
        last_purchase_at=max(lasts, default=None),
    )


@dataclass(frozen=True)
class CurrencySummary:
    currency: str
    orders: int
    gross_revenue: Decimal
    refunded: Decimal
    net_revenue: Decimal
    average_order_value: Decimal | None
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    mean_days_between_purchases: Decimal | None
    average_yearly_purchase: Decimal | None


def summarise(totals: CurrencyTotals) -> CurrencySummary:
    """The averages of one currency's totals.

    Average order value: net revenue / orders. Mean days between purchases: the span from the
    first to the last purchase over the gaps between them (orders - 1). Average yearly purchase:
    net revenue over the calendar years from the first purchase's year to the last's, inclusive
    (a year without purchases counts as zero), so it needs no clock and replays exactly.
    """
    first, last = totals.first_purchase_at, totals.last_purchase_at
    mean_gap = None
    if first is not None and last is not None and totals.orders > 1:
        span_days = Decimal((last - first).total_seconds()) / 86400
        mean_gap = round(span_days / (totals.orders - 1), 2)
    yearly = None
    if first is not None and last is not None:
        yearly = round(totals.net_revenue / (last.year - first.year + 1), 2)
    average = round(totals.net_revenue / totals.orders, 2) if totals.orders else None
    return CurrencySummary(
        currency=totals.currency,
        orders=totals.orders,
        gross_revenue=totals.gross_revenue,
        refunded=totals.refunded,
        net_revenue=totals.net_revenue,
        average_order_value=average,
        first_purchase_at=first,
        last_purchase_at=last,
        mean_days_between_purchases=mean_gap,
        average_yearly_purchase=yearly,
    )


def favourites(counts: Mapping[str, int], limit: int = 3) -> list[str]:
    """The most frequent values first (ties by name, so the answer is stable)."""
    ranked: Sequence[tuple[str, int]] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [name for name, _ in ranked[:limit]]
