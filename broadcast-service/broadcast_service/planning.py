"""Planning a campaign, and its dry run: the recipients read batch by batch in a few set-based
statements, decided and rendered purely (broadcast_service.campaigns), the plan written.

The caller owns the transaction: the worker plans inside the fold that makes the campaign due,
with the consumed positions, so a crash plans nothing or everything; the API's dry run reads in
a read-only transaction.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache

import asyncpg

from broadcast_service import campaigns, metrics, store
from broadcast_service.campaigns import Campaign
from broadcast_service.config import BroadcastSettings
from broadcast_service.decision import DEFAULT_POLICY, ContactPolicy, sends_since
from broadcast_service.templates import Links

PLANNED_REASONS = frozenset({campaigns.PLANNED, campaigns.PLANNED_LATER})


@dataclass(frozen=True)
class Planner:
    links: Links
    batch_size: int
    policy: ContactPolicy = DEFAULT_POLICY


@cache
def planner_from_settings() -> Planner:
    """The worker's planner, from its settings (read once, when a campaign is first planned)."""
    settings = BroadcastSettings()
    platform = settings.platform
    secret = platform.link_secret.get_secret_value() if platform.link_secret else None
    return Planner(
        Links(secret, platform.public_url), settings.plan_batch_size, settings.contact_policy()
    )


@dataclass(frozen=True)
class PlanResult:
    messages: int
    reasons: Counter[str]
    seconds: float


async def plan(
    conn: asyncpg.Connection,
    campaign: Campaign,
    planner: Planner,
    progress: Callable[[int], object] | None = None,
) -> PlanResult:
    """Plan the campaign at its send instant: one decision per recipient, one message per
    recipient reached (ids derived from campaign and customer: planning again adds none).
    `progress(recipients decided so far)` is called after each batch."""
    started = time.perf_counter()
    at = campaign.send_at
    definition = campaign.definition
    reasons: Counter[str] = Counter()
    planned = 0
    batches = store.recipient_batches(
        conn,
        definition.target,
        sends_since(at),
        definition.include_recommendations,
        planner.batch_size,
    )
    async for batch in batches:
        part = campaigns.plan_batch(campaign, batch, at, planner.links, planned, planner.policy)
        await store.add_messages(conn, part.messages)
        planned += len(part.messages)
        reasons.update(part.reasons)
        if progress is not None:
            progress(sum(reasons.values()))
    seconds = time.perf_counter() - started
    await store.record_plan(conn, campaign.campaign_id, at, seconds, reasons, PLANNED_REASONS)
    metrics.CAMPAIGNS_PLANNED.inc()
    metrics.PLANNING_SECONDS.observe(seconds)
    for reason, count in reasons.items():
        metrics.CAMPAIGN_RECIPIENTS.labels(reason).inc(count)
    return PlanResult(planned, reasons, seconds)


async def dry_run(
    conn: asyncpg.Connection,
    campaign: Campaign,
    at: datetime,
    batch_size: int,
    policy: ContactPolicy = DEFAULT_POLICY,
) -> Counter[str]:
    """Recipients per decision reason if the campaign were planned at `at`; writes nothing.
    Inside a transaction (the cursor needs one), read-only for callers that want it so."""
    reasons: Counter[str] = Counter()
    target = campaign.definition.target
    async for batch in store.recipient_batches(conn, target, sends_since(at), False, batch_size):
        reasons.update(campaigns.dry_run(campaign, batch, at, policy))
    return reasons
