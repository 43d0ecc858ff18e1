"""How orders, refunds and product views become recommendation statistics, and what may be
recommended.

Pure: no I/O, time comes from the events. Counts are sums and extremes, and a product's
description is last-writer-wins by event time, so they are the same whatever order events
arrive in. A customer is a buyer of a product while they kept some of it: units ordered minus
units refunded above zero, a sum, so a refund folded before its order changes nothing in the
end. Refunds are negative signals: a customer who returned everything of a product no longer
votes for it, in popularity as in similar products. Pairs of products ("also bought") are not
counted here: the fold marks the goods that gained or lost a buyer and the worker's neighbour job
recomputes the similar products from the customer-product table (`models.nearest_neighbours`),
so they depend on who kept what, never on batch boundaries.

A cancelled order (`OrderCancelled`) counts as not bought, like an order refunded in full, and the
refunds naming it are part of the cancellation: neither counts. Every order, and every refund
naming an order, is kept as an `OrderEntry` until its order is cancelled: a cancellation folded
after them takes their counts back (`taken_back`, sign -1), one folded before them makes them
count for nothing (sign 0), so the sums are the same whatever the order of arrival. Extremes
(first and last purchase times, first sale, description) include cancelled orders either way:
they cannot be taken back from a LEAST/GREATEST, and counting them always keeps them exact.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from crm_shared.contracts.events import (
    Event,
    OrderCancelled,
    OrderPlaced,
    OrderRefunded,
    ProductViewed,
)

NEIGHBOURS_KEPT = 50
"""Similar products served per product, most similar first: also-bought returns at most this."""
NEIGHBOURS_RESERVE = 10
"""Entries a list computed in full keeps beyond NEIGHBOURS_KEPT, so that a purchase that moves a
product off the end of a full list shortens it instead of costing its whole row
(`recommendation_service.neighbours`)."""

NOT_GOODS = frozenset(
    {"POST", "DOT", "C2", "M", "D", "S", "B", "PADS", "CRUK", "AMAZONFEE", "BANK CHARGES"}
)
"""Codes of the Online Retail data that are not products: postage (POST, DOT, C2 carriage),
manual adjustments (M, B bad debt, PADS), discounts (D), samples (S), fees and commissions."""
GIFT_VOUCHER_PREFIX = "GIFT_"
"""Gift vouchers: gift_0001_10, gift_0001_20, ..."""

CustomerProduct = tuple[str, str]
"""(customer_id, product_id)"""
CustomerOrder = tuple[str, str]
"""(customer_id, order_id): orders are keyed by customer, like their events"""
Strategy = Literal["personal", "popular"]


class Purchase(NamedTuple):
    """One product in one order (or, from `refunds`, in one refund); several lines of the same
    product in it are merged. A named tuple, not a frozen dataclass: the fold makes one per line
    and a frozen dataclass's __init__ (a setattr per field) was a measurable share of it."""

    customer_id: str
    product_id: str
    quantity: int
    time: datetime
    description: str | None = None
    country: str | None = None
    """The order's (or refund's) country, if it names one: trending is kept per country."""
    order_id: str | None = None
    """The order (a refund's: the order it names, if any): its cancellation finds it by this."""
    event: tuple[str, str] = ("", "")
    """(source, id) of the event it comes from: its order entry's key."""
    sign: int = 1
    """How it counts: 1 as it comes; 0 its order was cancelled before it was folded (an order's
    times and description still count, nothing else); -1 taken back by the cancellation of its
    order, folded after it."""
    segments: Sequence[str] | None = None
    """The segments it counted in when it was folded (what is taken back); None: its customer's
    at this fold."""


def purchases(events: Iterable[Event]) -> list[Purchase]:
    """The batch's orders as purchases, in event-time order (ties keep batch order)."""
    return _merged_lines(events, OrderPlaced)


def refunds(events: Iterable[Event]) -> list[Purchase]:
    """The batch's refunds, one per product and refund, in event-time order: units refunded."""
    return _merged_lines(events, OrderRefunded)


def _merged_lines(
    events: Iterable[Event], kind: type[OrderPlaced] | type[OrderRefunded]
) -> list[Purchase]:
    chosen = sorted((e for e in events if isinstance(e.data, kind)), key=lambda e: e.time)
    found: list[Purchase] = []
    for event in chosen:
        data = event.data
        assert isinstance(data, OrderPlaced | OrderRefunded)
        merged: dict[str, list[Any]] = {}
        for line in data.lines:
            before = merged.get(line.product_id)
            if before is None:
                merged[line.product_id] = [line.quantity, line.description]
            else:
                before[0] += line.quantity
                before[1] = line.description or before[1]
        source_id = (event.source, event.id)
        found.extend(
            Purchase(
                event.customer_id,
                product_id,
                quantity,
                event.time,
                description,
                data.country,
                data.order_id,
                source_id,
            )
            for product_id, (quantity, description) in merged.items()
        )
    return found


