"""All SQL of the recommendation service. The caller owns the transaction.

Writes are unnest-based upserts of per-batch aggregates, sorted by key in SQL, so that two
workers folding overlapping products lock rows in the same order instead of deadlocking.
Reads are single indexed queries over precomputed rows: products' counts (folded) and
similar_products (the neighbour job's); nothing is aggregated over a customer's history.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np

from crm_shared.contracts.events import ConsentState
from crm_shared.runtime.db import columns
from crm_shared.runtime.packed import UnnestColumns, pack_texts, unpacked
from recommendation_service import projection
from recommendation_service.catalogue import CatalogueFilter, CatalogueRecord
from recommendation_service.consent import ConsentDecision
from recommendation_service.models import KeptGoods, Similar, SimilarPair
from recommendation_service.neighbours import CoBuyers, Entry, GoodsBuyers, Lists
from recommendation_service.projection import (
    CustomerOrder,
    CustomerProduct,
    CustomerProductDelta,
    OrderEntry,
    ProductDelta,
    ViewDelta,
)
from recommendation_service.published import Publication, ServedList
from recommendation_service.serving import Kept, Neighbour, ServingModel
from recommendation_service.trending import Scoped, SegmentChange, TrendDelta

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
        f"""
        SELECT cp.customer_id, cp.product_id, cp.units_kept
        FROM unnest({unpacked(1, 3)}, {unpacked(2, 3)})
             AS w(customer_id, product_id)
        JOIN customer_products cp USING (customer_id, product_id)
        """,
        *pack_texts(
            [customer_id for customer_id, _ in batch], [product_id for _, product_id in batch]
        ),
    )
    return {(row["customer_id"], row["product_id"]): row["units_kept"] for row in rows}


async def cancelled_orders(
    conn: asyncpg.Connection, orders: Collection[CustomerOrder]
) -> set[CustomerOrder]:
    """Which of these orders were cancelled before the batch (every order of the batch is looked
    up: the ids go packed, crm_shared.runtime.packed)."""
    if not orders:
        return set()
    rows = await conn.fetch(
        f"""
        SELECT c.customer_id, c.order_id
        FROM unnest({unpacked(1, 3)}, {unpacked(2, 3)}) AS w(customer_id, order_id)
        JOIN cancelled_orders c USING (customer_id, order_id)
        """,
        *pack_texts(
            [customer_id for customer_id, _ in orders], [order_id for _, order_id in orders]
        ),
    )
    return {(row["customer_id"], row["order_id"]) for row in rows}


async def cancel_orders(
    conn: asyncpg.Connection, orders: Sequence[CustomerOrder]
) -> list[OrderEntry]:
    """Record these orders (not cancelled before) as cancelled and remove the entries of their
    orders and refunds folded so far, returning them: what the cancellation takes back."""
    if not orders:
        return []
    await conn.execute(
        """
        INSERT INTO cancelled_orders (customer_id, order_id)
        SELECT * FROM unnest($1::text[], $2::text[]) ORDER BY 1, 2
        ON CONFLICT DO NOTHING
        """,
        [customer_id for customer_id, _ in orders],
        [order_id for _, order_id in orders],
    )
    rows = await conn.fetch(
        """
        DELETE FROM order_entries e
        USING unnest($1::text[], $2::text[]) AS w(customer_id, order_id)
        WHERE e.customer_id = w.customer_id AND e.order_id = w.order_id
        RETURNING e.*
        """,
        [customer_id for customer_id, _ in orders],
        [order_id for _, order_id in orders],
    )
    return [
        OrderEntry(
            row["customer_id"],
            row["order_id"],
            row["source"],
            row["event_id"],
            row["refund"],
            row["at"],
            row["country"],
            row["segments"],
            [(product, units) for product, units in row["lines"]],
        )
        for row in rows
    ]


async def add_order_entries(conn: asyncpg.Connection, entries: Sequence[OrderEntry]) -> None:
    """Keep what these orders and refunds counted, for a cancellation to come (an event folded
    again keeps its first entry). One row per order: the batch goes as one JSON array, not nine
    arrays and two JSON documents per row (the pool's jsonb codec, json.dumps, costs about a
    fifth of what asyncpg spends on an element of a text[] parameter)."""
    if not entries:
        return
    await conn.execute(
        """
        INSERT INTO order_entries (customer_id, order_id, source, event_id, refund, at, country,
                                   segments, lines)
        SELECT e->>0, e->>1, e->>2, e->>3, (e->>4)::boolean, (e->>5)::timestamptz, e->>6,
               e->7, e->8
        FROM jsonb_array_elements($1::jsonb) AS e
        ORDER BY 1, 2, 3, 4
        ON CONFLICT DO NOTHING
        """,
        [
            (
                entry.customer_id,
                entry.order_id,
                entry.source,
                entry.event_id,
                entry.refund,
                entry.time.isoformat(),
                entry.country,
                entry.segments,
                entry.lines,
            )
            for entry in entries
        ],
    )


_CUSTOMER_PRODUCT_ROWS = UnnestColumns.named(
    (
        "customer_id",
        "product_id",
        "first_bought_at",
        "last_bought_at",
        "times_bought",
        "units_kept",
    ),
    first_bought_at="timestamptz",
    last_bought_at="timestamptz",
    times_bought="bigint",
    units_kept="bigint",
)


async def add_customer_products(
    conn: asyncpg.Connection, deltas: Mapping[CustomerProduct, CustomerProductDelta]
) -> None:
    if not deltas:
        return
    values = deltas.values()
    await conn.execute(
        f"""
        INSERT INTO customer_products AS t ({_CUSTOMER_PRODUCT_ROWS.names})
        {_CUSTOMER_PRODUCT_ROWS.select}
        ORDER BY 1, 2
        ON CONFLICT (customer_id, product_id) DO UPDATE SET
            first_bought_at = LEAST(t.first_bought_at, EXCLUDED.first_bought_at),
            last_bought_at = GREATEST(t.last_bought_at, EXCLUDED.last_bought_at),
            times_bought = t.times_bought + EXCLUDED.times_bought,
            units_kept = t.units_kept + EXCLUDED.units_kept
        """,
        *_CUSTOMER_PRODUCT_ROWS.arguments(
            [
                [customer_id for customer_id, _ in deltas],
                [product_id for _, product_id in deltas],
                *columns(values, "first_bought_at", "last_bought_at", "times_bought", "units_kept"),
            ]
        ),
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


_PRODUCT_DELTA_FIELDS = (
    "goods", "description", "described_at", "orders", "quantity", "buyers", "views", "first_sold_at"
)  # fmt: skip
_PRODUCT_ROWS = UnnestColumns.named(
    ("product_id", *_PRODUCT_DELTA_FIELDS),
    goods="bool",
    described_at="timestamptz",
    orders="bigint",
    quantity="bigint",
    buyers="int",
    views="bigint",
    first_sold_at="timestamptz",
)


async def add_products(conn: asyncpg.Connection, deltas: Mapping[str, ProductDelta]) -> None:
    if not deltas:
        return
    values = deltas.values()
    await conn.execute(
        f"""
        INSERT INTO products AS t ({_PRODUCT_ROWS.names}) {_PRODUCT_ROWS.select}
        ORDER BY 1
        ON CONFLICT (product_id) DO UPDATE SET
            goods = CASE WHEN t.catalogued THEN t.goods ELSE EXCLUDED.goods END,
            first_sold_at = LEAST(t.first_sold_at, EXCLUDED.first_sold_at),
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
        *_PRODUCT_ROWS.arguments([list(deltas), *columns(values, *_PRODUCT_DELTA_FIELDS)]),
    )


