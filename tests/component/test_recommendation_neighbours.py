"""Similar products on real PostgreSQL (no Kafka): the neighbour job gives what a plain
recomputation from the purchases gives, whatever the batch boundaries and whenever it runs; reads
rank from the precomputed rows. Personal picks: test_recommendation_serving."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from asyncpg.connection import LoggedQuery
from prometheus_client import REGISTRY

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import build_event, encode_event
from crm_shared.contracts.topics import topic_for
from crm_shared.runtime.db import open_pool
from crm_shared.runtime.projector import BatchProjector, RawRecord
from recommendation_service import jobs, models, neighbours, projection, store
from recommendation_service.jobs import refresh_neighbours
from recommendation_service.projection import NEIGHBOURS_KEPT
from recommendation_service.worker import PROJECTION
from tests.component.plans import explained
from tests.similar_products import (
    SERVED_SIMILAR_SQL,
    SimilarLists,
    assert_serves,
    plain_similar_products,
)

pytestmark = pytest.mark.component

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _lines_event(kind: str, n: int, customer: str, products: Sequence[str]) -> dict[str, Any]:
    """An order (kind "placed") or a refund (kind "refunded") of one unit of each product."""
    ids = {"order_id": f"O{n}"} if kind == "placed" else {"refund_id": f"R{n}"}
    return build_event(
        f"crm.order.{kind}.v1",
        customer,
        {**ids, "lines": [{"product_id": p, "quantity": 1, "unit_price": "1"} for p in products]},
        source="shop",
        time=T0 + timedelta(minutes=n),
        event_id=f"{'order' if kind == 'placed' else 'refund'}-{n}",
    )


def _order(n: int, customer: str, products: Sequence[str]) -> dict[str, Any]:
    return _lines_event("placed", n, customer, products)


def _refund(n: int, customer: str, products: Sequence[str]) -> dict[str, Any]:
    return _lines_event("refunded", n, customer, products)


def _view(n: int, customer: str, product: str) -> dict[str, Any]:
    return build_event(
        "crm.product.viewed.v1",
        customer,
        {"product_id": product},
        source="web",
        time=T0 + timedelta(minutes=n),
        event_id=f"view-{n}",
    )


def _orders(seed: int, count: int) -> list[dict[str, Any]]:
    """Skewed baskets: some customers buy far more than `kept` products, popular goods tie;
    one order in six is refunded in part, some of those refunds before the order comes."""
    rng = random.Random(seed)
    products = [f"P{i:03}" for i in range(120)] + ["POST", "gift_0001_10"]
    events = []
    for n in range(count):
        customer = f"C{int(rng.paretovariate(0.8)) % 40}"
        basket = [
            products[int(rng.paretovariate(0.7)) % len(products)] for _ in range(rng.randint(1, 9))
        ]
        placed = _order(n, customer, basket)
        if rng.random() < 1 / 6:
            returned = _refund(n, customer, sorted(set(basket))[: rng.randint(1, 3)])
            events += [returned, placed] if rng.random() < 0.3 else [placed, returned]
        else:
            events.append(placed)
    return events


async def stored_lists(pool: asyncpg.Pool) -> SimilarLists:
    """The served part of every stored list."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(SERVED_SIMILAR_SQL, projection.NEIGHBOURS_KEPT, "%")
    lists: SimilarLists = defaultdict(list)
    for row in rows:
        lists[row["product_id"]].append((row["other_product_id"], row["co_buyers"]))
    return dict(lists)


