"""Operator segments on real PostgreSQL (no Kafka): the rule compiled to SQL selects exactly the
customers the Python evaluator selects, membership does not depend on the batch boundaries, and
the clock's ticks move customers in and out of time-dependent segments."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.events import build_event, encode_event
from crm_shared.contracts.segment_rules import Rule
from crm_shared.runtime.projector import RawRecord
from profile_service import segments, store
from profile_service.lifetime import FittedVersion, Prediction, PurchaseHistory
from profile_service.worker import PROJECTION
from tests.component.partition_logs import folded_in_batches, orders_tick

pytestmark = pytest.mark.component

DAY0 = datetime(2024, 1, 1, tzinfo=UTC)
PRODUCTS = {"P1": "Red heart lantern", "P2": "Blue star mug", "P3": None, "P4": "HEART cushion"}


def _day(day: float) -> datetime:
    return DAY0 + timedelta(days=day)


def _record(topic: str, partition: int, offset: int, event: dict[str, Any]) -> RawRecord:
    return RawRecord(topic, partition, offset, str(event["subject"]).encode(), encode_event(event))


class Log:
    """Events in the order a consumer reads them, each on its topic and partition."""

    def __init__(self) -> None:
        self.records: list[RawRecord] = []
        self.offsets: dict[tuple[str, int], int] = {}

    def add(self, topic: str, partition: int, event: dict[str, Any]) -> None:
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        self.records.append(_record(topic, partition, offset, event))

    def event(
        self,
        topic: str,
        partition: int,
        kind: str,
        subject: str,
        data: Any,
        day: float,
        source: str = "shop",
    ) -> None:
        self.add(
            topic,
            partition,
            build_event(
                kind,
                subject,
                data,
                source=source,
                time=_day(day),
                event_id=f"{kind}:{subject}:{len(self.records)}",
            ),
        )

    def define(self, segment: str, rule: dict[str, Any], day: float) -> None:
        self.event(
            "crm.segment-definitions",
            0,
            "crm.segment.defined.v1",
            segment,
            {"segment": segment, "rule": rule},
            day,
            source="operator",
        )

    def retire(self, segment: str, day: float) -> None:
        self.event(
            "crm.segment-definitions",
            0,
            "crm.segment.retired.v1",
            segment,
            {"segment": segment},
            day,
            source="operator",
        )

    def order(
        self,
        customer: str,
        partition: int,
        order_id: str,
        day: float,
        products: Sequence[str] = ("P1",),
        currency: str = "GBP",
        channel: str = "web",
        price: str = "10",
    ) -> None:
        lines = [
            {"product_id": p, "description": PRODUCTS[p], "quantity": 1, "unit_price": price}
            for p in products
        ]
        data = {"order_id": order_id, "lines": lines, "currency": currency, "channel": channel}
        self.event("crm.orders", partition, "crm.order.placed.v1", customer, data, day)

    def refund(
        self,
        customer: str,
        partition: int,
        refund_id: str,
        order_id: str | None,
        day: float,
        currency: str = "GBP",
    ) -> None:
        data = {
            "refund_id": refund_id,
            "order_id": order_id,
            "currency": currency,
            "lines": [{"product_id": "P1", "quantity": 1, "unit_price": "4"}],
        }
        self.event("crm.orders", partition, "crm.order.refunded.v1", customer, data, day)

    def cancel(self, customer: str, partition: int, order_id: str, day: float) -> None:
        self.event(
            "crm.orders", partition, "crm.order.cancelled.v1", customer, {"order_id": order_id}, day
        )

    def complaint(self, customer: str, partition: int, case_id: str, day: float) -> None:
        data = {
            "case_id": case_id,
            "topic": "late delivery",
            "priority": "normal",
            "department": "customer-service",
        }
        self.event(
            "crm.case-signals",
            partition,
            "crm.complaint.opened.v1",
            customer,
            data,
            day,
            source="interaction-service",
        )

    def dislike(self, customer: str, day: float) -> None:
        data = {"aspect": "price"}
        self.event("crm.customers", 0, "crm.customer.dislike.stated.v1", customer, data, day)

    def register(self, customer: str, country: str, tier: str | None, day: float) -> None:
        data = {"country": country, "attributes": {"tier": tier} if tier else {}}
        self.event("crm.customers", 0, "crm.customer.registered.v1", customer, data, day)

    def catalogue(self, product: str, category: str | None, day: float) -> None:
        data = {"product_id": product, "name": product, "category": category}
        data |= {"price": "1", "available": True}
        self.event("crm.catalogue", 0, "crm.product.catalogued.v1", product, data, day, "pim")

    def tick(self, partition: int, day: float) -> None:
        self.add("crm.orders", partition, orders_tick(partition, _day(day)))


def _varied_log(customers: int = 60) -> Log:
    """Customers of three partitions (the third never ticks) with orders in two currencies and
    two channels, refunds with and without an order, cancellations; then each ticking
    partition's clock at day 100."""
    rng = random.Random(7)
    log = Log()
    log.catalogue("P1", "lighting", 0)
    log.catalogue("P2", "kitchen", 0)
    log.catalogue("P4", "textiles", 0)  # P3: never categorised
    for n in range(customers):
        customer, partition = f"c{n:02d}", n % 3
        if n % 4:
            log.register(
                customer,
                rng.choice(["France", "Spain", "United Kingdom"]),
                rng.choice(["gold", "silver", None]),
                rng.uniform(0, 50),
            )
        for k in range(rng.randint(0, 4)):
            order_id = f"{customer}-o{k}"
            log.order(
                customer,
                partition,
                order_id,
                rng.choice([10, 40, 70, 90, 95.5]),
                rng.sample(list(PRODUCTS), rng.randint(1, 2)),
                rng.choice(["GBP", "EUR"]),
                rng.choice(["web", "store"]),
                rng.choice(["5", "12.5", "30"]),
            )
            if rng.random() < 0.2:
                log.refund(
                    customer,
                    partition,
                    f"{customer}-r{k}",
                    rng.choice([order_id, None]),
                    rng.choice([60, 95]),
                )
            if rng.random() < 0.15:
                log.cancel(customer, partition, order_id, rng.choice([50, 97]))
        for k in range(rng.choice([0, 0, 1, 2, 3])):
            case_id, day = f"{customer}-case{k}", rng.choice([20, 80, 95])
            log.complaint(customer, partition, case_id, day)
            if rng.random() < 0.3:  # reopened: still one complaint, from its first opening
                log.complaint(customer, partition, case_id, day + 2)
    log.catalogue("P2", "garden", 60)  # reclassified after some orders
    log.tick(0, 100)
    log.tick(1, 100)
    return log


