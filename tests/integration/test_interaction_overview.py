"""The interaction service's overview (the customer 360's share): the first timeline page and the
contact summary in one answer, each equal to what its own endpoint gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm_shared.contracts.sdk import EventPublisher
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
