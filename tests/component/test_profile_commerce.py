"""Profile commerce and analysis on real PostgreSQL (no Kafka): the folded orders, refunds and
cancellations are the same whatever the batch boundaries and the order of arrival, and the RFM
scores, top customers and cube computed in SQL agree with independent computations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import build_event, encode_event
from crm_shared.contracts.topics import topic_for
from crm_shared.ops.demo.retail import load_retail
from crm_shared.runtime.db import open_pool
from crm_shared.runtime.projector import BatchProjector, RawRecord
from crm_shared.runtime.shadow import Fingerprint, fingerprints
from profile_service import analytics, commerce, store
from profile_service.api import create_app
from profile_service.config import ProfileSettings
from profile_service.worker import PROJECTION, RfmRefresher
from tests.component.partition_logs import fold_more, folded_in_batches, interleaved, orders_tick
from tests.component.plans import plans_between, plans_made
from tests.component.service_api import api_get, database_url
from tests.uci_data import DATA, real_file

pytestmark = pytest.mark.component

DAY0 = datetime(2024, 1, 1, tzinfo=UTC)
COMMERCE_TABLES = ("orders", "order_lines", "refunds", "order_cancellations", "product_categories")


def _lines(*prices: str) -> list[dict[str, Any]]:
    return [{"product_id": f"P{i}", "quantity": 1, "unit_price": p} for i, p in enumerate(prices)]


def _event(kind: str, customer: str, day: float, data: dict[str, Any], eid: str) -> dict[str, Any]:
    return build_event(
        f"crm.order.{kind}.v1",
        customer,
        data,
        source="shop",
        time=DAY0 + timedelta(days=day),
        event_id=eid,
    )


def _placed(customer: str, order: str, day: float, *prices: str, **extra: Any) -> dict[str, Any]:
    data = {"order_id": order, "lines": _lines(*prices), **extra}
    return _event("placed", customer, day, data, f"{order}@{day}")


def _refunded(
    customer: str, refund: str, day: float, price: str, order: str | None = None
) -> dict[str, Any]:
    data = {"refund_id": refund, "order_id": order, "lines": _lines(price)}
    return _event("refunded", customer, day, data, refund)


def _cancelled(customer: str, order: str, day: float) -> dict[str, Any]:
    return _event("cancelled", customer, day, {"order_id": order}, f"cancel-{order}")


def _tick(partition: int, day: int) -> dict[str, Any]:
    return orders_tick(partition, DAY0 + timedelta(days=day))


def _crowd() -> list[dict[str, Any]]:
    """Thirty customers with 1 to 5 orders of growing size, for the population-wide figures."""
    events = []
    for n in range(30):
        for k in range(n % 5 + 1):
            events.append(_placed(f"K{n}", f"K{n}-{k}", n + 3 * k, str(5 + n * 3)))
    return events


# Partition 0: the special cases; partition 1: the crowd. Each in its log order.
LOGS: dict[int, list[dict[str, Any]]] = {
    0: [
        _placed("A", "O1", 0, "10", "5"),
        _placed("A", "O3", 5, "7", currency="EUR"),
        _cancelled("B", "O4", 4),  # before the order it cancels
        _placed("B", "O4", 3, "50", country="DE"),  # cancelled: goes nowhere
        _refunded("B", "R2", 6, "50", order="O4"),  # part of the cancellation
        _placed("A", "O1", 1, "99"),  # the same order id again, later: not kept
        _placed("A", "O2", 10, "20", channel="store", country="FR"),
        _refunded("A", "R1", 12, "5", order="O1"),  # partial
        _placed("B", "O5", 20, "30", country="IE"),
        _refunded("B", "R3", 21, "4"),  # names no order
        _tick(0, 40),
    ],
    1: [*_crowd(), _tick(1, 45)],
}


def _catalogued(product: str, day: float, category: str) -> dict[str, Any]:
    data = {"product_id": product, "name": product, "price": "1", "available": True}
    return build_event(
        "crm.product.catalogued.v1",
        product,
        {**data, "category": category},
        source="pim",
        time=DAY0 + timedelta(days=day),
        event_id=f"{product}@{day}",
    )


CATALOGUE_LOG = [
    _catalogued("P0", 1, "kitchen"),
    _catalogued("P1", 1, "candles"),
    _catalogued("P0", 30, "garden"),  # reclassified
    _catalogued("P9", 2, "toys"),  # never bought
    _catalogued("P0", 0, "toys"),  # late and older: changes nothing
]


def _records(reverse: bool) -> list[RawRecord]:
    """The partitions interleaved, then the catalogue; reversed, every event arrives in the
    opposite order."""
    logs = {p: list(reversed(log)) if reverse else log for p, log in LOGS.items()}
    catalogue = list(reversed(CATALOGUE_LOG)) if reverse else CATALOGUE_LOG
    return [*interleaved(logs, "crm.orders"), *interleaved({0: catalogue}, "crm.catalogue")]


@asynccontextmanager
async def _folded(size: int, *, reverse: bool = False) -> AsyncIterator[asyncpg.Pool]:
    """A fresh profile database fed the logs in batches of `size`, its RFM scores and cube
    refreshed."""
    async with folded_in_batches(PROJECTION, _records(reverse), size) as pool:
        async with pool.acquire() as conn:
            await store.refresh_rfm(conn)
            await store.refresh_cube(conn)
        yield pool


async def _state(pool: asyncpg.Pool) -> tuple[dict[str, Fingerprint], list[Any], list[Any]]:
    async with pool.acquire() as conn:
        tables = await fingerprints(conn, "public", PROJECTION.rebuild_rules)
        totals = await conn.fetch("SELECT * FROM customer_currency_totals ORDER BY 1, 2")
        scores = await conn.fetch("SELECT * FROM rfm_scores ORDER BY 1, 2")
    return (
        {t: tables[t] for t in COMMERCE_TABLES},
        [tuple(r) for r in totals],
        [tuple(r) for r in scores],
    )


async def test_commerce_is_the_same_whatever_the_batches_and_the_order_of_arrival() -> None:
    async with _folded(1) as pool:
        reference = await _state(pool)
    assert reference[0]["orders"].rows == 5 + sum(n % 5 + 1 for n in range(30))
    for size, reverse in ((5, False), (1000, False), (1, True), (7, True)):
        async with _folded(size, reverse=reverse) as pool:
            assert await _state(pool) == reference, (size, reverse)


async def test_refunds_cancellations_and_currencies_make_the_customer_totals() -> None:
    async with _folded(4) as pool, pool.acquire() as conn:
        a = {t.currency: t for t in (await store.purchases_of(conn, ["A"]))[0]}
        b = {t.currency: t for t in (await store.purchases_of(conn, ["B"]))[0]}
        channels = await store.order_counts(conn, ["A"], "channel")
        countries = await store.order_counts(conn, ["A", "B"], "country")
        categories = await store.order_counts(conn, ["A", "B"], "category")
    # A: O1 (first placement, 15) partly refunded (5), O2 20; EUR apart.
    assert (a["GBP"].orders, a["GBP"].gross_revenue, a["GBP"].refunded) == (2, 35, 5)
    assert a["GBP"].net_revenue == Decimal(30)
    assert (a["EUR"].orders, a["EUR"].net_revenue) == (1, Decimal(7))
    # B: O4 cancelled (its refund with it), O5 30, a refund of 4 that names no order.
    assert (b["GBP"].orders, b["GBP"].gross_revenue, b["GBP"].refunded) == (1, 30, 4)
    assert b["GBP"].first_purchase_at == DAY0 + timedelta(days=20)
    assert channels == {"web": 2, "store": 1}  # EUR orders count too: channels are not money
    assert countries == {"FR": 1, "IE": 1}  # orders naming a country, not cancelled
    # Orders not cancelled with a line of the category: A's O1 (P0, P1), O2 and O3 (P0), B's O5
    # (P0; O4 is cancelled). P0 counts as garden, its latest record, on every order.
    assert categories == {"garden": 4, "candles": 1}


DIMENSIONS: tuple[store.OrderDimension, ...] = ("channel", "country", "category")


async def test_one_customers_purchase_reads_are_planned_once_per_connection() -> None:
    """The purchase summary's reads of a person of one record (most are) keep the plan
    PostgreSQL makes without the record after five reads; of several records they are planned
    for each read (`= ANY` of an array), and give the same answers."""
    async with _folded(4) as pool, pool.acquire() as conn:
        before = await plans_made(conn)
        for _ in range(12):
            totals, cancelled = await store.purchases_of(conn, ["A"])
            counts = [await store.order_counts(conn, ["A"], by) for by in DIMENSIONS]
            records = await store.records_of(conn, ["A"])
        after = await plans_made(conn)
        several = await store.order_counts(conn, ["A", "B"], "category")
        b_alone = await store.order_counts(conn, ["B"], "category")
    made = [
        plans
        for table in ("customer_currency_totals", "FROM orders", "FROM customers")
        for plans in plans_between(before, after, table)
    ]
    assert len(made) == 5, made  # the totals, three dimensions, the record
    assert all(custom <= 5 and generic == 12 - custom for generic, custom in made), made
    assert {t.currency for t in totals} == {"GBP", "EUR"} and cancelled == 0
    assert counts[0] == {"web": 2, "store": 1} and records == {}  # orders only, no record
    assert several == {k: counts[2].get(k, 0) + b_alone.get(k, 0) for k in several}


async def test_products_keep_their_latest_catalogued_category() -> None:
    async with _folded(2, reverse=True) as pool, pool.acquire() as conn:
        rows = await conn.fetch("SELECT product_id, category FROM product_categories ORDER BY 1")
    assert [tuple(row) for row in rows] == [("P0", "garden"), ("P1", "candles"), ("P9", "toys")]


async def test_favourite_countries_are_where_orders_went_else_the_customers_own() -> None:
    registered = build_event(
        "crm.customer.registered.v1",
        "K1",
        {"country": "United Kingdom"},
        source="shop",
        time=DAY0,
        event_id="K1-registered",
    )
    records = [*_records(reverse=False), *interleaved({0: [registered]}, "crm.customers")]
    async with folded_in_batches(PROJECTION, records, 50) as pool:
        settings = ProfileSettings(database_url=await database_url(pool))
        answers = {
            customer: (
                await api_get(create_app(settings), settings, f"/customers/{customer}/purchases")
            ).json()
            for customer in ("A", "K1", "K2")
        }
    assert answers["A"]["favourite_channels"] == ["web", "store"]
    assert answers["A"]["favourite_countries"] == ["FR"]
    assert answers["A"]["favourite_categories"] == ["garden", "candles"]
    assert answers["K2"]["favourite_categories"] == ["garden"]
    assert answers["K1"]["favourite_countries"] == ["United Kingdom"]  # no order names one
    assert answers["K2"]["favourite_countries"] == []


async def test_counts_across_currencies_leave_cancelled_orders_and_their_refunds_out() -> None:
    async with _folded(3) as pool, pool.acquire() as conn:
        a = commerce.counts_across(*await store.purchases_of(conn, ["A"]))
        b = commerce.counts_across(*await store.purchases_of(conn, ["B"]))
        both, _ = await store.purchases_of(conn, ["A", "B"])
        nobody = await store.purchases_of(conn, ["Z"])
    # A: O1 (2 items) partly refunded (1 item), O2 1 item, O3 in EUR 1 item: three orders.
    assert (a.orders, a.refunds, a.items, a.cancelled_orders) == (3, 1, 3, 0)
    assert (a.first_purchase_at, a.last_purchase_at) == (DAY0, DAY0 + timedelta(days=10))
    # B: O4 cancelled with its refund; O5 kept, and the refund naming no order.
    assert (b.orders, b.refunds, b.items, b.cancelled_orders) == (1, 1, 0, 1)
    assert b.first_purchase_at == DAY0 + timedelta(days=20)
    # Two records' totals added per currency, never across currencies.
    assert [(t.currency, t.orders, t.net_revenue) for t in both] == [
        ("EUR", 1, Decimal(7)),
        ("GBP", 3, Decimal(30 + 26)),
    ]
    assert nobody == ([], 0)


async def test_rfm_scores_in_sql_match_the_reference_by_the_replayable_clock() -> None:
    async with _folded(6) as pool, pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM rfm_scores WHERE currency = 'GBP'")
        sizes = await store.segment_sizes(conn)
        mine = await store.rfm_of(conn, "K29")
    by_id = {row["customer_id"]: row for row in rows}
    measures = {
        c: analytics.Measures(r["recency_days"], r["frequency"], r["monetary"])
        for c, r in by_id.items()
    }
    expected = analytics.rfm_scores(measures)
    assert {c: (r["r"], r["f"], r["m"]) for c, r in by_id.items()} == expected
    # Recency by the clock of the customer's partition (day 45 for the crowd, 40 for A and B).
    assert by_id["K29"]["as_of"] == DAY0 + timedelta(days=45)
    assert by_id["A"]["recency_days"] == 30
    assert sum(count for (currency, _), count in sizes.items() if currency == "GBP") == 32
    assert mine[0]["segment"] == analytics.rfm_segment(*expected["K29"])


async def test_the_worker_keeps_scores_current_as_the_population_changes() -> None:
    """A's monetary score falls from 5 to 2 when bigger spenders arrive, with no event of A's:
    the worker's periodic job scores the population again once the projection moved."""
    log = [
        _placed("A", "A1", 0, "100"),
        _placed("B", "B1", 1, "50"),
        _tick(0, 5),
        *(_placed(c, f"{c}1", 6, price) for c, price in (("C", "200"), ("D", "300"), ("E", "400"))),
        _tick(0, 7),
    ]
    records = interleaved({0: log}, "crm.orders")
    refresher = RfmRefresher()

    async def a_scores(pool: asyncpg.Pool) -> tuple[int, int, int]:
        await refresher(pool)
        async with pool.acquire() as conn:
            (a,) = await store.rfm_of(conn, "A")
        return a["r"], a["f"], a["m"]

    async with folded_in_batches(PROJECTION, records[:3], 3) as pool:
        assert await a_scores(pool) == (1, 1, 5)  # the older buyer, the bigger spender of two
        await refresher(pool)  # the cube's run
        await fold_more(PROJECTION, pool, records[3:])
        assert await a_scores(pool) == (1, 1, 2)  # the second smallest spender of five