RULES: list[dict[str, Any]] = [
    {"field": "country", "in": ["France", "Spain"]},
    {"field": "attributes.tier", "in": ["gold"]},
    {"not": {"field": "country", "in": ["France"]}},
    {"measure": "orders", "at_least": 2},
    {"measure": "orders", "currency": "EUR", "channel": "store", "at_least": 1},
    {"measure": "orders", "within_days": 30, "at_least": 1},
    {"measure": "orders", "at_most": 0},
    {"measure": "net_revenue", "currency": "GBP", "at_least": 20},
    {"measure": "net_revenue", "currency": "GBP", "channel": "web", "at_most": 15},
    {"measure": "gross_revenue", "currency": "EUR", "within_days": 60, "at_least": 10},
    {"measure": "refunds", "at_least": 1},
    {"measure": "refunds", "currency": "GBP", "within_days": 10, "at_least": 1},
    {"measure": "cancellations", "within_days": 30, "at_least": 1},
    {"measure": "complaints", "at_least": 2},
    {"measure": "complaints", "within_days": 30, "at_least": 1},
    {"measure": "days_since_last_purchase", "at_least": 10, "at_most": 30},
    {"measure": "days_since_last_purchase", "currency": "GBP", "at_least": 60},
    {"bought": {"product_ids": ["P2"]}},
    {"bought": {"description_contains": "heart", "within_days": 30}},
    {"bought": {"product_ids": ["P3", "P4"], "description_contains": "cushion"}},
    {"bought": {"categories": ["garden"], "within_days": 30}},
    {"bought": {"categories": ["lighting", "textiles"]}},
    {"not": {"bought": {"categories": ["kitchen", "textiles"], "description_contains": "heart"}}},
    {"rfm": {"currency": "GBP", "min_r": 3}},
    {"rfm": {"currency": "EUR", "segments": ["champions", "lost", "new"]}},
    {"lifetime": {"currency": "GBP", "figure": "churn_probability", "at_least": 0.5}},
    {"lifetime": {"currency": "GBP", "figure": "lifetime_value", "at_least": 40, "at_most": 90}},
    {"not": {"lifetime": {"currency": "EUR", "figure": "probability_alive", "at_least": 0.3}}},
    {
        "all": [
            {"lifetime": {"currency": "GBP", "figure": "expected_purchases", "at_most": 2}},
            {"measure": "orders", "at_least": 1},
        ]
    },
    {
        "any": [
            {
                "all": [
                    {"field": "country", "in": ["United Kingdom"]},
                    {"measure": "orders", "at_least": 1},
                ]
            },
            {
                "not": {
                    "any": [
                        {"bought": {"product_ids": ["P1"]}},
                        {"measure": "refunds", "at_least": 1},
                    ]
                }
            },
        ]
    },
]


