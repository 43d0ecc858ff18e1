"""Recommendation jobs, in a process of their own beside the worker: keep each product's similar
products precomputed (the neighbour job), train the personalised model and swap it in (the
trainer), and keep customers' picks current (the picks job). They read what the worker folds
and write what the API serves; the marks the fold leaves (`dirty_products`, `dirty_customers`)
tell them what changed.

Apart from the worker because their Python (numpy in threads, thousands of documents a run)
held the fold's interpreter lock and event loop: the recommendation's freshness p99 was 2 s at
2,000 events/s (docs/decisions.md, "The recommendation jobs in a process of their own"). Any
number may run: each job takes a lock in the database for a run.

python -m recommendation_service.jobs
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from uuid import UUID, uuid4

import asyncpg

from crm_shared.runtime import outbox
from crm_shared.runtime.jobs import run_jobs
from crm_shared.runtime.metrics import count, counted_on_commit
from crm_shared.runtime.projector import PeriodicJob
from recommendation_service import (
    consent,
    metrics,
    models,
    neighbours,
    projection,
    published,
    serving,
    store,
)
from recommendation_service.config import MIGRATIONS, RecommendationSettings
from recommendation_service.consent import PersonalisationDefault
from recommendation_service.evaluation import KNN_NEIGHBOURS

NEIGHBOUR_JOB_INTERVAL_SECONDS = 0.25
"""A purchase shows in "also bought" within about this plus one run (the target is 2 s)."""
NEIGHBOUR_JOB_DUTY = 0.5
"""At most this share of the time goes to the neighbour job: under a steady stream of purchases
(a bulk load, a rebuild) it would otherwise run back to back and take a core from the fold on
this 2-core machine."""
NEIGHBOUR_JOB_BURST_SECONDS = 3.0
"""Seconds of runs the job may make without resting after a quiet spell (PeriodicJob): a purchase
that follows another is not held back a run's length by the duty cap (one ordinary run takes
0.3 to 1 s here, a bestseller's up to 3 s). A steady stream is still held to the duty."""
NEIGHBOUR_INCREMENTAL_BUYERS = 2_000
"""Up to this many buyers of the marked products in all, a run brings up to date only the lists
they can change (`neighbour_changes`); beyond it (a bulk load, a rebuild) it recomputes the whole
catalogue. An incremental run's cost grows with its marks' buyers and the whole one's does not:
on the Online Retail data marks with 2,000 buyers cost about 0.4 s of pure CPU against 1.4 to
1.7 s, so a run stays below a whole recomputation's cost with room for the reads."""
WHOLE_CATALOGUE_SECONDS = 1.0
"""A whole-catalogue run starts at most this often in a process; marks wait for it, and more
gather. Under a steady stream with bestsellers every run is whole and costs about the same
however many marks it clears (every list naming a marked bestseller gets a new similarity, so
most rows are written again): its CPU share is set by how often it runs, not by the purchases.
Unpaced, the duty cap alone ran it back to back, every other half second. A purchase shows within
about this plus a run's length (the target is 2 s)."""
TRAINER_INTERVAL_SECONDS = 2.0
"""How often the trainer looks for a retrain request: one is answered within about this plus a
training. The trainer has no duty cap: it trains only when a version is due (hourly) or asked
for, and one training answers every request made before it began, so its share of the CPU is
bounded by how often holders of `recommendations:train` ask. A cap would make a request made
just after a long training (a minute on the UCI data on a busy machine) wait several minutes."""
MODEL_RETRAIN_SECONDS = 3600.0
"""A version this old is replaced by a new one trained on everything kept since."""
PICKS_JOB_INTERVAL_SECONDS = 0.25
PICKS_JOB_DUTY = 0.3
PICKS_BATCH = 500
"""Customers whose picks one run of the picks job recomputes at most. Tried at 100 (its runs
share the fold's event loop): the recommendation's freshness tail fell, but a run's fixed reads
kept it near 0.5 s, so the job cleared about a quarter as many customers a second and a backlog
(a bulk load, the test suite's platform) drained four times slower (docs/decisions.md)."""
CATALOGUE_SLACK = 200
"""Popular and new goods read beyond those a list shows, for the lists that leave out what the
customer kept (a customer who kept more of them than this may get a shorter list)."""


ListChanges = tuple[dict[models.SimilarPair, models.Similar], list[models.SimilarPair]]
"""Similar-product pairs to upsert and to delete (`models.changed_similar_products`)."""


def list_capacity() -> int:
    """Entries a list computed in full keeps: those served and the reserve."""
    return projection.NEIGHBOURS_KEPT + projection.NEIGHBOURS_RESERVE


