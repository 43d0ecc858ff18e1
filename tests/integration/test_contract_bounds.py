"""Events exactly at the contract's bounds are folded by every projection that reads them, and
none of them dead-letters one: what the contract accepts, every projection can hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from crm_shared.contracts.events import MAX_LINE_QUANTITY, MAX_ORDER_LINES, MAX_UNIT_PRICE
from crm_shared.contracts.sdk import EventPublisher
from tests.integration.helpers import eventually, get_json, read_topic, service_auth, unique

pytestmark = pytest.mark.integration

T0 = datetime(2024, 9, 1, 9, 0, tzinfo=UTC)
ORDER_TOTAL = MAX_ORDER_LINES * MAX_LINE_QUANTITY * MAX_UNIT_PRICE  # 2e15


def _lines(big: str, small: str) -> list[dict[str, object]]:
    """The most lines, each at the most units and the highest price; all but one of one product."""
    line = {"quantity": MAX_LINE_QUANTITY, "unit_price": str(MAX_UNIT_PRICE)}
    return [{"product_id": big, **line}] * (MAX_ORDER_LINES - 1) + [{"product_id": small, **line}]


async def test_orders_and_refunds_at_the_bounds_are_folded_by_every_projection(
    platform: dict[str, str],
) -> None:
    customer, big, small = unique("bounds"), unique("P-big"), unique("P-small")
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="test-bounds") as publisher:
        for n in range(2):
            publisher.publish(
                "crm.order.placed.v1",
                customer,
                {"order_id": f"{customer}-O{n}", "lines": _lines(big, small)},
                time=T0 + timedelta(days=n),
                event_id=f"{customer}-order-{n}",
            )
        publisher.publish(
            "crm.order.refunded.v1",
            customer,
            {"refund_id": f"{customer}-R", "lines": _lines(big, small)},
            time=T0 + timedelta(days=2),
            event_id=f"{customer}-refund",
        )

    ports = {name: platform[f"CRM_{name.upper()}_API_PORT"] for name in ("profile", "interaction")}
    _, profile = await eventually(
        lambda: get_json(
            f"http://127.0.0.1:{ports['profile']}/customers/{customer}",
            headers=service_auth(platform),
        ),
        lambda r: r[0] == 200 and r[1]["purchases"]["refunds"] == 1,
        what="the profile to fold both orders and the refund",
    )
    purchases = profile["purchases"]
    assert purchases["orders"] == 2
    (gbp,) = purchases["by_currency"]
    assert Decimal(gbp["gross_revenue"]) == 2 * ORDER_TOTAL
    assert Decimal(gbp["refunded"]) == ORDER_TOTAL
    assert Decimal(gbp["net_revenue"]) == ORDER_TOTAL
    assert purchases["items"] == MAX_ORDER_LINES * MAX_LINE_QUANTITY

    interaction = f"http://127.0.0.1:{ports['interaction']}/customers/{customer}"
    _, page = await eventually(
        lambda: get_json(f"{interaction}/timeline?order=asc", headers=service_auth(platform)),
        lambda r: r[0] == 200 and len(r[1]["items"]) == 3,
        what="the timeline to hold both orders and the refund",
    )
    assert [item["kind"] for item in page["items"]] == ["order", "order", "refund"]
    assert page["items"][0]["summary"].endswith(f"2000 lines, {ORDER_TOTAL:.2f} GBP")
    _, summary = await get_json(f"{interaction}/summary", headers=service_auth(platform))
    assert summary["touchpoints"] == 3

    recommendation = f"http://127.0.0.1:{platform['CRM_RECOMMENDATION_API_PORT']}"
    _, stats = await eventually(
        lambda: get_json(
            f"{recommendation}/products/{big}/also-bought", headers=service_auth(platform)
        ),
        lambda r: r[0] == 200 and r[1]["product"]["orders"] == 2 and r[1]["also_bought"],
        what="the recommendation service to fold both orders and refresh their neighbours",
    )
    assert stats["product"]["quantity"] == 2 * (MAX_ORDER_LINES - 1) * MAX_LINE_QUANTITY  # > 2^31
    assert stats["product"]["buyers"] == 1
    assert [(p["product_id"], p["co_buyers"]) for p in stats["also_bought"]] == [(small, 1)]

    letters = [
        record
        for record in read_topic(platform["CRM_KAFKA_BOOTSTRAP"], "crm.deadletter")
        if record.key == customer.encode()
    ]
    assert letters == [], "an event at the bounds was dead-lettered"
