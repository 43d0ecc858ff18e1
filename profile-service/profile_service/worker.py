"""Profile worker: folds identity changes and purchases into the customer record and totals.

python -m profile_service.worker
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncpg

from crm_shared.events import Event
from crm_shared.projector import Projection
from crm_shared.worker import run_worker
from profile_service import metrics, projection, store
from profile_service.config import ProfileSettings
from profile_service.events import CUSTOMER_TYPES, FOLDS, TOPICS

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    """Read the touched records, evolve them purely, write them back with the totals."""
    customer_events = [e for e in events if e.type in CUSTOMER_TYPES]
    if customer_events:
        current = await store.lock_customers(conn, {e.customer_id for e in customer_events})
        changed = projection.evolve_customers(current, customer_events)
        await store.save_customers(conn, list(changed.values()))
        metrics.CUSTOMERS_CHANGED.inc(len(changed))
    deltas = projection.purchase_deltas(events)
    await store.add_purchases(conn, deltas)
    for delta in deltas.values():
        metrics.MONEY_FOLDED.labels("order").inc(float(delta.gross_revenue))
        metrics.MONEY_FOLDED.labels("refund").inc(float(delta.refunded))


PROJECTION = Projection(
    name="profile", topics=TOPICS, folds=FOLDS, migrations=MIGRATIONS, fold=fold
)

if __name__ == "__main__":
    run_worker(PROJECTION, ProfileSettings())
