"""Broadcast worker: folds channel set-ups, consents (keeping every consent event with its
evidence), do-not-contact entries, segment membership, and the holds on promotions; plans the
campaigns that are due, chunk by chunk, beside the fold.

python -m broadcast_service.worker
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import asyncpg

from broadcast_service import campaign_fold, metrics, planning, projection, store
from broadcast_service.config import MIGRATIONS, BroadcastSettings
from broadcast_service.events import (
    COMPLAINT_TYPES,
    CONSENT_TYPES,
    DETRACTOR_TYPES,
    DO_NOT_CONTACT_TYPES,
    FOLDS,
    PREFERENCE_TYPES,
    SEGMENT_TYPES,
    TOPICS,
)
from crm_shared.contracts.events import Event
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.metrics import count
from crm_shared.runtime.projector import Projection
from crm_shared.runtime.shadow import JobColumns, RebuildRules
from crm_shared.runtime.worker import run_worker


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
    """Read the touched states, evolve them purely, write back what changed and the history."""
    preference_events = [e for e in events if e.type in PREFERENCE_TYPES]
    if preference_events:
        current = await store.lock_preferences(conn, {e.customer_id for e in preference_events})
        changed = projection.evolve_preferences(current, preference_events)
        await store.save_preferences(conn, list(changed.values()))
        count(metrics.EVENTS_SUPERSEDED.labels("preference"), len(preference_events) - len(changed))
    consent_events = [e for e in events if e.type in CONSENT_TYPES]
    if consent_events:
        history = projection.consent_changes(consent_events)
        current_consents = await store.lock_consents(conn, {c.customer_id for c in history})
        changed_consents = projection.evolve_consents(current_consents, consent_events)
        await store.save_consents(conn, list(changed_consents.values()))
        await store.add_history(conn, history)
        count(metrics.EVENTS_SUPERSEDED.labels("consent"), len(history) - len(changed_consents))
        for state, states in Counter(consent.state for consent in history).items():
            count(metrics.CONSENT_EVENTS.labels(state), states)
    dnc_events = [e for e in events if e.type in DO_NOT_CONTACT_TYPES]
    if dnc_events:
        stored_dnc = await store.lock_do_not_contact(conn, {e.customer_id for e in dnc_events})
        changed_dnc = projection.evolve_do_not_contact(stored_dnc, dnc_events)
        await store.save_do_not_contact(conn, list(changed_dnc.values()))
        superseded = len(dnc_events) - len(changed_dnc)
        count(metrics.EVENTS_SUPERSEDED.labels("do_not_contact"), superseded)
    complaint_events = [e for e in events if e.type in COMPLAINT_TYPES]
    if complaint_events:
        stored_holds = await store.lock_complaints(conn, {e.customer_id for e in complaint_events})
        changed_holds = projection.evolve_complaints(stored_holds, complaint_events)
        await store.save_complaints(conn, list(changed_holds.values()))
    detractor_events = [e for e in events if e.type in DETRACTOR_TYPES]
    if detractor_events:
        stored_scores = await store.lock_detractors(conn, {e.customer_id for e in detractor_events})
        changed_scores = projection.evolve_detractors(stored_scores, detractor_events)
        await store.save_detractors(conn, list(changed_scores.values()))
    segment_events = [e for e in events if e.type in SEGMENT_TYPES]
    if segment_events:
        stored = await store.lock_memberships(conn, {e.customer_id for e in segment_events})
        changed_memberships = projection.evolve_memberships(stored, segment_events)
        await store.save_memberships(conn, list(changed_memberships.values()))
        count(
            metrics.EVENTS_SUPERSEDED.labels("segment"),
            len(segment_events) - len(changed_memberships),
        )
    return ()


REBUILD_RULES = RebuildRules(
    carried=(
        "plan_ranges",
        "plan_chunks",
        "campaign_reasons",
        "outbound_messages",
        "message_outcomes",
        "campaign_results",
    ),
    job_columns={
        "campaigns": JobColumns(
            "campaign_id",
            ("state", "planned_at", "plan_messages", "plan_seconds"),
            {"state": "CASE {row}.state WHEN 'planned' THEN 'planning' ELSE {row}.state END"},
        ),
    },
    left_out_columns={"segment_memberships": frozenset({"version", "changed_at"})},
    compared_rows={"segment_memberships": "member"},
)
"""The send ledger is what the service did in the world: which messages went out or are planned
to, which parts of a campaign are planned, the reasons its planning found and what became of
the messages. A replay cannot redo a send, so a rebuild carries it, in the order its writers
write it (the planning job: its campaign, ranges, chunk, reasons; the sender: a chunk, its
messages, their outcomes, results): a rebuilt projection never sends a message twice. The
planning job's progress on a campaign: the fold marks a due campaign 'planning', the job plans
it and marks it 'planned' with when, how many messages and how long it took; a replay does not
plan, so those are carried. Segment members are compared as the profile's are (its history
does not replay exactly)."""


PROJECTION = Projection(
    name="broadcast",
    topics=TOPICS,
    folds=FOLDS,
    migrations=MIGRATIONS,
    fold=campaign_fold.with_campaigns(fold),
    rebuild_rules=REBUILD_RULES,
    periodic=(planning.PLANNING_JOB,),
)

if __name__ == "__main__":
    run_worker(PROJECTION, BroadcastSettings())