async def test_the_worker_refreshes_the_cube_in_the_run_after_the_scores() -> None:
    """The scores and the cube are two runs of the periodic job, each followed by its rest, so
    that the two never make one burst; the cube is recomputed once after each scoring, and a
    projection that did not move costs neither."""
    records = interleaved({0: [_placed("A", "A1", 0, "100"), _tick(0, 5)]}, "crm.orders")
    refresher = RfmRefresher()

    async def state(pool: asyncpg.Pool) -> tuple[int, Any]:
        await refresher(pool)
        async with pool.acquire() as conn:
            scored = await conn.fetchval("SELECT count(*) FROM rfm_scores")
            computed = await conn.fetchval("SELECT max(computed_at) FROM computed_revenue_cube")
        return scored, computed

    async with folded_in_batches(PROJECTION, records, 2) as pool:
        assert await state(pool) == (1, None)  # scored; the cube waits for the next run
        scored, computed = await state(pool)
        assert (scored, computed is not None) == (1, True)
        assert await state(pool) == (1, computed)  # nothing moved: neither runs again


async def test_top_customers_are_the_fewest_reaching_the_share() -> None:
    async with _folded(9) as pool, pool.acquire() as conn:
        rows = await conn.fetch("SELECT monetary FROM rfm_scores WHERE currency = 'GBP'")
        found = await store.top_customers(conn, "GBP", Decimal("0.25"), 10)
    amounts = sorted((r["monetary"] for r in rows if r["monetary"] > 0), reverse=True)
    total, running, needed = sum(amounts), Decimal(0), 0
    for amount in amounts:
        if running >= total / 4:
            break
        running += amount
        needed += 1
    assert (found["top"], found["active"], found["revenue"]) == (needed, len(rows), total)
    curve = analytics.pareto_curve(found["active"], total, found["running_at"], 10)
    assert curve[-1].revenue_share == 1
    shares = [point.revenue_share for point in curve]
    assert shares == sorted(shares)