async def neighbour_changes(conn: asyncpg.Connection, marked: Sequence[str]) -> ListChanges:
    """What to write so that every list a change of the `marked` products' buyers can touch
    serves what a whole recomputation gives (`neighbours`): the marked rows from their co-buyer
    counts, the lists of what is bought with them or names them merged with their new entries,
    and those the merge cannot settle computed in full. Numpy and the merge in threads, not the
    loop."""
    served, capacity = projection.NEIGHBOURS_KEPT, list_capacity()
    co_buyers = await store.co_buyers_of(conn, marked)
    rows = await asyncio.to_thread(neighbours.computed_rows, co_buyers, marked, capacity, True)
    naming = await store.products_naming(conn, marked)
    boundaries = await store.last_of_long_lists(conn, sorted(set(rows.crossing) - naming), served)
    to_merge = neighbours.lists_to_merge(boundaries, naming, rows)
    stored = await store.similar_lists(conn, sorted({*marked, *to_merge}))
    merged = await asyncio.to_thread(
        neighbours.merged_lists, stored, to_merge, rows, served, capacity
    )
    lists = {**merged.lists, **rows.lists}
    if merged.unsettled:
        co_buyers = await store.co_buyers_of(conn, merged.unsettled)
        full = await asyncio.to_thread(
            neighbours.computed_rows, co_buyers, merged.unsettled, capacity, False
        )
        lists.update(full.lists)
    count(metrics.NEIGHBOUR_LISTS.labels("unchanged"), len(set(rows.crossing) - set(to_merge)))
    count(metrics.NEIGHBOUR_LISTS.labels("merged"), len(merged.lists))
    count(metrics.NEIGHBOUR_LISTS.labels("computed"), len(rows.lists) + len(merged.unsettled))
    return models.changed_similar_products(neighbours.pairs(stored), neighbours.pairs(lists))


@dataclass(frozen=True, slots=True)
class WholeCatalogue:
    """What a whole-catalogue run read and wrote, brought up to date by this process's later
    incremental runs, for its next one: valid while `run` is the last recorded in the database
    (no other replica's run, no rebuild since) and lists keep as many entries."""

    run: UUID
    """The last run that wrote it."""
    started: float
    """When the whole-catalogue run started (`time.perf_counter`): the next waits
    WHOLE_CATALOGUE_SECONDS from it."""
    capacity: int
    kept: neighbours.KeptBuyers
    lists: dict[models.SimilarPair, models.Similar]
    """Every stored list, as written."""


class KeptCatalogue:
    """This process's last whole-catalogue run (`WholeCatalogue`), if it is still the last."""

    def __init__(self) -> None:
        self.last: WholeCatalogue | None = None

    async def valid(self, conn: asyncpg.Connection, capacity: int) -> WholeCatalogue | None:
        """The last run, if it is still the last recorded: one small read, once a run, and none
        when nothing is kept."""
        last = self.last
        if last is None or last.capacity != capacity:
            return None
        return last if await store.last_neighbour_run(conn) == last.run else None

    def resting(self, now: float) -> bool:
        """Whether a whole-catalogue run must wait: this process started one less than
        WHOLE_CATALOGUE_SECONDS ago."""
        return self.last is not None and now - self.last.started < WHOLE_CATALOGUE_SECONDS


KEPT = KeptCatalogue()


async def whole_catalogue_changes(
    conn: asyncpg.Connection,
    marked: Sequence[str],
    run: UUID,
    started: float,
    before: WholeCatalogue | None,
) -> tuple[ListChanges, WholeCatalogue]:
    """What to write so that every list is what `models.kept_similar_products` computes from all
    that customers kept, reserve included (numpy, in a thread), and what this run read and wrote.
    From what this process kept of its last run (`before`, still the last), only the marked
    goods' buyers are read and the stored lists are those it wrote; otherwise every kept pair
    and every stored list."""
    capacity = list_capacity()
    if before is None:
        kept = neighbours.kept_buyers(await store.kept_goods(conn))
        stored = await store.stored_similar_products(conn)
    else:
        read = await store.goods_buyers(conn, marked)
        kept = neighbours.with_buyers(before.kept, read, marked)
        stored = before.lists
    computed = await asyncio.to_thread(
        models.kept_similar_products, neighbours.kept_goods(kept), capacity
    )
    count(metrics.WHOLE_CATALOGUE_RUNS.labels("database" if before is None else "memory"))
    changes = models.changed_similar_products(stored, computed)
    return changes, WholeCatalogue(run, started, capacity, kept, computed)


def kept_after(
    before: WholeCatalogue,
    marked: Sequence[str],
    read: neighbours.GoodsBuyers,
    run: UUID,
    changes: ListChanges,
) -> WholeCatalogue:
    """What this process keeps of its last whole-catalogue run, brought up to date by an
    incremental run once committed (who keeps its marked goods, `read` in its transaction; its
    changes applied to the lists), so that the next whole-catalogue run still starts from memory
    and keeps its pace. The lists are changed in place, not copied: a copy of all of them (about
    217,000 pairs on the UCI data) cost about 8 ms of every run."""
    upserts, deletes = changes
    before.lists.update(upserts)
    for pair in deletes:
        before.lists.pop(pair, None)
    kept = neighbours.with_buyers(before.kept, read, marked)
    return WholeCatalogue(run, before.started, before.capacity, kept, before.lists)


