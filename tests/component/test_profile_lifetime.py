"""Lifetime value on real PostgreSQL (no Kafka): the purchase histories the models read, a fit
swapped in with every customer's prediction, a requested refit replacing it, one person's
records (merged, aliased) fitted and answered as one customer, and the fit on the real UCI
Online Retail file."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import build_event, encode_event
from crm_shared.contracts.topics import topic_for
from crm_shared.ops.demo.retail import load_retail
from crm_shared.runtime.db import open_pool
from crm_shared.runtime.projector import BatchProjector, RawRecord
from crm_shared.runtime.shadow import fingerprints
from profile_service import store
from profile_service.api import create_app
from profile_service.config import ProfileSettings
from profile_service.lifetime import REFIT_AFTER, FittedVersion
from profile_service.lifetime_fit import fit_all
from profile_service.lifetime_job import LifetimeRefitter
from profile_service.worker import PROJECTION
from tests.component.partition_logs import fold_more, folded_in_batches, interleaved, orders_tick
from tests.component.service_api import api_get, database_url
from tests.uci_data import DATA, real_file

pytestmark = pytest.mark.component

DAY0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _order(customer: str, order: str, day: float, price: str, currency: str = "GBP") -> Any:
    data = {
        "order_id": order,
        "currency": currency,
        "lines": [{"product_id": "P1", "quantity": 1, "unit_price": price}],
    }
    return build_event(
        "crm.order.placed.v1",
        customer,
        data,
        source="shop",
        time=DAY0 + timedelta(days=day),
        event_id=f"{customer}-{order}",
    )


def _other(kind: str, customer: str, day: float, data: dict[str, Any], eid: str) -> Any:
    return build_event(
        f"crm.order.{kind}.v1",
        customer,
        data,
        source="shop",
        time=DAY0 + timedelta(days=day),
        event_id=eid,
    )


def _crowd(customers: int, seed: int) -> list[Any]:
    """Customers who buy every week to every two months on average (exponential gaps), stop
    after any purchase with a chance of one in six, and spend 5 to 80 a day, until day 250."""
    rng = random.Random(seed)
    events = []
    for n in range(customers):
        mean_gap = rng.choice((7, 15, 30, 60))
        day, k = rng.uniform(0, 100), 0
        while day < 250:
            events.append(_order(f"K{n}", f"o{k}", day, f"{rng.uniform(5, 80):.2f}"))
            if rng.random() < 1 / 6:
                break
            day, k = day + rng.expovariate(1 / mean_gap), k + 1
    return events


HISTORY_LOGS = {
    0: [
        _order("A", "a1", 0.25, "10"),
        _order("A", "a2", 0.5, "5"),  # the same day: one purchase
        _order("A", "a3", 10, "20"),
        _other(
            "refunded",
            "A",
            11,
            {
                "refund_id": "r1",
                "order_id": "a3",
                "lines": [{"product_id": "P1", "quantity": 1, "unit_price": "5"}],
            },
            "A-r1",
        ),
        _order("A", "a4", 30, "40"),
        _other("cancelled", "A", 31, {"order_id": "a4"}, "A-c4"),
        _order("B", "b1", 2, "8"),
        orders_tick(0, DAY0 + timedelta(days=40)),
    ],
    1: [
        _order("C", "c1", 0, "8"),
        _order("C", "c2", 4, "12"),
        orders_tick(1, DAY0 + timedelta(days=50)),
    ],
}


async def test_histories_count_purchase_days_net_of_cancellations_by_the_partition_clock() -> None:
    records = interleaved(HISTORY_LOGS, "crm.orders")
    async with folded_in_batches(PROJECTION, records, 3) as pool, pool.acquire() as conn:
        histories, as_of = await store.purchase_histories(conn)
    found = {h.customer_id: h for h in histories}
    a, b, c = found["A"], found["B"], found["C"]
    # Days 0 and 10 (the cancelled day-30 order is no purchase); day 10 net of its refund.
    assert (a.repeat_purchases, a.span_days, a.age_days, a.mean_repeat_spend) == (1, 10, 40, 15)
    assert (b.repeat_purchases, b.span_days, b.age_days, b.mean_repeat_spend) == (0, 0, 38, None)
    assert b.days_since_last == 38
    # C's partition has its own clock (day 50).
    assert (c.repeat_purchases, c.span_days, c.age_days) == (1, 4, 50)
    assert as_of == DAY0 + timedelta(days=50)


async def test_a_fit_is_swapped_in_whole_and_a_requested_refit_replaces_it() -> None:
    logs = {
        0: [*_crowd(60, seed=1), orders_tick(0, DAY0 + timedelta(days=260))],
        1: [
            *(_order(f"E{n}", "e1", n, "9", currency="EUR") for n in range(3)),
            orders_tick(1, DAY0 + timedelta(days=260)),
        ],
    }
    refitter = LifetimeRefitter()
    async with folded_in_batches(PROJECTION, interleaved(logs, "crm.orders"), 50) as pool:
        await refitter(pool)
        async with pool.acquire() as conn:
            first = await store.current_lifetime_model(conn)
            scored = await store.lifetime_of(conn, "K5")
            before = await fingerprints(conn, "public", PROJECTION.rebuild_rules)
        await refitter(pool)  # nothing moved, nobody asked: no new version
        async with pool.acquire() as conn:
            unchanged = await store.current_lifetime_model(conn)
            request = await store.request_lifetime_refit(conn)
            waiting = await store.current_lifetime_model(conn)
        await refitter(pool)
        async with pool.acquire() as conn:
            second = await store.current_lifetime_model(conn)
            rescored = await store.lifetime_of(conn, "K5")
            versions = await conn.fetch("SELECT DISTINCT version FROM fitted_lifetime_predictions")
            answered = await conn.fetchval(
                "SELECT version FROM fitted_lifetime_requests WHERE id = $1", request["id"]
            )
    assert first is not None and second is not None and unchanged is not None
    assert (first.version, first.trigger) == (1, "first")
    assert [m.currency for m in first.models] == ["GBP"]
    assert first.models[0].customers == 60
    assert "fewer than 10" in first.skipped["EUR"]
    assert first.as_of == DAY0 + timedelta(days=260)
    [k5] = scored
    assert k5.version == 1
    assert 0 <= k5.prediction.probability_alive <= 1
    assert k5.prediction.lifetime_value > 0
    assert unchanged.version == 1
    assert waiting is not None and waiting.pending_refits == 1
    assert (second.version, second.trigger, second.pending_refits) == (2, "requested", 0)
    assert second.fitted_at > first.fitted_at
    assert [s.version for s in rescored] == [2]
    assert [row["version"] for row in versions] == [2]  # the old predictions went with the swap
    assert answered == 2
    assert not any(table.startswith("fitted_") for table in before)  # not compared by rebuilds


async def test_an_old_model_is_refitted_on_schedule_once_the_projection_moved() -> None:
    """The job's schedule: a model younger than REFIT_AFTER is kept though orders arrive; once
    it is older, the next look fits again ("scheduled") and swaps the new version in."""
    log = [*_crowd(40, seed=3), orders_tick(0, DAY0 + timedelta(days=260))]
    more = [
        _order("late", "l1", 255, "30"),
        _order("late", "l2", 258, "30"),
        orders_tick(0, DAY0 + timedelta(days=261)),
    ]
    records = interleaved({0: [*log, *more]}, "crm.orders")
    refitter = LifetimeRefitter()
    async with folded_in_batches(PROJECTION, records[: len(log)], 100) as pool:
        await refitter(pool)
        await fold_more(PROJECTION, pool, records[len(log) :])
        await refitter(pool)  # the projection moved, but the model is new: kept
        async with pool.acquire() as conn:
            kept = await store.current_lifetime_model(conn)
            unscored = await store.lifetime_of(conn, "late")
            await conn.execute(  # as if fitted REFIT_AFTER and a minute ago
                "UPDATE fitted_lifetime_models SET fitted_at = fitted_at - $1::interval",
                REFIT_AFTER + timedelta(minutes=1),
            )
        await refitter(pool)
        async with pool.acquire() as conn:
            refitted = await store.current_lifetime_model(conn)
            scored = await store.lifetime_of(conn, "late")
    assert kept is not None and (kept.version, kept.trigger) == (1, "first")
    assert unscored == []
    assert refitted is not None and (refitted.version, refitted.trigger) == (2, "scheduled")
    assert refitted.fitted_at > kept.fitted_at
    assert [s.version for s in scored] == [2]


def _customer(kind: str, day: float, data: dict[str, Any]) -> Any:
    """An event of Ann's customer record."""
    at = DAY0 + timedelta(days=day)
    kind = f"crm.customer.{kind}.v1"
    return build_event(kind, "ann", data, source="shop", time=at, event_id=f"ann-{kind}")


