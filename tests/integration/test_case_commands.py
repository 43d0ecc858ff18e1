"""Cases and feedback written through the gateway's command routes (scopes cases:write and
experience:write) on the real broker and database: each route publishes its event, the
interaction worker folds it, and the read routes show the result; a key without the scope gets
403 and an invalid body a 422 with the reason, and neither publishes anything."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.helpers import create_api_key, eventually, gateway_url, unique

pytestmark = pytest.mark.integration

OPENING: dict[str, Any] = {
    "kind": "complaint",
    "priority": "high",
    "topic": "parcel arrived broken",
    "channel": "phone",
    "department": "support",
    "employee_id": "E-1",
}
TRANSFER: dict[str, Any] = {
    "from_employee_id": "E-1",
    "from_department": "support",
    "to_employee_id": "E-9",
    "to_department": "after-sales",
    "reason": "replacement needed",
}


def _client(platform: dict[str, str], key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway_url(platform), headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


async def test_a_case_opened_transferred_and_resolved_through_the_gateway_shows_in_the_case_api(
    platform: dict[str, str],
) -> None:
    customer = unique("case-cmd")
    key = create_api_key(platform, unique("agent"), "cases:write,cases:read,customers:read")
    async with _client(platform, key) as client:
        opened = await client.post(f"/v1/customers/{customer}/cases", json=OPENING)
        assert opened.status_code == 202, opened.text
        accepted = opened.json()
        case_id = accepted["case_id"]
        assert (accepted["customer_id"], accepted["type"]) == (customer, "crm.case.opened.v1")
        steps = [
            ("transfer", TRANSFER, "crm.case.transferred.v1"),
            ("resolve", {"resolution": "replacement sent"}, "crm.case.resolved.v1"),
        ]
        event_ids = [accepted["event_id"]]
        for step, body, event_type in steps:
            answer = await client.post(
                f"/v1/customers/{customer}/cases/{case_id}/{step}", json=body
            )
            assert answer.status_code == 202, answer.text
            assert (answer.json()["case_id"], answer.json()["type"]) == (case_id, event_type)
            event_ids.append(answer.json()["event_id"])
        assert len(set(event_ids)) == 3

        _, case = await eventually(
            lambda: _json(client.get(f"/v1/cases/{case_id}")),
            lambda r: r[0] == 200 and r[1]["status"] == "resolved",
            what="the case to be resolved",
        )
        # Every step is a touchpoint of kind "case" on the timeline, with structured columns.
        timeline = await client.get(
            f"/v1/customers/{customer}/timeline", params={"kind": "case", "order": "asc"}
        )
        by_department = await client.get(
            f"/v1/customers/{customer}/timeline",
            params={"kind": "case", "department": "after-sales"},
        )
    assert timeline.status_code == 200, timeline.text
    columns = [
        (e["event_id"], e["channel"], e["department"], e["employee_id"], e["outcome"])
        for e in timeline.json()["items"]
    ]
    assert columns == [
        (event_ids[0], "phone", "support", "E-1", "opened"),
        (event_ids[1], None, "after-sales", "E-9", "transferred"),
        (event_ids[2], None, None, None, "resolved"),
    ]
    assert [e["event_id"] for e in by_department.json()["items"]] == [event_ids[1]]
    assert case["customer_id"] == customer
    assert [(s["step"], s["accepted"]) for s in case["history"]] == [
        ("opened", True),
        ("transferred", True),
        ("resolved", True),
    ]
    figures = case["figures"]
    assert (figures["transfers"], figures["department_transfers"]) == (1, 1)
    assert figures["first_contact_resolution"] is False


async def test_feedback_given_through_the_gateway_reaches_the_customers_ratings(
    platform: dict[str, str],
) -> None:
    customer = unique("feedback-cmd")
    key = create_api_key(platform, unique("survey"), "experience:write,experience:read")
    rating = {
        "measure": "nps",
        "score": 3,
        "kind": "complaint",
        "touchpoint": "call-centre",
        "department": "support",
        "about": {"kind": "case", "id": "K-1"},
    }
    async with _client(platform, key) as client:
        given = await client.post(f"/v1/customers/{customer}/feedback", json=rating)
        assert given.status_code == 202, given.text
        assert given.json()["type"] == "crm.feedback.given.v2"
        _, feedback = await eventually(
            lambda: _json(client.get(f"/v1/customers/{customer}/feedback")),
            lambda r: r[0] == 200 and len(r[1]["ratings"]) == 1,
            what="the feedback to be folded",
        )
    (folded,) = feedback["ratings"]
    assert (folded["measure"], folded["score"], folded["event_id"]) == (
        "nps",
        3,
        given.json()["event_id"],
    )


async def test_a_key_without_the_write_scope_is_refused(platform: dict[str, str]) -> None:
    customer = unique("no-scope")
    reader = create_api_key(platform, unique("reader"), "cases:read,experience:read")
    async with _client(platform, reader) as client:
        opened = await client.post(f"/v1/customers/{customer}/cases", json=OPENING)
        closed = await client.post(f"/v1/customers/{customer}/cases/K-1/close")
        rated = await client.post(
            f"/v1/customers/{customer}/feedback", json={"measure": "csat", "score": 4}
        )
    assert opened.status_code == 403 and "cases:write" in opened.text
    assert closed.status_code == 403 and "cases:write" in closed.text
    assert rated.status_code == 403 and "experience:write" in rated.text


async def test_an_invalid_command_is_refused_with_its_reason(platform: dict[str, str]) -> None:
    customer = unique("bad-cmd")
    key = create_api_key(platform, unique("agent"), "cases:write,experience:write")
    async with _client(platform, key) as client:
        no_kind = await client.post(
            f"/v1/customers/{customer}/cases", json={**OPENING, "kind": "wish"}
        )
        other_case = await client.post(
            f"/v1/customers/{customer}/cases/K-1/resolve",
            json={"case_id": "K-2", "resolution": "done"},
        )
        no_reason = await client.post(
            f"/v1/customers/{customer}/cases/K-1/escalate", json={"level": 2}
        )
        off_scale = await client.post(
            f"/v1/customers/{customer}/feedback", json={"measure": "csat", "score": 9}
        )
        not_json = await client.post(
            f"/v1/customers/{customer}/cases",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
    assert no_kind.status_code == 422 and "kind" in no_kind.text
    assert other_case.status_code == 422 and "K-2" in other_case.text
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    assert off_scale.status_code == 422 and "csat score is from 1 to 5" in off_scale.text
    assert not_json.status_code == 422 and "JSON decode error" in not_json.text


async def _json(answer: Any) -> tuple[int, Any]:
    response = await answer
    return response.status_code, response.json()
