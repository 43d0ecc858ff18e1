"""Periodic jobs: the work a projection repeats beside its fold (precomputed results, models),
held to its share of the time, never stopped by a failure; run by the worker's own event loop
(`Projection.periodic`) or in a process of their own (`run_jobs`).

A process of their own is for jobs whose Python would hold the fold back: in the worker they
share its interpreter lock and its event loop, so every step of a job that does not yield (a
model's numpy in a thread, building thousands of documents) delays the batch being committed
(docs/decisions.md, "The recommendation jobs in a process of their own"). Such a process runs
at a lower CPU priority, as the jobs' database work does everywhere (db.BACKGROUND_NICENESS).

    python -m <service>_service.jobs
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg
import uvloop

from crm_shared.runtime import memory, metrics
from crm_shared.runtime.config import ServiceSettings
from crm_shared.runtime.db import BACKGROUND_NICENESS, lower_priority, open_pool
from crm_shared.runtime.health import serve_metrics_and_health
from crm_shared.runtime.logs import configure_logging
from crm_shared.runtime.outbox import relaying
from crm_shared.runtime.projector import PeriodicJob

log = logging.getLogger(__name__)

FAILURE_BACKOFF_BASE_SECONDS = 2.0
FAILURE_BACKOFF_CAP_SECONDS = 300.0


def failure_backoff_seconds(
    consecutive_failures: int,
    base: float = FAILURE_BACKOFF_BASE_SECONDS,
    cap: float = FAILURE_BACKOFF_CAP_SECONDS,
) -> float:
    """How long a periodic job rests after its n-th failure in a row: `base` doubling up to
    `cap`, so a lasting cause (a missing table, a bad model input) is retried every few minutes
    instead of flooding the log and the database; none before the first failure."""
    if consecutive_failures < 1:
        return 0.0
    return float(min(cap, base * 2 ** min(consecutive_failures - 1, 62)))


def periodic_runner(
    job: PeriodicJob,
    pool: asyncpg.Pool,
    projection: str,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], Awaitable[object]]:
    """The argument-less coroutine function a faust timer (or a jobs process) calls: it skips
    ticks while the job is over its duty or resting after failures (failure_backoff_seconds),
    and never lets a failed run stop the timer. It returns what the run returned (None when
    it skipped the tick or the run failed).

    The duty is kept as credit, in seconds of running: a run spends its length, a second of rest
    earns duty / (1 - duty), up to the job's burst; a tick runs the job while the credit is not
    below zero. Without a burst, a run of d seconds is followed by d / duty - d of rest."""
    not_before = 0.0
    failures = 0
    credit = 0.0
    finished_at = clock()
    earned_per_second = job.duty / (1.0 - job.duty) if job.duty < 1.0 else math.inf
    consecutive_failures = metrics.PERIODIC_JOB_CONSECUTIVE_FAILURES.labels(projection, job.name)

    async def run() -> object:
        nonlocal not_before, failures, credit, finished_at
        started = clock()
        if started < not_before:
            return None
        rested = started - finished_at
        available = (
            min(credit + rested * earned_per_second, job.burst_seconds) if rested > 0 else credit
        )
        if available < 0 and earned_per_second != math.inf:
            return None
        result: object = None
        try:
            result = await job.run(pool)
        except Exception:
            failures += 1
            delay = failure_backoff_seconds(failures)
            log.exception(
                "periodic job failed; its work waits for a later run",
                extra={"job": job.name, "attempt": failures, "next_delay_seconds": delay},
            )
        else:
            if failures:
                log.info("periodic job recovered", extra={"job": job.name, "failures": failures})
            failures, delay = 0, 0.0
        consecutive_failures.set(failures)
        finished_at = clock()
        credit = available - (finished_at - started)
        not_before = finished_at + delay
        return result

    return run


async def _repeat(
    job: PeriodicJob, run: Callable[[], Awaitable[object]], worked: asyncio.Event
) -> None:
    """Tick `run` every `interval_seconds` (it skips ticks over the job's duty), as a worker's
    timer does; `worked` is set after a run that says it did something (a count above 0, a
    version), which may have written events to the outbox: the relay looks at once."""
    while True:
        if await run():
            worked.set()
        await asyncio.sleep(job.interval_seconds)


async def serve_jobs(
    projection: str, jobs: Sequence[PeriodicJob], settings: ServiceSettings, migrations: Path
) -> None:
    """Run the jobs until SIGTERM or SIGINT, with an outbox relay of their own for the events
    they derive (several relays share a database: one relays at a time). A job cut short by
    the stop rolls back, as after a crash: its marks wait for the next run."""
    pool = await open_pool(settings.dsn, migrations, settings.pool_size, background=True)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    bootstrap = settings.platform.kafka_bootstrap
    try:
        async with relaying(projection, pool, bootstrap, f"crm-{projection}-jobs") as relay:
            tasks = [
                asyncio.create_task(
                    _repeat(job, periodic_runner(job, pool, projection), relay.wake)
                )
                for job in jobs
            ]
            log.info(
                "jobs started", extra={"projection": projection, "jobs": [j.name for j in jobs]}
            )
            try:
                await stopping.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await pool.close()
    log.info("jobs stopped", extra={"projection": projection})


def run_jobs(
    projection: str,
    jobs: Sequence[PeriodicJob],
    settings: ServiceSettings,
    metrics_port: int,
    migrations: Path,
) -> None:
    """The composition root of a jobs process: logging, /metrics and /healthz, the jobs."""
    configure_logging(f"{projection}-jobs", settings.platform.log_level)
    allocator = memory.tune_allocator()  # before the jobs' threads
    lowered = lower_priority(0)  # the jobs' own Python, as their database work (background pool)
    serve_metrics_and_health(metrics_port, lambda: None)
    log.info(
        "jobs starting",
        extra={
            "projection": projection,
            "metrics_port": metrics_port,
            "allocator": allocator,
            "niceness": BACKGROUND_NICENESS if lowered else None,
        },
    )
    memory.freeze_startup_objects()  # the jobs' own state changes, and stays collectable
    uvloop.run(serve_jobs(projection, jobs, settings, migrations))
