"""Broadcast worker: folds channel preferences and consents, and keeps every consent event.

python -m broadcast_service.worker
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from broadcast_service import campaign_fold, metrics, projection, store
from broadcast_service.config import MIGRATIONS, BroadcastSettings
from broadcast_service.events import (
    CONSENT_TYPES,
    FOLDS,
    PREFERENCE_TYPES,
    SEGMENT_TYPES,
    TOPICS,
)
from crm_shared.contracts.events import Event
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import Projection
from crm_shared.runtime.worker import run_worker


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
    """Read the touched states, evolve them purely, write back what changed and the history."""
    preference_events = [e for e in events if e.type in PREFERENCE_TYPES]
    if preference_events:
        current = await store.lock_preferences(conn, {e.customer_id for e in preference_events})
        changed = projection.evolve_preferences(current, preference_events)
        await store.save_preferences(conn, list(changed.values()))
        metrics.EVENTS_SUPERSEDED.labels("preference").inc(len(preference_events) - len(changed))
    consent_events = [e for e in events if e.type in CONSENT_TYPES]
    if consent_events:
        history = projection.consent_changes(consent_events)
        current_consents = await store.lock_consents(conn, {c.customer_id for c in history})
        changed_consents = projection.evolve_consents(current_consents, consent_events)
        await store.save_consents(conn, list(changed_consents.values()))
        await store.add_history(conn, history)
        metrics.EVENTS_SUPERSEDED.labels("consent").inc(len(history) - len(changed_consents))
        granted = sum(c.granted for c in history)
        metrics.CONSENT_EVENTS.labels("granted").inc(granted)
        metrics.CONSENT_EVENTS.labels("revoked").inc(len(history) - granted)
    segment_events = [e for e in events if e.type in SEGMENT_TYPES]
    if segment_events:
        stored = await store.lock_memberships(conn, {e.customer_id for e in segment_events})
        changed_memberships = projection.evolve_memberships(stored, segment_events)
        await store.save_memberships(conn, list(changed_memberships.values()))
        metrics.EVENTS_SUPERSEDED.labels("segment").inc(
            len(segment_events) - len(changed_memberships)
        )
    return ()


PROJECTION = Projection(
    name="broadcast",
    topics=TOPICS,
    folds=FOLDS,
    migrations=MIGRATIONS,
    fold=campaign_fold.with_campaigns(fold),
)

if __name__ == "__main__":
    run_worker(PROJECTION, BroadcastSettings())