_VIEW_ROWS = UnnestColumns.named(
    ("customer_id", "product_id", "views", "last_viewed_at"),
    views="bigint",
    last_viewed_at="timestamptz",
)


async def add_views(conn: asyncpg.Connection, deltas: Mapping[CustomerProduct, ViewDelta]) -> None:
    if not deltas:
        return
    values = deltas.values()
    await conn.execute(
        f"""
        INSERT INTO product_views AS t ({_VIEW_ROWS.names}) {_VIEW_ROWS.select}
        ORDER BY 1, 2
        ON CONFLICT (customer_id, product_id) DO UPDATE SET
            views = t.views + EXCLUDED.views,
            last_viewed_at = GREATEST(t.last_viewed_at, EXCLUDED.last_viewed_at)
        """,
        *_VIEW_ROWS.arguments(
            [
                [customer_id for customer_id, _ in deltas],
                [product_id for _, product_id in deltas],
                *columns(values, "views", "last_viewed_at"),
            ]
        ),
    )


# --- the neighbour job ---------------------------------------------------------------------


async def lock_neighbour_job(conn: asyncpg.Connection) -> bool:
    """Take the job's lock for this transaction; False when another replica's run holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", NEIGHBOUR_JOB_LOCK))


async def marked_products(conn: asyncpg.Connection) -> dict[str, int]:
    """The products marked for the neighbour job, with their marks."""
    rows = await conn.fetch("SELECT product_id, mark FROM dirty_products")
    return {row["product_id"]: row["mark"] for row in rows}


async def buyers_in_all(conn: asyncpg.Connection, products: Sequence[str]) -> int:
    """The number of buyers of these products, summed: what refreshing them costs."""
    found: int = await conn.fetchval(
        "SELECT COALESCE(sum(buyers), 0) FROM products WHERE product_id = ANY($1::text[])",
        products,
    )
    return found


async def co_buyers_of(conn: asyncpg.Connection, products: Sequence[str]) -> list[CoBuyers]:
    """For each of these goods, every other good kept by one of its buyers: the customers who
    kept both and both goods' numbers of buyers, counted by PostgreSQL in one statement (one
    snapshot): what those products' similar lists are computed from. A row per pair of goods
    (about 3,400 for a bestseller) instead of its buyers' baskets (about 96,000 kept pairs).
    The buyers first (an index scan), then each buyer's basket (primary key), counted in a hash
    by (product, other good), and only then the goods' buyers joined: grouping the 96,000 joined
    rows by four columns made PostgreSQL sort them on disk."""
    rows = await conn.fetch(
        """
        WITH buyers AS MATERIALIZED (
            SELECT customer_id, product_id FROM customer_products
            WHERE product_id = ANY($1::text[]) AND units_kept > 0
        ), shared AS (
            SELECT b.product_id, cp.product_id AS other_product_id, count(*)::int AS co_buyers
            FROM buyers b JOIN customer_products cp USING (customer_id)
            WHERE cp.units_kept > 0 AND cp.product_id <> b.product_id
            GROUP BY b.product_id, cp.product_id
        )
        SELECT s.product_id, s.other_product_id, s.co_buyers, mp.buyers, p.buyers
        FROM shared s
        JOIN products mp ON mp.product_id = s.product_id AND mp.goods
        JOIN products p ON p.product_id = s.other_product_id AND p.goods
        """,
        products,
    )
    return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]


async def similar_lists(conn: asyncpg.Connection, products: Sequence[str]) -> Lists:
    """The stored lists of these products."""
    rows = await conn.fetch(
        """
        SELECT product_id, other_product_id, co_buyers, similarity FROM similar_products
        WHERE product_id = ANY($1::text[])
        """,
        products,
    )
    lists: Lists = {}
    for row in rows:
        lists.setdefault(row[0], []).append((row[1], row[2], row[3]))
    return lists


async def products_naming(conn: asyncpg.Connection, products: Sequence[str]) -> set[str]:
    """The products whose stored list names one of these."""
    rows = await conn.fetch(
        "SELECT DISTINCT product_id FROM similar_products WHERE other_product_id = ANY($1::text[])",
        products,
    )
    return {row[0] for row in rows}


async def last_of_long_lists(
    conn: asyncpg.Connection, products: Sequence[str], served: int
) -> dict[str, Entry]:
    """The last entry of each of these products' lists that has `served` entries or more (those
    that may be cut off after it), in the lists' order (ties by code point, as Python orders
    product codes)."""
    rows = await conn.fetch(
        """
        SELECT l.product_id, k.other_product_id, k.co_buyers, k.similarity
        FROM unnest($1::text[]) AS l(product_id)
        JOIN LATERAL (
            SELECT other_product_id, co_buyers, similarity FROM similar_products s
            WHERE s.product_id = l.product_id
            ORDER BY similarity, other_product_id COLLATE "C" DESC
            LIMIT 1
        ) k ON true
        WHERE EXISTS (
            SELECT 1 FROM similar_products s
            WHERE s.product_id = l.product_id
            ORDER BY similarity DESC, other_product_id COLLATE "C"
            OFFSET $2::int - 1 LIMIT 1
        )
        """,
        products,
        served,
    )
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def kept_goods(conn: asyncpg.Connection) -> KeptGoods:
    """Every (customer, product) where the customer kept some of a product that is goods: what
    similar products are computed from (all of them: `models.kept_similar_products`). Numbered
    by PostgreSQL and sent as one bytea of 8 bytes a pair (buyer, good): read as rows, each pair
    cost the worker a few hundred bytes of Python objects, and the pairs grow with the data. The
    buyers' ids come once each, for the marked goods' buyers read later (`goods_buyers`)."""
    row = await conn.fetchrow(
        """
        WITH kept AS (
            SELECT cp.customer_id, cp.product_id
            FROM customer_products cp JOIN products p USING (product_id)
            WHERE cp.units_kept > 0 AND p.goods
        ), goods AS (
            SELECT product_id,
                   (row_number() OVER (ORDER BY product_id COLLATE "C") - 1)::int AS good
            FROM (SELECT DISTINCT product_id FROM kept) AS distinct_goods
        ), buyers AS MATERIALIZED (
            SELECT customer_id, (row_number() OVER () - 1)::int AS buyer
            FROM (SELECT DISTINCT customer_id FROM kept) AS distinct_buyers
        )
        SELECT (SELECT coalesce(array_agg(product_id ORDER BY good), '{}') FROM goods) AS products,
               coalesce(string_agg(int4send(buyer) || int4send(good), ''::bytea), ''::bytea),
               (SELECT coalesce(array_agg(customer_id ORDER BY buyer), '{}') FROM buyers)
        FROM kept JOIN buyers USING (customer_id) JOIN goods USING (product_id)
        """
    )
    pairs = np.frombuffer(row[1], dtype=">i4").reshape(-1, 2).astype(np.intp)
    return KeptGoods(row[0], pairs[:, 0], pairs[:, 1], row[2])


async def goods_buyers(conn: asyncpg.Connection, products: Sequence[str]) -> GoodsBuyers:
    """Who kept some of each of these products that is goods (a product nobody keeps is
    absent): the marked goods' columns of what the worker kept (`neighbours.KeptBuyers`)."""
    rows = await conn.fetch(
        """
        SELECT cp.product_id, array_agg(cp.customer_id)
        FROM customer_products cp JOIN products p USING (product_id)
        WHERE cp.product_id = ANY($1::text[]) AND cp.units_kept > 0 AND p.goods
        GROUP BY cp.product_id
        """,
        products,
    )
    return {row[0]: row[1] for row in rows}


