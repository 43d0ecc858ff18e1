"""The interaction service's overview (the customer 360's share): the first timeline page and the
contact summary in one answer, each equal to what its own endpoint gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from crm_shared.contracts.sdk import EventPublisher
from interaction_service.api import InteractionOverview, TimelinePage
from tests.integration.helpers import eventually, get_json, service_auth, unique

pytestmark = pytest.mark.integration

T0 = datetime(2024, 7, 1, 9, 0, tzinfo=UTC)


async def test_the_overview_holds_the_first_page_and_the_summary(
    platform: dict[str, str],
) -> None:
    customer = unique("overview")
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="call-centre") as publisher:
        for n in range(3):
            publisher.publish(
                "crm.contact.logged.v1",
                customer,
                {
                    "channel": "phone",
                    "direction": "inbound",
                    "department": "support",
                    "topic": f"call {n}",
                    "outcome": "resolved",
                },
                time=T0 + timedelta(hours=n),
                event_id=f"{customer}-call-{n}",
            )
    url = f"http://127.0.0.1:{platform['CRM_INTERACTION_API_PORT']}/customers/{customer}"
    auth = service_auth(platform)
    _, overview = await eventually(
        lambda: get_json(f"{url}/overview?limit=2", headers=auth),
        lambda r: r[0] == 200 and r[1]["contact_summary"]["contacts"] == 3,
        what="the overview to show the three calls",
    )
    _, page = await get_json(f"{url}/timeline?limit=2", headers=auth)
    _, summary = await get_json(f"{url}/summary", headers=auth)
    # Each read is as of its own instant, which its cursor holds: the rest is the same.
    without_instant = {"as_of", "next_cursor"}

    def same_page(timeline: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in timeline.items() if k not in without_instant}

    assert same_page(overview["timeline"]) == same_page(page)
    assert overview["contact_summary"] == summary
    assert overview["timeline"]["next_cursor"] is not None
    assert [item["event_id"] for item in page["items"]] == [f"{customer}-call-{n}" for n in (2, 1)]
    assert page["next_cursor"] is not None


async def test_the_overview_of_an_unknown_customer_is_not_found(
    platform: dict[str, str],
) -> None:
    url = f"http://127.0.0.1:{platform['CRM_INTERACTION_API_PORT']}/customers/{unique('nobody')}"
    status, body = await get_json(f"{url}/overview", headers=service_auth(platform))
    assert status == 404
    assert "no recorded interactions" in body["error"]["message"]


async def test_the_json_postgresql_writes_is_the_document_the_models_write(
    platform: dict[str, str],
) -> None:
    """The page's items are JSON that PostgreSQL builds: times in pydantic's form (UTC, "Z",
    microseconds only when there are some), nulls as null, money as the event gave it, and the
    whole answer the document the response models write."""
    customer = unique("encoding")
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        publisher.publish(
            "crm.order.placed.v1",
            customer,
            {
                "order_id": "O1",
                "lines": [{"product_id": "P", "quantity": 3, "unit_price": "9.50"}],
                "currency": "EUR",
            },
            time=T0.replace(microsecond=123),
            event_id=f"{customer}-order",
        )
        publisher.publish(
            "crm.feedback.given.v1",
            customer,
            {"score": 4, "comment": "très bien"},
            time=T0 + timedelta(hours=1),
            event_id=f"{customer}-feedback",
        )
    url = f"http://127.0.0.1:{platform['CRM_INTERACTION_API_PORT']}/customers/{customer}"
    auth = service_auth(platform)
    await eventually(
        lambda: get_json(f"{url}/overview", headers=auth),
        lambda r: r[0] == 200 and len(r[1]["timeline"]["items"]) == 2,
        what="the overview to show the order and the feedback",
    )
    async with httpx.AsyncClient(timeout=5, headers=auth) as client:
        page_text = (await client.get(f"{url}/timeline?order=asc&limit=1")).text
        overview_text = (await client.get(f"{url}/overview")).text
    page = json.loads(page_text)
    overview = json.loads(overview_text)
    assert page == json.loads(TimelinePage.model_validate_json(page_text).model_dump_json())
    assert overview == json.loads(
        InteractionOverview.model_validate_json(overview_text).model_dump_json()
    )
    feedback, order = overview["timeline"]["items"]
    assert order["occurred_at"] == "2024-07-01T09:00:00.000123Z"
    assert feedback["occurred_at"] == "2024-07-01T10:00:00Z"
    assert feedback["recorded_at"].endswith("Z")
    assert order["employee_id"] is None and feedback["employee_id"] is None
    assert "9.50" in json.dumps(order["details"])
    assert page["items"] == [order]
    assert page["next_cursor"] is not None