async def test_the_cube_totals_equal_the_customer_totals_in_every_breakdown() -> None:
    async with _folded(8) as pool, pool.acquire() as conn:
        net = await conn.fetchval(
            "SELECT sum(net_revenue) FROM customer_currency_totals WHERE currency = 'GBP'"
        )
        orders = await conn.fetchval(
            "SELECT sum(orders) FROM customer_currency_totals WHERE currency = 'GBP'"
        )
        cells = await store.cube(conn, "GBP", ("rfm_segment", "channel", "month"))
        grand = await store.cube(conn, "GBP", ())
    assert [(c["orders"], c["revenue"], c["customers"]) for c in grand] == [(orders, net, 32)]
    total = [c for c in cells if all(c["rolled_up"])]
    assert [(c["orders"], c["revenue"]) for c in total] == [(orders, net)]
    by_channel = [c for c in cells if c["rolled_up"] == [True, False, True]]
    assert sum(c["revenue"] for c in by_channel) == net
    assert {c["channel"] for c in by_channel} == {"web", "store", "unknown"}
    finest = [c for c in cells if not any(c["rolled_up"])]
    assert sum(c["orders"] for c in finest) == orders


async def test_a_customer_counts_in_each_of_their_segments_and_once_in_the_totals() -> None:
    async with _folded(8) as pool, pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO segment_memberships (customer_id, segment, member, version, changed_at)"
            " VALUES ($1, $2, $3, 1, now())",
            [
                ("K1", "vip", True),
                ("K2", "vip", True),
                ("K2", "newsletter", True),
                ("K3", "vip", False),  # left the segment: not a member
            ],
        )
        await store.refresh_cube(conn)
        net = {
            row["customer_id"]: row["net_revenue"]
            for row in await conn.fetch(
                "SELECT customer_id, net_revenue FROM customer_currency_totals"
                " WHERE currency = 'GBP'"
            )
        }
        members = await conn.fetch(
            "SELECT segment, customer_id FROM segment_memberships WHERE member"
        )
        by_segment = await store.cube(conn, "GBP", ("segment",))
        by_both = await store.cube(conn, "GBP", ("segment", "channel"))
    (grand,) = [c for c in by_segment if c["rolled_up"] == [True]]
    assert (grand["customers"], grand["revenue"]) == (len(net), sum(net.values()))
    segments = {c["segment"]: c for c in by_segment if c["rolled_up"] == [False]}
    expected: dict[str, list[str]] = {}
    for row in members:  # the fold's own segments (lapsed) too
        if row["customer_id"] in net:
            expected.setdefault(row["segment"], []).append(row["customer_id"])
    assert {"vip", "newsletter"} <= set(expected)
    assert {
        segment: (cell["customers"], cell["revenue"]) for segment, cell in segments.items()
    } == {
        segment: (len(buyers), sum(net[b] for b in buyers)) for segment, buyers in expected.items()
    }
    assert (segments["newsletter"]["customers"], segments["newsletter"]["orders"]) == (1, 3)
    vip_by_channel = [
        c for c in by_both if c["segment"] == "vip" and c["rolled_up"] == [False, False]
    ]
    assert sum(c["revenue"] for c in vip_by_channel) == net["K1"] + net["K2"]


