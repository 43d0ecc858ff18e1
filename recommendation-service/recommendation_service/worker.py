"""Recommendation worker: folds orders and product views into product, customer and view stats,
and keeps each product's similar products precomputed (the neighbour job).

python -m recommendation_service.worker
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import asyncpg

from crm_shared.contracts.events import Event
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import PeriodicJob, Projection
from crm_shared.runtime.worker import run_worker
from recommendation_service import metrics, projection, store
from recommendation_service.config import MIGRATIONS, RecommendationSettings
from recommendation_service.events import FOLDS, TOPICS

log = logging.getLogger(__name__)

NEIGHBOUR_JOB_INTERVAL_SECONDS = 1.0
"""A purchase shows in "also bought" within about this plus one run (the target is 2 s)."""
NEIGHBOUR_JOB_MAX_PRODUCTS = 500
"""Products refreshed per run at most, longest waiting first: under a bulk load a run stays
short and the rest waits for the next one."""


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
    """Find first purchases with one lookup, aggregate purely, upsert the sums, mark the goods
    that gained a buyer for the neighbour job. Costs a few statements per batch, none per pair."""
    purchases = projection.purchases(events)
    views = projection.view_deltas(events)
    first: list[projection.Purchase] = []
    if purchases:
        bought = await store.bought_before(conn, {(p.customer_id, p.product_id) for p in purchases})
        first = projection.first_purchases(purchases, bought)
        await store.add_customer_products(conn, projection.customer_product_deltas(purchases))
        await store.mark_for_refresh(conn, projection.neighbours_to_refresh(first))
        metrics.FIRST_PURCHASES.inc(len(first))
    await store.add_products(conn, projection.product_deltas(purchases, first, views))
    await store.add_views(conn, views)
    return ()


async def refresh_neighbours(pool: asyncpg.Pool, max_products: int) -> int:
    """One run of the neighbour job: recompute the marked products' similar products in one
    transaction (readers see the old lists or the new ones), then unmark them. Returns how many
    were refreshed; 0 when another replica's run holds the lock."""
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        if not await store.lock_neighbour_job(conn):
            return 0
        marks = await store.products_to_refresh(conn, max_products)
        if not marks:
            return 0
        await store.refresh_similar_products(conn, marks, projection.NEIGHBOURS_KEPT)
        await store.clear_marks(conn, marks)
    metrics.NEIGHBOURS_REFRESHED.inc(len(marks))
    metrics.NEIGHBOUR_JOB_SECONDS.observe(time.perf_counter() - started)
    return len(marks)


async def refresh_neighbours_now(pool: asyncpg.Pool) -> None:
    """What the worker's timer runs. Never raises: the marks stay for the next run."""
    try:
        await refresh_neighbours(pool, NEIGHBOUR_JOB_MAX_PRODUCTS)
    except Exception:
        log.exception("refreshing similar products failed; retrying at the next interval")


PROJECTION = Projection(
    name="recommendation",
    topics=TOPICS,
    folds=FOLDS,
    migrations=MIGRATIONS,
    fold=fold,
    periodic=(
        PeriodicJob("similar-products", NEIGHBOUR_JOB_INTERVAL_SECONDS, refresh_neighbours_now),
    ),
)

if __name__ == "__main__":
    run_worker(PROJECTION, RecommendationSettings())
