"""One person counts once across customers, on real PostgreSQL (no Kafka): records merged into
one, and orders whose subject named the customer by its e-mail, are one customer in the RFM
population, the top customers and the cube, whatever the batches; an identifier nobody holds
keeps its orders apart until someone claims it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.events import build_event
from profile_service import store
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
    await RfmRefresher()(pool)
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
