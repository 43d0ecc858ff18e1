"""Bounded bookkeeping: applied event ids are forgotten once they leave the deduplication window.

`applied_events` holds one row per event a projection applied, to drop a re-published copy (same
source and id, new offset). Copies arrive within minutes or days, so rows older than the window
(by applied_at) are deleted, a bounded chunk per short transaction so no lock is held for long.
Re-deliveries of the same offsets stay harmless however old: the consumed positions catch them.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from crm_shared.runtime import metrics

log = logging.getLogger(__name__)

PRUNE_CHUNK_ROWS = 5_000

PRUNE_SQL = """
DELETE FROM applied_events
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM applied_events
    WHERE applied_at < $1
    ORDER BY applied_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
"""
"""A chunk: the oldest rows through the applied_at index, locked (SKIP LOCKED lets two replicas
prune side by side, and a locked row keeps its ctid), then deleted where they lie. Written as
`(source, id) IN (SELECT ...)` the planner joined the chunk to a scan of the whole table, every
chunk: 97 ms against 10 ms at 300,000 rows, growing with the deduplication window."""


async def prune_applied_events(
    pool: asyncpg.Pool, before: datetime, chunk_rows: int = PRUNE_CHUNK_ROWS
) -> int:
    """Delete the ids applied before `before`, chunk by chunk; return how many went."""
    pruned = 0
    while True:
        async with pool.acquire() as conn:
            status = await conn.execute(PRUNE_SQL, before, chunk_rows)
        deleted = int(status.rsplit(" ", 1)[-1])  # "DELETE n"
        pruned += deleted
        if deleted < chunk_rows:
            return pruned


async def prune_outside_window(
    pool: asyncpg.Pool, projection: str, window: timedelta, now: datetime | None = None
) -> int:
    """What the worker's timer runs: prune, count, log. Never raises: a failed pruning only
    waits for the next tick, it must not stop the worker from folding."""
    started = time.perf_counter()
    window_start = (now or datetime.now(UTC)) - window
    try:
        pruned = await prune_applied_events(pool, window_start)
    except Exception:
        log.exception("pruning applied events failed; retrying at the next interval")
        return 0
    metrics.APPLIED_EVENTS_PRUNED.labels(projection).inc(pruned)
    log.info(
        "applied events pruned",
        extra={
            "projection": projection,
            "pruned": pruned,
            "applied_before": window_start.isoformat(),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return pruned
