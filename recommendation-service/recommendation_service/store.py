"""All SQL of the recommendation service. The caller owns the transaction.

Writes are unnest-based upserts of per-batch aggregates, sorted by key in SQL, so that two
workers folding overlapping products lock rows in the same order instead of deadlocking.
Reads are single indexed queries over precomputed rows: products' counts (folded) and
similar_products (the neighbour job's); nothing is aggregated over a customer's history.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import asyncpg

from crm_shared.runtime.db import columns
from recommendation_service.projection import (
    CustomerProduct,
    CustomerProductDelta,
    ProductDelta,
    ViewDelta,
)

NEIGHBOUR_JOB_LOCK = 7412
"""Transaction advisory lock of the neighbour job: one run at a time, whatever the replicas."""


async def bought_before(
    conn: asyncpg.Connection, batch: Collection[CustomerProduct]
) -> set[CustomerProduct]:
    """Which of these (customer, product) pairs were bought before the batch.

    Not locked: one customer's orders are on one partition (keyed by customer), so only one
    worker folds a given customer at a time.
    """
    rows = await conn.fetch(
        """
        SELECT cp.customer_id, cp.product_id
        FROM unnest($1::text[], $2::text[]) AS w(customer_id, product_id)
        JOIN customer_products cp USING (customer_id, product_id)
        """,
        [customer_id for customer_id, _ in batch],
        [product_id for _, product_id in batch],
    )
    return {(row["customer_id"], row["product_id"]) for row in rows}


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


async def mark_for_refresh(conn: asyncpg.Connection, products: Sequence[str]) -> None:
    """Ask the neighbour job to recompute these products (sorted: rows lock in one order).

    A product already marked gets a new mark, so a job run that read the old one keeps it.
    """
    if not products:
        return
    await conn.execute(
        """
        INSERT INTO dirty_products AS t (product_id) SELECT unnest($1::text[]) ORDER BY 1
        ON CONFLICT (product_id) DO UPDATE SET mark = EXCLUDED.mark
        """,
        products,
    )


async def add_products(conn: asyncpg.Connection, deltas: Mapping[str, ProductDelta]) -> None:
    if not deltas:
        return
    values = deltas.values()
    await conn.execute(
        """
        INSERT INTO products AS t (product_id, goods, description, described_at, orders,
                                   quantity, buyers, views)
        SELECT * FROM unnest($1::text[], $2::bool[], $3::text[], $4::timestamptz[], $5::bigint[],
                             $6::bigint[], $7::int[], $8::bigint[])
        ORDER BY 1
        ON CONFLICT (product_id) DO UPDATE SET
            goods = EXCLUDED.goods,
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
        *columns(
            values, "goods", "description", "described_at", "orders", "quantity", "buyers", "views"
        ),
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


# --- the neighbour job ---------------------------------------------------------------------


