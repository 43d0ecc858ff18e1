"""Interaction worker: folds contacts, feedback, orders and refunds into customer timelines and
contact summaries.

python -m interaction_service.worker
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from crm_shared.contracts.events import Event
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import Projection
from crm_shared.runtime.worker import run_worker
from interaction_service import metrics, projection, store
from interaction_service.config import MIGRATIONS, InteractionSettings
from interaction_service.events import FOLDS, TOPICS


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
    """Write the timeline rows; add only the rows that were new to the summaries."""
    entries = projection.timeline_entries(events)
    written = await store.add_to_timeline(conn, entries)
    # A row already present was counted when it was written: the summary follows the timeline.
    new = [e for e in events if projection.event_key(e) in written]
    deltas = projection.summary_deltas(new)
    await store.add_to_summaries(conn, deltas)
    for entry in entries:
        if (entry.source, entry.event_id) in written:
            metrics.TIMELINE_ENTRIES.labels(entry.kind).inc()
    for delta in deltas.values():
        metrics.UNHAPPY_TOUCHPOINTS.labels("complaint").inc(delta.complaints)
        metrics.UNHAPPY_TOUCHPOINTS.labels("refusal").inc(delta.refusals)
    return ()


PROJECTION = Projection(
    name="interaction", topics=TOPICS, folds=FOLDS, migrations=MIGRATIONS, fold=fold
)

if __name__ == "__main__":
    run_worker(PROJECTION, InteractionSettings())
