"""Recommendation worker: folds orders, refunds and product views into product, customer and
view stats, and keeps each product's similar products precomputed (the neighbour job).

python -m recommendation_service.worker
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg

from crm_shared.contracts.events import Event
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import PeriodicJob, Projection
from crm_shared.runtime.worker import run_worker
from recommendation_service import metrics, models, projection, store
from recommendation_service.config import MIGRATIONS, RecommendationSettings
from recommendation_service.events import FOLDS, TOPICS

NEIGHBOUR_JOB_INTERVAL_SECONDS = 1.0
"""A purchase shows in "also bought" within about this plus one run (the target is 2 s)."""
NEIGHBOUR_JOB_DUTY = 0.5
"""At most this share of the time goes to the neighbour job: it recomputes the whole catalogue
(about 1.6 s of CPU on the Online Retail data), and under a steady stream of purchases it would
otherwise run back to back and take a core from the fold on this 2-core machine."""


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
    """Read what the batch's customers kept of its products with one lookup, aggregate purely,
    upsert the sums, mark the goods that gained or lost a buyer for the neighbour job. A few
    statements per batch, none per pair."""
    purchases = projection.purchases(events)
    views = projection.view_deltas(events)
    changes: dict[projection.CustomerProduct, int] = {}
    units = projection.units_kept_deltas(purchases, projection.returned_units(events))
    if units:
        kept_before = await store.units_kept(conn, units.keys())
        changes = projection.buyer_changes(kept_before, units)
        await store.add_customer_products(
            conn, projection.customer_product_deltas(purchases, units)
        )
        await store.mark_for_refresh(conn, projection.neighbours_to_refresh(changes))
        metrics.FIRST_PURCHASES.inc(sum(1 for change in changes.values() if change > 0))
    await store.add_products(conn, projection.product_deltas(purchases, changes, views))
    await store.add_views(conn, views)
    return ()


async def refresh_neighbours(pool: asyncpg.Pool) -> int:
    """One run of the neighbour job: when products are marked, recompute every product's similar
    products from who kept what (`models.similar_products`, in a thread: numpy, not the event
    loop), write what changed in one transaction (readers see the old lists or the new ones),
    then unmark. Cosine changes with either product's number of buyers, so a new buyer of X
    moves X in the lists of everything bought with it: the whole catalogue is recomputed, a
    block of products at a time. Returns how many marks were cleared; 0 when another replica's
    run holds the lock."""
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        if not await store.lock_neighbour_job(conn):
            return 0
        marks = await store.marked_products(conn)
        if not marks:
            return 0
        kept = await store.kept_goods(conn)
        computed = await asyncio.to_thread(
            models.similar_products, kept, projection.NEIGHBOURS_KEPT
        )
        stored = await store.stored_similar_products(conn)
        await store.write_similar_products(conn, *models.changed_similar_products(stored, computed))
        await store.clear_marks(conn, marks)
    metrics.NEIGHBOURS_REFRESHED.inc(len(marks))
    metrics.NEIGHBOUR_JOB_SECONDS.observe(time.perf_counter() - started)
    return len(marks)


PROJECTION = Projection(
    name="recommendation",
    topics=TOPICS,
    folds=FOLDS,
    migrations=MIGRATIONS,
    fold=fold,
    periodic=(
        PeriodicJob(
            "similar-products",
            NEIGHBOUR_JOB_INTERVAL_SECONDS,
            refresh_neighbours,
            duty=NEIGHBOUR_JOB_DUTY,
        ),
    ),
)

if __name__ == "__main__":
    run_worker(PROJECTION, RecommendationSettings())