async def lock_neighbour_job(conn: asyncpg.Connection) -> bool:
    """Take the job's lock for this transaction; False when another replica's run holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", NEIGHBOUR_JOB_LOCK))


async def products_to_refresh(conn: asyncpg.Connection, limit: int) -> dict[str, int]:
    """Up to `limit` marked products, longest waiting first, with their marks."""
    rows = await conn.fetch(
        "SELECT product_id, mark FROM dirty_products ORDER BY mark LIMIT $1", limit
    )
    return {row["product_id"]: row["mark"] for row in rows}


async def refresh_similar_products(
    conn: asyncpg.Connection, products: Collection[str], kept: int
) -> int:
    """Recompute the similar products of `products` from customer_products; return how many
    other products' lists changed.

    A product's neighbours are the goods with the most distinct customers who bought both, ties
    by product code, `kept` of them. The marked products' lists are rebuilt whole. A purchase
    that adds a buyer to X also raises X's count in the lists of the buyer's other products Y:
    X's full row of counts is computed anyway, so each (Y, X) that reaches Y's current last
    place, among the `kept` best of the run for Y, is written, and Y's list trimmed back to
    `kept`. Counts only grow (refunds are not folded), so an entry that falls out of a list can
    only come back through a new mark, and the lists equal a full recomputation once the marks
    are cleared.
    """
    if not products:
        return 0
    await conn.execute(
        "DELETE FROM similar_products WHERE product_id = ANY($1::text[])", list(products)
    )
    rows = await conn.fetch(
        """
        WITH marked AS (SELECT unnest($1::text[]) AS product_id),
        co AS (  -- one small aggregate per marked product: a hash of one row of counts
            SELECT m.product_id, c.other_product_id, c.co_buyers
            FROM marked m CROSS JOIN LATERAL (
                SELECT other.product_id AS other_product_id, count(*)::int AS co_buyers
                FROM customer_products mine
                JOIN customer_products other ON other.customer_id = mine.customer_id
                WHERE mine.product_id = m.product_id AND other.product_id <> m.product_id
                GROUP BY 1
            ) c
        ),
        goods_co AS (
            SELECT co.* FROM co JOIN products p ON p.product_id = co.other_product_id
            WHERE p.goods
        ),
        own AS (
            SELECT product_id, other_product_id, co_buyers FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY product_id ORDER BY co_buyers DESC, other_product_id
                ) AS rank
                FROM goods_co
            ) ranked
            WHERE rank <= $2
        ),
        last_places AS (
            SELECT y.product_id, COALESCE(last.co_buyers, 0) AS co_buyers
            FROM (
                SELECT DISTINCT other_product_id AS product_id FROM goods_co
                EXCEPT SELECT product_id FROM marked
            ) y
            LEFT JOIN LATERAL (
                SELECT s.co_buyers FROM similar_products s WHERE s.product_id = y.product_id
                ORDER BY s.co_buyers DESC, s.other_product_id
                OFFSET $2 - 1 LIMIT 1
            ) last ON true
        ),
        reverse AS (
            SELECT product_id, other_product_id, co_buyers FROM (
                SELECT c.other_product_id AS product_id, c.product_id AS other_product_id,
                       c.co_buyers, row_number() OVER (
                           PARTITION BY c.other_product_id ORDER BY c.co_buyers DESC, c.product_id
                       ) AS rank
                FROM goods_co c JOIN last_places l ON l.product_id = c.other_product_id
                WHERE c.co_buyers >= l.co_buyers
            ) ranked
            WHERE rank <= $2
        ),
        written AS (
            INSERT INTO similar_products AS t (product_id, other_product_id, co_buyers)
            SELECT * FROM own UNION ALL SELECT * FROM reverse
            ON CONFLICT (product_id, other_product_id) DO UPDATE SET
                co_buyers = EXCLUDED.co_buyers
            RETURNING product_id
        )
        SELECT DISTINCT product_id FROM written
        EXCEPT SELECT product_id FROM marked
        """,
        list(products),
        kept,
    )
    others = [row["product_id"] for row in rows]
    if others:
        await conn.execute(
            """
            DELETE FROM similar_products s USING (
                SELECT product_id, other_product_id, row_number() OVER (
                    PARTITION BY product_id ORDER BY co_buyers DESC, other_product_id
                ) AS rank
                FROM similar_products WHERE product_id = ANY($1::text[])
            ) ranked
            WHERE ranked.rank > $2
              AND s.product_id = ranked.product_id
              AND s.other_product_id = ranked.other_product_id
            """,
            others,
            kept,
        )
    return len(others)


async def clear_marks(conn: asyncpg.Connection, marks: Mapping[str, int]) -> None:
    """Unmark the products refreshed, unless marked again meanwhile (their mark changed).
    Rows lock in product order, as the fold's marking does."""
    await conn.execute(
        """
        DELETE FROM dirty_products WHERE product_id IN (
            SELECT d.product_id
            FROM dirty_products d JOIN unnest($1::text[], $2::bigint[]) AS m(product_id, mark)
              ON d.product_id = m.product_id AND d.mark = m.mark
            ORDER BY d.product_id
            FOR UPDATE OF d
        )
        """,
        list(marks),
        list(marks.values()),
    )


