"""Planning campaigns, and their dry runs: recipients read chunk by chunk in a few set-based
statements, decided purely (broadcast_service.campaigns), the narrow rows written with COPY.

Planning runs as a job of the worker (`PLANNING_JOB`), not inside the fold: the fold only marks
a campaign 'planning' when it is due, so a campaign to a million customers never holds the
fold. Each chunk is one transaction: the campaign locked, its rows, its cursor (the last
recipient decided, in id order) and its reasons so far; a crash resumes after the last chunk
committed, and no recipient is planned twice. The decision instant is the send instant either
way, so a plan decides as the old in-fold plan did. The API's dry run reads in a read-only
transaction and writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

import asyncpg

from broadcast_service import campaigns, metrics, store
from broadcast_service.campaigns import Campaign
from broadcast_service.config import BroadcastSettings
from broadcast_service.decision import DEFAULT_POLICY, ContactPolicy, sends_since
from crm_shared.runtime.projector import PeriodicJob

log = logging.getLogger(__name__)

PLANNED_REASONS = frozenset({campaigns.PLANNED, campaigns.PLANNED_LATER})
PLANNING_INTERVAL_SECONDS = 0.5
"""How often the worker looks for campaigns to plan (the fold marks them; this plans them)."""


@dataclass(frozen=True)
class Planner:
    chunk_size: int
    policy: ContactPolicy = DEFAULT_POLICY


@cache
def planner_from_settings() -> Planner:
    """The worker's planner, from its settings (read once, when a campaign is first planned)."""
    settings = BroadcastSettings()
    return Planner(settings.plan_batch_size, settings.contact_policy())


@dataclass(frozen=True)
class ChunkPlanned:
    """What one chunk did: the campaign, the recipients it decided, the rows it wrote, and
    whether the campaign's plan is now complete."""

    campaign_id: str
    recipients: int
    messages: int
    reasons: Counter[str]
    seconds: float
    finished: bool
    purpose: str
    decided: Counter[tuple[str, tuple[str, ...]]]
    """Recipients per (reason, decision codes), for crm_broadcast_decisions."""


async def plan_chunk(conn: asyncpg.Connection, planner: Planner) -> ChunkPlanned | None:
    """Plan the next chunk of the oldest campaign being planned (None: nothing to plan). The
    caller owns the transaction; the campaign stays locked until it commits."""
    started = time.perf_counter()
    planning = await store.lock_next_planning(conn)
    if planning is None:
        return None
    campaign = planning.campaign
    at = campaign.send_at
    recipients = await store.recipients_after(
        conn, campaign.definition.target, planning.cursor, planner.chunk_size, sends_since(at)
    )
    plan = campaigns.plan_batch(campaign, recipients, at, planning.messages, planner.policy)
    await store.add_planned_rows(conn, plan.messages, datetime.now(UTC))
    cursor = recipients[-1].customer_id if recipients else planning.cursor
    seconds = time.perf_counter() - started
    await store.record_plan_chunk(
        conn,
        campaign.campaign_id,
        cursor,
        len(plan.messages),
        seconds,
        plan.reasons,
        PLANNED_REASONS,
    )
    finished = len(recipients) < planner.chunk_size
    if finished:
        total = await store.finish_plan(conn, campaign.campaign_id, at)
        metrics.CAMPAIGNS_PLANNED.inc()
        metrics.PLANNING_SECONDS.observe(total)
    return ChunkPlanned(
        campaign.campaign_id,
        len(recipients),
        len(plan.messages),
        plan.reasons,
        seconds,
        finished,
        campaign.definition.purpose.value,
        plan.decided,
    )


async def plan_due(
    pool: asyncpg.Pool,
    planner: Planner,
    progress: Callable[[ChunkPlanned], object] | None = None,
) -> int:
    """Plan every campaign marked 'planning', a chunk per transaction, until none is left;
    returns the chunks planned. Each chunk is logged and counted (recipients per reason)."""
    chunks = 0
    async with pool.acquire() as conn:
        while True:
            async with conn.transaction():
                chunk = await plan_chunk(conn, planner)
            if chunk is None:
                return chunks
            chunks += 1
            for reason, count in chunk.reasons.items():
                metrics.CAMPAIGN_RECIPIENTS.labels(reason).inc(count)
            metrics.count_planned(chunk.purpose, chunk.decided)
            metrics.PLANNING_CHUNK_SECONDS.observe(chunk.seconds)
            log.info(
                "campaign plan chunk committed",
                extra={
                    "campaign_id": chunk.campaign_id,
                    "recipients": chunk.recipients,
                    "messages": chunk.messages,
                    "seconds": round(chunk.seconds, 3),
                    "finished": chunk.finished,
                },
            )
            if progress is not None:
                progress(chunk)


async def _plan_due_campaigns(pool: asyncpg.Pool) -> None:
    await plan_due(pool, planner_from_settings())


PLANNING_JOB = PeriodicJob("campaign-planning", PLANNING_INTERVAL_SECONDS, _plan_due_campaigns)


async def dry_run(
    conn: asyncpg.Connection,
    campaign: Campaign,
    at: datetime,
    batch_size: int,
    policy: ContactPolicy = DEFAULT_POLICY,
) -> Counter[str]:
    """Recipients per decision reason if the campaign were planned at `at`; writes nothing.
    Inside a transaction (JIT is turned off in it), read-only for callers that want it so."""
    reasons: Counter[str] = Counter()
    target = campaign.definition.target
    after: str | None = None
    while batch := await store.recipients_after(conn, target, after, batch_size, sends_since(at)):
        reasons.update(campaigns.dry_run(campaign, batch, at, policy))
        if len(batch) < batch_size:
            break
        after = batch[-1].customer_id
    return reasons