def _person_logs(unmerged: bool) -> list[RawRecord]:
    """Ann bought on day 0, the visitor record merged into her on day 20, and an order naming
    her e-mail on day 40; Bob once; with the crowd of the fit. `unmerged`: the visitor is split
    off again on day 45."""
    customers = [
        _customer("registered", 0, {"email": "ann@x.test"}),
        _customer("merged", 30, {"merged_customer_id": "visitor"}),
        *([_customer("unmerged", 45, {"customer_id": "visitor"})] if unmerged else []),
    ]
    orders = {
        0: [
            *_crowd(40, seed=2),
            _order("ann", "a1", 0, "10"),
            _order("email:ann@x.test", "e1", 40, "30"),
            orders_tick(0, DAY0 + timedelta(days=260)),
        ],
        1: [
            _order("visitor", "v1", 20, "20"),
            _order("bob", "b1", 5, "50"),
            orders_tick(1, DAY0 + timedelta(days=260)),
        ],
    }
    return [*interleaved({0: customers}, "crm.customers"), *interleaved(orders, "crm.orders")]


async def _lifetime_answer(conn: asyncpg.Connection, customer_id: str) -> tuple[int, Any]:
    """GET /customers/{id}/lifetime-value of the profile API over the test's database."""
    settings = ProfileSettings(database_url=await database_url(conn))
    path = f"/customers/{customer_id}/lifetime-value"
    response = await api_get(create_app(settings), settings, path)
    return response.status_code, response.json()