async def last_neighbour_run(conn: asyncpg.Connection) -> UUID | None:
    """The neighbour job run that last wrote similar products (None: none since the table was
    made, e.g. after a rebuild)."""
    found: UUID | None = await conn.fetchval("SELECT run FROM computed_neighbour_run")
    return found


async def record_neighbour_run(conn: asyncpg.Connection, run: UUID) -> None:
    """Say which run wrote similar products last: a worker keeping what its own last run read
    (`jobs.KEPT`) knows from it that nobody else has run since."""
    await conn.execute(
        """
        INSERT INTO computed_neighbour_run (only_row, run) VALUES (true, $1)
        ON CONFLICT (only_row) DO UPDATE SET run = EXCLUDED.run
        """,
        run,
    )


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


async def _clear_unchanged_marks(
    conn: asyncpg.Connection, table: str, key: str, marks: Mapping[str, int]
) -> None:
    """Delete the marks a job read (key -> mark) from `table`, except those marked again
    meanwhile (their mark changed). The rows are locked in key order, as the fold marks them,
    and found by their keys alone, through the primary key; the marks are compared here.
    Matched in SQL (a join of the table with `unnest` of the marks) the planner, trusting
    statistics from when the table was nearly empty, made it a nested loop over both: minutes
    of a core for a bulk load's marks, while the fold waited for the rows it held."""
    locked = await conn.fetch(
        f"SELECT {key}, mark FROM {table} WHERE {key} = ANY($1::text[]) ORDER BY {key} FOR UPDATE",
        list(marks),
    )
    unchanged = [row[0] for row in locked if marks[row[0]] == row[1]]
    if unchanged:
        await conn.execute(f"DELETE FROM {table} WHERE {key} = ANY($1::text[])", unchanged)