def cancellations(events: Iterable[Event]) -> set[CustomerOrder]:
    """The orders the batch cancels."""
    return {
        (event.customer_id, event.data.order_id)
        for event in events
        if isinstance(event.data, OrderCancelled)
    }


def orders_named(items: Iterable[Purchase]) -> set[CustomerOrder]:
    """The orders these purchases and refunds are or name: whether they are cancelled matters."""
    return {(item.customer_id, item.order_id) for item in items if item.order_id is not None}


def counted(orders: Iterable[Purchase], cancelled: Collection[CustomerOrder]) -> list[Purchase]:
    """The batch's purchases, those of cancelled orders with sign 0 (their times only count)."""
    return [
        item._replace(sign=0) if (item.customer_id, item.order_id) in cancelled else item
        for item in orders
    ]


def not_cancelled(
    refunded: Iterable[Purchase], cancelled: Collection[CustomerOrder]
) -> list[Purchase]:
    """The batch's refunds but those naming a cancelled order: part of its cancellation."""
    return [item for item in refunded if (item.customer_id, item.order_id) not in cancelled]


class OrderEntry(NamedTuple):
    """An order, or a refund naming one, as it was folded: what cancelling the order takes back
    (its lines as (product, units), the segments it counted in for trending)."""

    customer_id: str
    order_id: str
    source: str
    event_id: str
    refund: bool
    time: datetime
    country: str | None
    segments: list[str]
    lines: list[tuple[str, int]]


def order_entries(
    orders: Iterable[Purchase],
    refunded: Iterable[Purchase],
    segments_of: Mapping[str, Collection[str]],
) -> list[OrderEntry]:
    """The entries of the batch's orders and refunds naming an order that counted as they came
    (sign 1), one per event, with their customer's segments at this fold. Every order of every
    batch passes here: one entry per event, its lines appended in place."""
    entries: dict[tuple[str, str, bool], OrderEntry] = {}
    for items, refund in ((orders, False), (refunded, True)):
        for item in items:
            if item.sign != 1 or item.order_id is None:
                continue
            key = (*item.event, refund)
            entry = entries.get(key)
            if entry is None:
                entry = entries[key] = OrderEntry(
                    item.customer_id,
                    item.order_id,
                    *item.event,
                    refund,
                    item.time,
                    item.country,
                    sorted(segments_of.get(item.customer_id, ())),
                    [],
                )
            entry.lines.append((item.product_id, item.quantity))
    return list(entries.values())


def taken_back(entries: Iterable[OrderEntry]) -> tuple[list[Purchase], list[Purchase]]:
    """The purchases and refunds that cancelled orders take back (sign -1), in the scopes they
    counted in when folded."""
    orders: list[Purchase] = []
    refunded: list[Purchase] = []
    for entry in entries:
        found = refunded if entry.refund else orders
        found.extend(
            Purchase(
                entry.customer_id,
                product,
                units,
                entry.time,
                None,
                entry.country,
                entry.order_id,
                (entry.source, entry.event_id),
                -1,
                entry.segments,
            )
            for product, units in entry.lines
        )
    return orders, refunded


def returned_units(refunded: Iterable[Purchase]) -> dict[CustomerProduct, int]:
    """Units refunded (or, taken back, given back) per (customer, product)."""
    units: dict[CustomerProduct, int] = {}
    for refund in refunded:
        key = (refund.customer_id, refund.product_id)
        units[key] = units.get(key, 0) + refund.sign * refund.quantity
    return units


def units_kept_deltas(
    batch: Iterable[Purchase], returned: Mapping[CustomerProduct, int]
) -> dict[CustomerProduct, int]:
    """Units the batch adds to (orders) or takes from (refunds) what each customer kept; a
    cancelled order adds none (its pair is still listed, for its times)."""
    deltas = {key: -units for key, units in returned.items()}
    for purchase in batch:
        key = (purchase.customer_id, purchase.product_id)
        deltas[key] = deltas.get(key, 0) + purchase.sign * purchase.quantity
    return deltas


