"""A worker's periodic jobs: held to their share of the time, and never stopped by a failure."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncpg

from crm_shared.runtime.projector import PeriodicJob
from crm_shared.runtime.worker import periodic_runner


class FakeClock:
    """Time that moves only when a job 'works' or the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def runner_for(
    duty: float, seconds_per_run: float, fail: bool = False
) -> tuple[Any, list[float], FakeClock]:
    clock = FakeClock()
    runs: list[float] = []

    async def work(pool: asyncpg.Pool) -> None:
        runs.append(clock.now)
        clock.now += seconds_per_run
        if fail:
            raise RuntimeError("the database went away")

    job = PeriodicJob("test-job", 1.0, work, duty=duty)
    return periodic_runner(job, cast(asyncpg.Pool, None), clock), runs, clock


def test_a_job_waits_its_run_time_divided_by_its_duty_before_the_next_run() -> None:
    run, runs, clock = runner_for(duty=0.25, seconds_per_run=2.0)
    asyncio.run(run())  # 100 -> 102: the next may start at 100 + 2 / 0.25 = 108
    for tick in (103.0, 107.9):
        clock.now = tick
        asyncio.run(run())
    clock.now = 108.0
    asyncio.run(run())
    assert runs == [100.0, 108.0]


def test_a_job_at_full_duty_runs_at_every_tick() -> None:
    run, runs, clock = runner_for(duty=1.0, seconds_per_run=0.5)
    for tick in (100.0, 101.0, 102.0):
        clock.now = tick
        asyncio.run(run())
    assert runs == [100.0, 101.0, 102.0]


def test_a_failing_run_is_logged_and_the_job_runs_again_later(caplog: Any) -> None:
    run, runs, clock = runner_for(duty=0.5, seconds_per_run=1.0, fail=True)
    asyncio.run(run())
    clock.now = 102.0
    asyncio.run(run())
    assert runs == [100.0, 102.0]
    assert "periodic job failed" in caplog.text