async def clear_marks(conn: asyncpg.Connection, marks: Mapping[str, int]) -> None:
    """Unmark the products refreshed, unless marked again meanwhile (their mark changed)."""
    await _clear_unchanged_marks(conn, "dirty_products", "product_id", marks)


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
    """The product's precomputed neighbours: most similar (cosine of the buyer sets) first, at
    most NEIGHBOURS_KEPT (what the list keeps beyond them depends on its history)."""
    rows = await conn.fetch(
        """
        SELECT s.other_product_id AS product_id, p.description, s.co_buyers, s.similarity
        FROM similar_products s LEFT JOIN products p ON p.product_id = s.other_product_id
        WHERE s.product_id = $1
        ORDER BY s.similarity DESC, s.other_product_id COLLATE "C"
        LIMIT $2
        """,
        product_id,
        min(limit, projection.NEIGHBOURS_KEPT),
    )
    return [dict(row) for row in rows]


# --- the served model: versions, the swap, precomputed picks ----------------------------------

TRAINER_LOCK = 7413
"""Session advisory lock of the trainer: one training at a time, whatever the replicas."""
PICKS_LOCK = 7414
"""Transaction advisory lock over customers' picks: the swap rewrites all of them, the refresh
job some; one at a time, so a refresh never writes picks of a version being replaced."""
VERSIONS_KEPT = 2
"""Model versions kept after a swap: the current one and the one it replaced."""


async def try_lock_trainer(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", TRAINER_LOCK))


async def unlock_trainer(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", TRAINER_LOCK)


async def lock_picks(conn: asyncpg.Connection, wait: bool) -> bool:
    """Take the picks lock for this transaction; without `wait`, False when it is held."""
    if wait:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PICKS_LOCK)
        return True
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PICKS_LOCK))


