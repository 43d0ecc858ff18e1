"""The worker's side of campaigns: folds their definitions and cancellations, the customers'
latest recommendations, names and addresses, and marks each campaign 'planning' when it is due.

A campaign is due at its send instant: an immediate one (or one defined after its instant)
while its definition is folded; a scheduled one at the first tick of crm.campaigns that the
clock dates at or after its instant. The worker's planning job (planning.PLANNING_JOB) then
plans it in chunks, outside the fold. The decision is made at the send instant either way, so
a rebuild decides at the same instant as the live run.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from broadcast_service import campaigns, store
from broadcast_service.events import CAMPAIGN_TYPES, CONTACT_TYPES, RECOMMENDATION_TYPES
from crm_shared.contracts.events import CLOCK_TICKED, ClockTicked, Event
from crm_shared.contracts.topics import CAMPAIGNS
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import Fold


def with_campaigns(fold: Fold) -> Fold:
    """`fold` for preferences, consents and segments, and this module's fold beside it; runs of
    ticks (the projector splits them off) mark the campaigns they make due."""

    async def folded(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
        if events and events[0].type == CLOCK_TICKED:
            await fold_ticks(conn, events)
            return ()
        derived = await fold(conn, events)
        await fold_campaign_inputs(conn, events)
        return derived

    return folded


async def fold_campaign_inputs(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    """Recommendations, names and addresses, then campaign definitions and cancellations; a
    campaign defined for now is marked 'planning' at once."""
    contacts = [e for e in events if e.type in CONTACT_TYPES]
    await store.save_contacts(conn, campaigns.newest_contacts(contacts))
    lists = [e for e in events if e.type in RECOMMENDATION_TYPES]
    await store.save_recommendations(conn, campaigns.newest_recommendations(lists))
    campaign_events = [e for e in events if e.type in CAMPAIGN_TYPES]
    if not campaign_events:
        return
    current = await store.lock_campaigns(conn, {e.customer_id for e in campaign_events})
    changed = campaigns.evolve_campaigns(current, campaign_events)
    await store.save_campaigns(conn, list(changed.values()))
    for campaign in changed.values():
        before = current.get(campaign.campaign_id)
        if campaign.state == "cancelled" and before is not None and before.fixed:
            await store.cancel_messages(conn, campaign.campaign_id)


async def fold_ticks(conn: asyncpg.Connection, ticks: Sequence[Event]) -> None:
    """Mark the scheduled campaigns the newest tick of crm.campaigns makes due."""
    times = [
        t.time for t in ticks if isinstance(t.data, ClockTicked) and t.data.topic == CAMPAIGNS.name
    ]
    if times:
        await store.start_due_campaigns(conn, max(times))
