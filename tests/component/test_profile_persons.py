"""One person counts once across customers, on real PostgreSQL (no Kafka): records merged into
one, and orders whose subject named the customer by its e-mail, are one customer in the RFM
population, the top customers and the cube, whatever the batches; an identifier nobody holds
keeps its orders apart until someone claims it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.events import build_event
from crm_shared.runtime.projector import RawRecord
from profile_service import identity, store
from profile_service.worker import PROJECTION, RfmRefresher
from tests.component.partition_logs import folded_in_batches, interleaved, orders_tick

pytestmark = pytest.mark.component

DAY0 = datetime(2024, 6, 1, tzinfo=UTC)


def _event(kind: str, subject: str, day: int, data: dict[str, Any]) -> dict[str, Any]:
    return build_event(
        kind,
        subject,
        data,
        source="shop",
        time=DAY0 + timedelta(days=day),
        event_id=f"{subject}-{kind}-{day}",
    )


def _order(subject: str, day: int, price: str) -> dict[str, Any]:
    data = {
        "order_id": f"{subject}-{day}",
        "lines": [{"product_id": "P", "quantity": 1, "unit_price": price}],
    }
    return _event("crm.order.placed.v1", subject, day, data)


CUSTOMERS = {
    0: [
        _event("crm.customer.registered.v1", "ann", 1, {"email": "Ann@X.test", "country": "UK"}),
        _event("crm.customer.merged.v1", "ann", 9, {"merged_customer_id": "visitor"}),
    ],
    1: [
        _event("crm.customer.registered.v1", "visitor", 2, {"country": "Spain"}),
        _event("crm.customer.registered.v1", "bob", 2, {"email": "bob@x.test"}),
    ],
}
ORDERS = {
    0: [
        _order("ann", 3, "10"),
        _order("email:ann@x.test", 4, "5"),
        orders_tick(0, DAY0 + timedelta(days=30)),
    ],
    1: [
        _order("visitor", 5, "20"),
        _order("visitor", 6, "20"),
        _order("bob", 5, "100"),
        _order("email:nobody@x.test", 7, "7"),
        orders_tick(1, DAY0 + timedelta(days=30)),
    ],
}


async def _analysed(pool: asyncpg.Pool) -> dict[str, Any]:
    refresher = RfmRefresher()
    await refresher(pool)  # the scores
    await refresher(pool)  # the cube
    async with pool.acquire() as conn:
        scores = await conn.fetch("SELECT * FROM rfm_scores WHERE currency = 'GBP'")
        return {
            "persons": dict(await conn.fetch("SELECT record_id, person_id FROM person_records")),
            "scores": {r["customer_id"]: (r["frequency"], r["monetary"]) for r in scores},
            "top": await store.top_customers(conn, "GBP", Decimal("0.5"), 4),
            "grand": await store.cube(conn, "GBP", ()),
            "countries": await store.cube(conn, "GBP", ("country",)),
        }


@pytest.mark.parametrize("size", [1, 100])
async def test_merged_and_aliased_records_count_as_one_person(size: int) -> None:
    records = [*interleaved(CUSTOMERS, "crm.customers"), *interleaved(ORDERS, "crm.orders")]
    async with folded_in_batches(PROJECTION, records, size) as pool:
        found = await _analysed(pool)
    assert found["persons"] == {"ann": "ann", "visitor": "ann", "email:ann@x.test": "ann"}
    assert found["scores"] == {
        "ann": (4, Decimal(55)),
        "bob": (1, Decimal(100)),
        "email:nobody@x.test": (1, Decimal(7)),  # nobody holds it: a person of its own
    }
    assert (found["top"]["active"], found["top"]["top"]) == (3, 1)
    ((grand),) = found["grand"]
    assert (grand["customers"], grand["orders"], grand["revenue"]) == (3, 6, Decimal(162))
    by_country = {c["country"]: c["customers"] for c in found["countries"] if c["country"]}
    # Ann's country is the newest her records set: the visitor's, registered later.
    assert by_country == {"Spain": 1, "unknown": 2}


async def test_an_identifier_claimed_later_brings_its_orders_to_the_claimant() -> None:
    claimed = _event("crm.customer.updated.v1", "bob", 8, {"email": "nobody@x.test"})
    customers = {**CUSTOMERS, 1: [*CUSTOMERS[1], claimed]}
    records = [*interleaved(ORDERS, "crm.orders"), *interleaved(customers, "crm.customers")]
    async with folded_in_batches(PROJECTION, records, 10) as pool:
        found = await _analysed(pool)
    assert found["persons"]["email:nobody@x.test"] == "bob"
    assert found["scores"]["bob"] == (2, Decimal(107))
    assert "email:nobody@x.test" not in found["scores"]


def _random_log(seed: int) -> list[RawRecord]:
    """Updates moving a few e-mails between customers, orders naming customers or those
    e-mails, merges between any of them (aliases too) and unmerges of earlier merges, at random
    times."""
    r = random.Random(seed)
    customers = [f"c{n}" for n in range(24)]
    emails = [f"e{n}@x.test" for n in range(5)]
    records = [*customers, *(f"email:{e}" for e in emails)]
    merged: list[tuple[str, str]] = []
    logs: dict[str, dict[int, list[dict[str, Any]]]] = {"crm.customers": {}, "crm.orders": {}}
    for n in range(150):
        roll = r.random()
        if roll < 0.3:
            kind, subject = "crm.customer.updated.v1", r.choice(customers)
            data: dict[str, Any] = {"email": r.choice(emails)}
        elif roll < 0.75 or (roll >= 0.9 and not merged):
            kind, subject = "crm.order.placed.v1", r.choice(records)
            line = {"product_id": "P", "quantity": 1, "unit_price": "1"}
            data = {"order_id": f"o{n}", "lines": [line]}
        elif roll < 0.9:
            subject, other = r.sample(records, 2)
            merged.append((subject, other))
            kind, data = "crm.customer.merged.v1", {"merged_customer_id": other}
        else:
            subject, other = r.choice(merged)
            kind, data = "crm.customer.unmerged.v1", {"customer_id": other}
        at = DAY0 + timedelta(hours=r.randrange(2_000))
        event = build_event(kind, subject, data, source="shop", time=at, event_id=f"e-{n}")
        topic = "crm.orders" if kind == "crm.order.placed.v1" else "crm.customers"
        logs[topic].setdefault(sum(subject.encode()) % 2, []).append(event)
    customer_log = interleaved(logs["crm.customers"], "crm.customers")
    return [*customer_log, *interleaved(logs["crm.orders"], "crm.orders")]


async def _whole_map(pool: asyncpg.Pool) -> dict[str, str]:
    """identity.persons over every standing merge and every held alias."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM merge_statements")
        links = identity.standing_links(identity.MergeStatement(**dict(row)) for row in rows)
        return identity.persons(links, await store.alias_holders(conn))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_the_folded_person_map_is_the_whole_computation_whatever_the_batches(
    seed: int,
) -> None:
    records = _random_log(seed)
    maps = []
    for size in (1, 7, len(records)):
        async with folded_in_batches(PROJECTION, records, size) as pool:
            folded = dict(await pool.fetch("SELECT record_id, person_id FROM person_records"))
            assert folded == await _whole_map(pool), size
            maps.append(folded)
    assert maps[0] == maps[1] == maps[2]
    assert len(set(maps[0].values())) > 1  # several persons of several records were met
