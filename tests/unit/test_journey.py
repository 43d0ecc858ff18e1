"""The journey state machine, pure: each stage's trigger, clock-driven at risk and lost, the
recovery by a new order, and the time in stage."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta

from crm_shared.contracts.events import (
    CLOCK_SUBJECT,
    CLOCK_TICKED,
    JOURNEY_STAGE_CHANGED,
    Event,
    JourneyStage,
)
from interaction_service.journey import (
    AT_RISK_AFTER,
    LOST_AFTER,
    LOYAL_ORDERS,
    Journey,
    Transition,
    evolve,
    stage_changed_event,
    tick,
    ticks,
    time_in_stage,
)
from tests.unit.events_factory import T0, at, event, order

DAY = 24 * 60.0


def _contact(customer: str, direction: str, minutes: float) -> Event:
    return event(
        "crm.contact.logged.v1",
        customer,
        {
            "channel": "phone",
            "direction": direction,
            "department": "sales",
            "topic": "offer",
            "outcome": "interested",
        },
        minutes=minutes,
    )


def _nps(customer: str, score: int, minutes: float, kind: str = "comment") -> Event:
    return event(
        "crm.feedback.given.v2",
        customer,
        {"measure": "nps", "score": score, "kind": kind},
        minutes=minutes,
    )


def _clock_tick(days: float) -> Event:
    return event(
        CLOCK_TICKED,
        CLOCK_SUBJECT,
        {"topic": "crm.orders", "partition": 0},
        minutes=days * DAY,
        source="crm-clock",
    )


def _run(events: list[Event]) -> tuple[Journey, list[Transition]]:
    journey = Journey(events[0].customer_id)
    moves: list[Transition] = []
    for e in events:
        journey, transition = evolve(journey, e, None)
        if transition is not None:
            moves.append(transition)
    return journey, moves


def test_a_journey_moves_through_its_stages_with_each_trigger() -> None:
    events = [
        _contact("C-1", "outbound", 0),
        _contact("C-1", "inbound", 10),
        order("C-1", "O-1", ("P", 1, "1.00"), minutes=20),
        order("C-1", "O-2", ("P", 1, "1.00"), minutes=30),
        _nps("C-1", 10, 40),
        _nps("C-1", 9, 50, kind="praise"),
    ]
    journey, moves = _run(events)
    assert [(m.from_stage, m.to_stage, m.trigger) for m in moves] == [
        (None, JourneyStage.AWARE, "outbound_contact"),
        (JourneyStage.AWARE, JourneyStage.CONSIDERING, "inbound_contact"),
        (JourneyStage.CONSIDERING, JourneyStage.FIRST_PURCHASE, "order_placed"),
        (JourneyStage.FIRST_PURCHASE, JourneyStage.REPEAT, "order_placed"),
        (JourneyStage.REPEAT, JourneyStage.LOYAL, "feedback"),
        (JourneyStage.LOYAL, JourneyStage.ADVOCATE, "feedback"),
    ]
    assert [m.version for m in moves] == [1, 2, 3, 4, 5, 6]
    assert journey.stage is JourneyStage.ADVOCATE and journey.entered_at == at(50)
    assert (journey.first_order_id, journey.first_contact_id) == ("O-1", events[1].id)


def test_enough_orders_make_a_customer_loyal_without_a_promoter_score() -> None:
    journey, moves = _run(
        [order("C-2", f"O-{n}", ("P", 1, "1.00"), minutes=n) for n in range(LOYAL_ORDERS)]
    )
    assert journey.stage is JourneyStage.LOYAL
    assert moves[-1].to_stage is JourneyStage.LOYAL and journey.orders == LOYAL_ORDERS


def test_a_detractor_score_after_a_promoters_takes_away_loyalty() -> None:
    journey, _ = _run(
        [order("C-3", "O-1", ("P", 1, "1.00")), _nps("C-3", 10, 1), _nps("C-3", 2, 2)]
    )
    assert journey.stage is JourneyStage.FIRST_PURCHASE and not journey.promoter


def test_the_clock_moves_an_inactive_customer_to_at_risk_then_lost_and_an_order_recovers() -> None:
    journey, _ = _run(
        [order("C-4", "O-1", ("P", 1, "1.00")), order("C-4", "O-2", ("P", 1, "1.00"), minutes=1)]
    )
    last_order = at(1)
    journey, moved = tick(journey, last_order + AT_RISK_AFTER - timedelta(seconds=1))
    assert moved is None and journey.stage is JourneyStage.REPEAT
    journey, moved = tick(journey, last_order + AT_RISK_AFTER + timedelta(days=3))
    assert moved is not None and (moved.to_stage, moved.trigger) == (JourneyStage.AT_RISK, "clock")
    assert journey.entered_at == last_order + AT_RISK_AFTER  # when it became so, not the tick
    journey, moved = tick(journey, last_order + LOST_AFTER)
    assert moved is not None and moved.to_stage is JourneyStage.LOST
    recovery = order("C-4", "O-3", ("P", 1, "1.00"), minutes=200 * DAY)
    journey, moved = evolve(journey, recovery, None)
    assert moved is not None and (moved.from_stage, moved.to_stage) == (
        JourneyStage.LOST,
        JourneyStage.REPEAT,
    )


def test_several_ticks_at_once_give_the_transitions_of_one_tick_at_a_time() -> None:
    journey, _ = _run([order("C-5", "O-1", ("P", 1, "1.00"))])
    times = [T0 + timedelta(days=d) for d in (10, 61, 62, 130)]
    _, moves = ticks(journey, times)
    assert [(index, t.to_stage) for index, t in moves] == [
        (1, JourneyStage.AT_RISK),
        (3, JourneyStage.LOST),
    ]


def test_a_late_old_order_is_judged_by_the_partitions_clock() -> None:
    clock = T0 + timedelta(days=100)
    _, moved = evolve(Journey("C-6"), order("C-6", "O-1", ("P", 1, "1.00")), clock)
    assert moved is not None and moved.to_stage is JourneyStage.AT_RISK
    assert moved.at == T0 + AT_RISK_AFTER


def test_a_transition_derives_an_event_whose_id_depends_on_cause_and_version() -> None:
    cause = _clock_tick(70)
    journey, _ = _run([order("C-7", "O-1", ("P", 1, "1.00"))])
    _, moved = tick(journey, cause.time)
    assert moved is not None
    derived = stage_changed_event(cause, moved)
    assert derived.type == JOURNEY_STAGE_CHANGED and derived.key == b"C-7"
    assert stage_changed_event(cause, moved).event_id == derived.event_id
    assert time_in_stage(journey, at(60)) == timedelta(minutes=60)


def _view(customer: str, minutes: float) -> Event:
    return event("crm.product.viewed.v1", customer, {"product_id": "P-1"}, minutes=minutes)


def test_a_product_view_moves_an_aware_customer_to_considering() -> None:
    journey, moves = _run([_contact("C-5", "outbound", 0), _view("C-5", 10), _view("C-5", 20)])
    assert [(m.from_stage, m.to_stage, m.trigger) for m in moves] == [
        (None, JourneyStage.AWARE, "outbound_contact"),
        (JourneyStage.AWARE, JourneyStage.CONSIDERING, "product_viewed"),
    ]
    assert journey.entered_at == at(10)


def test_a_product_view_of_a_buyer_changes_nothing() -> None:
    bought, _ = _run([order("C-6", "O-1", ("P", 1, "1.00"), minutes=0)])
    after, transition = evolve(bought, _view("C-6", 10), None)
    assert transition is None and after == bought


def test_an_inbound_v2_contact_shows_interest_and_is_the_first_service_contact() -> None:
    contact = event(
        "crm.contact.logged.v2",
        "C-7",
        {
            "channel": "chat",
            "direction": "inbound",
            "department": "support",
            "topic": "sizes",
            "outcome": "information_given",
        },
        minutes=5,
    )
    journey, moves = _run([contact])
    assert [(m.to_stage, m.trigger) for m in moves] == [
        (JourneyStage.CONSIDERING, "inbound_contact")
    ]
    assert journey.first_contact_id == contact.id


def test_a_late_older_contact_never_takes_a_lost_customer_back() -> None:
    """Judged at the latest time that decided the stage, not at its own."""
    journey, moves = _run(
        [
            order("C-8", "O-1", ("P", 1, "1.00")),
            _contact("C-8", "inbound", 130 * DAY),
            _contact("C-8", "inbound", 10 * DAY),  # late: recorded after, happened before
        ]
    )
    assert [m.to_stage for m in moves] == [JourneyStage.FIRST_PURCHASE, JourneyStage.LOST]
    assert journey.stage is JourneyStage.LOST


def test_a_tick_older_than_the_time_judged_at_changes_nothing() -> None:
    """A tick is judged at the latest of its time and the time already judged at, as an event."""
    journey, _ = _run([order("C-9", "O-1", ("P", 1, "1.00"))])
    lost, moved = tick(journey, T0 + timedelta(days=130))
    assert moved is not None and moved.to_stage is JourneyStage.LOST
    again, moved = tick(lost, T0 + timedelta(days=70))  # another partition's, behind
    assert moved is None and again == lost


def test_the_final_stage_is_the_same_whatever_order_the_events_are_folded_in() -> None:
    events = [
        _view("C-9", 200 * DAY),  # before the first order in some runs: its time still counts
        order("C-9", "O-1", ("P", 1, "1.00")),
        _contact("C-9", "inbound", 70 * DAY),
        _nps("C-9", 10, 20 * DAY),
        order("C-9", "O-2", ("P", 1, "1.00"), minutes=30 * DAY),
    ]
    finals = {
        _run([events[i] for i in order_of])[0].stage
        for order_of in itertools.permutations(range(len(events)))
    }
    assert finals == {JourneyStage.LOST}


def _merges(first: list[Event], second: list[Event]) -> Iterator[list[Event]]:
    """Every interleaving of two topics' events that keeps each topic's own order."""
    for slots in itertools.combinations(range(len(first) + len(second)), len(first)):
        rest, firsts = iter(second), iter(first)
        yield [next(firsts) if n in slots else next(rest) for n in range(len(first) + len(second))]


def _fold_as_the_worker(events: list[Event]) -> Journey:
    """As experience_fold does: events judged with their order partition's clock, and a tick
    visiting the journey only when store.inactive_journeys would select it."""
    journey, clock = Journey(events[0].customer_id), None
    for e in events:
        if e.type != CLOCK_TICKED:
            journey, _ = evolve(journey, e, clock)
            continue
        clock = e.time
        last = journey.last_order_at
        if (
            last is not None
            and journey.stage is not JourneyStage.LOST
            and last <= e.time - AT_RISK_AFTER
            and (journey.stage is not JourneyStage.AT_RISK or last <= e.time - LOST_AFTER)
        ):
            journey, _ = tick(journey, e.time)
    return journey


def test_the_final_stage_is_the_same_however_the_topics_interleave_with_the_clock() -> None:
    """crm.orders (orders and the clock's ticks, in log order) against crm.contacts and
    crm.browsing: each interleaving a live run or a replay could fold, the same final stage,
    the one the facts give at the latest time."""
    orders = [
        order("C-10", "O-1", ("P", 1, "1.00")),
        _clock_tick(30),
        _clock_tick(70),
        order("C-10", "O-2", ("P", 1, "1.00"), minutes=80 * DAY),
        _clock_tick(150),
    ]
    others = [
        _contact("C-10", "inbound", 5 * DAY),
        _view("C-10", 100 * DAY),
        _nps("C-10", 10, 120 * DAY, kind="praise"),
        _contact("C-10", "outbound", 210 * DAY),
    ]
    finals = {_fold_as_the_worker(run).stage for run in _merges(orders, others)}
    assert finals == {JourneyStage.LOST}  # 210 days, 130 after the last order
    late = [_contact("C-10", "inbound", 170 * DAY)]  # at risk at 170: 90 days after the last
    finals = {_fold_as_the_worker(run).stage for run in _merges(orders, late)}
    assert finals == {JourneyStage.AT_RISK}
