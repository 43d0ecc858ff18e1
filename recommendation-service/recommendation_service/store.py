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
from recommendation_service.models import Similar, SimilarPair
from recommendation_service.projection import (
    CustomerProduct,
    CustomerProductDelta,
    ProductDelta,
    Ranking,
    ViewDelta,
)

NEIGHBOUR_JOB_LOCK = 7412
"""Transaction advisory lock of the neighbour job: one run at a time, whatever the replicas."""


async def units_kept(
    conn: asyncpg.Connection, batch: Collection[CustomerProduct]
) -> dict[CustomerProduct, int]:
    """Units each of these customers kept of these products before the batch (absent: none).

    Not locked: one customer's orders and refunds are on one partition (keyed by customer), so
    only one worker folds a given customer at a time.
    """
    rows = await conn.fetch(
        """
        SELECT cp.customer_id, cp.product_id, cp.units_kept
        FROM unnest($1::text[], $2::text[]) AS w(customer_id, product_id)
        JOIN customer_products cp USING (customer_id, product_id)
        """,
        [customer_id for customer_id, _ in batch],
        [product_id for _, product_id in batch],
    )
    return {(row["customer_id"], row["product_id"]): row["units_kept"] for row in rows}


async def add_customer_products(
    conn: asyncpg.Connection, deltas: Mapping[CustomerProduct, CustomerProductDelta]
) -> None:
    if not deltas:
        return
    values = deltas.values()
    await conn.execute(
        """
        INSERT INTO customer_products AS t (customer_id, product_id, first_bought_at,
                                            last_bought_at, times_bought, units_kept)
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                             $5::bigint[], $6::bigint[])
        ORDER BY 1, 2
        ON CONFLICT (customer_id, product_id) DO UPDATE SET
            first_bought_at = LEAST(t.first_bought_at, EXCLUDED.first_bought_at),
            last_bought_at = GREATEST(t.last_bought_at, EXCLUDED.last_bought_at),
            times_bought = t.times_bought + EXCLUDED.times_bought,
            units_kept = t.units_kept + EXCLUDED.units_kept
        """,
        [customer_id for customer_id, _ in deltas],
        [product_id for _, product_id in deltas],
        *columns(values, "first_bought_at", "last_bought_at", "times_bought", "units_kept"),
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


async def marked_products(conn: asyncpg.Connection) -> dict[str, int]:
    """The products marked for the neighbour job, with their marks."""
    rows = await conn.fetch("SELECT product_id, mark FROM dirty_products")
    return {row["product_id"]: row["mark"] for row in rows}


async def kept_goods(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """Every (customer, product) where the customer kept some of a product that is goods: what
    similar products are computed from."""
    rows = await conn.fetch(
        """
        SELECT cp.customer_id, cp.product_id
        FROM customer_products cp JOIN products p USING (product_id)
        WHERE cp.units_kept > 0 AND p.goods
        """
    )
    return [(row[0], row[1]) for row in rows]


async def stored_similar_products(conn: asyncpg.Connection) -> dict[SimilarPair, Similar]:
    rows = await conn.fetch(
        "SELECT product_id, other_product_id, co_buyers, similarity FROM similar_products"
    )
    return {(row[0], row[1]): (row[2], row[3]) for row in rows}


async def write_similar_products(
    conn: asyncpg.Connection, upserts: Mapping[SimilarPair, Similar], deletes: Sequence[SimilarPair]
) -> None:
    """Apply the neighbour job's changes, in key order (rows lock in one order)."""
    if deletes:
        await conn.execute(
            """
            DELETE FROM similar_products s
            USING unnest($1::text[], $2::text[]) AS d(product_id, other_product_id)
            WHERE s.product_id = d.product_id AND s.other_product_id = d.other_product_id
            """,
            [product for product, _ in deletes],
            [other for _, other in deletes],
        )
    if upserts:
        keys = sorted(upserts)
        await conn.execute(
            """
            INSERT INTO similar_products AS t (product_id, other_product_id, co_buyers,
                                               similarity)
            SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[])
            ON CONFLICT (product_id, other_product_id) DO UPDATE SET
                co_buyers = EXCLUDED.co_buyers, similarity = EXCLUDED.similarity
            """,
            [product for product, _ in keys],
            [other for _, other in keys],
            [upserts[key][0] for key in keys],
            [upserts[key][1] for key in keys],
        )


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
    """The product's precomputed neighbours: most similar (cosine of the buyer sets) first."""
    rows = await conn.fetch(
        """
        SELECT s.other_product_id AS product_id, p.description, s.co_buyers, s.similarity
        FROM similar_products s LEFT JOIN products p ON p.product_id = s.other_product_id
        WHERE s.product_id = $1
        ORDER BY s.similarity DESC, s.other_product_id
        LIMIT $2
        """,
        product_id,
        limit,
    )
    return [dict(row) for row in rows]


async def recommended_for(
    conn: asyncpg.Connection, customer_id: str, limit: int, ranking: Ranking
) -> list[dict[str, Any]]:
    """Goods to offer a customer who kept something they bought, from precomputed neighbours:
    the `ranking.voting` most similar products of each of their `ranking.seeds` most recently
    bought products (kept ones), cosines summed, each seed weighed by how long before their
    latest purchase it was bought; and the goods they viewed, lifted (score (similarity +
    `ranking.viewed_similarity`) x `ranking.view_boost`). Never what they bought or returned.
    Empty when they kept nothing, or when nothing points anywhere."""
    rows = await conn.fetch(
        """
        WITH seeds AS (
            SELECT product_id, last_bought_at FROM customer_products
            WHERE customer_id = $1 AND units_kept > 0 AND last_bought_at IS NOT NULL
            ORDER BY last_bought_at DESC, product_id DESC
            LIMIT $3
        ),
        weighted AS (
            SELECT product_id, power(0.5, extract(epoch FROM
                       max(last_bought_at) OVER () - last_bought_at) / ($6 * 86400.0)) AS weight
            FROM seeds
        ),
        co AS (  -- similar_products holds goods only
            SELECT n.other_product_id AS product_id,
                   sum(w.weight * n.similarity)::float8 AS similarity,
                   sum(n.co_buyers)::bigint AS co_buyers
            FROM weighted w CROSS JOIN LATERAL (
                SELECT s.other_product_id, s.similarity, s.co_buyers FROM similar_products s
                WHERE s.product_id = w.product_id
                ORDER BY s.similarity DESC, s.other_product_id
                LIMIT $5
            ) n
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
                        THEN (COALESCE(co.similarity, 0) + $7::float8) * $4::float8
                        ELSE co.similarity END AS score
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
        ranking.seeds,
        ranking.view_boost,
        ranking.voting,
        ranking.seed_half_life_days,
        ranking.viewed_similarity,
    )
    return [dict(row) for row in rows]
