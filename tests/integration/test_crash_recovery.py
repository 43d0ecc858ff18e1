"""SIGKILL every worker in the middle of 20,000 events: after a restart each projection equals an
independent fold of the same events exactly, with nothing lost and nothing counted twice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, defaultdict
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from kafka import KafkaProducer

from crm_shared.contracts.events import encode_event
from crm_shared.contracts.timeline import TIMELINE_EVENT_TYPES as TIMELINE_TYPES
from crm_shared.contracts.topics import topic_for
from crm_shared.ops import launcher
from crm_shared.ops.demo.workload import Workload
from recommendation_service.projection import NEIGHBOURS_KEPT
from tests.conftest import shifted_port
from tests.integration.helpers import drop_and_rebuild, eventually, fetch, kill_and_restart, unique
from tests.similar_products import SERVED_SIMILAR_SQL, plain_similar_products, units_kept

pytestmark = pytest.mark.integration

EVENTS = 20_000
REPUBLISHED = 2_000  # a producer retrying: the same events (same ids) a second time
WORKERS = [
    *(
        launcher.BY_NAME[f"{name}-worker"]
        for name in ("profile", "interaction", "broadcast", "recommendation")
    ),
    launcher.BY_NAME["recommendation-jobs"],  # killed mid-run too: its runs are transactions
]


def _lines_total(lines: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(line["unit_price"]) * line["quantity"] for line in lines), Decimal(0))


V2_PURPOSE = {"marketing": "marketing", "newsletter": "marketing", "profiling": "personalisation"}
"""The workload's v1 purposes as the broadcast service reads them (v2 has four purposes)."""