@pytest.mark.parametrize("size", [1, 25])
async def test_a_person_is_fitted_and_answered_as_one_customer(size: int) -> None:
    async with folded_in_batches(PROJECTION, _person_logs(unmerged=False), size) as pool:
        await LifetimeRefitter()(pool)
        async with pool.acquire() as conn:
            histories, _ = await store.purchase_histories(conn)
            answers = {c: await _lifetime_answer(conn, c) for c in ("ann", "visitor", "bob")}
            alias = await _lifetime_answer(conn, "email:ann@x.test")
    found = {h.customer_id: h for h in histories}
    assert "visitor" not in found and "email:ann@x.test" not in found
    ann = found["ann"]
    # Days 0, 20 and 40 from three records: two repeat purchases of mean spend 25.
    assert (ann.repeat_purchases, ann.span_days, ann.mean_repeat_spend) == (2, 40, 25)
    status, by_ann = answers["ann"]
    assert status == 200 and by_ann["customer_id"] == "ann"
    [figures] = by_ann["by_currency"]
    assert figures["purchase_days"] == 3
    assert answers["visitor"] == (200, by_ann)  # a merged record answers for its person
    assert alias == (200, by_ann)
    status, by_bob = answers["bob"]
    assert status == 200 and by_bob["by_currency"][0]["purchase_days"] == 1


async def test_an_unmerged_record_is_fitted_apart_again() -> None:
    async with folded_in_batches(PROJECTION, _person_logs(unmerged=True), 25) as pool:
        await LifetimeRefitter()(pool)
        async with pool.acquire() as conn:
            histories, _ = await store.purchase_histories(conn)
            status, visitor = await _lifetime_answer(conn, "visitor")
    found = {h.customer_id: h for h in histories}
    assert (found["ann"].repeat_purchases, found["ann"].span_days) == (1, 40)
    assert (found["visitor"].repeat_purchases, found["visitor"].span_days) == (0, 0)
    assert status == 200 and visitor["customer_id"] == "visitor"
    assert visitor["by_currency"][0]["purchase_days"] == 1


