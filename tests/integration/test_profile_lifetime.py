"""Lifetime value and churn through the real broker, database and gateway: orders published to
Kafka, a refit asked for through the gateway (scope analytics:write) and fitted by the profile
worker in the background, then each customer's figures with their reasons read back."""

from __future__ import annotations

import random
import re
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.integration.helpers import create_api_key, eventually, gateway_url, unique
from tests.integration.test_crash_recovery import publish

pytestmark = pytest.mark.integration

START = datetime.now(UTC) - timedelta(days=200)
CUSTOMERS = 12


def _order(customer: str, day: int, currency: str) -> dict[str, Any]:
    order_id = f"{customer}-d{day}"
    return {
        "specversion": "1.0",
        "id": order_id,
        "source": "shop",
        "type": "crm.order.placed.v1",
        "subject": customer,
        "time": (START + timedelta(days=day)).isoformat(),
        "data": {
            "order_id": order_id,
            "currency": currency,
            "lines": [{"product_id": "P-1", "quantity": 1, "unit_price": "25"}],
        },
    }


def _events(prefix: str, currency: str) -> list[dict[str, Any]]:
    """Customers 0-5 buy every 10 days up to day 190 (steady); 6-11 bought every 10 days from
    day 0 and stopped by day 70 (lapsed). Customer n has n % 6 + 3 purchase days."""
    events = []
    for n in range(CUSTOMERS):
        days = n % 6 + 3
        last = 190 if n < CUSTOMERS // 2 else 10 * (days - 1)
        events.extend(_order(f"{prefix}-{n}", last - 10 * k, currency) for k in range(days))
    return events


async def test_a_refit_asked_through_the_gateway_scores_the_new_customers(
    platform: dict[str, str],
) -> None:
    prefix = unique("clv")
    currency = "".join(random.choices(string.ascii_uppercase, k=3))  # its own population
    publish(platform["CRM_KAFKA_BOOTSTRAP"], _events(prefix, currency), rate=5_000)
    analyst = create_api_key(
        platform, "clv-analyst", "customers:read,analytics:read,analytics:write"
    )
    reader = create_api_key(platform, "clv-reader", "customers:read,analytics:read")
    async with httpx.AsyncClient(
        base_url=gateway_url(platform), timeout=10, headers={"Authorization": f"Bearer {analyst}"}
    ) as gateway:

        async def get(path: str) -> tuple[int, Any]:
            answer = await gateway.get(path)
            return answer.status_code, answer.json()

        steady, lapsed = f"{prefix}-5", f"{prefix}-11"
        await eventually(
            lambda: get(f"/v1/customers/{lapsed}/purchases"),
            lambda found: found[0] == 200 and found[1]["by_currency"][0]["orders"] == 8,
            what="the orders folded",
        )
        refused = await gateway.post(
            "/v1/analytics/lifetime-value/refits", headers={"Authorization": f"Bearer {reader}"}
        )
        assert refused.status_code == 403, refused.text
        assert "analytics:write" in refused.text

        asked = await gateway.post("/v1/analytics/lifetime-value/refits")
        assert asked.status_code == 202, asked.text
        before = asked.json()["current_version"] or 0

        _, model = await eventually(
            lambda: get("/v1/analytics/lifetime-value/model"),
            lambda found: (
                found[0] == 200 and found[1]["version"] > before and found[1]["pending_refits"] == 0
            ),
            within=120,
            what="the requested refit swapped in",
        )
        (mine,) = [c for c in model["currencies"] if c["currency"] == currency]
        assert mine["customers"] == CUSTOMERS and mine["repeat_customers"] == CUSTOMERS
        assert all(value > 0 for value in mine["purchases"].values())
        assert model["horizon_days"] == 365

        status, steady_value = await get(f"/v1/customers/{steady}/lifetime-value")
        assert status == 200, steady_value
        status, lapsed_value = await get(f"/v1/customers/{lapsed}/lifetime-value")
        assert status == 200, lapsed_value
    assert steady_value["model_version"] == lapsed_value["model_version"] >= model["version"]
    (good,) = [c for c in steady_value["by_currency"] if c["currency"] == currency]
    (gone,) = [c for c in lapsed_value["by_currency"] if c["currency"] == currency]
    assert (good["purchase_days"], gone["purchase_days"]) == (8, 8)
    assert 0 <= gone["probability_alive"] < good["probability_alive"] <= 1
    assert gone["expected_purchases"] < good["expected_purchases"]
    # The reason rounds the exact silence to whole days, the figure beside it to a tenth: 130.54
    # days reads "131 days" beside 130.5, so the two agree within half a day and a twentieth.
    silence = re.fullmatch(
        r"no purchase for (\d+) days while usually every 10 days",
        gone["reasons"]["probability_alive"],
    )
    assert silence is not None, gone["reasons"]
    assert abs(int(silence[1]) - gone["days_since_last_purchase"]) <= 0.55
    assert good["reasons"]["expected_purchases"].startswith(
        f"expected {good['expected_purchases']:.1f} purchases in the next 365 days"
    )
    assert good["reasons"]["lifetime_value"].startswith(f"{good['lifetime_value']:.2f} {currency}")
