"""The profile answers for persons, through the real broker, database and gateway: the purchase
block of a customer keeps currencies apart and leaves cancelled orders out, as the purchase
summary does; an order naming the customer by e-mail lands on that customer's profile, and one
naming an identifier nobody holds waits under it until a customer claims it; merged records are
one customer in the top customers and the cube."""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from crm_shared.contracts.events import build_event
from tests.integration.helpers import create_api_key, eventually, gateway_url, unique
from tests.integration.test_crash_recovery import publish

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC) - timedelta(days=20)


def _event(kind: str, subject: str, hours: int, data: dict[str, Any]) -> dict[str, Any]:
    return build_event(
        kind,
        subject,
        data,
        source="shop",
        time=T0 + timedelta(hours=hours),
        event_id=f"{subject}-{kind}-{hours}",
    )


def _order(subject: str, hours: int, price: str, currency: str = "GBP") -> dict[str, Any]:
    data = {
        "order_id": f"{subject}-{hours}",
        "currency": currency,
        "lines": [{"product_id": "P-1", "quantity": 2, "unit_price": price}],
    }
    return _event("crm.order.placed.v1", subject, hours, data)


async def _gateway(platform: dict[str, str], scopes: str) -> httpx.AsyncClient:
    key = create_api_key(platform, unique("persons"), scopes)
    return httpx.AsyncClient(
        base_url=gateway_url(platform), timeout=10, headers={"Authorization": f"Bearer {key}"}
    )


async def _get(gateway: httpx.AsyncClient, path: str, **params: Any) -> tuple[int, Any]:
    answer = await gateway.get(path, params=params)
    return answer.status_code, answer.json()


async def test_the_purchase_block_keeps_currencies_apart_and_cancelled_orders_out(
    platform: dict[str, str],
) -> None:
    customer = unique("currencies")
    cancelled = _order(customer, 3, "25")
    publish(
        platform["CRM_KAFKA_BOOTSTRAP"],
        [
            _order(customer, 1, "5"),
            _order(customer, 2, "3.50", currency="EUR"),
            cancelled,
            _event("crm.order.cancelled.v1", customer, 4, {"order_id": f"{customer}-3"}),
        ],
        rate=1_000,
    )
    async with await _gateway(platform, "customers:read") as gateway:
        _, summary = await eventually(
            lambda: _get(gateway, f"/v1/customers/{customer}/purchases"),
            lambda found: found[0] == 200 and found[1]["cancelled_orders"] == 1,
            what="the cancellation in the purchase summary",
        )
        _, view = await _get(gateway, f"/v1/customers/{customer}")
    block = view["profile"]["purchases"]
    assert (block["orders"], block["cancelled_orders"], block["items"]) == (2, 1, 4)
    assert block["by_currency"] == summary["by_currency"]
    assert [
        (c["currency"], c["orders"], Decimal(c["net_revenue"])) for c in block["by_currency"]
    ] == [
        ("EUR", 1, Decimal(7)),
        ("GBP", 1, Decimal(10)),
    ]


async def test_an_order_naming_the_customer_by_e_mail_lands_on_their_profile(
    platform: dict[str, str],
) -> None:
    customer = unique("by-email")
    email, card = f"{customer}@example.test", f"card-{customer}"
    publish(
        platform["CRM_KAFKA_BOOTSTRAP"],
        [
            _event("crm.customer.registered.v1", customer, 1, {"email": email.upper()}),
            _order(f"email:{email}", 2, "6"),  # the shop knew only the e-mail
            _order(f"loyalty:{card}", 3, "4"),  # a card nobody holds yet
        ],
        rate=1_000,
    )
    async with await _gateway(platform, "customers:read") as gateway:

        async def profile(subject: str) -> dict[str, Any]:
            status, body = await _get(gateway, f"/v1/customers/{subject}")
            return (body["profile"] or {}) if status == 200 else {}

        found = await eventually(
            lambda: profile(customer),
            lambda found: found.get("purchases", {}).get("orders") == 1,
            what="the order naming the e-mail on the customer's profile",
        )
        assert found["aliases"] == [f"email:{email}"]
        assert Decimal(found["purchases"]["by_currency"][0]["net_revenue"]) == 12
        by_reference = await profile(f"email:{email}")
        assert (by_reference["customer_id"], by_reference["email"]) == (customer, email.upper())
        waiting = await eventually(
            lambda: profile(f"loyalty:{card}"),
            lambda found: found.get("purchases", {}).get("orders") == 1,
            what="the card's order kept under the card",
        )
        assert waiting["customer_id"] == f"loyalty:{card}"

        publish(
            platform["CRM_KAFKA_BOOTSTRAP"],
            [_event("crm.customer.updated.v1", customer, 5, {"identifiers": {"loyalty": card}})],
            rate=1_000,
        )
        claimed = await eventually(
            lambda: profile(customer),
            lambda found: found.get("purchases", {}).get("orders") == 2,
            what="the card's order on the customer who claimed the card",
        )
        assert sorted(claimed["aliases"]) == [f"email:{email}", f"loyalty:{card}"]
        _, summary = await _get(gateway, f"/v1/customers/loyalty:{card}/purchases")
        assert (summary["customer_id"], summary["by_currency"][0]["orders"]) == (customer, 2)


async def test_merged_customers_are_one_in_the_top_customers_and_the_cube(
    platform: dict[str, str],
) -> None:
    prefix = unique("one-person")
    currency = "".join(random.choices(string.ascii_uppercase, k=3))  # its own population
    ann, guest, other = f"{prefix}-ann", f"{prefix}-guest", f"{prefix}-other"
    publish(
        platform["CRM_KAFKA_BOOTSTRAP"],
        [
            _order(ann, 1, "10", currency),
            _order(guest, 2, "20", currency),
            _order(other, 3, "1", currency),
        ],
        rate=1_000,
    )
    async with await _gateway(platform, "customers:read,analytics:read") as gateway:

        async def top() -> tuple[int, Any]:
            return await _get(gateway, "/v1/analytics/top-customers", currency=currency)

        await eventually(
            top,
            lambda found: found[0] == 200 and found[1]["active_customers"] == 3,
            within=60,
            what="three customers before the merge",
        )
        publish(
            platform["CRM_KAFKA_BOOTSTRAP"],
            [_event("crm.customer.merged.v1", ann, 4, {"merged_customer_id": guest})],
            rate=1_000,
        )
        _, after = await eventually(
            top,
            lambda found: found[0] == 200 and found[1]["active_customers"] == 2,
            within=60,
            what="the merged records counted as one customer",
        )
        assert (after["customers"], Decimal(after["revenue"])) == (1, 2 * 31)
        _, cube = await eventually(
            lambda: _get(gateway, "/v1/analytics/cube", currency=currency),
            lambda found: found[0] == 200 and found[1]["cells"][0]["customers"] == 2,
            within=60,
            what="the merged records counted once in the cube",
        )
        assert (cube["cells"][0]["orders"], Decimal(cube["cells"][0]["revenue"])) == (3, 62)
        _, rfm = await _get(gateway, f"/v1/customers/{guest}/rfm")
        (score,) = [s for s in rfm["scores"] if s["currency"] == currency]
        assert (rfm["customer_id"], score["frequency"]) == (ann, 2)