async def refresh_neighbours(pool: asyncpg.Pool) -> int:
    """One run of the neighbour job: when products are marked, bring every similar-product list
    their buyers' changes can touch up to date (`neighbour_changes`, or the whole catalogue when
    the marked products have over NEIGHBOUR_INCREMENTAL_BUYERS buyers, at most every
    WHOLE_CATALOGUE_SECONDS) in one transaction (readers see the old lists or the new ones),
    record the run, then unmark those not marked again meanwhile. What a whole-catalogue run
    read and wrote is kept once committed, and incremental runs keep it up to date. Returns how
    many marks were cleared; 0 when another replica's run holds the lock or a whole-catalogue
    run must wait."""
    started = time.perf_counter()
    run = uuid4()
    whole: WholeCatalogue | None = None
    followed: neighbours.GoodsBuyers | None = None  # who keeps the marked goods, for `before`
    with counted_on_commit():
        async with pool.acquire() as conn, conn.transaction():
            if not await store.lock_neighbour_job(conn):
                return 0
            marks = await store.marked_products(conn)
            if not marks:
                return 0
            marked = sorted(marks)
            whole_run = await store.buyers_in_all(conn, marked) > NEIGHBOUR_INCREMENTAL_BUYERS
            if whole_run and KEPT.resting(started):
                return 0
            before = await KEPT.valid(conn, list_capacity())
            if whole_run:
                changes, whole = await whole_catalogue_changes(conn, marked, run, started, before)
            else:
                changes = await neighbour_changes(conn, marked)
                if before is not None:  # what the worker keeps follows the marked goods
                    followed = await store.goods_buyers(conn, marked)
            await store.write_similar_products(conn, *changes)
            await store.record_neighbour_run(conn, run)
            await store.clear_marks(conn, marks)
    if before is not None and followed is not None:  # committed: what is kept may change
        whole = kept_after(before, marked, followed, run, changes)
    KEPT.last = whole
    metrics.NEIGHBOURS_REFRESHED.inc(len(marks))
    metrics.NEIGHBOUR_JOB_SECONDS.observe(time.perf_counter() - started)
    return len(marks)


class ServedModel:
    """The version served, as this process last loaded it: loaded again only when another one
    has been swapped in."""

    def __init__(self) -> None:
        self._loaded: tuple[int, serving.ServingModel] | None = None

    async def current(self, conn: asyncpg.Connection) -> tuple[int, serving.ServingModel] | None:
        found = await store.current_model(conn)
        if found is None:
            return None
        if self._loaded is None or self._loaded[0] != found["version"]:
            version = found["version"]
            model = serving.model_from_rows(
                await store.model_products(conn, version),
                await store.model_item_weights(conn, version),
                found["parameters"],
                found["data_as_of"],
            )
            self._loaded = (found["version"], model)
        return self._loaded


SERVED = ServedModel()


@cache
def personalisation_default() -> PersonalisationDefault:
    """What customers who never decided get, in this process (read once from the settings)."""
    return RecommendationSettings().personalisation_default


async def served_lists(
    conn: asyncpg.Connection, model: serving.ServingModel, customers: Sequence[str] | None
) -> dict[str, published.ServedList]:
    """The lists of these customers (None: everyone who kept goods or has a list): personal
    picks from the model for those who allow personalisation (their data alone is read), popular
    goods for the others and for those the model has nothing for."""
    if customers is None:
        everyone = await store.kept_purchases(conn)
        listed = await store.customers_with_lists(conn)
        who = sorted({item.customer_id for item in everyone}.union(listed))
    else:
        who = list(customers)
    states = await store.consent_states(conn, who)
    default = personalisation_default()
    allowed = [c for c in who if consent.personalisation_allowed(states.get(c), default)]
    may = set(allowed)
    if customers is None:
        kept = [item for item in everyone if item.customer_id in may]
        seeds = None
    else:
        kept = await store.kept_purchases(conn, allowed)
        seeds = sorted({item.product_id for item in kept})
    neighbours = await store.voting_neighbours(conn, KNN_NEIGHBOURS, seeds)
    found = await asyncio.to_thread(serving.personal_picks, model, allowed, kept, neighbours)
    named = await store.descriptions(
        conn, {pick.product_id for picks in found.values() for pick in picks}
    )
    kept_by: dict[str, set[str]] = {}
    for item in kept:
        kept_by.setdefault(item.customer_id, set()).add(item.product_id)
    popular = await store.popular_products(conn, serving.PICKS_KEPT + CATALOGUE_SLACK)
    newest = await store.newest_products(conn, published.NEW_PRODUCTS + CATALOGUE_SLACK)
    lists = {
        customer: published.served_list(
            [
                serving.pick_document(pick, named.get(pick.product_id))
                for pick in found.get(customer, [])
            ],
            customer in may,
            kept_by.get(customer, set()),
            popular,
            newest,
        )
        for customer in who
    }
    count(metrics.LISTS_WITHOUT_CONSENT, len(who) - len(allowed))
    return lists


