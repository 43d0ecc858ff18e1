"""Events published with the SDK reach the projections once, however often they are delivered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from crm_shared.contracts.sdk import EventPublisher
from crm_shared.runtime.worker import committed_offsets
from tests.integration.helpers import eventually, fetch, get_json, service_auth, unique

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def _publish_history(publisher: EventPublisher, customer: str) -> None:
    publisher.publish(
        "crm.customer.registered.v1",
        customer,
        {
            "name": "Ada Lovelace",
            "email": f"{customer}@example.com",
            "country": "UK",
            "identifiers": {"loyalty_card": f"card-{customer}"},
        },
        time=T0,
        event_id=f"{customer}-reg",
    )
    for n in range(3):
        publisher.publish(
            "crm.order.placed.v1",
            customer,
            {
                "order_id": f"{customer}-O{n}",
                "lines": [{"product_id": "P-TEA", "quantity": 2, "unit_price": "3.50"}],
            },
            time=T0 + timedelta(days=n + 1),
            event_id=f"{customer}-order-{n}",
        )
    publisher.publish(
        "crm.order.refunded.v1",
        customer,
        {
            "refund_id": f"{customer}-R0",
            "order_id": f"{customer}-O0",
            "lines": [{"product_id": "P-TEA", "quantity": 1, "unit_price": "3.50"}],
        },
        time=T0 + timedelta(days=5),
        event_id=f"{customer}-refund-0",
    )
    # Late: older than the registration's country, so the country must stay "UK".
    publisher.publish(
        "crm.customer.updated.v1",
        customer,
        {"country": "France", "phone": "+44 20 0000"},
        time=T0 - timedelta(days=30),
        event_id=f"{customer}-late-update",
    )


async def test_profile_folds_orders_refunds_and_late_updates(platform: dict[str, str]) -> None:
    customer = unique("flow")
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="test-shop") as publisher:
        _publish_history(publisher, customer)
    url = f"http://127.0.0.1:{platform['CRM_PROFILE_API_PORT']}/customers/{customer}"
    _, body = await eventually(
        lambda: get_json(url, headers=service_auth(platform)),
        lambda r: r[0] == 200 and r[1]["purchases"]["refunds"] == 1 and r[1]["phone"] is not None,
        what="the profile to show the orders, the refund and the late update",
    )
    purchases = body["purchases"]
    assert purchases["orders"] == 3
    (gbp,) = purchases["by_currency"]
    assert Decimal(gbp["gross_revenue"]) == Decimal("21.00")
    assert Decimal(gbp["net_revenue"]) == Decimal("17.50")
    assert purchases["items"] == 5
    assert body["country"] == "UK", "a late event must not overwrite a newer field"
    assert body["phone"] == "+44 20 0000", "a late event still sets fields nobody set later"
    assert body["identifiers"] == {"loyalty_card": f"card-{customer}"}
    # Provenance: the source and event time behind each value shown.
    provenance = body["provenance"]
    assert provenance["country"]["source"] == "test-shop"
    assert datetime.fromisoformat(provenance["country"]["set_at"]) == T0
    assert datetime.fromisoformat(provenance["phone"]["set_at"]) == T0 - timedelta(days=30)
    assert provenance["identifiers.loyalty_card"]["source"] == "test-shop"


async def test_publishing_the_same_events_again_changes_nothing(platform: dict[str, str]) -> None:
    customer = unique("dup")
    bootstrap = platform["CRM_KAFKA_BOOTSTRAP"]
    with EventPublisher(bootstrap, source="test-shop") as publisher:
        _publish_history(publisher, customer)
    url = f"http://127.0.0.1:{platform['CRM_PROFILE_API_PORT']}/customers/{customer}"
    _, first = await eventually(
        lambda: get_json(url, headers=service_auth(platform)),
        lambda r: r[0] == 200 and r[1]["purchases"]["refunds"] == 1,
        what="the first copy to be applied",
    )
    with EventPublisher(bootstrap, source="test-shop") as publisher:
        _publish_history(publisher, customer)  # same ids: a retrying producer, a replayed file
        publisher.publish(
            "crm.order.placed.v1",
            customer,
            {
                "order_id": "marker",
                "lines": [{"product_id": "P-X", "quantity": 1, "unit_price": "1"}],
            },
            time=T0 + timedelta(days=9),
            event_id=f"{customer}-marker",
        )
    # The marker is behind the duplicates on the same partition: once it shows, they were seen.
    _, second = await eventually(
        lambda: get_json(url, headers=service_auth(platform)),
        lambda r: r[0] == 200 and r[1]["purchases"]["orders"] == 4,
        what="the marker order after the duplicates",
    )
    assert (
        Decimal(second["purchases"]["by_currency"][0]["gross_revenue"])
        == Decimal(first["purchases"]["by_currency"][0]["gross_revenue"]) + 1
    )
    assert second["purchases"]["refunds"] == 1
    rows = await fetch(
        f"{platform['CRM_PG_DSN_BASE']}/crm_profile",
        "SELECT count(*) AS n FROM applied_events WHERE id LIKE $1",
        f"{customer}-%",
    )
    assert rows[0]["n"] == 7


async def test_unknown_customer_is_a_clear_404(platform: dict[str, str]) -> None:
    status, body = await get_json(
        f"http://127.0.0.1:{platform['CRM_PROFILE_API_PORT']}/customers/{unique('nobody')}",
        headers=service_auth(platform),
    )
    assert status == 404
    assert "not known" in body["error"]["message"]


async def test_kafka_group_offsets_follow_the_databases_positions(platform: dict[str, str]) -> None:
    """The positions in PostgreSQL decide where a worker resumes; the group's offsets in Kafka
    trail them, for lag tools, and are never ahead of them."""
    customer = unique("offsets")
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="test-shop") as publisher:
        _publish_history(publisher, customer)
    url = f"http://127.0.0.1:{platform['CRM_PROFILE_API_PORT']}/customers/{customer}"
    await eventually(
        lambda: get_json(url, headers=service_auth(platform)),
        lambda r: r[0] == 200 and r[1]["purchases"]["refunds"] == 1,
        what="the history to be applied",
    )
    dsn = f"{platform['CRM_PG_DSN_BASE']}/crm_profile"
    query = (
        "SELECT topic, partition, next_offset FROM consumer_positions WHERE topic = 'crm.orders'"
    )
    applied = {(r["topic"], r["partition"]): r["next_offset"] for r in await fetch(dsn, query)}

    async def committed() -> dict[tuple[str, int], int]:
        offsets = await committed_offsets(platform["CRM_KAFKA_BOOTSTRAP"], "crm-profile")
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}

    in_kafka = await eventually(
        committed,
        lambda found: all(found.get(tp, -1) >= offset for tp, offset in applied.items()),
        what="the group's offsets to reach the applied positions",
    )
    now = {(r["topic"], r["partition"]): r["next_offset"] for r in await fetch(dsn, query)}
    assert all(in_kafka[tp] <= now[tp] for tp in applied)