@real_file
async def test_the_online_retail_file_fits_sane_parameters_and_consistent_predictions(
    fresh_dsn: str,
) -> None:
    assert DATA is not None
    events = [
        document
        for document in load_retail(DATA).events
        if topic_for(document["type"]) in ("crm.orders", "crm.customers")
    ]
    records = [
        RawRecord(topic_for(d["type"]), 0, offset, str(d["subject"]).encode(), encode_event(d))
        for offset, d in enumerate(events)
    ]
    pool = await open_pool(fresh_dsn, PROJECTION.migrations, 2)
    try:

        async def no_dead_letters(letters: Sequence[DeadLetter]) -> None:
            raise AssertionError(f"unexpected dead letters: {letters[:3]}")

        projector = BatchProjector(PROJECTION, pool, no_dead_letters)
        await projector.reload_positions()
        for start in range(0, len(records), 5000):
            await projector.process(records[start : start + 5000])
        async with pool.acquire() as conn:
            started = time.perf_counter()
            histories, as_of = await store.purchase_histories(conn)
            read_seconds = time.perf_counter() - started
            started = time.perf_counter()
            fit = fit_all(histories)
            fit_seconds = time.perf_counter() - started
            started = time.perf_counter()
            fitted = FittedVersion(NOW, as_of, fit_seconds, "test", fit.models, fit.predictions)
            version = await store.save_lifetime_model(conn, fitted, [])
            swap_seconds = time.perf_counter() - started
            reads = []
            for history in histories[:500]:
                started = time.perf_counter()
                [scored] = await store.lifetime_of(conn, history.customer_id)
                reads.append(time.perf_counter() - started)
                assert scored.version == version
    finally:
        await pool.close()
    [model] = fit.models
    reads.sort()
    print(
        f"\nUCI lifetime fit: {len(histories)} histories read in {read_seconds:.2f} s, "
        f"fitted and predicted in {fit_seconds:.2f} s, swapped in {swap_seconds:.2f} s, "
        f"a customer read p50 {reads[250] * 1000:.2f} ms p99 {reads[495] * 1000:.2f} ms, "
        f"as of {as_of}: {model}"
    )
    assert model.currency == "GBP"
    assert model.customers == 4_339  # every customer with an order that was not cancelled
    purchases, spend = model.purchases, model.spend
    # Sane: purchases every few weeks to months, a modest drop-out chance per purchase, and a
    # population mean spend per purchase day of the order of the file's mean invoice.
    assert 10 < purchases.alpha / purchases.r < 365
    assert 0 < purchases.a / (purchases.a + purchases.b) < 0.5
    assert 100 < spend.population_mean < 2_000
    predictions = {h.customer_id: (h, p) for h, p in fit.predictions}
    assert len(predictions) == 4_339
    assert all(0 <= p.probability_alive <= 1 for _, p in predictions.values())
    assert all(p.expected_purchases >= 0 and p.lifetime_value >= 0 for _, p in predictions.values())
    repeaters = [(h, p) for h, p in predictions.values() if h.repeat_purchases >= 3]
    recent = [p for h, p in repeaters if h.days_since_last < 30]
    lapsed = [p for h, p in repeaters if h.days_since_last > 180]
    # One year of data shows few customers leaving (a / (a + b) is small): the probability alive
    # stays high, yet a long silence still lowers it and the purchases expected.
    assert _mean(p.probability_alive for p in recent) > _mean(p.probability_alive for p in lapsed)
    assert _mean(p.expected_purchases for p in recent) > 2 * _mean(
        p.expected_purchases for p in lapsed
    )
    frequent = [p.expected_purchases for h, p in repeaters if h.repeat_purchases >= 10]
    once = [p.expected_purchases for h, p in predictions.values() if h.repeat_purchases == 0]
    assert _mean(frequent) > 5 * _mean(once)


def _mean(values: Iterable[float]) -> float:
    found = list(values)
    return sum(found) / len(found)
