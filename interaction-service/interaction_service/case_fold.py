"""The worker's side of cases: folds case steps and the ticks of crm.cases partitions (deadlines)
beside the service's other folds, and keeps the open-cases gauge in step with the table.

The domain rules are in interaction_service.cases; this module reads and writes through store.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import asyncpg

from crm_shared.contracts.events import CASE_STEP_TYPES, CLOCK_TICKED, CaseStep, ClockTicked, Event
from crm_shared.contracts.topics import CASES
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.metrics import count
from crm_shared.runtime.projector import Fold, PeriodicJob
from interaction_service import cases, metrics, store
from interaction_service.case_settings import CaseSettings

OPEN_CASES_REFRESH_SECONDS = 10.0


@cache
def sla_policy() -> cases.SlaPolicy:
    """The SLA targets and repeat window of this process (read once from CRM_CASES_*)."""
    settings = CaseSettings()
    return cases.SlaPolicy(
        settings.first_response_hours,
        settings.resolution_hours,
        settings.repeat_window,
    )


def with_cases(fold: Fold) -> Fold:
    """`fold` for every event, case steps included (each is a touchpoint on the timeline), and
    the case fold for the steps; ticks go to both (case deadlines here, whatever else moves with
    time there: the journeys)."""

    async def fold_all(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
        if events and events[0].type == CLOCK_TICKED:  # a run of ticks (the projector splits)
            return [*await fold_ticks(conn, events), *await fold(conn, events)]
        derived = list(await fold(conn, events))
        steps = [e for e in events if e.type in CASE_STEP_TYPES]
        if steps:
            derived.extend(await fold_steps(conn, steps))
        return derived

    return fold_all


async def fold_steps(conn: asyncpg.Connection, steps: Sequence[Event]) -> list[Derived]:
    """Apply case steps to the cases they name, locked, and write what changed."""
    policy = sla_policy()
    case_ids = {step.data.case_id for step in steps if isinstance(step.data, CaseStep)}
    stored = await store.cases_for_update(conn, case_ids)
    since = min(step.time for step in steps) - policy.repeat_window
    openings = await store.openings_since(conn, {step.customer_id for step in steps}, since)
    folded = cases.fold_steps(stored, openings, steps, policy)
    await _write(conn, folded)
    for record in folded.steps:
        if not record.accepted:
            count(metrics.CASE_STEPS_REJECTED.labels(record.step))
    return folded.derived


async def fold_ticks(conn: asyncpg.Connection, ticks: Sequence[Event]) -> list[Derived]:
    """Deadlines the ticks of crm.cases partitions pass become breaches (ticks of the other
    topics the worker reads carry the same time and are not needed)."""
    by_partition: dict[int, list[Event]] = {}
    for tick in ticks:
        data = tick.data
        assert isinstance(data, ClockTicked)
        if data.topic == CASES.name:
            by_partition.setdefault(data.partition, []).append(tick)
    derived: list[Derived] = []
    for partition, partition_ticks in sorted(by_partition.items()):
        newest = max(tick.time for tick in partition_ticks)
        candidates = await store.overdue_cases_for_update(conn, partition, newest)
        folded = cases.fold_ticks(candidates, partition_ticks)
        await _write(conn, folded)
        derived.extend(folded.derived)
    return derived


async def _write(conn: asyncpg.Connection, folded: cases.Folded) -> None:
    await store.save_cases(conn, folded.cases.values())
    await store.add_case_steps(conn, folded.steps)
    await store.add_breaches(conn, folded.breaches)
    for breach in folded.breaches:
        count(metrics.SLA_BREACHES.labels(breach.target, breach.priority))


async def refresh_open_cases(pool: asyncpg.Pool) -> None:
    """Set the open-cases gauge from the table (right after a restart too); a department and
    priority with none left goes to 0."""
    async with pool.acquire() as conn:
        counts = await store.open_case_counts(conn)
    for labels in _gauge_labels() - counts.keys():
        metrics.OPEN_CASES.labels(*labels).set(0)
    for (department, priority), open_cases in counts.items():
        metrics.OPEN_CASES.labels(department, priority).set(open_cases)


def _gauge_labels() -> set[tuple[str, str]]:
    """The label pairs the open-cases gauge holds now."""
    return {
        (sample.labels["department"], sample.labels["priority"])
        for family in metrics.OPEN_CASES.collect()
        for sample in family.samples
    }


OPEN_CASES_JOB = PeriodicJob("open-cases-gauge", OPEN_CASES_REFRESH_SECONDS, refresh_open_cases)