# --- reads -------------------------------------------------------------------------------------

_PRODUCT_COLUMNS = "product_id, description, orders, quantity, buyers, views"


async def popular_products(
    conn: asyncpg.Connection, limit: int, not_bought_by: str | None = None
) -> list[dict[str, Any]]:
    """The most bought goods: by distinct buyers, then quantity, then id; optionally only those
    a customer has not bought (an anti-join, however many they bought)."""
    rows = await conn.fetch(
        f"""
        SELECT {_PRODUCT_COLUMNS} FROM products p
        WHERE goods AND buyers > 0
          AND NOT EXISTS (
              SELECT 1 FROM customer_products b
              WHERE b.customer_id = $2 AND b.product_id = p.product_id
          )
        ORDER BY buyers DESC, quantity DESC, product_id
        LIMIT $1
        """,
        limit,
        not_bought_by,
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
    """The product's precomputed neighbours: most distinct buyers in common first."""
    rows = await conn.fetch(
        """
        SELECT s.other_product_id AS product_id, p.description, s.co_buyers
        FROM similar_products s LEFT JOIN products p ON p.product_id = s.other_product_id
        WHERE s.product_id = $1
        ORDER BY s.co_buyers DESC, s.other_product_id
        LIMIT $2
        """,
        product_id,
        limit,
    )
    return [dict(row) for row in rows]


async def recommended_for(
    conn: asyncpg.Connection, customer_id: str, limit: int, seeds: int, view_boost: float
) -> list[dict[str, Any]]:
    """Goods to offer a customer who bought something, from precomputed neighbours: the similar
    products of their `seeds` most recently bought products, co-buyers summed, and the goods they
    viewed, lifted by `view_boost` (score (co-buyers + 1) x boost). Never what they bought.
    Empty when they bought nothing, or when nothing points anywhere."""
    rows = await conn.fetch(
        """
        WITH seeds AS (
            SELECT product_id FROM customer_products WHERE customer_id = $1
            ORDER BY last_bought_at DESC, product_id DESC
            LIMIT $3
        ),
        co AS (  -- similar_products holds goods only
            SELECT s.other_product_id AS product_id, sum(s.co_buyers)::bigint AS co_buyers
            FROM seeds JOIN similar_products s USING (product_id)
            GROUP BY 1
        ),
        viewed AS (
            SELECT v.product_id FROM product_views v JOIN products p USING (product_id)
            WHERE v.customer_id = $1 AND p.goods AND EXISTS (SELECT 1 FROM seeds)
        ),
        ranked AS (
            SELECT product_id, COALESCE(co.co_buyers, 0) AS co_buyers,
                   viewed.product_id IS NOT NULL AS viewed,
                   CASE WHEN viewed.product_id IS NOT NULL
                        THEN (COALESCE(co.co_buyers, 0) + 1) * $4::float8
                        ELSE co.co_buyers::float8 END AS score
            FROM co FULL JOIN viewed USING (product_id) AS candidate
            WHERE NOT EXISTS (
                SELECT 1 FROM customer_products b
                WHERE b.customer_id = $1 AND b.product_id = candidate.product_id
            )
            ORDER BY score DESC, co_buyers DESC, product_id
            LIMIT $2
        )
        SELECT r.product_id, p.description, r.score, r.co_buyers, r.viewed
        FROM ranked r LEFT JOIN products p USING (product_id)
        ORDER BY r.score DESC, r.co_buyers DESC, r.product_id
        """,
        customer_id,
        limit,
        seeds,
        view_boost,
    )
    return [dict(row) for row in rows]
