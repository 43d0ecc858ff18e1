"""Profile worker: folds identity changes and purchases into the customer record and totals.

python -m profile_service.worker
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from crm_shared.contracts.events import CLOCK_TICKED, ClockTicked, Event
from crm_shared.contracts.topics import ORDERS
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.metrics import count
from crm_shared.runtime.projector import PeriodicJob, Projection
from crm_shared.runtime.shadow import RebuildRules
from crm_shared.runtime.worker import run_worker
from profile_service import (
    analytics,
    commerce,
    complaints,
    identity,
    lifetime_job,
    metrics,
    opinions,
    projection,
    references,
    segment_fold,
    store,
)
from profile_service.config import MIGRATIONS, ProfileSettings
from profile_service.events import CATALOGUE_TYPES, CUSTOMER_TYPES, FOLDS, TOPICS
from profile_service.projection import Membership
from profile_service.segment_fold import Folded


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> Folded:
    """The commerce facts (upserts: the first event of an id wins), then the rest of the view."""
    await store.save_commerce(conn, commerce.commerce_rows(events))
    return await fold_view(conn, events)


class BulkFold:
    """A rebuild's fold (Projection.bulk_fold): the same rows, but those naming an id the
    rebuild has not written yet are appended with COPY; only the others take the upserts."""

    def __init__(self) -> None:
        self.written = commerce.WrittenIds()

    async def __call__(self, conn: asyncpg.Connection, events: Sequence[Event]) -> Folded:
        new, known = commerce.split_new(commerce.commerce_rows(events), self.written)
        await store.append_commerce(conn, new)
        await store.save_commerce(conn, known)
        return await fold_view(conn, events)


async def fold_view(conn: asyncpg.Connection, events: Sequence[Event]) -> Folded:
    """Read the touched records, evolve them purely, write them back with the totals; then who
    is one person, and the lapses of the customers who are a person of one record (the persons
    of several are segment_fold's). A run of ticks only moves time (the projector splits runs)."""
    if events and events[0].type == CLOCK_TICKED:
        return Folded(await fold_ticks(conn, events))
    new_aliases = await store.save_aliases(
        conn, references.aliases({e.customer_id for e in events})
    )
    customer_events = [e for e in events if e.type in CUSTOMER_TYPES]
    if customer_events:
        current = await store.lock_customers(conn, {e.customer_id for e in customer_events})
        changed = projection.evolve_customers(current, customer_events)
        await store.save_customers(conn, list(changed.values()))
        count(metrics.CUSTOMERS_CHANGED, len(changed))
    await store.save_opinions(conn, opinions.opinion_rows(events))
    await store.save_complaints(conn, complaints.complaint_rows(events))
    statements = identity.merge_statements(events)
    await store.save_merge_statements(conn, statements)
    claimants = {e.customer_id for e in customer_events}
    ids = {e.customer_id for e in events}
    grouped, claiming = await store.batch_persons(conn, ids, claimants)
    seeds = {r for s in statements for r in (s.customer_id, s.other_id)}
    seeds |= {*new_aliases, *claiming, *(claimants & grouped.keys())}
    persons = await fold_persons(conn, seeds)
    moved = persons.changed
    grouped = {r: p for r, p in grouped.items() if r not in persons.region}
    grouped |= {r: persons.after[r] for r in ids & persons.after.keys()}
    deltas = projection.purchase_deltas(events)
    own = {customer for customer in deltas if customer not in grouped and customer not in moved}
    # Read before the totals move: the lapses are replayed event by event from this state.
    before = await store.lapse_states(conn, projection.LAPSED, own)
    clocks = await store.partition_clocks(
        conn, ORDERS.name, {e.partition for e in events if e.customer_id in deltas}
    )
    await store.add_purchases(conn, deltas)
    if deltas:  # per batch: a labels() lookup per customer costs more than the addition
        totals = deltas.values()
        count(metrics.MONEY_FOLDED.labels("order"), float(sum(d.gross_revenue for d in totals)))
        count(metrics.MONEY_FOLDED.labels("refund"), float(sum(d.refunded for d in totals)))
    if not own:
        return Folded([], moved, grouped)
    purchases = [e for e in events if e.customer_id in own]
    changes = projection.purchase_lapses(purchases, before, clocks)
    await store.save_memberships(conn, [change for change, _, _ in changes])
    count(metrics.SEGMENT_CHANGES.labels(projection.LAPSED), len(changes))
    return Folded(
        [projection.segment_event(change, cause, reason) for change, cause, reason in changes],
        moved,
        grouped,
    )


@dataclass(frozen=True)
class PersonsFolded:
    """What fold_persons changed: identity.persons_changed of the region it looked at, the
    region, and its record -> person map after (identity.persons)."""

    changed: set[str] = field(default_factory=set)
    region: set[str] = field(default_factory=set)
    after: dict[str, str] = field(default_factory=dict)


async def fold_persons(conn: asyncpg.Connection, seeds: Collection[str]) -> PersonsFolded:
    """Recompute who is one person around the records whose links may have changed (`seeds`:
    the batch's merge statements, its new aliases, and claimants that hold or may take an
    alias's identifier or belong to a person of several), and write the difference.

    The region is every record connected to a seed by merges that may stand, the folded map
    before and the claims on an alias's identifier (person_region): a record's person follows
    only from the statements about the records of its chain and the holders of the aliases on
    it, so the persons of the region come out of the statements about its records and their
    holders as identity.persons over everything gives them, and no record outside it changes
    person (a seed's old person is in the map before, its new one connected after)."""
    if not seeds:
        return PersonsFolded()
    await store.lock_person_records(conn)
    region = await person_region(conn, seeds)
    before = await store.persons_of(conn, region)
    links = identity.standing_links(await store.merge_statements_about(conn, region))
    after = identity.persons(links, await store.alias_holders(conn, region))
    await store.save_person_records(conn, before, after)
    return PersonsFolded(identity.persons_changed(before, after), region, after)


async def person_region(conn: asyncpg.Connection, seeds: Collection[str]) -> set[str]:
    """The seeds and every record connected to them (store.person_neighbours), step by step."""
    region, frontier = set(seeds), set(seeds)
    while frontier:
        frontier = await store.person_neighbours(conn, frontier) - region
        region |= frontier
    return region


async def persons_around(conn: asyncpg.Connection, events: Sequence[Event]) -> set[str]:
    """The records whose rows folding these events may change besides the events' own
    (Projection.related): those connected to their customers and to the records their merge
    statements name (person_region), as the database stands; a rebuild asks before and after."""
    ids = {e.customer_id for e in events if e.type not in CATALOGUE_TYPES}  # keyed by product
    return await person_region(conn, ids | {s.other_id for s in identity.merge_statements(events)})


async def fold_ticks(conn: asyncpg.Connection, ticks: Sequence[Event]) -> list[Derived]:
    """Advance the partitions' clocks; customers whose last purchase is now too old lapse."""
    newest: dict[tuple[str, int], datetime] = {}
    for tick in ticks:
        data = tick.data
        assert isinstance(data, ClockTicked)
        key = (data.topic, data.partition)
        newest[key] = max(tick.time, newest.get(key, tick.time))
    await store.advance_clocks(conn, newest)
    changes: list[Membership] = []
    derived: list[Derived] = []
    for partition, partition_ticks in projection.ticks_by_partition(ticks, ORDERS.name).items():
        cutoff = max(t.time for t in partition_ticks) - projection.LAPSE_AFTER
        candidates = await store.lapse_candidates(conn, projection.LAPSED, partition, cutoff)
        by_id = {c.customer_id: c for c in candidates}
        for change, tick in projection.lapses(candidates, partition_ticks):
            reason = projection.lapse_reason(by_id[change.customer_id].last_purchase_at)
            changes.append(change)
            derived.append(projection.segment_event(change, tick, reason))
    await store.save_memberships(conn, changes)
    count(metrics.SEGMENT_CHANGES.labels(projection.LAPSED), len(changes))
    return derived


RFM_REFRESH_INTERVAL_SECONDS = 10.0
"""How often the worker looks whether the projection moved, and then recomputes the RFM scores
or the cube (a no-op look costs one small query)."""
RFM_REFRESH_DUTY = 0.1
"""At most this share of the time goes to refreshing (a 60 s refresh of a million customers:
every 10 minutes)."""


class RfmRefresher:
    """Recomputes the RFM scores when the fold applied something or time moved since the last
    time, and publishes the segment sizes as gauges; its next run recomputes the cube (broken
    down by their segments). One at a time, each followed by the duty's rest: back to back they
    were one burst of several seconds of PostgreSQL, a core taken from the folds on a small
    machine, and the freshness tail of every worker."""

    def __init__(self) -> None:
        self.refreshed_at_mark: tuple[int, datetime | None] | None = None
        self.cube_due = False

    async def __call__(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            if self.cube_due:
                started = time.monotonic()
                await store.refresh_cube(conn)
                metrics.CUBE_REFRESH_SECONDS.observe(time.monotonic() - started)
                self.cube_due = False
                return
            mark = await store.projection_mark(conn)
            if mark == self.refreshed_at_mark:
                return
            started = time.monotonic()
            await store.refresh_rfm(conn)
            sizes = await store.segment_sizes(conn)
        metrics.RFM_REFRESH_SECONDS.observe(time.monotonic() - started)
        for currency in {currency for currency, _ in sizes}:
            for segment in analytics.RFM_SEGMENTS:
                metrics.RFM_CUSTOMERS.labels(currency, segment).set(
                    sizes.get((currency, segment), 0)
                )
        self.refreshed_at_mark = mark
        self.cube_due = True


REBUILD_RULES = RebuildRules(
    computed=(
        "fitted_lifetime_models",
        "fitted_lifetime_parameters",
        "fitted_lifetime_predictions",
        "fitted_lifetime_requests",
        "computed_revenue_cube",
        "rfm_scores",
    ),
    left_out_columns={"segment_memberships": frozenset({"version", "changed_at"})},
    compared_rows={"segment_memberships": "member"},
)
"""The lifetime-value model (`fitted_*`), the revenue cube (`computed_*`) and the RFM scores are
computed by the worker's jobs at wall-clock times: a rebuild's shadow holds none until they run
again. A segment's history does not replay exactly (an entry and an exit inside one batch cancel
out, and operator definitions interleave with customer events differently): a rebuild must give
the same members, not the same versions (docs/decisions.md, operator segments)."""


PROJECTION = Projection(
    name="profile",
    topics=TOPICS,
    folds=FOLDS,
    migrations=MIGRATIONS,
    fold=segment_fold.with_operator_segments(fold),
    bulk_fold=lambda: segment_fold.with_operator_segments(BulkFold()),
    related=persons_around,
    rebuild_rules=REBUILD_RULES,
    periodic=(
        PeriodicJob(
            "rfm-scores", RFM_REFRESH_INTERVAL_SECONDS, RfmRefresher(), duty=RFM_REFRESH_DUTY
        ),
        PeriodicJob(
            "lifetime-value",
            lifetime_job.CHECK_INTERVAL_SECONDS,
            lifetime_job.LifetimeRefitter(),
            duty=lifetime_job.FIT_DUTY,
        ),
    ),
)

if __name__ == "__main__":
    run_worker(PROJECTION, ProfileSettings())