def _rule(document: dict[str, Any]) -> Rule:
    return segments.RULE.validate_python(document)


async def _fitted(conn: asyncpg.Connection, customers: Sequence[str], version: int) -> None:
    """A lifetime model swapped in as the worker swaps one, with made-up predictions for most
    customers in GBP and some in EUR (the rule language reads them, whoever fitted them)."""
    rng = random.Random(version)
    predictions = [
        (
            PurchaseHistory(customer, currency, 1, 10.0, 20.0, 5.0),
            Prediction(
                customer,
                currency,
                rng.choice([0.05, 0.3, 0.5, 0.75, 0.99]),
                rng.choice([0.5, 2.0, 3.25]),
                rng.choice([12.0, 20.0, 30.5]),
            ),
        )
        for customer in customers
        for currency in ("GBP", "EUR")
        if rng.random() < (0.8 if currency == "GBP" else 0.4)
    ]
    fitted = FittedVersion(DAY0, DAY0, 0.1, "test", [], predictions)
    assert await store.save_lifetime_model(conn, fitted, []) == version


async def test_sql_selects_the_customers_the_python_evaluator_selects() -> None:
    log = _varied_log()
    async with folded_in_batches(PROJECTION, log.records, 50) as pool, pool.acquire() as conn:
        await store.refresh_rfm(conn)
        everyone = [
            r["customer_id"]
            for r in await conn.fetch(f"SELECT customer_id FROM ({store.EVERYONE}) u ORDER BY 1")
        ]
        await _fitted(conn, everyone, 1)
        await _fitted(conn, everyone, 2)  # the rules read the version in use only
        named = [spec for document in RULES for spec in segments.bought_specs(_rule(document))]
        facts = await store.customer_facts(conn, everyone, named)
        assert any(f.now is None and f.orders for f in facts.values())  # partition 2: no tick
        for document in RULES:
            rule = _rule(document)
            expected = [c for c in everyone if segments.matches(rule, facts[c])]
            assert await store.matching_customers(conn, rule) == expected, document
            assert 0 < len(expected) < len(everyone), f"the data should split {document}"
            some = everyone[::3]
            assert await store.matching_customers(conn, rule, store.AMONG, some) == [
                c for c in expected if c in some
            ]