async def current_model(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """The version served, with its training time, parameters and metrics; None before the
    first training."""
    row = await conn.fetchrow(
        """
        SELECT v.version, v.trained_at, v.data_as_of, v.parameters, v.metrics
        FROM current_model c JOIN model_versions v USING (version)
        """
    )
    return dict(row) if row is not None else None


async def model_products(
    conn: asyncpg.Connection, version: int
) -> list[tuple[str, list[float], float]]:
    rows = await conn.fetch(
        "SELECT product_id, factors, seasonal FROM model_products WHERE version = $1", version
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def model_item_weights(
    conn: asyncpg.Connection, version: int
) -> dict[str, list[tuple[str, str, float]]]:
    """The version's product-to-product weights, by part (EASE, sequels)."""
    rows = await conn.fetch(
        """
        SELECT part, product_id, other_product_id, weight FROM model_item_weights
        WHERE version = $1
        """,
        version,
    )
    found: dict[str, list[tuple[str, str, float]]] = {}
    for row in rows:
        found.setdefault(row[0], []).append((row[1], row[2], row[3]))
    return found


async def kept_purchases(
    conn: asyncpg.Connection, customers: Sequence[str] | None = None
) -> list[Kept]:
    """Goods that customers (all, or these) kept some of, with their first and last purchase."""
    rows = await conn.fetch(
        """
        SELECT cp.customer_id, cp.product_id, cp.first_bought_at, cp.last_bought_at
        FROM customer_products cp JOIN products p USING (product_id)
        WHERE cp.units_kept > 0 AND p.goods AND cp.last_bought_at IS NOT NULL
          AND ($1::text[] IS NULL OR cp.customer_id = ANY($1::text[]))
        """,
        customers,
    )
    return [Kept(row[0], row[1], row[2], row[3]) for row in rows]


async def voting_neighbours(
    conn: asyncpg.Connection, per_product: int, products: Sequence[str] | None = None
) -> list[Neighbour]:
    """Each product's (all, or these) `per_product` most similar products: those that vote. Ties
    go by code point, as everywhere else the lists are read (`similar_products_ranked_by_code`)."""
    rows = await conn.fetch(
        """
        SELECT product_id, other_product_id, similarity FROM (
            SELECT product_id, other_product_id, similarity,
                   row_number() OVER (PARTITION BY product_id
                                      ORDER BY similarity DESC, other_product_id COLLATE "C")
                       AS rank
            FROM similar_products
            WHERE $2::text[] IS NULL OR product_id = ANY($2::text[])
        ) ranked
        WHERE rank <= $1
        """,
        per_product,
        products,
    )
    return [Neighbour(row[0], row[1], row[2]) for row in rows]


async def descriptions(
    conn: asyncpg.Connection, products: Collection[str]
) -> dict[str, str | None]:
    rows = await conn.fetch(
        "SELECT product_id, description FROM products WHERE product_id = ANY($1::text[])",
        list(products),
    )
    return {row[0]: row[1] for row in rows}


async def add_model_version(
    conn: asyncpg.Connection,
    model: ServingModel,
    trained_at: datetime,
    metrics: Mapping[str, Any],
) -> int:
    """Write a version, its products' factors and its EASE and sequel weights; it serves nobody
    until `swap_model`."""
    version: int = await conn.fetchval(
        """
        INSERT INTO model_versions (trained_at, data_as_of, parameters, metrics)
        VALUES ($1, $2, $3, $4) RETURNING version
        """,
        trained_at,
        model.data_as_of,
        model.described(),
        dict(metrics),
    )
    await conn.execute(
        """
        INSERT INTO model_products (version, product_id, factors, seasonal)
        SELECT $1, ($2::text[])[i], ($3::real[])[(i - 1) * $5 + 1 : i * $5], ($4::real[])[i]
        FROM generate_subscripts($2::text[], 1) AS i
        """,
        version,
        list(model.products),
        model.product_factors.ravel().tolist(),
        model.seasonal.tolist(),
        model.parameters.factors,
    )
    for part, matrix in model.item_weights().items():
        weights = matrix.tocoo()
        await conn.execute(
            """
            INSERT INTO model_item_weights (version, part, product_id, other_product_id, weight)
            SELECT $1, $2, ($3::text[])[p + 1], ($3::text[])[o + 1], w
            FROM unnest($4::int[], $5::int[], $6::real[]) AS e(p, o, w)
            """,
            version,
            part,
            list(model.products),
            weights.row.tolist(),
            weights.col.tolist(),
            weights.data.tolist(),
        )
    return version


async def write_picks(
    conn: asyncpg.Connection, version: int, lists: Mapping[str, ServedList]
) -> None:
    """Store customers' lists computed with `version`, personal or not."""
    found = sorted(lists)
    if found:
        await conn.execute(
            """
            INSERT INTO customer_picks AS t (customer_id, version, computed_at, picks,
                                             personalised)
            SELECT customer_id, $1, now(), picks::jsonb, personalised
            FROM unnest($2::text[], $3::text[], $4::bool[]) AS u(customer_id, picks, personalised)
            ON CONFLICT (customer_id) DO UPDATE SET
                version = EXCLUDED.version, computed_at = EXCLUDED.computed_at,
                picks = EXCLUDED.picks, personalised = EXCLUDED.personalised
            """,
            version,
            found,
            [json.dumps(lists[customer].picks) for customer in found],
            [lists[customer].personalised for customer in found],
        )


async def swap_model(conn: asyncpg.Connection, version: int, answering: int | None) -> None:
    """Serve `version`: point at it, drop the picks of other versions (customers the new version
    has nothing for), prune all but the VERSIONS_KEPT newest, and answer the retrain requests up
    to `answering` (those made before its training began). The caller's transaction makes it
    one change to readers."""
    await conn.execute(
        """
        INSERT INTO current_model (singleton, version) VALUES (true, $1)
        ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version
        """,
        version,
    )
    await conn.execute("DELETE FROM customer_picks WHERE version <> $1", version)
    await conn.execute(
        """
        DELETE FROM model_versions WHERE version NOT IN (
            SELECT version FROM model_versions ORDER BY version DESC LIMIT $1
        )
        """,
        VERSIONS_KEPT,
    )
    await conn.execute(
        """
        UPDATE retrain_requests SET version = $1, answered_at = now()
        WHERE answered_at IS NULL AND request_id <= $2
        """,
        version,
        answering or 0,
    )


async def mark_customers(
    conn: asyncpg.Connection, customers: Sequence[str], consent_changed: Collection[str] = ()
) -> None:
    """Ask the picks job to recompute these customers, those whose consent changed first (one
    statement, in customer order: rows lock in one order)."""
    if not customers:
        return
    await conn.execute(
        """
        INSERT INTO dirty_customers AS t (customer_id, consent_changed)
        SELECT customer_id, customer_id = ANY($2::text[])
        FROM unnest($1::text[]) AS c(customer_id) ORDER BY 1
        ON CONFLICT (customer_id) DO UPDATE
        SET mark = EXCLUDED.mark, consent_changed = t.consent_changed OR EXCLUDED.consent_changed
        """,
        customers,
        list(consent_changed),
    )


async def marked_customers(conn: asyncpg.Connection, limit: int) -> dict[str, int]:
    """The next customers for the picks job: changed consents first, then in marking order."""
    rows = await conn.fetch(
        "SELECT customer_id, mark FROM dirty_customers"
        " ORDER BY consent_changed DESC, mark LIMIT $1",
        limit,
    )
    return {row[0]: row[1] for row in rows}


async def clear_customer_marks(conn: asyncpg.Connection, marks: Mapping[str, int]) -> None:
    """Unmark the customers refreshed, unless marked again meanwhile."""
    await _clear_unchanged_marks(conn, "dirty_customers", "customer_id", marks)


async def request_retrain(conn: asyncpg.Connection) -> dict[str, Any]:
    row = await conn.fetchrow(
        "INSERT INTO retrain_requests DEFAULT VALUES RETURNING request_id, requested_at"
    )
    return dict(row)


async def newest_pending_retrain(conn: asyncpg.Connection) -> int | None:
    """The newest retrain request not answered yet, if any."""
    found: int | None = await conn.fetchval(
        "SELECT max(request_id) FROM retrain_requests WHERE answered_at IS NULL"
    )
    return found


async def retrain_request(conn: asyncpg.Connection, request_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        """
        SELECT request_id, requested_at, version, answered_at FROM retrain_requests
        WHERE request_id = $1
        """,
        request_id,
    )
    return dict(row) if row is not None else None


async def customer_picks(conn: asyncpg.Connection, customer_id: str, limit: int) -> dict[str, Any]:
    """What a request for a customer's picks reads, in one row whoever asks: their first
    `limit` precomputed picks as JSON text ready to serve with the version they were computed
    with and its training time (`picks` null when there are none), whether they are personal,
    the customer's consent to personalisation (null: never decided), and the version served now
    (`served_version`, `served_trained_at`) for an answer of popular goods. Sliced by PostgreSQL
    (no JSON work in Python); one statement, as the three it replaces cost the API a round
    trip each (docs/performance.md)."""
    row = await conn.fetchrow(
        """
        SELECT jsonb_path_query_array(p.picks, '$[0 to $last]',
                                      jsonb_build_object('last', $2::int - 1))::text AS picks,
               p.version, p.trained_at, p.personalised, c.state AS consent,
               s.version AS served_version, s.trained_at AS served_trained_at
        FROM (SELECT $1::text AS customer_id) k
        LEFT JOIN (customer_picks JOIN model_versions USING (version)) p USING (customer_id)
        LEFT JOIN personalisation_consents c USING (customer_id)
        LEFT JOIN (current_model JOIN model_versions USING (version)) s ON true
        """,
        customer_id,
        limit,
    )
    return dict(row)


async def served_model(conn: asyncpg.Connection) -> tuple[int | None, datetime | None]:
    """The version served and its training time (None before the first training), for answers
    not read from a customer's row."""
    row = await conn.fetchrow(
        """
        SELECT v.version, v.trained_at FROM current_model c JOIN model_versions v USING (version)
        """
    )
    return (row["version"], row["trained_at"]) if row is not None else (None, None)


# --- consent to personalisation and published lists ----------------------------------------


async def record_consents(conn: asyncpg.Connection, decisions: Sequence[ConsentDecision]) -> None:
    """Keep each customer's latest personalisation decision: last writer wins by (decided_at,
    source, event_id), ties included, as `ConsentDecision.order` (sorted: rows lock in one
    order)."""
    if not decisions:
        return
    ordered = sorted(decisions, key=lambda decision: decision.customer_id)
    await conn.execute(
        """
        INSERT INTO personalisation_consents AS t (customer_id, state, decided_at, source,
                                                   event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])
        ON CONFLICT (customer_id) DO UPDATE SET
            state = EXCLUDED.state, decided_at = EXCLUDED.decided_at,
            source = EXCLUDED.source, event_id = EXCLUDED.event_id
        WHERE (EXCLUDED.decided_at, EXCLUDED.source COLLATE "C", EXCLUDED.event_id COLLATE "C")
            > (t.decided_at, t.source COLLATE "C", t.event_id COLLATE "C")
        """,
        *columns(ordered, "customer_id", "state", "decided_at", "source", "event_id"),
    )


async def consent_states(
    conn: asyncpg.Connection, customers: Sequence[str]
) -> dict[str, ConsentState]:
    """The personalisation decision of each of these customers who made one."""
    rows = await conn.fetch(
        """
        SELECT customer_id, state FROM personalisation_consents
        WHERE customer_id = ANY($1::text[])
        """,
        customers,
    )
    return {row[0]: ConsentState(row[1]) for row in rows}


async def customers_with_lists(conn: asyncpg.Connection) -> list[str]:
    """Customers who have a stored list: a swap computes theirs again, whatever they kept."""
    rows = await conn.fetch("SELECT customer_id FROM customer_picks")
    return [row[0] for row in rows]


async def newest_products(conn: asyncpg.Connection, limit: int) -> list[dict[str, Any]]:
    """New arrivals: the goods first listed most recently (event time), or first sold for those
    never listed, newest first; never one the catalogue says is unavailable."""
    rows = await conn.fetch(
        f"""
        SELECT {_PRODUCT_COLUMNS} FROM products p
        WHERE goods AND (buyers > 0 OR listed_at IS NOT NULL)
          AND COALESCE(listed_at, first_sold_at) IS NOT NULL
          AND NOT EXISTS (
              SELECT 1 FROM catalogue c WHERE c.product_id = p.product_id AND NOT c.available
          )
        ORDER BY COALESCE(listed_at, first_sold_at) DESC, product_id
        LIMIT $1
        """,
        limit,
    )
    return [dict(row) for row in rows]


async def published_lists(
    conn: asyncpg.Connection, customers: Sequence[str]
) -> dict[str, tuple[int, str]]:
    """(version, signature) of the list last published for each of these customers."""
    rows = await conn.fetch(
        """
        SELECT customer_id, version, signature FROM published_lists
        WHERE customer_id = ANY($1::text[])
        """,
        customers,
    )
    return {row[0]: (row[1], row[2]) for row in rows}


async def save_published(
    conn: asyncpg.Connection, publications: Sequence[Publication], at: datetime
) -> None:
    """Remember what was published (in the transaction that put the events in the outbox)."""
    if not publications:
        return
    await conn.execute(
        """
        INSERT INTO published_lists AS t (customer_id, version, signature, published_at)
        SELECT customer_id, version, signature, $4
        FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(customer_id, version, signature)
        ORDER BY 1
        ON CONFLICT (customer_id) DO UPDATE SET
            version = EXCLUDED.version, signature = EXCLUDED.signature,
            published_at = EXCLUDED.published_at
        """,
        [publication.customer_id for publication in publications],
        [publication.version for publication in publications],
        [publication.served.signature() for publication in publications],
        at,
    )


# --- the catalogue, segment membership and trending -----------------------------------------


async def record_catalogue(
    conn: asyncpg.Connection, records: Sequence[CatalogueRecord]
) -> list[str]:
    """Keep each product's latest catalogue record (last writer wins by (recorded_at, source,
    event_id), ties included, as `CatalogueRecord.order`) and its earliest listing; bring the
    products' goods, first listing and name (last-writer-wins by event time, as order lines'
    descriptions) up to date. Returns the products whose goods-or-not changed (sorted)."""
    if not records:
        return []
    ordered = sorted(records, key=lambda record: record.product_id)
    await conn.execute(
        """
        INSERT INTO catalogue AS t (product_id, name, description, category, price, currency,
                                    available, kind, first_listed_at, recorded_at, source,
                                    event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[],
                             $6::text[], $7::bool[], $8::text[], $9::timestamptz[],
                             $10::timestamptz[], $11::text[], $12::text[])
        ON CONFLICT (product_id) DO UPDATE SET
            name = EXCLUDED.name, description = EXCLUDED.description,
            category = EXCLUDED.category, price = EXCLUDED.price, currency = EXCLUDED.currency,
            available = EXCLUDED.available, kind = EXCLUDED.kind,
            recorded_at = EXCLUDED.recorded_at, source = EXCLUDED.source,
            event_id = EXCLUDED.event_id
        WHERE (EXCLUDED.recorded_at, EXCLUDED.source COLLATE "C", EXCLUDED.event_id COLLATE "C")
            > (t.recorded_at, t.source COLLATE "C", t.event_id COLLATE "C")
        """,
        *columns(
            ordered,
            "product_id",
            "name",
            "description",
            "category",
            "price",
            "currency",
            "available",
            "kind",
            "first_listed_at",
            "recorded_at",
            "source",
            "event_id",
        ),
    )
    products = [record.product_id for record in ordered]
    rows = await conn.fetch(
        """
        WITH listed AS (
            UPDATE catalogue c SET first_listed_at = LEAST(c.first_listed_at, u.first)
            FROM unnest($1::text[], $2::timestamptz[]) AS u(product_id, first)
            WHERE c.product_id = u.product_id
            RETURNING c.product_id, c.kind = 'goods' AS goods, c.first_listed_at, c.name,
                      c.recorded_at
        ), before AS (
            SELECT product_id, goods FROM products WHERE product_id = ANY($1::text[])
        ), written AS (
            INSERT INTO products AS t (product_id, goods, catalogued, listed_at, description,
                                       described_at)
            SELECT product_id, goods, true, first_listed_at, name, recorded_at FROM listed
            ORDER BY product_id
            ON CONFLICT (product_id) DO UPDATE SET
                goods = EXCLUDED.goods, catalogued = true, listed_at = EXCLUDED.listed_at,
                description = CASE
                    WHEN EXCLUDED.described_at >= t.described_at OR t.described_at IS NULL
                        THEN EXCLUDED.description
                    ELSE t.description END,
                described_at = GREATEST(t.described_at, EXCLUDED.described_at)
            RETURNING product_id, goods
        )
        SELECT w.product_id FROM written w JOIN before b USING (product_id)
        WHERE w.goods <> b.goods ORDER BY 1
        """,
        products,
        [record.first_listed_at for record in ordered],
    )
    return [row[0] for row in rows]


async def record_segment_changes(
    conn: asyncpg.Connection, changes: Sequence[SegmentChange]
) -> None:
    """Keep each customer's membership of each segment: the change with the higher version."""
    if not changes:
        return
    ordered = sorted(changes, key=lambda change: (change.customer_id, change.segment))
    await conn.execute(
        """
        INSERT INTO segment_members AS t (customer_id, segment, member, version)
        SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::bigint[])
        ON CONFLICT (customer_id, segment) DO UPDATE SET
            member = EXCLUDED.member, version = EXCLUDED.version
        WHERE EXCLUDED.version > t.version
        """,
        *columns(ordered, "customer_id", "segment", "member", "version"),
    )


async def segments_of(conn: asyncpg.Connection, customers: Sequence[str]) -> dict[str, list[str]]:
    """The segments each of these customers is a member of now."""
    rows = await conn.fetch(
        """
        SELECT customer_id, segment FROM segment_members
        WHERE member AND customer_id = ANY($1::text[])
        """,
        customers,
    )
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row[0], []).append(row[1])
    return found


async def add_trending(conn: asyncpg.Connection, deltas: Mapping[Scoped, TrendDelta]) -> None:
    """Add the batch's decayed purchases and subtract its refunds: exact integer sums, the same
    in any order."""
    if not deltas:
        return
    keys = sorted(deltas)
    values = [deltas[key] for key in keys]
    await conn.execute(
        """
        INSERT INTO trending AS t (scope, product_id, score, purchases, last_bought_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::numeric[], $4::bigint[],
                             $5::timestamptz[])
        ON CONFLICT (scope, product_id) DO UPDATE SET
            score = t.score + EXCLUDED.score,
            purchases = t.purchases + EXCLUDED.purchases,
            last_bought_at = GREATEST(t.last_bought_at, EXCLUDED.last_bought_at)
        """,
        [scope for scope, _ in keys],
        [product for _, product in keys],
        [Decimal(value.score) for value in values],
        *columns(values, "purchases", "last_bought_at"),
    )


async def trending(conn: asyncpg.Connection, scope: str, limit: int) -> list[dict[str, Any]]:
    """The scope's goods by decayed purchases less refunds, then id: only those above zero
    (a refunded purchase is not trending), never one the catalogue says is unavailable."""
    rows = await conn.fetch(
        """
        SELECT t.product_id, p.description, t.score, t.purchases, t.last_bought_at
        FROM trending t JOIN products p USING (product_id)
        LEFT JOIN catalogue c USING (product_id)
        WHERE t.scope = $1 AND t.score > 0 AND p.goods AND c.available IS DISTINCT FROM false
        ORDER BY t.score DESC, t.product_id
        LIMIT $2
        """,
        scope,
        limit,
    )
    return [dict(row) for row in rows]


def _matching(alias: str, first: int) -> str:
    """The SQL condition of a `CatalogueFilter` on catalogue rows `alias`, its five arguments
    (`_filter_arguments`) from $first on; a NULL argument is no condition."""
    category, low, high, currency, available = (f"${n}" for n in range(first, first + 5))
    return f"""({category}::text IS NULL OR {alias}.category = {category})
          AND ({low}::numeric IS NULL OR {alias}.price >= {low})
          AND ({high}::numeric IS NULL OR {alias}.price <= {high})
          AND ({currency}::text IS NULL OR {alias}.currency = {currency})
          AND ({available}::bool IS NULL OR {alias}.available = {available})"""


def _filter_arguments(wanted: CatalogueFilter) -> tuple[Any, ...]:
    return (
        wanted.category,
        wanted.min_price,
        wanted.max_price,
        wanted.price_currency,
        wanted.available,
    )


async def filtered_picks(
    conn: asyncpg.Connection, customer_id: str, wanted: CatalogueFilter, limit: int
) -> list[dict[str, Any]]:
    """The customer's stored picks, best first, that the catalogue says match: products it does
    not know never do."""
    rows = await conn.fetch(
        f"""
        SELECT e.pick FROM customer_picks p
        CROSS JOIN LATERAL jsonb_array_elements(p.picks) WITH ORDINALITY AS e(pick, rank)
        JOIN catalogue c ON c.product_id = e.pick->>'product_id'
        WHERE p.customer_id = $1 AND {_matching("c", 3)}
        ORDER BY e.rank
        LIMIT $2
        """,
        customer_id,
        limit,
        *_filter_arguments(wanted),
    )
    return [row[0] for row in rows]


async def popular_matching(
    conn: asyncpg.Connection,
    wanted: CatalogueFilter,
    limit: int,
    not_bought_by: str | None = None,
) -> list[dict[str, Any]]:
    """The most bought goods that match (as `popular_products`, narrowed by the catalogue)."""
    rows = await conn.fetch(
        f"""
        SELECT p.product_id, p.description, p.orders, p.quantity, p.buyers, p.views
        FROM products p JOIN catalogue c USING (product_id)
        WHERE p.goods AND p.buyers > 0 AND {_matching("c", 3)}
          AND NOT EXISTS (
              SELECT 1 FROM customer_products b
              WHERE b.customer_id = $2 AND b.product_id = p.product_id
          )
        ORDER BY p.buyers DESC, p.quantity DESC, p.product_id
        LIMIT $1
        """,
        limit,
        not_bought_by,
        *_filter_arguments(wanted),
    )
    return [dict(row) for row in rows]


async def also_bought_matching(
    conn: asyncpg.Connection, product_id: str, wanted: CatalogueFilter, limit: int
) -> list[dict[str, Any]]:
    """The product's precomputed neighbours that match, most similar first: among the
    NEIGHBOURS_KEPT served (what the list keeps beyond them depends on its history)."""
    rows = await conn.fetch(
        f"""
        SELECT s.other_product_id AS product_id, p.description, s.co_buyers, s.similarity
        FROM (
            SELECT other_product_id, co_buyers, similarity FROM similar_products
            WHERE product_id = $1
            ORDER BY similarity DESC, other_product_id COLLATE "C"
            LIMIT $8::int
        ) s JOIN catalogue c ON c.product_id = s.other_product_id
        LEFT JOIN products p ON p.product_id = s.other_product_id
        WHERE {_matching("c", 3)}
        ORDER BY s.similarity DESC, s.other_product_id COLLATE "C"
        LIMIT $2
        """,
        product_id,
        limit,
        *_filter_arguments(wanted),
        projection.NEIGHBOURS_KEPT,
    )
    return [dict(row) for row in rows]