async def test_a_currency_without_purchases_has_a_grand_total_of_zeros() -> None:
    async with _folded(1000) as pool, pool.acquire() as conn:
        cells = await store.cube(conn, "JPY", ("segment",))
    assert [(c["customers"], c["orders"], c["revenue"], c["rolled_up"]) for c in cells] == [
        (0, 0, 0, [True])
    ]


@real_file
async def test_the_online_retail_file_gives_its_known_totals_in_the_commerce_views(
    fresh_dsn: str,
) -> None:
    assert DATA is not None
    events = [
        document
        for document in load_retail(DATA).events
        if topic_for(document["type"]) in ("crm.orders", "crm.customers")
    ]
    records = [
        RawRecord(
            topic_for(document["type"]),
            0,
            offset,
            str(document["subject"]).encode(),
            encode_event(document),
        )
        for offset, document in enumerate(events)
    ]
    pool = await open_pool(fresh_dsn, PROJECTION.migrations, 2)
    try:

        async def no_dead_letters(letters: Sequence[DeadLetter]) -> None:
            raise AssertionError(f"unexpected dead letters: {letters[:3]}")

        projector = BatchProjector(PROJECTION, pool, no_dead_letters)
        await projector.reload_positions()
        for start in range(0, len(records), 5000):
            await projector.process(records[start : start + 5000])
        totals = await pool.fetchrow(
            "SELECT count(*) AS customers, count(*) FILTER (WHERE orders > 0) AS buyers,"
            " sum(gross_revenue) AS gross, sum(net_revenue) AS net"
            " FROM customer_currency_totals WHERE currency = 'GBP'"
        )
        disagreeing = await pool.fetchval(
            "SELECT count(*) FROM customer_currency_totals c"
            " FULL JOIN purchase_totals p USING (customer_id)"
            " WHERE c.net_revenue IS DISTINCT FROM p.gross_revenue - p.refunded"
        )
    finally:
        await pool.close()
    assert (totals["customers"], totals["buyers"]) == (4_372, 4_339)
    assert round(totals["gross"], 2) == Decimal("8911407.90")
    assert round(totals["net"], 2) == Decimal("8300065.81")
    assert disagreeing == 0  # the views and the fold's own sums give every customer alike


async def test_the_record_with_its_purchases_in_one_statement_is_the_two_reads_apart() -> None:
    async with _folded(4) as pool, pool.acquire() as conn:
        for customer in ("A", "B", "Z"):
            view, totals, cancelled = await store.customer_view_with_purchases(conn, customer)
            assert view == await store.customer_view(conn, customer), customer
            assert (totals, cancelled) == await store.purchases_of(conn, [customer]), customer
        a_view, a_totals, _ = await store.customer_view_with_purchases(conn, "A")
        unknown = await store.customer_view_with_purchases(conn, "Z")
    assert a_view is not None and a_view["purchased"] and not a_view["in_merges"]
    assert [t.currency for t in a_totals] == ["EUR", "GBP"]  # one row a currency, in order
    assert unknown == (None, [], 0)
