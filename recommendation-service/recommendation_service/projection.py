"""How orders and product views become recommendation statistics, and how recommendations rank.

Pure: no I/O, time comes from the events. Counts are sums and extremes, and a product's
description is last-writer-wins by event time, so they are the same whatever order events
arrive in. Distinct buyers and co-purchases count a customer's FIRST purchase of a product: a
late order is simply another first purchase or not, and a pair of products is counted for a
customer when the second of the two is first bought, whichever that is.

Refunds (crm.order.refunded.v1) are not folded for now: a returned product still counts as
bought by that customer, in popularity as in "customers who bought X also bought Y".
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from typing import Literal

from crm_shared.contracts.events import Event, OrderPlaced, ProductViewed

CO_PURCHASE_PARTNERS = 50
"""A first purchase is paired with at most this many of the customer's most recent products.

Wholesale customers of the retail data hold over 1,000 distinct products: pairing each new
product with all of them would cost thousands of upserts per order line, and a customer's
share of co_purchases would grow with the square of their range. The price of the bound:
co-purchase counts are independent of the order purchases arrive in only while a customer has
at most this many products before buying a new one; beyond that, which earlier products are
"the most recent" depends on the order in which purchases were folded.
"""

RECOMMENDATION_SEEDS = 100
"""Recommendations start from at most this many of the customer's most recently bought products,
so that a wholesale customer's request reads a bounded part of co_purchases."""

VIEW_BOOST = 1.5
"""Viewed-but-not-bought candidates score (co-buyers + 1) x VIEW_BOOST: having looked at a product
lifts it, and ranks it even when no co-purchase points to it."""

CustomerProduct = tuple[str, str]
"""(customer_id, product_id)"""
ProductPair = tuple[str, str]
"""Two product ids, the smaller first."""
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


@dataclass(frozen=True)
class PriorPurchases:
    """What was stored before the batch about the batch's customers."""

    bought: Set[CustomerProduct]
    """Which of the batch's (customer, product) pairs had been bought before."""
    recent: Mapping[str, Sequence[str]]
    """Each customer's most recently bought products, newest first, at most CO_PURCHASE_PARTNERS."""


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


def co_purchase_increments(
    first: Iterable[CustomerProduct],
    recent: Mapping[str, Sequence[str]],
    partners: int = CO_PURCHASE_PARTNERS,
) -> Counter[ProductPair]:
    """New co-buyers per pair of products, from first purchases in event order.

    Each first purchase pairs with the customer's `partners` most recent earlier products: the
    stored ones (`recent`, newest first), then those first bought earlier in this batch or
    earlier in the same order. A product repeated in the input counts once. Keys are unordered
    pairs written (smaller id, larger id); the store keeps each pair in both directions.
    """
    keys: list[ProductPair] = []
    history: dict[str, list[str]] = {}  # per customer, oldest first, so appending is cheap
    owned: dict[str, set[str]] = {}
    for customer_id, product_id in first:
        products = history.get(customer_id)
        if products is None:
            stored = list(islice(recent.get(customer_id, ()), partners))
            products = history[customer_id] = stored[::-1]
            owned[customer_id] = set(stored)
        if product_id in owned[customer_id]:
            continue
        keys.extend(
            (product_id, other) if product_id < other else (other, product_id)
            for other in islice(reversed(products), partners)
        )
        products.append(product_id)
        owned[customer_id].add(product_id)
    return Counter(keys)  # counting a list runs in C: much faster than += per pair


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


@dataclass(frozen=True, slots=True)
class ProductDelta:
    """What a batch adds to one product's statistics."""

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
    for purchase in batch:
        before = deltas.get(purchase.product_id, ProductDelta())
        newer = purchase.description is not None and (
            before.described_at is None or purchase.time >= before.described_at
        )
        deltas[purchase.product_id] = replace(
            before,
            orders=before.orders + 1,
            quantity=before.quantity + purchase.quantity,
            description=purchase.description if newer else before.description,
            described_at=purchase.time if newer else before.described_at,
        )
    for purchase in first:
        before = deltas.get(purchase.product_id, ProductDelta())
        deltas[purchase.product_id] = replace(before, buyers=before.buyers + 1)
    for (_, product_id), view in views.items():
        before = deltas.get(product_id, ProductDelta())
        deltas[product_id] = replace(before, views=before.views + view.views)
    return deltas


@dataclass(frozen=True, slots=True)
class Recommendation:
    product_id: str
    score: float
    """Co-purchase score, or the number of distinct buyers for the popular strategy."""
    co_buyers: int = 0
    viewed: bool = False


@dataclass(frozen=True)
class Recommendations:
    strategy: Strategy
    items: tuple[Recommendation, ...]


def score(co_buyers: int, viewed: bool) -> float:
    """Summed co-buyers, lifted for a product the customer looked at but did not buy."""
    return (co_buyers + 1) * VIEW_BOOST if viewed else float(co_buyers)


def recommend(
    bought: Set[str],
    co_buyers: Mapping[str, int],
    viewed: Set[str],
    popular: Sequence[tuple[str, int]],
    limit: int,
) -> Recommendations:
    """Rank what to offer a customer; products they bought are never offered.

    `co_buyers` sums, per candidate, the co-buyer counts with the customer's products; `popular`
    is (product, distinct buyers), most popular first. A customer who bought nothing, or whose
    products point nowhere, gets the popular products instead, and the strategy says so.
    """
    if bought:
        candidates = (co_buyers.keys() | viewed) - bought
        ranked = heapq.nsmallest(
            limit,
            (
                Recommendation(
                    p, score(co_buyers.get(p, 0), p in viewed), co_buyers.get(p, 0), p in viewed
                )
                for p in candidates
                if co_buyers.get(p, 0) > 0 or p in viewed
            ),
            key=lambda r: (-r.score, -r.co_buyers, r.product_id),
        )
        if ranked:
            return Recommendations("co-purchase", tuple(ranked))
    fallback = (Recommendation(p, float(buyers)) for p, buyers in popular if p not in bought)
    return Recommendations("popular", tuple(islice(fallback, limit)))
