"""The worker's side of campaigns: folds their definitions and cancellations, the customers'
latest recommendations, names and addresses, and plans each campaign when it is due.

A campaign is due at its send instant: an immediate one (or one defined after its instant)
while its definition is folded; a scheduled one at the first tick of crm.campaigns that the
clock dates at or after its instant. The decision is made at the send instant either way, so a
rebuild decides at the same instant as the live run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg

from broadcast_service import campaigns, store
from broadcast_service.events import CAMPAIGN_TYPES, CONTACT_TYPES, RECOMMENDATION_TYPES
from broadcast_service.planning import Planner, plan, planner_from_settings
from crm_shared.contracts.events import CLOCK_TICKED, ClockTicked, Event
from crm_shared.contracts.topics import CAMPAIGNS
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import Fold


def with_campaigns(fold: Fold, planner: Callable[[], Planner] = planner_from_settings) -> Fold:
    """`fold` for preferences, consents and segments, and this module's fold beside it; runs of
    ticks (the projector splits them off) plan the campaigns they make due."""

    async def folded(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
        if events and events[0].type == CLOCK_TICKED:
            await fold_ticks(conn, events, planner)
            return ()
        derived = await fold(conn, events)
        await fold_campaign_inputs(conn, events, planner)
        return derived

    return folded


async def fold_campaign_inputs(
    conn: asyncpg.Connection, events: Sequence[Event], planner: Callable[[], Planner]
) -> None:
    """Recommendations, names and addresses, then campaign definitions and cancellations; a
    campaign defined for now is planned at once, with what the batch folded before it."""
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
        if campaign.state == "cancelled" and before is not None and before.state == "planned":
            await store.cancel_messages(conn, campaign.campaign_id)
        elif campaign.due(campaign.defined_at):
            await plan(conn, campaign, planner())


async def fold_ticks(
    conn: asyncpg.Connection, ticks: Sequence[Event], planner: Callable[[], Planner]
) -> None:
    """Plan the scheduled campaigns the newest tick of crm.campaigns makes due."""
    times = [
        t.time for t in ticks if isinstance(t.data, ClockTicked) and t.data.topic == CAMPAIGNS.name
    ]
    if times:
        for campaign in await store.due_campaigns(conn, max(times)):
            await plan(conn, campaign, planner())