def _segment_log() -> Log:
    """Two segments defined while customers buy, refund and cancel, one redefined, and ticks."""
    log = Log()
    log.register("a", "France", None, 0)
    log.order("a", 0, "a1", 1)
    log.define("big", {"measure": "net_revenue", "currency": "GBP", "at_least": 15}, 2)
    log.define("recent", {"measure": "orders", "within_days": 20, "at_least": 1}, 2)
    log.order("a", 0, "a2", 3)  # a: 20 GBP, enters big
    log.order("b", 1, "b1", 3, price="50")  # b: 50, enters big
    log.tick(0, 5)  # a enters recent
    log.tick(1, 5)  # b enters recent
    log.refund("a", 0, "a-r1", "a2", 6)  # a: 16, stays
    log.cancel("b", 1, "b1", 7)  # b: 0, leaves big, leaves recent
    log.order("c", 0, "c1", 8, price="30")  # c enters both (partition 0 has a clock)
    log.define("big", {"measure": "net_revenue", "currency": "GBP", "at_least": 25}, 9)  # a out
    log.tick(0, 26)  # a leaves recent (last order day 3); c stays (day 8)
    log.tick(0, 30)  # c leaves recent
    log.order("a", 0, "a3", 31)
    log.tick(0, 32)
    return log


EXPECTED_MEMBERS = {("big", "a"), ("big", "c"), ("recent", "a")}


async def _fold(records: list[RawRecord], size: int) -> tuple[dict[Any, Any], list[Any]]:
    async with folded_in_batches(PROJECTION, records, size) as pool:
        rows = await pool.fetch(
            "SELECT customer_id, segment, member, version FROM segment_memberships"
            " WHERE segment <> 'lapsed'"
        )
        outbox = await pool.fetch("SELECT type, value FROM outbox ORDER BY seq")
    memberships = {(r["segment"], r["customer_id"]): (r["member"], r["version"]) for r in rows}
    announced = [
        (
            json.loads(r["value"])["subject"],
            r["type"].split(".")[2],
            json.loads(r["value"])["data"]["segment"],
            json.loads(r["value"])["data"]["version"],
            json.loads(r["value"])["time"],
        )
        for r in outbox
        if json.loads(r["value"])["data"]["segment"] != "lapsed"
    ]
    return memberships, announced


def _consistent(memberships: dict[Any, Any], announced: list[Any]) -> None:
    """Each customer's announcements of a segment alternate entered/left with versions 1, 2, ...
    and end where the table stands."""
    for (segment, customer), (member, version) in memberships.items():
        mine = [(kind, v) for c, kind, s, v, _ in announced if (s, c) == (segment, customer)]
        assert [v for _, v in mine] == list(range(1, version + 1))
        assert [kind for kind, _ in mine] == ["entered", "left"] * (version // 2) + (
            ["entered"] if version % 2 else []
        )
        assert (mine[-1][0] == "entered") == member


async def test_membership_is_the_same_whatever_the_batch_boundaries() -> None:
    records = _segment_log().records
    one_by_one, announced = await _fold(records, 1)
    assert {key for key, (member, _) in one_by_one.items() if member} == EXPECTED_MEMBERS
    _consistent(one_by_one, announced)
    assert ("a", "left", "recent", 2, _day(26).isoformat()) in announced  # the tick's time
    for size in (2, 5, len(records)):
        memberships, again = await _fold(records, size)
        assert {k: m for k, (m, _) in memberships.items()} == {
            k: m for k, (m, _) in one_by_one.items()
        }, size
        _consistent(memberships, again)


async def test_the_clock_moves_customers_in_and_out_of_time_windows() -> None:
    log = Log()
    log.define("dormant", {"measure": "days_since_last_purchase", "at_least": 30}, 0)
    log.define("recent", {"bought": {"product_ids": ["P2"], "within_days": 10}}, 0)
    log.order("a", 0, "a1", 1, products=["P2"])  # no tick yet: no time window holds it
    log.tick(0, 2)  # a enters recent
    log.tick(0, 11)  # still recent (10 days)
    log.tick(0, 11.5)  # leaves recent
    log.tick(0, 31)  # enters dormant (30 days)
    log.order("a", 0, "a2", 32, products=["P1"])  # leaves dormant: bought
    memberships, announced = await _fold(log.records, 1)
    assert [(kind, segment, version, time) for _, kind, segment, version, time in announced] == [
        ("entered", "recent", 1, _day(2).isoformat()),
        ("left", "recent", 2, _day(11.5).isoformat()),
        ("entered", "dormant", 1, _day(31).isoformat()),
        ("left", "dormant", 2, _day(32).isoformat()),
    ]
    assert memberships == {("recent", "a"): (False, 2), ("dormant", "a"): (False, 2)}


