"""The clock's ticks, fold runs split at ticks, derived ids, and the time-driven lapse rule."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from broadcast_service.projection import evolve_memberships
from crm_shared.contracts.events import (
    CLOCK_TICKED,
    SEGMENT_ENTERED,
    SEGMENT_LEFT,
    Event,
    parse_event,
)
from crm_shared.runtime.clock import tick_records, tick_time
from crm_shared.runtime.derived import derive, derived_id, name_based_id
from crm_shared.runtime.projector import runs_between_ticks
from profile_service.projection import (
    LAPSE_AFTER,
    LAPSED,
    LapseCandidate,
    Membership,
    change_membership,
    is_lapsed,
    lapses,
    purchase_lapses,
    segment_event,
)
from tests.unit.events_factory import T0, event, order, refund


def _tick(minutes: float, partition: int = 0, topic: str = "crm.orders"):
    return event(
        CLOCK_TICKED,
        "clock",
        {"topic": topic, "partition": partition},
        minutes=minutes,
        source="crm-clock",
    )


def test_every_clock_agrees_on_the_tick_boundary() -> None:
    now = datetime(2026, 1, 1, 10, 0, 59, 900_000, tzinfo=UTC)
    assert tick_time(now, 60) == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert tick_time(now, 1) == datetime(2026, 1, 1, 10, 0, 59, tzinfo=UTC)


def test_a_tick_goes_to_every_partition_with_an_id_of_its_own() -> None:
    records = tick_records(T0, {"crm.orders": 3, "crm.customers": 2})
    assert [(t, p) for t, p, _ in records] == [
        ("crm.orders", 0),
        ("crm.orders", 1),
        ("crm.orders", 2),
        ("crm.customers", 0),
        ("crm.customers", 1),
    ]
    events = [parse_event(value) for _, _, value in records]
    assert len({e.id for e in events}) == 5
    assert {e.time for e in events} == {T0}
    assert json.loads(records[4][2])["data"] == {"topic": "crm.customers", "partition": 1}
    assert [
        e.id for e in map(parse_event, (v for *_, v in tick_records(T0, {"crm.orders": 3})))
    ] == [e.id for e in events[:3]], "a second clock publishes the same ids"


def test_a_batch_is_folded_in_runs_that_ticks_separate() -> None:
    a, b, c = (
        order("C1", "o1", ("P", 1, "1")),
        order("C2", "o2", ("P", 1, "1")),
        order("C3", "o3", ("P", 1, "1")),
    )
    t1, t2 = _tick(1), _tick(1, partition=1)
    assert runs_between_ticks([a, b, t1, t2, c]) == [[a, b], [t1, t2], [c]]
    assert runs_between_ticks([t1]) == [[t1]]
    assert runs_between_ticks([]) == []


@pytest.mark.parametrize("name", ["", "crm.message.outcome.recorded.v1\x1fm-1\x1fsent", "é" * 300])
def test_derived_ids_are_the_standard_name_based_uuids(name: str) -> None:
    namespace = uuid.UUID("0b6a3c52-7d0e-4c1f-9f43-5e2d8a61c7b4")
    assert name_based_id(namespace, name) == str(uuid.uuid5(namespace, name))


def test_a_derived_id_depends_on_its_cause_only() -> None:
    cause = order("C1", "o1", ("P", 1, "1"))
    same = derived_id(cause, SEGMENT_ENTERED, "C1", "lapsed:1")
    assert same == derived_id(cause, SEGMENT_ENTERED, "C1", "lapsed:1")
    assert same != derived_id(cause, SEGMENT_ENTERED, "C1", "lapsed:2")
    assert same != derived_id(cause, SEGMENT_LEFT, "C1", "lapsed:1")
    derived = derive(
        cause,
        SEGMENT_ENTERED,
        "C1",
        {"segment": "lapsed", "version": 1, "reason": "test"},
        source="profile-service",
        part="lapsed:1",
    )
    assert derived.event_id == same
    assert derived.topic == "crm.segments" and derived.key == b"C1"
    assert parse_event(derived.value).source == "profile-service"


def test_a_customer_lapses_after_thirty_days_by_the_partition_clock() -> None:
    last = T0
    assert not is_lapsed(last, None)
    assert not is_lapsed(last, last + LAPSE_AFTER - timedelta(seconds=1))
    assert is_lapsed(last, last + LAPSE_AFTER)
    assert not is_lapsed(None, last + LAPSE_AFTER * 2)


def test_membership_changes_count_their_versions() -> None:
    entered = change_membership(None, "C1", LAPSED, True, T0)
    assert entered == Membership("C1", LAPSED, True, 1, T0)
    assert change_membership(entered, "C1", LAPSED, True, T0) is None
    left = change_membership(entered, "C1", LAPSED, False, T0 + timedelta(days=1))
    assert left is not None and (left.member, left.version) == (False, 2)
    assert change_membership(None, "C1", LAPSED, False, T0) is None


def test_each_candidate_lapses_at_the_first_tick_that_makes_it_lapsed() -> None:
    days = 24 * 60
    ticks = [_tick(31 * days), _tick(40 * days), _tick(50 * days)]
    early = LapseCandidate("C1", T0, None)
    later = LapseCandidate("C2", T0 + timedelta(days=15), None)
    again = LapseCandidate("C3", T0, Membership("C3", LAPSED, False, 2, T0))
    found = {m.customer_id: (m.version, tick) for m, tick in lapses([early, later, again], ticks)}
    assert found == {"C1": (1, ticks[0]), "C2": (1, ticks[2]), "C3": (3, ticks[0])}
    since = {m.customer_id: m.changed_at for m, _ in lapses([early, later], ticks)}
    assert since == {"C1": T0 + LAPSE_AFTER, "C2": T0 + timedelta(days=15) + LAPSE_AFTER}, (
        "lapsed since the last purchase + 30 days, not since the tick that showed it"
    )


def test_segment_events_carry_the_version_and_what_caused_them() -> None:
    tick = _tick(31 * 24 * 60)
    change = Membership("C1", LAPSED, True, 4, tick.time)
    derived = segment_event(change, tick, "no purchase for 30 days")
    published = parse_event(derived.value)
    assert published.type == SEGMENT_ENTERED and published.time == tick.time
    assert published.data.model_dump() == {
        "segment": "lapsed",
        "version": 4,
        "reason": "no purchase for 30 days",
    }


def test_broadcast_keeps_the_highest_announced_version_whatever_the_arrival_order() -> None:
    def announced(member: bool, version: int):
        return event(
            SEGMENT_ENTERED if member else SEGMENT_LEFT,
            "C1",
            {"segment": "lapsed", "version": version, "reason": "r"},
            minutes=0,  # the same instant: only the version orders them
            source="profile-service",
        )

    v1, v2, v3 = announced(True, 1), announced(False, 2), announced(True, 3)
    for arrival in ([v1, v2, v3], [v3, v1, v2], [v2, v3, v1]):
        result = evolve_memberships({}, arrival)[("C1", "lapsed")]
        assert (result.member, result.version_number) == (True, 3)
    stored = evolve_memberships({}, [v3])
    assert evolve_memberships(stored, [v2]) == {}


def _replay_in_batches(
    events: list[Event], sizes: list[int], now: datetime
) -> list[tuple[Membership, Event, str]]:
    """Fold purchases batch by batch, carrying the state a real fold would store in between."""
    state: dict[str, tuple[datetime | None, Membership | None]] = {}
    changes: list[tuple[Membership, Event, str]] = []
    start = 0
    for size in sizes:
        batch = events[start : start + size]
        start += size
        found = purchase_lapses(batch, state, {-1: now})
        changes.extend(found)
        for purchase in batch:
            last, member = state.get(purchase.customer_id, (None, None))
            if purchase.type == "crm.order.placed.v1":
                last = max(purchase.time, last) if last else purchase.time
            state[purchase.customer_id] = (last, member)
        for change, _, _ in found:
            last, _ = state[change.customer_id]
            state[change.customer_id] = (last, change)
    return changes


def test_purchases_out_of_time_order_lapse_alike_whatever_the_batch_boundaries() -> None:
    """An old purchase lapses the customer at once; a later-dated one that arrives next keeps
    the first membership: one batch or two give the same changes, times and causes."""
    now = T0 + timedelta(days=200)
    first = order("c1", "o1", ("P", 1, "1.00"), minutes=0)
    later_dated = order("c1", "o2", ("P", 1, "1.00"), minutes=60 * 24 * 40)
    history = [first, later_dated]
    together = _replay_in_batches(history, [2], now)
    apart = _replay_in_batches(history, [1, 1], now)
    assert together == apart
    [(change, cause, _)] = together
    assert (change.member, change.version, cause.id) == (True, 1, first.id)
    assert change.changed_at == T0 + LAPSE_AFTER


def test_a_purchase_by_the_clock_ends_a_lapse_and_a_refund_alone_changes_nothing() -> None:
    lapsed = Membership("c2", LAPSED, True, 1, T0 + LAPSE_AFTER)
    now = T0 + timedelta(days=45)
    back = order("c2", "o3", ("P", 1, "1.00"), minutes=60 * 24 * 44)
    [(change, cause, reason)] = purchase_lapses([back], {"c2": (T0, lapsed)}, {-1: now})
    assert (change.member, change.version, change.changed_at, cause) == (
        False,
        2,
        back.time,
        back,
    )
    assert reason.startswith("purchased on")
    only_refund = refund("c3", "r1", ("P", 1, "1.00"))
    assert purchase_lapses([only_refund], {}, {-1: now}) == []
