"""Recommendation worker: folds orders and product views into product, co-purchase and view stats.

python -m recommendation_service.worker
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from crm_shared.contracts.events import Event
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import Projection
from crm_shared.runtime.worker import run_worker
from recommendation_service import metrics, projection, store
from recommendation_service.config import MIGRATIONS, RecommendationSettings
from recommendation_service.events import FOLDS, TOPICS


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
    """Read the batch customers' prior purchases once, aggregate purely, upsert the sums."""
    purchases = projection.purchases(events)
    views = projection.view_deltas(events)
    first: list[projection.Purchase] = []
    if purchases:
        prior = await store.prior_purchases(
            conn,
            {(p.customer_id, p.product_id) for p in purchases},
            projection.CO_PURCHASE_PARTNERS,
        )
        first = projection.first_purchases(purchases, prior.bought)
        pairs = projection.co_purchase_increments(
            [(p.customer_id, p.product_id) for p in first], prior.recent
        )
        await store.add_customer_products(conn, projection.customer_product_deltas(purchases))
        await store.add_co_purchases(conn, pairs)
        metrics.FIRST_PURCHASES.inc(len(first))
        metrics.CO_PURCHASE_INCREMENTS.inc(sum(pairs.values()))
    await store.add_products(conn, projection.product_deltas(purchases, first, views))
    await store.add_views(conn, views)
    return ()


PROJECTION = Projection(
    name="recommendation", topics=TOPICS, folds=FOLDS, migrations=MIGRATIONS, fold=fold
)

if __name__ == "__main__":
    run_worker(PROJECTION, RecommendationSettings())
