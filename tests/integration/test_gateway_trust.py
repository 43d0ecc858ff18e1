"""What the gateway lets a key publish: only as the sources the key was issued for, and nothing
dated in the future. Through the real keys command, gateway, Kafka and projections."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from crm_shared.contracts.events import build_event
from gateway_service.config import GatewaySettings
from tests.integration.helpers import (
    create_api_key,
    eventually,
    gateway_url,
    read_topic,
    run_module,
    unique,
)

pytestmark = pytest.mark.integration


def _keys_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_module(env, "gateway_service.keys", *args)


def _contact(customer: str, event_id: str, source: str, time: datetime) -> dict[str, object]:
    return build_event(
        "crm.contact.logged.v1",
        customer,
        {
            "channel": "store",
            "direction": "inbound",
            "department": "sales",
            "topic": "sizes",
            "outcome": "resolved",
        },
        source=source,
        time=time,
        event_id=event_id,
    )


async def test_a_key_publishes_only_as_its_sources_and_nothing_from_the_future(
    platform: dict[str, str],
) -> None:
    key = create_api_key(platform, "pos-tills", "customers:read,events:write", "pos,kiosk")
    customer = unique("trust")
    now = datetime.now(UTC)
    batch = [
        _contact(customer, f"{customer}-own", "pos", now - timedelta(minutes=1)),
        _contact(customer, f"{customer}-foreign", "shop", now - timedelta(minutes=1)),
        _contact(customer, f"{customer}-future", "pos", now + timedelta(days=1)),
    ]
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:
        response = await client.post("/v1/events", json={"events": batch}, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["accepted"], body["rejected"]) == (1, 2)
        own, foreign, future = body["results"]
        assert own == {
            "index": 0,
            "id": f"{customer}-own",
            "status": "accepted",
            "topic": "crm.contacts",
        }
        assert foreign["status"] == "rejected"
        assert foreign["reason"] == (
            "source 'shop' refused: this API key may publish only as 'kiosk', 'pos'"
        )
        assert future["status"] == "rejected"
        assert "is in the future" in future["reason"]
        timeline = await eventually(
            lambda: client.get(f"/v1/customers/{customer}/timeline", headers=headers),
            lambda r: r.status_code == 200,
            what="the accepted event in the timeline",
        )
    assert [item["event_id"] for item in timeline.json()["items"]] == [f"{customer}-own"]
    published = [
        json.loads(record.value)["id"]
        for record in read_topic(platform["CRM_KAFKA_BOOTSTRAP"], "crm.contacts")
        if record.key == customer.encode()
    ]
    assert published == [f"{customer}-own"], "refused events never reach Kafka"


def test_keys_list_shows_the_sources_each_key_may_publish_as(platform: dict[str, str]) -> None:
    key = create_api_key(platform, "web-shop", "events:write", "shop, web-site")
    key_id = key.split("_")[1]
    listing = _keys_command(platform, "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split()[:5] == ["KEY", "ID", "NAME", "SCOPES", "SOURCES"]
    (line,) = [line for line in listing.stdout.splitlines() if line.startswith(key_id)]
    assert line.split()[1:4] == ["web-shop", "events:write", "shop,web-site"]


def test_a_key_that_writes_events_cannot_be_created_without_sources(
    platform_env: dict[str, str],
) -> None:
    refused = _keys_command(
        platform_env, "create", "--name", "anything", "--scopes", "events:write"
    )
    assert refused.returncode == 2
    assert refused.stdout == "", "no key is printed"
    assert "needs the sources it may publish as" in refused.stderr


async def test_a_revoked_key_stops_working_within_the_key_cache_time(
    platform: dict[str, str],
) -> None:
    key = create_api_key(platform, "to-revoke", "customers:read")
    key_id = key.split("_")[1]
    headers = {"Authorization": f"Bearer {key}"}
    cache_seconds = GatewaySettings().key_cache_seconds
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:
        # A known key, now cached: the answer is about the customer, not the key.
        assert (await client.get("/v1/customers/nobody-here", headers=headers)).status_code == 404
        revoked = _keys_command(platform, "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        refused_at = time.monotonic()
        refused = await eventually(
            lambda: client.get("/v1/customers/nobody-here", headers=headers),
            lambda r: r.status_code == 401,
            within=cache_seconds + 5,
            what="the revoked key refused",
        )
    assert time.monotonic() - refused_at <= cache_seconds + 1
    assert f"the API key {key_id} was revoked at" in refused.json()["error"]["message"]
