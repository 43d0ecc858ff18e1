"""The customer journey as a state machine, pure (docs/journey.md draws it).

A customer's stage is a function of what is known of them (`Journey`: orders, interest shown,
the latest NPS, praise) and of the time: `stage_for`. Each event updates those facts (`observe`,
dispatched by the event's data type) and then the stage is computed again; a clock tick only
moves the time. When the stage differs, that is a transition, published as
crm.journey.stage_changed.v1 with its trigger. The time is the latest of the event's, the
partition's clock and the time the journey was last judged at, never the wall clock: the facts
do not depend on the order events are folded in, nor does the latest time, so a rebuild from
offset 0 ends at the same stages however the topics interleave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import singledispatch
from typing import NamedTuple

from crm_shared.contracts.events import (
    JOURNEY_STAGE_CHANGED,
    ContactLogged,
    ContactLoggedV2,
    Event,
    FeedbackGiven,
    FeedbackGivenV2,
    JourneyStage,
    JourneyStageChanged,
    Measure,
    OrderPlaced,
    ProductViewed,
)
from crm_shared.runtime.derived import Derived, derive
from interaction_service.experience import SOURCE, as_v2, is_promoter

AT_RISK_AFTER = timedelta(days=60)
"""No purchase for this long by the clock: at risk."""
LOST_AFTER = 2 * AT_RISK_AFTER
"""No purchase for this long by the clock: lost."""
LOYAL_ORDERS = 4
"""Orders that make a customer loyal without a promoter's score."""

CLOCK_TRIGGER = "clock"


class Journey(NamedTuple):
    """What the stage of one customer is inferred from, the stage and when it was entered.

    A named tuple rather than a frozen dataclass: every event that moves a journey makes one or
    two changed copies, and `_replace` costs a third of `dataclasses.replace`."""

    customer_id: str
    stage: JourneyStage | None = None
    entered_at: datetime | None = None
    version: int = 0
    """How many times the stage changed (the version of the latest change)."""
    orders: int = 0
    first_order_at: datetime | None = None
    first_order_id: str | None = None
    last_order_at: datetime | None = None
    order_partition: int | None = None
    """The crm.orders partition of the customer's orders, whose ticks move their time."""
    interested: bool = False
    """They reached out or looked: an inbound contact, feedback or a product view."""
    last_nps: int | None = None
    last_nps_at: datetime | None = None
    praised: bool = False
    first_contact_at: datetime | None = None
    first_contact_id: str | None = None
    """The event id of their first inbound (service) contact."""
    judged_at: datetime | None = None
    """The latest time the stage was judged at, when that time can still decide it: an event of a
    customer without orders (a later first order may be 60 days older), or a time 60 days or more
    after the last order. A late, older event is judged at it, so a customer never goes back from
    at risk or lost, and the final stage does not depend on how the topics interleave."""

    @property
    def promoter(self) -> bool:
        return self.last_nps is not None and is_promoter(Measure.NPS, self.last_nps)


@dataclass(frozen=True, slots=True)
class Transition:
    customer_id: str
    from_stage: JourneyStage | None
    to_stage: JourneyStage
    trigger: str
    at: datetime
    version: int


def stage_for(journey: Journey, now: datetime) -> JourneyStage:
    """The stage the facts give at `now` (the table in docs/journey.md, top row first)."""
    if journey.orders == 0 or journey.last_order_at is None:
        return JourneyStage.CONSIDERING if journey.interested else JourneyStage.AWARE
    idle = now - journey.last_order_at
    if idle >= LOST_AFTER:
        return JourneyStage.LOST
    if idle >= AT_RISK_AFTER:
        return JourneyStage.AT_RISK
    if journey.promoter and journey.praised:
        return JourneyStage.ADVOCATE
    if journey.promoter or journey.orders >= LOYAL_ORDERS:
        return JourneyStage.LOYAL
    if journey.orders >= 2:
        return JourneyStage.REPEAT
    return JourneyStage.FIRST_PURCHASE


def _entered_at(journey: Journey, stage: JourneyStage, cause_time: datetime) -> datetime:
    """When, in event time, the customer entered the stage: inactivity starts counting at the
    last order, not at the tick that showed it."""
    if journey.last_order_at is not None and stage is JourneyStage.AT_RISK:
        return journey.last_order_at + AT_RISK_AFTER
    if journey.last_order_at is not None and stage is JourneyStage.LOST:
        return journey.last_order_at + LOST_AFTER
    return cause_time


def _latest(time: datetime, *others: datetime | None) -> datetime:
    """The latest of these times, those unknown (None) left out: the time a journey is judged
    at (`evolve`, `tick`)."""
    for other in others:
        if other is not None and other > time:
            time = other
    return time


def _earlier(current: datetime | None, candidate: datetime) -> bool:
    return current is None or candidate < current


# ----------------------------------------------------------------------------- observing events


@singledispatch
def observe(data: object, journey: Journey, event: Event) -> tuple[Journey, str]:
    """The facts after one event, and the trigger it would be named by."""
    raise TypeError(f"{type(data).__name__} does not move a journey")


@observe.register
def _order(data: OrderPlaced, journey: Journey, event: Event) -> tuple[Journey, str]:
    first = _earlier(journey.first_order_at, event.time)
    latest = journey.last_order_at is None or event.time > journey.last_order_at
    return journey._replace(
        orders=journey.orders + 1,
        first_order_at=event.time if first else journey.first_order_at,
        first_order_id=data.order_id if first else journey.first_order_id,
        last_order_at=event.time if latest else journey.last_order_at,
        order_partition=event.partition if event.partition >= 0 else journey.order_partition,
        interested=True,
    ), "order_placed"


