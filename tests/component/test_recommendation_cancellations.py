"""Cancelled orders on real PostgreSQL (no Kafka): an order cancelled counts as not bought, and
the refunds naming it count for nothing, in every table the fold keeps (what customers kept,
product counts, trending for everyone, per country and per segment, similar products), whatever
the batch boundaries and whether the cancellation is folded before or after the order and its
refunds: the stored state equals a plain computation from the log without the cancelled orders.
Times (first and last purchase, first sale, trending's newest purchase) count every order."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.events import build_event
from recommendation_service import store, trending
from recommendation_service.projection import NEIGHBOURS_KEPT
from recommendation_service.worker import PROJECTION
from tests.component.test_recommendation_neighbours import T0, fold, pool, stored_lists
from tests.similar_products import plain_similar_products

pytestmark = pytest.mark.component
__all__ = ["pool"]

VIP = "C0"
"""The one customer in segment vip, from the start of the log."""


@dataclass(frozen=True)
class Fact:
    """An order (refund_id None) or a refund, naming its order or not."""

    customer: str
    order_id: str | None
    refund_id: str | None
    country: str | None
    time: datetime
    lines: tuple[tuple[str, int], ...]


def _event(fact: Fact) -> dict[str, Any]:
    data: dict[str, Any] = {
        "lines": [{"product_id": p, "quantity": q, "unit_price": "1"} for p, q in fact.lines],
        "country": fact.country,
    }
    if fact.order_id is not None:
        data["order_id"] = fact.order_id
    if fact.refund_id is None:
        kind, key = "placed", fact.order_id
    else:
        kind, key = "refunded", fact.refund_id
        data["refund_id"] = fact.refund_id
    return build_event(
        f"crm.order.{kind}.v1", fact.customer, data, source="shop", time=fact.time, event_id=key
    )


def _cancellation(customer: str, order_id: str, n: int) -> dict[str, Any]:
    return build_event(
        "crm.order.cancelled.v1",
        customer,
        {"order_id": order_id, "reason": "changed their mind"},
        source="shop",
        time=T0 + timedelta(days=40, minutes=n),
        event_id=f"cancel-{order_id}-{n}",
    )


def _log(seed: int, count: int) -> tuple[list[dict[str, Any]], list[Fact], set[str]]:
    """Orders, a quarter refunded in part (naming their order, some before it), a few refunds
    naming no order, a third of the orders cancelled: before the order, between it and its
    refund, or after both (some twice). Returns the events, the facts and the cancelled ids."""
    rng = random.Random(seed)
    products = [f"P{i:02}" for i in range(30)] + ["POST"]
    events: list[dict[str, Any]] = [
        build_event(
            "crm.segment.entered.v1",
            VIP,
            {"segment": "vip", "version": 1, "reason": "big spender"},
            source="profile-service",
            time=T0,
            event_id="seg-1",
        )
    ]
    facts: list[Fact] = []
    cancelled: set[str] = set()
    for n in range(count):
        customer = f"C{rng.randrange(8)}"
        country = rng.choice(["GB", "FR", None])
        basket = sorted(set(rng.choices(products, k=rng.randint(1, 5))))
        placed = Fact(
            customer,
            f"O{n}",
            None,
            country,
            T0 + timedelta(hours=n * 7),
            tuple((p, rng.randint(1, 3)) for p in basket),
        )
        group = [_event(placed)]
        facts.append(placed)
        if rng.random() < 0.25:
            refunded = Fact(
                customer,
                placed.order_id if rng.random() < 0.8 else None,
                f"R{n}",
                country,
                placed.time + timedelta(days=2),
                placed.lines[: rng.randint(1, len(placed.lines))],
            )
            facts.append(refunded)
            group.insert(rng.choice([0, 1]), _event(refunded))
        if rng.random() < 1 / 3:
            cancelled.add(f"O{n}")
            for repeat in range(rng.choice([1, 1, 2])):
                group.insert(rng.randint(0, len(group)), _cancellation(customer, f"O{n}", repeat))
        events += group
    events.append(_cancellation("C1", "NEVER-PLACED", 0))
    return events, facts, cancelled


def _plain_state(facts: list[Fact], cancelled: set[str]) -> dict[str, dict[Any, Any]]:
    """The tables as the fold should leave them, computed plainly: counts from the orders not
    cancelled and the refunds not naming a cancelled order, times from every order."""
    half_life = trending.DEFAULT_HALF_LIFE_DAYS
    kept: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, 0, None, None])
    product: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0, None])
    trend: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, 0, None])
    for fact in facts:
        counts = fact.order_id not in cancelled
        order = fact.refund_id is None
        scopes = [""]
        if fact.country is not None:
            scopes.append(f"country:{fact.country}")
        if fact.customer == VIP:
            scopes.append("segment:vip")
        for product_id, units in fact.lines:
            row = kept[fact.customer, product_id]
            if counts:
                row[0] += order
                row[1] += units if order else -units
            if order:
                row[2] = min(row[2] or fact.time, fact.time)
                row[3] = max(row[3] or fact.time, fact.time)
                stats = product[product_id]
                stats[0] += counts
                stats[1] += units * counts
                stats[3] = min(stats[3] or fact.time, fact.time)
            for scope in scopes:
                trended = trend[scope, product_id]
                if counts:
                    sign = 1 if order else -1
                    trended[0] += sign * trending.weight(fact.time, half_life)
                    trended[1] += order
                if order:
                    trended[2] = max(trended[2] or fact.time, fact.time)
    for (_, product_id), row in kept.items():
        product[product_id][2] += row[1] > 0
    return _meaningful(
        {
            "customer_products": {key: tuple(row) for key, row in kept.items()},
            "products": {key: tuple(row) for key, row in product.items()},
            "trending": {key: tuple(row) for key, row in trend.items()},
        }
    )


def _meaningful(tables: dict[str, dict[Any, tuple[Any, ...]]]) -> dict[str, dict[Any, Any]]:
    """Without the rows that count nothing and have no time: a refund of a cancelled order
    folded before the cancellation leaves such a row, one folded after it leaves none."""
    return {
        name: {key: row for key, row in rows.items() if any(row)} for name, rows in tables.items()
    }


async def _stored_state(pool: asyncpg.Pool) -> dict[str, dict[Any, Any]]:
    async with pool.acquire() as conn:
        kept = await conn.fetch(
            "SELECT customer_id, product_id, times_bought, units_kept, first_bought_at,"
            " last_bought_at FROM customer_products"
        )
        products = await conn.fetch(
            "SELECT product_id, orders, quantity, buyers, first_sold_at FROM products"
        )
        trend = await conn.fetch(
            "SELECT scope, product_id, score, purchases, last_bought_at FROM trending"
        )
    return _meaningful(
        {
            "customer_products": {(row[0], row[1]): tuple(row[2:]) for row in kept},
            "products": {row[0]: tuple(row[1:]) for row in products},
            "trending": {(row[0], row[1]): (int(row[2]), row[3], row[4]) for row in trend},
        }
    )


@pytest.mark.parametrize("batch", [1, 3, 100])
async def test_a_cancelled_order_counts_as_not_bought_whatever_the_batches_and_order(
    pool: asyncpg.Pool, batch: int
) -> None:
    events, facts, cancelled = _log(seed=5, count=120)
    await fold(pool, events, batch, job_every=1)
    assert await _stored_state(pool) == _plain_state(facts, cancelled)
    not_cancelled = [_event(fact) for fact in facts if fact.order_id not in cancelled]
    assert await stored_lists(pool) == plain_similar_products(not_cancelled, NEIGHBOURS_KEPT)
    async with pool.acquire() as conn:
        entries = await conn.fetch("SELECT DISTINCT order_id FROM order_entries")
    assert cancelled and not cancelled & {row["order_id"] for row in entries}


async def test_an_entry_written_as_json_text_before_migration_012_is_taken_back_alike(
    pool: asyncpg.Pool,
) -> None:
    """Entries used to hold their segments and lines as JSON text inside jsonb; migration 012
    unwraps them, so a cancellation reads an old entry as it reads a new one."""
    migration = PROJECTION.migrations / "012_order_entries_json.sql"
    async with pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO order_entries (customer_id, order_id, source, event_id, refund, at,
                                       country, segments, lines)
            VALUES ('C1', 'O1', 'shop', 'O1', false, $1, 'GB', to_jsonb('["vip"]'::text),
                    to_jsonb('[["P1", 2], ["P2", 1]]'::text))
            """,
            T0,
        )
        await conn.execute(migration.read_text())
        (entry,) = await store.cancel_orders(conn, [("C1", "O1")])
    assert (entry.segments, entry.lines, entry.time) == (["vip"], [("P1", 2), ("P2", 1)], T0)
