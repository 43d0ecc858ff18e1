"""How orders and product views become recommendation statistics, and what may be recommended.

Pure: no I/O, time comes from the events. Counts are sums and extremes, and a product's
description is last-writer-wins by event time, so they are the same whatever order events
arrive in. Distinct buyers count a customer's FIRST purchase of a product: a late order is
simply another first purchase or not. Pairs of products ("also bought") are not counted here:
the fold marks the goods that gained a buyer and the worker's neighbour job recomputes them
from the customer-product table (store.refresh_similar_products), so they depend on which
customers bought what, never on batch boundaries.

Refunds (crm.order.refunded.v1) are not folded for now: a returned product still counts as
bought by that customer, in popularity as in "customers who bought X also bought Y".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from crm_shared.contracts.events import Event, OrderPlaced, ProductViewed

NEIGHBOURS_KEPT = 50
"""Similar products kept per product, most co-buyers first: also-bought returns at most this."""

RECOMMENDATION_SEEDS = 50
"""Recommendations start from at most this many of the customer's most recently bought products,
so that a wholesale customer's request reads a bounded part of similar_products."""

VIEW_BOOST = 1.5
"""Viewed-but-not-bought candidates score (co-buyers + 1) x VIEW_BOOST: having looked at a product
lifts it, and ranks it even when no co-purchase points to it."""

NOT_GOODS = frozenset(
    {"POST", "DOT", "C2", "M", "D", "S", "B", "PADS", "CRUK", "AMAZONFEE", "BANK CHARGES"}
)
"""Codes of the Online Retail data that are not products: postage (POST, DOT, C2 carriage),
manual adjustments (M, B bad debt, PADS), discounts (D), samples (S), fees and commissions."""
GIFT_VOUCHER_PREFIX = "GIFT_"
"""Gift vouchers: gift_0001_10, gift_0001_20, ..."""

CustomerProduct = tuple[str, str]
"""(customer_id, product_id)"""
Strategy = Literal["co-purchase", "popular"]


@dataclass(frozen=True, slots=True)
class Purchase:
    """One product in one order; several lines of the same product in an order are merged."""

    customer_id: str
    product_id: str
    quantity: int
    time: datetime
    description: str | None = None


def purchases(events: Iterable[Event]) -> list[Purchase]:
    """The batch's orders as purchases, in event-time order (ties keep batch order)."""
    orders = sorted((e for e in events if isinstance(e.data, OrderPlaced)), key=lambda e: e.time)
    found: list[Purchase] = []
    for event in orders:
        assert isinstance(event.data, OrderPlaced)
        merged: dict[str, Purchase] = {}
        for line in event.data.lines:
            before = merged.get(line.product_id)
            if before is None:
                merged[line.product_id] = Purchase(
                    event.customer_id, line.product_id, line.quantity, event.time, line.description
                )
            else:
                merged[line.product_id] = replace(
                    before,
                    quantity=before.quantity + line.quantity,
                    description=line.description or before.description,
                )
        found.extend(merged.values())
    return found


def first_purchases(batch: Iterable[Purchase], bought: Set[CustomerProduct]) -> list[Purchase]:
    """Purchases of a product the customer never bought before, each pair once, in batch order."""
    seen: set[CustomerProduct] = set()
    first: list[Purchase] = []
    for purchase in batch:
        key = (purchase.customer_id, purchase.product_id)
        if key in bought or key in seen:
            continue
        seen.add(key)
        first.append(purchase)
    return first


def is_goods(product_id: str) -> bool:
    """Whether a product code names goods, which may be recommended and counted as popular."""
    code = product_id.strip().upper()
    return code not in NOT_GOODS and not code.startswith(GIFT_VOUCHER_PREFIX)


def neighbours_to_refresh(first: Iterable[Purchase]) -> list[str]:
    """Goods that gained a buyer, sorted: their similar products must be recomputed."""
    return sorted({p.product_id for p in first if is_goods(p.product_id)})


@dataclass(frozen=True, slots=True)
class CustomerProductDelta:
    """What a batch adds to one customer's record of one product."""

    times_bought: int
    first_bought_at: datetime
    last_bought_at: datetime


def customer_product_deltas(
    batch: Iterable[Purchase],
) -> dict[CustomerProduct, CustomerProductDelta]:
    """Orders per (customer, product) in the batch, with their first and last time."""
    deltas: dict[CustomerProduct, CustomerProductDelta] = {}
    for purchase in batch:
        key = (purchase.customer_id, purchase.product_id)
        before = deltas.get(key)
        if before is None:
            deltas[key] = CustomerProductDelta(1, purchase.time, purchase.time)
        else:
            deltas[key] = CustomerProductDelta(
                before.times_bought + 1,
                min(before.first_bought_at, purchase.time),
                max(before.last_bought_at, purchase.time),
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


def product_deltas(
    batch: Iterable[Purchase],
    first: Iterable[Purchase],
    views: Mapping[CustomerProduct, ViewDelta],
) -> dict[str, ProductDelta]:
    """Orders, quantity, new distinct buyers, views and the newest description per product."""
    deltas: dict[str, ProductDelta] = {}

    def delta(product_id: str) -> ProductDelta:
        found = deltas.get(product_id)
        if found is None:
            found = deltas[product_id] = ProductDelta(is_goods(product_id))
        return found

    for purchase in batch:
        product = delta(purchase.product_id)
        product.orders += 1
        product.quantity += purchase.quantity
        if purchase.description is not None and (
            product.described_at is None or purchase.time >= product.described_at
        ):
            product.description = purchase.description
            product.described_at = purchase.time
    for purchase in first:
        delta(purchase.product_id).buyers += 1
    for (_, product_id), view in views.items():
        delta(product_id).views += view.views
    return deltas
