"""The voice of the customer and the journey on the real broker and database: feedback published
to Kafka gives exact NPS, CSAT and effort figures and a detractor event on crm.experience; a
journey runs through its stages with every transition published; a clock tick moves an inactive
customer to at risk; the gateway serves it all under the scope experience:read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from crm_shared.contracts.events import DETRACTOR_SCORED, JOURNEY_STAGE_CHANGED
from crm_shared.contracts.sdk import EventPublisher
from interaction_service.journey import AT_RISK_AFTER
from tests.integration.helpers import (
    create_api_key,
    eventually,
    experience_events,
    gateway_url,
    get_json,
    metric_value,
    service_auth,
    unique,
)

pytestmark = pytest.mark.integration

JULY = datetime(2024, 7, 3, 9, 0, tzinfo=UTC)
AUGUST = datetime(2024, 8, 5, 9, 0, tzinfo=UTC)


def _api(platform: dict[str, str]) -> str:
    return f"http://127.0.0.1:{platform['CRM_INTERACTION_API_PORT']}"


async def test_feedback_gives_exact_trends_dimensions_and_a_detractor_event(
    platform: dict[str, str],
) -> None:
    run = unique("voc")
    customer, touchpoint, department = f"{run}-c", f"{run}-checkout", f"{run}-sales"
    scores: Sequence[tuple[str, int, datetime, dict[str, int]]] = [
        ("nps", 10, JULY, {}),
        ("nps", 10, JULY, {}),
        ("nps", 9, JULY, {}),
        ("nps", 7, JULY, {}),
        ("nps", 2, JULY, {}),
        ("csat", 5, JULY, {"reliability": 5, "integrity": 4}),
        ("csat", 4, JULY, {"reliability": 4, "efficiency": 2}),
        ("csat", 2, JULY, {}),
        ("ces", 6, JULY, {}),
        ("ces", 7, JULY, {}),
        ("nps", 0, AUGUST, {}),
    ]
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="survey-tool") as publisher:
        for n, (measure, score, when, dimensions) in enumerate(scores):
            publisher.publish(
                "crm.feedback.given.v2",
                customer,
                {
                    "measure": measure,
                    "score": score,
                    "touchpoint": touchpoint,
                    "department": department,
                    "channel": "email",
                    "about": {"kind": "order", "id": f"{run}-order"},
                    "dimensions": dimensions,
                },
                time=when + timedelta(minutes=n),
                event_id=f"{run}-{n}",
            )
    api, auth = _api(platform), service_auth(platform)
    _, feedback = await eventually(
        lambda: get_json(f"{api}/customers/{customer}/feedback?limit=100", headers=auth),
        lambda r: r[0] == 200 and len(r[1]["ratings"]) == len(scores),
        what="every rating folded",
    )
    assert feedback["ratings"][0]["event_id"] == f"{run}-10"  # newest first
    assert feedback["ratings"][0]["about"] == {"kind": "order", "id": f"{run}-order"}

    status, trends = await get_json(
        f"{api}/experience/trends?by=touchpoint&period=month", headers=auth
    )
    assert status == 200
    ours = [p for p in trends["points"] if p["group"] == touchpoint]
    assert [p["period_start"][:10] for p in ours] == ["2024-07-01", "2024-08-01"]
    july, august = ours[0]["figures"], ours[1]["figures"]
    # July: promoters 10, 10, 9; passive 7; detractor 2 -> (3 - 1) / 5 = 40.
    assert (july["nps"], july["promoters"], july["passives"], july["detractors"]) == (40.0, 3, 1, 1)
    assert (july["csat"], july["csat_responses"]) == (3.67, 3)  # (5 + 4 + 2) / 3
    assert (july["effort"], july["effort_responses"]) == (6.5, 2)
    assert july["responses"] == 10
    assert (august["nps"], august["detractors"], august["csat"]) == (-100.0, 1, None)
    status, by_department = await get_json(
        f"{api}/experience/trends?by=department&period=week", headers=auth
    )
    weeks = [p for p in by_department["points"] if p["group"] == department]
    assert [p["period_start"][:10] for p in weeks] == ["2024-07-01", "2024-08-05"]  # Mondays

    status, dimensions = await get_json(
        f"{api}/experience/dimensions?touchpoint={touchpoint}", headers=auth
    )
    (summary,) = dimensions["touchpoints"]
    assert [(d["dimension"], d["ratings"], d["mean"]) for d in summary["dimensions"]] == [
        ("efficiency", 1, 2.0),
        ("integrity", 1, 4.0),
        ("reliability", 2, 4.5),
    ]
    assert [(f["facet"], f["ratings"], f["mean"]) for f in summary["facets"]] == [
        ("emotional", 1, 4.0),
        ("functional", 3, 3.67),
    ]

    # NPS 2, CSAT 2 and NPS 0 are detractors' scores: three events, one per feedback.
    detractors = await eventually(
        lambda: experience_events(platform["CRM_KAFKA_BOOTSTRAP"], customer, DETRACTOR_SCORED),
        lambda found: len({e["id"] for e in found}) == 3,
        what="three detractor events on crm.experience",
    )
    assert sorted((e["data"]["measure"], e["data"]["score"]) for e in detractors) == [
        ("csat", 2),
        ("nps", 0),
        ("nps", 2),
    ]
    assert {e["data"]["feedback_id"] for e in detractors} == {f"{run}-4", f"{run}-7", f"{run}-10"}
    assert {e["source"] for e in detractors} == {"interaction-service"}


async def test_the_nps_and_last_feedback_gauges_show_the_recent_scores(
    platform: dict[str, str],
) -> None:
    run = unique("nps")
    touchpoint = f"{run}-desk"
    now = datetime.now(UTC).replace(microsecond=0)
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="survey-tool") as publisher:
        for n, score in enumerate((10, 9, 3)):
            publisher.publish(
                "crm.feedback.given.v2",
                f"{run}-c{n}",
                {"measure": "nps", "score": score, "touchpoint": touchpoint, "channel": "social"},
                time=now - timedelta(minutes=n),
                event_id=f"{run}-{n}",
            )
    port = platform["CRM_INTERACTION_WORKER_METRICS_PORT"]
    # Promoters 10 and 9, detractor 3: (2 - 1) / 3 = 33.3 (the gauges are set every 15 s).
    await eventually(
        lambda: metric_value(port, f'crm_interaction_nps{{touchpoint="{touchpoint}"}}'),
        lambda value: value == 33.3,
        what="the NPS gauge of the touchpoint",
    )
    # No other test rates on social: the silent-channel alert's gauge is our newest rating's time.
    assert (
        await metric_value(
            port, 'crm_interaction_feedback_last_timestamp_seconds{channel="social"}'
        )
        == now.timestamp()
    )


def _contact(direction: str) -> dict[str, Any]:
    return {
        "channel": "phone",
        "direction": direction,
        "department": "sales",
        "topic": "new range",
        "outcome": "interested",
    }


def _order(order_id: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "lines": [{"product_id": "P-1", "quantity": 1, "unit_price": "5.00"}],
    }


async def test_a_journey_runs_through_its_stages_and_publishes_every_transition(
    platform: dict[str, str],
) -> None:
    customer = unique("journey")
    now = datetime.now(UTC).replace(microsecond=0)
    steps: list[tuple[str, dict[str, Any]]] = [
        ("crm.contact.logged.v1", _contact("outbound")),
        ("crm.contact.logged.v1", _contact("inbound")),
        ("crm.order.placed.v1", _order(f"{customer}-o1")),
        (
            "crm.feedback.given.v2",
            {"measure": "csat", "score": 5, "about": {"kind": "order", "id": f"{customer}-o1"}},
        ),
        ("crm.order.placed.v1", _order(f"{customer}-o2")),
        ("crm.feedback.given.v2", {"measure": "nps", "score": 10}),
        ("crm.feedback.given.v2", {"measure": "nps", "score": 9, "kind": "praise"}),
    ]
    api, auth = _api(platform), service_auth(platform)
    # One step at a time, as they happen: orders and contacts travel on two topics, which keep
    # no order between them (docs/journey.md).
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        for n, (event_type, data) in enumerate(steps):
            publisher.publish(
                event_type,
                customer,
                data,
                time=now - timedelta(hours=len(steps) - n),
                event_id=f"{customer}-{n}",
            )
            publisher.flush()
            await eventually(
                lambda: get_json(f"{api}/customers/{customer}/summary", headers=auth),
                lambda r, folded=n + 1: r[0] == 200 and r[1]["touchpoints"] == folded,
                what=f"step {n} folded",
            )
    _, journey = await eventually(
        lambda: get_json(f"{api}/customers/{customer}/journey", headers=auth),
        lambda r: r[0] == 200 and r[1]["stage"] == "advocate",
        what="the customer to become an advocate",
    )
    expected = [
        (None, "aware", "outbound_contact"),
        ("aware", "considering", "inbound_contact"),
        ("considering", "first_purchase", "order_placed"),
        ("first_purchase", "repeat", "order_placed"),
        ("repeat", "loyal", "feedback"),
        ("loyal", "advocate", "feedback"),
    ]
    assert [(t["from_stage"], t["to_stage"], t["trigger"]) for t in journey["transitions"]] == (
        expected
    )
    assert datetime.fromisoformat(journey["entered_at"]) == now - timedelta(hours=1)
    assert journey["time_in_stage_seconds"] >= 3600 - 5
    moment = journey["first_purchase"]
    assert moment["rated"] == {"kind": "order", "id": f"{customer}-o1"}
    assert moment["satisfaction"]["event_id"] == f"{customer}-3"
    service = journey["first_service_contact"]
    assert service["rated"] == {"kind": "contact", "id": f"{customer}-1"}
    # The first rating within 7 days after the call: the CSAT 5 of the first order.
    assert service["satisfaction"]["event_id"] == f"{customer}-3"

    published = await eventually(
        lambda: experience_events(platform["CRM_KAFKA_BOOTSTRAP"], customer, JOURNEY_STAGE_CHANGED),
        lambda found: len({e["id"] for e in found}) == len(expected),
        what="every transition on crm.experience",
    )
    changes = sorted({e["id"]: e["data"] for e in published}.values(), key=lambda d: d["version"])
    assert [(d["from_stage"], d["to_stage"], d["trigger"]) for d in changes] == expected
    assert [d["version"] for d in changes] == list(range(1, len(expected) + 1))


async def test_a_clock_tick_moves_an_inactive_customer_to_at_risk(
    platform: dict[str, str],
) -> None:
    customer = unique("inactive")
    # Inactive for the at-risk period minus a few seconds: at risk at one of the next ticks.
    ordered_at = datetime.now(UTC) - AT_RISK_AFTER + timedelta(seconds=4)
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        publisher.publish(
            "crm.order.placed.v1",
            customer,
            _order(f"{customer}-o1"),
            time=ordered_at,
            event_id=f"{customer}-o1",
        )
    api, auth = _api(platform), service_auth(platform)
    _, first = await eventually(
        lambda: get_json(f"{api}/customers/{customer}/journey", headers=auth),
        lambda r: r[0] == 200,
        what="the order folded",
    )
    assert first["stage"] == "first_purchase"
    _, journey = await eventually(
        lambda: get_json(f"{api}/customers/{customer}/journey", headers=auth),
        lambda r: r[1]["stage"] == "at_risk",
        what="a tick to move the customer to at risk",
    )
    last = journey["transitions"][-1]
    assert (last["from_stage"], last["to_stage"], last["trigger"]) == (
        "first_purchase",
        "at_risk",
        "clock",
    )
    assert datetime.fromisoformat(journey["entered_at"]) == ordered_at + AT_RISK_AFTER
    assert datetime.fromisoformat(journey["as_of"]) >= ordered_at + AT_RISK_AFTER


async def test_the_gateway_serves_the_experience_under_its_scope(
    platform: dict[str, str],
) -> None:
    reader = create_api_key(platform, unique("experience"), "experience:read")
    other = create_api_key(platform, unique("customers"), "customers:read")
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:
        stages = await client.get(
            "/v1/journey/stages", headers={"Authorization": f"Bearer {reader}"}
        )
        refused = await client.get(
            "/v1/journey/stages", headers={"Authorization": f"Bearer {other}"}
        )
        invalid = await client.get(
            "/v1/experience/trends?period=year", headers={"Authorization": f"Bearer {reader}"}
        )
    assert stages.status_code == 200
    body = stages.json()
    assert set(body["stages"]) == {
        "aware",
        "considering",
        "first_purchase",
        "repeat",
        "loyal",
        "advocate",
        "at_risk",
        "lost",
    }
    assert body["customers"] == sum(body["stages"].values())
    assert refused.status_code == 403 and "experience:read" in refused.text
    assert invalid.status_code == 422


async def test_a_product_view_moves_an_aware_customer_to_considering_and_is_no_touchpoint(
    platform: dict[str, str],
) -> None:
    customer = unique("browsing")
    now = datetime.now(UTC).replace(microsecond=0)
    api, auth = _api(platform), service_auth(platform)
    journey_url = f"{api}/customers/{customer}/journey"
    # One at a time: contacts and views travel on two topics, which keep no order between them.
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="web-site") as publisher:
        publisher.publish(
            "crm.contact.logged.v1",
            customer,
            _contact("outbound"),
            time=now - timedelta(hours=2),
            event_id=f"{customer}-call",
        )
        publisher.flush()
        await eventually(
            lambda: get_json(journey_url, headers=auth),
            lambda r: r[0] == 200 and r[1]["stage"] == "aware",
            what="the outbound call to make the customer aware",
        )
        for n in range(2):
            publisher.publish(
                "crm.product.viewed.v1",
                customer,
                {"product_id": f"P-{n}", "channel": "app"},
                time=now - timedelta(hours=1, minutes=-n),
                event_id=f"{customer}-view-{n}",
            )
    _, journey = await eventually(
        lambda: get_json(journey_url, headers=auth),
        lambda r: r[1]["stage"] == "considering",
        what="the product view to make the customer considering",
    )
    assert [(t["from_stage"], t["to_stage"], t["trigger"]) for t in journey["transitions"]] == [
        (None, "aware", "outbound_contact"),
        ("aware", "considering", "product_viewed"),
    ]
    assert datetime.fromisoformat(journey["entered_at"]) == now - timedelta(hours=1)
    # Interest shown, not a touchpoint: the timeline holds the call only.
    _, summary = await get_json(f"{api}/customers/{customer}/summary", headers=auth)
    assert summary["touchpoints"] == 1
