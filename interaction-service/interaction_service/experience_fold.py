"""The worker's share of the voice of the customer and the journey: store the ratings, move the
journeys (lock, evolve, save), derive detractor scores and stage changes, and keep the
experience gauges current from the tables. The rules are in experience.py and journey.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

import asyncpg

from crm_shared.contracts.events import ClockTicked, Event, JourneyStage
from crm_shared.contracts.topics import ORDERS
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.metrics import count
from interaction_service import experience, journey, metrics, store
from interaction_service.journey import Journey, Transition

NPS_WINDOW = timedelta(days=30)
"""The NPS gauges cover the ratings of this long before the projection's time."""
GAUGE_INTERVAL_SECONDS = 15.0


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> list[Derived]:
    """Ratings and journeys of a run of new events (no ticks); what they derive."""
    ratings = experience.ratings(events)
    await store.add_ratings(conn, ratings)
    derived = experience.detractor_events(events)
    low = Counter(r.measure for r in ratings if experience.is_detractor(r.measure, r.score))
    for measure, ratings_low in low.items():
        count(metrics.DETRACTORS.labels(measure.value), ratings_low)
    moving = [e for e in events if type(e.data) in journey.JOURNEY_DATA]
    if moving:
        derived.extend(await _move_journeys(conn, moving))
    return derived


async def _move_journeys(conn: asyncpg.Connection, events: Sequence[Event]) -> list[Derived]:
    current = await store.lock_journeys(conn, {e.customer_id for e in events})
    stored = dict(current)
    clocks = await store.experience_clocks(conn, ORDERS.name)
    derived: list[Derived] = []
    transitions: list[Transition] = []
    for event in events:
        before = current.get(event.customer_id) or Journey(event.customer_id)
        partition = (
            before.order_partition if before.order_partition is not None else event.partition
        )
        after, transition = journey.evolve(before, event, clocks.get(partition))
        current[event.customer_id] = after
        if transition is not None:
            transitions.append(transition)
            derived.append(journey.stage_changed_event(event, transition))
    # Only what changed is written: most product views find the customer already interested.
    changed = [j for customer, j in current.items() if stored.get(customer) != j]
    await store.save_journeys(conn, changed)
    await _record(conn, transitions)
    return derived


async def _record(conn: asyncpg.Connection, transitions: Sequence[Transition]) -> None:
    await store.add_transitions(conn, transitions)
    for stage, moves in Counter(t.to_stage.value for t in transitions).items():
        count(metrics.JOURNEY_TRANSITIONS.labels(stage), moves)


async def fold_ticks(conn: asyncpg.Connection, ticks: Sequence[Event]) -> list[Derived]:
    """Move the clocks; journeys of the order partitions ticked may turn at risk or lost, each
    at the first tick that makes it so, as if the ticks had been folded one at a time."""
    by_partition: dict[tuple[str, int], list[Event]] = {}
    for tick in ticks:
        data = tick.data
        assert isinstance(data, ClockTicked)
        by_partition.setdefault((data.topic, data.partition), []).append(tick)
    await store.advance_experience_clocks(
        conn, {key: max(t.time for t in found) for key, found in by_partition.items()}
    )
    derived: list[Derived] = []
    transitions: list[Transition] = []
    changed: list[Journey] = []
    for (topic, partition), partition_ticks in sorted(by_partition.items()):
        if topic != ORDERS.name:
            continue
        newest = max(t.time for t in partition_ticks)
        for before in await store.inactive_journeys(conn, partition, newest):
            after, moves = journey.ticks(before, [t.time for t in partition_ticks])
            for index, transition in moves:
                transitions.append(transition)
                derived.append(journey.stage_changed_event(partition_ticks[index], transition))
            if moves:
                changed.append(after)
    await store.save_journeys(conn, changed)
    await _record(conn, transitions)
    return derived


async def refresh_gauges(pool: asyncpg.Pool) -> None:
    """Set the experience gauges from the tables, so they are right straight after a restart."""
    async with pool.acquire() as conn:
        newest = await store.last_rating_per_channel(conn)
        recent = await store.recent_counts_per_touchpoint(conn, NPS_WINDOW)
        stages = await store.stage_counts(conn)
    for channel, at in newest.items():
        metrics.FEEDBACK_LAST_TIME.labels(channel).set(at.timestamp())
    metrics.NPS.clear()  # a touchpoint without ratings in the window has no NPS now
    for touchpoint, counts in recent.items():
        nps = experience.figures(counts).nps
        if nps is not None:
            metrics.NPS.labels(touchpoint).set(nps)
    for stage in JourneyStage:
        metrics.JOURNEY_CUSTOMERS.labels(stage.value).set(stages.get(stage.value, 0))
