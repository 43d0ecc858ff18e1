"""Operator segments in the profile worker's fold: definitions folded, membership kept current.

- A definition (or a new rule) is evaluated at once over every customer, in SQL.
- After each run of events, the customers it touched are evaluated against every active
  segment, in Python (`segments.matches`) over their facts loaded once.
- When the clock ticks in crm.orders partitions, the segments whose rules read time are
  evaluated again, in SQL, over the customers of those partitions.

Each change is written to segment_memberships with the next version and announced as a derived
segment entered/left event in the same transaction (the outbox), so it is published exactly once.
The membership after a run depends only on the facts and the clocks, so it is the same whatever
the batch boundaries (docs/decisions.md says what that leaves out).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import asyncpg

from crm_shared.contracts.events import CLOCK_TICKED, Event, SegmentDefined, SegmentRetired
from crm_shared.contracts.segment_rules import is_time_dependent
from crm_shared.contracts.topics import ORDERS
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import Fold
from profile_service import metrics, projection, segments, store
from profile_service.events import DEFINITION_TYPES
from profile_service.projection import Membership


def with_operator_segments(fold: Fold) -> Fold:
    """The profile fold, then the operator segments of what it folded."""

    async def fold_with_segments(
        conn: asyncpg.Connection, events: Sequence[Event]
    ) -> Sequence[Derived]:
        if events and events[0].type == CLOCK_TICKED:
            return [*await fold(conn, events), *await on_ticks(conn, events)]
        facts = [e for e in events if e.type not in DEFINITION_TYPES]
        derived = list(await fold(conn, facts)) if facts else []
        for event in events:
            if event.type in DEFINITION_TYPES:
                derived.extend(await on_definition(conn, event))
        derived.extend(await on_facts(conn, facts))
        return derived

    return fold_with_segments


async def _record(conn: asyncpg.Connection, changes: list[Membership]) -> None:
    await store.save_memberships(conn, changes)
    for segment, count in Counter(change.segment for change in changes).items():
        metrics.SEGMENT_CHANGES.labels(segment).inc(count)


async def on_definition(conn: asyncpg.Connection, event: Event) -> list[Derived]:
    """Store a definition or retirement (unless a newer one is stored) and move its members."""
    data = event.data
    if isinstance(data, SegmentRetired):
        if not await store.save_segment_definition(conn, event, None, None, False, True):
            return []
        members = await store.segment_members_locked(conn, data.segment)
        changes = segments.moves(
            ((m.customer_id, False, m) for m in members), data.segment, event.time
        )
        await _record(conn, changes)
        return segments.announce(changes, event, segments.RETIRED_REASON)
    assert isinstance(data, SegmentDefined)
    timed = is_time_dependent(data.rule)
    rule = segments.stored_rule(data.rule)
    if not await store.save_segment_definition(conn, event, data.description, rule, timed, False):
        return []
    verdicts = await store.segment_verdicts(conn, data.segment, data.rule)
    changes = segments.moves(
        ((customer, holds, current) for customer, holds, current, _ in verdicts),
        data.segment,
        event.time,
    )
    await _record(conn, changes)
    return segments.announce(changes, event)


async def on_facts(conn: asyncpg.Connection, events: Sequence[Event]) -> list[Derived]:
    """Evaluate the customers a run touched against every active segment; each change is
    caused by the customer's last event of the run and dated by it."""
    causes = {e.customer_id: e for e in events}
    if not causes:
        return []
    active = await store.active_segments(conn)
    if not active:
        return []
    with_lines = any(segments.uses_products(d.rule) for d in active)
    facts = await store.customer_facts(conn, causes, with_lines=with_lines)
    current = await store.memberships_of(conn, causes, [d.segment for d in active])
    changes: list[Membership] = []
    derived: list[Derived] = []
    for customer_id in sorted(causes):
        cause = causes[customer_id]
        for definition in active:
            change = projection.change_membership(
                current.get((customer_id, definition.segment)),
                customer_id,
                definition.segment,
                segments.matches(definition.rule, facts[customer_id]),
                cause.time,
            )
            if change is not None:
                changes.append(change)
                derived.extend(segments.announce([change], cause))
    await _record(conn, changes)
    return derived


async def on_ticks(conn: asyncpg.Connection, ticks: Sequence[Event]) -> list[Derived]:
    """Evaluate the segments whose rules read time over the customers of the crm.orders
    partitions that ticked; each change is caused by and dated at its partition's newest tick."""
    newest = {
        partition: max(partition_ticks, key=lambda t: t.time)
        for partition, partition_ticks in projection.ticks_by_partition(ticks, ORDERS.name).items()
    }
    if not newest:
        return []
    derived: list[Derived] = []
    for definition in await store.active_segments(conn, timed_only=True):
        verdicts = await store.segment_verdicts(
            conn, definition.segment, definition.rule, store.IN_PARTITIONS, list(newest)
        )
        changes: list[Membership] = []
        for customer, holds, current, partition in verdicts:
            assert partition is not None  # the universe is the partitions' customers
            tick = newest[partition]
            change = projection.change_membership(
                current, customer, definition.segment, holds, tick.time
            )
            if change is not None:
                changes.append(change)
                derived.extend(segments.announce([change], tick))
        await _record(conn, changes)
    return derived