async def test_a_reclassified_product_moves_its_buyers_in_and_out() -> None:
    log = Log()
    log.define("kitchen", {"bought": {"categories": ["kitchen"], "within_days": 90}}, 0)
    log.catalogue("P2", "kitchen", 0)
    log.order("a", 0, "a1", 1, products=["P2"])
    log.order("b", 1, "b1", 1, products=["P1"])
    log.order("c", 0, "c1", 1, products=["P1"])
    log.cancel("c", 0, "c1", 2)  # c's order does not count
    log.tick(0, 3)  # a enters
    log.tick(1, 3)
    log.catalogue("P2", "garden", 4)  # a leaves
    log.catalogue("P1", "kitchen", 5)  # b enters; c does not
    log.catalogue("P1", "garden", 1)  # late and older: nothing moves
    for size in (1, 3, len(log.records)):
        memberships, announced = await _fold(log.records, size)
        assert {k: m for k, (m, _) in memberships.items()} == {
            ("kitchen", "a"): False,
            ("kitchen", "b"): True,
        }, size
        _consistent(memberships, announced)
    one_by_one = [(c, kind, time) for c, kind, _, _, time in (await _fold(log.records, 1))[1]]
    assert one_by_one == [
        ("a", "entered", _day(3).isoformat()),
        ("a", "left", _day(4).isoformat()),  # dated by the catalogue record
        ("b", "entered", _day(5).isoformat()),
    ]


async def test_retiring_a_segment_moves_every_member_out_and_older_definitions_lose() -> None:
    log = Log()
    log.order("a", 0, "a1", 1)
    log.order("b", 1, "b1", 1)
    log.define("buyers", {"measure": "orders", "at_least": 1}, 5)
    log.define("buyers", {"measure": "orders", "at_least": 5}, 4)  # older: ignored
    log.retire("buyers", 6)
    log.order("c", 0, "c1", 7)  # a retired segment takes no one
    memberships, announced = await _fold(log.records, 3)
    assert memberships == {("buyers", "a"): (False, 2), ("buyers", "b"): (False, 2)}
    assert [(c, kind) for c, kind, *_ in announced] == [
        ("a", "entered"),
        ("b", "entered"),
        ("a", "left"),
        ("b", "left"),
    ]


async def test_a_definition_folded_after_the_facts_reaches_customers_known_by_any_fact() -> None:
    """A replay folds a definition and facts of other topics in another order than the live
    worker did: customers known only by a complaint or an opinion must be evaluated either way."""
    rules: dict[str, dict[str, Any]] = {
        "complainers": {"measure": "complaints", "at_least": 1},
        "not-french": {"not": {"field": "country", "in": ["France"]}},
    }

    def facts(log: Log) -> None:
        log.complaint("angry", 0, "angry-case1", 1)
        log.dislike("critic", 1)
        log.register("french", "France", None, 1)

    definitions_first, definitions_last = Log(), Log()
    for segment, rule in rules.items():
        definitions_first.define(segment, rule, 0)
    facts(definitions_first)
    facts(definitions_last)
    for segment, rule in rules.items():
        definitions_last.define(segment, rule, 2)
    live, _ = await _fold(definitions_first.records, 1)
    replayed, _ = await _fold(definitions_last.records, 3)  # the facts, then the definitions
    members = {key for key, (member, _) in live.items() if member}
    assert members == {("complainers", "angry"), ("not-french", "angry"), ("not-french", "critic")}
    assert {key for key, (member, _) in replayed.items() if member} == members
