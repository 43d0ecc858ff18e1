"""The timeline on real Kafka and PostgreSQL: every touchpoint with its columns, filters with
cursor paging, reads as of a past instant, and what a client holding a cursor sees of a late
event (see docs/decisions.md, "Timeline")."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from crm_shared.contracts.sdk import EventPublisher
from crm_shared.contracts.timeline import MAX_FILTER_VALUES
from tests.integration.helpers import (
    create_api_key,
    eventually,
    gateway_url,
    get_json,
    service_auth,
    unique,
)

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def _contact(channel: str, department: str, outcome: str = "resolved") -> dict[str, str]:
    return {
        "channel": channel,
        "direction": "inbound",
        "department": department,
        "employee_id": "E1",
        "topic": f"{channel} question",
        "outcome": outcome,
    }


EVERY_TOUCHPOINT: list[tuple[str, dict[str, Any]]] = [
    ("crm.contact.logged.v1", {**_contact("phone", "Customer Service"), "outcome": "Refused"}),
    ("crm.contact.logged.v2", _contact("meeting", "key-accounts", "sale")),
    ("crm.feedback.given.v1", {"score": 2, "kind": "complaint", "channel": "store"}),
    (
        "crm.order.placed.v1",
        {"order_id": "O1", "lines": [{"product_id": "P", "quantity": 1, "unit_price": "9.50"}]},
    ),
    (
        "crm.order.refunded.v1",
        {
            "refund_id": "R1",
            "order_id": "O1",
            "lines": [{"product_id": "P", "quantity": 1, "unit_price": "9.50"}],
        },
    ),
    ("crm.order.cancelled.v1", {"order_id": "O1"}),
    ("crm.session.recorded.v1", {"session_id": "S1", "channel": "app", "pages_viewed": 3}),
    (
        "crm.message.outcome.recorded.v1",
        {
            "message_id": "M1",
            "campaign_id": "spring",
            "channel": "email",
            "purpose": "marketing",
            "outcome": "clicked",
        },
    ),
    ("crm.consent.revoked.v1", {"purpose": "marketing", "channel": "sms"}),
    ("crm.channel_preference.set.v1", {"channels": ["email"]}),
]


def _publish(
    platform: dict[str, str],
    customer: str,
    events: list[tuple[str, dict[str, Any]]],
    times: list[datetime],
    prefix: str = "e",
) -> list[str]:
    ids = [f"{customer}-{prefix}{n}" for n in range(len(events))]
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="call-centre") as publisher:
        for (event_type, data), time, event_id in zip(events, times, ids, strict=True):
            publisher.publish(event_type, customer, data, time=time, event_id=event_id)
    return ids


def _timeline_url(platform: dict[str, str], customer: str) -> str:
    return f"http://127.0.0.1:{platform['CRM_INTERACTION_API_PORT']}/customers/{customer}/timeline"


async def _read_all(
    url: str, headers: dict[str, str], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every page of one read, following next_cursor with the same filters."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            response = await client.get(
                url, params={**params, **({"cursor": cursor} if cursor else {})}, headers=headers
            )
            assert response.status_code == 200, response.text
            page = response.json()
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return items


async def test_every_touchpoint_reaches_the_timeline_with_its_structured_columns(
    platform: dict[str, str],
) -> None:
    customer = unique("touchpoints")
    times = [T0 + timedelta(hours=n) for n in range(len(EVERY_TOUCHPOINT))]
    ids = _publish(platform, customer, EVERY_TOUCHPOINT, times)
    url, auth = _timeline_url(platform, customer), service_auth(platform)
    _, page = await eventually(
        lambda: get_json(f"{url}?order=asc", headers=auth),
        lambda r: r[0] == 200 and len(r[1]["items"]) == len(EVERY_TOUCHPOINT),
        what="every touchpoint on the timeline",
    )
    items = page["items"]
    assert [item["event_id"] for item in items] == ids
    assert [item["kind"] for item in items] == [
        "contact",
        "contact",
        "feedback",
        "order",
        "refund",
        "cancellation",
        "session",
        "message",
        "consent",
        "preference",
    ]
    v1, v2, message, consent = items[0], items[1], items[7], items[8]
    assert (v1["department"], v1["outcome"], v1["direction"]) == (
        "customer-service",
        "refused",
        "inbound",
    )
    assert (v2["channel"], v2["department"], v2["employee_id"], v2["outcome"]) == (
        "meeting",
        "key-accounts",
        "E1",
        "sale",
    )
    assert (message["direction"], message["topic"], message["outcome"]) == (
        "outbound",
        "marketing",
        "clicked",
    )
    assert (consent["channel"], consent["outcome"]) == ("sms", "revoked")
    for item in items:
        # The log recorded each event when it was published, long after its event time.
        assert datetime.fromisoformat(item["recorded_at"]) > datetime.fromisoformat(
            item["occurred_at"]
        )
    _, summary = await get_json(url.replace("/timeline", "/summary"), headers=auth)
    assert (summary["contacts"], summary["refusals"], summary["touchpoints"]) == (2, 1, 10)


MIXED = [
    ("crm.contact.logged.v2", _contact(channel, department))
    for channel, department in [
        ("phone", "support"),
        ("email", "sales"),
        ("phone", "sales"),
        ("chat", "support"),
        ("phone", "support"),
        ("email", "support"),
        ("phone", "billing"),
        ("phone", "support"),
    ]
] + [("crm.feedback.given.v1", {"score": 5, "channel": "phone"})] * 2


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({"channel": "phone"}, lambda e, t: e[1].get("channel") == "phone"),
        ({"department": "support"}, lambda e, t: e[1].get("department") == "support"),
        (
            {"channel": "phone", "department": "support", "order": "asc"},
            lambda e, t: e[1].get("channel") == "phone" and e[1].get("department") == "support",
        ),
        ({"kind": "feedback"}, lambda e, t: e[0] == "crm.feedback.given.v1"),
        (
            {"event_type": "crm.contact.logged.v2", "channel": ["email", "chat"]},
            lambda e, t: e[1].get("channel") in ("email", "chat"),
        ),
        (
            {
                "from": (T0 + timedelta(hours=2)).isoformat(),
                "to": (T0 + timedelta(hours=7)).isoformat(),
            },
            lambda e, t: T0 + timedelta(hours=2) <= t < T0 + timedelta(hours=7),
        ),
    ],
)
async def test_filters_page_by_cursor_through_exactly_the_matching_entries(
    platform: dict[str, str], params: dict[str, Any], keep: Any
) -> None:
    customer = unique("filters")
    times = [T0 + timedelta(hours=n) for n in range(len(MIXED))]
    ids = _publish(platform, customer, MIXED, times)
    url, auth = _timeline_url(platform, customer), service_auth(platform)
    await eventually(
        lambda: get_json(url, headers=auth),
        lambda r: r[0] == 200 and len(r[1]["items"]) == len(MIXED),
        what="the mixed history on the timeline",
    )
    expected = [i for i, e, t in zip(ids, MIXED, times, strict=True) if keep(e, t)]
    if params.get("order") != "asc":
        expected.reverse()
    items = await _read_all(url, auth, {**params, "limit": 2})
    assert [item["event_id"] for item in items] == expected


async def test_a_cursor_used_with_other_filters_or_another_as_of_is_refused(
    platform: dict[str, str],
) -> None:
    customer = unique("mismatch")
    _publish(platform, customer, MIXED, [T0 + timedelta(hours=n) for n in range(len(MIXED))])
    url, auth = _timeline_url(platform, customer), service_auth(platform)
    _, page = await eventually(
        lambda: get_json(f"{url}?channel=phone&limit=2", headers=auth),
        lambda r: r[0] == 200 and r[1]["next_cursor"] is not None and len(r[1]["items"]) == 2,
        what="a first page of phone contacts",
    )
    cursor = page["next_cursor"]
    status, body = await get_json(f"{url}?channel=email&limit=2&cursor={cursor}", headers=auth)
    assert status == 400
    assert "other filters" in body["error"]["message"]
    later = quote((datetime.fromisoformat(page["as_of"]) + timedelta(seconds=1)).isoformat())
    status, body = await get_json(
        f"{url}?channel=phone&limit=2&cursor={cursor}&as_of={later}", headers=auth
    )
    assert status == 400
    assert "as of" in body["error"]["message"]


async def test_a_late_event_stays_off_the_pages_of_a_read_begun_before_it(
    platform: dict[str, str],
) -> None:
    """A client pages newest first; two events arrive late, one dated inside the part it has
    read, one inside the part it has not. Neither shows on its next pages (the read is as of its
    first page); a new read shows both, and recorded_after the first page's as_of lists exactly
    them. A read as of that instant later still gives the timeline without them."""
    customer = unique("late")
    on_time = [("crm.contact.logged.v2", _contact("phone", "support"))] * 5
    times = [T0 + timedelta(hours=n) for n in range(5)]
    ids = _publish(platform, customer, on_time, times)
    url, auth = _timeline_url(platform, customer), service_auth(platform)
    await eventually(
        lambda: get_json(url, headers=auth),
        lambda r: r[0] == 200 and len(r[1]["items"]) == 5,
        what="the five contacts on the timeline",
    )
    _, first = await get_json(f"{url}?limit=2", headers=auth)
    assert [item["event_id"] for item in first["items"]] == [ids[4], ids[3]]
    as_of = first["as_of"]
    await asyncio.sleep(0.05)  # the log's clock counts milliseconds: be past the first page's
    late_times = [T0 + timedelta(hours=3, minutes=30), T0 + timedelta(hours=1, minutes=30)]
    late = _publish(platform, customer, on_time[:2], late_times, prefix="late")
    await eventually(
        lambda: get_json(url, headers=auth),
        lambda r: r[0] == 200 and len(r[1]["items"]) == 7,
        what="the late contacts on the timeline",
    )
    rest: list[str] = []
    cursor = first["next_cursor"]
    while cursor is not None:
        status, page = await get_json(f"{url}?limit=2&cursor={cursor}", headers=auth)
        assert status == 200 and page["as_of"] == as_of
        rest += [item["event_id"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert rest == [ids[2], ids[1], ids[0]]
    again = [item["event_id"] for item in await _read_all(url, auth, {"limit": 3})]
    assert again == [ids[4], late[0], ids[3], ids[2], late[1], ids[1], ids[0]]
    arrived = await _read_all(url, auth, {"recorded_after": as_of})
    assert [item["event_id"] for item in arrived] == late
    then = await _read_all(url, auth, {"as_of": as_of, "limit": 2})
    assert [item["event_id"] for item in then] == [ids[4], ids[3], ids[2], ids[1], ids[0]]


async def test_the_gateway_serves_the_filtered_timeline_as_of_an_instant(
    platform: dict[str, str],
) -> None:
    customer = unique("gw-timeline")
    times = [T0 + timedelta(hours=n) for n in range(len(MIXED))]
    ids = _publish(platform, customer, MIXED, times)
    key = create_api_key(platform, "timeline-reader", "customers:read")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:
        path = f"/v1/customers/{customer}/timeline"
        await eventually(
            lambda: client.get(path, headers=headers),
            lambda r: r.status_code == 200 and len(r.json()["items"]) == len(MIXED),
            what="the mixed history through the gateway",
        )
        params = {
            "channel": "phone",
            "department": "support",
            "kind": "contact",
            "limit": 2,
            "from": T0.isoformat(),
            "to": (T0 + timedelta(days=1)).isoformat(),
            "as_of": datetime.now(UTC).isoformat(),
        }
        first = await client.get(path, params=params, headers=headers)
        assert first.status_code == 200, first.text
        expected = [ids[n] for n in (7, 4)]
        assert [item["event_id"] for item in first.json()["items"]] == expected
        cursor = first.json()["next_cursor"]
        second = await client.get(path, params={**params, "cursor": cursor}, headers=headers)
        assert [item["event_id"] for item in second.json()["items"]] == [ids[0]]
        other = await client.get(
            path, params={"channel": "email", "cursor": cursor}, headers=headers
        )
        assert other.status_code == 400
        assert "other filters" in other.json()["error"]["message"]
        before = await client.get(path, params={"as_of": "2020-01-01T00:00:00Z"}, headers=headers)
        assert (before.status_code, before.json()["items"]) == (200, [])
        no_scope = create_api_key(platform, "writer-only", "events:write", "call-centre")
        refused = await client.get(path, headers={"Authorization": f"Bearer {no_scope}"})
        assert refused.status_code == 403


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("department=Customer%20Service", "not a department code"),
        ("event_type=crm.product.viewed.v1", "is not on timelines"),
        ("as_of=2024-05-01T00:00:00", "must carry a UTC offset"),
        ("recorded_after=0001-01-01T00:00:00%2B05:00", "out of range"),
    ],
)
async def test_a_bad_filter_is_refused_with_its_reason(
    platform: dict[str, str], query: str, problem: str
) -> None:
    url = _timeline_url(platform, unique("bad-filter"))
    status, body = await get_json(f"{url}?{query}", headers=service_auth(platform))
    assert status == 422
    assert problem in body["error"]["message"]


async def test_more_filter_values_than_the_contract_allows_are_refused_by_service_and_gateway(
    platform: dict[str, str],
) -> None:
    customer = unique("many-filters")
    one_value = {
        "kind": "order",
        "event_type": "crm.order.placed.v1",
        "channel": "email",
        "department": "support",
    }
    key = create_api_key(platform, "timeline-filters", "customers:read")
    readers = [
        (_timeline_url(platform, customer), service_auth(platform)),
        (
            f"{gateway_url(platform)}/v1/customers/{customer}/timeline",
            {"Authorization": f"Bearer {key}"},
        ),
    ]
    async with httpx.AsyncClient(timeout=10) as client:
        for (url, headers), (name, value) in itertools.product(readers, one_value.items()):
            at_most = [(name, value)] * MAX_FILTER_VALUES
            allowed = await client.get(url, params=at_most, headers=headers)
            # past validation to the read, which knows no such customer
            assert allowed.status_code == 404, (url, name, allowed.text)
            refused = await client.get(url, params=[*at_most, (name, value)], headers=headers)
            assert refused.status_code == 422, (url, name)
            problems = refused.json()["error"]["details"]
            assert [problem["where"] for problem in problems] == [f"query.{name}"], problems
            assert f"at most {MAX_FILTER_VALUES}" in problems[0]["problem"]
