"""Purchases, RFM, top customers and the cube through the real broker, database and gateway:
orders, a partial refund, a cancellation and the catalogue's categories of the products bought
published to Kafka come out of the gateway's
analysis routes, which ask for their scopes and check their parameters; every route of the
profile service on the gateway refuses a key without its scope, naming the scope."""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.integration.helpers import (
    create_api_key,
    eventually,
    gateway_url,
    service_auth,
    unique,
)
from tests.integration.test_crash_recovery import publish

pytestmark = pytest.mark.integration

BUYERS = 10
START = datetime.now(UTC) - timedelta(days=200)


def _envelope(kind: str, customer: str, day: int, eid: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": eid,
        "source": "shop",
        "type": f"crm.order.{kind}.v1",
        "subject": customer,
        "time": (START + timedelta(days=day)).isoformat(),
        "data": data,
    }


def _events(prefix: str, currency: str) -> tuple[list[dict[str, Any]], dict[str, Decimal]]:
    """Buyer n places n + 1 orders of 10 x (n + 1), ten days apart, on the web; buyer 0 has a
    second order cancelled, buyer 1 returns part of its first order. Also their net revenue."""
    events, net = [], {}
    for n in range(BUYERS):
        customer = f"{prefix}-{n}"
        price = Decimal(10 * (n + 1))
        for k in range(n + 1):
            order = {
                "order_id": f"{customer}-o{k}",
                "currency": currency,
                "channel": "store" if k % 2 else "web",
                "lines": [{"product_id": f"{prefix}-P1", "quantity": 1, "unit_price": str(price)}],
            }
            events.append(_envelope("placed", customer, 10 * k + n, f"{customer}-o{k}", order))
        net[customer] = price * (n + 1)
    first, second = f"{prefix}-0", f"{prefix}-1"
    late = {"order_id": f"{first}-o9", "currency": currency, "lines": [
        {"product_id": f"{prefix}-P2", "quantity": 3, "unit_price": "100"}
    ]}  # fmt: skip
    events.append(_envelope("placed", first, 50, f"{first}-o9", late))
    events.append(_envelope("cancelled", first, 51, f"{first}-c9", {"order_id": f"{first}-o9"}))
    refund = {
        "refund_id": f"{second}-r1",
        "order_id": f"{second}-o0",
        "currency": currency,
        "lines": [{"product_id": f"{prefix}-P1", "quantity": 1, "unit_price": "5"}],
    }
    events.append(_envelope("refunded", second, 30, f"{second}-r1", refund))
    net[second] -= 5
    for product, category in (("P1", "candles"), ("P2", "garden")):  # P2: only cancelled
        record = {"product_id": f"{prefix}-{product}", "name": product, "category": category}
        events.append(_catalogued({**record, "price": "1", "available": True}))
    return events, net


def _catalogued(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"{record['product_id']}-catalogued",
        "source": "pim",
        "type": "crm.product.catalogued.v1",
        "subject": record["product_id"],
        "time": START.isoformat(),
        "data": record,
    }


