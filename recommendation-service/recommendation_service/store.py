"""All SQL of the recommendation service. The caller owns the transaction.

Writes are unnest-based upserts of per-batch aggregates, sorted by key in SQL, so that two
workers folding overlapping products lock rows in the same order instead of deadlocking.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

import asyncpg

from crm_shared.runtime.db import columns
from recommendation_service.projection import (
    CustomerProduct,
    CustomerProductDelta,
    PriorPurchases,
    ProductDelta,
    ProductPair,
    ViewDelta,
)


async def prior_purchases(
    conn: asyncpg.Connection, batch: Collection[CustomerProduct], recent: int
) -> PriorPurchases:
    """In one query: which of these pairs were bought before, and each customer's recent products.

    Not locked: one customer's orders are on one partition (keyed by customer), so only one
    worker folds a given customer at a time.
    """
    rows = await conn.fetch(
        """
        WITH wanted AS (
            SELECT * FROM unnest($1::text[], $2::text[]) AS w(customer_id, product_id)
        )
        SELECT c.customer_id, r.product_id, r.rank
        FROM (SELECT DISTINCT customer_id FROM wanted) AS c
        CROSS JOIN LATERAL (
            SELECT cp.product_id,
                   row_number() OVER (ORDER BY cp.last_bought_at DESC, cp.product_id DESC) AS rank
            FROM customer_products cp
            WHERE cp.customer_id = c.customer_id
            ORDER BY cp.last_bought_at DESC, cp.product_id DESC
            LIMIT $3
        ) AS r
        UNION ALL
        SELECT cp.customer_id, cp.product_id, NULL
        FROM wanted JOIN customer_products cp USING (customer_id, product_id)
        """,
        [customer_id for customer_id, _ in batch],
        [product_id for _, product_id in batch],
        recent,
    )
    bought = {(row["customer_id"], row["product_id"]) for row in rows}
    ranked: dict[str, list[tuple[int, str]]] = {}
    for row in rows:
        if row["rank"] is not None:
            ranked.setdefault(row["customer_id"], []).append((row["rank"], row["product_id"]))
    return PriorPurchases(
        bought=bought,
        recent={c: [product for _, product in sorted(items)] for c, items in ranked.items()},
    )


async def add_customer_products(
    conn: asyncpg.Connection, deltas: Mapping[CustomerProduct, CustomerProductDelta]
) -> None:
    if not deltas:
        return
    values = deltas.values()
    await conn.execute(
        """
        INSERT INTO customer_products AS t (customer_id, product_id, first_bought_at,
                                            last_bought_at, times_bought)
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                             $5::bigint[])
        ORDER BY 1, 2
        ON CONFLICT (customer_id, product_id) DO UPDATE SET
            first_bought_at = LEAST(t.first_bought_at, EXCLUDED.first_bought_at),
            last_bought_at = GREATEST(t.last_bought_at, EXCLUDED.last_bought_at),
            times_bought = t.times_bought + EXCLUDED.times_bought
        """,
        [customer_id for customer_id, _ in deltas],
        [product_id for _, product_id in deltas],
        *columns(values, "first_bought_at", "last_bought_at", "times_bought"),
    )


async def add_co_purchases(conn: asyncpg.Connection, pairs: Counter[ProductPair]) -> None:
    """Add co-buyers to each pair in both directions; the pairs cross the wire once."""
    if not pairs:
        return
    await conn.execute(
        """
        WITH pairs AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int[]) AS p(a, b, n))
        INSERT INTO co_purchases AS t (product_id, other_product_id, buyers)
        SELECT a, b, n FROM pairs UNION ALL SELECT b, a, n FROM pairs
        ORDER BY 1, 2
        ON CONFLICT (product_id, other_product_id) DO UPDATE SET
            buyers = t.buyers + EXCLUDED.buyers
        """,
        [a for a, _ in pairs],
        [b for _, b in pairs],
        list(pairs.values()),
    )


async def add_products(conn: asyncpg.Connection, deltas: Mapping[str, ProductDelta]) -> None:
    if not deltas:
        return
    values = deltas.values()
    await conn.execute(
        """
        INSERT INTO products AS t (product_id, description, described_at, orders, quantity,
                                   buyers, views)
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::bigint[],
                             $6::int[], $7::bigint[])
        ORDER BY 1
        ON CONFLICT (product_id) DO UPDATE SET
            description = CASE
                WHEN EXCLUDED.described_at >= t.described_at OR t.described_at IS NULL
                    THEN COALESCE(EXCLUDED.description, t.description)
                ELSE t.description END,
            described_at = GREATEST(t.described_at, EXCLUDED.described_at),
            orders = t.orders + EXCLUDED.orders,
            quantity = t.quantity + EXCLUDED.quantity,
            buyers = t.buyers + EXCLUDED.buyers,
            views = t.views + EXCLUDED.views
        """,
        list(deltas),
        *columns(values, "description", "described_at", "orders", "quantity", "buyers", "views"),
    )


async def add_views(conn: asyncpg.Connection, deltas: Mapping[CustomerProduct, ViewDelta]) -> None:
    if not deltas:
        return
    values = deltas.values()
    await conn.execute(
        """
        INSERT INTO product_views AS t (customer_id, product_id, views, last_viewed_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[])
        ORDER BY 1, 2
        ON CONFLICT (customer_id, product_id) DO UPDATE SET
            views = t.views + EXCLUDED.views,
            last_viewed_at = GREATEST(t.last_viewed_at, EXCLUDED.last_viewed_at)
        """,
        [customer_id for customer_id, _ in deltas],
        [product_id for _, product_id in deltas],
        *columns(values, "views", "last_viewed_at"),
    )


_PRODUCT_COLUMNS = "product_id, description, orders, quantity, buyers, views"


async def popular_products(
    conn: asyncpg.Connection, limit: int, exclude: Collection[str] = ()
) -> list[dict[str, Any]]:
    """The most bought products: by distinct buyers, then quantity, then id."""
    rows = await conn.fetch(
        f"""
        SELECT {_PRODUCT_COLUMNS} FROM products
        WHERE buyers > 0 AND NOT (product_id = ANY($2::text[]))
        ORDER BY buyers DESC, quantity DESC, product_id
        LIMIT $1
        """,
        limit,
        list(exclude),
    )
    return [dict(row) for row in rows]


async def product(conn: asyncpg.Connection, product_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE product_id = $1", product_id
    )
    return dict(row) if row is not None else None


async def also_bought(
    conn: asyncpg.Connection, product_id: str, limit: int
) -> list[dict[str, Any]]:
    """Products with the most distinct buyers in common with this one, highest first."""
    rows = await conn.fetch(
        """
        SELECT c.other_product_id AS product_id, p.description, c.buyers AS co_buyers
        FROM co_purchases c LEFT JOIN products p ON p.product_id = c.other_product_id
        WHERE c.product_id = $1
        ORDER BY c.buyers DESC, c.other_product_id
        LIMIT $2
        """,
        product_id,
        limit,
    )
    return [dict(row) for row in rows]


async def bought_products(conn: asyncpg.Connection, customer_id: str) -> list[str]:
    """Every product the customer bought, most recently bought first."""
    rows = await conn.fetch(
        """
        SELECT product_id FROM customer_products WHERE customer_id = $1
        ORDER BY last_bought_at DESC, product_id DESC
        """,
        customer_id,
    )
    return [row["product_id"] for row in rows]


async def co_buyers_with(conn: asyncpg.Connection, products: Collection[str]) -> dict[str, int]:
    """Per other product, the co-buyer counts with these products summed."""
    if not products:
        return {}
    rows = await conn.fetch(
        """
        SELECT other_product_id, sum(buyers)::bigint AS co_buyers FROM co_purchases
        WHERE product_id = ANY($1::text[])
        GROUP BY other_product_id
        """,
        list(products),
    )
    return {row["other_product_id"]: row["co_buyers"] for row in rows}


async def viewed_products(conn: asyncpg.Connection, customer_id: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT product_id FROM product_views WHERE customer_id = $1", customer_id
    )
    return {row["product_id"] for row in rows}


async def descriptions(conn: asyncpg.Connection, ids: Collection[str]) -> dict[str, str | None]:
    rows = await conn.fetch(
        "SELECT product_id, description FROM products WHERE product_id = ANY($1::text[])",
        list(ids),
    )
    return {row["product_id"]: row["description"] for row in rows}