def buyer_changes(
    kept_before: Mapping[CustomerProduct, int], deltas: Mapping[CustomerProduct, int]
) -> dict[CustomerProduct, int]:
    """+1 where a customer became a buyer of a product (kept none before, some after), -1 where
    they stopped being one (returned all they kept); other pairs are left out."""
    changes: dict[CustomerProduct, int] = {}
    for key, delta in deltas.items():
        before = kept_before.get(key, 0)
        change = int(before + delta > 0) - int(before > 0)
        if change:
            changes[key] = change
    return changes


def is_goods(product_id: str) -> bool:
    """Whether a product code names goods, which may be recommended and counted as popular."""
    code = product_id.strip().upper()
    return code not in NOT_GOODS and not code.startswith(GIFT_VOUCHER_PREFIX)


def neighbours_to_refresh(changes: Mapping[CustomerProduct, int]) -> list[str]:
    """Goods that gained or lost a buyer, sorted: their similar products must be recomputed."""
    return sorted({product for _, product in changes if is_goods(product)})


@dataclass(frozen=True, slots=True)
class CustomerProductDelta:
    """What a batch adds to one customer's record of one product; no times when the batch only
    refunded it."""

    times_bought: int
    first_bought_at: datetime | None
    last_bought_at: datetime | None
    units_kept: int


def customer_product_deltas(
    batch: Iterable[Purchase], units_kept: Mapping[CustomerProduct, int]
) -> dict[CustomerProduct, CustomerProductDelta]:
    """Orders per (customer, product) in the batch (less those taken back), their first and
    last time (cancelled orders' too), and the units kept (`units_kept_deltas`, refunds
    included)."""
    deltas: dict[CustomerProduct, CustomerProductDelta] = {
        key: CustomerProductDelta(0, None, None, units) for key, units in units_kept.items()
    }
    for purchase in batch:
        key = (purchase.customer_id, purchase.product_id)
        before = deltas[key]
        dated = purchase.sign >= 0
        deltas[key] = CustomerProductDelta(
            before.times_bought + purchase.sign,
            min(before.first_bought_at or purchase.time, purchase.time)
            if dated
            else before.first_bought_at,
            max(before.last_bought_at or purchase.time, purchase.time)
            if dated
            else before.last_bought_at,
            before.units_kept,
        )
    return deltas


@dataclass(frozen=True, slots=True)
class ViewDelta:
    views: int
    last_viewed_at: datetime


def view_deltas(events: Iterable[Event]) -> dict[CustomerProduct, ViewDelta]:
    """Views per (customer, product) in the batch, with the latest view time."""
    deltas: dict[CustomerProduct, ViewDelta] = {}
    for event in events:
        if not isinstance(event.data, ProductViewed):
            continue
        key = (event.customer_id, event.data.product_id)
        before = deltas.get(key)
        deltas[key] = (
            ViewDelta(1, event.time)
            if before is None
            else ViewDelta(before.views + 1, max(before.last_viewed_at, event.time))
        )
    return deltas


@dataclass(slots=True)
class ProductDelta:
    """What a batch adds to one product's statistics; built in place (replace() per purchase
    was a measurable share of the fold)."""

    goods: bool
    orders: int = 0
    quantity: int = 0
    buyers: int = 0
    views: int = 0
    description: str | None = None
    described_at: datetime | None = None
    """Event time of the description; the stored one is replaced only by a newer one."""
    first_sold_at: datetime | None = None
    """Event time of the batch's earliest purchase: the stored one is the earliest of all."""


def product_deltas(
    batch: Iterable[Purchase],
    changes: Mapping[CustomerProduct, int],
    views: Mapping[CustomerProduct, ViewDelta],
) -> dict[str, ProductDelta]:
    """Orders, quantity (less those taken back), the change in distinct buyers
    (`buyer_changes`), views and the newest description and first sale (cancelled orders'
    too) per product."""
    deltas: dict[str, ProductDelta] = {}

    def delta(product_id: str) -> ProductDelta:
        found = deltas.get(product_id)
        if found is None:
            found = deltas[product_id] = ProductDelta(is_goods(product_id))
        return found

    for purchase in batch:
        product = delta(purchase.product_id)
        product.orders += purchase.sign
        product.quantity += purchase.sign * purchase.quantity
        if purchase.sign < 0:
            continue
        if product.first_sold_at is None or purchase.time < product.first_sold_at:
            product.first_sold_at = purchase.time
        if purchase.description is not None and (
            product.described_at is None or purchase.time >= product.described_at
        ):
            product.description = purchase.description
            product.described_at = purchase.time
    for (_, product_id), change in changes.items():
        delta(product_id).buyers += change
    for (_, product_id), view in views.items():
        delta(product_id).views += view.views
    return deltas
