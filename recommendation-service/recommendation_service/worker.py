"""Recommendation worker: folds orders, refunds, cancellations, product views, consents, the
catalogue and segment changes into product, customer and view stats, trending and the marks
that tell the jobs (recommendation_service.jobs, a process of their own) what to recompute.

python -m recommendation_service.worker
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import asyncpg

from crm_shared.contracts.events import Event
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.metrics import count
from crm_shared.runtime.projector import Projection
from crm_shared.runtime.shadow import RebuildRules
from crm_shared.runtime.worker import run_worker
from recommendation_service import (
    catalogue,
    consent,
    metrics,
    projection,
    store,
    trending,
)
from recommendation_service.config import MIGRATIONS, RecommendationSettings
from recommendation_service.events import FOLDS, TOPICS


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
    """Settle the batch's cancellations first (what orders and refunds of cancelled orders count:
    nothing, or less what they counted when folded), read what the batch's customers kept of its
    products with one lookup, aggregate purely, upsert the sums, mark the goods that gained or
    lost a buyer for the neighbour job; keep the catalogue (marking products it reclassifies),
    segment membership (before the purchases, so one counts in the segments its customer is in
    once its batch is folded), trending, and the entries a cancellation to come takes back. A
    few statements per batch, none per pair."""
    orders = projection.purchases(events)
    refunds = projection.refunds(events)
    cancelling = projection.cancellations(events)
    named = projection.orders_named([*orders, *refunds])
    cancelled_before = await store.cancelled_orders(conn, named | cancelling)
    cancelled = cancelled_before | cancelling
    taken_orders, taken_refunds = projection.taken_back(
        await store.cancel_orders(conn, sorted(cancelling - cancelled_before))
    )
    purchases = projection.counted(orders, cancelled) + taken_orders
    refunded = projection.not_cancelled(refunds, cancelled) + taken_refunds
    views = projection.view_deltas(events)
    changes: dict[projection.CustomerProduct, int] = {}
    units = projection.units_kept_deltas(purchases, projection.returned_units(refunded))
    decisions = consent.latest_decisions(events)
    if units:
        kept_before = await store.units_kept(conn, units.keys())
        changes = projection.buyer_changes(kept_before, units)
        await store.add_customer_products(
            conn, projection.customer_product_deltas(purchases, units)
        )
        await store.mark_for_refresh(conn, projection.neighbours_to_refresh(changes))
        count(metrics.FIRST_PURCHASES, sum(1 for change in changes.values() if change > 0))
    await store.record_consents(conn, list(decisions.values()))
    await store.mark_customers(
        conn, sorted({customer for customer, _ in units} | set(decisions)), decisions.keys()
    )
    await store.add_products(conn, projection.product_deltas(purchases, changes, views))
    await store.add_views(conn, views)
    reclassified = await store.record_catalogue(
        conn, list(catalogue.latest_records(events).values())
    )
    await store.mark_for_refresh(conn, reclassified)
    await store.record_segment_changes(conn, list(trending.latest_segment_changes(events).values()))
    if purchases or refunded:
        customers = sorted({item.customer_id for item in [*purchases, *refunded]})
        segments = await store.segments_of(conn, customers)
        await store.add_trending(
            conn,
            trending.trend_deltas(purchases, refunded, segments, trending_half_life_days()),
        )
        await store.add_order_entries(conn, projection.order_entries(purchases, refunded, segments))
    return ()


@cache
def trending_half_life_days() -> float:
    """The half-life trending is folded with, in this process (read once from the settings)."""
    return RecommendationSettings().trending_half_life_days


REBUILD_RULES = RebuildRules(
    carried=("published_lists",),
    job_outputs=(
        "model_versions",
        "model_products",
        "model_item_weights",
        "customer_picks",
        "current_model",
        "retrain_requests",
        "similar_products",
    ),
    job_queues=("dirty_products", "dirty_customers"),
    computed=("computed_neighbour_run",),
    left_out_columns={"order_entries": frozenset({"segments"})},
    compared_rows={"trending": "scope NOT LIKE 'segment:%'"},
)
"""The published lists keep their per-customer versions, which consumers order by: a rebuild
never publishes a list under a version already used. The jobs (recommendation_service.jobs)
compute the versions, picks and similar lists from the folded tables, in this order; a replay
runs no job, so these and the marks are carried; the neighbour job's last run
(`computed_neighbour_run`) is neither compared nor carried: the next run reads every list again
after a switch. The segments an order counted in, and so a
segment's trending goods, are the buyer's segments when the order was folded: memberships come
on their own topic, which a replay interleaves with the orders differently."""


PROJECTION = Projection(
    name="recommendation",
    topics=TOPICS,
    folds=FOLDS,
    migrations=MIGRATIONS,
    fold=fold,
    rebuild_rules=REBUILD_RULES,
)

if __name__ == "__main__":
    run_worker(PROJECTION, RecommendationSettings())