async def test_purchase_analysis_reaches_the_gateway_with_scopes(platform: dict[str, str]) -> None:
    prefix = unique("analysis")
    currency = "".join(random.choices(string.ascii_uppercase, k=3))  # its own population
    events, net = _events(prefix, currency)
    publish(platform["CRM_KAFKA_BOOTSTRAP"], events, rate=5_000)
    analyst = create_api_key(platform, "analyst", "customers:read,analytics:read")
    reader = create_api_key(platform, "reader", "customers:read")
    base = gateway_url(platform)
    async with httpx.AsyncClient(
        base_url=base, timeout=10, headers={"Authorization": f"Bearer {analyst}"}
    ) as gateway:

        async def get(path: str, **params: Any) -> tuple[int, Any]:
            answer = await gateway.get(path, params=params)
            return answer.status_code, answer.json()

        second = f"{prefix}-1"
        status, summary = await eventually(
            lambda: get(f"/v1/customers/{second}/purchases"),
            lambda found: found[0] == 200 and Decimal(found[1]["by_currency"][0]["refunded"]) == 5,
            what="the partial refund in the purchase summary",
        )
        (mine,) = summary["by_currency"]
        assert (mine["currency"], mine["orders"]) == (currency, 2)
        assert Decimal(mine["net_revenue"]) == net[second] == Decimal(35)
        assert Decimal(mine["average_order_value"]) == Decimal("17.50")
        assert Decimal(mine["mean_days_between_purchases"]) == 10
        assert summary["favourite_channels"] == ["store", "web"]

        first = f"{prefix}-0"
        _, cancelled = await eventually(
            lambda: get(f"/v1/customers/{first}/purchases"),
            lambda found: (
                found[0] == 200
                and found[1]["cancelled_orders"] == 1
                and found[1]["favourite_categories"] != []
            ),
            what="the cancellation and the catalogue's categories",
        )
        assert cancelled["by_currency"][0]["orders"] == 1  # the cancelled order does not count
        assert cancelled["favourite_categories"] == ["candles"]  # garden: only the cancelled order

        last = f"{prefix}-{BUYERS - 1}"
        _, rfm = await eventually(
            lambda: get(f"/v1/customers/{last}/rfm"),
            lambda found: (
                found[0] == 200
                and any(
                    s["currency"] == currency and s["frequency"] == BUYERS
                    for s in found[1]["scores"]
                )
            ),
            what="the RFM scores refreshed by the worker",
        )
        (score,) = [s for s in rfm["scores"] if s["currency"] == currency]
        assert (score["f"], score["m"]) == (5, 5)
        status, sizes = await get("/v1/analytics/rfm-segments")
        assert status == 200
        mine = {s["segment"]: s["customers"] for s in sizes if s["currency"] == currency}
        assert sum(mine.values()) == BUYERS and mine.get(score["segment"], 0) >= 1

        total = sum(net.values())
        _, top = await eventually(
            lambda: get("/v1/analytics/top-customers", currency=currency, share=0.5, points=10),
            lambda found: found[0] == 200 and Decimal(found[1]["revenue"]) == total,
            what="every buyer in the top-customer figures",
        )
        ranked = sorted(net.values(), reverse=True)
        needed = next(i for i in range(1, BUYERS + 1) if sum(ranked[:i]) >= total / 2)
        assert (top["customers"], top["active_customers"]) == (needed, BUYERS)
        assert Decimal(top["population_share"]) == Decimal(needed) / BUYERS
        assert len(top["pareto"]) == 10 and Decimal(top["pareto"][-1]["revenue_share"]) == 1

        _, cube = await eventually(  # the worker recomputes the cube after the RFM scores
            lambda: get("/v1/analytics/cube", currency=currency, by=["rfm_segment", "channel"]),
            lambda found: found[0] == 200 and Decimal(found[1]["cells"][0]["revenue"]) == total,
            what="every buyer in the cube",
        )
        assert cube["computed_at"] is not None
        grand = [c for c in cube["cells"] if c["rolled_up"] == ["rfm_segment", "channel"]]
        assert [(Decimal(c["revenue"]), c["customers"]) for c in grand] == [(total, BUYERS)]
        by_channel = {c["channel"]: c for c in cube["cells"] if c["rolled_up"] == ["rfm_segment"]}
        assert set(by_channel) == {"web", "store"}
        assert sum(c["orders"] for c in by_channel.values()) == sum(n + 1 for n in range(BUYERS))

        status, refused = await get("/v1/analytics/cube", by=["colour"])
        assert status == 422 and "by" in str(refused)

    async with httpx.AsyncClient(timeout=10, headers=service_auth(platform)) as service:
        answer = await service.get(
            f"http://127.0.0.1:{platform['CRM_PROFILE_API_PORT']}/analytics/cube",
            params={"by": ["segment", "colour"]},
        )
    assert answer.status_code == 422
    assert "unknown cube dimension(s) 'colour'" in answer.text

    async with httpx.AsyncClient(base_url=base, timeout=10) as gateway:
        answer = await gateway.get(
            "/v1/analytics/top-customers", headers={"Authorization": f"Bearer {reader}"}
        )
    assert answer.status_code == 403
    assert "analytics:read" in answer.text


PROFILE_ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/v1/customers/{c}", "customers:read"),
    ("GET", "/v1/customers/{c}/merges", "customers:read"),
    ("GET", "/v1/customers/{c}/purchases", "customers:read"),
    ("GET", "/v1/customers/{c}/rfm", "customers:read"),
    ("GET", "/v1/customers/{c}/lifetime-value", "customers:read"),
    ("GET", "/v1/customers/{c}/opinions", "customers:read"),
    ("POST", "/v1/customers/{c}/merges", "customers:merge"),
    ("DELETE", "/v1/customers/{c}/merges/{c}-other", "customers:merge"),
    ("GET", "/v1/analytics/rfm-segments", "analytics:read"),
    ("GET", "/v1/analytics/top-customers", "analytics:read"),
    ("GET", "/v1/analytics/cube", "analytics:read"),
    ("GET", "/v1/analytics/opinions", "analytics:read"),
    ("GET", "/v1/analytics/lifetime-value/model", "analytics:read"),
    ("POST", "/v1/analytics/lifetime-value/refits", "analytics:write"),
    ("GET", "/v1/customers/{c}/segments", "segments:read"),
    ("GET", "/v1/segments", "segments:read"),
    ("GET", "/v1/segments/{s}", "segments:read"),
    ("GET", "/v1/segments/{s}/size", "segments:read"),
    ("GET", "/v1/segments/{s}/members", "segments:read"),
    ("POST", "/v1/segments", "segments:write"),
    ("DELETE", "/v1/segments/{s}", "segments:write"),
]
"""Every profile-service route of the gateway (issue 7, item 10) and the scope it needs."""
BODIES = {
    "/v1/customers/{c}/merges": {"customer_id": "someone-else"},
    "/v1/segments": {"segment": "scoped", "rule": {"measure": "orders", "at_least": 1}},
}


async def test_every_profile_route_refuses_a_key_without_its_scope(
    platform: dict[str, str],
) -> None:
    customer, segment = unique("scoped"), "scoped"
    scopes = {scope for _, _, scope in PROFILE_ROUTES}
    lacking = {  # a key with every other scope of these routes
        scope: create_api_key(platform, unique("unscoped"), ",".join(sorted(scopes - {scope})))
        for scope in scopes
    }
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as gateway:
        for method, template, scope in PROFILE_ROUTES:
            key = lacking[scope]
            path = template.format(c=customer, s=segment)
            refused = await gateway.request(
                method,
                path,
                json=BODIES.get(template) if method == "POST" else None,
                headers={"Authorization": f"Bearer {key}"},
            )
            assert refused.status_code == 403, (method, path, refused.text)
            assert scope in refused.text, (method, path, refused.text)
