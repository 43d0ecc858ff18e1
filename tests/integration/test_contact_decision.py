"""Preferences, consent, do-not-contact and the contact decision through the gateway, on the real
broker and database: commands become events on crm.preferences, the broadcast worker folds them
(and the holds the interaction service derives), and the decision answers with its reasons."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from crm_shared.contracts.sdk import EventPublisher
from tests.integration.helpers import create_api_key, eventually, gateway_url, unique

pytestmark = pytest.mark.integration

CONFIRMED = {"state": "granted", "capture_method": "double_opt_in", "wording_version": "v7"}


@pytest.fixture(scope="module")
async def client(platform: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    key = create_api_key(
        platform, unique("reach"), "preferences:read,preferences:write,customers:read"
    )
    async with httpx.AsyncClient(
        base_url=gateway_url(platform), headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as gateway:
        yield gateway


async def _command(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> str:
    answer = await client.request(method, path, **kw)
    assert answer.status_code == 202, answer.text
    event_id: str = answer.json()["event_id"]
    return event_id


async def _set_up(client: httpx.AsyncClient, customer: str, setup: dict[str, Any]) -> None:
    await _command(client, "PUT", f"/v1/customers/{customer}/preferences", json=setup)
    await eventually(
        lambda: client.get(f"/v1/customers/{customer}/preferences"),
        lambda r: r.status_code == 200 and len(r.json()["channel_setup"]) == len(setup["channels"]),
        what="the channel set-up to be folded",
    )


async def _consent(client: httpx.AsyncClient, customer: str, consent: dict[str, Any]) -> None:
    event_id = await _command(client, "POST", f"/v1/customers/{customer}/consents", json=consent)
    await eventually(
        lambda: client.get(f"/v1/customers/{customer}/consent-history"),
        lambda r: r.status_code == 200 and event_id in {c["event_id"] for c in r.json()},
        what="the consent to reach the history",
    )


async def _decision(client: httpx.AsyncClient, customer: str, **params: str) -> dict[str, Any]:
    answer = await client.get(f"/v1/customers/{customer}/contact-decision", params=params)
    assert answer.status_code == 200, answer.text
    decision: dict[str, Any] = answer.json()
    return decision


def _codes(decision: dict[str, Any]) -> dict[str, list[str]]:
    return {v["channel"]: [r["code"] for r in v["reasons"]] for v in decision["channels"]}


async def test_quiet_hours_follow_each_time_zone_across_daylight_saving_changes(
    client: httpx.AsyncClient,
) -> None:
    customer = unique("quiet")
    night = {"start": "22:00", "end": "07:00"}
    await _set_up(
        client,
        customer,
        {
            "timezone": "Europe/London",
            "channels": [
                {"channel": "email", "address": "q@example.com", "quiet_hours": night},
                {
                    "channel": "sms",
                    "address": "+12125550100",
                    "quiet_hours": {**night, "timezone": "America/New_York"},
                },
            ],
        },
    )
    await _consent(client, customer, {"purpose": "marketing", **CONFIRMED})

    # The night before London springs forward (31 March 2024, 01:00 UTC): 23:30 GMT in London,
    # 19:30 EDT in New York (which changed on 10 March). E-mail waits until 07:00 BST = 06:00 UTC.
    spring = await _decision(client, customer, purpose="marketing", at="2024-03-30T23:30:00Z")
    assert (spring["channel"], spring["address"]) == ("sms", "+12125550100")
    assert _codes(spring) == {"email": ["quiet_hours"], "sms": ["allowed"]}
    assert spring["channels"][0]["possible_at"] == "2024-03-31T06:00:00Z"

    email_only = await _decision(
        client, customer, purpose="marketing", channel="email", at="2024-03-30T23:30:00Z"
    )
    assert not email_only["contact"]
    assert email_only["possible_at"] == "2024-03-31T06:00:00Z"

    # The evening before London falls back (27 October 2024): 22:30 BST is 21:30 UTC, and 07:00
    # GMT the next morning is 07:00 UTC; it is 17:30 EDT in New York.
    autumn = await _decision(
        client, customer, purpose="marketing", channel="email", at="2024-10-26T21:30:00Z"
    )
    assert autumn["possible_at"] == "2024-10-27T07:00:00Z"
    # 03:30 UTC in winter: quiet in London (03:30) and in New York (22:30 EST): both wait.
    both = await _decision(client, customer, purpose="marketing", at="2024-12-02T03:30:00Z")
    assert _codes(both) == {"email": ["quiet_hours"], "sms": ["quiet_hours"]}
    assert both["possible_at"] == "2024-12-02T07:00:00Z"
    # Transactional messages do not wait for quiet hours.
    receipt = await _decision(client, customer, purpose="transactional", at="2024-12-02T03:30:00Z")
    assert receipt["channel"] == "email"


async def test_a_detractor_is_held_back_from_a_promotion_but_reached_for_service(
    client: httpx.AsyncClient, platform: dict[str, str]
) -> None:
    customer = unique("detractor")
    await _set_up(
        client,
        customer,
        {"channels": [{"channel": "email", "address": "d@example.com"}], "timezone": "UTC"},
    )
    await _consent(client, customer, {"purpose": "marketing", **CONFIRMED})
    await _consent(client, customer, {"purpose": "service", "channel": "email", **CONFIRMED})
    assert (await _decision(client, customer, purpose="marketing"))["contact"]

    scored_at = datetime.now(UTC).replace(microsecond=0)
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="survey-tool") as publisher:
        publisher.publish(
            "crm.feedback.given.v2",
            customer,
            {"measure": "nps", "score": 2, "kind": "complaint", "touchpoint": "delivery"},
            time=scored_at,
        )
    # The interaction service derives the detractor score; the broadcast worker folds it.
    held = await eventually(
        lambda: _decision(client, customer, purpose="marketing"),
        lambda d: not d["contact"],
        what="the detractor score to hold back marketing",
    )
    assert _codes(held) == {"email": ["detractor"]}
    possible_at = datetime.fromisoformat(held["possible_at"])
    assert possible_at == scored_at + timedelta(days=30)
    service = await _decision(client, customer, purpose="service")
    assert (service["contact"], service["channel"]) == (True, "email")
    view = (await client.get(f"/v1/customers/{customer}/preferences")).json()
    assert (view["holds"]["detractor_measure"], view["holds"]["detractor_score"]) == ("nps", 2)


async def test_an_opt_out_changes_the_decision_and_stays_in_the_history(
    client: httpx.AsyncClient,
) -> None:
    customer = unique("opt-out")
    await _set_up(
        client,
        customer,
        {"channels": [{"channel": "email", "address": "o@example.com"}], "timezone": "UTC"},
    )
    # A web-form sign-up awaits double opt-in; the confirmation makes it count.
    signup = {"purpose": "marketing", "state": "granted", "capture_method": "web_form"}
    await _consent(client, customer, {**signup, "evidence": "https://shop/signup 10.0.0.1"})
    assert _codes(await _decision(client, customer, purpose="marketing")) == {
        "email": ["consent_unconfirmed"]
    }
    await _consent(client, customer, {"purpose": "marketing", "channel": "email", **CONFIRMED})
    assert (await _decision(client, customer, purpose="marketing"))["channel"] == "email"

    await _consent(
        client,
        customer,
        {"purpose": "marketing", "state": "revoked", "capture_method": "unsubscribe_link"},
    )
    decision = await _decision(client, customer, purpose="marketing")
    assert not decision["contact"]
    assert _codes(decision) == {"email": ["consent_refused"]}
    assert decision["possible_at"] is None

    history = (await client.get(f"/v1/customers/{customer}/consent-history")).json()
    assert [(c["state"], c["capture_method"]) for c in history] == [
        ("revoked", "unsubscribe_link"),
        ("granted", "double_opt_in"),
        ("granted", "web_form"),
    ]
    assert history[2]["evidence"] == "https://shop/signup 10.0.0.1"
    assert history[1]["wording_version"] == "v7"
    # The refusal is on the customer's timeline too.
    timeline = await eventually(
        lambda: client.get(f"/v1/customers/{customer}/timeline", params={"kind": "consent"}),
        lambda r: r.status_code == 200 and len(r.json()["items"]) == 3,
        what="the consents on the timeline",
    )
    assert timeline.json()["items"][0]["outcome"] == "revoked"


async def test_do_not_contact_stops_even_transactional_messages_when_legal(
    client: httpx.AsyncClient,
) -> None:
    customer = unique("dnc")
    await _set_up(
        client,
        customer,
        {
            "channels": [
                {"channel": "email", "address": "n@example.com"},
                {"channel": "sms", "address": "+447700900000"},
            ],
            "timezone": "UTC",
        },
    )
    path = f"/v1/customers/{customer}/do-not-contact"
    await _command(client, "POST", path, json={"channel": "email", "reason": "legal"})
    refused = await eventually(
        lambda: _decision(client, customer, purpose="transactional"),
        lambda d: d["channel"] == "sms",
        what="the do-not-contact entry to be folded",
    )
    assert _codes(refused) == {"email": ["do_not_contact"], "sms": ["allowed"]}
    view = (await client.get(f"/v1/customers/{customer}/preferences")).json()
    assert [(d["channel"], d["reason"]) for d in view["do_not_contact"]] == [("email", "legal")]

    await _command(client, "DELETE", path, params={"channel": "email", "note": "order lifted"})
    await eventually(
        lambda: _decision(client, customer, purpose="transactional"),
        lambda d: d["channel"] == "email",
        what="the do-not-contact entry to be lifted",
    )
    timeline = await eventually(
        lambda: client.get(f"/v1/customers/{customer}/timeline", params={"kind": "consent"}),
        lambda r: r.status_code == 200 and len(r.json()["items"]) == 2,
        what="the do-not-contact entries on the timeline",
    )
    assert [e["outcome"] for e in timeline.json()["items"]] == [
        "do_not_contact_lifted",
        "do_not_contact",
    ]


async def test_invalid_commands_get_a_4xx_with_the_reason(
    client: httpx.AsyncClient, platform: dict[str, str]
) -> None:
    customer = unique("invalid")
    web = await client.put(
        f"/v1/customers/{customer}/preferences", json={"channels": [{"channel": "web"}]}
    )
    assert web.status_code == 422
    assert "not a channel we send on" in web.text
    zone = await client.put(
        f"/v1/customers/{customer}/preferences",
        json={"channels": [{"channel": "sms"}], "timezone": "Mars/Olympus"},
    )
    assert zone.status_code == 422
    assert "unknown IANA time zone" in zone.text
    purpose = await client.get(
        f"/v1/customers/{customer}/contact-decision", params={"purpose": "spam"}
    )
    assert purpose.status_code == 422
    reader = create_api_key(platform, unique("reader"), "preferences:read")
    denied = await client.post(
        f"/v1/customers/{customer}/consents",
        json={"purpose": "marketing", "state": "granted", "capture_method": "api"},
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert denied.status_code == 403
    assert "preferences:write" in denied.text