@observe.register
def _contact(data: ContactLogged, journey: Journey, event: Event) -> tuple[Journey, str]:
    return _contacted(data, journey, event)


@observe.register
def _contact_v2(data: ContactLoggedV2, journey: Journey, event: Event) -> tuple[Journey, str]:
    return _contacted(data, journey, event)


def _contacted(
    data: ContactLogged | ContactLoggedV2, journey: Journey, event: Event
) -> tuple[Journey, str]:
    if data.direction == "outbound":
        return journey, "outbound_contact"
    first = _earlier(journey.first_contact_at, event.time)
    return journey._replace(
        interested=True,
        first_contact_at=event.time if first else journey.first_contact_at,
        first_contact_id=event.id if first else journey.first_contact_id,
    ), "inbound_contact"


def _feedback(data: FeedbackGiven | FeedbackGivenV2, journey: Journey, event: Event) -> Journey:
    rating = as_v2(data)
    newer_nps = rating.measure is Measure.NPS and (
        journey.last_nps_at is None or event.time >= journey.last_nps_at
    )
    return journey._replace(
        interested=True,
        praised=journey.praised or rating.kind == "praise",
        last_nps=rating.score if newer_nps else journey.last_nps,
        last_nps_at=event.time if newer_nps else journey.last_nps_at,
    )


@observe.register
def _feedback_v1(data: FeedbackGiven, journey: Journey, event: Event) -> tuple[Journey, str]:
    return _feedback(data, journey, event), "feedback"


@observe.register
def _feedback_v2(data: FeedbackGivenV2, journey: Journey, event: Event) -> tuple[Journey, str]:
    return _feedback(data, journey, event), "feedback"


@observe.register
def _view(data: ProductViewed, journey: Journey, event: Event) -> tuple[Journey, str]:
    return (journey if journey.interested else journey._replace(interested=True)), "product_viewed"


JOURNEY_DATA = (
    OrderPlaced,
    ContactLogged,
    ContactLoggedV2,
    FeedbackGiven,
    FeedbackGivenV2,
    ProductViewed,
)
"""The event data that moves a journey."""


def _moved(
    journey: Journey, now: datetime, trigger: str, cause_time: datetime
) -> Transition | None:
    stage = stage_for(journey, now)
    if stage is journey.stage:
        return None
    return Transition(
        journey.customer_id,
        journey.stage,
        stage,
        trigger,
        _entered_at(journey, stage, cause_time),
        journey.version + 1,
    )


def _enter(journey: Journey, transition: Transition | None) -> Journey:
    if transition is None:
        return journey
    return journey._replace(
        stage=transition.to_stage,
        entered_at=transition.at,
        version=transition.version,
    )


def evolve(
    journey: Journey, event: Event, clock: datetime | None
) -> tuple[Journey, Transition | None]:
    """One event folded: the new journey and its transition, if the stage changed. The time is
    the latest of the event's, the clock of the customer's order partition and the time the
    journey was last judged at."""
    observed, trigger = observe(event.data, journey, event)
    now = _latest(event.time, clock, journey.judged_at)
    transition = _moved(observed, now, trigger, event.time)
    # Before a first order, the clock may be another partition's: the event's own time is kept.
    judged = event.time if observed.last_order_at is None else now
    return _judged(_enter(observed, transition), judged), transition


def tick(journey: Journey, at: datetime) -> tuple[Journey, Transition | None]:
    """Time moved to `at`: the inactivity rules may move the stage."""
    now = _latest(at, journey.judged_at)
    transition = _moved(journey, now, CLOCK_TRIGGER, at)
    return _judged(_enter(journey, transition), now), transition


def _judged(journey: Journey, now: datetime) -> Journey:
    """The journey with `now` kept as Journey.judged_at, when it is later and can still decide
    the stage. A time under AT_RISK_AFTER after the last order never can: the last order only
    moves later. Not keeping it spares a write for most events of customers who buy."""
    if journey.judged_at is not None and now <= journey.judged_at:
        return journey
    if journey.last_order_at is not None and now - journey.last_order_at < AT_RISK_AFTER:
        return journey
    return journey._replace(judged_at=now)


def ticks(
    journey: Journey, times: Sequence[datetime]
) -> tuple[Journey, list[tuple[int, Transition]]]:
    """Several ticks in log order, as if folded one at a time: each transition with the index of
    the tick that caused it."""
    moves: list[tuple[int, Transition]] = []
    for index, at in enumerate(times):
        journey, transition = tick(journey, at)
        if transition is not None:
            moves.append((index, transition))
    return journey, moves


def stage_changed_event(cause: Event, transition: Transition) -> Derived:
    """The derived event of a transition; its id comes from the cause and the version."""
    return derive(
        cause,
        JOURNEY_STAGE_CHANGED,
        transition.customer_id,
        JourneyStageChanged(
            from_stage=transition.from_stage,
            to_stage=transition.to_stage,
            trigger=transition.trigger,
            version=transition.version,
        ),
        source=SOURCE,
        time=transition.at,
        part=str(transition.version),
    )


def time_in_stage(journey: Journey, now: datetime) -> timedelta | None:
    """How long the customer has been in their stage as of `now` (never negative)."""
    if journey.entered_at is None:
        return None
    return max(now - journey.entered_at, timedelta(0))
