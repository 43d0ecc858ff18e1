"""Operator segments in the profile worker's fold: definitions folded, membership kept current.

- A definition (or a new rule) is evaluated at once over every customer, in SQL.
- After each run of events, the customers it touched are evaluated against every active
  segment, in Python (`segments.matches`) over their facts loaded once.
- When the clock ticks in crm.orders partitions, the segments whose rules read time are
  evaluated again, in SQL, over the customers of those partitions.

A person of several records (merged, or aliased by an identifier it holds: person_records) is
evaluated here in Python over its records' facts together, for the lapsed segment and every
operator segment, and is left out of the SQL evaluations: its id (the root record's) is the
member, and a record that belongs to another person is a member of nothing.

Each change is written to segment_memberships with the next version and announced as a derived
segment entered/left event in the same transaction (the outbox), so it is published exactly once.
The membership after a run depends only on the facts and the clocks, so it is the same whatever
the batch boundaries (docs/decisions.md says what that leaves out).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from crm_shared.contracts.events import CLOCK_TICKED, Event, SegmentDefined, SegmentRetired
from crm_shared.contracts.segment_rules import is_time_dependent
from crm_shared.contracts.topics import ORDERS
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.metrics import count
from crm_shared.runtime.projector import Fold
from profile_service import catalogue, identity, metrics, projection, segments, store
from profile_service.events import CATALOGUE_TYPES, DEFINITION_TYPES
from profile_service.projection import Membership


@dataclass(frozen=True)
class Folded:
    """What the profile's own fold derived, the records whose person it changed
    (identity.persons_changed: their segments are evaluated again), and those of its records
    that belong to a person of several (they are evaluated as that person)."""

    derived: Sequence[Derived]
    persons_changed: Collection[str] = ()
    of_persons: Collection[str] = ()


ViewFold = Callable[[asyncpg.Connection, Sequence[Event]], Awaitable[Folded]]


def with_operator_segments(fold: ViewFold) -> Fold:
    """The profile fold, then the operator segments of what it folded."""

    async def fold_with_segments(
        conn: asyncpg.Connection, events: Sequence[Event]
    ) -> Sequence[Derived]:
        if events and events[0].type == CLOCK_TICKED:
            return [*(await fold(conn, events)).derived, *await on_ticks(conn, events)]
        reclassified = await fold_catalogue(conn, [e for e in events if e.type in CATALOGUE_TYPES])
        facts = [e for e in events if e.type not in DEFINITION_TYPES | CATALOGUE_TYPES]
        folded = await fold(conn, facts) if facts else Folded([])
        derived = list(folded.derived)
        for event in events:
            if event.type in DEFINITION_TYPES:
                derived.extend(await on_definition(conn, event))
        derived.extend(await on_facts(conn, facts, folded))
        derived.extend(await on_reclassified(conn, reclassified))
        return derived

    return fold_with_segments


async def fold_catalogue(conn: asyncpg.Connection, events: Sequence[Event]) -> dict[str, Event]:
    """Keep the products' categories (lock, evolve, save); the products they reclassify, each
    with the record that did."""
    if not events:
        return {}
    ids = {row.product_id for e in events if (row := catalogue.category_row(e)) is not None}
    stored = await store.lock_categories(conn, ids)
    written = catalogue.newer_rows(stored, events)
    await store.save_categories(conn, written)
    by_id = {e.id: e for e in events}
    causes = {row.product_id: by_id[row.event_id] for row in written}
    return {product: causes[product] for product in catalogue.reclassified(stored, written)}


async def on_reclassified(conn: asyncpg.Connection, causes: Mapping[str, Event]) -> list[Derived]:
    """Evaluate the segments whose rules ask for categories over the buyers of the products
    a run reclassified (in SQL; persons of several in Python), whatever the order they bought
    in; the changes are caused by the newest of the records (by event time, then id), dated by
    it."""
    if not causes:
        return []
    asking = [d for d in await store.active_segments(conn) if segments.uses_categories(d.rule)]
    if not asking:
        return []
    cause = max(causes.values(), key=lambda e: (e.time, e.id))
    derived: list[Derived] = []
    for definition in asking:
        verdicts = await store.segment_verdicts(
            conn, definition.segment, definition.rule, store.BUYERS, list(causes)
        )
        changes = segments.moves(
            ((customer, holds, current) for customer, holds, current, _ in verdicts),
            definition.segment,
            cause.time,
        )
        await _record(conn, changes)
        derived.extend(segments.announce(changes, cause))
    buyers = await store.buyers_in_persons(conn, list(causes))
    return [*derived, *await on_persons(conn, dict.fromkeys(buyers, cause))]


async def _record(conn: asyncpg.Connection, changes: list[Membership]) -> None:
    await store.save_memberships(conn, changes)
    for segment, moves in Counter(change.segment for change in changes).items():
        count(metrics.SEGMENT_CHANGES.labels(segment), moves)


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
    persons = await store.persons_of_several(conn)
    return [
        *segments.announce(changes, event),
        *await on_persons(conn, dict.fromkeys(persons, event)),
    ]


async def on_facts(
    conn: asyncpg.Connection, events: Sequence[Event], folded: Folded
) -> list[Derived]:
    """Evaluate the customers a run touched against every active segment; each change is
    caused by the customer's last event of the run and dated by it. The records of persons of
    several, and those whose person changed, go to on_persons (a record merged away by the
    run's merge is caused by it; one an identifier's claim moved, by the run's last event)."""
    causes = {e.customer_id: e for e in events}
    if not causes:
        return []
    by_id = {e.id: e for e in events}
    merges = {s.other_id: by_id[s.event_id] for s in identity.merge_statements(events)}
    moved = folded.persons_changed
    personal = {c: e for c, e in causes.items() if c in folded.of_persons or c in moved}
    personal |= {r: causes.get(r, merges.get(r, events[-1])) for r in moved}
    derived = await on_persons(conn, personal)
    causes = {c: e for c, e in causes.items() if c not in personal}
    active = await store.active_segments(conn)
    if not active or not causes:
        return derived
    facts = await store.customer_facts(conn, causes, segments.lines_read(active))
    current = await store.memberships_of(conn, causes, [d.segment for d in active])
    changes: list[Membership] = []
    for customer_id in sorted(causes):
        cause = causes[customer_id]
        found = _moves(active, facts[customer_id], current, cause.time)
        changes.extend(found)
        derived.extend(segments.announce(found, cause))
    await _record(conn, changes)
    return derived


def _moves(
    active: Sequence[segments.Definition],
    facts: segments.CustomerFacts,
    current: Mapping[tuple[str, str], Membership],
    at: datetime,
) -> list[Membership]:
    """The changes of a customer's (or person's) memberships of the active segments."""
    changes = []
    for definition in active:
        change = projection.change_membership(
            current.get((facts.customer_id, definition.segment)),
            facts.customer_id,
            definition.segment,
            segments.matches(definition.rule, facts),
            at,
        )
        if change is not None:
            changes.append(change)
    return changes


async def on_persons(conn: asyncpg.Connection, causes: Mapping[str, Event]) -> list[Derived]:
    """Evaluate the persons these records belong to over their records' facts together, for
    the lapsed segment and every active segment; a record that belongs to another person leaves
    every segment it is in. A person's changes are caused by the newest of its records' causes
    (by event time, then id) and dated by it; a lapse is dated when it began."""
    if not causes:
        return []
    grouped = await store.persons_of(conn, causes)
    absorbed = {r: cause for r, cause in causes.items() if grouped.get(r, r) != r}
    person_causes: dict[str, Event] = {}
    for record, cause in causes.items():
        person = grouped.get(record, record)
        known = person_causes.get(person)
        if known is None or (cause.time, cause.id) > (known.time, known.id):
            person_causes[person] = cause
    active = await store.active_segments(conn)
    names = [projection.LAPSED, *(d.segment for d in active)]
    records = await store.records_of_persons(conn, person_causes)
    everyone = {r for own in records.values() for r in own} | absorbed.keys()
    facts = await store.customer_facts(conn, everyone, segments.lines_read(active))
    customers = await store.records_of(conn, sorted(everyone))
    lasts = await store.lapse_states(conn, projection.LAPSED, everyone)
    current = await store.memberships_of(conn, everyone, names)
    changes: list[tuple[Membership, Event, str]] = []
    for (record, segment), membership in sorted(current.items()):
        if record in absorbed and membership.member:
            left = projection.change_membership(
                membership, record, segment, False, absorbed[record].time
            )
            assert left is not None
            changes.append((left, absorbed[record], ABSORBED_REASON.format(grouped[record])))
    for person, cause in sorted(person_causes.items()):
        own = records[person]
        combined = identity.combined_record(person, [customers[r] for r in own if r in customers])
        profile = segments.profile_of(combined.contact, combined.attributes)
        together = segments.person_facts(person, [facts[r] for r in own], profile)
        purchases = [lasts[r][0] for r in own if r in lasts]
        lapse = projection.lapse_change(
            current.get((person, projection.LAPSED)),
            person,
            max((at for at in purchases if at is not None), default=None),
            together.now,
            cause,
        )
        if lapse is not None:
            changes.append((lapse[0], cause, lapse[1]))
        for change in _moves(active, together, current, cause.time):
            changes.append((change, cause, segments.reason(change)))
    await _record(conn, [change for change, _, _ in changes])
    return [projection.segment_event(change, cause, why) for change, cause, why in changes]


ABSORBED_REASON = "now part of customer {}"


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
    ticked: dict[str, Event] = {}  # a person's newest tick among its records' partitions
    for person, partition in await store.persons_in_partitions(conn, list(newest)):
        tick = newest[partition]
        if person not in ticked or tick.time > ticked[person].time:
            ticked[person] = tick
    return [*derived, *await on_persons(conn, ticked)]
