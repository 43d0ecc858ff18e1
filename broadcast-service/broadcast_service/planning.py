"""Planning campaigns, and their dry runs, by decision signature: a chunk of recipients is
counted by signature in SQL (`store.signature_groups`: all the decision reads of them, but
who they are), one recipient of each signature is read whole and decided purely
(`campaigns.plan_signatures`), and one statement keeps the message of every recipient of a reached
signature, at their own address, as one row of arrays for the chunk (`store.add_plan_chunk`);
the sender writes a chunk out as outbound_messages rows when its first message is due
(`store.take_due_chunk`). The planner handles signatures, never recipients: a chunk of 10,000
customers who look alike costs a few dozen decisions, no per-recipient work in Python and no
row per recipient.

Planning runs as a job of the worker (`PLANNING_JOB`), not inside the fold: the fold only marks
a campaign 'planning' when it is due, so a campaign to a million customers never holds the
fold. When planning starts, the campaign's recipients are cut into ranges of a chunk each (in
id order, `store.ranges_to_plan`); connections, and worker replicas, plan ranges at once and in
any order, each range claimed by one of them (`store.claim_range`). Each chunk's write is one
transaction: the campaign locked, the range marked planned, its rows and its reasons; a crash
resumes with the ranges not planned yet, and no recipient is planned twice. The throttle numbers
messages in the order chunks commit (docs/decisions.md, "Ranges planned in any order"). The
decision instant is the send instant either way, so a plan decides as the old in-fold plan did.
The API's dry run reads in a read-only transaction and writes nothing. Both read in
repeatable-read transactions, so a chunk's signatures and the recipients read whole to decide
for them come from one snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

import asyncpg

from broadcast_service import campaigns, metrics, store
from broadcast_service.campaigns import Campaign
from broadcast_service.config import BroadcastSettings
from broadcast_service.decision import DEFAULT_POLICY, ContactPolicy, sends_since
from broadcast_service.projection import normalise_purpose
from crm_shared.runtime.projector import PeriodicJob

log = logging.getLogger(__name__)

PLANNED_REASONS = frozenset({campaigns.PLANNED, campaigns.PLANNED_LATER})
PLANNING_INTERVAL_SECONDS = 0.5
"""How often the worker looks for campaigns to plan (the fold marks them; this plans them)."""


@dataclass(frozen=True)
class Planner:
    chunk_size: int
    connections: int
    """Chunks planned at once, each on a connection of its own (PostgreSQL does the reading: two
    backends use both cores of a small machine, a third reads while another writes)."""
    policy: ContactPolicy = DEFAULT_POLICY


@cache
def planner_from_settings() -> Planner:
    """The worker's planner, from its settings (read once, when a campaign is first planned)."""
    settings = BroadcastSettings()
    return Planner(settings.plan_batch_size, settings.plan_connections, settings.contact_policy())


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
    campaign_seconds: float | None = None
    """Once finished, how long the whole plan took, its chunks added up."""


class _CampaignPlan:
    """One campaign's plan shared by the connections planning it: the ranges left to hand out.
    Ranges are planned in any order, each committed on its own, so the connections never wait
    for each other but for the campaign's row lock while one commits its chunk."""

    def __init__(
        self,
        campaign: Campaign,
        read: store.SignatureRead,
        ranges: list[store.PlanRange],
        planner: Planner,
    ) -> None:
        self.campaign = campaign
        self.planner = planner
        self.read = read
        self.ranges = deque(ranges)
        self.stopped = False
        self.last_written = 0.0
        """When the latest chunk was written (perf_counter): a chunk's time runs from then, or
        from its read if later, so that the chunks' times add up to the plan's."""

    def next_range(self) -> store.PlanRange | None:
        """The next range to plan, None when every range is handed out or the plan stopped."""
        if self.stopped or not self.ranges:
            return None
        return self.ranges.popleft()


async def _plan_chunks(
    pool: asyncpg.Pool, plan: _CampaignPlan, progress: Callable[[ChunkPlanned], object] | None
) -> int:
    """Plan ranges of the campaign on one connection, each read then written; how many chunks
    this connection wrote."""
    campaign_id = plan.campaign.campaign_id
    written = 0
    async with pool.acquire() as conn:
        while (planned := plan.next_range()) is not None:
            if not await store.claim_range(conn, campaign_id, planned.number):
                continue  # another planner (a replica) is planning it
            try:
                done = await _plan_range(conn, plan, planned)
            except BaseException:
                await _release_after_failure(conn, campaign_id, planned.number)
                raise
            await store.release_range(conn, campaign_id, planned.number)
            if done is store.NotPlanned.RANGE_PLANNED:
                continue  # by another planner meanwhile: the campaign's other ranges go on
            if done is store.NotPlanned.CAMPAIGN_STOPPED:  # every connection stops
                plan.stopped = True
                return written
            written += 1  # counted once committed: a chunk rolled back is planned again
            _committed(done)
            if progress is not None:
                progress(done)
    return written


async def _release_after_failure(conn: asyncpg.Connection, campaign_id: str, number: int) -> None:
    """Release a range whose planning failed, without hiding why it failed: a connection too
    broken to release it is logged, and its session's end (or the pool's reset of the
    connection) releases the range."""
    try:
        await store.release_range(conn, campaign_id, number)
    except Exception:
        log.warning(
            "plan range not released after a failure; its session's end releases it",
            extra={"campaign_id": campaign_id, "range": number},
            exc_info=True,
        )


