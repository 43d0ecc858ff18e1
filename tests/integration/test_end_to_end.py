"""End to end: events from kcat, the SDK and the gateway show up in the gateway's customer 360."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from crm_shared.contracts.events import build_event
from crm_shared.contracts.sdk import EventPublisher
from crm_shared.ops import launcher
from tests.integration.helpers import create_api_key, eventually, gateway_url, unique

pytestmark = pytest.mark.integration

T0 = datetime(2024, 6, 1, 9, 0, tzinfo=UTC)


def _kcat(env: dict[str, str], topic: str, key: str, document: dict[str, object]) -> None:
    subprocess.run(
        ["kcat", "-P", "-b", env["CRM_KAFKA_BOOTSTRAP"], "-t", topic, "-k", key],
        input=json.dumps(document).encode(),
        check=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def keys(platform: dict[str, str]) -> dict[str, str]:
    return {
        "full": create_api_key(platform, "e2e", "customers:read,events:write", "web-site"),
        "read": create_api_key(platform, "e2e", "customers:read"),
    }


async def test_events_from_three_publishers_make_up_the_customer_360(
    platform: dict[str, str], keys: dict[str, str]
) -> None:
    customer = unique("e2e")
    product = unique("P")
    # 1. kcat, a client none of us wrote: a phone call and a channel preference.
    _kcat(
        platform,
        "crm.contacts",
        customer,
        build_event(
            "crm.contact.logged.v1",
            customer,
            {
                "channel": "phone",
                "direction": "inbound",
                "department": "support",
                "topic": "delivery delay",
                "outcome": "resolved",
            },
            source="call-centre",
            time=T0,
            event_id=f"{customer}-call",
        ),
    )
    _kcat(
        platform,
        "crm.preferences",
        customer,
        build_event(
            "crm.channel_preference.set.v1",
            customer,
            {"channels": ["sms", "email"]},
            source="web-site",
            time=T0,
            event_id=f"{customer}-prefs",
        ),
    )
    # 2. The SDK: registration, an order, a consent.
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as sdk:
        sdk.publish(
            "crm.customer.registered.v1",
            customer,
            {"name": "Grace Hopper", "country": "US"},
            time=T0,
            event_id=f"{customer}-reg",
        )
        sdk.publish(
            "crm.order.placed.v1",
            customer,
            {
                "order_id": f"{customer}-O1",
                "lines": [{"product_id": product, "quantity": 3, "unit_price": "4.00"}],
            },
            time=T0 + timedelta(hours=1),
            event_id=f"{customer}-order",
        )
        sdk.publish(
            "crm.consent.granted.v1",
            customer,
            {"purpose": "marketing"},
            time=T0,
            event_id=f"{customer}-consent",
        )
    # 3. The gateway's ingest: one valid feedback, one invalid event.
    headers = {"Authorization": f"Bearer {keys['full']}"}
    feedback = build_event(
        "crm.feedback.given.v1",
        customer,
        {"score": 5, "kind": "praise", "comment": "solved in one call"},
        source="web-site",
        time=T0 + timedelta(hours=2),
        event_id=f"{customer}-fb",
    )
    invalid = {**feedback, "id": f"{customer}-bad", "data": {"score": 11}}
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:
        response = await client.post(
            "/v1/events", json={"events": [feedback, invalid]}, headers=headers
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["accepted"], body["rejected"]) == (1, 1)
        assert body["results"][0] == {
            "index": 0,
            "id": f"{customer}-fb",
            "status": "accepted",
            "topic": "crm.contacts",
        }
        assert body["results"][1]["status"] == "rejected"
        assert "score" in body["results"][1]["reason"]

        async def view() -> dict[str, object]:
            answer = await client.get(f"/v1/customers/{customer}", headers=headers)
            return answer.json() if answer.status_code == 200 else {}

        def complete(v: dict[str, object]) -> bool:
            timeline = v.get("timeline") or {}
            profile = v.get("profile") or {}
            return (
                profile.get("name") is not None  # type: ignore[union-attr]
                and bool(v.get("preferences"))
                and len(timeline.get("items", [])) == 5  # type: ignore[union-attr]
            )

        customer360 = await eventually(
            view, complete, what="the 360 to show every publisher's events"
        )
    profile = customer360["profile"]
    assert profile["name"] == "Grace Hopper"  # type: ignore[index]
    assert profile["purchases"]["orders"] == 1  # type: ignore[index]
    kinds = [item["kind"] for item in customer360["timeline"]["items"]]  # type: ignore[index]
    # Newest first; the three at 09:00 by source, descending (web-site, shop, call-centre).
    assert kinds == ["feedback", "order", "preference", "consent", "contact"]
    assert customer360["preferences"]["channels"] == ["sms", "email"]  # type: ignore[index]
    assert customer360["contact_summary"]["average_satisfaction"] == 5  # type: ignore[index]
    assert customer360["missing"] == []


async def test_a_service_that_is_down_is_reported_missing_not_fatal(
    platform: dict[str, str], keys: dict[str, str]
) -> None:
    customer = unique("down")
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as sdk:
        sdk.publish(
            "crm.customer.registered.v1", customer, {"name": "Ann"}, event_id=f"{customer}-r"
        )
    headers = {"X-API-Key": keys["read"]}
    broadcast_api = launcher.BY_NAME["broadcast-api"]
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:
        await eventually(
            lambda: client.get(f"/v1/customers/{customer}", headers=headers),
            lambda r: r.status_code == 200 and r.json()["profile"] is not None,
            what="the profile part",
        )
        launcher.stop(broadcast_api, platform)
        try:
            response = await client.get(f"/v1/customers/{customer}", headers=headers)
        finally:
            launcher.start(broadcast_api, platform)
            launcher.wait_healthy([broadcast_api], platform)
    assert response.status_code == 200
    body = response.json()
    assert body["profile"]["name"] == "Ann"
    missing = {m["part"]: m["reason"] for m in body["missing"]}
    assert missing["preferences"].startswith("unavailable"), missing


async def test_the_gateway_refuses_clearly(platform: dict[str, str], keys: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:
        no_key = await client.get("/v1/customers/C1")
        assert no_key.status_code == 401
        assert no_key.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = await client.get("/v1/customers/C1", headers={"Authorization": "Bearer crm_x_y"})
        assert wrong.status_code == 401
        read_only = {"Authorization": f"Bearer {keys['read']}"}
        forbidden = await client.post("/v1/events", json={"events": [{}]}, headers=read_only)
        assert forbidden.status_code == 403
        assert "events:write" in forbidden.json()["error"]["message"]
        unknown = await client.get(f"/v1/customers/{unique('nobody')}", headers=read_only)
        assert unknown.status_code == 404
        assert "unknown" in unknown.json()["error"]["message"]
        full = {"Authorization": f"Bearer {keys['full']}"}
        for events, problem in (([{}] * 1001, "at most 1000"), ([], "at least 1")):
            wrong_size = await client.post("/v1/events", json={"events": events}, headers=full)
            assert wrong_size.status_code == 422
            (detail,) = wrong_size.json()["error"]["details"]
            assert detail["where"] == "body.events" and problem in detail["problem"], detail
        not_json = await client.post(
            "/v1/events", content=b"{", headers={**full, "Content-Type": "application/json"}
        )
        assert not_json.status_code == 422
