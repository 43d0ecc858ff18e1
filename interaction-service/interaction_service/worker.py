"""Interaction worker: folds every touchpoint (contacts, feedback, orders, refunds and
cancellations, sessions, consents and preferences, message outcomes, case steps) into customer
timelines and contact summaries; product views only move journeys.

python -m interaction_service.worker
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import asyncpg

from crm_shared.contracts.events import CLOCK_TICKED, PRODUCT_VIEWED, Event
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.metrics import count
from crm_shared.runtime.projector import PeriodicJob, Projection
from crm_shared.runtime.shadow import RebuildRules
from crm_shared.runtime.worker import run_worker
from interaction_service import case_fold, experience_fold, metrics, projection, store
from interaction_service.config import MIGRATIONS, InteractionSettings
from interaction_service.events import FOLDS, TOPICS

log = logging.getLogger(__name__)


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
    """Write the timeline rows; add only the rows that were new to the summaries; then the
    ratings and journeys (a run of ticks only moves the journeys' time)."""
    if events and events[0].type == CLOCK_TICKED:
        return await experience_fold.fold_ticks(conn, events)
    # Product views show interest (the journey) but are not touchpoints: no timeline row.
    touchpoints = [e for e in events if e.type != PRODUCT_VIEWED]
    entries = projection.timeline_entries(touchpoints)
    written = await store.add_to_timeline(conn, entries)
    # A row already present was counted when it was written: the summary follows the timeline.
    new = [e for e in touchpoints if projection.event_key(e) in written]
    deltas = projection.summary_deltas(new)
    await store.add_to_summaries(conn, deltas)
    # Counted per label, not per row: a labels() lookup per row costs more than the row.
    written_entries = [e for e in entries if (e.source, e.event_id) in written]
    for kind, entries_of_kind in Counter(e.kind for e in written_entries).items():
        count(metrics.TIMELINE_ENTRIES.labels(kind), entries_of_kind)
    outcomes = Counter((e.kind, e.outcome) for e in written_entries if e.outcome is not None)
    for (kind, outcome), times in outcomes.items():
        count(metrics.TOUCHPOINT_OUTCOMES.labels(kind, outcome), times)
    unlisted = projection.unlisted_outcomes(new)
    if unlisted:
        count(metrics.UNLISTED_OUTCOMES, len(unlisted))
        log.info(
            "contact outcomes not in the list, folded as other",
            extra={"count": len(unlisted), "examples": sorted(set(unlisted))[:5]},
        )
    totals = deltas.values()
    if totals:
        count(metrics.UNHAPPY_TOUCHPOINTS.labels("complaint"), sum(t.complaints for t in totals))
        count(metrics.UNHAPPY_TOUCHPOINTS.labels("refusal"), sum(t.refusals for t in totals))
    if len(touchpoints) < len(events):  # the views, in batch order among the new touchpoints
        new = [e for e in events if e.type == PRODUCT_VIEWED or projection.event_key(e) in written]
    return await experience_fold.fold(conn, new)


REBUILD_RULES = RebuildRules(
    left_out_columns={"journeys": frozenset({"version", "entered_at", "judged_at"})},
    compared_rows={"journey_transitions": "false"},
)
"""A journey's path does not replay exactly: orders and contacts travel on two topics that keep
no order between them, so a rebuild gives the same stages, not always the same transitions nor
when each was entered or judged (docs/journey.md)."""


PROJECTION = Projection(
    name="interaction",
    topics=TOPICS,
    folds=FOLDS,
    migrations=MIGRATIONS,
    fold=case_fold.with_cases(fold),
    rebuild_rules=REBUILD_RULES,
    # The timeline's read orders and filters: the fold only inserts by the event key.
    read_only_indexes=(
        "timeline_customer_time",
        "timeline_customer_kind_time",
        "timeline_customer_channel_time",
        "timeline_customer_department_time",
        "timeline_customer_recorded",
    ),
    periodic=(
        case_fold.OPEN_CASES_JOB,
        PeriodicJob(
            "experience-gauges",
            experience_fold.GAUGE_INTERVAL_SECONDS,
            experience_fold.refresh_gauges,
            duty=0.1,
        ),
    ),
)

if __name__ == "__main__":
    run_worker(PROJECTION, InteractionSettings())