def independent_fold(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the projections must hold, computed plainly from the published documents."""
    totals: dict[str, list[Any]] = defaultdict(lambda: [0, 0, Decimal(0), Decimal(0)])
    timeline: Counter[str] = Counter()
    consents: dict[tuple[str, str, str], tuple[str, bool]] = {}
    ties: set[tuple[str, str, str]] = set()
    quantity: Counter[str] = Counter()
    views: Counter[str] = Counter()
    for e in events:
        kind, customer, data = e["type"], e["subject"], e["data"]
        if kind == "crm.order.placed.v1":
            totals[customer][0] += 1
            totals[customer][2] += _lines_total(data["lines"])
            for line in data["lines"]:
                quantity[line["product_id"]] += line["quantity"]
        elif kind == "crm.order.refunded.v1":
            totals[customer][1] += 1
            totals[customer][3] += _lines_total(data["lines"])
        elif kind == "crm.product.viewed.v1":
            views[data["product_id"]] += 1
        elif kind in ("crm.consent.granted.v1", "crm.consent.revoked.v1"):
            key = (customer, V2_PURPOSE[data["purpose"]], data.get("channel") or "*")
            state = (e["time"], kind == "crm.consent.granted.v1")
            if key in consents and consents[key][0] == state[0] and consents[key][1] != state[1]:
                ties.add(key)  # same instant, opposite states: the tie rule is not what we test
            if key not in consents or state[0] > consents[key][0]:
                consents[key] = state
        if kind in TIMELINE_TYPES:
            timeline[customer] += 1
    kept_buyers = Counter(p for (_, p), units in units_kept(events).items() if units > 0)
    return {
        "totals": {c: tuple(v) for c, v in totals.items()},
        "timeline": dict(timeline),
        "consents": {k: granted for k, (_, granted) in consents.items() if k not in ties},
        "products": {p: (kept_buyers[p], quantity[p]) for p in quantity},
        "views": dict(views),
        "similar": plain_similar_products(events, NEIGHBOURS_KEPT),
    }


def publish(bootstrap: str, events: list[dict[str, Any]], rate: float) -> None:
    """Publish at a steady rate so the workers are killed with the stream still flowing."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    started = time.monotonic()
    for n, event in enumerate(events):
        if n % 200 == 0:
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
        producer.send(
            topic_for(event["type"]), key=event["subject"].encode(), value=encode_event(event)
        )
    producer.flush()
    producer.close()


async def projections(dsn_base: str, prefix: str) -> dict[str, Any]:
    like = f"{prefix}%"
    totals = await fetch(
        f"{dsn_base}/crm_profile",
        "SELECT customer_id, orders, refunds, gross_revenue, refunded FROM purchase_totals"
        " WHERE customer_id LIKE $1",
        like,
    )
    timeline = await fetch(
        f"{dsn_base}/crm_interaction",
        "SELECT customer_id, count(*) AS n FROM timeline WHERE customer_id LIKE $1"
        " GROUP BY customer_id",
        like,
    )
    consents = await fetch(
        f"{dsn_base}/crm_broadcast",
        "SELECT customer_id, purpose, channel, granted FROM consents WHERE customer_id LIKE $1",
        like,
    )
    products = await fetch(
        f"{dsn_base}/crm_recommendation",
        "SELECT product_id, buyers, quantity, views FROM products WHERE product_id LIKE $1",
        like,
    )
    similar = await fetch(
        f"{dsn_base}/crm_recommendation",
        SERVED_SIMILAR_SQL,
        NEIGHBOURS_KEPT,
        like,
    )
    lists: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in similar:
        lists[r["product_id"]].append((r["other_product_id"], r["co_buyers"]))
    return {
        "similar": dict(lists),
        "totals": {
            r["customer_id"]: (r["orders"], r["refunds"], r["gross_revenue"], r["refunded"])
            for r in totals
        },
        "timeline": {r["customer_id"]: r["n"] for r in timeline},
        "consents": {
            (r["customer_id"], r["purpose"], r["channel"]): r["granted"] for r in consents
        },
        "products": {
            r["product_id"]: (r["buyers"], r["quantity"]) for r in products if r["buyers"]
        },
        "views": {r["product_id"]: r["views"] for r in products if r["views"]},
    }


def matches(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    consents_ok = all(actual["consents"].get(k) == v for k, v in expected["consents"].items())
    return consents_ok and all(
        actual[part] == expected[part]
        for part in ("totals", "timeline", "products", "views", "similar")
    )


async def test_killed_workers_resume_without_losing_or_repeating_anything(
    platform: dict[str, str],
) -> None:
    prefix = unique("crash")
    workload = Workload(seed=11, customers=400, products=300, prefix=prefix)
    events = list(workload.events(EVENTS))
    expected = independent_fold(events)
    stream = events + events[:REPUBLISHED]

    publisher = threading.Thread(
        target=publish, args=(platform["CRM_KAFKA_BOOTSTRAP"], stream, 4_000)
    )
    publisher.start()
    try:
        dsn = f"{platform['CRM_PG_DSN_BASE']}/crm_profile"
        await eventually(
            lambda: fetch(
                dsn, "SELECT count(*) AS n FROM applied_events WHERE id LIKE $1", f"{prefix}-%"
            ),
            lambda rows: rows[0]["n"] > 1_000,
            what="the workers to be part-way through the stream",
        )
        await kill_and_restart(platform, WORKERS)
    finally:
        publisher.join()

    actual = await eventually(
        lambda: projections(platform["CRM_PG_DSN_BASE"], prefix),
        lambda found: matches(found, expected),
        within=180,
        what="every projection to equal the independent fold",
    )
    assert actual["totals"] == expected["totals"]
    assert actual["timeline"] == expected["timeline"]
    assert actual["products"] == expected["products"]
    assert actual["views"] == expected["views"]
    assert actual["similar"] == expected["similar"]  # the neighbour job caught up, exactly
    assert len(expected["consents"]) > 100
    for key, granted in expected["consents"].items():
        assert actual["consents"][key] == granted, key


async def test_a_dropped_projection_is_rebuilt_from_the_log(platform: dict[str, str]) -> None:
    """Kafka is the system of record: drop the profile database, restart its worker, same totals."""
    prefix = unique("rebuild")
    events = list(Workload(seed=5, customers=50, products=40, prefix=prefix).events(2_000))
    publish(platform["CRM_KAFKA_BOOTSTRAP"], events, rate=10_000)
    expected = independent_fold(events)["totals"]
    base = platform["CRM_PG_DSN_BASE"]

    async def totals() -> dict[str, tuple[Any, ...]]:
        return (await projections(base, prefix))["totals"]

    await eventually(totals, lambda found: found == expected, what="the first fold")
    await drop_and_rebuild(platform, "profile")
    rebuilt = await eventually(
        totals, lambda found: found == expected, within=180, what="the rebuild"
    )
    assert rebuilt == expected


async def test_a_second_replica_joining_and_dying_mid_stream_changes_no_total(
    platform: dict[str, str],
) -> None:
    """Two rebalances while events flow: partitions move to a new replica and back again."""
    prefix = unique("rebalance")
    events = list(Workload(seed=9, customers=200, products=50, prefix=prefix).events(8_000))
    expected = independent_fold(events)["totals"]
    worker = launcher.BY_NAME["profile-worker"]
    replica = replace(worker, name="profile-worker-2")
    replica_env = {**platform, worker.port_env: shifted_port(19111)}
    publisher = threading.Thread(
        target=publish, args=(platform["CRM_KAFKA_BOOTSTRAP"], events, 1_500)
    )
    publisher.start()
    try:
        await asyncio.sleep(1)
        launcher.start(replica, replica_env)
        launcher.wait_healthy([replica], replica_env)
        await asyncio.sleep(2)
        launcher.stop(replica, replica_env, kill=True)
    finally:
        launcher.stop(replica, replica_env, kill=True)
        publisher.join()
    base = platform["CRM_PG_DSN_BASE"]

    async def totals() -> dict[str, tuple[Any, ...]]:
        return (await projections(base, prefix))["totals"]

    found = await eventually(
        totals, lambda f: f == expected, within=180, what="totals after two rebalances"
    )
    assert found == expected