async def write_lists(
    conn: asyncpg.Connection, version: int, lists: Mapping[str, published.ServedList]
) -> int:
    """Store the lists and, in the same transaction, publish through the outbox those whose
    content changed since last published. Returns how many were published."""
    await store.write_picks(conn, version, lists)
    stored = await store.published_lists(conn, sorted(lists))
    publications = published.changed_lists(stored, lists)
    now = datetime.now(UTC)
    await outbox.write(
        conn, [published.refreshed_event(found, version, now) for found in publications]
    )
    await store.save_published(conn, publications, now)
    for personalised in (True, False):
        count(
            metrics.LISTS_PUBLISHED.labels(str(personalised).lower()),
            sum(found.served.personalised is personalised for found in publications),
        )
    return len(publications)


async def refresh_picks(pool: asyncpg.Pool) -> int:
    """One run of the picks job: recompute the lists of customers whose orders, refunds or
    consents arrived, with the version served, and publish those that changed, in one
    transaction under the picks lock (never while a swap writes everyone's). Before the first
    version their marks wait. Returns how many customers."""
    with counted_on_commit():
        async with pool.acquire() as conn, conn.transaction():
            if not await store.lock_picks(conn, wait=False):
                return 0
            marks = await store.marked_customers(conn, PICKS_BATCH)
            loaded = await SERVED.current(conn) if marks else None
            if loaded is None:
                return 0
            version, model = loaded
            await write_lists(conn, version, await served_lists(conn, model, list(marks)))
            await store.clear_customer_marks(conn, marks)
    metrics.PICKS_REFRESHED.inc(len(marks))
    return len(marks)


async def train_model(pool: asyncpg.Pool) -> int | None:
    """One run of the trainer: when a retrain was requested, no version exists or the current
    one is MODEL_RETRAIN_SECONDS old, train the blend on what customers kept (in a thread, no
    transaction open), then in one transaction write the version, every customer's picks with
    it, point at it and prune old versions: readers see the old model and picks or the new ones.
    Returns the version swapped in, None when nothing was due (or another replica trains)."""
    async with pool.acquire() as conn:
        if not await store.try_lock_trainer(conn):
            return None
        try:
            current = await store.current_model(conn)
            pending = await store.newest_pending_retrain(conn)
            due = serving.training_due(
                current["trained_at"] if current else None,
                pending is not None
                or (current is not None and serving.outdated(current["parameters"])),
                datetime.now(UTC),
                MODEL_RETRAIN_SECONDS,
            )
            kept = await store.kept_purchases(conn) if due else []
            if not kept:
                return None
            started = time.perf_counter()
            model = await asyncio.to_thread(
                serving.train, kept, models.AlsParameters(), models.EaseParameters()
            )
            figures = {
                "customers": len({item.customer_id for item in kept}),
                "products": len(model.products),
                "purchases": len(kept),
                "training_seconds": round(time.perf_counter() - started, 3),
            }
            with counted_on_commit():
                async with conn.transaction():
                    await store.lock_picks(conn, wait=True)
                    version = await store.add_model_version(conn, model, datetime.now(UTC), figures)
                    await write_lists(conn, version, await served_lists(conn, model, None))
                    await store.swap_model(conn, version, answering=pending)
        finally:
            await store.unlock_trainer(conn)
    metrics.MODEL_SWAPS.inc()
    metrics.MODEL_JOB_SECONDS.observe(time.perf_counter() - started)
    return version


JOBS = (
    PeriodicJob(
        "similar-products",
        NEIGHBOUR_JOB_INTERVAL_SECONDS,
        refresh_neighbours,
        duty=NEIGHBOUR_JOB_DUTY,
        burst_seconds=NEIGHBOUR_JOB_BURST_SECONDS,
    ),
    PeriodicJob("train-model", TRAINER_INTERVAL_SECONDS, train_model),
    PeriodicJob("customer-picks", PICKS_JOB_INTERVAL_SECONDS, refresh_picks, duty=PICKS_JOB_DUTY),
)

if __name__ == "__main__":
    settings = RecommendationSettings()
    run_jobs("recommendation", JOBS, settings, settings.jobs_metrics_port, MIGRATIONS)