async def kept_pairs(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """What the neighbour job computes from, read plainly: (customer, good) kept."""
    rows = await conn.fetch(
        """
        SELECT cp.customer_id, cp.product_id
        FROM customer_products cp JOIN products p USING (product_id)
        WHERE cp.units_kept > 0 AND p.goods
        """
    )
    return [(row[0], row[1]) for row in rows]


def baskets(pairs: Iterable[tuple[Any, str]]) -> list[list[str]]:
    """Each buyer's goods, whoever the buyer is (the numbered read names no customers)."""
    goods: dict[Any, list[str]] = defaultdict(list)
    for buyer, product in pairs:
        goods[buyer].append(product)
    return sorted(sorted(kept) for kept in goods.values())


async def no_dead_letters(letters: Sequence[DeadLetter]) -> None:
    raise AssertionError(f"unexpected dead letters: {letters}")


@pytest.fixture(autouse=True)
def unpaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole-catalogue runs as often as asked: these tests run the job right after each batch."""
    monkeypatch.setattr(jobs, "WHOLE_CATALOGUE_SECONDS", 0.0)


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(fresh_dsn, PROJECTION.migrations, 4)
    yield pool
    await pool.close()


async def project(
    pool: asyncpg.Pool, events: Sequence[dict[str, Any]], batch: int, offset: int = 0
) -> None:
    """Fold in batches of `batch` records, the first at `offset`; the job does not run."""
    projector = BatchProjector(PROJECTION, pool, no_dead_letters)
    records = [
        RawRecord(topic_for(e["type"]), 0, offset + n, e["subject"].encode(), encode_event(e))
        for n, e in enumerate(events)
    ]
    for start in range(0, len(records), batch):
        await projector.process(records[start : start + batch])


async def fold(
    pool: asyncpg.Pool, events: Sequence[dict[str, Any]], batch: int, job_every: int
) -> None:
    """Fold in batches of `batch` events; run the job after every `job_every` batches, then
    until nothing is marked."""
    for number, start in enumerate(range(0, len(events), batch)):
        await project(pool, events[start : start + batch], batch, offset=start)
        if number % job_every == 0:
            await refresh_neighbours(pool)
    while await refresh_neighbours(pool):
        pass


@pytest.mark.parametrize(("batch", "job_every"), [(1, 1), (7, 3), (50, 2), (400, 1)])
async def test_similar_products_equal_a_plain_recomputation_whatever_the_batches(
    pool: asyncpg.Pool, batch: int, job_every: int
) -> None:
    events = _orders(seed=3, count=400)
    await fold(pool, events, batch, job_every)
    expected = plain_similar_products(events, NEIGHBOURS_KEPT)
    assert max(len(others) for others in expected.values()) == NEIGHBOURS_KEPT  # lists trimmed
    assert await stored_lists(pool) == expected


async def test_a_purchase_made_while_the_job_runs_is_refreshed_by_the_next_run(
    pool: asyncpg.Pool,
) -> None:
    await fold(pool, [_order(0, "C1", ["JAM", "TEA"])], batch=1, job_every=1)
    async with pool.acquire() as conn, conn.transaction():
        assert await store.marked_products(conn) == {}
    async with pool.acquire() as reader:
        await project(pool, [_order(1, "C2", ["JAM", "TEA"])], batch=1, offset=1)
        # The job reads the marks, a purchase marks JAM again, then the job clears what it read.
        async with reader.transaction():
            marks = await store.marked_products(reader)
            async with pool.acquire() as folder:
                await store.mark_for_refresh(folder, ["JAM"])
            await store.clear_marks(reader, marks)
        assert set(await store.marked_products(reader)) == {"JAM"}
    assert await refresh_neighbours(pool) == 1
    assert (await stored_lists(pool))["JAM"] == [("TEA", 2)]


@pytest.mark.parametrize(
    ("table", "key", "mark_again", "clear"),
    [
        ("dirty_products", "product_id", store.mark_for_refresh, store.clear_marks),
        ("dirty_customers", "customer_id", store.mark_customers, store.clear_customer_marks),
    ],
)
async def test_a_bulk_loads_marks_are_cleared_by_key_never_joined_with_the_table(
    pool: asyncpg.Pool,
    table: str,
    key: str,
    mark_again: Callable[[asyncpg.Connection, Sequence[str]], Awaitable[None]],
    clear: Callable[[asyncpg.Connection, Mapping[str, int]], Awaitable[None]],
) -> None:
    """Statistics taken when few were marked, then 20,000 marks (a bulk load): a job's run
    clears them by key, without a join of the marks read with the table (planned on those
    statistics, a nested loop over both took minutes of a core while the fold waited); a mark
    set again meanwhile stays."""
    insert = f"INSERT INTO {table} ({key}) SELECT 'K' || n FROM generate_series($1::int, $2) n"
    await pool.execute(insert, 1, 300)
    await pool.execute(f"ANALYZE {table}")
    await pool.execute(insert, 301, 20_000)
    marks = {row[0]: row[1] for row in await pool.fetch(f"SELECT {key}, mark FROM {table}")}
    async with pool.acquire() as conn:
        await mark_again(conn, ["K7"])
    statements: list[LoggedQuery] = []
    async with pool.acquire() as conn:
        conn.add_query_logger(statements.append)
        async with conn.transaction():
            await clear(conn, marks)
        conn.remove_query_logger(statements.append)
        plans = [await explained(conn, s.query, *s.args) for s in statements if "dirty_" in s.query]

    assert plans
    for plan in plans:
        assert "Function Scan" not in plan and "Nested Loop" not in plan, plan
    assert [row[0] for row in await pool.fetch(f"SELECT {key} FROM {table}")] == ["K7"]


async def test_a_refund_of_everything_takes_the_buyer_out_of_similar_and_popular_products(
    pool: asyncpg.Pool,
) -> None:
    events = [
        _order(1, "C1", ["JAM", "MUG", "TEA"]),
        _order(2, "C2", ["JAM", "MUG"]),
        _refund(3, "C2", ["MUG"]),
        _refund(4, "C3", ["TEA"]),  # before its order: nothing kept in the end
        _order(5, "C3", ["JAM", "TEA"]),
    ]
    await fold(pool, events, batch=2, job_every=1)
    lists = await stored_lists(pool)
    assert lists == plain_similar_products(events, NEIGHBOURS_KEPT)
    # JAM: 3 buyers, MUG: 1 (C2 returned it), TEA: 1 (C3's refund came first)
    assert lists["JAM"] == [("MUG", 1), ("TEA", 1)]
    async with pool.acquire() as conn:
        popular = await store.popular_products(conn, 10)
        assert [(p["product_id"], p["buyers"]) for p in popular] == [
            ("JAM", 3),
            ("MUG", 1),
            ("TEA", 1),
        ]
        (mug,) = [p for p in await store.also_bought(conn, "JAM", 10) if p["product_id"] == "MUG"]
        assert mug["similarity"] == pytest.approx(1 / math.sqrt(3 * 1))


async def test_non_goods_are_neither_similar_nor_popular(
    pool: asyncpg.Pool,
) -> None:
    events = [_order(n, f"C{n}", ["POST", "MUG", "gift_0001_20", "M", "TEA"]) for n in range(5)] + [
        _order(9, "C9", ["MUG"]),
        _view(10, "C9", "DOT"),
    ]
    await fold(pool, events, batch=3, job_every=1)
    async with pool.acquire() as conn:
        popular = [p["product_id"] for p in await store.popular_products(conn, 10)]
        assert popular == ["MUG", "TEA"]
        assert [p["product_id"] for p in await store.also_bought(conn, "MUG", 10)] == ["TEA"]
        assert await store.also_bought(conn, "POST", 10) == []


async def test_kept_buyers_are_read_whole_or_for_some_goods_without_losing_a_pair(
    pool: asyncpg.Pool,
) -> None:
    """What a whole-catalogue run computes from, read whole and then for the goods marked: the
    pairs kept, with the goods in code-point order whatever the database's collation (upper
    before lower case, digits before letters); a refunded good and postage are not read."""
    products = ["b-2", "B-10", "a10", "A9", "Z", "a-1", "\u00e9t\u00e9"]
    events = [
        _order(0, "C1", ["b-2", "B-10", "a10", "POST"]),
        _order(1, "C2", ["A9", "Z", "a-1", "\u00e9t\u00e9", "b-2"]),
        _order(2, "C3", ["a10", "Z"]),
        _refund(3, "C3", ["Z"]),
    ]
    await project(pool, events[:2], 2)
    async with pool.acquire() as conn:
        first = neighbours.kept_buyers(await store.kept_goods(conn))
    await project(pool, events[2:], 2, offset=2)
    async with pool.acquire() as conn:
        marked = sorted(await store.marked_products(conn))
        read = await store.goods_buyers(conn, [*marked, "POST", "NOBODY"])
        kept = neighbours.with_buyers(first, read, marked)
        plain = await kept_pairs(conn)
    assert set(read) == set(products)  # postage and a product nobody keeps are absent
    coded = neighbours.kept_goods(kept)
    assert list(coded.products) == sorted(products)
    assert baskets(
        zip(coded.buyers.tolist(), [coded.products[g] for g in coded.goods.tolist()], strict=True)
    ) == baskets(plain)
    assert len(coded.buyers) == len(plain)
    assert models.kept_similar_products(coded, 5) == models.similar_products(plain, 5)


def lists_brought_up_to_date(how: str) -> float:
    return REGISTRY.get_sample_value("crm_recommendation_neighbour_lists_total", {"how": how}) or 0


@pytest.mark.parametrize(
    ("kept", "reserve", "incremental_buyers"),
    [(3, 0, 2_000), (3, 2, 2_000), (50, 10, 2_000), (3, 2, 0), (3, 2, 60)],
)
async def test_each_run_serves_exactly_what_a_whole_recomputation_gives(
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    kept: int,
    reserve: int,
    incremental_buyers: int,
) -> None:
    """Purchases and refunds in random batches, a run after each: the stored lists always serve
    what `models.similar_products` gives over everything kept, and keep exact starts of its
    lists, whether the run refreshed only the lists the marked products touch (spending the
    reserve) or (over the bound) the whole catalogue, from what the worker kept of its last
    whole-catalogue run and the incremental runs since (bound 60: both kinds of run mix)."""
    monkeypatch.setattr(projection, "NEIGHBOURS_KEPT", kept)
    monkeypatch.setattr(projection, "NEIGHBOURS_RESERVE", reserve)
    monkeypatch.setattr(jobs, "NEIGHBOUR_INCREMENTAL_BUYERS", incremental_buyers)
    merged_before = lists_brought_up_to_date("merged")
    from_memory = whole_catalogue_runs("memory")
    events = _orders(seed=11, count=240)
    rng = random.Random(11)
    start = 0
    while start < len(events):
        size = rng.randint(1, 12)
        await project(pool, events[start : start + size], size, offset=start)
        start += size
        await refresh_neighbours(pool)
        async with pool.acquire() as conn:
            whole = models.similar_products(await kept_pairs(conn), kept + reserve)
            stored = await store.stored_similar_products(conn)
            assert_serves(stored, whole, kept, f"after {start} events")
            if not reserve:
                assert stored == whole, f"after {start} events"
    merged = lists_brought_up_to_date("merged") - merged_before
    assert merged > 0 if incremental_buyers else merged == 0
    if incremental_buyers == 60:  # whole-catalogue runs after incremental ones, from memory
        assert whole_catalogue_runs("memory") - from_memory > 0


def whole_catalogue_runs(read: str) -> float:
    return (
        REGISTRY.get_sample_value("crm_recommendation_whole_catalogue_runs_total", {"read": read})
        or 0
    )


async def test_a_whole_catalogue_run_reads_everything_again_after_another_run(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker reuses what its last whole-catalogue run read only while that run is the last
    one: after another replica's run (here: this process forgetting its own), it reads every kept
    pair and stored list again, and the lists stay those of a whole recomputation."""
    monkeypatch.setattr(jobs, "NEIGHBOUR_INCREMENTAL_BUYERS", 0)
    events = _orders(seed=5, count=120)
    from_memory, from_database = whole_catalogue_runs("memory"), whole_catalogue_runs("database")
    mine = None
    batches = range(0, len(events), 20)
    for start in batches:
        await project(pool, events[start : start + 20], 20, offset=start)
        if start == 80:  # runs since this process's own were "another replica's"
            jobs.KEPT.last = mine
        assert await refresh_neighbours(pool) > 0
        if start == 20:
            mine = jobs.KEPT.last
    # everything read by the first run and by the one after "another replica's" runs
    assert whole_catalogue_runs("database") - from_database == 2
    assert whole_catalogue_runs("memory") - from_memory == len(batches) - 2
    async with pool.acquire() as conn:
        whole = models.similar_products(await kept_pairs(conn), jobs.list_capacity())
        assert await store.stored_similar_products(conn) == whole


async def test_a_whole_catalogue_run_waits_its_interval_and_its_marks_with_it(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole-catalogue runs are paced: one that comes too soon after the last leaves every mark
    in place, and the next due run brings every list up to date."""
    monkeypatch.setattr(jobs, "NEIGHBOUR_INCREMENTAL_BUYERS", 0)
    monkeypatch.setattr(jobs.KEPT, "last", None)
    monkeypatch.setattr(jobs, "WHOLE_CATALOGUE_SECONDS", 3600.0)
    events = _orders(seed=7, count=60)
    await project(pool, events[:30], 30)
    assert await refresh_neighbours(pool) > 0
    await project(pool, events[30:], 30, offset=30)
    async with pool.acquire() as conn:
        marks = await store.marked_products(conn)
    assert marks
    assert await refresh_neighbours(pool) == 0
    async with pool.acquire() as conn:
        assert await store.marked_products(conn) == marks
    monkeypatch.setattr(jobs, "WHOLE_CATALOGUE_SECONDS", 0.0)
    assert await refresh_neighbours(pool) == len(marks)
    async with pool.acquire() as conn:
        whole = models.similar_products(await kept_pairs(conn), jobs.list_capacity())
        assert await store.stored_similar_products(conn) == whole