async def _plan_range(
    conn: asyncpg.Connection, plan: _CampaignPlan, planned: store.PlanRange
) -> ChunkPlanned | store.NotPlanned:
    """Read, decide and write one range, or say why it is not planned now."""
    campaign, planner, read = plan.campaign, plan.planner, plan.read
    started = time.perf_counter()
    # Repeatable read: a chunk's signatures and the recipients read to decide for them come
    # from one snapshot, so a change committed in between cannot part them.
    async with conn.transaction(isolation="repeatable_read"):
        dense = await store.is_dense(conn, read, planned.after, planned.last)
        chunk = await store.signature_groups(
            conn, read, planned.after, planned.last, keep=True, dense=dense
        )
        decided = await _decided(
            conn, campaign, chunk.groups, campaign.send_at, read.since, planner.policy
        )
    if plan.stopped:
        return store.NotPlanned.CAMPAIGN_STOPPED
    async with conn.transaction():
        done = await _write_chunk(conn, plan, planned.number, chunk, decided, started)
    plan.last_written = time.perf_counter()
    return done


async def _write_chunk(
    conn: asyncpg.Connection,
    plan: _CampaignPlan,
    number: int,
    chunk: store.SignatureChunk,
    decided: campaigns.SignedPlan,
    started: float,
) -> ChunkPlanned | store.NotPlanned:
    """In the caller's transaction: range `number`'s chunk kept with the campaign, if the
    campaign is still being planned and the range is not planned yet (else why not). The
    throttle numbers the messages in the order chunks are written (in id order within one)."""
    campaign = plan.campaign
    first = await store.lock_planning(conn, campaign.campaign_id, number)
    if isinstance(first, store.NotPlanned):
        return first
    definition = campaign.definition
    rows = store.PlannedRows(
        campaign.campaign_id,
        definition.purpose.value,
        campaigns.message_id_prefix(campaign.campaign_id),
        campaign.send_at,
        definition.throttle_per_second,
        first,
        datetime.now(UTC),
    )
    messages = await store.add_plan_chunk(conn, rows, decided.reached)
    seconds = time.perf_counter() - max(started, plan.last_written)
    finished = await store.record_plan_chunk(
        conn, campaign.campaign_id, messages, seconds, decided.reasons, PLANNED_REASONS
    )
    total = (
        await store.finish_plan(conn, campaign.campaign_id, campaign.send_at) if finished else None
    )
    return ChunkPlanned(
        campaign.campaign_id,
        chunk.recipients,
        messages,
        decided.reasons,
        seconds,
        finished,
        definition.purpose.value,
        decided.decided,
        total,
    )


def _committed(chunk: ChunkPlanned) -> None:
    """Count and log a committed chunk (recipients per reason, decisions, times)."""
    if chunk.campaign_seconds is not None:
        metrics.CAMPAIGNS_PLANNED.inc()
        metrics.PLANNING_SECONDS.observe(chunk.campaign_seconds)
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


async def plan_due(
    pool: asyncpg.Pool,
    planner: Planner,
    progress: Callable[[ChunkPlanned], object] | None = None,
) -> int:
    """Plan every campaign marked 'planning', oldest first, a range per transaction, over
    `planner.connections` connections at once, until none is left (or a round plans nothing:
    other planners hold its ranges); returns the chunks planned."""
    chunks = 0
    while True:
        async with pool.acquire() as conn:
            campaign = await store.next_planning(conn)
            if campaign is None:
                return chunks
            read = _signature_read(campaign, campaign.send_at, planner.chunk_size)
            ranges = await store.ranges_to_plan(conn, campaign, read)
        if not ranges:
            continue  # planned already, or cancelled meanwhile: marked so
        plan = _CampaignPlan(campaign, read, ranges, planner)
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(_plan_chunks(pool, plan, progress))
                for _ in range(planner.connections)
            ]
        planned = sum(task.result() for task in tasks)
        if planned == 0:
            return chunks
        chunks += planned


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
    Inside a repeatable-read transaction (as planning: see `plan_due`), read-only for callers
    that want it so; JIT is turned off in it."""
    reasons: Counter[str] = Counter()
    read = _signature_read(campaign, at, batch_size)
    for after, last in store.cut_ranges(None, await store.range_ends(conn, read, None)):
        dense = await store.is_dense(conn, read, after, last)
        chunk = await store.signature_groups(conn, read, after, last, dense=dense)
        reasons.update(
            (await _decided(conn, campaign, chunk.groups, at, read.since, policy)).reasons
        )
    return reasons


async def _decided(
    conn: asyncpg.Connection,
    campaign: Campaign,
    groups: Sequence[store.SignatureGroup],
    at: datetime,
    since: datetime,
    policy: ContactPolicy,
) -> campaigns.SignedPlan:
    """The decision at `at` of each signature of a chunk, its example read whole (with its
    sends since `since`)."""
    examples = await store.recipients_of(conn, [g.example for g in groups], since)
    return campaigns.plan_signatures(
        campaign,
        ((g.number, e, g.recipients) for g, e in zip(groups, examples, strict=True)),
        at,
        policy,
    )


def _signature_read(campaign: Campaign, at: datetime, chunk: int) -> store.SignatureRead:
    """What a plan or dry run of the campaign at `at` reads, `chunk` recipients at a time."""
    purpose = normalise_purpose(campaign.definition.purpose.value)
    return store.SignatureRead(campaign.definition.target, purpose, sends_since(at), chunk)
