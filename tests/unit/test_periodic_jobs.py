"""A worker's periodic jobs: held to their share of the time, never stopped by a failure, and
backing off while they keep failing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, cast

import asyncpg
import pytest
from prometheus_client import REGISTRY

from crm_shared.runtime.jobs import failure_backoff_seconds, periodic_runner
from crm_shared.runtime.projector import PeriodicJob


class FakeClock:
    """Time that moves only when a job 'works' or the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def runner_for(
    duty: float,
    seconds_per_run: float,
    failures: Sequence[bool] = (),
    name: str = "test-job",
    burst: float = 0.0,
) -> tuple[Any, list[float], FakeClock]:
    """A runner of a job whose n-th run fails when failures[n] is true (later runs succeed)."""
    clock = FakeClock()
    runs: list[float] = []

    async def work(pool: asyncpg.Pool) -> None:
        runs.append(clock.now)
        clock.now += seconds_per_run
        if len(runs) <= len(failures) and failures[len(runs) - 1]:
            raise RuntimeError("the database went away")

    job = PeriodicJob(name, 1.0, work, duty=duty, burst_seconds=burst)
    return periodic_runner(job, cast(asyncpg.Pool, None), "test", clock), runs, clock


def tick_until(run: Any, clock: FakeClock, end: float, every: float) -> None:
    """Call the runner as a faust timer would, every `every` seconds until `end`."""
    while clock.now < end:
        asyncio.run(run())
        clock.now += every


def consecutive_failures(name: str) -> float | None:
    return REGISTRY.get_sample_value(
        "crm_periodic_job_consecutive_failures", {"projection": "test", "periodic_job": name}
    )


def test_a_job_waits_its_run_time_divided_by_its_duty_before_the_next_run() -> None:
    run, runs, clock = runner_for(duty=0.25, seconds_per_run=2.0)
    asyncio.run(run())  # 100 -> 102: the next may start at 100 + 2 / 0.25 = 108
    for tick in (103.0, 107.9):
        clock.now = tick
        asyncio.run(run())
    clock.now = 108.0
    asyncio.run(run())
    assert runs == [100.0, 108.0]


def test_after_a_quiet_spell_a_job_with_a_burst_runs_at_once_then_is_held_to_its_duty() -> None:
    """Half duty, 3 s of burst, runs of 1 s: rest earns a second of running per second."""
    run, runs, clock = runner_for(duty=0.5, seconds_per_run=1.0, burst=3.0)
    clock.now = 110.0  # ten quiet seconds: the credit is full (3 s)
    tick_until(run, clock, end=120.0, every=0.25)
    # 110, 111.25 and 112.5 spend the burst (each tick after a run earns 0.25 s back); from
    # then on a run of 1 s needs 1 s of rest, as without a burst
    assert runs[:4] == [110.0, 111.25, 112.5, 113.75]
    assert [later - earlier for earlier, later in pairwise(runs[4:])] == [2.0] * (len(runs) - 5)
    assert len(runs) - 5 >= 2


def test_a_job_without_a_burst_waits_after_a_quiet_spell_as_before() -> None:
    run, runs, clock = runner_for(duty=0.5, seconds_per_run=1.0)
    clock.now = 110.0
    tick_until(run, clock, end=115.0, every=0.25)
    assert runs == [110.0, 112.0, 114.0]


def test_a_job_at_full_duty_runs_at_every_tick() -> None:
    run, runs, clock = runner_for(duty=1.0, seconds_per_run=0.5)
    for tick in (100.0, 101.0, 102.0):
        clock.now = tick
        asyncio.run(run())
    assert runs == [100.0, 101.0, 102.0]


def test_the_backoff_doubles_from_two_seconds_up_to_five_minutes() -> None:
    assert [failure_backoff_seconds(n) for n in range(11)] == [
        0.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        64.0,
        128.0,
        256.0,
        300.0,
        300.0,
    ]
    assert failure_backoff_seconds(100_000) == 300.0


def test_a_job_that_fails_twice_rests_2_then_4_seconds_then_runs_at_every_tick_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    run, runs, clock = runner_for(
        duty=1.0, seconds_per_run=0.0, failures=(True, True), name="fails-twice"
    )
    tick_until(run, clock, end=100.6, every=0.5)
    assert consecutive_failures("fails-twice") == 1
    tick_until(run, clock, end=107.6, every=0.5)
    assert runs == [100.0, 102.0, 106.0, 106.5, 107.0, 107.5]
    assert consecutive_failures("fails-twice") == 0
    failed = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert [(r.__dict__["attempt"], r.__dict__["next_delay_seconds"]) for r in failed] == [
        (1, 2.0),
        (2, 4.0),
    ]
    assert all(record.exc_info for record in failed)
    assert "periodic job recovered" in caplog.text


def test_the_failures_of_a_job_that_keeps_failing_are_counted_while_it_rests_longer() -> None:
    run, runs, clock = runner_for(
        duty=1.0, seconds_per_run=1.0, failures=(True,) * 20, name="keeps-failing"
    )
    tick_until(run, clock, end=1000.0, every=1.0)
    # each rest counts from the failed run's end: 2, 4, 8, ... 256, then 300 s
    assert [later - earlier for earlier, later in pairwise(runs)] == [
        3.0,
        5.0,
        9.0,
        17.0,
        33.0,
        65.0,
        129.0,
        257.0,
        301.0,
    ]
    assert consecutive_failures("keeps-failing") == len(runs)


def test_a_tick_returns_what_the_run_did_and_none_when_skipped_or_failed() -> None:
    """What a jobs process wakes its outbox relay by: a run's own result."""
    clock = FakeClock()
    outcomes: list[int | Exception] = [3, RuntimeError("the database went away"), 0]

    async def work(pool: asyncpg.Pool) -> int:
        clock.now += 1.0
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    job = PeriodicJob("returning-job", 1.0, work, duty=0.5)
    run = periodic_runner(job, cast(asyncpg.Pool, None), "test", clock)
    assert asyncio.run(run()) == 3  # 100 -> 101
    assert asyncio.run(run()) is None  # at 101, over its duty: skipped
    clock.now = 102.0
    assert asyncio.run(run()) is None  # failed: backs off 2 s
    clock.now = 105.0
    assert asyncio.run(run()) == 0
    assert outcomes == []
